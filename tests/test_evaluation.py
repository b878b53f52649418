"""Evaluating a saved policy (training.evaluation): the checkpoint sets task, observations and step limit; the
inference options; reproducible episodes whatever the number of workers."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError
from core.spec import ShapeMeta
from envs.suites import get_suite
from training.evaluation import InferenceOptions, evaluate_checkpoint, load_agent

STATE_ONLY = {"point_cloud_cameras": (), "image_cameras": ()}


def test_env_kwargs_follow_the_policy_observations():
    sm = ShapeMeta.from_dict(
        {
            "obs": {
                "point_cloud": {"type": "point_cloud", "shape": [256, 6]},
                "image": {"type": "rgb", "shape": [3, 96, 96]},
                "image_corner3": {"type": "rgb", "shape": [3, 96, 96]},
                "agent_pos": {"type": "low_dim", "shape": [4]},
            },
            "action": {"shape": [4]},
        }
    )
    kw = get_suite("metaworld").env_kwargs(sm)
    assert kw == {
        "point_cloud_cameras": ("corner2",),
        "num_points": 256,
        "use_point_color": True,
        "image_cameras": ("corner2", "corner3"),
        "image_size": 96,
    }
    state_only = ShapeMeta.from_dict(
        {"obs": {"agent_pos": {"type": "low_dim", "shape": [4]}}, "action": {"shape": [4]}}
    )
    assert get_suite("metaworld").env_kwargs(state_only) == STATE_ONLY


def test_saved_policy_is_evaluated_from_its_checkpoint(tmp_path):
    """A real (untrained) policy saved by policies.checkpoint: task, observations and step limit come from it."""
    cfg = _untrained_checkpoint(tmp_path / "policy")
    info = evaluate_checkpoint(tmp_path / "policy", episodes=2, n_workers=0, out_dir=tmp_path / "eval")
    assert info["task"] == "reach-v3" and info["aggregated"]["n_agent_failures"] == 0
    assert [e["steps"] for e in info["per_episode"]] == [6, 6]  # the checkpoint's step limit
    assert info["config"]["env_kwargs"]["num_points"] == 64
    assert (tmp_path / "eval" / "eval_info.json").is_file()

    # Re-planning more often: the executed part of each chunk is cut at evaluation time, never past the horizon.
    policy = load_agent(str(tmp_path / "policy"), InferenceOptions(n_action_steps=1))
    obs = {"point_cloud": np.zeros((2, 64, 3), np.float32), "agent_pos": np.zeros((2, 4), np.float32)}
    assert policy.predict_action(obs).shape == (1, 4)
    most = cfg.horizon - cfg.n_obs_steps + 1
    with pytest.raises(ValueError, match=f"at most {most}"):
        evaluate_checkpoint(
            tmp_path / "policy",
            episodes=1,
            n_workers=0,
            options=InferenceOptions(n_action_steps=most + 1),
            out_dir=tmp_path / "bad",
        )
    assert not (tmp_path / "bad").exists()  # refused before anything was written

    sampling = load_agent(str(tmp_path / "policy"))
    assert not np.array_equal(sampling.predict_action(obs), sampling.predict_action(obs))
    # hold_noise: one starting noise per episode, so the same observation gives the same chunk until reset().
    held = load_agent(str(tmp_path / "policy"), InferenceOptions(hold_noise=True))
    first = held.predict_action(obs)
    assert np.array_equal(first, held.predict_action(obs))
    held.reset()
    assert not np.array_equal(first, held.predict_action(obs))
    for bad in ({"num_steps": -2}, {"n_action_steps": -1}):
        with pytest.raises(ConfigError):
            InferenceOptions(**bad)


def _untrained_checkpoint(path, task: str = "reach-v3", steps: int = 6):
    """A real policy with random weights saved by policies.checkpoint (its task and step limit in the metadata)."""
    from envs.metaworld.env import metaworld_shape_meta
    from policies.checkpoint import save_policy
    from policies.config import BackboneConfig, PolicyConfig
    from policies.factory import build_policy

    full = metaworld_shape_meta(task, num_points=64)
    sm = ShapeMeta(obs={k: full.obs[k] for k in ("point_cloud", "agent_pos")}, action_dim=4)
    cfg = PolicyConfig(backbone=BackboneConfig(type="mlp", hidden_dim=32, n_layers=2))
    stats = {
        "point_cloud": {"min": -np.ones(3), "max": np.ones(3)},
        "agent_pos": {"min": -np.ones(4), "max": np.ones(4)},
        "action": {"min": -np.ones(4), "max": np.ones(4)},
    }
    save_policy(build_policy(cfg, sm, stats), cfg, path, metadata={"task": {"env": task, "max_episode_steps": steps}})
    return cfg


@pytest.mark.slow  # end to end, 20-30 s: keeps the fast suite under 10 minutes on 2 cores
def test_evaluating_a_checkpoint_twice_gives_the_same_episodes_whatever_the_workers(tmp_path):
    """The sampler's noise is seeded by each episode's seed: fixed eval seeds fix the whole evaluation."""
    _untrained_checkpoint(tmp_path / "policy", task="push-v3", steps=40)
    runs = [evaluate_checkpoint(tmp_path / "policy", episodes=4, n_workers=w)["per_episode"] for w in (0, 0, 2)]
    rewards = [[e["sum_reward"] for e in run] for run in runs]
    assert rewards[0] == rewards[1]
    assert rewards[0] == rewards[2]  # other processes, each with its own earlier episodes
    assert len(set(rewards[0])) == 4  # the episodes themselves differ

    policy = load_agent(str(tmp_path / "policy"))
    obs = {"point_cloud": np.zeros((2, 64, 3), np.float32), "agent_pos": np.zeros((2, 4), np.float32)}
    policy.reset(seed=7)
    first = [policy.predict_action(obs) for _ in range(2)]
    assert not np.array_equal(*first)  # a fresh draw per chunk, from the episode's stream
    policy.reset(seed=7)
    assert all(np.array_equal(a, policy.predict_action(obs)) for a in first)
    policy.reset(seed=8)
    assert not np.array_equal(first[0], policy.predict_action(obs))
    policy.reset()  # no seed: torch's global generator, as before
    assert not np.array_equal(policy.predict_action(obs), policy.predict_action(obs))


def test_only_the_observations_the_policy_reads_are_rendered(tmp_path, monkeypatch):
    """A chunk of 3 actions with 2 observation steps reads the last 2 observations of the chunk: the first step of
    each chunk goes unrendered, and the episode (rewards, steps, success) is the same as with every step rendered."""
    from envs.metaworld.env import MetaWorldEnv

    _untrained_checkpoint(tmp_path / "policy", steps=12)  # horizon 4, n_obs_steps 2, n_action_steps 3
    renders = []
    cloud = MetaWorldEnv.point_cloud
    monkeypatch.setattr(MetaWorldEnv, "point_cloud", lambda self: renders.append(self._steps) or cloud(self))
    lazy = evaluate_checkpoint(tmp_path / "policy", episodes=1, n_workers=0)["per_episode"][0]
    assert renders == [0, 2, 3, 5, 6, 8, 9, 11, 12]  # reset, then the last two steps of each 3-step chunk

    step = MetaWorldEnv.step
    monkeypatch.setattr(MetaWorldEnv, "step", lambda self, action: step(self, action))  # no render switch: all
    renders.clear()
    full = evaluate_checkpoint(tmp_path / "policy", episodes=1, n_workers=0)["per_episode"][0]
    assert renders == list(range(13))
    for key in ("steps", "sum_reward", "success"):
        assert lazy[key] == full[key]
