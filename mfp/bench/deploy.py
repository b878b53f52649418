"""`mfp bench deploy`: export latency, the control loop against the simulated arm, and bridge round trips.

Parts (``parts=export,loop,bridge``):

- **export**: one policy call at batch 1, one thread, p50/p99 over ``calls`` calls after ``warmup`` calls, for eager
  ``Policy.predict_action``, the eager export module (same graph, no API checks), onnxruntime and the
  ``torch.export`` program (and an AOTInductor build of it with ``aoti=true``). The span is normalization +
  encoders + head sampling + unnormalization; cropping/FPS are outside. Target: exported <= 0.6x eager.
- **loop**: ``mfp sim-arm`` in its own process, the control loop here at ``hz`` for ``duration_s`` with the policy
  (inference in a worker process by default, ``inference=thread`` for a thread; ``realtime_priority=N`` puts the
  control thread at SCHED_FIFO N, the sim arm at N-1 and the inference worker at N-2):
  period jitter p50/p99 (target p99 <= 2 ms), missed ticks, watchdog holds, inference latency.
- **bridge**: ``get_obs`` (a 512-point cloud + state) and ``action`` round trips over loopback ZeroMQ.

Without ``checkpoint=`` the policy is the default config (DP3 point encoder, 1-NFE MeanFlow) on the ``backbone``
named here (``mlp``: the CPU prototype of DESIGN section 9, fast enough for 50 Hz; ``unet``: the compact U-Net of
the CPU training profile), with untrained weights and a normalizer fitted to Meta-World ranges: latency does not
depend on the weights.
Results go to ``out`` (JSON) and a table on stdout.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic_write import write_text
from deploy.protocol import Message
from mfp.cli_args import parse_overrides

REPO = Path(__file__).resolve().parents[2]


@dataclass
class DeployBenchConfig:
    parts: list = field(default_factory=lambda: ["export", "loop", "bridge"], metadata={"help": "which parts to run"})
    checkpoint: str | None = field(default=None, metadata={"help": "policy checkpoint (default: see module doc)"})
    backbone: str = field(default="mlp", metadata={"help": "backbone of the default policy: mlp | unet"})
    calls: int = field(default=300, metadata={"help": "timed calls per backend"})
    warmup: int = field(default=30, metadata={"help": "untimed calls first"})
    aoti: bool = field(default=False, metadata={"help": "also build and time an AOTInductor package (slow build)"})
    hz: float = field(default=50.0, metadata={"help": "control rate of the loop part"})
    inference: str = field(default="process", metadata={"help": "loop part: inference in a process | thread"})
    realtime_priority: int = field(default=0, metadata={"help": "loop part: >0 = SCHED_FIFO control thread"})
    duration_s: float = field(default=60.0, metadata={"help": "loop part duration"})
    task: str = field(default="reach-v3", metadata={"help": "sim-arm task"})
    num_points: int = field(default=512, metadata={"help": "points per cloud"})
    out: str = field(default="benchmarks/deploy.json", metadata={"help": "JSON results"})


def _stats_ms(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1e3
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def _time(fn: Callable[[], object], calls: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _stats_ms(times)


def _default_checkpoint(num_points: int, backbone: str, directory: Path) -> Path:
    from core.spec import ShapeMeta
    from policies.checkpoint import save_policy
    from policies.config import BackboneConfig, PolicyConfig
    from policies.factory import build_policy

    shape_meta = ShapeMeta.from_dict(
        {
            "obs": {
                "point_cloud": {"type": "point_cloud", "shape": [num_points, 3]},
                "agent_pos": {"type": "low_dim", "shape": [4]},
            },
            "action": {"shape": [4]},
        }
    )
    stats = {
        "point_cloud": {"min": np.array([-0.6, 0.2, 0.0]), "max": np.array([0.6, 1.05, 0.7])},
        "agent_pos": {"min": np.array([-0.5, 0.35, -0.15, 0.0]), "max": np.array([0.5, 1.0, 0.5, 1.0])},
        "action": {"min": -np.ones(4), "max": np.ones(4)},
    }
    cfg = PolicyConfig(backbone=BackboneConfig(type=backbone))
    return save_policy(
        build_policy(cfg, shape_meta, stats),
        cfg,
        directory / "policy",
        metadata={"note": "untrained, for latency benchmarks"},
    )


def bench_export(checkpoint: Path, work: Path, calls: int, warmup: int, aoti: bool) -> dict[str, Any]:
    import torch

    from deploy.export import export_policy
    from deploy.exported import ExportedPolicy
    from policies.checkpoint import load_policy

    meta = export_policy(checkpoint, work / "export", n_check=8, formats=("onnx", "pt2"))
    policy = load_policy(checkpoint).eval()
    rng = np.random.default_rng(0)
    obs = {}
    for key, spec in policy.shape_meta.obs.items():
        s = policy.normalizer.stats(key)
        obs[key] = rng.uniform(s["min"].numpy(), s["max"].numpy(), size=(policy.n_obs_steps, *spec.shape)).astype(
            np.float32
        )
    noise = torch.tensor(meta["noise"]["values"])[None]
    names = [i["name"] for i in meta["inputs"]]
    inputs = (*[torch.from_numpy(obs[k])[None] for k in names[:-1]], noise)
    from deploy.export import ExportablePolicy

    module = ExportablePolicy(policy).eval()
    onnx_runner = ExportedPolicy(work / "export", threads=1)
    pt2_program = torch.export.load(str(work / "export" / meta["files"]["pt2"])).module()
    rows: dict[str, Any] = {}
    with torch.no_grad():
        rows["eager predict_action"] = _time(lambda: policy.predict_action(obs, noise=noise), calls, warmup)
        rows["eager export module"] = _time(lambda: module(*inputs), calls, warmup)
        rows["onnxruntime"] = _time(lambda: onnx_runner.predict_action(obs), calls, warmup)
        rows["torch.export program"] = _time(lambda: pt2_program(*inputs), calls, warmup)
        if aoti:
            program = torch.export.export(module, inputs, strict=False)
            t0 = time.time()
            package = torch._inductor.aoti_compile_and_package(program, package_path=str(work / "model_aoti.pt2"))
            build_s = time.time() - t0
            compiled = torch._inductor.aoti_load_package(package)
            err = float((compiled(*inputs) - module(*inputs)).abs().max())
            rows["torch.export AOTInductor"] = {
                **_time(lambda: compiled(*inputs), calls, warmup),
                "build_s": build_s,
                "max_abs_error": err,
            }
    base = rows["eager predict_action"]["p50"]
    for row in rows.values():
        row["ratio_vs_eager_p50"] = row["p50"] / base
    return {
        "rows": rows,
        "parity": meta["parity"],
        "n_params": sum(p.numel() for p in policy.parameters()),
        "span": "normalization + encoders + head sampling + unnormalization, batch 1, 1 thread",
        "num_inference_steps": meta["num_inference_steps"],
        "shape_meta": meta["shape_meta"],
    }


def _start_sim_arm(
    task: str, hz: float, num_points: int, realtime_priority: int
) -> tuple[subprocess.Popen, str, list[str]]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mfp.cli",
            "sim-arm",
            "port=0",
            f"task={task}",
            f"hz={hz}",
            f"num_points={num_points}",
            "max_episode_steps=500",
            f"realtime_priority={realtime_priority}",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    out = proc.stdout
    assert out is not None  # stdout=PIPE
    for line in out:
        lines.append(line)
        if "sim-arm: serving" in line:
            threading.Thread(target=lambda: lines.extend(out), daemon=True).start()
            return proc, line.split(" on ")[1].split(" at ")[0], lines
    raise RuntimeError("sim-arm did not start:\n" + "".join(lines))


def bench_loop(
    checkpoint: Path, task: str, hz: float, duration_s: float, num_points: int, inference: str, realtime_priority: int
) -> dict[str, Any]:
    from deploy.inference import InferenceProcess
    from deploy.loop import ControlLoop
    from deploy.robot import BridgeRobot
    from deploy.safety import SafetyLayer, SafetyLimits, resolve_limits
    from policies.checkpoint import load_policy

    policy = load_policy(checkpoint).eval()
    # With real-time priority: control thread > sim-arm (the "robot") > inference worker.
    rt = realtime_priority
    agent = InferenceProcess(checkpoint, realtime_priority=max(0, rt - 2)) if inference == "process" else policy
    proc, address, lines = _start_sim_arm(task, hz, num_points, max(0, rt - 1))
    try:
        robot = BridgeRobot(address, timeout_s=1.0)
        safety = SafetyLayer(SafetyLimits.from_yaml(resolve_limits("sim_sawyer")), 1.0 / hz)
        loop = ControlLoop(
            robot, agent, safety, hz, obs_keys=list(policy.shape_meta.obs), realtime_priority=realtime_priority
        )
        stats = loop.run(duration_s)
        robot.close()
    finally:
        if isinstance(agent, InferenceProcess):
            agent.stop()
        proc.terminate()
        proc.wait(30)
    summary = stats.summary()
    summary["inference_mode"] = inference
    summary["realtime_priority"] = realtime_priority
    summary["sim_arm"] = next((line.strip() for line in lines if line.startswith("sim-arm: ") and "steps" in line), "")
    return summary


def bench_bridge(calls: int, warmup: int, num_points: int) -> dict[str, Any]:
    from deploy.bridge import BridgeClient, BridgeServer

    obs = {
        "point_cloud": np.random.default_rng(0).random((num_points, 3), dtype=np.float32),
        "agent_pos": np.zeros(4, np.float32),
    }

    def handler(msg: Message) -> tuple[str, dict[str, Any]]:
        if msg.type == "get_obs":
            return "obs", {"timestamp": time.monotonic(), "now": time.monotonic(), "obs": obs, "info": {}}
        return "ack", {"now": time.monotonic()}

    server = BridgeServer(handler, "tcp://127.0.0.1:0")
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop, 0.01), daemon=True)
    thread.start()
    client = BridgeClient(server.address, timeout_s=2.0)
    action = np.zeros(4)
    try:
        rows = {
            f"get_obs ({num_points} points + state)": _time(lambda: client.request("get_obs"), calls * 3, warmup),
            "action": _time(lambda: client.request("action", timestamp=0.0, action=action), calls * 3, warmup),
        }
    finally:
        stop.set()
        thread.join(2)
        client.close()
        server.close()
    return {"rows": rows, "transport": "ZeroMQ REQ/REP tcp://127.0.0.1, msgpack, server in a thread"}


def _print(results: dict[str, Any]) -> None:
    if "export" in results:
        e = results["export"]
        print(f"\nexport latency ({e['span']}; {e['n_params'] / 1e6:.2f} M params, NFE {e['num_inference_steps']})")
        print(f"  {'backend':<28}{'p50 ms':>9}{'p99 ms':>9}{'x eager':>9}")
        for name, r in e["rows"].items():
            print(f"  {name:<28}{r['p50']:>9.3f}{r['p99']:>9.3f}{r['ratio_vs_eager_p50']:>9.2f}")
        print(f"  parity max abs error: {e['parity']['max_abs_error']}")
    if "loop" in results:
        s = results["loop"]
        print(
            f"\nloop at {s['hz']:g} Hz vs sim-arm (inference in a {s['inference_mode']}, realtime priority "
            f"{s['realtime_priority']}): {s['ticks']} ticks, {s['missed_ticks']} missed; "
            f"period p50 {s['period_ms']['p50']:.3f} ms; jitter p50/p99/max {s['jitter_ms']['p50']:.3f}/"
            f"{s['jitter_ms']['p99']:.3f}/{s['jitter_ms']['max']:.3f} ms; inference p50/p99 "
            f"{s['inference_ms']['p50']:.2f}/{s['inference_ms']['p99']:.2f} ms; watchdog holds {s['watchdog_holds']}; "
            f"holds {s['holds']}; dropped {s['dropped_actions']}; {s['sim_arm']}"
        )
    if "bridge" in results:
        print(f"\nbridge round trips ({results['bridge']['transport']})")
        for name, r in results["bridge"]["rows"].items():
            print(f"  {name:<36} p50 {r['p50'] * 1e3:8.1f} us  p99 {r['p99'] * 1e3:8.1f} us")


def main(argv: list[str]) -> int:
    cfg = parse_overrides(DeployBenchConfig, argv, "mfp bench deploy")
    unknown = [p for p in cfg.parts if p not in ("export", "loop", "bridge")]
    if unknown:
        print(f"mfp bench deploy: unknown part(s) {unknown}; known: export, loop, bridge", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "config": vars(cfg),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else _default_checkpoint(cfg.num_points, cfg.backbone, work)
        if "export" in cfg.parts:
            results["export"] = bench_export(checkpoint, work, cfg.calls, cfg.warmup, cfg.aoti)
        if "bridge" in cfg.parts:
            results["bridge"] = bench_bridge(cfg.calls, cfg.warmup, cfg.num_points)
        if "loop" in cfg.parts:
            results["loop"] = bench_loop(
                checkpoint, cfg.task, cfg.hz, cfg.duration_s, cfg.num_points, cfg.inference, cfg.realtime_priority
            )
    _print(results)
    out = Path(cfg.out)
    write_text(out, json.dumps(results, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0
