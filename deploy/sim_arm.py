"""A Meta-World arm that runs in real time behind the robot bridge, like a real arm's driver (`mfp sim-arm`).

Two processes, as a real arm has a driver beside its controller: the *driver* (:class:`SimArmDriver`, in the
`mfp sim-arm` process) answers bridge requests from the newest state it holds, and the *simulator*
(``python -m deploy.sim_arm``, :class:`SimArm`) steps the env at ``hz``, one env step per period, rendering the point
cloud each step, and pushes every new observation to the driver. Stepping and rendering hold the Python interpreter
lock for milliseconds at a time; in their own process they never delay a reply (on a loaded 2-core machine a
one-process arm answered ``action`` in 3.7 ms at the median and 18 ms at p99). The two talk over loopback ZeroMQ
PUSH/PULL sockets with the bridge codec (no pickle).

Commands queue in the simulator (at most two, oldest dropped) and each step consumes one; a step with no command
holds (zero end-effector motion, gripper unchanged). When an episode ends the arm resets to the next seed and
carries on. Example::

    mfp sim-arm task=reach-v3 port=5555 hz=50          # then, in another shell:
    mfp deploy checkpoint=runs/x/export robot=tcp://127.0.0.1:5555 hz=50 duration_s=30

``port=0`` picks a free port; the first line printed names the address (``sim-arm: serving ... on tcp://...``).
``command_log=FILE`` writes one JSON line per received command and per executed step (for tests and debugging).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from core.errors import MfpError, check_number
from deploy.bridge import Rejected
from deploy.protocol import Message, ProtocolError, decode, encode, spec_of
from deploy.sched import favour_io_threads, set_fifo, set_slice

ACTION_DIM = 4


class SimArmError(MfpError, RuntimeError):
    """The simulator process failed to start or stopped."""


class SimArm:
    """The simulation side: the env, the command queue, one step per period (simulator process)."""

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
        from envs.metaworld.env import MetaWorldEnv

        check_number("hz", hz, 0.0, 1000.0, low_open=True)
        self.task, self.hz = task, float(hz)
        self.dt = 1.0 / self.hz
        self.env = MetaWorldEnv(
            task, point_cloud_cameras=(camera,), num_points=num_points, seed=seed, max_episode_steps=max_episode_steps
        )
        self._commands: deque = deque(maxlen=2)
        self._gripper = 0.0
        obs, info = self.env.reset()
        self.obs, self.obs_time = obs, time.monotonic()
        self.info: dict[str, Any] = {
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

    def command(self, msg: Message) -> None:
        """Queue an ``action`` or clear the queue for a ``hold`` (already checked and logged by the driver)."""
        if msg.type == "action":
            self._commands.append(np.clip(msg["action"], -1.0, 1.0))
        elif msg.type == "hold":
            self._commands.clear()
            self.holds += 1

    def step(self) -> None:
        command = self._commands.popleft() if self._commands else None
        if command is None:
            action = np.array([0.0, 0.0, 0.0, self._gripper])
        else:
            action = command
            self._gripper = float(command[3])
        obs, reward, _, truncated, info = self.env.step(action)
        self.obs, self.obs_time = obs, time.monotonic()
        self.info.update(
            step=self.info["step"] + 1, success=bool(info["success"]) or self.info["success"], reward=float(reward)
        )
        self.steps += 1
        self._write(type="step", t=self.obs_time, action=action.tolist(), commanded=command is not None)
        if truncated:
            obs, info = self.env.reset()
            self.obs, self.obs_time = obs, time.monotonic()
            self.info = {
                "episode": self.info["episode"] + 1,
                "step": 0,
                "seed": int(info["seed"]),
                "success": False,
                "reward": 0.0,
            }

    def state_message(self) -> bytes:
        """The newest observation as an ``obs`` message for the driver."""
        return encode("obs", timestamp=self.obs_time, now=time.monotonic(), obs=self.obs, info=self.info)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        self.env.close()


def simulate(args: dict[str, str]) -> int:
    """The simulator process: step at ``hz``, push each observation, apply commands between steps."""
    from deploy.inference import set_realtime_priority

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ctx: zmq.Context = zmq.Context.instance()
    states, commands = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for sock in (states, commands):
        sock.setsockopt(zmq.LINGER, 0)
    states.setsockopt(zmq.SNDHWM, 4)  # only recent states matter
    states.connect(args["states"])
    commands.connect(args["commands"])
    parent = os.getppid()
    set_realtime_priority(int(args.get("realtime_priority", 0)), "sim-arm simulator")
    arm = SimArm(
        args["task"],
        float(args["hz"]),
        seed=int(args["seed"]),
        num_points=int(args["num_points"]),
        camera=args["camera"],
        max_episode_steps=int(args["max_episode_steps"]),
        command_log=args.get("command_log") or None,
    )
    favour_io_threads(int(args.get("realtime_priority", 0)))
    states.send(arm.state_message())
    t_next = time.monotonic()
    t_end = t_next + float(args.get("duration_s", 0)) if float(args.get("duration_s", 0)) > 0 else float("inf")
    try:
        while not stop.is_set() and os.getppid() == parent and time.monotonic() < t_end:
            arm.step()
            try:
                states.send(arm.state_message(), zmq.NOBLOCK)
            except zmq.Again:
                pass  # the driver is behind; it gets the next one
            t_next += arm.dt
            remaining = t_next - time.monotonic()
            if remaining < 0:
                arm.overruns += 1
                if remaining < -arm.dt:  # fell a whole period behind: re-anchor instead of bursting
                    t_next = time.monotonic()
            while True:  # apply commands until the next step is due
                wait_ms = max(0, int((t_next - time.monotonic()) * 1000))
                if not commands.poll(wait_ms, zmq.POLLIN):
                    break
                arm.command(decode(commands.recv()))
                if time.monotonic() >= t_next:
                    break
    finally:
        print(f"sim-arm: {arm.steps} steps, {arm.overruns} overruns, {arm.holds} holds", flush=True)
        arm.close()
        states.close(0)
        commands.close(0)
    return 0


class SimArmDriver:
    """The driver side (`mfp sim-arm` process): starts the simulator process and answers bridge requests from the
    newest state it pushed; ``handle`` is the :class:`deploy.bridge.BridgeServer` handler."""

    def __init__(
        self,
        task: str,
        hz: float,
        seed: int = 0,
        num_points: int = 512,
        camera: str = "corner2",
        max_episode_steps: int = 500,
        command_log: str | None = None,
        realtime_priority: int = 0,
        duration_s: float = 0.0,
        startup_timeout_s: float = 180.0,
    ) -> None:
        check_number("hz", hz, 0.0, 1000.0, low_open=True)
        self.task, self.hz = task, float(hz)
        ctx: zmq.Context = zmq.Context.instance()
        self._states, self._commands = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        for sock in (self._states, self._commands):
            sock.setsockopt(zmq.LINGER, 0)
        states = self._bind(self._states)
        commands = self._bind(self._commands)
        self._lock = threading.Lock()
        self._state: Message | None = None
        self.received_states = 0
        # Commands are logged here, when they arrive (the simulator logs its steps to the same file).
        self._log = open(command_log, "a", buffering=1) if command_log else None
        args = {
            "states": states,
            "commands": commands,
            "task": task,
            "hz": hz,
            "seed": seed,
            "num_points": num_points,
            "camera": camera,
            "max_episode_steps": max_episode_steps,
            "command_log": command_log or "",
            "realtime_priority": realtime_priority,
            "duration_s": duration_s,
        }
        env = dict(os.environ)
        repo = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "deploy.sim_arm", *(f"{k}={v}" for k, v in args.items())]
        self.proc = subprocess.Popen(cmd, env=env)  # its output is ours
        deadline = time.monotonic() + startup_timeout_s
        while self._state is None:
            if self.proc.poll() is not None:
                raise SimArmError(f"the simulator process exited with code {self.proc.returncode} at start-up")
            if time.monotonic() > deadline:
                self.close()
                raise SimArmError(f"the simulator did not start within {startup_timeout_s:.0f} s")
            self.pump(0.1)

    @staticmethod
    def _bind(sock: zmq.Socket) -> str:
        sock.bind("tcp://127.0.0.1:*")
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def favour(self, realtime_priority: int = 0) -> None:
        """The driver is light and must answer at once: the calling thread and the I/O threads get the short slice
        (or SCHED_FIFO at ``realtime_priority``)."""
        if not set_fifo(0, realtime_priority, "sim-arm driver"):
            set_slice(0)
        favour_io_threads(realtime_priority)

    def pump(self, timeout_s: float) -> None:
        """Take the newest states the simulator pushed (waits up to ``timeout_s`` for one)."""
        if not self._states.poll(int(timeout_s * 1000), zmq.POLLIN):
            return
        data = None
        while self._states.poll(0, zmq.POLLIN):
            data = self._states.recv()
        if data is None:
            return
        try:
            state = decode(data)
        except ProtocolError as e:
            raise SimArmError(f"the simulator sent an invalid state: {e}") from e
        with self._lock:
            self._state = state
            self.received_states += 1

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def handle(self, msg: Message) -> tuple[str, dict[str, Any]]:
        with self._lock:
            state = self._state
        assert state is not None  # the constructor waits for the first one
        if msg.type == "hello":
            return "info", {
                "robot": f"sim_sawyer/{self.task}",
                "action_dim": ACTION_DIM,
                "control_hz": self.hz,
                "obs": spec_of(state["obs"]),
            }
        if msg.type == "get_obs":
            return "obs", {
                "timestamp": state["timestamp"],
                "now": time.monotonic(),
                "obs": state["obs"],
                "info": state["info"],
            }
        if msg.type == "action":
            action = msg["action"]
            if action.shape != (ACTION_DIM,) or not np.isfinite(action).all():
                raise Rejected(
                    f"action must be {ACTION_DIM} finite numbers, got shape {action.shape}: {action.tolist()}"
                )
            self._commands.send(encode("action", timestamp=msg["timestamp"], action=action))
            self._write(type="action", t=time.monotonic(), ts=msg["timestamp"], action=action.tolist())
        elif msg.type == "hold":
            self._commands.send(encode("hold", reason=msg["reason"]))
            self._write(type="hold", t=time.monotonic(), reason=msg["reason"])
        return "ack", {"now": time.monotonic()}

    def _write(self, **record: Any) -> None:
        if self._log is not None:
            self._log.write(json.dumps(record) + "\n")

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the simulator (it prints its step counts) and release the sockets."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self._states.close(0)
        self._commands.close(0)
        if self._log is not None:
            self._log.close()


if __name__ == "__main__":
    raise SystemExit(simulate(dict(a.split("=", 1) for a in sys.argv[1:])))
