"""Fixed-rate control loop: the arm gets one command per period while inference runs beside it (a thread or, for
steady timing on a busy machine, a process: :mod:`deploy.inference`).

Each tick ``k`` (scheduled at ``t_k = t_0 + k·dt``) the control thread

1. reads the newest observation from the robot (a NaN/inf in it → hold, history cleared, reason logged);
2. collects finished chunks and hands the last ``n_obs_steps`` observations to inference if it is idle;
3. sends the action scheduled for slot ``k`` through the safety layer, or a hold when there is none (watchdog).

A chunk predicted from an observation captured at ``t_obs`` gives action ``i`` the timestamp
``t_obs + i·dt + latency_offset_s``, i.e. slot ``round((ts - t_0) / dt)``. Actions whose slot is already being
executed or past when the chunk arrives are dropped, and an action is only ever executed in its own slot, so a late
chunk never moves the arm with stale commands. Actions planned from an observation older than ``deadline_s`` are
not executed either. Slots covered by several chunks use the newest chunk (``blend="latest"``) or a weighted mean
(``blend="ensemble"``, ACT's temporal ensembling: weight ``exp(-ensemble_decay·i)``, ``i = 0`` for the oldest).

If the robot stops answering, the loop stops, reports why, and returns its statistics; so does an inference error.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np

from deploy.inference import InferenceThread, InferenceWorker, set_realtime_priority
from deploy.robot import Robot, RobotConnectionError, RobotError
from deploy.safety import SafetyError, SafetyLayer

BLENDS = ("latest", "ensemble")
_log = logging.getLogger(__name__)

# Hold reasons (keys of LoopStats.holds).
HOLD_STARTUP = "startup"  # no chunk has arrived yet
HOLD_NO_ACTION = "no_action"  # watchdog: nothing scheduled for this slot (inference late)
HOLD_STALE = "stale"  # watchdog: only actions planned from observations older than the deadline
HOLD_BAD_OBS = "nan_observation"  # the observation had NaN/inf
HOLD_UNSAFE = "unsafe_action"  # the safety layer refused the action (NaN/inf, wrong shape)


class Agent(Protocol):
    """What the loop needs from a policy (a :class:`policies.policy.Policy` or a scripted expert)."""

    n_obs_steps: int

    def reset(self) -> None: ...

    def predict_action(self, obs: Mapping[str, np.ndarray]) -> np.ndarray: ...


class Recorder(Protocol):
    def add(self, obs: Mapping[str, np.ndarray], action: np.ndarray, timestamp: float, hold: bool) -> None: ...


def _percentiles(values: Sequence[float], scale: float = 1e3) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    arr = np.asarray(values) * scale
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "max": float(arr.max())}


@dataclass
class LoopStats:
    """Timing and event counts of one run (times in the dicts are milliseconds)."""

    hz: float
    ticks: int = 0
    missed_ticks: int = 0  # periods skipped because a tick started more than a period late
    actions_sent: int = 0
    chunks: int = 0
    dropped_actions: int = 0  # already due when their chunk arrived
    stale_actions: int = 0  # planned from an observation older than the deadline
    holds: Counter = field(default_factory=Counter)
    interventions: int = 0  # commands the safety layer changed
    stop_reason: str = ""
    periods: list = field(default_factory=list, repr=False)
    lateness: list = field(default_factory=list, repr=False)
    tick_work: list = field(default_factory=list, repr=False)
    inference: list = field(default_factory=list, repr=False)

    @property
    def watchdog_holds(self) -> int:
        return self.holds[HOLD_NO_ACTION] + self.holds[HOLD_STALE]

    def summary(self) -> dict[str, Any]:
        dt = 1.0 / self.hz
        jitter = [abs(p - dt) for p in self.periods]
        return {
            "hz": self.hz,
            "ticks": self.ticks,
            "missed_ticks": self.missed_ticks,
            "period_ms": {
                "mean": float(np.mean(self.periods) * 1e3) if self.periods else float("nan"),
                **_percentiles(self.periods),
            },
            "jitter_ms": _percentiles(jitter),
            "lateness_ms": _percentiles(self.lateness),
            "tick_work_ms": _percentiles(self.tick_work),
            "inference_ms": _percentiles(self.inference),
            "chunks": self.chunks,
            "actions_sent": self.actions_sent,
            "dropped_actions": self.dropped_actions,
            "stale_actions": self.stale_actions,
            "holds": dict(self.holds),
            "watchdog_holds": self.watchdog_holds,
            "safety_interventions": self.interventions,
            "stop_reason": self.stop_reason,
        }

    def format(self) -> str:
        s = self.summary()
        return (
            f"{s['ticks']} ticks at {self.hz:g} Hz ({s['missed_ticks']} missed); "
            f"period p50 {s['period_ms']['p50']:.2f} ms, "
            f"jitter p50/p99 {s['jitter_ms']['p50']:.2f}/{s['jitter_ms']['p99']:.2f} ms; inference p50/p99 "
            f"{s['inference_ms']['p50']:.2f}/{s['inference_ms']['p99']:.2f} ms; {s['actions_sent']} actions, "
            f"{s['dropped_actions']} dropped as due, {s['stale_actions']} stale; holds {s['holds']}; "
            f"stop: {s['stop_reason']}"
        )


class ActionSchedule:
    """Timestamped actions by control slot, shared by the inference thread (writer) and the control thread."""

    def __init__(self, t0: float, dt: float, blend: str = "latest", ensemble_decay: float = 0.01) -> None:
        if blend not in BLENDS:
            raise ValueError(f"unknown blend '{blend}'; known: {', '.join(BLENDS)}")
        self.t0, self.dt, self.blend, self.decay = t0, dt, blend, ensemble_decay
        self._lock = threading.Lock()
        self._slots: dict[int, list[tuple[int, float, np.ndarray]]] = {}  # slot -> [(chunk seq, obs time, action)]
        self._executing = -1
        self._seq = 0
        self._floor = -float("inf")  # chunks planned from observations before this time are refused

    def slot_of(self, timestamp: float) -> int:
        return int(round((timestamp - self.t0) / self.dt))

    def add_chunk(self, obs_time: float, timestamps: np.ndarray, actions: np.ndarray) -> int:
        """Schedule ``actions`` (n, Da) at ``timestamps`` (n,); returns how many were dropped (already due, or
        planned from an observation older than the last :meth:`clear`)."""
        with self._lock:
            self._seq += 1
            if obs_time < self._floor:
                return len(actions)
            dropped = 0
            for ts, action in zip(timestamps, actions, strict=True):
                slot = self.slot_of(float(ts))
                if slot <= self._executing:
                    dropped += 1
                    continue
                self._slots.setdefault(slot, []).append((self._seq, obs_time, np.asarray(action, dtype=np.float64)))
            return dropped

    def take(self, slot: int, oldest_obs_time: float) -> tuple[np.ndarray | None, int]:
        """The action for ``slot`` from observations not older than ``oldest_obs_time`` (None if there is none),
        and the number of candidates rejected as stale. Marks ``slot`` as executing and forgets earlier slots."""
        with self._lock:
            self._executing = slot
            for old in [s for s in self._slots if s < slot]:
                del self._slots[old]
            entries = self._slots.pop(slot, [])
        fresh = [e for e in entries if e[1] >= oldest_obs_time]
        stale = len(entries) - len(fresh)
        if not fresh:
            return None, stale
        if self.blend == "latest":
            return max(fresh, key=lambda e: e[0])[2], stale
        fresh.sort(key=lambda e: e[0])  # oldest first
        w = np.exp(-self.decay * np.arange(len(fresh)))
        return np.einsum("n,nd->d", w / w.sum(), np.stack([e[2] for e in fresh])), stale

    def clear(self, min_obs_time: float) -> None:
        """Forget every scheduled action and refuse chunks planned from observations before ``min_obs_time``."""
        with self._lock:
            self._slots.clear()
            self._floor = max(self._floor, min_obs_time)


class ControlLoop:
    """Drive ``robot`` with ``agent`` at ``hz`` through ``safety``; :meth:`run` returns :class:`LoopStats`.

    Args:
        robot: the arm (e.g. :class:`deploy.robot.BridgeRobot`).
        agent: has ``n_obs_steps``, ``reset()`` and ``predict_action(obs {key: (To, ...)}) -> (n, Da)`` (run in a
            thread), or an :class:`deploy.inference.InferenceProcess` (its own process; the caller stops it).
        safety: applied to every action; reset from the measured position at start and after every hold.
        hz: control rate.
        obs_keys: observation keys the agent reads (default: all keys the robot sends).
        blend: ``"latest"`` or ``"ensemble"`` chunk hand-over.
        latency_offset_s: added to every action timestamp.
        deadline_s: actions planned from observations older than this are not executed (watchdog).
        recorder: gets every tick's observation and executed command (holds included, flagged).
        realtime_priority: > 0 runs the control thread under SCHED_FIFO at this priority (needs CAP_SYS_NICE;
            a warning if refused). Worth it only with inference in a process: a thread shares the interpreter lock.
    """

    def __init__(
        self,
        robot: Robot,
        agent: Agent | InferenceWorker,
        safety: SafetyLayer,
        hz: float,
        obs_keys: Sequence[str] | None = None,
        blend: str = "latest",
        ensemble_decay: float = 0.01,
        latency_offset_s: float = 0.0,
        deadline_s: float = 0.2,
        recorder: Recorder | None = None,
        realtime_priority: int = 0,
    ) -> None:
        if not hz > 0:
            raise ValueError(f"hz must be positive, got {hz}")
        if blend not in BLENDS:
            raise ValueError(f"unknown blend '{blend}'; known: {', '.join(BLENDS)}")
        if abs(safety.dt - 1.0 / hz) > 1e-9:
            raise ValueError(f"safety layer period {safety.dt} s does not match the loop period {1.0 / hz} s")
        self.robot, self.agent, self.safety = robot, agent, safety
        self.hz, self.dt = float(hz), 1.0 / hz
        self.obs_keys = list(obs_keys) if obs_keys is not None else None
        self.blend, self.ensemble_decay = blend, ensemble_decay
        self.latency_offset_s, self.deadline_s = float(latency_offset_s), float(deadline_s)
        self.recorder = recorder
        self.realtime_priority = int(realtime_priority)
        self._stop = threading.Event()
        self._stats_lock = threading.Lock()

    def stop(self) -> None:
        """Ask a running loop to stop at the next tick (thread-safe)."""
        self._stop.set()

    # ------------------------------------------------------------------ run
    def run(self, duration_s: float) -> LoopStats:
        """Run for ``duration_s`` seconds (or until stopped or the robot is lost)."""
        stats = LoopStats(hz=self.hz)
        own_worker = not isinstance(self.agent, InferenceWorker)
        worker = InferenceThread(self.agent) if own_worker else cast(InferenceWorker, self.agent)
        n_obs = int(worker.n_obs_steps)
        history: deque = deque(maxlen=n_obs)
        schedule: ActionSchedule | None = None

        def on_chunk(obs_time: float, chunk: np.ndarray, latency: float) -> None:
            chunk = chunk.reshape(-1, chunk.shape[-1])  # (n, Da)
            ts = obs_time + np.arange(len(chunk)) * self.dt + self.latency_offset_s
            assert schedule is not None  # made before the worker starts
            dropped = schedule.add_chunk(obs_time, ts, chunk)
            with self._stats_lock:
                stats.chunks += 1
                stats.inference.append(latency)
                stats.dropped_actions += dropped

        old_switch = sys.getswitchinterval()
        sys.setswitchinterval(5e-4)  # let the control thread preempt inference's Python code quickly
        old_sched = self._enter_realtime()
        holding: str | None = None
        resync = True
        try:
            _, obs = self.robot.get_observation()
            self._check_spec(obs)
            self.safety.reset(self.safety.position_from_obs(obs))
            t0 = time.monotonic() + self.dt
            schedule = ActionSchedule(t0, self.dt, self.blend, self.ensemble_decay)
            worker.start(on_chunk)
            k, last_start = 0, None
            n_ticks = int(math.floor(duration_s * self.hz))
            while k < n_ticks and not self._stop.is_set():
                t_k = t0 + k * self.dt
                self._sleep_until(t_k)
                start = time.monotonic()
                late = start - t_k
                if late >= self.dt:  # a whole period lost (the process was descheduled): skip, do not burst
                    skip = min(int(late // self.dt), n_ticks - k)
                    stats.missed_ticks += skip
                    k += skip
                    if k >= n_ticks:
                        break
                    t_k = t0 + k * self.dt
                    late = start - t_k
                if last_start is not None:
                    stats.periods.append(start - last_start)
                stats.lateness.append(late)
                last_start = start
                worker.poll()
                if worker.error is not None:
                    raise _InferenceFailed(worker.error)

                t_obs, obs = self.robot.get_observation()
                bad = self._bad_keys(obs)
                action: np.ndarray | None = None
                reason: str | None = None
                if bad:
                    reason = HOLD_BAD_OBS
                    history.clear()
                    schedule.clear(min_obs_time=t_obs)
                    if holding != reason:
                        _log.warning("hold: observation key(s) %s contain NaN/inf at tick %d", bad, k)
                else:
                    history.append(obs)
                    while len(history) < n_obs:
                        history.appendleft(obs)
                    if worker.idle:
                        worker.submit(self._stack(history), t_obs)
                    action, stale = schedule.take(k, oldest_obs_time=time.monotonic() - self.deadline_s)
                    stats.stale_actions += stale
                    if action is None:
                        reason = HOLD_STARTUP if stats.chunks == 0 else (HOLD_STALE if stale else HOLD_NO_ACTION)
                if action is not None:
                    try:
                        if resync:
                            self.safety.reset(self.safety.position_from_obs(obs))
                            resync = False
                        before = self.safety.interventions
                        command = self.safety.filter(action)
                        stats.interventions += self.safety.interventions - before
                    except SafetyError as e:
                        reason, command = HOLD_UNSAFE, None
                        if holding != reason:
                            _log.warning("hold: safety layer refused the action at tick %d: %s", k, e)
                if reason is None:
                    assert command is not None  # a filtered action: reason stays None only then
                    self.robot.send_action(t_k, command)
                    stats.actions_sent += 1
                    holding = None
                else:
                    if holding != reason and reason in (HOLD_NO_ACTION, HOLD_STALE):
                        _log.warning(
                            "hold (watchdog): %s at tick %d; last inference %.1f ms",
                            reason,
                            k,
                            stats.inference[-1] * 1e3 if stats.inference else float("nan"),
                        )
                    self.robot.hold(reason)
                    stats.holds[reason] += 1
                    holding, resync = reason, True
                    command = self.safety.hold_command()
                if self.recorder is not None and not bad and command is not None:
                    self.recorder.add(obs, command, t_obs, hold=reason is not None)
                stats.ticks += 1
                stats.tick_work.append(time.monotonic() - start)
                k += 1
            stats.stop_reason = "stopped" if self._stop.is_set() else "duration reached"
        except RobotConnectionError as e:
            stats.stop_reason = str(e)
            _log.error("control loop stopped: %s", e)
        except _InferenceFailed as e:
            stats.stop_reason = f"inference failed: {type(e.cause).__name__}: {e.cause}"
            _log.error("control loop stopped: %s; holding the arm", stats.stop_reason)
            self._try_hold("inference failed")
        except RobotError as e:
            stats.stop_reason = f"robot error: {e}"
            _log.error("control loop stopped: %s; holding the arm", e)
            self._try_hold("robot error")
        except KeyboardInterrupt:
            stats.stop_reason = "interrupted"
            self._try_hold("interrupted")
        else:
            self._try_hold("loop finished")
        finally:
            sys.setswitchinterval(old_switch)
            self._leave_realtime(old_sched)
            if own_worker:
                worker.stop()
        return stats

    # ------------------------------------------------------------------ helpers
    def _enter_realtime(self) -> tuple[int, Any] | None:
        if self.realtime_priority <= 0:
            return None
        old = (os.sched_getscheduler(0), os.sched_getparam(0))
        return old if set_realtime_priority(self.realtime_priority, "control loop") else None

    def _leave_realtime(self, old: tuple[int, Any] | None) -> None:
        if old is not None:
            os.sched_setscheduler(0, old[0], old[1])

    def _sleep_until(self, t: float) -> None:
        # Coarse sleep, then short sleeps for the last millisecond (time.sleep alone overshoots by up to ~1 ms).
        while True:
            remaining = t - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(remaining - 1e-3 if remaining > 2e-3 else remaining / 4 if remaining > 2e-4 else 0)

    def _try_hold(self, reason: str) -> None:
        try:
            self.robot.hold(reason)
        except RobotError as e:
            _log.error("could not hold the arm after stopping: %s", e)

    def _keys(self, obs: Mapping[str, np.ndarray]) -> list[str]:
        return self.obs_keys if self.obs_keys is not None else list(obs)

    def _check_spec(self, obs: Mapping[str, np.ndarray]) -> None:
        missing = [k for k in self._keys(obs) if k not in obs]
        if missing:
            raise RobotError(
                f"the robot's observation lacks key(s) {missing} that the policy needs; it sends {list(obs)}"
            )

    def _bad_keys(self, obs: Mapping[str, np.ndarray]) -> list[str]:
        keys = set(self._keys(obs)) | {self.safety.limits.position_key}
        bad = []
        for key in sorted(keys):
            x = obs.get(key)
            if x is None:
                raise RobotError(f"the robot's observation lacks key '{key}'")
            if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                bad.append(key)
        return bad

    def _stack(self, history: deque) -> dict[str, np.ndarray]:
        return {key: np.stack([o[key] for o in history]) for key in self._keys(history[-1])}  # (To, ...)


class _InferenceFailed(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause
