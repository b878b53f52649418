"""`mfp deploy`: run a trained policy on an arm behind the robot bridge, at a fixed control rate.

Example (against the simulated arm, started first with ``mfp sim-arm task=reach-v3 port=5555``)::

    mfp deploy checkpoint=runs/reach/policy robot=tcp://127.0.0.1:5555 hz=50 duration_s=30 \\
        limits=sim_sawyer record=runs/reach/deploy.zarr stats=runs/reach/deploy_stats.json

Before moving anything it checks that the robot's observation keys and shapes, action size and the limits file
agree with the policy, and refuses to start otherwise. Exit codes: 0 done, 2 bad arguments or mismatch,
3 robot connection lost, 4 inference or robot error.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field

from core.atomic_write import write_text
from deploy.agents import load_deploy_agent
from deploy.export_format import ExportError
from deploy.inference import InferenceError, InferenceProcess
from deploy.loop import ControlLoop
from deploy.recorder import EpisodeRecorder
from deploy.robot import BridgeRobot, RobotError, check_compatible
from deploy.safety import SafetyError, SafetyLayer, SafetyLimits, resolve_limits
from mfp.cli_args import parse_overrides
from policies.checkpoint import CheckpointError

EXIT_OK, EXIT_USAGE, EXIT_CONNECTION, EXIT_FAILURE = 0, 2, 3, 4


@dataclass
class DeployConfig:
    checkpoint: str = field(default="???", metadata={"help": "policy checkpoint or `mfp export` directory (required)"})
    backend: str = field(default="auto", metadata={"help": "auto | eager | onnx | pt2 (export directories)"})
    robot: str = field(default="tcp://127.0.0.1:5555", metadata={"help": "robot bridge address"})
    limits: str = field(default="sim_sawyer", metadata={"help": "configs/robot/<name>.yaml or a path to one"})
    hz: float = field(default=50.0, metadata={"help": "control rate"})
    duration_s: float = field(default=10.0, metadata={"help": "run time in seconds"})
    blend: str = field(default="latest", metadata={"help": "chunk hand-over: latest | ensemble"})
    ensemble_decay: float = field(default=0.01, metadata={"help": "temporal ensembling weight exp(-decay * i)"})
    latency_offset_s: float = field(default=0.0, metadata={"help": "added to every action timestamp"})
    deadline_s: float = field(default=0.2, metadata={"help": "watchdog: max age of the observation behind an action"})
    timeout_s: float = field(default=0.5, metadata={"help": "bridge reply timeout (no reply = connection lost)"})
    num_inference_steps: int | None = field(default=None, metadata={"help": "override the head's NFE"})
    threads: int = field(default=1, metadata={"help": "torch threads for inference"})
    inference: str = field(default="process", metadata={"help": "process (own interpreter) | thread"})
    realtime_priority: int = field(
        default=0,
        metadata={"help": ">0: SCHED_FIFO control thread at this priority, inference worker one below (CAP_SYS_NICE)"},
    )
    device: str = field(default="cpu", metadata={"help": "inference device"})
    allow_remote: bool = field(default=False, metadata={"help": "allow a non-loopback robot address"})
    record: str | None = field(default=None, metadata={"help": "append the run as an episode to this zarr"})
    stats: str | None = field(default=None, metadata={"help": "write timing statistics JSON here"})


def main(argv: list[str]) -> int:
    cfg = parse_overrides(DeployConfig, argv, "mfp deploy")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.backend not in ("auto", "eager", "onnx", "pt2"):
        print(f"mfp deploy: backend must be auto, eager, onnx or pt2, got '{cfg.backend}'", file=sys.stderr)
        return EXIT_USAGE
    if cfg.inference not in ("process", "thread"):
        print(f"mfp deploy: inference must be process or thread, got '{cfg.inference}'", file=sys.stderr)
        return EXIT_USAGE
    if cfg.blend not in ("latest", "ensemble"):
        print(f"mfp deploy: blend must be latest or ensemble, got '{cfg.blend}'", file=sys.stderr)
        return EXIT_USAGE

    try:
        limits = SafetyLimits.from_yaml(resolve_limits(cfg.limits))
        policy = load_deploy_agent(cfg.checkpoint, cfg.backend, cfg.threads, cfg.num_inference_steps, cfg.device)
    except (FileNotFoundError, SafetyError, CheckpointError, ExportError, InferenceError) as e:
        print(f"mfp deploy: {e}", file=sys.stderr)
        return EXIT_USAGE
    agent = policy
    if cfg.inference == "process":
        if cfg.device != "cpu":
            print(
                "mfp deploy: inference=process runs on the CPU; use inference=thread for other devices", file=sys.stderr
            )
            return EXIT_USAGE
        try:
            agent = InferenceProcess(
                cfg.checkpoint,
                cfg.backend,
                cfg.threads,
                cfg.num_inference_steps,
                realtime_priority=max(0, cfg.realtime_priority - 1),
            )
        except InferenceError as e:
            print(f"mfp deploy: {e}", file=sys.stderr)
            return EXIT_FAILURE
    try:
        robot = BridgeRobot(cfg.robot, timeout_s=cfg.timeout_s, allow_remote=cfg.allow_remote)
    except (RobotError, ValueError) as e:
        if agent is not policy:
            agent.stop()
        if isinstance(e, RobotError):
            print(f"mfp deploy: cannot reach the robot at {cfg.robot}: {e}", file=sys.stderr)
            return EXIT_CONNECTION
        print(f"mfp deploy: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        check_compatible(policy, robot.info, limits)
        if abs(robot.info.control_hz - cfg.hz) > 1e-6:
            logging.warning("the robot runs at %g Hz, the loop at %g Hz", robot.info.control_hz, cfg.hz)
        recorder = None
        if cfg.record:
            recorder = EpisodeRecorder(
                cfg.record,
                {k: s.type for k, s in policy.shape_meta.obs.items()},
                attrs={
                    "robot": robot.info.name,
                    "hz": cfg.hz,
                    "checkpoint": str(cfg.checkpoint),
                    "limits": limits.name,
                },
            )
        loop = ControlLoop(
            robot,
            agent,
            SafetyLayer(limits, 1.0 / cfg.hz),
            cfg.hz,
            obs_keys=list(policy.shape_meta.obs),
            blend=cfg.blend,
            ensemble_decay=cfg.ensemble_decay,
            latency_offset_s=cfg.latency_offset_s,
            deadline_s=cfg.deadline_s,
            recorder=recorder,
            realtime_priority=cfg.realtime_priority,
        )
        stats = loop.run(cfg.duration_s)
    except (ValueError, SafetyError) as e:
        print(f"mfp deploy: {e}", file=sys.stderr)
        robot.close()
        return EXIT_USAGE
    finally:
        if agent is not policy:
            agent.stop()
    summary = stats.summary()
    summary["robot"] = {"name": robot.info.name, "address": cfg.robot, "last_info": robot.last_info}
    robot.close()
    if recorder is not None:
        buffer = recorder.save(seed=int(summary["robot"]["last_info"].get("seed", -1)))
        if buffer is not None:
            steps, episode = buffer.episode_lengths[-1], buffer.n_episodes - 1
            print(f"[deploy] recorded {steps} steps as episode {episode} of {cfg.record}")
    print(f"[deploy] {stats.format()}")
    if cfg.stats:
        write_text(cfg.stats, json.dumps(summary, indent=2, default=str))
    reason = stats.stop_reason
    if reason.startswith("robot connection lost"):
        print(f"mfp deploy: stopped: {reason}", file=sys.stderr)
        return EXIT_CONNECTION
    if reason.startswith(("inference failed", "robot error")):
        print(f"mfp deploy: stopped: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
