"""The multimodal suite behind the registry: task names, mixes, the shared collector, the mode metrics of the
evaluation runner, the task configs and the benchmark's handling of the suite (state-only rollouts, no rendering)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.success import resolve_tasks, task_choice, task_group
from benchmarks.success_report import mode_table, success_table
from core.errors import ConfigError, MfpError
from core.spec import FULL_STATE
from demos.replay_buffer import ReplayBuffer, ReplayBufferError
from envs.multimodal.collect import collect
from envs.multimodal.env import MultimodalEnv
from envs.multimodal.experts import AveragedExpert, StrategyExpert, strategy_for_seed
from envs.multimodal.tasks import TASKS, get_task
from envs.runner import evaluate, mode_summary
from envs.suites import UnknownTaskError, get_suite, suite_for_task
from training.config import compose_train_config

STATE_ONLY = {"point_cloud_cameras": (), "image_cameras": ()}


def test_tasks_are_found_by_name_and_bad_names_say_what_exists():
    suite = suite_for_task("multimodal/detour")
    assert suite.name == "multimodal"
    assert suite.check_task("detour") == suite.check_task("multimodal/detour") == "multimodal/detour"
    assert suite.task_names() == [f"multimodal/{t}" for t in TASKS]
    assert suite.strategies("multimodal/button-order") == ["right-first", "far-first"]
    with pytest.raises(UnknownTaskError, match="did you mean: multimodal/detour"):
        suite.check_task("multimodal/detuor")
    with pytest.raises(UnknownTaskError, match="did you mean: multimodal/pick"):
        suite_for_task("multimodl/pick")


@pytest.mark.parametrize("task", list(TASKS))
def test_shape_meta_matches_the_env_without_building_it(task):
    meta = get_suite("multimodal").shape_meta(f"multimodal/{task}", num_points=64)
    env = MultimodalEnv(task, **STATE_ONLY)
    assert meta.obs[FULL_STATE].shape == (env.state_dim,)
    assert meta.obs["point_cloud"].shape == (64, 3) and meta.action_dim == env.action_dim == 4
    env.close()


def test_mode_mix_is_checked_per_suite():
    multimodal, metaworld = get_suite("multimodal"), get_suite("metaworld")
    assert multimodal.check_mode_mix("multimodal/pick", [0.25, 0.75]) == [0.25, 0.75]
    for bad in ([0.5], [0.7, 0.7], [-0.5, 1.5]):
        with pytest.raises(ConfigError, match="2 probabilities summing to 1, one per strategy of multimodal/pick"):
            multimodal.check_mode_mix("multimodal/pick", bad)
    with pytest.raises(ConfigError, match="one scripted strategy"):
        metaworld.check_mode_mix("reach-v3", [1.0])
    assert metaworld.strategies("reach-v3") == [] and metaworld.mode_classifier("reach-v3") is None


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2).filter(lambda w: sum(w) > 1e-3), st.integers(0, 10**6))
def test_any_normalised_mix_is_accepted_and_a_zero_share_is_never_drawn(weights, seed):
    mix = get_suite("multimodal").check_mode_mix("multimodal/detour", [w / sum(weights) for w in weights])
    names = ["right", "left"]
    drawn = strategy_for_seed(seed, names, mix)
    assert drawn in names and mix[names.index(drawn)] > 0


def test_task_configs_compose_like_meta_world_ones():
    cfg = compose_train_config(["task=multimodal/either-button", "profile=cpu"])
    task = cfg.task
    assert (task.suite, task.env, task.obs_keys) == (
        "multimodal",
        "multimodal/either-button",
        ["point_cloud", "agent_pos"],
    )
    assert task.mode_mix == [0.5, 0.5] and task.n_demos == 20 and task.max_episode_steps == 200
    assert "either-button" in task.dataset
    assert compose_train_config(["task=multimodal/pick", "task.mode_mix=[0.8,0.2]"]).task.mode_mix == [0.8, 0.2]
    with pytest.raises(MfpError, match="mode_mix must be 2 probabilities"):
        compose_train_config(["task=multimodal/pick", "task.mode_mix=[0.8,0.8]"])
    with pytest.raises(MfpError, match="one scripted strategy"):
        compose_train_config(["task.mode_mix=[1.0]"])  # the default Meta-World task


def test_collector_draws_the_mix_records_it_and_refuses_another(tmp_path):
    out = tmp_path / "detour.zarr"
    summary = collect(
        "multimodal/detour", 2, out, mode_mix=[0.0, 1.0], point_cloud_cameras=(), image_cameras=(), progress=False
    )
    assert summary["n_episodes"] == 2
    rb = ReplayBuffer.open(out, mode="r")
    assert rb.attrs["suite"] == "multimodal" and rb.attrs["task"] == "multimodal/detour"
    assert rb.attrs["mode_mix"] == [0.0, 1.0] and rb.attrs["strategies"] == ["right", "left"]
    # every demo went left (the mix gives right no share), as its recorded trajectory shows
    modes = [get_task("detour").classify(rb.get_episode(i)[FULL_STATE]).mode for i in range(rb.n_episodes)]
    assert modes == ["left", "left"]
    with pytest.raises(ReplayBufferError, match="mode_mix"):
        collect(
            "multimodal/detour", 3, out, mode_mix=[0.5, 0.5], point_cloud_cameras=(), image_cameras=(), progress=False
        )
    with pytest.raises(MfpError, match="action_noise"):
        collect("multimodal/detour", 3, tmp_path / "x.zarr", action_noise=0.1)


def test_runner_reports_each_episodes_mode_and_the_frequencies_beside_the_mix():
    seeds = [100_000, 100_001]
    info = evaluate(
        StrategyExpert("pick", "side"),
        "multimodal/pick",
        seeds,
        n_workers=0,
        env_kwargs=STATE_ONLY,
        demo_mix=[0.25, 0.75],
    )
    modes = info["aggregated"]["modes"]
    assert [e["mode"] for e in info["per_episode"]] == ["side", "side"]
    assert not any(e["dithered"] for e in info["per_episode"])
    assert modes["demo_mix"] == {"top": 0.25, "side": 0.75}
    assert modes["frequencies"] == {"top": 0.0, "side": 1.0} and modes["max_gap"] == pytest.approx(0.25)
    stuck = evaluate(
        AveragedExpert("pick"), "multimodal/pick", seeds[:1], n_workers=0, env_kwargs=STATE_ONLY, max_steps=120
    )
    episode = stuck["per_episode"][0]
    assert not episode["success"] and episode["mode"] == "none" and episode["stalled"] and episode["dithered"]
    assert stuck["aggregated"]["modes"]["frequencies"]["none"] == 1.0
    with pytest.raises(ConfigError, match="mode_mix"):
        evaluate(AveragedExpert("pick"), "multimodal/pick", seeds, n_workers=0, demo_mix=[1.0])


def test_mode_summary_on_hand_made_episodes():
    episodes = [
        {"mode": "a", "dithered": False, "switched": False, "stalled": False},
        {"mode": "a", "dithered": True, "switched": True, "stalled": False},
        {"mode": "none", "dithered": True, "switched": False, "stalled": True},
        {"success": False},  # an episode whose reset failed: no trajectory
    ]
    s = mode_summary(episodes, {"a": 0.5, "b": 0.5})
    assert s["counts"] == {"a": 2, "b": 0, "none": 2}
    assert s["frequencies"] == {"a": 0.5, "b": 0.0, "none": 0.5} and s["max_gap"] == 0.5
    assert (s["n_dithered"], s["n_switched"], s["n_stalled"], s["pc_dithered"]) == (2, 1, 1, 50.0)


def test_benchmark_resolves_the_suite_and_reports_its_modes():
    tasks = resolve_tasks(["multimodal"])
    assert tasks == [f"multimodal/{t}" for t in TASKS]
    assert resolve_tasks(["multimodal/pick", "reach-v3"]) == ["multimodal/pick", "reach-v3"]
    assert task_group("multimodal/pick") == "multimodal" and task_choice("multimodal/pick") == "multimodal/pick"
    assert task_choice("reach-v3") is None
    with pytest.raises(MfpError, match="unknown multimodal task"):
        resolve_tasks(["multimodal/nope"])
    modes = {
        "demo_mix": {"top": 0.5, "side": 0.5},
        "frequencies": {"top": 0.3, "side": 0.7},
        "max_gap": 0.2,
        "pc_dithered": 10.0,
    }
    results = [
        {
            "task": "multimodal/pick",
            "group": "multimodal",
            "method": m,
            "seed": 0,
            "status": "ok",
            "success": s,
            "n_episodes": 50,
            "ci95": [s - 10, s + 10],
            "modes": modes,
        }
        for m, s in (("meanflow", 90.0), ("regression", 10.0))
    ]
    table = success_table(results)
    assert "multimodal/pick" in table and "multimodal (two strategies per task) average" in table
    assert "MP1" not in table  # no Meta-World anchor without Meta-World tasks
    text = mode_table(results)
    assert text is not None and "top 0.30 (0.50), side 0.70 (0.50)" in text and "| 0.20 | 10.0 |" in text
    assert mode_table([{**r, "modes": None} for r in results]) is None


@pytest.mark.slow
def test_collect_train_and_eval_end_to_end(tmp_path):
    """`mfp collect`, `mfp train` and `mfp eval` on a multimodal task, as a user runs them (real processes, point
    clouds, a tiny model): the checkpoint's evaluation carries the mode metrics beside the configured mix."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "WANDB_MODE": "disabled"}
    data, run, ev = tmp_path / "detour.zarr", tmp_path / "run", tmp_path / "eval"

    def mfp(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "mfp", *args], env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    mfp(
        "collect",
        "task=multimodal/detour",
        "n_episodes=2",
        "num_points=128",
        "image_cameras=[]",
        "mode_mix=[0.5,0.5]",
        f"out={data}",
        "progress=false",
    )
    mfp(
        "train",
        "task=multimodal/detour",
        "profile=cpu",
        f"task.dataset={data}",
        "task.n_demos=2",
        "task.num_points=128",
        "policy.backbone.hidden_dim=64",
        "policy.backbone.n_layers=2",
        "num_steps=10",
        "batch_size=16",
        "warmup_steps=2",
        "eval.episodes=2",
        "eval.workers=1",
        "eval.videos=0",
        "torch_threads=1",
        "progress=false",
        f"output_dir={run}",
    )
    info = json.loads((run / "eval" / "eval_info.json").read_text())
    assert info["task"] == "multimodal/detour"
    assert info["aggregated"]["modes"]["demo_mix"] == {"right": 0.5, "left": 0.5}
    out = mfp(
        "eval",
        f"checkpoint={run / 'policy'}",
        "n_episodes=2",
        "n_workers=1",
        "n_videos=0",
        f"out={ev}",
        "progress=false",
    )
    assert "[eval] modes: right" in out
    episodes = json.loads((ev / "eval_info.json").read_text())["per_episode"]
    assert all(e["mode"] in ("right", "left", "none") and isinstance(e["dithered"], bool) for e in episodes)


def test_experts_pickle_for_the_runners_worker_processes():
    """`mfp eval policy=expert` hands the expert to spawned workers: it must pickle and act the same after."""
    import pickle

    obs = {FULL_STATE: np.zeros((2, 10), dtype=np.float32)}
    for expert in (
        StrategyExpert("detour", "left"),
        AveragedExpert("detour"),
        get_suite("multimodal").make_expert("multimodal/detour"),
    ):
        expert.reset(seed=5)
        copy = pickle.loads(pickle.dumps(expert))
        copy.reset(seed=5)
        np.testing.assert_array_equal(copy.predict_action(obs), expert.predict_action(obs))
