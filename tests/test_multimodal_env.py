"""Multimodal tasks: every strategy succeeds, their average fails, the mode classifier, reset determinism and the
observations, on the real simulator (state-only rollouts; one point-cloud render)."""

from __future__ import annotations

import numpy as np
import pytest

from core.spec import AGENT_POS, FULL_STATE, POINT_CLOUD
from envs.multimodal import corner, detour
from envs.multimodal.env import MultimodalEnv
from envs.multimodal.experts import AveragedExpert, StrategyExpert, strategy_for_seed
from envs.multimodal.modes import NONE, STALL_STEPS
from envs.multimodal.tasks import TASKS, get_task

SEEDS = (100_000, 100_001)


def run(env: MultimodalEnv, agent, seed: int) -> tuple[np.ndarray, bool]:
    """Full states (T + 1, D) of one episode that stops at success, and whether it succeeded; the agent gets the
    last two."""
    obs, _ = env.reset(seed=seed)
    agent.reset(seed=seed)
    states = [obs[FULL_STATE], obs[FULL_STATE]]
    for _ in range(env.max_episode_steps):
        obs, _, _, _, info = env.step(agent.predict_action({FULL_STATE: np.stack(states[-2:])})[0])
        states.append(obs[FULL_STATE])
        if info["success"]:
            return np.stack(states[1:]), True
    return np.stack(states[1:]), False


@pytest.fixture(scope="module", params=list(TASKS))
def state_env(request):
    env = MultimodalEnv(request.param, point_cloud_cameras=())
    yield env
    env.close()


def test_each_strategy_succeeds_and_is_recognised(state_env):
    spec = get_task(state_env.task)
    for name in spec.strategies:
        for seed in SEEDS:
            states, ok = run(state_env, StrategyExpert(state_env.task, name), seed)
            result = spec.classify(states, success=np.r_[np.zeros(len(states) - 1, bool), ok])
            assert ok, (name, seed)
            assert (result.mode, result.dithered) == (name, False), (name, seed, result)


def test_averaged_expert_stays_in_the_corner(state_env):
    spec = get_task(state_env.task)
    states, ok = run(state_env, AveragedExpert(state_env.task), SEEDS[0])
    result = spec.classify(states)
    assert not ok and result.mode == NONE and result.stalled
    # the last steps do not move at all: the mocap is clamped in the corner
    assert np.abs(states[-1][:3] - states[-10][:3]).max() < 1e-3


def test_reset_is_deterministic_and_seeds_differ(state_env):
    first, _ = state_env.reset(seed=7)
    state_env.step(np.array([0.3, -0.2, 0.1, 1.0]))
    again, _ = state_env.reset(seed=7)
    other, _ = state_env.reset(seed=8)
    np.testing.assert_array_equal(first[FULL_STATE], again[FULL_STATE])
    assert not np.allclose(first[AGENT_POS][:3], other[AGENT_POS][:3])


def test_mixed_expert_draws_from_the_seed_with_the_mix():
    names = ["a", "b"]
    draws = [strategy_for_seed(s, names) for s in range(400)]
    assert draws == [strategy_for_seed(s, names) for s in range(400)]
    assert 0.4 < draws.count("a") / len(draws) < 0.6
    assert {strategy_for_seed(s, names, mix=(1.0, 0.0)) for s in range(50)} == {"a"}
    with pytest.raises(ValueError, match="probabilities"):
        strategy_for_seed(0, names, mix=(0.7, 0.7))
    expert = StrategyExpert("detour")
    expert.reset(seed=3)
    assert expert.strategy == strategy_for_seed(3, list(get_task("detour").strategies))


def test_bad_names_and_actions_raise():
    with pytest.raises(ValueError, match="known: detour"):
        get_task("detuor")
    with pytest.raises(ValueError, match="no strategy 'up'"):
        StrategyExpert("detour", "up")
    with pytest.raises(ValueError, match="episode seed"):
        StrategyExpert("detour").reset()
    env = MultimodalEnv("detour", point_cloud_cameras=())
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="4 values"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="max_episode_steps"):
        MultimodalEnv("detour", point_cloud_cameras=(), max_episode_steps=0)
    env.close()


def _path(*points: tuple[float, float, float], steps: int = 10) -> np.ndarray:
    """A hand path (T, 3) through ``points``, ``steps`` samples per segment."""
    pieces = [np.linspace(a, b, steps, endpoint=False) for a, b in zip(points, points[1:], strict=False)]
    return np.concatenate(pieces + [np.asarray(points[-1:], dtype=float)])


def _detour_states(hand: np.ndarray) -> np.ndarray:
    """Full states (T, 10) of the detour task for a hand path: gripper open, fixed pillar and target."""
    task = np.concatenate([detour.PILLAR, detour.TARGET])
    return np.array([np.concatenate([h, [1.0], task]) for h in hand])


def test_mode_classifier_on_hand_made_paths():
    spec = get_task("detour")
    c, t = detour.CORNER.limits, detour.TARGET
    right = _path(c, (t[0], c[1], c[2]), t)
    left = _path(c, (c[0], t[1], c[2]), t)
    assert spec.classify(_detour_states(right)).mode == "right"
    assert spec.classify(_detour_states(left)).mode == "left"
    # out along the back limit, back to the corner, then round the other side: a switch
    switch = spec.classify(_detour_states(_path(c, (c[0] + 0.08, c[1], c[2]), c, (c[0], t[1], c[2]), t)))
    assert switch.mode == "left" and switch.switched and switch.dithered
    # never leaving the corner: no mode, and a stall
    stuck = spec.classify(_detour_states(np.repeat(c[None], STALL_STEPS + 5, axis=0)))
    assert stuck.mode == NONE and stuck.stalled and not stuck.switched
    with pytest.raises(ValueError, match="non-empty"):
        spec.classify(np.zeros((0, 10)))


def test_button_order_mode_is_the_button_pressed_first():
    spec = get_task("button-order")
    base = np.zeros(12)
    base[:3] = [0.0, 0.6, 0.15]  # the hand away from both limits: no position evidence
    first_far = np.stack([base, base, base])
    first_far[1, 11] = 1.0  # far pressed
    first_far[2, 10:12] = 1.0  # then both
    assert spec.classify(first_far).mode == "far-first"
    assert spec.classify(np.stack([base, base])).mode == NONE


def test_strategies_leave_the_corner_only_after_two_fully_open_readings():
    hand = detour.CORNER.limits + np.array([0.001, 0.001, -0.004])
    state = np.concatenate([hand, [1.0], detour.PILLAR, detour.TARGET])
    opening = state.copy()
    opening[3] = 0.98
    for name, f in get_task("detour").strategies.items():
        assert f(state, opening)[3] == -1.0 and np.all(f(state, opening)[:3] == -corner.HUG), name  # still pausing
        assert f(state, state)[1 - detour.FIRST_LEG_AXIS[name]] == -corner.HUG, name  # leaving, hugging the other
        assert f(state, state)[detour.FIRST_LEG_AXIS[name]] == corner.ALONG, name


def test_corner_mean_of_two_legs_pushes_into_every_limit():
    c = corner.Corner(np.array([-0.15, 0.45, 0.2]), np.array([-1.0, -1.0, 1.0]), arrival_axis=1)
    hand = c.limits.copy()
    mean = (c.along(hand, 0) + c.along(hand, 2)) / 2
    assert np.all(np.sign(mean[:3]) == c.signs)
    assert np.all(np.abs(mean[:3]) >= (corner.HUG - corner.ALONG) / 2)


def test_point_cloud_and_shape_meta():
    env = MultimodalEnv("pick", num_points=256, image_cameras=("corner2",), image_size=32)
    obs, info = env.reset(seed=1)
    assert obs[POINT_CLOUD].shape == (256, 3) and obs[POINT_CLOUD].dtype == np.float32
    assert len(np.unique(obs[POINT_CLOUD], axis=0)) == 256
    assert obs["image"].shape == (3, 32, 32) and obs["image"].dtype == np.uint8
    meta = env.shape_meta()
    assert list(meta.obs) == [POINT_CLOUD, "image", AGENT_POS] and meta.action_dim == 4
    assert env.shape_meta(env.obs_keys).obs[FULL_STATE].shape == (env.state_dim,) == obs[FULL_STATE].shape
    np.testing.assert_array_equal(obs[AGENT_POS], obs[FULL_STATE][:4])
    np.testing.assert_array_equal(info[FULL_STATE], obs[FULL_STATE])
    with pytest.raises(KeyError, match="not produced"):
        env.shape_meta(["goal_pos"])
    assert env.render().shape == (256, 256, 3)
    env.close()
