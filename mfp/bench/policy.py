"""`mfp bench policy`: whole-policy training throughput and inference latency, heads side by side on one device.

For each case (a task's observation pipeline with a profile) and each head, the policy is built exactly as
`mfp train` builds it (hydra config -> TrainConfig -> Trainer), then:
  train    the trainer's own step, timed after warm-up: batch sampling from the in-memory dataset, host-to-device
           copy, loss (MeanFlow's JVP included), backward, clipping, AdamW, EMA update -> steps/s.
  latency  ``predict_action`` of the EMA policy at batch 1 (normalization, encoders, head at its NFE, chunk out),
           heads interleaved call by call -> p50/p99 ms.
The demonstrations are synthetic episodes with the task's observation spec (tabletop point clouds, random uint8
camera frames, smooth actions) held in the real ReplayBuffer / SequenceDataset, so the benchmark needs no simulator
(it runs on a GPU box with only torch). Content does not change the compute, except the PointNet's critical-point
backward, whose share depends on the cloud (Meta-World's real clouds: about 21 % critical points).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from core.atomic_write import write_text
from core.spec import ACTION, ObsSpec, ShapeMeta
from demos.replay_buffer import ReplayBuffer
from mfp.bench.timing import interleaved, percentile
from policies.policy import Policy
from training.config import TrainConfig, compose_train_config
from training.trainer import Trainer

# case -> hydra overrides (task + profile). The GPU image case is the DP robomimic window on the GPU profile.
CASES: dict[str, list[str]] = {
    "metaworld-cpu": ["task=metaworld", "profile=cpu"],
    "metaworld-gpu": ["task=metaworld", "profile=gpu"],
    "robomimic-cpu_image": ["task=robomimic/can", "profile=cpu_image"],
    "robomimic-gpu": ["task=robomimic/can", "profile=gpu", "policy.horizon=16", "policy.n_action_steps=8"],
}
# head preset -> NFE used at inference (the presets' own num_inference_steps)
METHODS = ("meanflow", "ddim", "regression")

# Meta-World's observation spec (envs/metaworld/env.py), for machines without metaworld installed; a test checks
# it against the environment's own spec.
METAWORLD_AGENT_POS_DIM = 4
METAWORLD_ACTION_DIM = 4


def tabletop_clouds(n: int, points: int, generator: torch.Generator) -> torch.Tensor:
    """(n, points, 3) in [-1, 1]: half the points on a table plane, half on a randomly placed box."""
    pts = torch.rand(n, points, 3, generator=generator) * 2 - 1
    half = points // 2
    pts[:, :half, 2] = -0.9
    pts[:, half:] = pts[:, half:] * 0.2 + (torch.rand(n, 1, 3, generator=generator) - 0.5)
    return pts


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mfp bench policy", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("policy_bench.json"), help="JSON output file")
    p.add_argument("--cases", default="metaworld-cpu,robomimic-cpu_image", help=f"comma list of: {', '.join(CASES)}")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of head presets (configs/policy)")
    p.add_argument("--parts", default="train,latency", help="comma list of: train, latency")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU (pin them)")
    p.add_argument(
        "--amp",
        choices=("profile", "on", "off"),
        default="profile",
        help="bf16 autocast outside the JVP: as the profile says, or forced",
    )
    p.add_argument("--batch", type=int, default=0, help="training batch (0: the profile's)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per (case, head)")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps / latency calls first")
    p.add_argument("--calls", type=int, default=100, help="timed latency calls per (case, head)")
    p.add_argument("--episodes", type=int, default=10, help="synthetic demo episodes")
    p.add_argument("--episode-len", type=int, default=100, help="steps per synthetic episode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="extra hydra overrides for every case (key=value)")
    args = p.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    args.methods = [m for m in args.methods.split(",") if m]
    args.parts = {s for s in args.parts.split(",") if s}
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    if args.parts - {"train", "latency"}:
        p.error(f"unknown --parts {sorted(args.parts - {'train', 'latency'})}; known: train, latency")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA device")
    return args


def shape_meta_of(cfg: TrainConfig) -> ShapeMeta:
    """The task's real observation spec; Meta-World's from the constants above where metaworld is not installed."""
    from training.tasks import task_shape_meta

    try:
        return task_shape_meta(cfg.task)
    except ImportError:
        if cfg.task.suite != "metaworld" or list(cfg.task.obs_keys) != ["point_cloud", "agent_pos"]:
            raise
        obs = {
            "point_cloud": ObsSpec("point_cloud", "point_cloud", (cfg.task.num_points, 3)),
            "agent_pos": ObsSpec("agent_pos", "low_dim", (METAWORLD_AGENT_POS_DIM,)),
        }
        return ShapeMeta(obs=obs, action_dim=METAWORLD_ACTION_DIM)


def synthetic_buffer(shape_meta: ShapeMeta, episodes: int, length: int, seed: int) -> ReplayBuffer:
    """An in-memory ReplayBuffer of ``episodes`` x ``length`` steps with ``shape_meta``'s keys, shapes and dtypes."""
    gen = torch.Generator().manual_seed(seed)
    n = episodes * length
    data: dict[str, np.ndarray] = {}
    for key, spec in shape_meta.obs.items():
        if spec.type == "point_cloud":
            clouds = tabletop_clouds(n, spec.shape[0], gen)
            if spec.shape[1] > 3:
                clouds = torch.cat([clouds, torch.rand(n, spec.shape[0], spec.shape[1] - 3, generator=gen)], -1)
            data[key] = clouds.numpy().astype(np.float32)
        elif spec.type == "rgb":
            data[key] = torch.randint(0, 256, (n, *spec.shape), generator=gen, dtype=torch.uint8).numpy()
        else:
            data[key] = torch.randn(n, *spec.shape, generator=gen).numpy()
    # Smooth actions in [-1, 1]: a random walk per episode.
    steps = torch.randn(episodes, length, shape_meta.action_dim, generator=gen) * 0.1
    data[ACTION] = steps.cumsum(1).tanh().reshape(n, -1).numpy()
    ends = np.arange(1, episodes + 1) * length
    attrs = {"obs_types": {k: s.type for k, s in shape_meta.obs.items()}}
    return ReplayBuffer(data, ends, np.arange(episodes), attrs)


def build_trainer(case: str, method: str, args: argparse.Namespace, out_dir: Path) -> tuple[Trainer, TrainConfig]:
    """A Trainer for (case, head) on the synthetic demos; nothing is written to ``out_dir`` unless it trains."""
    from demos.dataset import SequenceDataset
    from training.tasks import TaskData

    overrides = [
        *CASES[case],
        f"policy={method}",
        f"device={args.device}",
        f"torch_threads={args.threads}",
        f"output_dir={out_dir}",
        "wandb.mode=disabled",
        "progress=false",
        *args.overrides,
    ]
    if args.batch > 0:
        overrides.append(f"batch_size={args.batch}")
    if args.amp != "profile":
        overrides.append(f"mixed_precision={args.amp == 'on'}")
    cfg = compose_train_config(overrides)
    shape_meta = shape_meta_of(cfg)
    buffer = synthetic_buffer(shape_meta, args.episodes, args.episode_len, args.seed)
    pc = cfg.policy
    dataset = SequenceDataset(buffer, shape_meta, pc.horizon, pc.n_obs_steps, pc.n_action_steps)
    return Trainer(cfg, data=TaskData(shape_meta=shape_meta, train=dataset, val=None)), cfg


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(
    trainer: Trainer, cfg: TrainConfig, steps: int, warmup: int, baseline_bytes: int = 0
) -> dict[str, float]:
    """Steps/s of the trainer's own step (sampling and host-to-device copy included); on CUDA also the run's peak
    memory above ``baseline_bytes`` (what was allocated before its trainer was built)."""
    device = trainer.device
    for _ in range(warmup):
        trainer.train_step(trainer.data.train.sample_batch(trainer.np_rng, cfg.batch_size))
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_step = []
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step(trainer.data.train.sample_batch(trainer.np_rng, cfg.batch_size))
        _sync(device)
        per_step.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    row = {
        "steps_per_s": steps / elapsed,
        "median_ms": 1e3 * statistics.median(per_step),
        "batch": cfg.batch_size,
        "mixed_precision": cfg.mixed_precision,
        "params_M": sum(p.numel() for p in trainer.policy.parameters()) / 1e6,
    }
    if device.type == "cuda":
        row["peak_mem_GiB"] = (torch.cuda.max_memory_allocated(device) - baseline_bytes) / 2**30
    return row


def latency_fn(policy: Policy, obs: dict[str, torch.Tensor], device: torch.device) -> Callable[[], object]:
    def run() -> object:
        action = policy.predict_action(obs)
        _sync(device)
        return action

    return run


def run_case(case: str, args: argparse.Namespace) -> dict[str, dict]:
    results: dict[str, dict] = {m: {} for m in args.methods}
    fns: dict[str, Callable[[], object]] = {}
    nfe: dict[str, int] = {}
    for method in args.methods:
        baseline = torch.cuda.memory_allocated(args.device) if args.device.startswith("cuda") else 0
        with tempfile.TemporaryDirectory() as tmp:
            trainer, cfg = build_trainer(case, method, args, Path(tmp) / "run")
        if "train" in args.parts:
            results[method]["train"] = bench_train(trainer, cfg, args.steps, args.warmup, baseline)
            print(f"  {case:<22}{method:<12} train {results[method]['train']['steps_per_s']:8.2f} steps/s", flush=True)
        if "latency" in args.parts:
            policy = trainer.ema.ema_model.eval()
            batch = trainer.data.train.sample_batch(np.random.default_rng(args.seed), 1)
            obs = {k: v.to(trainer.device) for k, v in batch["obs"].items()}
            fns[method] = latency_fn(policy, obs, trainer.device)
            nfe[method] = policy.num_inference_steps or policy.head.default_num_steps
    if fns:
        times = interleaved(fns, args.calls, args.warmup)
        for method, t in times.items():
            results[method]["latency"] = {
                "nfe": nfe[method],
                "p50_ms": 1e3 * percentile(t, 50),
                "p99_ms": 1e3 * percentile(t, 99),
                "mean_ms": 1e3 * statistics.fmean(t),
            }
    return results


def ratios(result: dict) -> dict[str, float]:
    r: dict[str, float] = {}
    for case, rows in result["cases"].items():
        mf = rows.get("meanflow", {})
        for other in ("ddim", "regression"):
            o = rows.get(other, {})
            if "latency" in mf and "latency" in o:
                r[f"{case} latency {other} / meanflow"] = o["latency"]["p50_ms"] / mf["latency"]["p50_ms"]
            if "train" in mf and "train" in o:
                r[f"{case} train step meanflow / {other}"] = o["train"]["steps_per_s"] / mf["train"]["steps_per_s"]
    return r


def print_table(result: dict) -> None:
    c = result["config"]
    print(f"\npolicy benchmark: device={c['device']} ({c['device_name']}) threads={c['threads']} amp={c['amp']}")
    print(
        f"{'case':<22}{'head':<12}{'params M':>9}{'batch':>6}{'bf16':>5}{'steps/s':>9}{'ms/step':>9}"
        f"{'NFE':>4}{'p50 ms':>9}{'p99 ms':>9}"
    )
    for case, rows in result["cases"].items():
        for method, row in rows.items():
            tr, lat = row.get("train", {}), row.get("latency", {})

            def f(d: dict, k: str, w: int, digits: int) -> str:
                return f"{d[k]:>{w}.{digits}f}" if k in d else f"{'-':>{w}}"

            amp = ("y" if tr["mixed_precision"] else "n") if tr else "-"
            print(
                f"{case:<22}{method:<12}{f(tr, 'params_M', 9, 1)}{tr.get('batch', '-'):>6}{amp:>5}"
                f"{f(tr, 'steps_per_s', 9, 2)}{f(tr, 'median_ms', 9, 1)}{lat.get('nfe', '-'):>4}"
                f"{f(lat, 'p50_ms', 9, 2)}{f(lat, 'p99_ms', 9, 2)}"
            )
    if result["ratios"]:
        print("\nratios:")
        for name, value in result["ratios"].items():
            print(f"  {name:<52}{value:>7.2f}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    result: dict = {
        "config": {
            "cases": args.cases,
            "methods": args.methods,
            "parts": sorted(args.parts),
            "device": args.device,
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "threads": args.threads,
            "amp": args.amp,
            "steps": args.steps,
            "calls": args.calls,
            "warmup": args.warmup,
            "overrides": args.overrides,
            "torch": torch.__version__,
            "data": f"synthetic, {args.episodes} episodes x {args.episode_len} steps",
        },
        "cases": {},
    }
    for case in args.cases:
        result["cases"][case] = run_case(case, args)
        write_text(args.out, json.dumps(result, indent=2))  # what is measured so far survives a killed run
    result["ratios"] = ratios(result)
    print_table(result)
    write_text(args.out, json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0
