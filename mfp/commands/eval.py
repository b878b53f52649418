"""`mfp eval`: evaluate the scripted expert or a saved policy on fixed evaluation seeds.

    mfp eval task=reach-v3 policy=expert n_episodes=50
    mfp eval task=robomimic/lift policy=expert n_episodes=50
    mfp eval checkpoint=runs/reach-v3/meanflow-seed0/policy n_episodes=50 num_steps=1

Seeds are ``core.seeds.eval_seeds(n_episodes, seed0)``, disjoint from every demonstration seed. Writes
``eval_info.json`` (LeRobot layout) and videos under ``out`` and prints the success rate with its 95 % interval.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from core.atomic_write import check_output
from core.errors import ConfigError, check_int, check_number
from core.seeds import EVAL_SEED_BASE, eval_seeds
from envs.runner import evaluate, is_eval_dir
from envs.suites import suite_for_task
from mfp.cli_args import parse_overrides
from training.distributed import resolve_device
from training.evaluation import InferenceOptions, evaluate_checkpoint


@dataclass
class EvalCliConfig:
    """Arguments of `mfp eval` (``key=value``; unknown keys fail)."""

    REMOVED: ClassVar[dict[str, str]] = {
        "noise_scale": "a colder starting noise lowered success (-5 and -20 points at 0.5 and 0; "
        "docs/results/ablation-noise-scale/)",
        "average_draws": "the mean of several draws per chunk changed nothing (docs/results/ablation-average-draws/)",
    }

    task: str = field(
        default="",
        metadata={
            "help": "a task of any suite, e.g. reach-v3 or robomimic/lift (a "
            "checkpoint supplies its own; this overrides it)"
        },
    )
    policy: str = field(default="expert", metadata={"help": "expert = the scripted expert; ignored with checkpoint"})
    checkpoint: str = field(default="", metadata={"help": "a policy directory written by training"})
    n_episodes: int = 50
    seed0: int = field(
        default=0,
        metadata={
            "help": f"offset into the eval seeds: episode i gets seed "
            f"{EVAL_SEED_BASE} + seed0 + i (training's evaluations: 0)"
        },
    )
    n_workers: int = 2
    max_steps: int = field(
        default=0, metadata={"help": "per episode; 0 = the checkpoint's task limit, else the suite's horizon"}
    )
    out: str = field(default="", metadata={"help": "output directory; empty = outputs/eval/<task>-<policy>"})
    n_videos: int = 2
    action_noise: float = field(default=0.0, metadata={"help": "expert only: Gaussian action noise"})
    render_obs: bool = field(default=False, metadata={"help": "expert only: render the clouds/images it does not need"})
    num_steps: int = field(default=0, metadata={"help": "checkpoint only: sampling steps (NFE); 0 = the policy's"})
    n_action_steps: int = field(
        default=0, metadata={"help": "checkpoint only: actions run per chunk; 0 = the policy's"}
    )
    hold_noise: bool = field(default=False, metadata={"help": "checkpoint only: one starting noise per episode"})
    device: str = "cpu"
    progress: bool = True
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty out directory"})

    def __post_init__(self) -> None:
        check_int("n_episodes", self.n_episodes, 1)
        for name in ("seed0", "n_workers", "max_steps", "n_videos", "num_steps", "n_action_steps"):
            check_int(name, getattr(self, name), 0)
        check_number("action_noise", self.action_noise, 0.0)
        resolve_device(self.device, "device")


def run(cfg: EvalCliConfig) -> dict[str, Any]:
    """Evaluate as ``cfg`` says; returns the eval info dict plus ``out_dir``."""
    if cfg.checkpoint:
        out = cfg.out or f"outputs/eval/{Path(cfg.checkpoint).resolve().parent.name or 'policy'}"
        check_output(out, [cfg.checkpoint], cfg.overwrite, ours=is_eval_dir)
        options = InferenceOptions(cfg.num_steps, cfg.n_action_steps, cfg.hold_noise)
        info = evaluate_checkpoint(
            cfg.checkpoint,
            episodes=cfg.n_episodes,
            n_workers=cfg.n_workers,
            out_dir=out,
            n_videos=cfg.n_videos,
            seed0=cfg.seed0,
            max_steps=cfg.max_steps or None,
            task=cfg.task or None,
            device=cfg.device,
            progress=cfg.progress,
            options=options,
        )
        return info | {"out_dir": out}
    if cfg.policy != "expert":
        raise ConfigError(f"unknown policy '{cfg.policy}'; use policy=expert or checkpoint=<policy dir>")
    if not cfg.task:
        raise ConfigError("pass task=<name> (e.g. task=reach-v3) to evaluate the scripted expert")
    suite = suite_for_task(cfg.task)
    task = suite.check_task(cfg.task)
    expert = suite.make_expert(task, action_noise=cfg.action_noise)
    out = cfg.out or f"outputs/eval/{cfg.task.replace('/', '-')}-expert"
    check_output(out, [], cfg.overwrite, ours=is_eval_dir)
    info = evaluate(
        expert,
        task,
        eval_seeds(cfg.n_episodes, cfg.seed0),
        n_workers=cfg.n_workers,
        out_dir=out,
        n_videos=cfg.n_videos,
        max_steps=cfg.max_steps or suite.max_steps(task),
        env_kwargs=suite.expert_env_kwargs(cfg.render_obs, videos=cfg.n_videos > 0),
        progress=cfg.progress,
        label="scripted expert" + (f" (noise {cfg.action_noise})" if cfg.action_noise else ""),
    )
    return info | {"out_dir": out}


def format_summary(info: dict[str, Any]) -> str:
    a = info["aggregated"]
    lat = (
        f"latency p50 {a['latency_ms_p50']:.2f} ms p99 {a['latency_ms_p99']:.2f} ms"
        if a["latency_ms_p50"] is not None
        else "latency n/a"
    )
    text = (
        f"[eval] {info['task']} {info['agent']}: success {a['n_success']}/{a['n_episodes']} = "
        f"{a['pc_success']:.1f} % (95 % CI {100 * a['ci95_low']:.1f}-{100 * a['ci95_high']:.1f} %); "
        f"{a['avg_steps']:.1f} steps/episode; {lat}; {a['env_steps_per_s']:.0f} env steps/s"
    )
    modes = a.get("modes")
    if modes:
        shares = ", ".join(
            f"{name} {freq:.2f}" + (f" (demos {modes['demo_mix'][name]:.2f})" if name in modes["demo_mix"] else "")
            for name, freq in modes["frequencies"].items()
        )
        text += f"\n[eval] modes: {shares}; dithered {modes['n_dithered']}/{a['n_episodes']}"
    if a["n_agent_failures"]:
        reasons = sorted({r["failure"] for r in info["per_episode"] if r["failure"]})
        text += f"\n[eval] {a['n_agent_failures']} episode(s) ended by agent errors, e.g. {reasons[0]}"
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg: EvalCliConfig = parse_overrides(EvalCliConfig, argv, "mfp eval")
    info = run(cfg)
    print(format_summary(info))
    print(f"[eval] wrote {Path(info['out_dir']) / 'eval_info.json'}")
    return 0
