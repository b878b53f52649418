"""Evaluation runner: scripted expert in worker processes, broken agents, history stacking, eval CLI."""
from __future__ import annotations

import json
import re

import imageio.v2 as imageio
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from demos.spec import ShapeMeta
from envs.experts import ScriptedExpert
from envs.runner import env_kwargs_from_shape_meta, evaluate, evaluate_checkpoint, load_agent, wilson_interval
from envs.seeds import DEMO_SEED_BASE, EVAL_SEED_BASE, demo_seeds, eval_seeds, is_demo_seed

STATE_ONLY = {"point_cloud_cameras": (), "image_cameras": ()}


class NaNAgent:
    n_obs_steps = 1

    def reset(self):
        pass

    def predict_action(self, obs):
        return np.full((2, 4), np.nan, dtype=np.float32)


class WrongShapeAgent(NaNAgent):
    def predict_action(self, obs):
        return np.zeros((2, 3), dtype=np.float32)


class RaisingAgent(NaNAgent):
    def predict_action(self, obs):
        raise RuntimeError("boom")


class RecordingAgent:
    """Three-frame history, two-action chunks; remembers what it was given."""

    n_obs_steps = 3

    def __init__(self):
        self.calls = []
        self.resets = 0

    def reset(self):
        self.resets += 1

    def predict_action(self, obs):
        self.calls.append({k: np.array(v) for k, v in obs.items()})
        return np.tile(np.array([[0.5, 0.0, 0.0, 0.0]], dtype=np.float32), (2, 1))


def test_seed_ranges_are_disjoint():
    demo, ev = set(demo_seeds(1000)), set(eval_seeds(1000))
    assert demo.isdisjoint(ev) and min(ev) == EVAL_SEED_BASE and min(demo) == DEMO_SEED_BASE
    assert all(is_demo_seed(s) for s in demo) and not any(is_demo_seed(s) for s in ev)
    with pytest.raises(ValueError, match="demo range"):
        demo_seeds(10, start=EVAL_SEED_BASE - 5)


def test_expert_in_worker_processes_writes_eval_info_and_video(tmp_path):
    seeds = eval_seeds(3)
    info = evaluate(ScriptedExpert("reach-v3"), "reach-v3", seeds, n_workers=2, out_dir=tmp_path, n_videos=1,
                    max_steps=150, env_kwargs=STATE_ONLY, label="expert")
    agg = info["aggregated"]
    assert agg["n_success"] == 3 and agg["pc_success"] == 100.0
    assert [e["seed"] for e in info["per_episode"]] == seeds
    assert all(e["success"] and 0 < e["steps"] < 150 and e["failure"] is None for e in info["per_episode"])
    assert agg["ci95_low"] == pytest.approx(wilson_interval(3, 3)[0]) and agg["ci95_high"] == 1.0
    assert agg["latency_calls"] == agg["env_steps"] - 2  # one call per step, first call per worker excluded
    assert 0 < agg["latency_ms_p50"] <= agg["latency_ms_p99"]
    saved = json.loads((tmp_path / "eval_info.json").read_text())
    assert set(saved) >= {"per_episode", "aggregated", "video_paths"} and saved["aggregated"] == agg
    assert len(info["video_paths"]) == 1
    frames = imageio.mimread(info["video_paths"][0])
    assert len(frames) == info["per_episode"][0]["steps"] + 1 and frames[0].shape == (256, 256, 3)


@pytest.mark.parametrize("agent, reason", [(NaNAgent(), "NaN"), (WrongShapeAgent(), r"shape \(2, 3\)"),
                                           (RaisingAgent(), "RuntimeError: boom")])
def test_broken_agents_fail_their_episodes_and_the_run_continues(agent, reason):
    info = evaluate(agent, "reach-v3", eval_seeds(2), n_workers=0, max_steps=20, env_kwargs=STATE_ONLY)
    assert info["aggregated"]["n_episodes"] == 2 and info["aggregated"]["n_success"] == 0
    assert info["aggregated"]["n_agent_failures"] == 2
    for episode in info["per_episode"]:
        assert not episode["success"] and episode["steps"] == 0
        assert episode["failure"] is not None
        assert re.search(reason, episode["failure"])


def test_history_is_stacked_with_repeat_padding_and_chunks_run_open_loop():
    import envs.runner as runner

    agent = RecordingAgent()
    info = evaluate(agent, "reach-v3", eval_seeds(1), n_workers=0, max_steps=9, env_kwargs=STATE_ONLY)
    calls = agent.calls
    assert info["per_episode"][0]["steps"] == 9 and agent.resets == 1
    assert len(calls) == 5  # ceil(9 / 2): each 2-action chunk is executed before the next call
    first = calls[0]["full_state"]
    assert first.shape == (3, 39)
    np.testing.assert_array_equal(first[0], first[2])  # episode start: the first frame repeated
    second = calls[1]["full_state"]
    np.testing.assert_array_equal(second[0], first[2])  # history shifts by the 2 executed steps
    assert not np.array_equal(second[1], second[2])
    assert runner._worker == {}  # the in-process env was closed


@given(k=st.integers(0, 200), extra=st.integers(0, 200))
def test_wilson_interval_brackets_the_rate(k, extra):
    n = k + extra
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo - 1e-12 <= k / n <= hi + 1e-12


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(48, 50) == pytest.approx((0.8654, 0.9890), abs=1e-4)


def test_env_kwargs_follow_the_policy_observations():
    sm = ShapeMeta.from_dict({"obs": {"point_cloud": {"type": "point_cloud", "shape": [256, 6]},
                                      "image": {"type": "rgb", "shape": [3, 96, 96]},
                                      "image_corner3": {"type": "rgb", "shape": [3, 96, 96]},
                                      "agent_pos": {"type": "low_dim", "shape": [4]}},
                              "action": {"shape": [4]}})
    kw = env_kwargs_from_shape_meta(sm)
    assert kw == {"point_cloud_cameras": ("corner2",), "num_points": 256, "use_point_color": True,
                  "image_cameras": ("corner2", "corner3"), "image_size": 96}
    state_only = ShapeMeta.from_dict({"obs": {"agent_pos": {"type": "low_dim", "shape": [4]}}, "action": {"shape": [4]}})
    assert env_kwargs_from_shape_meta(state_only) == STATE_ONLY


def test_saved_policy_is_evaluated_from_its_checkpoint(tmp_path):
    """A real (untrained) policy saved by policies.checkpoint: task, observations and step limit come from it."""
    cfg = _untrained_checkpoint(tmp_path / "policy")
    info = evaluate_checkpoint(tmp_path / "policy", episodes=2, n_workers=0, out_dir=tmp_path / "eval")
    assert info["task"] == "reach-v3" and info["aggregated"]["n_agent_failures"] == 0
    assert [e["steps"] for e in info["per_episode"]] == [6, 6]  # the checkpoint's step limit
    assert info["config"]["env_kwargs"]["num_points"] == 64
    assert (tmp_path / "eval" / "eval_info.json").is_file()

    # Re-planning more often: the executed part of each chunk is cut at evaluation time, never past the horizon.
    policy = load_agent(str(tmp_path / "policy"), n_action_steps=1)
    obs = {"point_cloud": np.zeros((2, 64, 3), np.float32), "agent_pos": np.zeros((2, 4), np.float32)}
    assert policy.predict_action(obs).shape == (1, 4)
    most = cfg.horizon - cfg.n_obs_steps + 1
    with pytest.raises(ValueError, match=f"at most {most}"):
        evaluate_checkpoint(tmp_path / "policy", episodes=1, n_workers=0, n_action_steps=most + 1)

    # noise_scale=0: one deterministic chunk per observation; the default keeps sampling.
    still = load_agent(str(tmp_path / "policy"), noise_scale=0.0)
    assert np.array_equal(still.predict_action(obs), still.predict_action(obs))
    sampling = load_agent(str(tmp_path / "policy"))
    assert not np.array_equal(sampling.predict_action(obs), sampling.predict_action(obs))
    # hold_noise: one starting noise per episode, so the same observation gives the same chunk until reset().
    held = load_agent(str(tmp_path / "policy"), hold_noise=True)
    first = held.predict_action(obs)
    assert np.array_equal(first, held.predict_action(obs))
    held.reset()
    assert not np.array_equal(first, held.predict_action(obs))
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="noise_scale must be >= 0"):
            evaluate_checkpoint(tmp_path / "policy", episodes=1, n_workers=0, noise_scale=bad, out_dir=tmp_path / "bad")
    with pytest.raises(ValueError, match="average_draws must be >= 1"):
        evaluate_checkpoint(tmp_path / "policy", episodes=1, n_workers=0, average_draws=0, out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_average_draws_runs_the_mean_of_that_many_single_draws(tmp_path):
    """average_draws=K: the executed chunk is the mean of the K chunks its K starting noises give one by one."""
    import torch

    cfg = _untrained_checkpoint(tmp_path / "policy")
    obs = {"point_cloud": np.random.default_rng(0).normal(size=(2, 64, 3)).astype(np.float32),
           "agent_pos": np.zeros((2, 4), np.float32)}
    single = load_agent(str(tmp_path / "policy"))
    averaged = load_agent(str(tmp_path / "policy"), average_draws=3)
    noise = torch.randn(3, cfg.horizon, 4, generator=torch.Generator().manual_seed(1))
    one_by_one = [single.predict_action(obs, noise=noise[i : i + 1]) for i in range(3)]
    np.testing.assert_allclose(averaged.predict_action(obs, noise=noise), np.mean(one_by_one, axis=0), atol=1e-5)
    assert averaged.predict_action(obs).shape == single.predict_action(obs).shape
    with pytest.raises(ValueError, match="noise must have shape"):
        averaged.predict_action(obs, noise=noise[:1])  # one noise per draw


def _untrained_checkpoint(path, task: str = "reach-v3", steps: int = 6):
    """A real policy with random weights saved by policies.checkpoint (its task and step limit in the metadata)."""
    from envs.metaworld_env import metaworld_shape_meta
    from policies.checkpoint import save_policy
    from policies.config import BackboneConfig, PolicyConfig
    from policies.factory import build_policy

    full = metaworld_shape_meta(task, num_points=64)
    sm = ShapeMeta(obs={k: full.obs[k] for k in ("point_cloud", "agent_pos")}, action_dim=4)
    cfg = PolicyConfig(backbone=BackboneConfig(type="mlp", hidden_dim=32, n_layers=2))
    stats = {"point_cloud": {"min": -np.ones(3), "max": np.ones(3)}, "agent_pos": {"min": -np.ones(4), "max": np.ones(4)},
             "action": {"min": -np.ones(4), "max": np.ones(4)}}
    save_policy(build_policy(cfg, sm, stats), cfg, path, metadata={"task": {"env": task, "max_episode_steps": steps}})
    return cfg


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


def test_eval_cli_runs_the_expert(tmp_path, capsys):
    from envs.evaluate import main

    assert main(["task=reach-v3", "policy=expert", "n_episodes=2", "n_workers=1", f"out={tmp_path}",
                 "n_videos=0", "progress=false"]) == 0
    out = capsys.readouterr().out
    assert "success 2/2 = 100.0 %" in out and "95 % CI" in out
    assert json.loads((tmp_path / "eval_info.json").read_text())["config"]["seeds"] == eval_seeds(2)
    assert main(["task=reach-v2", "policy=expert", "n_episodes=1"]) == 2
    assert "reach-v3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # unknown option: usage on stderr, exit code 2
        main(["taks=reach-v3"])
    assert exit_info.value.code == 2 and "taks" in capsys.readouterr().err


def _failing_factory():
    raise RuntimeError("checkpoint is corrupt")


def test_a_worker_that_cannot_build_its_agent_gives_a_clear_error():
    with pytest.raises(RuntimeError, match="worker died while building"):
        evaluate(_failing_factory, "reach-v3", eval_seeds(2), n_workers=2, max_steps=5, env_kwargs=STATE_ONLY)
