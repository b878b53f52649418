"""robosuite environments and scripted experts: real simulators, real rendering (EGL), no mocks."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("robosuite")

from envs.robosuite.env import (  # noqa: E402
    AGENTVIEW_IMAGE,
    EYE_IN_HAND_IMAGE,
    OBJECT,
    TASKS,
    RobosuiteEnv,
    RobosuiteEnvError,
    robosuite_shape_meta,
    task_info,
)
from envs.robosuite.experts import make_expert  # noqa: E402

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def lift_env():
    env = RobosuiteEnv("lift", image_size=IMAGE_SIZE)
    yield env
    env.close()


def _reference_frame(env: RobosuiteEnv, camera: str) -> np.ndarray:
    """The same camera rendered by mujoco's own Renderer, which returns upright images."""
    import mujoco

    renderer = mujoco.Renderer(env.sim.model._model, IMAGE_SIZE, IMAGE_SIZE)
    try:
        # robosuite's visibility options (collision geoms hidden), so only the orientation can differ
        renderer.update_scene(env.sim.data._data, camera=camera, scene_option=env.sim._render_context_offscreen.vopt)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return renderer.render().astype(np.float64)
    finally:
        renderer.close()


def test_observations_match_shape_meta(lift_env):
    obs, info = lift_env.reset(seed=0)
    meta = lift_env.shape_meta()
    assert meta.to_dict() == robosuite_shape_meta("lift", image_size=IMAGE_SIZE).to_dict()
    assert meta.action_dim == 7
    assert meta.keys_of("rgb") == [AGENTVIEW_IMAGE, EYE_IN_HAND_IMAGE]
    for key in (AGENTVIEW_IMAGE, EYE_IN_HAND_IMAGE):
        assert obs[key].shape == (3, IMAGE_SIZE, IMAGE_SIZE) and obs[key].dtype == np.uint8
        assert obs[key].std() > 5  # a rendered scene, not a blank buffer
    meta.check_obs(obs, leading_dims=0)
    assert info == {"seed": 0, "success": False}
    # object state right after reset holds the cube pose, not robosuite's stale zeros
    assert np.all(np.isfinite(obs[OBJECT])) and np.abs(obs[OBJECT][7:10]).sum() > 0


@pytest.mark.parametrize("camera", ["agentview", "robot0_eye_in_hand"])
def test_images_are_upright(lift_env, camera):
    obs, _ = lift_env.reset(seed=1)
    ours = obs[f"{camera}_image"].transpose(1, 2, 0).astype(np.float64)
    ref = _reference_frame(lift_env, camera)
    err_upright = np.abs(ours - ref).mean()
    err_flipped = np.abs(ours[::-1] - ref).mean()
    assert err_upright < 0.3 * err_flipped, (err_upright, err_flipped)


def test_step_moves_the_arm_and_reports_success_and_truncation(lift_env):
    obs0, _ = lift_env.reset(seed=2)
    up = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0])
    for _ in range(5):
        obs, reward, terminated, truncated, info = lift_env.step(up)
    assert obs["robot0_eef_pos"][2] > obs0["robot0_eef_pos"][2] + 0.02
    assert not terminated and info["success"] is False and reward == 0.0
    assert not truncated
    with pytest.raises(RobosuiteEnvError, match=r"shape \(7,\)"):
        lift_env.step(np.zeros(4))
    with pytest.raises(RobosuiteEnvError, match="NaN"):
        lift_env.step(np.full(7, np.nan))


def test_same_seed_same_initial_state(lift_env):
    a, _ = lift_env.reset(seed=5)
    b, _ = lift_env.reset(seed=6)
    c, _ = lift_env.reset(seed=5)
    np.testing.assert_array_equal(a[OBJECT], c[OBJECT])
    assert not np.allclose(a[OBJECT][:3], b[OBJECT][:3])


def _episode(env: RobosuiteEnv, seed: int, n_steps: int = 8) -> list[dict[str, np.ndarray]]:
    """Every observation of a short episode driven by actions drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    for _ in range(n_steps):
        obs, *_ = env.step(rng.uniform(-1, 1, 7))
        frames.append(obs)
    return frames


def test_an_episode_does_not_depend_on_the_episodes_before_it(lift_env):
    """What makes an evaluation reproducible whatever the worker count: a seeded episode in an env that already ran
    others (the eval workers' case) matches the same episode in a fresh env, every key and every pixel."""
    _episode(lift_env, seed=21)
    after_history = _episode(lift_env, seed=22)
    fresh_env = RobosuiteEnv("lift", image_size=IMAGE_SIZE)
    try:
        fresh = _episode(fresh_env, seed=22)
    finally:
        fresh_env.close()
    assert len(fresh) == len(after_history)
    for t, (a, b) in enumerate(zip(after_history, fresh, strict=True)):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"step {t}, {key}")


def test_get_state_reset_to_restores_observations(lift_env):
    lift_env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(4):
        obs_at_state, *_ = lift_env.step(rng.uniform(-1, 1, 7))
    state = lift_env.get_state()
    for _ in range(4):
        lift_env.step(rng.uniform(-1, 1, 7))
    # A step's observation is that of the state it left (forwarded), pixels included: what robomimic re-extracts.
    restored = lift_env.reset_to({"states": state["states"]})
    for key in obs_at_state:
        np.testing.assert_array_equal(restored[key], obs_at_state[key], err_msg=key)
    rebuilt = lift_env.reset_to(state)  # with the model xml: the one this env runs on, so the same simulator
    for key in obs_at_state:
        np.testing.assert_array_equal(rebuilt[key], obs_at_state[key], err_msg=key)
    with pytest.raises(RobosuiteEnvError, match="does not fit Lift"):
        lift_env.reset_to({"states": np.zeros(5)})


def test_scripted_lift_expert_succeeds(lift_env):
    expert = make_expert(lift_env)
    obs, _ = lift_env.reset(seed=11)
    expert.reset(11)
    for _ in range(lift_env.max_episode_steps):
        action = expert.predict_action(obs)
        assert action.shape == (1, 7) and np.all(np.abs(action) <= 1.0)
        obs, _, terminated, truncated, info = lift_env.step(action[0])
        if terminated or truncated:
            break
    assert info["success"] and terminated


def test_env_args_rebuild_the_same_env(lift_env):
    args = lift_env.env_args()
    assert args["type"] == 1 and args["env_name"] == "Lift"
    assert args["env_kwargs"]["controller_configs"]["body_parts"]["right"]["type"] == "OSC_POSE"
    assert args["env_kwargs"]["camera_names"] == ["agentview", "robot0_eye_in_hand"]
    # robomimic v0.1 datasets (robosuite <= 1.4) store the bare arm config and a robot list
    arm = dict(args["env_kwargs"]["controller_configs"]["body_parts"]["right"])
    arm.pop("gripper")
    args["env_kwargs"].update(controller_configs=arm, robots=["Panda"])
    rebuilt = RobosuiteEnv.from_env_args(json.dumps(args))
    try:
        assert (rebuilt.task, rebuilt.image_size, rebuilt.cameras) == ("lift", IMAGE_SIZE, lift_env.cameras)
        a, _ = rebuilt.reset(seed=4)
        b, _ = lift_env.reset(seed=4)
        np.testing.assert_array_equal(a[OBJECT], b[OBJECT])
        assert rebuilt.env_kwargs["controller_configs"]["body_parts"]["right"]["gripper"] == {"type": "GRIP"}
    finally:
        rebuilt.close()
    args["env_kwargs"]["robots"] = ["Sawyer"]
    with pytest.raises(RobosuiteEnvError, match="only the single-Panda"):
        RobosuiteEnv.from_env_args(args)


def test_unknown_task_lists_known_ones():
    with pytest.raises(RobosuiteEnvError, match="unknown robosuite task 'stack'.*lift.*can.*square"):
        task_info("stack")
    assert task_info("robomimic/can").env_name == "PickPlaceCan"
    assert task_info("NutAssemblySquare") is TASKS["square"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["can", "square"])
def test_object_dims_match_live_env(task):
    env = RobosuiteEnv(task, cameras=())
    try:
        obs, _ = env.reset(seed=0)
        assert obs[OBJECT].shape == (TASKS[task].object_dim,)
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["lift", "can", "square"])
def test_scripted_experts_succeed_over_seeds(task):
    env = RobosuiteEnv(task, cameras=())
    expert = make_expert(env)
    successes = []
    for seed in range(200, 205):
        obs, _ = env.reset(seed=seed)
        expert.reset(seed)
        info = {"success": False}
        for _ in range(env.max_episode_steps):
            obs, _, terminated, truncated, info = env.step(expert.predict_action(obs)[0])
            if terminated or truncated:
                break
        successes.append(info["success"])
    env.close()
    assert sum(successes) >= 4, successes


@pytest.mark.slow  # end to end, 20-30 s: keeps the fast suite under 10 minutes on 2 cores
def test_mfp_eval_runs_the_robosuite_expert_with_a_video(tmp_path):
    """`mfp eval policy=expert task=robomimic/lift`: workers bind the expert to their own env; videos need a camera."""
    from mfp.commands.eval import EvalCliConfig, run

    info = run(
        EvalCliConfig(
            task="robomimic/lift",
            policy="expert",
            n_episodes=2,
            n_workers=1,
            n_videos=1,
            out=str(tmp_path),
            progress=False,
        )
    )
    assert info["aggregated"]["n_success"] == 2, info["per_episode"]
    assert (tmp_path / "eval_info.json").exists()
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 1
    env = RobosuiteEnv("lift", cameras=())
    try:
        with pytest.raises(RobosuiteEnvError, match="camera"):
            env.render()
    finally:
        env.close()


def test_expert_agent_refuses_unknown_tasks_and_acting_before_bind():
    from envs.robosuite.experts import RobosuiteExpertAgent

    with pytest.raises(RobosuiteEnvError, match="unknown robosuite task 'stack'"):
        RobosuiteExpertAgent("stack")
    agent = RobosuiteExpertAgent("robomimic/lift")
    with pytest.raises(RuntimeError, match="bind_env"):
        agent.predict_action({})
