"""`mfp deploy`: run a trained policy on an arm behind the robot bridge, at a fixed control rate.

Example (against the simulated arm, started first with ``mfp sim-arm task=reach-v3 port=5555``)::

    mfp deploy checkpoint=runs/reach/export robot=tcp://127.0.0.1:5555 hz=50 duration_s=30 \\
        limits=sim_sawyer record=runs/reach/deploy.zarr stats=runs/reach/deploy_stats.json

``checkpoint`` is an ``mfp export`` directory (ONNX, run without torch) or a policy checkpoint (eager torch). The
starting noise is drawn per chunk from a stream seeded with ``seed``, exactly as ``mfp eval`` draws it for an episode
with that seed (``noise=held``: one draw per run, as ``mfp eval hold_noise=true``; ``noise=fixed``: the draw stored in
the export). Before moving anything it checks that the robot's observation keys and shapes, action size and the
limits file agree with the policy, and that ``stats``/``chunks`` would not overwrite a file it did not write; it
refuses to start otherwise. Whatever stops the loop, the arm is left holding, the robot gets a ``bye`` and the cause
is printed on one line. Exit codes: 0 done, 2 bad arguments or mismatch, 3 robot connection lost, 4 inference,
robot or loop error.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic_write import check_output, write_text
from core.errors import check_choice, check_int, check_number
from deploy.agents import BACKENDS, load_deploy_agent
from deploy.bridge import check_address
from deploy.export_format import NOISE_MODES
from deploy.inference import InferenceProcess
from deploy.loop import BLENDS, DEFAULT_SPIN_S, ControlLoop
from deploy.recorder import ChunkLog, EpisodeRecorder, is_chunk_log
from deploy.robot import BridgeRobot, RobotConnectionError, check_compatible
from deploy.safety import SafetyLayer, SafetyLimits, resolve_limits
from mfp.cli_args import parse_overrides

EXIT_OK, EXIT_USAGE, EXIT_CONNECTION, EXIT_FAILURE = 0, 2, 3, 4
STATS_KIND = "mfp deploy stats"


@dataclass
class DeployConfig:
    """Arguments of `mfp deploy` (``key=value``; unknown keys fail)."""

    checkpoint: str = field(default="???", metadata={"help": "`mfp export` directory or policy checkpoint (required)"})
    backend: str = field(default="auto", metadata={"help": "auto | eager | onnx | pt2 | aoti (export directories)"})
    robot: str = field(default="tcp://127.0.0.1:5555", metadata={"help": "robot bridge address"})
    limits: str = field(default="sim_sawyer", metadata={"help": "configs/robot/<name>.yaml or a path to one"})
    hz: float = field(default=50.0, metadata={"help": "control rate"})
    duration_s: float = field(default=10.0, metadata={"help": "run time in seconds"})
    blend: str = field(default="latest", metadata={"help": "chunk hand-over: latest | ensemble"})
    ensemble_decay: float = field(default=0.01, metadata={"help": "temporal ensembling weight exp(-decay * i)"})
    latency_offset_s: float = field(
        default=0.0, metadata={"help": "extra delay of every action (robot actuation latency), >= 0"}
    )
    deadline_s: float = field(default=0.2, metadata={"help": "watchdog: max age of the observation behind an action"})
    timeout_s: float = field(default=0.5, metadata={"help": "bridge reply timeout (no reply = connection lost)"})
    num_inference_steps: int | None = field(default=None, metadata={"help": "override the head's NFE (checkpoints)"})
    threads: int = field(default=1, metadata={"help": "torch / onnxruntime threads for inference"})
    inference: str = field(default="process", metadata={"help": "process (own interpreter) | thread"})
    noise: str = field(default="sampled", metadata={"help": "sampled (per chunk, as mfp eval) | held | fixed"})
    seed: int = field(default=0, metadata={"help": "noise stream seed (an mfp eval episode seed gives its noise)"})
    spin_s: float = field(default=DEFAULT_SPIN_S, metadata={"help": "spin this long before each tick (0: sleep only)"})
    realtime_priority: int = field(
        default=0,
        metadata={"help": ">0: SCHED_FIFO control thread at this priority, inference worker one below (CAP_SYS_NICE)"},
    )
    device: str = field(default="cpu", metadata={"help": "inference device (checkpoints, inference=thread)"})
    allow_remote: bool = field(default=False, metadata={"help": "allow a non-loopback robot address"})
    record: str | None = field(default=None, metadata={"help": "append the run as an episode to this zarr"})
    stats: str | None = field(default=None, metadata={"help": "write timing statistics JSON here"})
    chunks: str | None = field(
        default=None, metadata={"help": "write every inference call (observation window, chunk) to this .npz"}
    )
    overwrite: bool = field(default=False, metadata={"help": "let stats/chunks replace files deploy did not write"})

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, BACKENDS)
        check_address(self.robot, self.allow_remote)
        check_number("hz", self.hz, 0.0, 1000.0, low_open=True)
        check_number("duration_s", self.duration_s, 0.0, low_open=True)
        check_choice("blend", self.blend, BLENDS)
        check_number("ensemble_decay", self.ensemble_decay, 0.0)
        check_number("latency_offset_s", self.latency_offset_s, 0.0, 10.0)
        check_number("deadline_s", self.deadline_s, 0.0, 60.0, low_open=True)
        check_number("timeout_s", self.timeout_s, 0.0, 600.0, low_open=True)
        if self.num_inference_steps is not None:
            check_int("num_inference_steps", self.num_inference_steps, 1, 1000)
        check_int("threads", self.threads, 1, 256)
        check_choice("inference", self.inference, ("process", "thread"))
        check_choice("noise", self.noise, NOISE_MODES)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_number("spin_s", self.spin_s, 0.0, 1.0 / self.hz, high_open=True)
        check_int("realtime_priority", self.realtime_priority, 0, 99)
        if self.inference == "process" and self.device != "cpu":
            check_choice("device (inference=process runs on the CPU; use inference=thread)", self.device, ["cpu"])


def is_stats_file(path: Path) -> bool:
    """True when ``path`` is a statistics file an earlier `mfp deploy` wrote."""
    try:
        return path.is_file() and json.loads(path.read_text()).get("kind") == STATS_KIND
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str]) -> int:
    cfg = parse_overrides(DeployConfig, argv, "mfp deploy")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    inputs = [cfg.checkpoint]
    if cfg.stats:
        check_output(cfg.stats, inputs, cfg.overwrite, what="stats", ours=is_stats_file)
    if cfg.chunks:
        check_output(cfg.chunks, inputs, cfg.overwrite, what="chunks", ours=is_chunk_log)
    if cfg.record:
        check_output(cfg.record, inputs, True, what="record")  # appends to a dataset; never into the checkpoint
    limits = SafetyLimits.from_yaml(resolve_limits(cfg.limits))
    safety = SafetyLayer(limits, 1.0 / cfg.hz)
    policy = load_deploy_agent(
        cfg.checkpoint, cfg.backend, cfg.threads, cfg.num_inference_steps, cfg.device, cfg.noise, cfg.seed
    )
    agent: Any = policy
    if cfg.inference == "process":
        agent = InferenceProcess(
            cfg.checkpoint,
            cfg.backend,
            cfg.threads,
            cfg.num_inference_steps,
            realtime_priority=max(0, cfg.realtime_priority - 1),
            noise=cfg.noise,
            seed=cfg.seed,
        )
    try:
        return _run(cfg, policy, agent, safety)
    finally:
        if agent is not policy:
            agent.stop()


def _run(cfg: DeployConfig, policy: Any, agent: Any, safety: SafetyLayer) -> int:
    """Connect, check, drive; the robot always gets a ``bye``."""
    try:
        robot = BridgeRobot(cfg.robot, timeout_s=cfg.timeout_s, allow_remote=cfg.allow_remote)
    except RobotConnectionError as e:
        print(f"mfp deploy: cannot reach the robot at {cfg.robot}: {e}", file=sys.stderr)
        return EXIT_CONNECTION
    try:
        check_compatible(policy, robot.info, safety.limits)
        if abs(robot.info.control_hz - cfg.hz) > 1e-6:
            logging.warning("the robot runs at %g Hz, the loop at %g Hz", robot.info.control_hz, cfg.hz)
        recorder = None
        if cfg.record:
            recorder = EpisodeRecorder(
                cfg.record,
                {k: s.type for k, s in policy.shape_meta.obs.items()},
                attrs={"robot": robot.info.name, "hz": cfg.hz, "checkpoint": str(cfg.checkpoint), "limits": cfg.limits},
            )
        chunk_log = ChunkLog(cfg.chunks, seed=cfg.seed, noise=cfg.noise) if cfg.chunks else None
        loop = ControlLoop(
            robot,
            agent,
            safety,
            cfg.hz,
            obs_keys=list(policy.shape_meta.obs),
            blend=cfg.blend,
            ensemble_decay=cfg.ensemble_decay,
            latency_offset_s=cfg.latency_offset_s,
            deadline_s=cfg.deadline_s,
            recorder=recorder,
            realtime_priority=cfg.realtime_priority,
            spin_s=cfg.spin_s,
            chunk_log=chunk_log,
        )
        stats = loop.run(cfg.duration_s)
    finally:
        robot.close()  # the bye, on every path (the loop has already held the arm)
    summary = {"kind": STATS_KIND, **stats.summary()}
    summary["robot"] = {"name": robot.info.name, "address": cfg.robot, "last_info": robot.last_info}
    summary["policy"] = {"path": str(cfg.checkpoint), "noise": cfg.noise, "seed": cfg.seed}
    if recorder is not None:
        buffer = recorder.save(seed=int(summary["robot"]["last_info"].get("seed", -1)))
        if buffer is not None:
            steps, episode = buffer.episode_lengths[-1], buffer.n_episodes - 1
            print(f"[deploy] recorded {steps} steps as episode {episode} of {cfg.record}")
    if chunk_log is not None:
        chunk_log.save()
    print(f"[deploy] {stats.format()}", flush=True)
    if cfg.stats:
        write_text(cfg.stats, json.dumps(summary, indent=2, default=str))
    reason = stats.stop_reason
    if reason.startswith("robot connection lost"):
        print(f"mfp deploy: stopped: {reason}", file=sys.stderr)
        return EXIT_CONNECTION
    if reason.startswith(("inference failed", "robot error", "loop error")):
        print(f"mfp deploy: stopped, arm held: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
