"""Inference beside the control loop: in a thread (any agent object) or in its own process (a checkpoint or export).

Both take the newest observation history with :meth:`submit` (a newer one replaces one still waiting) and hand
finished chunks to the loop's ``on_chunk(obs_time, chunk (n, Da), latency_s)``.

A thread shares the interpreter lock with the control thread: when the machine is busy and the OS preempts the
inference thread while it holds the lock, the control thread waits for it (measured here: period jitter p99 of
15-20 ms on a loaded 2-core machine, with or without real-time priority). A process has its own interpreter, so the
control thread only ever waits for the OS; chunks come back over a ZeroMQ PAIR socket on loopback, encoded with the
bridge codec (:mod:`deploy.protocol`, no pickle), and the loop collects them with :meth:`InferenceWorker.poll` at
each tick. The worker is ``python -m deploy.inference_worker address=... path=...``; it exits when its parent does.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from core.errors import MfpError
from deploy.protocol import ProtocolError, decode, encode

OnChunk = Callable[[float, np.ndarray, float], None]
_log = logging.getLogger(__name__)


class InferenceError(MfpError, RuntimeError):
    """The inference worker failed (at start-up or on an observation)."""


class InferenceWorker(ABC):
    """Runs an agent on submitted observation histories ``{key: (To, ...)}``."""

    n_obs_steps: int
    error: BaseException | None = None

    @abstractmethod
    def start(self, on_chunk: OnChunk) -> None:
        """Begin serving; chunks go to ``on_chunk``."""

    @abstractmethod
    def submit(self, obs: dict[str, np.ndarray], obs_time: float) -> None:
        """Ask for a chunk from ``obs`` (captured at ``obs_time``)."""

    @property
    @abstractmethod
    def idle(self) -> bool:
        """True when nothing is running or waiting."""

    def poll(self) -> None:  # noqa: B027  (optional hook: a thread delivers its chunks by itself)
        """Deliver finished chunks (called by the control thread each tick; a thread delivers by itself)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop serving and release resources."""


class InferenceThread(InferenceWorker):
    """Any agent object (``n_obs_steps``, ``reset()``, ``predict_action``) in a daemon thread."""

    def __init__(self, agent: Any) -> None:
        self._agent = agent
        self.n_obs_steps = int(agent.n_obs_steps)
        self._cv = threading.Condition()
        self._pending: tuple[dict, float] | None = None
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._on_chunk: OnChunk | None = None
        self.error = None

    def start(self, on_chunk: OnChunk) -> None:
        self._agent.reset()
        self._on_chunk = on_chunk
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        with self._cv:
            return not self._busy and self._pending is None

    def submit(self, obs: dict[str, np.ndarray], obs_time: float) -> None:
        with self._cv:
            self._pending = (obs, obs_time)
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=1.0)  # a stalled agent is left behind (daemon thread)

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._pending is None and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                assert self._pending is not None and self._on_chunk is not None  # the wait above, start()
                obs, obs_time = self._pending
                on_chunk = self._on_chunk
                self._pending, self._busy = None, True
            try:
                t0 = time.monotonic()
                chunk = np.asarray(self._agent.predict_action(obs), dtype=np.float64)
                latency = time.monotonic() - t0
                on_chunk(obs_time, chunk, latency)
            # Any failure of the policy must reach the control thread, which stops the loop and reports it.
            except BaseException as e:
                self.error = e
                return
            finally:
                with self._cv:
                    self._busy = False


class InferenceProcess(InferenceWorker):
    """A checkpoint or ``mfp export`` directory served by a separate Python process.

    Args:
        path: policy checkpoint directory, or an export directory (then ``backend`` onnx or pt2).
        backend: ``auto`` (eager for checkpoints, onnx for exports), ``eager``, ``onnx`` or ``pt2``.
        threads: torch / onnxruntime threads in the worker.
        num_inference_steps: NFE override for checkpoints.
        realtime_priority: > 0 runs the worker under SCHED_FIFO at this priority (keep it below the control
            thread's); refused → a warning from the worker, which carries on.
        startup_timeout_s: how long to wait for the worker to load the policy.
    """

    def __init__(
        self,
        path: str | Path,
        backend: str = "auto",
        threads: int = 1,
        num_inference_steps: int | None = None,
        realtime_priority: int = 0,
        startup_timeout_s: float = 180.0,
    ) -> None:
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind("tcp://127.0.0.1:*")
        address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        cmd = [
            sys.executable,
            "-m",
            "deploy.inference_worker",
            f"address={address}",
            f"path={path}",
            f"backend={backend}",
            f"threads={threads}",
            f"realtime_priority={int(realtime_priority)}",
        ]
        if num_inference_steps is not None:
            cmd.append(f"num_inference_steps={num_inference_steps}")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        repo = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)  # its stderr is ours
        self.error = None
        self._seq = 0
        self._in_flight: dict[int, float] = {}  # seq -> obs_time
        self._on_chunk: OnChunk | None = None
        reply = self._receive(startup_timeout_s, "start-up")
        if reply.type != "ready":
            self._fail_startup(f"the inference worker sent '{reply.type}' instead of 'ready'")
        self.n_obs_steps = reply["n_obs_steps"]
        self.n_action_steps = reply["n_action_steps"]
        self.action_dim = reply["action_dim"]

    def _fail_startup(self, message: str) -> None:
        self.stop()
        raise InferenceError(message)

    def _receive(self, timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._sock.poll(100, zmq.POLLIN):
                reply = decode(self._sock.recv())
                if reply.type == "error":
                    self._fail_startup(f"inference worker failed during {what}: {reply['message']}")
                return reply
            if self._proc.poll() is not None:
                self._fail_startup(
                    f"inference worker exited with code {self._proc.returncode} during {what} "
                    "(its error output is above)"
                )
        self._fail_startup(f"inference worker did not finish {what} within {timeout_s:.0f} s")

    def start(self, on_chunk: OnChunk) -> None:
        self._on_chunk = on_chunk

    @property
    def idle(self) -> bool:
        return not self._in_flight

    def submit(self, obs: dict[str, np.ndarray], obs_time: float) -> None:
        self._seq += 1
        self._in_flight[self._seq] = obs_time
        self._sock.send(encode("infer", seq=self._seq, obs=obs), copy=False)

    def poll(self) -> None:
        if self.error is not None:
            return
        while self._sock.poll(0, zmq.POLLIN):
            try:
                msg = decode(self._sock.recv())
            except ProtocolError as e:
                self.error = InferenceError(f"bad message from the inference worker: {e}")
                return
            if msg.type == "error":
                self.error = InferenceError(msg["message"])
                return
            if msg.type == "chunk":
                obs_time = self._in_flight.get(msg["seq"])
                for seq in [s for s in self._in_flight if s <= msg["seq"]]:  # older requests were skipped
                    del self._in_flight[seq]
                if obs_time is not None and self._on_chunk is not None:
                    self._on_chunk(obs_time, msg["action"], msg["latency"])
        if self._proc.poll() is not None:
            self.error = InferenceError(f"the inference worker exited with code {self._proc.returncode}")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._sock.close(0)


# ---------------------------------------------------------------------------------------------- worker process
def set_realtime_priority(priority: int, who: str) -> bool:
    """Run the calling thread under SCHED_FIFO at ``priority`` (> 0); False (and a warning) when refused."""
    if priority <= 0:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return True
    except (OSError, AttributeError) as e:
        _log.warning("%s: could not switch to SCHED_FIFO priority %d (%s); continuing without", who, priority, e)
        return False
