"""`mfp bench finetune`: behaviour cloning, then online fine-tuning, per task and head, measured before and after.

    python -m benchmarks.finetune --tasks coffee-pull-v3,shelf-place-v3 --heads meanflow,regression --env-steps 200000
    python -m benchmarks.finetune --tasks robomimic/can --heads meanflow --bc-preset robomimic_cpu --method steering

1. The BC checkpoints come from ``benchmarks.success`` with ``--bc-preset`` (default ``cpu``: the configuration of the
   README's imitation figures) into ``<out>/bc`` (skipped when already there).
2. Each checkpoint is fine-tuned by ``mfp finetune`` in its own process into ``<out>/<method>/<task>/<head>/``, with
   ``eval.episodes`` evaluations before and after on the fixed evaluation seeds (a killed run resumes).
3. ``<out>/results.json`` holds one row per run (task, suite, method, head, success_before, success_after in percent,
   their 95 % intervals, env_steps, wall_s) and ``success.png`` the success curves against env steps and wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from envs.runner import wilson_interval

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    print("+", " ".join(cmd), flush=True)
    with log.open("a") as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")


def train_bc(args: argparse.Namespace, bc_dir: Path) -> None:
    missing = [(t, h) for t in args.tasks for h in args.heads if not (bc_dir / t / h / "seed0" / "policy").exists()]
    if not missing:
        return
    cmd = [sys.executable, "-m", "benchmarks.success", "--preset", args.bc_preset, "--out", str(bc_dir)]
    cmd += ["--tasks", ",".join(args.tasks), "--methods", ",".join(args.heads), "--seeds", "0"]
    cmd += ["--episodes", str(args.episodes)]
    if args.bc_steps:
        cmd += ["--steps", str(args.bc_steps)]
    _run(cmd, bc_dir / "bench.log")


def finetune(args: argparse.Namespace, checkpoint: Path, out: Path) -> dict[str, Any]:
    summary = out / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    cmd = [sys.executable, "-m", "mfp.cli", "finetune", f"checkpoint={checkpoint}", f"finetune={args.method}"]
    cmd += [f"env_steps={args.env_steps}", f"eval.episodes={args.episodes}", f"output_dir={out}", "progress=false"]
    cmd += ["wandb.mode=disabled", *args.overrides]
    if (out / "finetune_state.pt").exists():
        cmd.append("resume=true")
    _run(cmd, out.parent / f"{out.name}.log")
    return json.loads(summary.read_text())


def curve(run_dir: Path) -> dict[str, list[float]]:
    """Rollout success per iteration and the periodic evaluations, against env steps and wall-clock."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rollout = [r for r in rows if "rollout_success" in r]
    evals = [r for r in rows if "eval/success_rate" in r]
    return {
        "env_steps": [r["env_steps"] for r in rollout],
        "wall_s": [r["wall_s"] for r in rollout],
        "rollout_success": [r["rollout_success"] for r in rollout],
        "eval_env_steps": [r["step"] for r in evals],
        "eval_wall_s": [r["wall_s"] for r in evals],
        "eval_success": [r["eval/success_rate"] for r in evals],
    }


def row(summary: dict[str, Any], episodes: int) -> dict[str, Any]:
    before, after = summary["success_before"], summary["success_after"]
    return {
        "task": summary["task"],
        "suite": summary["suite"],
        "method": summary["method"],
        "head": summary["head"],
        "success_before": before,
        "success_after": after,
        "ci95_before": _percent_interval(before, episodes),
        "ci95_after": _percent_interval(after, episodes),
        "episodes": episodes,
        "env_steps": summary["env_steps"],
        "wall_s": round(summary["wall_s"], 1),
        "checkpoint": summary["checkpoint"],
        "code": summary["code"],
    }


def _percent_interval(success: float, episodes: int) -> list[float]:
    lo, hi = wilson_interval(round(success * episodes / 100), episodes)
    return [round(100 * lo, 1), round(100 * hi, 1)]


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for r in runs:
        c = r["curve"]
        label = f"{r['task']} {r['head']}"
        line = axes[0].plot(c["env_steps"], c["rollout_success"], alpha=0.5, label=f"{label} (rollouts)")[0]
        axes[1].plot([w / 3600 for w in c["wall_s"]], c["rollout_success"], alpha=0.5, color=line.get_color())
        if c["eval_success"]:
            axes[0].plot(c["eval_env_steps"], c["eval_success"], "o-", color=line.get_color(), label=f"{label} (eval)")
            axes[1].plot([w / 3600 for w in c["eval_wall_s"]], c["eval_success"], "o-", color=line.get_color())
    axes[0].set_xlabel("env steps")
    axes[1].set_xlabel("wall-clock, hours (this machine)")
    axes[0].set_ylabel("success rate")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mfp bench finetune", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="coffee-pull-v3,peg-insert-side-v3,shelf-place-v3")
    p.add_argument("--heads", default="meanflow,regression", help="policy configs to clone and then fine-tune")
    p.add_argument("--method", default="ppo", choices=["ppo", "steering"])
    p.add_argument("--env-steps", type=int, default=200_000, help="fine-tuning env steps per run")
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes before and after")
    p.add_argument("--bc-preset", default="cpu", help="benchmarks.success preset that trains the BC checkpoints")
    p.add_argument("--bc-steps", type=int, default=0, help="BC training steps (0: the preset's)")
    p.add_argument("--out", type=Path, default=Path("bench/finetune"))
    p.add_argument("overrides", nargs="*", help="extra `mfp finetune` overrides (key=value)")
    args = p.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.heads = [h for h in args.heads.split(",") if h]
    os.environ.setdefault("MUJOCO_GL", "egl")

    bc_dir = args.out / "bc"
    train_bc(args, bc_dir)
    runs = []
    results = args.out / "results.json"
    for task in args.tasks:
        for head in args.heads:
            run_dir = args.out / args.method / task / head
            t0 = time.time()
            summary = finetune(args, bc_dir / task / head / "seed0" / "policy", run_dir)
            runs.append({**row(summary, args.episodes), "curve": curve(run_dir)})
            print(
                f"{task} {head} {args.method}: {summary['success_before']:.0f} % -> {summary['success_after']:.0f} % "
                f"({summary['env_steps']} env steps, {summary['wall_s'] / 60:.0f} min; {time.time() - t0:.0f} s here)",
                flush=True,
            )
            doc = {
                "argv": sys.argv[1:],
                "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
                "protocol": f"final checkpoint, {args.episodes} episodes on eval seeds 100000.., 1 NFE",
                "runs": runs,
            }
            results.write_text(json.dumps(doc, indent=2))
    plot(runs, args.out / "success.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
