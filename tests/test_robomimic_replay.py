"""Demos recorded here replay the way robomimic replays them, and their observations are those of their states.

robomimic 0.3.0's ``playback_dataset.py --use-actions`` builds the env from ``env_args``, resets, rebuilds the
simulator from the demo's ``model_file`` (``reset_from_xml_string(edit_model_xml(...))``), calls ``sim.reset()``,
sets ``states[0]`` and steps the recorded actions, warning whenever a state differs from the recorded one.
:func:`robomimic_playback` does exactly those calls on a plain robosuite env (robomimic itself cannot be installed
beside this package; its own script was run on a file written here: ``docs/results/robomimic_compat``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("robosuite")

from demos.robomimic_hdf5 import Demo, read_robomimic  # noqa: E402
from envs.robosuite.collect import collect_robomimic  # noqa: E402
from envs.robosuite.env import LOW_DIM_KEYS, RobosuiteEnv  # noqa: E402

REPLAY_TOLERANCE = 1e-6  # max |state error| over every step of every demo (measured here: exactly 0)


def robomimic_playback(env_args: dict[str, Any], demo: Demo) -> np.ndarray:
    """Per-step max |state error| of robomimic's action playback of ``demo`` (its calls, in its order)."""
    import robosuite

    kwargs = {**env_args["env_kwargs"], "has_renderer": False, "has_offscreen_renderer": False}
    env = robosuite.make(env_args["env_name"], **{**kwargs, "use_camera_obs": False})
    try:
        env.reset()  # playback_trajectory_with_env
        env.reset()  # EnvRobosuite.reset_to, before the rebuild
        env.reset_from_xml_string(env.edit_model_xml(demo.attrs["model_file"]))
        env.sim.reset()
        env.sim.set_state_from_flattened(demo.states[0])
        env.sim.forward()
        errors = []
        for t, action in enumerate(demo.actions[:-1]):
            env.step(action)
            errors.append(np.abs(np.asarray(env.sim.get_state().flatten()) - demo.states[t + 1]).max())
    finally:
        env.close()
    return np.asarray(errors)


def observation_errors(env: RobosuiteEnv, demo: Demo) -> dict[str, float]:
    """Max |obs[t] - observation of reset_to(states[t])| per key over the demo (robomimic's re-extraction)."""
    worst: dict[str, float] = {}
    for t, state in enumerate(demo.states):
        obs = env.reset_to({"states": state, "model": demo.attrs["model_file"]} if t == 0 else {"states": state})
        for key, value in obs.items():
            recorded = demo.obs[key][t]
            recorded = recorded.transpose(2, 0, 1) if recorded.ndim == 3 else recorded  # images (H, W, 3)
            err = float(np.abs(value.astype(np.float64) - recorded.astype(np.float64)).max())
            worst[key] = max(worst.get(key, 0.0), err)
    return worst


@pytest.fixture(scope="module")
def state_only_lift(tmp_path_factory):
    """Three scripted Lift demos (seeds 0, 1, 2) without cameras: the fast case."""
    out = tmp_path_factory.mktemp("replay") / "lift.hdf5"
    collect_robomimic("robomimic/lift", 3, str(out), cameras=(), verbose=False)
    f = read_robomimic(out)
    f.file_attrs["path"] = out
    return f


def test_recorded_actions_replay_the_recorded_states_in_robomimics_playback(state_only_lift):
    assert len(state_only_lift.demos) == 3
    for name, demo in state_only_lift.demos.items():
        errors = robomimic_playback(state_only_lift.env_args, demo)
        assert errors.max() <= REPLAY_TOLERANCE, (name, errors.max(), int(errors.argmax()))


def test_recorded_actions_replay_in_this_env_and_reach_the_recorded_success(state_only_lift):
    env = RobosuiteEnv.from_env_args(state_only_lift.env_args)
    try:
        for name, demo in state_only_lift.demos.items():
            obs = env.reset_to({"states": demo.states[0], "model": demo.attrs["model_file"]})
            for t, action in enumerate(demo.actions):
                if t > 0:
                    assert np.abs(env.flat_state() - demo.states[t]).max() <= REPLAY_TOLERANCE, (name, t)
                obs, reward, success, _, _ = env.step(action)
                for key in LOW_DIM_KEYS:
                    np.testing.assert_array_equal(obs[key], demo.next_obs[key][t], err_msg=f"{name} step {t} {key}")
            assert success and reward == demo.rewards[-1] == 1.0, name
    finally:
        env.close()


def test_observations_are_those_of_the_stored_states(state_only_lift):
    """What robomimic's dataset_states_to_obs.py would extract from ``states`` is what was recorded."""
    env = RobosuiteEnv.from_env_args(state_only_lift.env_args)
    try:
        for name, demo in state_only_lift.demos.items():
            worst = observation_errors(env, demo)
            assert set(worst) == set(LOW_DIM_KEYS), worst
            assert max(worst.values()) == 0.0, (name, worst)
    finally:
        env.close()


def test_observation_keys_and_dtypes_are_robomimics(state_only_lift):
    """The 10 low-dim keys robomimic 0.3 extracts for a Panda under robosuite 1.5 (its own file, committed)."""
    theirs = read_robomimic(Path(__file__).parent / "fixtures" / "robomimic" / "low_dim.hdf5")
    reference = next(iter(theirs.demos.values())).obs
    ours = next(iter(state_only_lift.demos.values())).obs
    assert {k: (v.dtype, v.shape[1:]) for k, v in ours.items()} == {
        k: (v.dtype, v.shape[1:]) for k, v in reference.items()
    }


def test_files_recorded_here_merge_with_robomimics(state_only_lift, tmp_path):
    """The same keys, shapes and dtypes as robomimic's own file, so `mfp merge` joins them."""
    from demos.robomimic_hdf5 import merge_robomimic

    theirs = Path(__file__).parent / "fixtures" / "robomimic" / "low_dim.hdf5"
    summary = merge_robomimic([state_only_lift.file_attrs["path"], theirs], tmp_path / "both.hdf5")
    assert summary["total_demos"] == 5 and read_robomimic(tmp_path / "both.hdf5").total == summary["samples"]


@pytest.mark.slow
@pytest.mark.parametrize("task, seeds", [("lift", 5), ("can", 2)])
def test_demos_with_images_replay_and_reextract_exactly(tmp_path, task, seeds):
    """Several seeds per task with both cameras: action playback (robomimic's way) and the observation of every
    stored state, pixels included."""
    out = tmp_path / f"{task}.hdf5"
    collect_robomimic(f"robomimic/{task}", seeds, str(out), image_size=32, verbose=False)
    f = read_robomimic(out)
    env = RobosuiteEnv.from_env_args(f.env_args)
    try:
        for name, demo in f.demos.items():
            errors = robomimic_playback(f.env_args, demo)
            assert errors.max() <= REPLAY_TOLERANCE, (name, errors.max())
            worst = observation_errors(env, demo)
            assert max(worst.values()) == 0.0, (name, worst)
    finally:
        env.close()
