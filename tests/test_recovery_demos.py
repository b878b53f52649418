"""DART-style recovery demos: the env executes the expert's command plus correlated noise, the file records the
command. Checked on the noise process itself, on a real robosuite Lift episode and on a real Meta-World dataset."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.execution_noise import ExecutionNoise


@settings(max_examples=40, deadline=None)
@given(
    std=st.floats(0.0, 2.0),
    corr=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**31 - 1),
    action=st.lists(st.floats(-1.0, 1.0), min_size=7, max_size=7),
)
def test_noise_moves_only_translation_and_stays_in_the_action_box(std, corr, seed, action):
    a = np.asarray(action)
    noise = ExecutionNoise(std, corr, seed=seed)
    for _ in range(5):
        out = noise(a)
        assert out.shape == (7,) and np.all(np.abs(out) <= 1.0)
        np.testing.assert_array_equal(out[3:], a[3:])
    np.testing.assert_array_equal(a, np.asarray(action))  # the caller's action is not modified


def test_noise_is_seeded_correlated_and_has_the_asked_std():
    a, b = ExecutionNoise(0.1, 0.9, seed=3), ExecutionNoise(0.1, 0.9, seed=3)
    zero = np.zeros(7)
    xs = np.array([a(zero)[:3] for _ in range(20_000)])
    np.testing.assert_array_equal(xs[:50], np.array([b(zero)[:3] for _ in range(50)]))
    assert xs.std() == pytest.approx(0.1, rel=0.1)
    lag1 = np.corrcoef(xs[1:, 0], xs[:-1, 0])[0, 1]
    assert lag1 == pytest.approx(0.9, abs=0.03)
    with pytest.raises(ValueError, match="corr"):
        ExecutionNoise(0.1, 1.0)
    with pytest.raises(ValueError, match="execution_noise must be a finite number >= 0"):
        ExecutionNoise(float("nan"))


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_negative_or_nan_execution_noise_is_refused_before_any_env_is_built(bad, tmp_path):
    from envs.metaworld.collect import collect
    from envs.robosuite.collect import collect_robomimic
    from mfp.commands.collect import main

    with pytest.raises(ValueError, match="execution_noise must be a finite number >= 0"):
        collect_robomimic("lift", 1, str(tmp_path / "x.hdf5"), execution_noise=bad, verbose=False)
    with pytest.raises(ValueError, match="execution_noise must be a finite number >= 0"):
        collect("reach-v3", 1, tmp_path / "x.zarr", execution_noise=bad, progress=False)
    with pytest.raises((ValueError, SystemExit)):
        main(["task=reach-v3", f"execution_noise={bad}", f"out={tmp_path / 'y.zarr'}"])
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # end to end, 20-30 s: keeps the fast suite under 10 minutes on 2 cores
def test_recovery_demo_records_the_command_and_the_env_executed_command_plus_noise():
    """Open-loop playback of the recorded labels leaves the recorded path; labels plus the same noise stream
    reproduce it exactly, so the file holds the expert's corrections of perturbed states."""
    pytest.importorskip("robosuite")
    from envs.robosuite.collect import record_episode
    from envs.robosuite.env import RobosuiteEnv
    from envs.robosuite.experts import make_expert

    env = RobosuiteEnv("lift", image_size=32, cameras=("agentview",))
    try:
        demo, success = record_episode(env, make_expert(env), seed=4, execution_noise=0.1)
        assert success and demo.attrs["execution_noise"] == 0.1

        def final_eef(actions) -> np.ndarray:
            env.reset(seed=4)  # the demo seed rebuilds the initial state
            for action in actions:
                obs, *_ = env.step(action)
            return obs["robot0_eef_pos"]

        recorded_end = demo.next_obs["robot0_eef_pos"][-1]
        assert np.linalg.norm(final_eef(demo.actions) - recorded_end) > 1e-3
        replay = ExecutionNoise.for_episode(0.1, seed=4)
        np.testing.assert_allclose(final_eef([replay(a) for a in demo.actions]), recorded_end, atol=1e-9)
    finally:
        env.close()


def test_metaworld_recovery_dataset_holds_the_commands_and_refuses_mixing_with_clean_demos(tmp_path):
    """`mfp collect task=<Meta-World task> execution_noise=S`: the zarr records the expert's commands and its
    setting; replaying the labels plus the episode's noise stream reproduces the recorded states, the labels alone
    do not; appending clean demos to it is refused."""
    from demos.replay_buffer import ReplayBuffer, ReplayBufferError
    from envs.metaworld.collect import collect
    from envs.metaworld.env import MetaWorldEnv

    path = tmp_path / "reach-dart.zarr"
    args = dict(num_points=64, image_cameras=(), depth_size=64, max_steps=100, progress=False)
    collect("reach-v3", 1, path, execution_noise=0.2, **args)
    rb = ReplayBuffer.load(path)
    assert rb.attrs["execution_noise"] == 0.2
    seed = int(rb.episode_seeds[0])
    episode = rb.get_episode(0)
    actions, recorded = episode["action"], episode["agent_pos"]

    env = MetaWorldEnv(
        "reach-v3",
        point_cloud_cameras=["corner2"],
        num_points=64,
        image_cameras=[],
        depth_size=64,
        max_episode_steps=100,
    )
    try:

        def replay(perturb) -> np.ndarray:
            obs, _ = env.reset(seed=seed)
            path_ = [obs["agent_pos"]]
            for action in actions[:-1]:
                obs, *_ = env.step(perturb(action))
                path_.append(obs["agent_pos"])
            return np.stack(path_)

        noise = ExecutionNoise.for_episode(0.2, seed)
        np.testing.assert_allclose(replay(noise), recorded, atol=1e-5)
        assert np.abs(replay(lambda a: a) - recorded).max() > 1e-3
    finally:
        env.close()

    with pytest.raises(ReplayBufferError, match="execution_noise"):
        collect("reach-v3", 2, path, **args)
    assert ReplayBuffer.load(path).n_episodes == 1
