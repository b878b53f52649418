"""Evaluation runner: scripted expert in worker processes, broken agents, history stacking, eval CLI."""

from __future__ import annotations

import json
import re

import imageio.v2 as imageio
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.seeds import DEMO_SEED_BASE, EVAL_SEED_BASE, demo_seeds, eval_seeds, is_demo_seed
from envs.metaworld.expert import ScriptedExpert
from envs.runner import evaluate, wilson_interval

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
    info = evaluate(
        ScriptedExpert("reach-v3"),
        "reach-v3",
        seeds,
        n_workers=2,
        out_dir=tmp_path,
        n_videos=1,
        max_steps=150,
        env_kwargs=STATE_ONLY,
        label="expert",
    )
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


@pytest.mark.parametrize(
    "agent, reason",
    [(NaNAgent(), "NaN"), (WrongShapeAgent(), r"shape \(2, 3\)"), (RaisingAgent(), "RuntimeError: boom")],
)
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


def test_eval_cli_runs_the_expert(tmp_path, capsys):
    from mfp.cli import main as mfp

    assert (
        mfp(
            [
                "eval",
                "task=reach-v3",
                "policy=expert",
                "n_episodes=2",
                "n_workers=1",
                f"out={tmp_path}",
                "n_videos=0",
                "progress=false",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "success 2/2 = 100.0 %" in out and "95 % CI" in out
    assert json.loads((tmp_path / "eval_info.json").read_text())["config"]["seeds"] == eval_seeds(2)
    assert mfp(["eval", "task=reach-v2", "policy=expert", "n_episodes=1"]) == 2
    assert "reach-v3" in capsys.readouterr().err
    assert mfp(["eval", "taks=reach-v3"]) == 2  # unknown option: one line naming it, exit code 2
    assert "taks" in capsys.readouterr().err


def _failing_factory():
    raise RuntimeError("checkpoint is corrupt")


def test_a_worker_that_cannot_build_its_agent_gives_a_clear_error():
    with pytest.raises(RuntimeError, match="worker died while building"):
        evaluate(_failing_factory, "reach-v3", eval_seeds(2), n_workers=2, max_steps=5, env_kwargs=STATE_ONLY)
