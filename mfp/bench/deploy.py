"""`mfp bench deploy`: export latency, the control loop against the simulated arm (idle and beside a training
process), and bridge round trips. Self-contained: it builds its policy, starts its own arm and its own load.

Parts (``parts=export,loop,bridge``):

- **export**: ``mfp export`` of the policy (``formats``: ONNX is what ``mfp export`` writes by default; pt2 and aoti
  are opt-in), then one policy call at batch 1, one thread, methods interleaved call by call (so load hits all
  alike), p50/p99 over ``calls`` calls after ``warmup``: eager ``Policy.predict_action`` and each format's robot-side
  runtime (noise drawn per call included). The span is normalization + encoders + head sampling +
  unnormalization; cropping/FPS are outside. Target: every default format <= 0.6x eager p50, parity <= 1e-4.
- **loop**: ``mfp sim-arm`` in its own process, the control loop here at ``hz`` for ``duration_s`` with the export
  (inference in a worker process by default), once per entry of ``loads``: ``none``, or ``train``: a training
  process started here in its own session (as if from another terminal), MeanFlow training steps on
  ``load_threads`` threads for the whole run. Reported: period jitter p50/p99 (target p99 <= 2 ms unprivileged),
  missed ticks, inference deadline misses, dropped actions, watchdog holds, the spin's CPU share, and what else ran
  (``uptime``, the busiest processes). ``realtime_priority=N`` puts the control thread at SCHED_FIFO N, the sim arm
  at N-1 and the inference worker at N-2 (needs CAP_SYS_NICE); the JSON records the capabilities it ran with. For
  an unprivileged run as root: ``setpriv --bounding-set=-all --inh-caps=-all python -m mfp bench deploy ...``.
- **bridge**: ``get_obs`` (a point cloud + state) and ``action`` round trips over loopback ZeroMQ.

Without ``checkpoint=`` the policy is the default config (DP3 point encoder, 1-NFE MeanFlow) on the ``backbone``
named here (``mlp``: the CPU prototype of DESIGN section 9, fast enough for 50 Hz; ``unet``: the compact U-Net of
the CPU training profile), with untrained weights and a normalizer fitted to Meta-World ranges (latency does not
depend on the weights; its parity check uses ``data=synthetic``).
Results go to ``out`` (JSON) and a table on stdout. The committed run: ``docs/results/deploy-bench/``.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic_write import check_output, write_text
from core.errors import ConfigError, check_choice, check_int, check_number
from deploy.export_format import DEFAULT_FORMATS, FORMATS
from deploy.loop import DEFAULT_SPIN_S
from deploy.protocol import Message
from mfp.bench.timing import interleaved, percentile
from mfp.cli_args import parse_overrides

REPO = Path(__file__).resolve().parents[2]
PARTS = ("export", "loop", "bridge")
LOADS = ("none", "train")
BENCH_KIND = "mfp bench deploy"


@dataclass
class DeployBenchConfig:
    """Arguments of `mfp bench deploy` (``key=value``; unknown keys fail)."""

    parts: list = field(default_factory=lambda: list(PARTS), metadata={"help": "which parts to run"})
    checkpoint: str | None = field(default=None, metadata={"help": "policy checkpoint (default: see module doc)"})
    backbone: str = field(default="mlp", metadata={"help": "backbone of the default policy: mlp | unet"})
    calls: int = field(default=300, metadata={"help": "timed calls per backend"})
    warmup: int = field(default=30, metadata={"help": "untimed calls first"})
    formats: list = field(
        default_factory=lambda: list(FORMATS), metadata={"help": "export part: formats to export and time"}
    )
    hz: float = field(default=50.0, metadata={"help": "control rate of the loop part"})
    inference: str = field(default="process", metadata={"help": "loop part: inference in a process | thread"})
    realtime_priority: int = field(default=0, metadata={"help": "loop part: >0 = SCHED_FIFO control thread"})
    loads: list = field(default_factory=lambda: list(LOADS), metadata={"help": "loop part: none and/or train"})
    load_threads: int = field(default=2, metadata={"help": "threads of the training load"})
    spin_s: float = field(default=DEFAULT_SPIN_S, metadata={"help": "loop part: spin before each tick"})
    duration_s: float = field(default=60.0, metadata={"help": "loop part duration (per load)"})
    task: str = field(default="reach-v3", metadata={"help": "sim-arm task"})
    num_points: int = field(default=512, metadata={"help": "points per cloud"})
    out: str = field(default="benchmarks/deploy.json", metadata={"help": "JSON results"})
    overwrite: bool = field(default=False, metadata={"help": "replace an out file this benchmark did not write"})

    def __post_init__(self) -> None:
        for part in self.parts:
            check_choice("part", part, PARTS)
        for load in self.loads:
            check_choice("load", load, LOADS)
        for fmt in self.formats:
            check_choice("format", fmt, FORMATS)
        check_choice("backbone", self.backbone, ("mlp", "unet"))
        check_choice("inference", self.inference, ("process", "thread"))
        check_int("calls", self.calls, 1)
        check_int("warmup", self.warmup, 0)
        check_number("hz", self.hz, 0.0, 1000.0, low_open=True)
        check_int("realtime_priority", self.realtime_priority, 0, 99)
        if 0 < self.realtime_priority < 3:
            raise ConfigError("realtime_priority must be 0 or >= 3 (the sim arm and the worker run below it)")
        check_int("load_threads", self.load_threads, 1, 64)
        check_number("spin_s", self.spin_s, 0.0, 1.0 / self.hz, high_open=True)
        check_number("duration_s", self.duration_s, 0.0, low_open=True)
        check_int("num_points", self.num_points, 1)


def _stats_ms(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1e3
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


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


def _policy_obs(policy: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One observation window ``{key: (To, ...)}`` inside the normalizer's ranges."""
    obs = {}
    for key, spec in policy.shape_meta.obs.items():
        st = policy.normalizer.stats(key)
        lo, hi = st["min"].numpy(), st["max"].numpy()
        obs[key] = rng.uniform(lo, hi, size=(policy.n_obs_steps, *spec.shape)).astype(np.float32)
    return obs


def bench_export(
    checkpoint: Path, export_dir: Path, formats: list[str], calls: int, warmup: int, synthetic: bool
) -> dict[str, Any]:
    """Export with ``mfp export``'s function, then time eager and each format's runtime, interleaved."""
    import torch

    from deploy.export import export_policy
    from deploy.exported import ExportedPolicy
    from deploy.exported_pt2 import AOTIProgram, ExportedProgram
    from policies.checkpoint import load_policy

    t0 = time.monotonic()
    meta = export_policy(
        checkpoint, export_dir, data="synthetic" if synthetic else None, n_check=8, formats=tuple(formats)
    )
    export_s = time.monotonic() - t0
    policy = load_policy(checkpoint).eval()
    obs = _policy_obs(policy, np.random.default_rng(0))
    runtimes = {"onnx": ExportedPolicy, "pt2": ExportedProgram, "aoti": AOTIProgram}
    fns: dict[str, Any] = {}
    policy.reset(seed=0)
    fns["eager predict_action"] = lambda: policy.predict_action(obs)
    for fmt in formats:
        runner = runtimes[fmt](export_dir, threads=1, noise="sampled", seed=0)
        fns[f"{fmt} runtime"] = lambda runner=runner: runner.predict_action(obs)
    with torch.no_grad():
        times = interleaved(fns, calls, warmup)
    rows: dict[str, Any] = {}
    for name, t in times.items():
        ms = np.asarray(t) * 1e3
        rows[name] = {"p50": percentile(list(ms), 50), "p99": percentile(list(ms), 99), "mean": float(ms.mean())}
    base = rows["eager predict_action"]["p50"]
    for name, row in rows.items():
        row["ratio_vs_eager_p50"] = row["p50"] / base
        fmt = name.split()[0]
        row["default_format"] = fmt in DEFAULT_FORMATS
    return {
        "rows": rows,
        "parity": meta["parity"],
        "export_s": export_s,
        "formats": formats,
        "default_formats": list(DEFAULT_FORMATS),
        "n_params": sum(p.numel() for p in policy.parameters()),
        "span": "normalization + encoders + head sampling + unnormalization, batch 1, 1 thread, noise drawn per call",
        "num_inference_steps": meta["num_inference_steps"],
        "shape_meta": meta["shape_meta"],
    }


def _start(cmd: list[str], env: dict[str, str], ready: str | None, what: str) -> tuple[subprocess.Popen, list[str]]:
    """Start ``cmd`` in its own session (as if from another terminal); wait for a line containing ``ready``."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    out = proc.stdout
    assert out is not None  # stdout=PIPE
    if ready is None:
        threading.Thread(target=lambda: lines.extend(out), daemon=True).start()
        return proc, lines
    for line in out:
        lines.append(line)
        if ready in line:
            threading.Thread(target=lambda: lines.extend(out), daemon=True).start()
            return proc, lines
    raise RuntimeError(f"{what} did not start:\n" + "".join(lines[-30:]))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def _env(threads: int) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=str(REPO) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"),
    )


def train_forever(threads: int, num_points: int, backbone: str) -> None:
    """The load: MeanFlow training steps of the default policy (batch 64) on ``threads`` threads until killed;
    prints its step rate every 5 s."""
    import torch

    from policies.checkpoint import load_policy

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        policy = load_policy(_default_checkpoint(num_points, backbone, Path(tmp))).train()
    rng = np.random.default_rng(0)
    H, Da = policy.horizon, policy.shape_meta.action_dim
    obs = [_policy_obs(policy, rng) for _ in range(64)]
    batch = {
        "obs": {k: torch.from_numpy(np.stack([o[k] for o in obs])) for k in policy.shape_meta.obs},
        "action": torch.from_numpy(rng.uniform(-1, 1, (64, H, Da)).astype(np.float32)),
    }
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    print("load: training", flush=True)
    steps, t_last = 0, time.monotonic()
    while True:
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if time.monotonic() - t_last >= 5.0:
            print(f"load: {steps / (time.monotonic() - t_last):.2f} steps/s", flush=True)
            steps, t_last = 0, time.monotonic()


def _snapshot() -> dict[str, Any]:
    """What else runs: load averages and the busiest processes (for the record)."""
    top = subprocess.run(
        ["ps", "-eo", "pid,pcpu,pri,ni,cls,comm,args", "--sort=-pcpu"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(),
        "top_processes": [line[:160] for line in top[:9]],
    }


def _capabilities() -> dict[str, Any]:
    """Whether this process may use real-time scheduling (CAP_SYS_NICE), read from /proc, and its effective caps."""
    status = Path("/proc/self/status")
    cap_eff = None
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                cap_eff = line.split()[1]
    cap_sys_nice = 23
    return {"cap_eff": cap_eff, "cap_sys_nice": bool(cap_eff is not None and int(cap_eff, 16) >> cap_sys_nice & 1)}


def bench_loop(cfg: DeployBenchConfig, checkpoint: Path, export_dir: Path, load: str) -> dict[str, Any]:
    """The control loop with the export against ``mfp sim-arm``, beside ``load`` (none or a training process)."""
    from deploy.agents import load_deploy_agent
    from deploy.inference import InferenceProcess
    from deploy.loop import ControlLoop
    from deploy.robot import BridgeRobot
    from deploy.safety import SafetyLayer, SafetyLimits, resolve_limits

    rt = cfg.realtime_priority
    load_proc: subprocess.Popen | None = None
    load_lines: list[str] = []
    if load == "train":
        code = (  # imported through mfp.cli, as `mfp train` is: OMP_WAIT_POLICY=PASSIVE and glibc malloc tuning
            "import mfp.cli; from mfp.bench.deploy import train_forever; "
            f"train_forever({cfg.load_threads}, {cfg.num_points}, {cfg.backbone!r})"
        )
        load_proc, load_lines = _start(
            [sys.executable, "-c", code], _env(cfg.load_threads), "load: training", "the training load"
        )
        time.sleep(3.0)  # let it reach its steady state
    agent: Any = (
        InferenceProcess(export_dir, realtime_priority=max(0, rt - 2))
        if cfg.inference == "process"
        else load_deploy_agent(str(export_dir))
    )
    sim_cmd = [
        sys.executable, "-m", "mfp.cli", "sim-arm", "port=0", f"task={cfg.task}", f"hz={cfg.hz}",
        f"num_points={cfg.num_points}", "max_episode_steps=500", f"realtime_priority={max(0, rt - 1)}",
    ]  # fmt: skip
    arm, arm_lines = _start(sim_cmd, _env(1), "sim-arm: serving", "sim-arm")
    address = next(line for line in arm_lines if "sim-arm: serving" in line).split(" on ")[1].split(" at ")[0]
    snapshot: dict[str, Any] = {}
    try:
        robot = BridgeRobot(address, timeout_s=1.0)
        safety = SafetyLayer(SafetyLimits.from_yaml(resolve_limits("sim_sawyer")), 1.0 / cfg.hz)
        loop = ControlLoop(
            robot,
            agent,
            safety,
            cfg.hz,
            obs_keys=list(agent.shape_meta.obs) if hasattr(agent, "shape_meta") else ["point_cloud", "agent_pos"],
            realtime_priority=rt,
            spin_s=cfg.spin_s,
        )
        timer = threading.Timer(cfg.duration_s / 2, lambda: snapshot.update(_snapshot()))
        timer.start()
        stats = loop.run(cfg.duration_s)
        timer.cancel()
        robot.close()
    finally:
        if isinstance(agent, InferenceProcess):
            agent.stop()
        _stop(arm)
        if load_proc is not None:
            _stop(load_proc)
    summary = stats.summary()
    summary.update(
        load=load,
        load_threads=cfg.load_threads if load == "train" else 0,
        load_rate=[line.strip() for line in load_lines if "steps/s" in line][-3:],
        inference_mode=cfg.inference,
        realtime_priority=rt,
        spin_s=cfg.spin_s,
        sim_arm=next((line.strip() for line in arm_lines if line.startswith("sim-arm: ") and "steps" in line), ""),
        machine_during_run=snapshot,
    )
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
        times = interleaved(
            {
                f"get_obs ({num_points} points + state)": lambda: client.request("get_obs"),
                "action": lambda: client.request("action", timestamp=0.0, action=action),
            },
            calls * 3,
            warmup,
        )
        rows = {name: _stats_ms(t) for name, t in times.items()}
    finally:
        stop.set()
        thread.join(2)
        client.close()
        server.close()
    return {"rows": rows, "transport": "ZeroMQ REQ -> ROUTER tcp://127.0.0.1, msgpack, server in a thread"}


def _print(results: dict[str, Any]) -> None:
    if "export" in results:
        e = results["export"]
        print(
            f"\nexport latency ({e['span']}; {e['n_params'] / 1e6:.2f} M params, NFE {e['num_inference_steps']}; "
            f"default formats {e['default_formats']})"
        )
        print(f"  {'backend':<24}{'p50 ms':>9}{'p99 ms':>9}{'x eager':>9}")
        for name, r in e["rows"].items():
            print(f"  {name:<24}{r['p50']:>9.3f}{r['p99']:>9.3f}{r['ratio_vs_eager_p50']:>9.2f}")
        print(f"  parity max abs error: {e['parity']['max_abs_error']}")
    for s in results.get("loop", []):
        print(
            f"\nloop at {s['hz']:g} Hz vs sim-arm, load {s['load']} (inference in a {s['inference_mode']}, "
            f"realtime priority {s['realtime_priority']}, spin {s['spin_s'] * 1e3:.1f} ms): {s['ticks']} ticks, "
            f"{s['missed_ticks']} missed; jitter p50/p99/max {s['jitter_ms']['p50']:.3f}/{s['jitter_ms']['p99']:.3f}/"
            f"{s['jitter_ms']['max']:.3f} ms; inference p50/p99 {s['inference_ms']['p50']:.2f}/"
            f"{s['inference_ms']['p99']:.2f} ms; deadline misses {s['inference_deadline_misses']}; dropped "
            f"{s['dropped_actions']}; watchdog holds {s['watchdog_holds']}; holds {s['holds']}; spin CPU "
            f"{100 * s['spin_cpu_fraction']:.1f} % of a core (control thread {100 * s['control_cpu_fraction']:.1f} %); "
            f"{s['sim_arm']}; {' '.join(s['load_rate'][-1:])}"
        )
    if "bridge" in results:
        print(f"\nbridge round trips ({results['bridge']['transport']})")
        for name, r in results["bridge"]["rows"].items():
            print(f"  {name:<36} p50 {r['p50'] * 1e3:8.1f} us  p99 {r['p99'] * 1e3:8.1f} us")


def is_bench_file(path: Path) -> bool:
    """True when ``path`` is a JSON file this benchmark wrote."""
    try:
        return path.is_file() and json.loads(path.read_text()).get("kind") == BENCH_KIND
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str]) -> int:
    cfg = parse_overrides(DeployBenchConfig, argv, "mfp bench deploy")
    out = Path(cfg.out)
    check_output(out, [cfg.checkpoint] if cfg.checkpoint else [], cfg.overwrite, ours=is_bench_file)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "kind": BENCH_KIND,
        "command": "mfp bench deploy " + " ".join(argv),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            **_capabilities(),
            "at_start": _snapshot(),
        },
        "config": asdict(cfg),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else _default_checkpoint(cfg.num_points, cfg.backbone, work)
        export_dir = work / "export"
        formats = cfg.formats if "export" in cfg.parts else list(DEFAULT_FORMATS)
        if "export" in cfg.parts:
            results["export"] = bench_export(
                checkpoint, export_dir, formats, cfg.calls, cfg.warmup, synthetic=cfg.checkpoint is None
            )
        elif "loop" in cfg.parts:
            from deploy.export import export_policy

            export_policy(checkpoint, export_dir, data="synthetic" if cfg.checkpoint is None else None, n_check=4)
        if "bridge" in cfg.parts:
            results["bridge"] = bench_bridge(cfg.calls, cfg.warmup, cfg.num_points)
        if "loop" in cfg.parts:
            results["loop"] = [bench_loop(cfg, checkpoint, export_dir, load) for load in cfg.loads]
    _print(results)
    write_text(out, json.dumps(results, indent=2, default=str))
    print(f"\nwrote {out}")
    return 0
