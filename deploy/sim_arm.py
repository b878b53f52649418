"""`mfp sim-arm`: a Meta-World arm that runs in real time behind the robot bridge, like a real arm's driver.

The simulator steps at ``hz`` in the main thread (one env step per period, rendering the point cloud each step);
a server thread answers bridge requests at any time. Commands queue (at most two, oldest dropped) and each step
consumes one; a step with no command holds (zero end-effector motion, gripper unchanged). When an episode ends the
arm resets to the next seed and carries on. Example::

    mfp sim-arm task=reach-v3 port=5555 hz=50          # then, in another shell:
    mfp deploy checkpoint=runs/x/policy robot=tcp://127.0.0.1:5555 hz=50 duration_s=30

``port=0`` picks a free port; the first line printed names the address (``sim-arm: serving ... on tcp://...``).
``command_log=FILE`` writes one JSON line per received command and per executed step (for tests and debugging).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from deploy.bridge import BridgeServer, Rejected
from mfp.cli_args import parse_overrides
from deploy.protocol import Message, spec_of


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
    command_log: Optional[str] = field(default=None, metadata={"help": "JSON-lines log of commands and steps"})


class SimArm:
    """Shared state between the simulation loop (main thread) and the bridge handler (server thread)."""

    def __init__(self, cfg: SimArmConfig) -> None:
        from envs.metaworld_env import MetaWorldEnv

        self.cfg = cfg
        self.dt = 1.0 / cfg.hz
        self.env = MetaWorldEnv(cfg.task, point_cloud_cameras=(cfg.camera,), num_points=cfg.num_points,
                                seed=cfg.seed, max_episode_steps=cfg.max_episode_steps)
        self._lock = threading.Lock()
        self._commands: deque = deque(maxlen=2)
        self._gripper = 0.0
        obs, info = self.env.reset()
        self._obs, self._obs_time = obs, time.monotonic()
        self._info: dict[str, Any] = {"episode": 0, "step": 0, "seed": int(info["seed"]), "success": False,
                                      "reward": 0.0}
        self.steps = self.overruns = self.holds = 0
        self._log = open(cfg.command_log, "a", buffering=1) if cfg.command_log else None

    def _write(self, **record: Any) -> None:
        if self._log is not None:
            self._log.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ bridge handler (server thread)
    def handle(self, msg: Message) -> tuple[str, dict[str, Any]]:
        now = time.monotonic()
        if msg.type == "hello":
            with self._lock:
                obs = self._obs
            return "info", {"robot": f"sim_sawyer/{self.cfg.task}", "action_dim": 4, "control_hz": self.cfg.hz,
                            "obs": spec_of(obs)}
        if msg.type == "get_obs":
            with self._lock:
                obs, t, info = self._obs, self._obs_time, dict(self._info)
            return "obs", {"timestamp": t, "now": time.monotonic(), "obs": obs, "info": info}
        if msg.type == "action":
            action = msg["action"]
            if action.shape != (4,) or not np.isfinite(action).all():
                raise Rejected(f"action must be 4 finite numbers, got shape {action.shape}: {action.tolist()}")
            with self._lock:
                self._commands.append(np.clip(action, -1.0, 1.0))
            self._write(type="action", t=now, ts=msg["timestamp"], action=action.tolist())
        elif msg.type == "hold":
            with self._lock:
                self._commands.clear()
            self.holds += 1
            self._write(type="hold", t=now, reason=msg["reason"])
        return "ack", {"now": time.monotonic()}

    # ------------------------------------------------------------------ simulation (main thread)
    def step(self) -> None:
        with self._lock:
            command = self._commands.popleft() if self._commands else None
        if command is None:
            action = np.array([0.0, 0.0, 0.0, self._gripper])
        else:
            action = command
            self._gripper = float(command[3])
        obs, reward, _, truncated, info = self.env.step(action)
        t = time.monotonic()
        with self._lock:
            self._obs, self._obs_time = obs, t
            self._info.update(step=self._info["step"] + 1, success=bool(info["success"]) or self._info["success"],
                              reward=float(reward))
        self.steps += 1
        self._write(type="step", t=t, action=action.tolist(), commanded=command is not None)
        if truncated:
            obs, info = self.env.reset()
            with self._lock:
                self._obs, self._obs_time = obs, time.monotonic()
                self._info = {"episode": self._info["episode"] + 1, "step": 0, "seed": int(info["seed"]),
                              "success": False, "reward": 0.0}

    def run(self, stop: threading.Event) -> None:
        t_next = time.monotonic()
        t_end = t_next + self.cfg.duration_s if self.cfg.duration_s > 0 else float("inf")
        while not stop.is_set() and time.monotonic() < t_end:
            self.step()
            t_next += self.dt
            remaining = t_next - time.monotonic()
            if remaining < 0:
                self.overruns += 1
                if remaining < -self.dt:  # fell a whole period behind: re-anchor instead of bursting
                    t_next = time.monotonic()
            else:
                stop.wait(remaining)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        self.env.close()


def main(argv: list[str]) -> int:
    cfg = parse_overrides(SimArmConfig, argv, "mfp sim-arm")
    os.environ.setdefault("MUJOCO_GL", "egl")
    arm = SimArm(cfg)
    server = BridgeServer(arm.handle, f"tcp://{cfg.host}:{cfg.port}", allow_remote=cfg.allow_remote)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    serving = threading.Thread(target=server.serve, args=(stop, 0.05), name="bridge", daemon=True)
    serving.start()
    from deploy.inference import set_realtime_priority

    set_realtime_priority(cfg.realtime_priority, "sim-arm")
    print(f"sim-arm: serving {cfg.task} on {server.address} at {cfg.hz:g} Hz", flush=True)
    try:
        arm.run(stop)
    finally:
        stop.set()
        serving.join(timeout=1.0)
        server.close()
        print(f"sim-arm: {arm.steps} steps, {arm.overruns} overruns, {arm.holds} holds, "
              f"{server.requests} requests ({server.errors} errors)", flush=True)
        arm.close()
    return 0
