"""`mfp eval`: evaluate the scripted expert or a saved policy on fixed evaluation seeds.

    mfp eval task=reach-v3 policy=expert n_episodes=50
    mfp eval task=robomimic/lift policy=expert n_episodes=50
    mfp eval checkpoint=runs/reach-v3/meanflow-seed0/policy n_episodes=50 num_steps=1

Seeds are ``envs.seeds.eval_seeds(n_episodes, seed0)``, disjoint from every demonstration seed. Writes
``eval_info.json`` (LeRobot layout) and videos under ``out`` and prints the success rate with its 95 % interval.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

DEFAULT_MAX_STEPS = 200


@dataclass
class EvalCliConfig:
    """Arguments of `mfp eval` (``key=value``; unknown keys fail)."""

    # Meta-World task or robosuite task (robomimic/lift, can, square); a checkpoint supplies its own (this overrides it).
    task: str = ""
    # "expert" = the scripted expert; ignored when checkpoint is set.
    policy: str = "expert"
    # A policy directory written by training (config.json + safetensors).
    checkpoint: str = ""
    n_episodes: int = 50
    # Offset into the evaluation seed range.
    seed0: int = 0
    n_workers: int = 2
    # Step limit per episode; 0 -> the checkpoint's task.max_episode_steps, else 200.
    max_steps: int = 0
    # Output directory; empty -> outputs/eval/<task>-<policy>
    out: str = ""
    n_videos: int = 2
    # Scripted expert only: Gaussian action noise, and whether to render point clouds/images it does not need.
    action_noise: float = 0.0
    render_obs: bool = False
    # Checkpoint only: sampling steps (NFE) at inference; 0 = the policy's default.
    num_steps: int = 0
    # Checkpoint only: actions executed per predicted chunk before re-planning; 0 = the policy's own.
    n_action_steps: int = 0
    # Checkpoint only: scale of the sampler's starting noise; 1 = as trained, 0 = deterministic chunks.
    noise_scale: float = 1.0
    # Checkpoint only: one starting noise per episode (reused by every chunk) instead of a fresh draw per chunk.
    hold_noise: bool = False
    device: str = "cpu"
    progress: bool = True


def run(cfg: EvalCliConfig) -> dict[str, Any]:
    """Evaluate as ``cfg`` says; returns the eval info dict plus ``out_dir``."""
    from envs.runner import evaluate, evaluate_checkpoint

    if cfg.checkpoint:
        out = cfg.out or f"outputs/eval/{Path(cfg.checkpoint).resolve().parent.name or 'policy'}"
        info = evaluate_checkpoint(
            cfg.checkpoint, episodes=cfg.n_episodes, n_workers=cfg.n_workers, out_dir=out, n_videos=cfg.n_videos,
            seed0=cfg.seed0, max_steps=cfg.max_steps or None, task=cfg.task or None, num_steps=cfg.num_steps,
            device=cfg.device, progress=cfg.progress, n_action_steps=cfg.n_action_steps,
            noise_scale=cfg.noise_scale, hold_noise=cfg.hold_noise,
        )
        return info | {"out_dir": out}
    if cfg.policy != "expert":
        raise ValueError(f"unknown policy '{cfg.policy}'; use policy=expert or checkpoint=<policy dir>")
    if not cfg.task:
        raise ValueError("pass task=<name> (e.g. task=reach-v3) to evaluate the scripted expert")
    from envs.robosuite_env import is_robosuite_task
    from envs.seeds import eval_seeds

    if is_robosuite_task(cfg.task):
        from envs.robosuite_env import task_info
        from envs.robosuite_experts import RobosuiteExpertAgent

        expert = RobosuiteExpertAgent(cfg.task, action_noise=cfg.action_noise)
        max_steps = cfg.max_steps or task_info(cfg.task).max_steps
        # Without observation images the env still needs one camera when videos are asked for.
        env_kwargs = {} if cfg.render_obs else {"cameras": ("agentview",) if cfg.n_videos else ()}
    else:
        from envs.experts import ScriptedExpert

        expert = ScriptedExpert(cfg.task, noise_std=cfg.action_noise)
        max_steps = cfg.max_steps or DEFAULT_MAX_STEPS
        env_kwargs = {} if cfg.render_obs else {"point_cloud_cameras": (), "image_cameras": ()}
    out = cfg.out or f"outputs/eval/{cfg.task.replace('/', '-')}-expert"
    info = evaluate(
        expert, cfg.task, eval_seeds(cfg.n_episodes, cfg.seed0),
        n_workers=cfg.n_workers, out_dir=out, n_videos=cfg.n_videos, max_steps=max_steps,
        env_kwargs=env_kwargs,
        progress=cfg.progress, label="scripted expert" + (f" (noise {cfg.action_noise})" if cfg.action_noise else ""),
    )
    return info | {"out_dir": out}


def format_summary(info: dict[str, Any]) -> str:
    a = info["aggregated"]
    lat = (f"latency p50 {a['latency_ms_p50']:.2f} ms p99 {a['latency_ms_p99']:.2f} ms"
           if a["latency_ms_p50"] is not None else "latency n/a")
    text = (f"[eval] {info['task']} {info['agent']}: success {a['n_success']}/{a['n_episodes']} = "
            f"{a['pc_success']:.1f} % (95 % CI {100 * a['ci95_low']:.1f}-{100 * a['ci95_high']:.1f} %); "
            f"{a['avg_steps']:.1f} steps/episode; {lat}; {a['env_steps_per_s']:.0f} env steps/s")
    if a["n_agent_failures"]:
        reasons = sorted({r["failure"] for r in info["per_episode"] if r["failure"]})
        text += f"\n[eval] {a['n_agent_failures']} episode(s) ended by agent errors, e.g. {reasons[0]}"
    return text


def main(argv: Optional[list[str]] = None) -> int:
    from mfp.cli_args import parse_overrides

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg: EvalCliConfig = parse_overrides(EvalCliConfig, argv, "mfp eval")
    try:
        info = run(cfg)
    except ValueError as e:
        print(f"mfp eval: {e}", file=sys.stderr)
        return 2
    print(format_summary(info))
    print(f"[eval] wrote {Path(info['out_dir']) / 'eval_info.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
