"""`mfp sim-arm`: serve a simulated Meta-World arm over the robot bridge, in real time, like a real arm's driver.

    mfp sim-arm task=reach-v3 port=5555 hz=50          # then, in another shell:
    mfp deploy checkpoint=runs/x/policy robot=tcp://127.0.0.1:5555 hz=50 duration_s=30

``port=0`` picks a free port; the first line printed names the address (``sim-arm: serving ... on tcp://...``).
``command_log=FILE`` writes one JSON line per received command and per executed step (for tests and debugging).
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field

from deploy.bridge import BridgeServer
from deploy.inference import set_realtime_priority
from deploy.sim_arm import SimArm
from mfp.cli_args import parse_overrides


@dataclass
class SimArmConfig:
    task: str = field(default="reach-v3", metadata={"help": "Meta-World v3 task"})
    host: str = field(default="127.0.0.1", metadata={"help": "bind address (loopback unless allow_remote)"})
    port: int = field(default=5555, metadata={"help": "0 = a free port (printed)"})
    allow_remote: bool = field(default=False, metadata={"help": "allow binding a non-loopback address"})
    hz: float = field(default=50.0, metadata={"help": "simulation steps per second (one env step each)"})
    seed: int = field(default=0, metadata={"help": "seed of the first episode; later episodes count up"})
    num_points: int = field(default=512, metadata={"help": "points per cloud (must match the policy)"})
    camera: str = field(default="corner2", metadata={"help": "point-cloud camera"})
    max_episode_steps: int = field(default=500, metadata={"help": "steps before the arm resets to the next seed"})
    duration_s: float = field(default=0.0, metadata={"help": "stop after this long (0 = until SIGINT/SIGTERM)"})
    realtime_priority: int = field(default=0, metadata={"help": ">0: SCHED_FIFO simulation thread, like a robot's"})
    command_log: str | None = field(default=None, metadata={"help": "JSON-lines log of commands and steps"})


def main(argv: list[str]) -> int:
    cfg = parse_overrides(SimArmConfig, argv, "mfp sim-arm")
    os.environ.setdefault("MUJOCO_GL", "egl")
    arm = SimArm(
        cfg.task,
        cfg.hz,
        seed=cfg.seed,
        num_points=cfg.num_points,
        camera=cfg.camera,
        max_episode_steps=cfg.max_episode_steps,
        command_log=cfg.command_log,
    )
    server = BridgeServer(arm.handle, f"tcp://{cfg.host}:{cfg.port}", allow_remote=cfg.allow_remote)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve, args=(stop, 0.05), name="bridge", daemon=True)
    serving.start()
    set_realtime_priority(cfg.realtime_priority, "sim-arm")
    print(f"sim-arm: serving {cfg.task} on {server.address} at {cfg.hz:g} Hz", flush=True)
    try:
        arm.run(stop, cfg.duration_s)
    finally:
        stop.set()
        serving.join(timeout=1.0)
        server.close()
        print(
            f"sim-arm: {arm.steps} steps, {arm.overruns} overruns, {arm.holds} holds, "
            f"{server.requests} requests ({server.errors} errors)",
            flush=True,
        )
        arm.close()
    return 0
