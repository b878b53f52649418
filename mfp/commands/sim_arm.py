"""`mfp sim-arm`: serve a simulated Meta-World arm over the robot bridge, in real time, like a real arm's driver
(a driver process answering requests, the simulator stepping in a second process: :mod:`deploy.sim_arm`).

    mfp sim-arm task=reach-v3 port=5555 hz=50          # then, in another shell:
    mfp deploy checkpoint=runs/x/policy robot=tcp://127.0.0.1:5555 hz=50 duration_s=30

``port=0`` picks a free port; the first line printed names the address (``sim-arm: serving ... on tcp://...``).
``command_log=FILE`` writes one JSON line per received command and per executed step (for tests and debugging).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field

from core.errors import check_int, check_number
from deploy.bridge import BridgeServer, check_address
from deploy.sim_arm import SimArmDriver
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

    def __post_init__(self) -> None:
        check_int("port", self.port, 0, 65535)
        check_address(f"tcp://{self.host}:{self.port}", self.allow_remote)
        check_number("hz", self.hz, 0.0, 1000.0, low_open=True)
        check_int("seed", self.seed, 0)
        check_int("num_points", self.num_points, 1)
        check_int("max_episode_steps", self.max_episode_steps, 1)
        check_number("duration_s", self.duration_s, 0.0)
        check_int("realtime_priority", self.realtime_priority, 0, 99)


def main(argv: list[str]) -> int:
    cfg = parse_overrides(SimArmConfig, argv, "mfp sim-arm")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MUJOCO_GL", "egl")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    driver = SimArmDriver(
        cfg.task,
        cfg.hz,
        seed=cfg.seed,
        num_points=cfg.num_points,
        camera=cfg.camera,
        max_episode_steps=cfg.max_episode_steps,
        command_log=cfg.command_log,
        realtime_priority=cfg.realtime_priority,
        duration_s=cfg.duration_s,
    )
    try:
        server = BridgeServer(driver.handle, f"tcp://{cfg.host}:{cfg.port}", allow_remote=cfg.allow_remote)
    except BaseException:
        driver.close()
        raise

    def serve() -> None:
        driver.favour(cfg.realtime_priority)
        try:
            server.serve(stop, 0.05)
        finally:  # serve() outlives anything a peer sends; should it end anyway, the arm must not run unserved
            if not stop.is_set():
                print("sim-arm: the bridge server stopped unexpectedly; shutting the arm down", file=sys.stderr)
                stop.set()

    serving = threading.Thread(target=serve, name="bridge", daemon=True)
    serving.start()
    print(f"sim-arm: serving {cfg.task} on {server.address} at {cfg.hz:g} Hz", flush=True)
    driver.favour(cfg.realtime_priority)  # this thread hands the states over
    try:
        while not stop.is_set() and driver.alive:
            driver.pump(0.05)
    finally:
        stop.set()
        serving.join(timeout=1.0)
        server.close()
        code = driver.proc.poll()
        driver.close()  # the simulator prints its step counts
        print(
            f"sim-arm: {server.requests} requests ({server.errors} errors, {server.failures} transport failures)",
            flush=True,
        )
    if code not in (None, 0):
        print(f"sim-arm: the simulator process exited with code {code}", file=sys.stderr)
        return 1
    return 0
