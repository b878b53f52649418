"""`mfp bench heads`: every action head on the same backbone, side by side in one process.

Measures (1) inference latency at batch 1 on one thread, warm-up excluded, methods interleaved call by call so
machine load hits all alike: MeanFlow 1-NFE, flow matching 1 and 10 steps, DDIM-10, DDPM-100, regression;
(2) the training-step time of each head on the same batch (loss + backward + AdamW step; head only, no encoder;
MeanFlow with both JVP patterns);
(3) quality on the conditional multimodal toy problem (``mfp/bench/toy.py``) at each method's NFE after the same
number of training steps. Prints a table with the ratios the issue targets and writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from core.atomic_write import write_text
from mfp.bench.timing import interleaved, percentile
from mfp.bench.toy import ToyProblem, evaluate_sampler, head_sampler, train_head
from policies.backbones import ConditionalUnet1D, MLPBackbone
from policies.config import DiffusionConfig, FlowConfig, MeanFlowConfig
from policies.heads import ActionHead, make_head, n_time_inputs_for

# method -> (head name, NFE at inference)
METHODS: dict[str, tuple[str, int]] = {
    "meanflow-1": ("meanflow", 1),
    "flow-1": ("flow", 1),
    "flow-10": ("flow", 10),
    "ddim-10": ("ddim", 10),
    "ddpm-100": ("ddpm", 100),
    "regression": ("regression", 1),
}
TRAIN_HEADS = ("meanflow-primal", "meanflow-separate", "flow", "ddpm", "regression")
TARGETS = {
    "latency meanflow-1 vs ddim-10": 9.0,
    "latency meanflow-1 vs ddpm-100": 80.0,
    "train step meanflow / flow": 1.5,  # with the default jvp_mode
    "toy ED meanflow-1 / ddpm-100": 1.1,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mfp bench heads", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("heads.json"), help="JSON output file")
    p.add_argument("--parts", default="latency,train,toy", help="comma list of: latency, train, toy")
    p.add_argument("--backbone", choices=("unet", "mlp"), default="unet", help="backbone for latency and train step")
    p.add_argument("--down-dims", default="128,256,512", help="U-Net widths (DP3 size: 512,1024,2048)")
    p.add_argument("--hidden-dim", type=int, default=512, help="MLP backbone width")
    p.add_argument("--n-layers", type=int, default=4, help="MLP backbone depth")
    p.add_argument("--time-scale", type=float, default=1.0, help="sinusoidal time-embedding scale (all heads)")
    p.add_argument(
        "--ratio-r-eq-t",
        type=float,
        default=MeanFlowConfig.ratio_r_eq_t,
        help="MeanFlow fraction of r = t samples (only r != t samples need the JVP)",
    )
    p.add_argument("--horizon", type=int, default=4, help="action chunk length H (MP1: 4)")
    p.add_argument("--action-dim", type=int, default=4, help="action dim Da (Meta-World: 4)")
    p.add_argument("--cond-dim", type=int, default=256, help="global condition dim (DP3: 2 steps x 128)")
    p.add_argument("--calls", type=int, default=200, help="timed inference calls per method (>= 200 for p99)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per method before timing")
    p.add_argument("--train-batch", type=int, default=128, help="batch for the training-step timing")
    p.add_argument("--train-steps", type=int, default=20, help="timed training steps per head")
    p.add_argument("--toy-steps", type=int, default=1000, help="training steps per head on the toy problem")
    p.add_argument("--toy-hidden", type=int, default=256, help="toy MLP backbone width")
    p.add_argument("--toy-layers", type=int, default=3, help="toy MLP backbone depth")
    p.add_argument("--toy-samples", type=int, default=512, help="samples per condition for the toy distance")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    unknown = args.parts - {"latency", "train", "toy"}
    if unknown:
        p.error(f"unknown --parts {sorted(unknown)}; known: latency, train, toy")
    if args.calls < 1 or args.warmup < 0:
        p.error("--calls must be >= 1 and --warmup >= 0")
    return args


def head_config(name: str, args: argparse.Namespace) -> MeanFlowConfig | FlowConfig | DiffusionConfig | None:
    if name.startswith("meanflow"):
        mode = name.split("-")[1] if "-" in name else MeanFlowConfig.jvp_mode
        return MeanFlowConfig(ratio_r_eq_t=args.ratio_r_eq_t, jvp_mode=mode)
    if name == "flow":
        return FlowConfig()
    if name in ("ddpm", "ddim"):
        return DiffusionConfig()
    return None


def build(name: str, args: argparse.Namespace, action_dim: int, horizon: int, cond_dim: int, toy: bool) -> ActionHead:
    """Head ``name`` on a freshly initialized backbone of the benchmark's (or the toy's) size."""
    head_name = "meanflow" if name.startswith("meanflow") else name
    k = n_time_inputs_for(head_name)
    torch.manual_seed(args.seed)
    backbone: nn.Module
    if toy:
        backbone = MLPBackbone(action_dim, horizon, cond_dim, k, args.toy_hidden, args.toy_layers, 128, args.time_scale)
    elif args.backbone == "unet":
        dims = [int(d) for d in args.down_dims.split(",")]
        backbone = ConditionalUnet1D(action_dim, cond_dim, k, dims, 5, 8, 128, args.time_scale)
    else:
        backbone = MLPBackbone(action_dim, horizon, cond_dim, k, args.hidden_dim, args.n_layers, 128, args.time_scale)
    return make_head(head_name, backbone, head_config(name, args), horizon)


def bench_latency(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    heads = {
        name: build(name, args, args.action_dim, args.horizon, args.cond_dim, toy=False).eval()
        for name in {h for h, _ in METHODS.values()}
    }
    cond = torch.randn(1, args.cond_dim)
    gen = torch.Generator().manual_seed(args.seed)

    def call(head: ActionHead, nfe: int) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return head.sample(cond, num_steps=nfe, generator=gen)

        return run

    fns = {method: call(heads[name], nfe) for method, (name, nfe) in METHODS.items()}
    times = interleaved(fns, args.calls, args.warmup)
    params = {name: sum(p.numel() for p in h.parameters()) for name, h in heads.items()}
    return {
        method: {
            "nfe": METHODS[method][1],
            "p50_ms": 1e3 * percentile(t, 50),
            "p99_ms": 1e3 * percentile(t, 99),
            "mean_ms": 1e3 * statistics.fmean(t),
            "params": params[METHODS[method][0]],
        }
        for method, t in times.items()
    }


def bench_train_step(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    gen = torch.Generator().manual_seed(args.seed)
    actions = torch.rand(args.train_batch, args.horizon, args.action_dim, generator=gen) * 2 - 1
    cond = torch.randn(args.train_batch, args.cond_dim, generator=gen)

    def step(head: ActionHead, opt: torch.optim.Optimizer) -> None:
        loss, _ = head.compute_loss(actions, cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fns: dict[str, Callable[[], object]] = {}
    for name in TRAIN_HEADS:
        head = build(name, args, args.action_dim, args.horizon, args.cond_dim, toy=False).train()
        fns[name] = functools.partial(step, head, torch.optim.AdamW(head.parameters(), lr=1e-4))
    times = interleaved(fns, args.train_steps, warmup=2)
    return {
        name: {"median_ms": 1e3 * statistics.median(t), "p90_ms": 1e3 * percentile(t, 90)} for name, t in times.items()
    }


def bench_toy(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    problem = ToyProblem()
    trained: dict[str, ActionHead] = {}
    train_info: dict[str, dict[str, float]] = {}
    for name in ("meanflow", "flow", "ddpm", "regression"):
        head = build(name, args, problem.action_dim, problem.horizon, problem.cond_dim, toy=True)
        train_info[name] = train_head(head, problem, args.toy_steps, seed=args.seed)
        trained[name] = head
    trained["ddim"] = make_head("ddim", trained["ddpm"].backbone, DiffusionConfig(), problem.horizon)
    train_info["ddim"] = train_info["ddpm"]
    out = {}
    for method, (name, nfe) in METHODS.items():
        quality = evaluate_sampler(
            problem,
            head_sampler(trained[name], nfe),
            n_conditions=16,
            n_per_condition=args.toy_samples,
            seed=args.seed + 7,
        )
        out[method] = {
            **quality,
            "nfe": nfe,
            "train_seconds": train_info[name]["seconds"],
            "train_steps": train_info[name]["steps"],
        }
    reference = evaluate_sampler(
        problem,
        lambda c, g: problem.sample_actions(c[:, 0], g)[0],
        n_conditions=16,
        n_per_condition=args.toy_samples,
        seed=args.seed + 7,
    )
    out["data (reference)"] = {**reference, "nfe": 0}
    return out


def ratios(result: dict) -> dict[str, float]:
    r: dict[str, float] = {}
    lat = result.get("latency")
    if lat:
        r["latency meanflow-1 vs ddim-10"] = lat["ddim-10"]["p50_ms"] / lat["meanflow-1"]["p50_ms"]
        r["latency meanflow-1 vs ddpm-100"] = lat["ddpm-100"]["p50_ms"] / lat["meanflow-1"]["p50_ms"]
    step = result.get("train_step")
    if step:
        default = f"meanflow-{MeanFlowConfig.jvp_mode}"
        r["train step meanflow / flow"] = step[default]["median_ms"] / step["flow"]["median_ms"]
        for mode in ("primal", "separate"):
            r[f"train step meanflow-{mode} / flow"] = step[f"meanflow-{mode}"]["median_ms"] / step["flow"]["median_ms"]
    toy = result.get("toy")
    if toy:
        mf, ddpm = toy["meanflow-1"]["energy_distance"], toy["ddpm-100"]["energy_distance"]
        # An ED <= 0 means "indistinguishable from data at this sample size": then only another such ED matches it.
        r["toy ED meanflow-1 / ddpm-100"] = mf / ddpm if ddpm > 0 else (1.0 if mf <= 0 else float("inf"))
    return r


def target_met(name: str, value: float) -> bool:
    return value <= TARGETS[name] if name.startswith(("train", "toy")) else value >= TARGETS[name]


def print_table(result: dict) -> None:
    lat, step, toy = result.get("latency", {}), result.get("train_step", {}), result.get("toy", {})
    config = result["config"]
    print(f"\nheads benchmark: backbone={config['backbone']} threads=1 batch=1 calls={config['calls']}")
    print(f"{'method':<18}{'NFE':>4}{'p50 ms':>9}{'p99 ms':>9}{'toy ED':>9}{'precision':>10}{'coverage':>9}")
    for method in [*METHODS, "data (reference)"]:
        row_lat, row_toy = lat.get(method, {}), toy.get(method, {})
        if not row_lat and not row_toy:
            continue
        nfe = str(METHODS[method][1]) if method in METHODS else "-"

        def fmt(d: dict, k: str, width: int, digits: int) -> str:
            return f"{d[k]:>{width}.{digits}f}" if k in d else f"{'-':>{width}}"

        print(
            f"{method:<18}{nfe:>4}{fmt(row_lat, 'p50_ms', 9, 3)}{fmt(row_lat, 'p99_ms', 9, 3)}"
            f"{fmt(row_toy, 'energy_distance', 9, 4)}{fmt(row_toy, 'precision', 10, 3)}"
            f"{fmt(row_toy, 'coverage', 9, 3)}"
        )
    if step:
        print(f"\n{'training step (B=' + str(result['config']['train_batch']) + ')':<22}{'median ms':>10}{'p90 ms':>9}")
        for name, row in step.items():
            print(f"{name:<22}{row['median_ms']:>10.1f}{row['p90_ms']:>9.1f}")
    print("\nratios (target):")
    for name, value in result["ratios"].items():
        if name in TARGETS:
            verdict = "met" if target_met(name, value) else "MISSED"
            bound = "<=" if name.startswith(("train", "toy")) else ">="
            print(f"  {name:<40}{value:>8.2f}  ({bound} {TARGETS[name]}: {verdict})")
        else:
            print(f"  {name:<40}{value:>8.2f}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    result: dict = {
        "config": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        }
    }
    result["config"]["torch"] = torch.__version__
    result["config"]["machine"] = platform.processor() or platform.machine()
    if "latency" in args.parts:
        result["latency"] = bench_latency(args)
    if "train" in args.parts:
        result["train_step"] = bench_train_step(args)
    if "toy" in args.parts:
        result["toy"] = bench_toy(args)
    result["ratios"] = ratios(result)
    result["targets"] = {
        n: {"target": t, "value": result["ratios"][n], "met": target_met(n, result["ratios"][n])}
        for n, t in TARGETS.items()
        if n in result["ratios"]
    }
    print_table(result)
    write_text(args.out, json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
