"""Turns `mfp bench success` run results into tables and a plot: per-task and per-group success by method.

A *result* is one run's dict as `benchmarks.success` writes it to ``results.json``: ``task``, ``group``, ``method``,
``seed``, ``nfe``, ``status`` ("ok" or "failed"), ``success`` (%), ``ci95`` ([low, high] %), ``latency_ms_p50``,
``latency_ms_p99``, ``steps``, ``train_seconds``, ... Only ``status == "ok"`` results enter the numbers.

Group and overall averages are taken per training seed (mean over the tasks) and then reported as mean ± sample
std over seeds, so the spread is that of independent replicates of the whole group.

The paired comparison sets MeanFlow (or the first method) against each other method on the runs both finished
(same task, same training seed): seed and task effects cancel in each difference, which a table of means hides.

Sections: the Meta-World difficulty groups (anchored on MP1's reported averages), then robomimic (image) tasks
(group "robomimic", anchored on DM1's reported figures). The "all" average covers the Meta-World tasks only: two
suites are never mixed in one average.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.metaworld.groups import GROUP_LABELS, GROUPS

# What MP1 reports on Meta-World (DESIGN section 7): v2 under mujoco-py, 10 demos, its task set and protocol.
MP1_REPORTED = {"easy": 88.2, "medium": 68.0, "hard": 58.1, "very_hard": 67.2, "all": 78.9}
ANCHOR_COLUMN = "MP1 reported (v2)"
PAIRED_BOOTSTRAP = 10_000  # resamples behind the paired comparison's interval

# robomimic/robosuite image tasks: their own section after the Meta-World groups.
ROBOMIMIC_GROUP = "robomimic"
# The multimodal suite (demos that mix two strategies): its own section last, with mode frequencies.
MULTIMODAL_GROUP = "multimodal"
SECTIONS = (*GROUPS, ROBOMIMIC_GROUP, MULTIMODAL_GROUP)
SECTION_LABELS = {
    **GROUP_LABELS,
    ROBOMIMIC_GROUP: "robomimic (image)",
    MULTIMODAL_GROUP: "multimodal (two strategies per task)",
}
# What DM1 reports for its own image policies at 5 sampling steps, trained on robomimic's human (PH) datasets
# (approximate figures; ours learn from scripted-expert demos): DM1's numbers, not ours.
DM1_REPORTED = {"robomimic/lift": 98.0, "robomimic/can": 80.0, "robomimic/square": 40.0}
DM1_COLUMN = "DM1 reported (PH, 5 steps)"
DM1_NOTE = (
    f"{DM1_COLUMN}: DM1's own figures, not ours: the approximate success rates DM1 reports for its image "
    "policies at 5 sampling steps, trained on robomimic's human (PH) demonstration datasets (the section "
    "average is their mean over the tasks shown). Our runs learn from scripted-expert demos "
    "(configs/task/robomimic): context, not directly comparable."
)


@dataclass
class Stat:
    """A success statistic over training seeds (or over tasks, for one seed)."""

    mean: float
    std: float | None  # sample std over seeds; None with one seed
    n_seeds: int
    ci95: tuple[float, float] | None = None  # Wilson interval (%) of a single run
    complete: bool = True  # False when some expected (task, seed) runs are missing or failed

    def cell(self, bold: bool = False) -> str:
        text = f"{self.mean:.1f}"
        if self.std is not None:
            text += f" ± {self.std:.1f}"
        elif self.ci95 is not None:
            text += f" ({self.ci95[0]:.0f}–{self.ci95[1]:.0f})"
        if bold:
            text = f"**{text}**"
        return text + ("\\*" if not self.complete else "")


def ok_results(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if r.get("status") == "ok"]


def ordered_tasks(results: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(group, task) pairs in :data:`SECTIONS` order (difficulty, then robomimic), tasks in first-seen order."""
    seen: dict[str, str] = {}
    for r in results:
        seen.setdefault(r["task"], r["group"])
    return [(g, t) for g in SECTIONS for t, tg in seen.items() if tg == g]


def has_robomimic(pairs: Sequence[tuple[str, str]]) -> bool:
    return any(g == ROBOMIMIC_GROUP for g, _ in pairs)


def has_multimodal(pairs: Sequence[tuple[str, str]]) -> bool:
    return any(g == MULTIMODAL_GROUP for g, _ in pairs)


def average_label(group: str, pairs: Sequence[tuple[str, str]]) -> str:
    """Row label of a group's average; "all" says it is Meta-World-only when robomimic tasks are present too."""
    if group == "all":
        return "All Meta-World tasks" if has_robomimic(pairs) or has_multimodal(pairs) else "All tasks"
    return f"{SECTION_LABELS[group]} average"


def ordered_methods(results: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in results))


def seed_stat(per_seed: dict[int, float], complete: bool = True) -> Stat:
    values = list(per_seed.values())
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(mean=statistics.fmean(values), std=std, n_seeds=len(values), complete=complete)


def task_stat(results: Sequence[dict[str, Any]], task: str, method: str) -> Stat | None:
    """Success of ``method`` on ``task`` over its finished seeds (None when none finished)."""
    runs = [r for r in ok_results(results) if r["task"] == task and r["method"] == method]
    if not runs:
        return None
    seeds = {r["seed"] for r in results if r["task"] == task}
    stat = seed_stat({r["seed"]: r["success"] for r in runs}, complete=len(runs) == len(seeds))
    if len(runs) == 1 and runs[0].get("ci95") is not None:
        stat.ci95 = (float(runs[0]["ci95"][0]), float(runs[0]["ci95"][1]))
    return stat


def average_stat(results: Sequence[dict[str, Any]], tasks: Sequence[str], method: str) -> Stat | None:
    """Mean over ``tasks`` per seed, then mean ± std over seeds. Incomplete when a (task, seed) run is missing."""
    expected_seeds = sorted({r["seed"] for r in results if r["task"] in tasks})
    done = {
        (r["task"], r["seed"]): r["success"]
        for r in ok_results(results)
        if r["method"] == method and r["task"] in tasks
    }
    per_seed: dict[int, float] = {}
    for seed in expected_seeds:
        values = [done[(t, seed)] for t in tasks if (t, seed) in done]
        if values:
            per_seed[seed] = statistics.fmean(values)
    if not per_seed:
        return None
    complete = len(done) == len(tasks) * len(expected_seeds)
    return seed_stat(per_seed, complete=complete)


def group_averages(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Stat | None]]:
    """{group or "all": {method: Stat}} over the groups present in ``results``: the Meta-World groups, "all" (their
    tasks only; left out when only robomimic tasks are present), then "robomimic"."""
    pairs = ordered_tasks(results)
    metaworld = [t for g, t in pairs if g in GROUPS]
    order = [g for g in GROUPS if any(pg == g for pg, _ in pairs)]
    if metaworld or not (has_robomimic(pairs) or has_multimodal(pairs)):
        order.append("all")
    if has_robomimic(pairs):
        order.append(ROBOMIMIC_GROUP)
    if has_multimodal(pairs):
        order.append(MULTIMODAL_GROUP)
    out: dict[str, dict[str, Stat | None]] = {}
    for group in order:
        tasks = metaworld if group == "all" else [t for g, t in pairs if g == group]
        out[group] = {m: average_stat(results, tasks, m) for m in ordered_methods(results)}
    return out


def dm1_anchor(tasks: Sequence[str]) -> str:
    """DM1's reported figure for one task, or its mean over several ("" when DM1 reports none of them)."""
    values = [DM1_REPORTED[t] for t in tasks if t in DM1_REPORTED]
    return f"~{statistics.fmean(values):.0f}" if values else ""


def anchor_header(pairs: Sequence[tuple[str, str]]) -> str:
    """The anchor column's title: MP1's on Meta-World, DM1's on robomimic, both when the table has both."""
    metaworld = any(g in GROUPS for g, _ in pairs) or not (has_robomimic(pairs) or has_multimodal(pairs))
    return " / ".join([ANCHOR_COLUMN] * metaworld + [DM1_COLUMN] * has_robomimic(pairs)) or "reported"


def reported_anchors(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The papers' figures the report sets beside each section (for results.json): empty unless robomimic tasks are
    present, so a Meta-World-only results.json stays as it was."""
    pairs = ordered_tasks(results)
    if not has_robomimic(pairs):
        return {}
    out: dict[str, Any] = {}
    if any(g in GROUPS for g, _ in pairs):
        out["metaworld"] = {
            "source": ANCHOR_COLUMN + ": MP1's reported averages (Meta-World v2 under mujoco-py, 10 demos), not ours",
            "success": MP1_REPORTED,
        }
    out[ROBOMIMIC_GROUP] = {"source": DM1_NOTE, "success": DM1_REPORTED}
    return out


def method_label(results: Sequence[dict[str, Any]], method: str) -> str:
    nfe = next((r.get("nfe") for r in results if r["method"] == method and r.get("nfe")), None)
    return f"{method} ({nfe} NFE)" if nfe else method


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def success_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown: rows = tasks grouped by difficulty + group averages, then robomimic tasks + their average; columns =
    methods + the papers' figures (MP1's averages on Meta-World, DM1's on robomimic)."""
    methods = ordered_methods(results)
    pairs = ordered_tasks(results)
    averages = group_averages(results)
    metaworld = [t for g, t in pairs if g in GROUPS]
    robomimic = [t for g, t in pairs if g == ROBOMIMIC_GROUP]
    episodes = sorted({r["n_episodes"] for r in ok_results(results)})
    seeds = sorted({r["seed"] for r in results})
    lines = [
        f"Success rate (%) of the final EMA checkpoint on fixed evaluation seeds "
        f"({'/'.join(map(str, episodes)) or '?'} episodes per run), {len(seeds)} training seed(s). "
        + ("Cells: mean ± sample std over seeds." if len(seeds) > 1 else "Cells: success (95 % Wilson interval).")
        + " Averages: mean over the group's tasks.",
        "",
        _row(["task", *[method_label(results, m) for m in methods], anchor_header(pairs)]),
        _row(["---", *["---:"] * (len(methods) + 1)]),
    ]
    for group in GROUPS:
        tasks = [t for g, t in pairs if g == group]
        if not tasks:
            continue
        for task in tasks:
            cells = [_cell(task_stat(results, task, m)) for m in methods]
            lines.append(_row([task, *cells, ""]))
        label = f"**{GROUP_LABELS[group]} average** ({len(tasks)} task{'s' if len(tasks) > 1 else ''})"
        lines.append(
            _row([label, *[_cell(averages[group][m], bold=True) for m in methods], f"{MP1_REPORTED[group]:.1f}"])
        )
    if "all" in averages:
        lines.append(
            _row(
                [
                    f"**{average_label('all', pairs)}** ({len(metaworld)})",
                    *[_cell(averages["all"][m], bold=True) for m in methods],
                    f"{MP1_REPORTED['all']:.1f}",
                ]
            )
        )
    if robomimic:
        lines += robomimic_rows(results, methods, robomimic, averages[ROBOMIMIC_GROUP], section_row=bool(metaworld))
    multimodal = [t for g, t in pairs if g == MULTIMODAL_GROUP]
    if multimodal:
        if metaworld or robomimic:
            lines.append(_row([f"*{SECTION_LABELS[MULTIMODAL_GROUP]}*", *[""] * (len(methods) + 1)]))
        for task in multimodal:
            lines.append(_row([task, *[_cell(task_stat(results, task, m)) for m in methods], ""]))
        plural = "s" if len(multimodal) > 1 else ""
        label = f"**{average_label(MULTIMODAL_GROUP, [])}** ({len(multimodal)} task{plural})"
        lines.append(_row([label, *[_cell(averages[MULTIMODAL_GROUP][m], bold=True) for m in methods], ""]))
    lines.append("")
    if "all" in averages:
        lines.append(
            f"{ANCHOR_COLUMN}: the averages MP1 reports (Meta-World v2 under mujoco-py, 10 demos, its own "
            "task set and evaluation protocol; DESIGN section 7): context, not directly comparable."
        )
    if robomimic:
        lines.append(DM1_NOTE)
    if robomimic and metaworld:
        lines.append(
            f"{average_label('all', pairs)}: the Meta-World tasks only; the robomimic tasks are averaged in "
            "their own section (two suites are never mixed in one average)."
        )
    if any(s is not None and not s.complete for per in averages.values() for s in per.values()):
        lines.append("\\* some runs of this cell are missing or failed; the number covers the finished ones.")
    failed = [r for r in results if r.get("status") != "ok"]
    if failed:
        lines.append("Failed runs: " + "; ".join(f"{r['task']} {r['method']} seed {r['seed']}" for r in failed) + ".")
    return "\n".join(lines)


def robomimic_rows(
    results: Sequence[dict[str, Any]],
    methods: Sequence[str],
    tasks: Sequence[str],
    averages: dict[str, Stat | None],
    section_row: bool,
) -> list[str]:
    """The robomimic section's rows: a title row where the anchor column switches to DM1's, tasks, the average."""
    lines = []
    if section_row:
        lines.append(_row([f"*{SECTION_LABELS[ROBOMIMIC_GROUP]}*", *[""] * len(methods), f"*{DM1_COLUMN}*"]))
    for task in tasks:
        lines.append(_row([task, *[_cell(task_stat(results, task, m)) for m in methods], dm1_anchor([task])]))
    label = f"**{average_label(ROBOMIMIC_GROUP, [])}** ({len(tasks)} task{'s' if len(tasks) > 1 else ''})"
    lines.append(_row([label, *[_cell(averages[m], bold=True) for m in methods], dm1_anchor(tasks)]))
    return lines


def _cell(stat: Stat | None, bold: bool = False) -> str:
    return "—" if stat is None else stat.cell(bold)


def _median(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(clean) if clean else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def cost_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown: per method, median inference latency and training speed over its finished runs."""
    devices = sorted({r["eval_device"] for r in results if r.get("eval_device")})
    where = f"; policy on {', '.join(devices)}" if devices else ""
    lines = [
        "Inference latency: wall time of each `predict_action` call at batch 1 inside the evaluation loop "
        f"(normalization + encoders + head; one thread per eval worker{where}; first call per worker excluded), "
        "median over runs. Training: steps/s and minutes per run, median over runs that were not resumed.",
        "",
        _row(["method", "NFE", "latency p50 (ms)", "latency p99 (ms)", "train steps/s", "train min/run", "runs"]),
        _row(["---", *["---:"] * 6]),
    ]
    for m in ordered_methods(results):
        runs = [r for r in ok_results(results) if r["method"] == m]
        whole = [r for r in runs if not r.get("resumed")]  # a resumed run's timing covers its last session only
        train_s = _median([r.get("train_seconds") for r in whole])
        lines.append(
            _row(
                [
                    m,
                    str(next((r.get("nfe") for r in runs if r.get("nfe")), "—")),
                    _fmt(_median([r.get("latency_ms_p50") for r in runs]), 2),
                    _fmt(_median([r.get("latency_ms_p99") for r in runs]), 2),
                    _fmt(_median([r.get("steps_per_s") for r in whole]), 2),
                    _fmt(None if train_s is None else train_s / 60.0),
                    str(len(runs)),
                ]
            )
        )
    return "\n".join(lines)


def reference_method(results: Sequence[dict[str, Any]]) -> str | None:
    """The method the paired comparison measures the others against: ``meanflow`` when present, else the first."""
    methods = ordered_methods(results)
    return "meanflow" if "meanflow" in methods else (methods[0] if methods else None)


def paired_differences(results: Sequence[dict[str, Any]], method: str, other: str, tasks: Sequence[str]) -> list[float]:
    """``method`` minus ``other`` success (points) for every (task, seed) run both finished, in a fixed order."""
    done = {(r["task"], r["seed"], r["method"]): r["success"] for r in ok_results(results)}
    keys = sorted({(t, s) for t, s, m in done if m == method and t in tasks and (t, s, other) in done})
    return [done[(t, s, method)] - done[(t, s, other)] for t, s in keys]


def bootstrap_interval(
    values: Sequence[float], n_resamples: int = PAIRED_BOOTSTRAP, seed: int = 0
) -> tuple[float, float] | None:
    """95 % percentile-bootstrap interval of the mean of ``values`` (fixed seed: the report is reproducible); None
    with fewer than two values; ValueError on NaN or inf."""
    import numpy as np

    if len(values) < 2:
        return None
    x = np.asarray(values, dtype=float)
    if not np.isfinite(x).all():
        raise ValueError(f"paired differences must be finite, got {list(values)}: a run's success is NaN or inf")
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_table(results: Sequence[dict[str, Any]]) -> str | None:
    """Markdown: the reference method against every other one over the runs both finished (same task, same training
    seed), per suite; None when no two methods share a run."""
    reference = reference_method(results)
    pairs = ordered_tasks(results)
    suites = [
        ("Meta-World", [t for g, t in pairs if g in GROUPS]),
        (SECTION_LABELS[ROBOMIMIC_GROUP], [t for g, t in pairs if g == ROBOMIMIC_GROUP]),
        (MULTIMODAL_GROUP, [t for g, t in pairs if g == MULTIMODAL_GROUP]),
    ]
    rows = []
    for other in ordered_methods(results):
        for suite, tasks in suites:
            diffs = paired_differences(results, reference, other, tasks) if other != reference else []
            if not diffs:
                continue
            ci = bootstrap_interval(diffs)
            wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
            rows.append(
                _row(
                    [
                        f"{reference} − {other}",
                        suite,
                        str(len(diffs)),
                        f"{statistics.fmean(diffs):+.1f}",
                        "—" if ci is None else f"{ci[0]:+.1f} to {ci[1]:+.1f}",
                        f"{wins} / {len(diffs) - wins - losses} / {losses}",
                    ]
                )
            )
    if not rows:
        return None
    return "\n".join(
        [
            f"Paired comparison: {reference} against each other method on the runs both finished (same task, same "
            "training seed). Mean difference in success points with a 95 % bootstrap interval over those pairs "
            "(they are resampled as exchangeable, so the interval pools seed and episode noise across tasks), "
            "and the pairs "
            f"{reference} wins / ties / loses. An interval that contains 0 means these runs cannot tell the two apart.",
            "",
            _row(["comparison", "suite", "pairs", "mean difference", "95 % interval", "wins / ties / losses"]),
            _row(["---", "---", *["---:"] * 4]),
            *rows,
        ]
    )


def mode_table(results: Sequence[dict[str, Any]]) -> str | None:
    """Markdown of the runs' mode metrics (tasks whose suite classifies modes), or None when no run has them: per
    task and method, the frequency of each strategy (mean over seeds) beside the demos' mix, the largest gap to the
    mix, and the share of episodes that dithered (switched strategy mid-way or stalled)."""
    runs = [r for r in ok_results(results) if r.get("modes")]
    if not runs:
        return None
    lines = [
        "Modes: the strategy each evaluation episode followed, decided from its trajectory (`none`: it reached no "
        "strategy's decisive event). Frequencies are means over seeds, beside the demonstrations' mix; max gap: the "
        "largest distance between a strategy's frequency and its demo share; dithered: episodes that switched "
        "strategy mid-way or stalled, in %.",
        "",
        _row(["task", "method", "seeds", "mode frequencies (demo mix)", "max gap", "dithered %"]),
        _row(["---", "---", "---:", "---", "---:", "---:"]),
    ]
    for _, task in ordered_tasks(runs):
        for method in ordered_methods(runs):
            cell = [r["modes"] for r in runs if r["task"] == task and r["method"] == method]
            if not cell:
                continue
            mix = cell[0]["demo_mix"]
            names = list(dict.fromkeys(n for m in cell for n in m["frequencies"]))
            freq = {n: statistics.fmean(m["frequencies"].get(n, 0.0) for m in cell) for n in names}
            shares = ", ".join(f"{n} {freq[n]:.2f}" + (f" ({mix[n]:.2f})" if n in mix else "") for n in names)
            gap = statistics.fmean(m["max_gap"] for m in cell)
            dithered = statistics.fmean(m["pc_dithered"] for m in cell)
            lines.append(_row([task, method, str(len(cell)), shares, f"{gap:.2f}", f"{dithered:.1f}"]))
    return "\n".join(lines)


def periodic_table(results: Sequence[dict[str, Any]]) -> str | None:
    """Markdown of the secondary metric (mean of the best 5 periodic evaluations), or None when no run has any."""
    if not any(r.get("best5_periodic") is not None for r in ok_results(results)):
        return None
    proxy = [
        dict(r, success=r["best5_periodic"], ci95=None)
        for r in ok_results(results)
        if r.get("best5_periodic") is not None
    ]
    methods = ordered_methods(proxy)
    counts = sorted({r["n_periodic"] for r in proxy})
    lines = [
        "Secondary metric, labelled as such (the DP3/MP1 papers' protocol): mean success (%) of the best 5 of "
        f"{'/'.join(map(str, counts))} evaluations during training (the periodic ones and the final checkpoint "
        "scored on the same seeds); optimistic by construction: the best steps are picked on the evaluation seeds.",
        "",
        _row(["task", *methods]),
        _row(["---", *["---:"] * len(methods)]),
    ]
    for _, task in ordered_tasks(proxy):
        lines.append(_row([task, *[_cell(task_stat(proxy, task, m)) for m in methods]]))
    averages = group_averages(proxy)
    for group, per_method in averages.items():
        label = average_label(group, ordered_tasks(proxy))
        lines.append(_row([f"**{label}**", *[_cell(per_method[m], bold=True) for m in methods]]))
    curves = curve_table(proxy)
    return "\n".join(lines + (["", curves] if curves else []))


def curve_table(results: Sequence[dict[str, Any]]) -> str | None:
    """Success (%) at every evaluation during training, one row per run: how fast each head learns the task."""
    runs = [r for r in results if r.get("periodic_curve")]
    if not runs:
        return None
    steps = sorted({step for r in runs for step, _ in r["periodic_curve"]})
    order = {task: i for i, (_, task) in enumerate(ordered_tasks(runs))}
    methods = ordered_methods(runs)
    runs.sort(key=lambda r: (order[r["task"]], methods.index(r["method"]), r["seed"]))
    lines = [
        _row(["task", "method", "seed", *[f"step {s}" for s in steps]]),
        _row(["---", "---", "---:", *["---:"] * len(steps)]),
    ]
    for r in runs:
        at = dict((step, value) for step, value in r["periodic_curve"])
        lines.append(
            _row([r["task"], method_label(runs, r["method"]), str(r["seed"]), *[_fmt(at.get(s), 0) for s in steps]])
        )
    return "Success (%) at each of those evaluations:\n\n" + "\n".join(lines)


def report_markdown(results: Sequence[dict[str, Any]], title: str) -> str:
    """The whole results.md: success table, the paired comparison (two or more methods), the mode metrics (tasks
    with several strategies), cost table, and the secondary metric when present."""
    parts = [f"# {title}", "", success_table(results)]
    paired = paired_table(results)
    if paired is not None:
        parts += ["", paired]
    modes = mode_table(results)
    if modes is not None:
        parts += ["", modes]
    parts += ["", cost_table(results)]
    periodic = periodic_table(results)
    if periodic is not None:
        parts += ["", periodic]
    parts += ["", code_line(results)]
    return "\n".join(parts) + "\n"


def code_line(results: Sequence[dict[str, Any]]) -> str:
    """Which commits trained the finished runs (from each run's summary), so figures from different code are not
    read as one experiment without saying so."""
    counts: dict[str, int] = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        code = r.get("code") or {}
        commit = code.get("git_commit")
        name = "not recorded" if not code else "no git checkout" if commit is None else commit[:10]
        if code.get("git_dirty"):
            name += " + uncommitted changes"
        counts[name] = counts.get(name, 0) + 1
    listed = ", ".join(f"{name} ({n} run{'s' if n != 1 else ''})" for name, n in sorted(counts.items()))
    return f"Code that trained the runs: {listed or 'no finished runs'}."


def plot_success(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: success per task (x, by difficulty, then robomimic) per method (bars); error bars = seed std or
    95 % CI; DM1's reported figures marked on robomimic tasks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = ordered_methods(results)
    pairs = ordered_tasks(results)
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(min(40.0, max(6.0, 0.3 * len(pairs) * len(methods) + 2.0)), 4.5))
    x = np.arange(len(pairs))
    for i, m in enumerate(methods):
        stats = [task_stat(results, t, m) for _, t in pairs]
        means = [s.mean if s else 0.0 for s in stats]
        err = np.array([_error_bar(s) for s in stats]).T
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=err, capsize=2, label=method_label(results, m)
        )
    dm1 = [(k, DM1_REPORTED[t]) for k, (_, t) in enumerate(pairs) if t in DM1_REPORTED]
    if dm1:
        ax.scatter(
            [k for k, _ in dm1],
            [v for _, v in dm1],
            marker="_",
            s=600,
            color="black",
            zorder=3,
            label=f"{DM1_COLUMN}, DM1's figure, not ours",
        )
    names = [t.removesuffix("-v3").removeprefix(f"{ROBOMIMIC_GROUP}/") for _, t in pairs]
    ax.set_xticks(x, names, rotation=45 if len(pairs) > 6 else 0, ha="right" if len(pairs) > 6 else "center")
    for k in range(1, len(pairs)):
        if pairs[k][0] != pairs[k - 1][0]:
            ax.axvline(k - 0.5, color="0.6", lw=0.8, ls="--")
    for group in SECTIONS:
        idx = [k for k, (g, _) in enumerate(pairs) if g == group]
        if idx:
            ax.text((idx[0] + idx[-1]) / 2, 104, SECTION_LABELS[group], ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, 112)
    ax.set_ylabel("success (%)")
    ax.set_title(
        "Success of the final EMA checkpoint per task; error bars: std over seeds, or the 95 % interval with one seed",
        fontsize=9,
    )
    ax.legend(
        fontsize=8,
        ncols=min(4, len(methods)),
        loc="upper right",
        bbox_to_anchor=(1.0, -0.25 if len(pairs) > 6 else -0.12),
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keep the title and legend whole
    plt.close(fig)
    return path


def plot_curves(results: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Success against training step, one panel per task, one line per method (mean over the seeds that have a
    value at that step); None when no run has periodic evaluations."""
    runs = [r for r in ok_results(results) if r.get("periodic_curve")]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = ordered_tasks(runs)
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs) + 0.8, 3.2), squeeze=False, sharey=True)
    for ax, (_, task) in zip(axes[0], pairs, strict=True):
        for m in ordered_methods(runs):
            at: dict[int, list[float]] = {}
            for r in runs:
                if r["task"] == task and r["method"] == m:
                    for step, value in r["periodic_curve"]:
                        at.setdefault(step, []).append(value)
            if at:
                steps = sorted(at)
                ax.plot(steps, [statistics.fmean(at[s]) for s in steps], marker="o", ms=3, label=method_label(runs, m))
        ax.set_title(task.removesuffix("-v3"), fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylim(-3, 103)
    axes[0][0].set_ylabel("success (%), eval seeds of the periodic evals")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _error_bar(stat: Stat | None) -> tuple[float, float]:
    if stat is None:
        return (0.0, 0.0)
    if stat.std is not None:
        return (stat.std, stat.std)
    if stat.ci95 is not None:
        return (max(0.0, stat.mean - stat.ci95[0]), max(0.0, stat.ci95[1] - stat.mean))
    return (0.0, 0.0)
