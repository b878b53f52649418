"""`mfp bench encoders`: encoder latency at batch 1, the point encoder's training step, the dispersive overhead.

Measures, on ``--threads`` threads (default 1), warm-up excluded, methods interleaved call by call so machine
load hits all alike:
  latency   batch 1, eval mode, no grad, p50/p99 over ``--calls``: PointNet (both variants) on 512 points, the
            image encoder on one 84x84 camera (76x76 centre crop), and the full condition (point cloud 512 +
            agent_pos) for 2 observation steps.
  train     forward + backward of the observation encoder (point cloud + agent_pos) at batch 128 x 2 steps
            (256 clouds): the DP3 layer order, the dense pass, and the critical-point backward (see
            encoders/pointnet.py). Reports the median and the minimum (the least disturbed run) per step.
  dispersive the same step with and without each dispersive variant on the (128, 256) condition, interleaved,
            and the isolated cost of the term (forward + backward on the embedding); target <= 5 % of the step.
Point clouds are synthetic tabletop scenes (a plane plus a box) normalized to [-1, 1].
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from core.atomic_write import write_text
from core.spec import AGENT_POS, POINT_CLOUD, ShapeMeta
from encoders.dispersive import DISPERSIVE_VARIANTS, DispersiveLoss
from encoders.image import ImageEncoder
from encoders.pointnet import PointNetEncoder
from mfp.bench.policy import tabletop_clouds
from mfp.bench.timing import interleaved, percentile
from policies.obs_encoder import ObservationEncoder

DISPERSIVE_TARGET_PCT = 5.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mfp bench encoders", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("encoders.json"), help="JSON output file")
    p.add_argument("--parts", default="latency,train,dispersive", help="comma list of: latency, train, dispersive")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (pin them: DESIGN section 8)")
    p.add_argument("--points", type=int, default=512, help="points per cloud")
    p.add_argument("--state-dim", type=int, default=9, help="agent_pos dim")
    p.add_argument("--image-size", type=int, default=84, help="camera image side")
    p.add_argument("--calls", type=int, default=200, help="timed calls per latency method (>= 200 for p99)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls per latency method")
    p.add_argument("--batch", type=int, default=128, help="training batch (samples; clouds = batch x obs steps)")
    p.add_argument("--obs-steps", type=int, default=2, help="observation steps")
    p.add_argument("--train-reps", type=int, default=7, help="timed training steps per method")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def summary_ms(times: list[float]) -> dict[str, float]:
    ms = [t * 1e3 for t in times]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "min_ms": min(ms),
        "median_ms": statistics.median(ms),
        "n": len(ms),
    }


def condition_meta(points: int, state_dim: int) -> ShapeMeta:
    return ShapeMeta.from_dict(
        {
            "obs": {
                POINT_CLOUD: {"type": "point_cloud", "shape": [points, 3]},
                AGENT_POS: {"type": "low_dim", "shape": [state_dim]},
            },
            "action": {"shape": [4]},
        }
    )


def condition_obs(batch: int, steps: int, points: int, state_dim: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    clouds = tabletop_clouds(batch * steps, points, g).reshape(batch, steps, points, 3)
    return {POINT_CLOUD: clouds, AGENT_POS: torch.rand(batch, steps, state_dim, generator=g) * 2 - 1}


def bench_latency(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    g = torch.Generator().manual_seed(args.seed)
    cloud = tabletop_clouds(1, args.points, g)
    image = torch.rand(1, 3, args.image_size, args.image_size, generator=g)
    crop = min(76, args.image_size)
    meta = condition_meta(args.points, args.state_dim)
    obs = condition_obs(1, args.obs_steps, args.points, args.state_dim, g)
    modules = {
        "pointnet": (PointNetEncoder(3, [64, 128, 256], 64, "max"), cloud),
        "pointnet_maxmean": (PointNetEncoder(3, [64, 128, 256], 64, "maxmean"), cloud),
        f"image_{args.image_size}": (ImageEncoder((3, args.image_size, args.image_size), (crop, crop), 32, 64), image),
        f"condition_pc+state_{args.obs_steps}steps": (ObservationEncoder(meta, args.obs_steps), obs),
    }

    def call(module: torch.nn.Module, x: object) -> Callable[[], object]:
        module.eval()

        def run() -> object:
            with torch.no_grad():
                return module(x)

        return run

    times = interleaved({k: call(m, x) for k, (m, x) in modules.items()}, args.calls, args.warmup)
    return {k: summary_ms(v) for k, v in times.items()}


def _dp3_literal(enc: PointNetEncoder, points: torch.Tensor) -> torch.Tensor:
    """DP3's literal order (ReLU on every point, then max over points), dense backward: the reference cost."""
    return enc.proj(F.relu(enc.mlp(points)).amax(dim=1))


def critical_fraction(enc: PointNetEncoder, points: torch.Tensor) -> float:
    """Share of (cloud, point) rows that attain some channel maximum: the rows the sparse backward touches."""
    with torch.no_grad():
        arg = enc.mlp(points).argmax(dim=1)  # (N, C)
    rows = arg + torch.arange(points.shape[0]).unsqueeze(1) * points.shape[1]
    return torch.unique(rows).numel() / (points.shape[0] * points.shape[1])


def bench_train(args: argparse.Namespace) -> dict[str, object]:
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    meta = condition_meta(args.points, args.state_dim)
    enc = ObservationEncoder(meta, args.obs_steps).train()
    pointnet: PointNetEncoder = enc.encoders[POINT_CLOUD]  # type: ignore[assignment]
    obs = condition_obs(args.batch, args.obs_steps, args.points, args.state_dim, g)
    clouds = obs[POINT_CLOUD].reshape(-1, args.points, 3)
    target = torch.randn(args.batch, enc.output_dim, generator=g)

    def step(sparse: bool) -> Callable[[], None]:
        def run() -> None:
            pointnet.sparse_backward = sparse
            enc.zero_grad(set_to_none=True)
            ((enc(obs) - target) ** 2).mean().backward()

        return run

    def literal() -> None:
        enc.zero_grad(set_to_none=True)
        ((_dp3_literal(pointnet, clouds) - target[:, :64].repeat(args.obs_steps, 1)) ** 2).mean().backward()

    times = interleaved(
        {"dp3_order_dense": literal, "dense": step(False), "critical_point_backward": step(True)}, args.train_reps, 1
    )
    pointnet.sparse_backward = True
    result: dict[str, object] = {k: summary_ms(v) for k, v in times.items()}
    result["clouds_per_step"] = clouds.shape[0]
    result["critical_fraction"] = critical_fraction(pointnet, clouds)
    base = result["dp3_order_dense"]["min_ms"]  # type: ignore[index]
    result["speedup_vs_dp3_order_min"] = base / result["critical_point_backward"]["min_ms"]  # type: ignore[index]
    return result


def bench_dispersive(args: argparse.Namespace) -> dict[str, object]:
    g = torch.Generator().manual_seed(args.seed + 1)
    torch.manual_seed(args.seed)
    meta = condition_meta(args.points, args.state_dim)
    enc = ObservationEncoder(meta, args.obs_steps).train()
    obs = condition_obs(args.batch, args.obs_steps, args.points, args.state_dim, g)
    target = torch.randn(args.batch, enc.output_dim, generator=g)
    losses = {v: DispersiveLoss(v) for v in DISPERSIVE_VARIANTS}

    def step(variant: str | None) -> Callable[[], None]:
        def run() -> None:
            enc.zero_grad(set_to_none=True)
            z = enc(obs)  # (B, To*D)
            loss = ((z - target) ** 2).mean()
            if variant is not None:
                loss = loss + 0.5 * losses[variant](z)
            loss.backward()

        return run

    fns = {"plain": step(None), **{v: step(v) for v in DISPERSIVE_VARIANTS}}
    steps = {k: summary_ms(v) for k, v in interleaved(fns, args.train_reps, 1).items()}

    z_leaf = torch.randn(args.batch, enc.output_dim, generator=g, requires_grad=True)

    def isolated(variant: str) -> Callable[[], None]:
        def run() -> None:
            z_leaf.grad = None
            losses[variant](z_leaf).backward()

        return run

    term = {k: summary_ms(v) for k, v in interleaved({v: isolated(v) for v in DISPERSIVE_VARIANTS}, 200, 20).items()}
    plain = steps["plain"]["median_ms"]
    overhead = {
        v: {
            "term_p50_ms": term[v]["p50_ms"],
            "pct_of_step": 100 * term[v]["p50_ms"] / plain,
            "ab_delta_median_ms": steps[v]["median_ms"] - plain,
        }
        for v in DISPERSIVE_VARIANTS
    }
    return {
        "steps": steps,
        "overhead": overhead,
        "embedding_shape": [args.batch, enc.output_dim],
        "target_pct": DISPERSIVE_TARGET_PCT,
        "target_met": all(o["pct_of_step"] <= DISPERSIVE_TARGET_PCT for o in overhead.values()),
    }


def print_table(result: dict) -> None:
    if "latency" in result:
        print("\nlatency, batch 1 (ms)")
        for name, s in result["latency"].items():
            print(f"  {name:<36} p50 {s['p50_ms']:8.3f}   p99 {s['p99_ms']:8.3f}")
    if "train" in result:
        t = result["train"]
        print(f"\nencoder forward+backward, {t['clouds_per_step']} clouds (ms)")
        for name in ("dp3_order_dense", "dense", "critical_point_backward"):
            print(f"  {name:<36} median {t[name]['median_ms']:8.1f}   min {t[name]['min_ms']:8.1f}")
        print(f"  critical fraction {t['critical_fraction']:.3f}; speed-up (min) {t['speedup_vs_dp3_order_min']:.2f}x")
    if "dispersive" in result:
        d = result["dispersive"]
        print(
            f"\ndispersive term at {d['embedding_shape']} vs the plain step "
            f"({d['steps']['plain']['median_ms']:.1f} ms median)"
        )
        for name, o in d["overhead"].items():
            print(
                f"  {name:<36} term {o['term_p50_ms']:7.3f} ms  = {o['pct_of_step']:5.2f} %   "
                f"(A/B delta {o['ab_delta_median_ms']:+.1f} ms)"
            )
        print(f"  target <= {d['target_pct']} %: {'met' if d['target_met'] else 'NOT met'}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"latency", "train", "dispersive"}
    if unknown:
        raise SystemExit(f"mfp bench encoders: unknown part(s) {sorted(unknown)}; known: latency, train, dispersive")
    result: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    result["config"].update(torch=torch.__version__, machine=platform.processor() or platform.machine())
    if "latency" in parts:
        result["latency"] = bench_latency(args)
    if "train" in parts:
        result["train"] = bench_train(args)
    if "dispersive" in parts:
        result["dispersive"] = bench_dispersive(args)
    print_table(result)
    write_text(args.out, json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
