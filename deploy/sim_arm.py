"""A Meta-World arm that runs in real time behind the robot bridge, like a real arm's driver (`mfp sim-arm`).

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
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from deploy.bridge import Rejected
from deploy.protocol import Message, spec_of
from envs.metaworld.env import MetaWorldEnv


class SimArm:
    """Shared state between the simulation loop (main thread) and the bridge handler (server thread)."""

    def __init__(
        self,
        task: str,
        hz: float,
        seed: int = 0,
        num_points: int = 512,
        camera: str = "corner2",
        max_episode_steps: int = 500,
        command_log: str | None = None,
    ) -> None:
        self.task, self.hz = task, float(hz)
        self.dt = 1.0 / self.hz
        self.env = MetaWorldEnv(
            task, point_cloud_cameras=(camera,), num_points=num_points, seed=seed, max_episode_steps=max_episode_steps
        )
        self._lock = threading.Lock()
        self._commands: deque = deque(maxlen=2)
        self._gripper = 0.0
        obs, info = self.env.reset()
        self._obs, self._obs_time = obs, time.monotonic()
        self._info: dict[str, Any] = {
            "episode": 0,
            "step": 0,
            "seed": int(info["seed"]),
            "success": False,
            "reward": 0.0,
        }
        self.steps = self.overruns = self.holds = 0
        self._log = open(command_log, "a", buffering=1) if command_log else None

    def _write(self, **record: Any) -> None:
        if self._log is not None:
            self._log.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ bridge handler (server thread)
    def handle(self, msg: Message) -> tuple[str, dict[str, Any]]:
        now = time.monotonic()
        if msg.type == "hello":
            with self._lock:
                obs = self._obs
            return "info", {
                "robot": f"sim_sawyer/{self.task}",
                "action_dim": 4,
                "control_hz": self.hz,
                "obs": spec_of(obs),
            }
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
            self._info.update(
                step=self._info["step"] + 1,
                success=bool(info["success"]) or self._info["success"],
                reward=float(reward),
            )
        self.steps += 1
        self._write(type="step", t=t, action=action.tolist(), commanded=command is not None)
        if truncated:
            obs, info = self.env.reset()
            with self._lock:
                self._obs, self._obs_time = obs, time.monotonic()
                self._info = {
                    "episode": self._info["episode"] + 1,
                    "step": 0,
                    "seed": int(info["seed"]),
                    "success": False,
                    "reward": 0.0,
                }

    def run(self, stop: threading.Event, duration_s: float = 0.0) -> None:
        """Step at ``hz`` until ``stop`` is set or ``duration_s`` (> 0) has passed."""
        t_next = time.monotonic()
        t_end = t_next + duration_s if duration_s > 0 else float("inf")
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
