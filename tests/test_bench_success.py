"""`mfp bench success`: difficulty groups, table/aggregation logic, resume-skip of finished runs, CLI refusals, preset
composition, robomimic tasks next to Meta-World ones (names, plans, their own report section), and (slow) the smoke
preset end to end on a real task."""

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import success as bench
from benchmarks.success_report import (
    DM1_COLUMN,
    MP1_REPORTED,
    average_stat,
    bootstrap_interval,
    code_line,
    group_averages,
    paired_differences,
    paired_table,
    plot_curves,
    plot_success,
    report_markdown,
    reported_anchors,
    success_table,
    task_stat,
)
from envs.metaworld.env import UnknownTaskError, task_names
from envs.metaworld.groups import GROUPS, difficulty, tasks_by_group
from envs.runner import wilson_interval
from envs.suites import suite_for_task
from training.provenance import code_version

TASK = "button-press-topdown-v3"


def result(task: str, method: str, seed: int, n_success: int, n: int = 50, **kw) -> dict:
    """One run's result as `mfp bench success` records it (Wilson interval from the runner's own function)."""
    lo, hi = wilson_interval(n_success, n)
    base = {
        "task": task,
        "group": bench.task_group(task),
        "method": method,
        "seed": seed,
        "nfe": 10 if method == "ddim" else 1,
        "status": "ok",
        "success": 100.0 * n_success / n,
        "n_episodes": n,
        "n_success": n_success,
        "ci95": [100 * lo, 100 * hi],
        "latency_ms_p50": 1.5,
        "latency_ms_p99": 4.0,
        "steps": 1200,
        "train_seconds": 540.0,
        "steps_per_s": 2.2,
        "eval_seconds": 60.0,
        "wall_seconds": 630.0,
        "resumed": False,
        "run_dir": f"x/{task}/{method}/seed{seed}",
    }
    return {**base, **kw}


# ------------------------------------------------------------------------------------------ difficulty groups
def test_difficulty_groups_cover_every_metaworld_task_once():
    groups = tasks_by_group()
    assert {g: len(v) for g, v in groups.items()} == {"easy": 28, "medium": 11, "hard": 6, "very_hard": 5}
    assert sorted(t for v in groups.values() for t in v) == sorted(task_names())
    # The tasks DESIGN section 5 names are in the groups it names.
    for task in ("coffee-pull", "hammer", "peg-insert-side", "soccer"):
        assert difficulty(f"{task}-v3") == "medium"
    for task in ("assembly", "hand-insert", "pick-place", "push"):
        assert difficulty(f"{task}-v3") == "hard"
    for task in ("disassemble", "pick-place-wall", "shelf-place", "stick-pull", "stick-push"):
        assert difficulty(f"{task}-v3") == "very_hard"
    assert difficulty(TASK) == "easy"
    with pytest.raises(UnknownTaskError, match="stick-pull-v3"):
        difficulty("stik-pull-v3")


# ------------------------------------------------------------------------------------------ aggregation
def two_seed_results() -> list[dict]:
    # Given out of difficulty order on purpose; method "b" lacks one run and has a failed one.
    return [
        result("push-v3", "a", 0, 10),
        result("push-v3", "a", 1, 20),
        result(TASK, "a", 0, 40),
        result(TASK, "a", 1, 45),
        result("reach-v3", "a", 0, 30),
        result("reach-v3", "a", 1, 35),
        result("push-v3", "b", 0, 5),
        result("push-v3", "b", 1, 15),
        result(TASK, "b", 0, 50),
        result(TASK, "b", 1, 48),
        result("reach-v3", "b", 0, 25),
        {**result("reach-v3", "b", 1, 0), "status": "failed", "success": None},
    ]


def test_group_averages_are_per_seed_means_then_mean_and_std_over_seeds():
    results = two_seed_results()
    avg = group_averages(results)
    assert list(avg) == ["easy", "hard", "all"]
    # easy, method a: seed 0 = (80 + 60) / 2 = 70, seed 1 = (90 + 70) / 2 = 80.
    easy_a = avg["easy"]["a"]
    assert easy_a.mean == pytest.approx(75.0) and easy_a.std == pytest.approx(statistics.stdev([70, 80]))
    assert easy_a.complete
    # all tasks, method a: seed 0 = (20 + 80 + 60) / 3, seed 1 = (40 + 90 + 70) / 3.
    assert avg["all"]["a"].mean == pytest.approx(statistics.fmean([160 / 3, 200 / 3]))
    # method b misses (reach, seed 1): seed 1 averages the finished task only, and the cell says it is incomplete.
    easy_b = avg["easy"]["b"]
    assert easy_b.mean == pytest.approx(statistics.fmean([(100 + 50) / 2, 96]))
    assert not easy_b.complete
    assert average_stat(results, ["push-v3"], "b").complete
    # A task cell: mean ± std over seeds; with one seed, the run's Wilson interval.
    cell = task_stat(results, "push-v3", "a")
    assert (cell.mean, cell.n_seeds) == (30.0, 2) and cell.std == pytest.approx(statistics.stdev([20, 40]))
    single = task_stat([result(TASK, "a", 0, 40)], TASK, "a")
    assert single.std is None and single.ci95 == pytest.approx(tuple(100 * x for x in wilson_interval(40, 50)))


def test_markdown_table_groups_rows_by_difficulty_with_mp1_anchors():
    results = two_seed_results()
    table = success_table(results)
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| task"))
    assert header == "| task | a (1 NFE) | b (1 NFE) | MP1 reported (v2) |"
    rows = [line.split(" | ")[0].lstrip("| ") for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert rows == [
        TASK,
        "reach-v3",
        "**Easy average** (2 tasks)",
        "push-v3",
        "**Hard average** (1 task)",
        "**All tasks** (3)",
    ]
    easy_row = next(line for line in lines if line.startswith("| **Easy average**"))
    assert "**75.0 ± 7.1**" in easy_row and easy_row.endswith(f"| {MP1_REPORTED['easy']:.1f} |")
    assert f"| {MP1_REPORTED['hard']:.1f} |" in next(line for line in lines if "Hard average" in line)
    assert f"| {MP1_REPORTED['all']:.1f} |" in next(line for line in lines if "All tasks" in line)
    assert "\\*" in easy_row and "missing or failed" in table  # method b's incomplete average is marked
    assert "Failed runs: reach-v3 b seed 1" in table
    one_seed = success_table([result(TASK, "ddim", 0, 40)])
    assert "ddim (10 NFE)" in one_seed and "80.0 (67–89)" in one_seed  # Wilson 95 % interval of 40/50


def test_paired_comparison_uses_only_runs_both_methods_finished():
    results = two_seed_results()
    diffs = paired_differences(results, "a", "b", ["push-v3", TASK, "reach-v3"])
    assert sorted(diffs) == [-20, -6, 10, 10, 10]  # b failed reach-v3 seed 1: that seed has no pair there
    table = paired_table(results)
    row = next(line for line in table.splitlines() if line.startswith("| a − b"))
    assert "| Meta-World | 5 | +0.8 |" in row and row.endswith("| 3 / 0 / 2 |")
    lo, hi = bootstrap_interval(diffs)
    assert -20 <= lo < 0.8 < hi <= 10 and f"{lo:+.1f} to {hi:+.1f}" in row
    assert bootstrap_interval(diffs) == (lo, hi)  # fixed resampling seed: the report is reproducible
    renamed = [dict(r, method="meanflow") if r["method"] == "b" else r for r in results]
    assert "| meanflow − a | Meta-World | 5 | -0.8 |" in paired_table(renamed)  # meanflow is the reference
    assert paired_table([result(TASK, "a", 0, 40)]) is None  # one method: nothing to compare
    assert "Paired comparison" in report_markdown(results, "t")


def test_report_says_which_commits_trained_the_runs():
    clean = {"package": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": False}
    runs = [
        result(TASK, "a", 0, 40, code=clean),
        result(TASK, "a", 1, 40, code=clean),
        result(TASK, "b", 0, 40, code={**clean, "git_commit": "fedcba9876543210", "git_dirty": True}),
        result(TASK, "b", 1, 40),
        result(TASK, "c", 0, 40, code={**clean, "git_commit": None}),
        result(TASK, "c", 1, 0, status="failed"),
    ]
    line = code_line(runs)
    assert line == (
        "Code that trained the runs: 0123456789 (2 runs), fedcba9876 + uncommitted changes (1 run), "
        "no git checkout (1 run), not recorded (1 run)."
    )
    assert line in report_markdown(runs, "t")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=30))
def test_bootstrap_interval_of_a_mean_lies_within_the_values(values):
    lo, hi = bootstrap_interval(values, n_resamples=300)
    assert min(values) - 1e-9 <= lo <= hi <= max(values) + 1e-9
    assert bootstrap_interval(values[:1]) is None
    with pytest.raises(ValueError, match="NaN or inf"):
        bootstrap_interval([*values, float("nan")])


def combine(tmp_path: Path, *sources: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]  # the checkout: the harness is not installed
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.combine_results", str(tmp_path / "out"), *sources],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )


@pytest.mark.slow  # end to end, 20-30 s: keeps the fast suite under 10 minutes on 2 cores
def test_combine_results_renames_variants_into_one_paired_table(tmp_path):
    fast = [result("push-v3", "meanflow", s, n) for s, n in ((0, 40), (1, 35))] + [result("push-v3", "ddim", 0, 30)]
    slow = [result("push-v3", "meanflow", s, n) for s, n in ((0, 30), (1, 33))]
    (tmp_path / "fast.json").write_text(json.dumps({"runs": fast}))
    (tmp_path / "slow.json").write_text(json.dumps({"runs": slow}))
    done = combine(tmp_path, "fast.json:meanflow", "slow.json:meanflow=meanflow@3e-4")
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted({r["method"] for r in saved["runs"]}) == ["meanflow", "meanflow@3e-4"]  # ddim filtered out
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| meanflow − meanflow@3e-4 | Meta-World | 2 | +12.0 |" in md  # (80 - 60 + 70 - 66) / 2

    twice = combine(tmp_path, "fast.json", "slow.json")
    assert twice.returncode != 0 and "('push-v3', 'meanflow', 0) is in both" in twice.stderr
    bad = combine(tmp_path, "slow.json:meanflow=")
    assert bad.returncode != 0 and "METHOD=LABEL" in bad.stderr
    missing = combine(tmp_path, "nowhere.json")
    assert missing.returncode != 0 and "not a readable" in missing.stderr
    typo = combine(tmp_path, "fast.json:meanflw=x")  # a misspelt method would otherwise drop its runs silently
    assert typo.returncode != 0 and "no runs of meanflw; it has ddim, meanflow" in typo.stderr
    (tmp_path / "cut.json").write_text(json.dumps({"runs": [{"task": "push-v3", "method": "ddim"}]}))
    cut = combine(tmp_path, "cut.json")
    assert cut.returncode != 0 and "cut.json: not a readable" in cut.stderr and "'seed'" in cut.stderr


def test_report_and_plot_files(tmp_path):
    results = two_seed_results() + [result("push-v3", "a", 2, 30, best5_periodic=70.0, n_periodic=9)]
    md = report_markdown(results, "title")
    assert md.startswith("# title") and "latency p50 (ms)" in md and "best 5 of 9 evaluations" in md
    assert "best 5" not in report_markdown(two_seed_results(), "t")  # only when periodic evals exist
    png = plot_success(results, tmp_path / "success.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_eval(path: Path, successes: Sequence[bool], seed0: int = 100000) -> None:
    path.mkdir(parents=True)
    episodes = [{"seed": seed0 + i, "success": s} for i, s in enumerate(successes)]
    (path / "eval_info.json").write_text(
        json.dumps({"per_episode": episodes, "aggregated": {"pc_success": 100.0 * sum(successes) / len(successes)}})
    )


def test_best_of_periodic_pools_the_final_eval_on_the_periodic_seeds(tmp_path):
    assert bench.best_of_periodic_evals(tmp_path) == {}  # no periodic evaluation: nothing to report
    # Six periodic evals of 4 episodes (0, 25, ..., 100 %), out of order on disk as steps sort as strings.
    for i, step in enumerate([100, 200, 300, 400, 500, 1000]):
        _write_eval(tmp_path / f"eval_step{step}", [j < min(i, 4) for j in range(4)])
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 1200}))
    # The final eval ran 8 episodes; only its first 4 seeds (the periodic ones: 1 of 4 succeeded) enter the pool.
    _write_eval(tmp_path / "eval", [True, False, False, False] + [True] * 4)
    got = bench.best_of_periodic_evals(tmp_path)
    assert got["n_periodic"] == 7
    assert [s for s, _ in got["periodic_curve"]] == [100, 200, 300, 400, 500, 1000, 1200]
    assert got["periodic_curve"][-1] == [1200, 25.0]
    assert got["best5_periodic"] == pytest.approx((100 + 100 + 75 + 50 + 25) / 5)  # a tie at 25 %: either counts
    md = report_markdown([result("push-v3", "a", 0, 10, **got)], "t")
    assert "best 5 of 7 evaluations" in md and "| step 1200 |" in md and "| 0 | 25 | 50 | 75 | 100 | 100 | 25 |" in md
    png = plot_curves([result("push-v3", "a", 0, 10, **got)], tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curves(two_seed_results(), tmp_path / "none.png") is None
    (tmp_path / "eval_step1300").mkdir()
    (tmp_path / "eval_step1300" / "eval_info.json").write_text('{"per_episode": [')  # cut off mid-write
    with pytest.raises(ValueError, match="eval_step1300.*not a periodic evaluation"):
        bench.best_of_periodic_evals(tmp_path)


# ------------------------------------------------------------------------------------------ plan and resume
SMOKE = bench.load_preset("smoke")


def smoke_plan(out: Path, methods=("meanflow", "regression"), extra=()) -> list:
    return bench.plan_runs([TASK], list(methods), [0], 2, SMOKE.num_steps, SMOKE.overrides, list(extra), out)


def finish_run(run) -> None:
    """Leave in ``run.out_dir`` what a finished `mfp train` leaves: config.json, summary.json, eval_info.json."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / "config.json").write_text(json.dumps(bench.config_dict(run.config)))
    lo, hi = wilson_interval(1, 2)
    agg = {
        "n_episodes": 2,
        "n_success": 1,
        "pc_success": 50.0,
        "ci95_low": lo,
        "ci95_high": hi,
        "latency_ms_p50": 1.2,
        "latency_ms_p99": 3.4,
        "eval_s": 4.0,
    }
    (run.out_dir / "eval").mkdir(exist_ok=True)
    (run.out_dir / "eval" / "eval_info.json").write_text(
        json.dumps({"aggregated": agg, "config": {"seeds": [100000, 100001]}})
    )
    (run.out_dir / "summary.json").write_text(
        json.dumps({"steps": run.config.num_steps, "train_seconds": 2.0, "steps_per_s": 2.0, "eval": agg})
    )


def test_finished_runs_are_skipped_and_killed_runs_resume(tmp_path):
    runs = smoke_plan(tmp_path)
    assert [r.state for r in runs] == ["new", "new"]
    assert runs[0].out_dir == tmp_path / TASK / "meanflow" / "seed0"
    finish_run(runs[0])
    runs[1].out_dir.mkdir(parents=True)
    (runs[1].out_dir / "config.json").write_text(json.dumps(bench.config_dict(runs[1].config)))
    (runs[1].out_dir / "train_state.pt").write_bytes(b"")  # killed after its first checkpoint
    again = smoke_plan(tmp_path)
    assert [r.state for r in again] == ["done", "resume"]
    assert bench.train_command(again[1])[-1] == "resume=true"
    assert "resume=true" not in bench.train_command(smoke_plan(tmp_path / "fresh")[0])
    got = bench.collect_result(again[0])
    assert (got["success"], got["n_episodes"], got["steps"], got["eval_seeds"]) == (50.0, 2, 4, "100000..100001")
    assert got["ci95"] == pytest.approx([100 * x for x in wilson_interval(1, 2)])
    assert (got["device"], got["eval_device"]) == ("cpu", "cpu")  # eval.device "" = the training device

    # Another setting for the same directory is refused instead of mixing runs.
    with pytest.raises(bench.BenchError, match="batch_size"):
        smoke_plan(tmp_path, extra=["batch_size=16"])
    # Bookkeeping keys (threads, workers, videos) do not make a run different.
    assert smoke_plan(tmp_path, extra=["torch_threads=2", "eval.workers=2"])[0].state == "done"
    # A run saved before an option existed ran with its default: still the same run; a non-default value is not.
    saved_path = runs[0].out_dir / "config.json"
    saved = json.loads(saved_path.read_text())
    del saved["policy"]["meanflow"]["p_std"]
    saved_path.write_text(json.dumps(saved))
    assert smoke_plan(tmp_path)[0].state == "done"
    with pytest.raises(bench.BenchError, match="policy.meanflow.p_std"):
        smoke_plan(tmp_path, extra=["policy.meanflow.p_std=2.0"])


def test_benchmark_with_every_run_finished_trains_nothing_and_writes_outputs(tmp_path, capsys):
    for run in smoke_plan(tmp_path):
        finish_run(run)
    assert bench.main(["--preset", "smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 to train, 0 to resume, 2 done" in out and "**Easy average** (1 task)" in out
    assert "one thread per eval worker; policy on cpu;" in out
    assert not list(tmp_path.rglob(bench.LOG_FILE))  # no `mfp train` was started
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [(r["method"], r["status"], r["success"]) for r in saved["runs"]] == [
        ("meanflow", "ok", 50.0),
        ("regression", "ok", 50.0),
    ]
    assert (tmp_path / "results.md").read_text().startswith("# mfp bench success --preset smoke")
    assert (tmp_path / "success.png").is_file()


def test_methods_must_share_one_backbone(tmp_path):
    runs = smoke_plan(tmp_path, methods=("meanflow", "meanflow_dispersive", "ddim"))
    assert {r.config.policy.head for r in runs} == {"meanflow", "ddim"}
    assert runs[1].config.policy.dispersive.weight > 0
    other = smoke_plan(tmp_path / "x", extra=["policy.backbone.hidden_dim=32"])[1]
    with pytest.raises(bench.BenchError, match="policy.backbone.hidden_dim"):
        bench.check_same_backbone([runs[0], other])


# ------------------------------------------------------------------------------------------ CLI and presets
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "meanflw"], "known: ddim, ddpm, flow, flow_1step, meanflow, meanflow_dispersive, regression"),
        (["--tasks", "stik-pull"], "did you mean: stick-pull-v3"),
        (["--tasks", "robomimic/lfit"], "known: robomimic/lift, robomimic/can, robomimic/square"),
        (["--preset", "nope"], "known: cpu, cpu_goal, full, multimodal_cpu, robomimic, robomimic_cpu, smoke"),
        (["seed=1"], "use --seeds"),
        (["task=robomimic/can"], "use --tasks"),
        (["--preset", "smoke", "batch_size"], "not key=value"),
    ],
)
def test_cli_refuses_bad_input_with_clear_errors(argv, message, capsys):
    assert bench.main([*argv, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_presets_compose_and_say_what_they_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)  # this project's CPU machine
    cpu = bench.load_preset("cpu")
    assert sorted(difficulty(t) for t in bench.resolve_tasks(cpu.tasks)) == sorted(GROUPS)
    assert cpu.methods == ["meanflow", "meanflow_dispersive", "ddim", "regression"]
    assert (cpu.seeds, cpu.episodes, "profile=cpu" in cpu.overrides) == ([0], 50, True)
    assert bench.main(["--preset", "cpu", "--out", str(tmp_path), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "16 runs: 16 to train" in plan and "estimated time" in plan
    hours = float(plan.split("about ")[1].split(" h")[0])
    assert hours <= 3.0, "the cpu preset must fit 3 hours on this machine by its own estimate"

    full = bench.load_preset("full")
    assert len(bench.resolve_tasks(full.tasks)) == 50
    assert (full.seeds, full.episodes) == ([0, 1, 2], 100)
    assert {"profile=gpu", "device=cuda"} <= set(full.overrides)
    # Composition of the full preset (one task per method here; all 50 tasks compose the same way).
    runs = bench.plan_runs(
        ["stick-pull-v3"],
        full.methods,
        full.seeds,
        full.episodes,
        full.num_steps,
        full.overrides,
        [],
        tmp_path / "full",
    )
    assert len(runs) == 12 and {r.config.device for r in runs} == {"cuda"}
    assert {r.config.policy.backbone.down_dims[-1] for r in runs} == {2048}


def test_dry_run_estimate_counts_workers_sharing_cpu_cores(tmp_path, capsys, monkeypatch):
    """The preset's step rate was measured by one 2-thread run alone; two 1-thread runs at a time on the same two
    cores each train at half that speed, so the wall estimate must not halve (it did: 0.8 h predicted, 1.5 h taken)."""
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)

    def wall_minutes(workers: int, *overrides: str) -> float:
        argv = ["--preset", "cpu", "--tasks", "push-v3", "--out", str(tmp_path), "--dry-run", "--workers", str(workers)]
        assert bench.main([*argv, *overrides]) == 0
        return float(capsys.readouterr().out.split("estimated time: ")[1].split(" min")[0]) / workers

    alone = wall_minutes(1)
    assert wall_minutes(2, "torch_threads=1") >= 0.9 * alone
    assert wall_minutes(2, "torch_threads=1", "device=cuda") < 0.6 * alone  # a GPU run is not rescaled by cores

    rate = bench.Estimate(seconds_per_step=0.4, threads=2)
    assert bench.cpu_share_factor(rate, torch_threads=2, workers=1, cores=2) == 1.0
    assert bench.cpu_share_factor(rate, torch_threads=1, workers=2, cores=2) == 2.0
    assert bench.cpu_share_factor(rate, torch_threads=8, workers=1, cores=16) == 1.0  # never faster than measured
    assert bench.cpu_share_factor(bench.Estimate(), torch_threads=1, workers=8, cores=2) == 1.0  # threads unknown
    assert bench.cpu_share_factor(rate, torch_threads=0, workers=2, cores=2) == 2.0  # 0 = torch's default
    assert wall_minutes(1, "torch_threads=0") > 0  # was a ZeroDivisionError


def test_dry_run_warns_when_overrides_change_the_model_the_estimate_was_measured_on(tmp_path, capsys):
    """A U-Net override made the cpu preset's MLP-based estimate say 1.0 h for queues that took 1.7 h."""
    argv = ["--preset", "cpu", "--tasks", "push-v3", "--methods", "meanflow", "--out", str(tmp_path), "--dry-run"]
    assert bench.main([*argv, "torch_threads=1", "wandb.mode=offline", "lr=3e-4"]) == 0
    assert "caution" not in capsys.readouterr().out  # bookkeeping and optimizer settings keep the step cost
    assert bench.main([*argv, "policy.backbone.type=unet", "batch_size=32", "torch_threads=1"]) == 0
    caution = capsys.readouterr().out.split("caution: ")[1]
    assert caution.startswith("policy.backbone.type, batch_size change the model")
    assert bench.cost_overrides(["+task.num_points=1024", "profile=gpu", "eval.workers=2"]) == [
        "task.num_points",
        "profile",
    ]


@pytest.mark.parametrize("name", bench.known_presets())
def test_every_preset_composes_with_one_backbone(name, tmp_path):
    """Each preset's first task of each suite plans with every method (one backbone: plan_runs checks it)."""
    preset = bench.load_preset(name)
    tasks = bench.resolve_tasks(preset.tasks)
    firsts = list({suite_for_task(t).name: t for t in reversed(tasks)}.values())
    runs = bench.plan_runs(
        firsts, preset.methods, preset.seeds[:1], preset.episodes, preset.num_steps, preset.overrides, [], tmp_path
    )
    assert len(runs) == len(firsts) * len(preset.methods)
    assert {r.config.task.suite for r in runs} == {suite_for_task(t).name for t in firsts}


def test_goal_preset_is_the_cpu_preset_plus_the_goal_position(tmp_path):
    cpu, goal = bench.load_preset("cpu"), bench.load_preset("cpu_goal")
    assert (goal.tasks, goal.methods, goal.num_steps, goal.episodes) == (
        cpu.tasks,
        cpu.methods,
        cpu.num_steps,
        cpu.episodes,
    )
    runs = bench.plan_runs(["push-v3"], ["meanflow"], [0], goal.episodes, goal.num_steps, goal.overrides, [], tmp_path)
    task = runs[0].config.task
    assert task.obs_keys == ["point_cloud", "agent_pos", "goal_pos"]
    assert task.dataset == "data/push-v3-10demos-512pts-goal.zarr"


# ------------------------------------------------------------------------------------------ robomimic tasks
ROBOMIMIC = ["robomimic/lift", "robomimic/can", "robomimic/square"]


def test_robomimic_task_names_resolve_to_their_config_names_and_group():
    assert bench.resolve_tasks(["robomimic/lift", "can", "NutAssemblySquare"]) == ROBOMIMIC  # normalised names
    assert bench.resolve_tasks(["robomimic", "lift"]) == ROBOMIMIC  # the group, without duplicates
    assert bench.resolve_tasks([TASK, "robomimic/can"]) == [TASK, "robomimic/can"]
    assert {bench.task_group(t) for t in ROBOMIMIC} == {"robomimic"} and bench.task_group(TASK) == "easy"
    assert [bench.task_choice(t) for t in (TASK, "robomimic/can")] == [None, "robomimic/can"]
    with pytest.raises(
        bench.BenchError,
        match="unknown robomimic task 'robomimic/lfit'; known: robomimic/lift, robomimic/can, robomimic/square",
    ):
        bench.resolve_tasks(["robomimic/lfit"])
    with pytest.raises(bench.BenchError, match="did you mean: stick-pull-v3.*robomimic tasks: robomimic/lift"):
        bench.resolve_tasks(["stik-pull"])


def test_robomimic_cpu_preset_plans_image_runs_selected_by_task_config(tmp_path, capsys):
    preset = bench.load_preset("robomimic_cpu")
    assert (preset.tasks, preset.methods, preset.seeds, preset.episodes, preset.num_steps) == (
        ["robomimic/lift"],
        ["meanflow", "regression"],
        [0],
        50,
        4000,
    )
    assert "profile=cpu_image" in preset.overrides and preset.estimate.seconds_per_step > 0
    assert bench.main(["--preset", "robomimic_cpu", "--out", str(tmp_path), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "2 runs: 2 to train" in plan and "encoder images shallow" in plan
    assert "robomimic/lift               robomimic  meanflow" in plan
    runs = bench.plan_runs(
        preset.tasks, preset.methods, preset.seeds, preset.episodes, preset.num_steps, preset.overrides, [], tmp_path
    )
    for run in runs:
        assert "task=robomimic/lift" in run.overrides and not any(o.startswith("task.env=") for o in run.overrides)
        assert run.group == "robomimic" and run.config.num_steps == 4000 and run.config.eval.episodes == 50
        assert (run.config.task.suite, run.config.task.env) == ("robomimic", "lift")
        assert run.config.policy.encoder.image_trunk == "shallow"
    assert runs[0].out_dir == tmp_path / "robomimic" / "lift" / "meanflow" / "seed0"


def test_robomimic_gpu_preset_keeps_the_resnet18_anchor(tmp_path):
    preset = bench.load_preset("robomimic")
    assert bench.resolve_tasks(preset.tasks) == ROBOMIMIC
    assert preset.methods == ["meanflow", "meanflow_dispersive", "ddim", "regression"]
    assert (preset.seeds, preset.episodes, preset.num_steps, preset.estimate) == ([0, 1, 2], 100, None, None)
    runs = bench.plan_runs(
        ["robomimic/square"], preset.methods, [0], preset.episodes, preset.num_steps, preset.overrides, [], tmp_path
    )
    assert {(r.config.device, r.config.policy.encoder.image_trunk, r.config.task.env) for r in runs} == {
        ("cuda", "resnet18", "square")
    }
    assert {r.config.num_steps for r in runs} == {20000}  # the gpu profile's


def test_mixed_task_list_plans_each_kind_its_own_way(tmp_path, monkeypatch):
    keys = []
    compose = bench.compose_configs

    def spy(base, wanted, extra):
        keys.append(wanted)
        return compose(base, wanted, extra)

    monkeypatch.setattr(bench, "compose_configs", spy)
    tasks = bench.resolve_tasks(["push-v3", "lift"])
    runs = bench.plan_runs(tasks, ["meanflow", "regression"], [0, 1], 2, 4, ["profile=cpu_image"], [], tmp_path)
    # One composition per (task config choice, method), not per run.
    assert set(keys[0]) == {
        (None, "meanflow"),
        (None, "regression"),
        ("robomimic/lift", "meanflow"),
        ("robomimic/lift", "regression"),
    }
    by_task = {t: [r for r in runs if r.task == t] for t in tasks}
    for run in by_task["push-v3"]:
        assert run.group == "hard" and "task.env=push-v3" in run.overrides
        assert not any(o.startswith("task=") for o in run.overrides)
        assert (run.config.task.suite, run.config.task.env) == ("metaworld", "push-v3")
        assert run.config.task.obs_keys == ["point_cloud", "agent_pos"]
    for run in by_task["robomimic/lift"]:
        assert run.group == "robomimic" and "task=robomimic/lift" in run.overrides
        assert (run.config.task.suite, run.config.task.env) == ("robomimic", "lift")
    assert len(runs) == 8 and {r.seed for r in runs} == {0, 1}


def mixed_results() -> list[dict]:
    return two_seed_results() + [
        result("robomimic/lift", "a", 0, 45),
        result("robomimic/lift", "a", 1, 40),
        result("robomimic/can", "a", 0, 20),
        result("robomimic/can", "a", 1, 30),
        result("robomimic/lift", "b", 0, 10),
        result("robomimic/lift", "b", 1, 5),
        result("robomimic/can", "b", 0, 0),
        result("robomimic/can", "b", 1, 0),
    ]


def test_report_puts_robomimic_in_its_own_section_with_dm1_anchors(tmp_path):
    results = mixed_results()
    avg = group_averages(results)
    assert list(avg) == ["easy", "hard", "all", "robomimic"]
    # "all" stays Meta-World-only: the same numbers as without the robomimic runs.
    metaworld_all = group_averages(two_seed_results())["all"]
    assert avg["all"]["a"].mean == pytest.approx(metaworld_all["a"].mean)
    assert avg["all"]["b"].mean == pytest.approx(metaworld_all["b"].mean)
    # robomimic, method a: seed 0 = (90 + 40) / 2 = 65, seed 1 = (80 + 60) / 2 = 70.
    assert avg["robomimic"]["a"].mean == pytest.approx(67.5) and avg["robomimic"]["a"].complete
    assert avg["robomimic"]["a"].std == pytest.approx(statistics.stdev([65, 70]))

    table = success_table(results)
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| task"))
    assert header == f"| task | a (1 NFE) | b (1 NFE) | MP1 reported (v2) / {DM1_COLUMN} |"
    body = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    rows = [line.split(" | ")[0].lstrip("| ") for line in body]
    assert rows == [
        TASK,
        "reach-v3",
        "**Easy average** (2 tasks)",
        "push-v3",
        "**Hard average** (1 task)",
        "**All Meta-World tasks** (3)",
        "*robomimic (image)*",
        "robomimic/lift",
        "robomimic/can",
        "**robomimic (image) average** (2 tasks)",
    ]
    row = dict(zip(rows, body, strict=True))
    assert row["**All Meta-World tasks** (3)"].endswith(f"| {MP1_REPORTED['all']:.1f} |")
    assert row["*robomimic (image)*"].endswith(f"| *{DM1_COLUMN}* |")
    assert row["robomimic/lift"].endswith("| ~98 |") and row["robomimic/can"].endswith("| ~80 |")
    assert "**67.5 ± 3.5**" in row["**robomimic (image) average** (2 tasks)"]
    assert row["**robomimic (image) average** (2 tasks)"].endswith("| ~89 |")  # mean of DM1's Lift and Can
    assert "DM1's own figures, not ours" in table and "human (PH)" in table
    assert "the Meta-World tasks only" in table and "never mixed in one average" in table
    assert "MP1 reported (v2): the averages MP1 reports" in table
    paired = paired_table(results).splitlines()  # one row per suite: the two suites' runs are never pooled
    suites = [line.split(" | ")[1] for line in paired if line.startswith("| a − b")]
    assert suites == ["Meta-World", "robomimic (image)"]

    only = success_table([r for r in results if r["group"] == "robomimic"])
    assert f"| task | a (1 NFE) | b (1 NFE) | {DM1_COLUMN} |" in only
    assert "**All" not in only and "MP1" not in only and "*robomimic (image)*" not in only
    assert list(group_averages([r for r in results if r["group"] == "robomimic"])) == ["robomimic"]

    # A Meta-World-only report is as before; results.json labels the papers' figures once robomimic is present.
    assert "DM1" not in success_table(two_seed_results()) and reported_anchors(two_seed_results()) == {}
    bench.write_outputs(results, tmp_path, "mixed", {"preset": "x"})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["reported_anchors"]["robomimic"]["success"]["robomimic/lift"] == 98.0
    assert "not ours" in saved["reported_anchors"]["robomimic"]["source"]
    assert "| **robomimic (image) average** (2 tasks) |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_runs_are_spread_over_the_visible_gpus(tmp_path, capsys, monkeypatch):
    """Each worker slot owns one GPU (round-robin) and its `mfp train` child sees only that one; on a machine
    without CUDA each child then refuses device=cuda with a clear error before reading any data."""
    assert bench.gpu_slots(4, ["0", "1"]) == ["0", "1", "0", "1"]
    assert bench.gpu_slots(3, ["0"]) == [None, None, None]  # one GPU: nothing to spread
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert bench.visible_gpus() == ["2", "3"]

    monkeypatch.setattr(bench, "visible_gpus", lambda: ["5", "6"])
    argv = [
        "--preset",
        "smoke",
        "--out",
        str(tmp_path / "bench"),
        "--workers",
        "2",
        f"task.dataset={tmp_path / 'demos.zarr'}",
        "device=cuda",
    ]
    assert bench.main(argv) == 1
    logs = [p.read_text() for p in sorted((tmp_path / "bench").rglob(bench.LOG_FILE))]
    assert len(logs) == 2 and sorted(log.count(", GPU 5 ") for log in logs) == [0, 1]
    assert all(", GPU 5 " in log or ", GPU 6 " in log for log in logs)
    assert all("device=cuda but this torch" in log for log in logs), logs[0][-500:]
    assert "FAILED" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_smoke_preset_end_to_end_then_resume_skips(tmp_path, capsys):
    """Two real `mfp train` runs (real demos, training, evaluation in the simulator); a rerun trains nothing."""
    out = tmp_path / "bench"
    argv = ["--preset", "smoke", "--out", str(out), f"task.dataset={tmp_path / 'demos.zarr'}"]
    assert bench.main(argv) == 0
    first = capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["method"], r["status"], r["n_episodes"], r["steps"]) for r in saved] == [
        ("meanflow", "ok", 2, 4),
        ("regression", "ok", 2, 4),
    ]
    for r in saved:
        assert r["group"] == "easy" and r["latency_ms_p50"] > 0 and r["eval_seeds"] == "100000..100001"
        assert 0.0 <= r["ci95"][0] <= r["success"] <= r["ci95"][1] <= 100.0
        info = json.loads((Path(r["run_dir"]) / "eval" / "eval_info.json").read_text())
        assert info["aggregated"]["pc_success"] == r["success"]
        assert r["code"] == code_version()  # which code trained it, from the run's own summary
    assert "| **Easy average** (1 task) |" in first and (out / "success.png").is_file()

    logs = {p: p.stat().st_size for p in out.rglob(bench.LOG_FILE)}
    assert len(logs) == 2
    assert bench.main(argv) == 0
    assert "0 to train, 0 to resume, 2 done" in capsys.readouterr().out
    assert {p: p.stat().st_size for p in out.rglob(bench.LOG_FILE)} == logs  # nothing retrained
    assert json.loads((out / "results.json").read_text())["runs"] == saved


def test_overrides_may_come_before_or_after_the_flags():
    flags = ["--preset", "cpu", "--tasks", "push-v3", "--seeds", "0,1"]
    after = bench.parse_args([*flags, "torch_threads=1", "policy.samples_per_obs=2"])
    mixed = bench.parse_args(["torch_threads=1", *flags, "policy.samples_per_obs=2"])
    assert after.overrides == mixed.overrides == ["torch_threads=1", "policy.samples_per_obs=2"]
    assert (mixed.tasks, mixed.seeds) == ("push-v3", "0,1")
