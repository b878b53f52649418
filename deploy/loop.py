"""Fixed-rate control loop: the arm gets one command per period while inference runs beside it (a thread or, for
steady timing on a busy machine, a process: :mod:`deploy.inference`).

Each tick ``k`` (scheduled at ``t_k = t_0 + k·dt``) the control thread

1. reads the newest observation from the robot (a NaN/inf in it → hold, history cleared, reason logged; a key, shape
   or dtype that differs from the first observation → the loop stops, holding the arm);
2. collects finished chunks and hands the last ``n_obs_steps`` observations to inference if it is idle;
3. sends the action scheduled for slot ``k`` through the safety layer (which works from the measured arm position),
   or holds when there is none (watchdog). A hold of a moving arm decelerates within the safety limits
   (:meth:`deploy.safety.SafetyLayer.brake`, sent as actions); only an arm at rest gets the robot's ``hold``.

Scheduling. A chunk's first action goes to the first tick that starts after the chunk is expected back: at
submission, ``expected = submit time + latency budget`` where the budget is the 99th percentile of the last 50
measured inference latencies plus 25 % and 1 ms (0 before the first chunk), and action ``i`` gets slot
``s_0 + i`` with ``s_0`` the first slot starting at or after ``expected`` (plus ``latency_offset_s``, e.g. the robot's
actuation delay). So the first action of a chunk is not routinely due before it exists. A chunk that arrives after
its first slot started is an *inference deadline miss* (counted); its actions already due are dropped (counted),
and an action is only ever executed in its own slot, so a late chunk never moves the arm with stale commands.
Actions planned from an observation older than ``deadline_s`` are not executed either (watchdog). Slots covered by
several chunks use the newest chunk (``blend="latest"``) or a weighted mean (``blend="ensemble"``, ACT's temporal
ensembling: weight ``exp(-ensemble_decay·i)``, ``i = 0`` for the oldest).

Timing. The period jitter of the tick starts is what the loop promises (``jitter_ms``; ``send_jitter_ms`` is the
same for the moments commands leave). Three things keep a tick on time on a busy machine without privileges:

* the control thread sleeps until 1 ms before a tick, then in steps of at most 0.2 ms, and (``spin_s > 0``) spins
  the last ``spin_s``; on Linux it asks for a 1 µs timer slack and, on EEVDF kernels (6.6+), the shortest scheduler
  slice (0.1 ms, ``sched_setattr``, no privileges needed), so its wake-ups may preempt a busy core at once instead of
  waiting for the running task's slice and the next scheduler tick (4 ms at HZ=250). Spinning was measured worse
  there: a spinning thread uses up its slice and is preempted mid-spin (``docs/results/deploy-bench/``);
* the next observation is requested 2 ms before its tick (:meth:`deploy.robot.Robot.request_observation`), so the
  round trip overlaps the sleep, and an action's ``ack`` is collected at the next request, not waited for;
* inference runs in its own process and session (:mod:`deploy.inference`).

``realtime_priority > 0`` adds SCHED_FIFO where allowed (CAP_SYS_NICE). The control thread's CPU share and its
spin's are reported.

Whatever goes wrong inside the loop (robot error, inference error, an exception of any kind) ends with the arm held
and the reason in ``stop_reason``; the loop returns its statistics instead of raising.
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

from core.errors import ConfigError, check_choice, check_number
from deploy.inference import InferenceThread, InferenceWorker, set_realtime_priority
from deploy.robot import Robot, RobotConnectionError, RobotError
from deploy.safety import SafetyError, SafetyLayer
from deploy.sched import SHORT_SLICE_S, favour_io_threads, set_slice

BLENDS = ("latest", "ensemble")
_log = logging.getLogger(__name__)

# Hold reasons (keys of LoopStats.holds).
HOLD_STARTUP = "startup"  # no chunk has arrived yet
HOLD_NO_ACTION = "no_action"  # watchdog: nothing scheduled for this slot (inference late)
HOLD_STALE = "stale"  # watchdog: only actions planned from observations older than the deadline
HOLD_BAD_OBS = "nan_observation"  # the observation had NaN/inf
HOLD_UNSAFE = "unsafe_action"  # the safety layer refused the action (NaN/inf, wrong shape)
DEFAULT_SPIN_S = 0.0  # spin this long before each tick (see the module doc)
FINE_S, FINE_STEP_S = 1e-3, 2e-4  # the last millisecond before a tick is slept in steps of at most 0.2 ms
PREFETCH_S = 2e-3  # the next observation is requested this long before its tick


class Agent(Protocol):
    """What the loop needs from a policy (a :class:`policies.policy.Policy` or a scripted expert)."""

    n_obs_steps: int

    def reset(self) -> None: ...

    def predict_action(self, obs: Mapping[str, np.ndarray]) -> np.ndarray: ...


class Recorder(Protocol):
    def add(self, obs: Mapping[str, np.ndarray], action: np.ndarray, timestamp: float, hold: bool) -> None: ...


class ChunkRecorder(Protocol):
    def add(self, window: Mapping[str, np.ndarray], chunk: np.ndarray, obs_time: float) -> None: ...


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
    deadline_misses: int = 0  # chunks that arrived after the tick of their first action had started
    stale_actions: int = 0  # planned from an observation older than the deadline
    holds: Counter = field(default_factory=Counter)  # ticks without a policy action, by reason
    braking: Counter = field(default_factory=Counter)  # of those, ticks that decelerated a moving arm
    interventions: int = 0  # commands the safety layer changed
    reanchors: int = 0  # measured jumps beyond the safety layer's tolerance
    workspace_clips: int = 0  # ticks where the workspace box overrode the rate limits
    stop_reason: str = ""
    spin_s: float = 0.0  # seconds spent spinning before ticks
    cpu_s: float = 0.0  # CPU seconds of the control thread
    wall_s: float = 0.0
    periods: list = field(default_factory=list, repr=False)
    lateness: list = field(default_factory=list, repr=False)
    tick_work: list = field(default_factory=list, repr=False)
    sends: list = field(default_factory=list, repr=False)  # when each tick's command left the loop
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
            "send_jitter_ms": _percentiles([abs(p - dt) for p in np.diff(self.sends)] if len(self.sends) > 1 else []),
            "lateness_ms": _percentiles(self.lateness),
            "tick_work_ms": _percentiles(self.tick_work),
            "inference_ms": _percentiles(self.inference),
            "chunks": self.chunks,
            "actions_sent": self.actions_sent,
            "dropped_actions": self.dropped_actions,
            "inference_deadline_misses": self.deadline_misses,
            "stale_actions": self.stale_actions,
            "holds": dict(self.holds),
            "braking_ticks": dict(self.braking),
            "watchdog_holds": self.watchdog_holds,
            "safety_interventions": self.interventions,
            "safety_reanchors": self.reanchors,
            "safety_workspace_clips": self.workspace_clips,
            "spin_cpu_fraction": self.spin_s / self.wall_s if self.wall_s > 0 else float("nan"),
            "control_cpu_fraction": self.cpu_s / self.wall_s if self.wall_s > 0 else float("nan"),
            "stop_reason": self.stop_reason,
        }

    def format(self) -> str:
        s = self.summary()
        return (
            f"{s['ticks']} ticks at {self.hz:g} Hz ({s['missed_ticks']} missed); "
            f"period p50 {s['period_ms']['p50']:.2f} ms, "
            f"jitter p50/p99 {s['jitter_ms']['p50']:.2f}/{s['jitter_ms']['p99']:.2f} ms; inference p50/p99 "
            f"{s['inference_ms']['p50']:.2f}/{s['inference_ms']['p99']:.2f} ms, "
            f"{s['inference_deadline_misses']} deadline misses; {s['actions_sent']} actions, "
            f"{s['dropped_actions']} dropped as due, {s['stale_actions']} stale; holds {s['holds']} "
            f"(braking {s['braking_ticks']}); stop: {s['stop_reason']}"
        )


class ActionSchedule:
    """Timestamped actions by control slot, shared by the inference thread (writer) and the control thread."""

    def __init__(self, t0: float, dt: float, blend: str = "latest", ensemble_decay: float = 0.01) -> None:
        check_choice("blend", blend, BLENDS)
        check_number("ensemble_decay", ensemble_decay, 0.0)
        self.t0, self.dt, self.blend, self.decay = t0, dt, blend, ensemble_decay
        self._lock = threading.Lock()
        self._slots: dict[int, list[tuple[int, float, np.ndarray]]] = {}  # slot -> [(chunk seq, obs time, action)]
        self._executing = -1
        self._seq = 0
        self._floor = -float("inf")  # chunks planned from observations before this time are refused

    def slot_of(self, timestamp: float) -> int:
        return int(round((timestamp - self.t0) / self.dt))

    @property
    def executing(self) -> int:
        """The slot being executed (-1 before the first)."""
        with self._lock:
            return self._executing

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


class LatencyBudget:
    """How long inference is expected to take: the 90th percentile of the last ``window`` latencies, plus 25 % and
    ``margin_s``, at most ``cap_s`` (0 before the first measurement). A rarer, longer call is a counted deadline
    miss rather than a delay of every chunk."""

    def __init__(self, window: int = 50, margin_s: float = 1e-3, cap_s: float = 0.1) -> None:
        self._recent: deque = deque(maxlen=window)
        self.margin_s, self.cap_s = margin_s, cap_s

    def add(self, latency_s: float) -> None:
        self._recent.append(float(latency_s))

    @property
    def seconds(self) -> float:
        if not self._recent:
            return 0.0
        return min(self.cap_s, 1.25 * float(np.percentile(np.asarray(self._recent), 90)) + self.margin_s)


class ControlLoop:
    """Drive ``robot`` with ``agent`` at ``hz`` through ``safety``; :meth:`run` returns :class:`LoopStats`.

    Args:
        robot: the arm (e.g. :class:`deploy.robot.BridgeRobot`).
        agent: has ``n_obs_steps``, ``reset()`` and ``predict_action(obs {key: (To, ...)}) -> (n, Da)`` (run in a
            thread), or an :class:`deploy.inference.InferenceProcess` (its own process; the caller stops it).
        safety: applied to every action, with the measured arm position of the same tick.
        hz: control rate.
        obs_keys: observation keys the agent reads (default: all keys the robot sends).
        blend: ``"latest"`` or ``"ensemble"`` chunk hand-over.
        latency_offset_s: extra delay (>= 0) added to every action's slot time, e.g. the robot's actuation latency.
        deadline_s: actions planned from observations older than this are not executed (watchdog).
        recorder: gets every tick's observation and executed command (holds included, flagged).
        realtime_priority: > 0 runs the control thread under SCHED_FIFO at this priority (needs CAP_SYS_NICE;
            a warning if refused). Worth it only with inference in a process: a thread shares the interpreter lock.
        spin_s: the control thread sleeps until this long before each tick, then spins (0: sleep only).
        chunk_log: gets every inference call's observation window and chunk, in call order.
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
        spin_s: float = DEFAULT_SPIN_S,
        chunk_log: ChunkRecorder | None = None,
    ) -> None:
        check_number("hz", hz, 0.0, low_open=True)
        check_choice("blend", blend, BLENDS)
        check_number("ensemble_decay", ensemble_decay, 0.0)
        check_number("latency_offset_s", latency_offset_s, 0.0)
        check_number("deadline_s", deadline_s, 0.0, low_open=True)
        check_number("spin_s", spin_s, 0.0, 1.0 / hz, high_open=True)
        if abs(safety.dt - 1.0 / hz) > 1e-9:
            raise ConfigError(f"safety layer period {safety.dt} s does not match the loop period {1.0 / hz} s")
        self.robot, self.agent, self.safety = robot, agent, safety
        self.hz, self.dt = float(hz), 1.0 / hz
        self.obs_keys = list(obs_keys) if obs_keys is not None else None
        self.blend, self.ensemble_decay = blend, ensemble_decay
        self.latency_offset_s, self.deadline_s = float(latency_offset_s), float(deadline_s)
        self.recorder = recorder
        self.realtime_priority = int(realtime_priority)
        self.spin_s = float(spin_s)
        self.chunk_log = chunk_log
        self._stop = threading.Event()
        self._stats_lock = threading.Lock()

    def stop(self) -> None:
        """Ask a running loop to stop at the next tick (thread-safe)."""
        self._stop.set()

    # ------------------------------------------------------------------ run
    def run(self, duration_s: float) -> LoopStats:
        """Run for ``duration_s`` seconds (or until stopped, the robot is lost or anything fails); the arm is left
        holding and the reason is in ``stop_reason``."""
        check_number("duration_s", duration_s, 0.0, low_open=True)
        stats = LoopStats(hz=self.hz)
        own_worker = not isinstance(self.agent, InferenceWorker)
        worker = InferenceThread(self.agent) if own_worker else cast(InferenceWorker, self.agent)
        n_obs = int(worker.n_obs_steps)
        history: deque = deque(maxlen=n_obs)
        schedule: ActionSchedule | None = None
        budget = LatencyBudget(cap_s=self.deadline_s / 2)
        first_slot: dict[float, int] = {}  # obs_time of a submitted history -> slot of its chunk's first action
        windows: dict[float, dict[str, np.ndarray]] = {}  # obs_time -> submitted window (for chunk_log)

        def on_chunk(obs_time: float, chunk: np.ndarray, latency: float) -> None:
            chunk = chunk.reshape(-1, chunk.shape[-1])  # (n, Da)
            assert schedule is not None  # made before the worker starts
            with self._stats_lock:
                s0 = first_slot.pop(obs_time, None)
                window = windows.pop(obs_time, None)
            if self.chunk_log is not None and window is not None:
                self.chunk_log.add(window, chunk, obs_time)
            if s0 is None:  # not planned (cannot happen with the loop's own submissions): the next slot
                s0 = schedule.executing + 1
            missed = s0 <= schedule.executing
            ts = schedule.t0 + (s0 + np.arange(len(chunk))) * self.dt + self.latency_offset_s
            dropped = schedule.add_chunk(obs_time, ts, chunk)
            with self._stats_lock:
                budget.add(latency)
                stats.chunks += 1
                stats.inference.append(latency)
                stats.dropped_actions += dropped
                stats.deadline_misses += int(missed)

        old_switch = sys.getswitchinterval()
        sys.setswitchinterval(5e-4)  # let the control thread preempt inference's Python code quickly
        old_sched = self._enter_realtime()
        set_slice(0, SHORT_SLICE_S)
        favour_io_threads(self.realtime_priority)
        cpu0, wall0 = time.thread_time(), time.monotonic()
        self._spun = 0.0
        holding: str | None = None
        spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        k = 0
        try:
            _, obs = self.robot.get_observation()
            self._check_spec(obs)
            spec = {key: (np.shape(x), np.asarray(x).dtype) for key, x in obs.items()}
            if own_worker:  # the first call pays for lazy initialisation; the episode's noise restarts at start()
                self.agent.predict_action(self._stack(deque([obs] * n_obs)))  # type: ignore[union-attr]
            _, obs = self.robot.get_observation()
            self.safety.reset(self.safety.position_from_obs(obs))
            t0 = time.monotonic() + self.dt
            schedule = ActionSchedule(t0, self.dt, self.blend, self.ensemble_decay)
            worker.start(on_chunk)
            last_start = None
            n_ticks = int(math.floor(duration_s * self.hz))
            while k < n_ticks and not self._stop.is_set():
                t_k = t0 + k * self.dt
                self._sleep_until(t_k - PREFETCH_S)
                self.robot.request_observation()  # its round trip overlaps the rest of the sleep
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
                self._check_unchanged(obs, spec, k)
                measured = self._measured(obs)
                bad = self._bad_keys(obs)
                action: np.ndarray | None = None
                command: np.ndarray | None = None
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
                        expected = time.monotonic() + budget.seconds
                        window = self._stack(history)
                        with self._stats_lock:
                            first_slot[t_obs] = max(k + 1, math.ceil((expected - t0) / self.dt - 1e-9))
                            if self.chunk_log is not None:
                                windows[t_obs] = window
                        worker.submit(window, t_obs)
                    action, stale = schedule.take(k, oldest_obs_time=time.monotonic() - self.deadline_s)
                    stats.stale_actions += stale
                    if action is None:
                        reason = HOLD_STARTUP if stats.chunks == 0 else (HOLD_STALE if stale else HOLD_NO_ACTION)
                if action is not None:
                    try:
                        before = (self.safety.interventions, self.safety.reanchors, self.safety.workspace_clips)
                        command = self.safety.filter(action, measured, t_obs)
                        stats.interventions += self.safety.interventions - before[0]
                        stats.reanchors += self.safety.reanchors - before[1]
                        stats.workspace_clips += self.safety.workspace_clips - before[2]
                    except SafetyError as e:
                        reason, command = HOLD_UNSAFE, None
                        if holding != reason:
                            _log.warning("hold: safety layer refused the action at tick %d: %s", k, e)
                stats.sends.append(time.monotonic())
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
                    command = self._hold(reason, measured, t_obs, t_k, stats)
                    stats.holds[reason] += 1
                    holding = reason
                if self.recorder is not None and not bad and command is not None:
                    self.recorder.add(obs, command, t_obs, hold=reason is not None)
                stats.ticks += 1
                stats.tick_work.append(time.monotonic() - start)
                k += 1
            stats.stop_reason = "stopped" if self._stop.is_set() else "duration reached"
        except RobotConnectionError as e:
            stats.stop_reason = str(e)
            _log.error("control loop stopped: %s", e)
            self._try_hold("connection lost")  # the robot may still be there (a reply was lost)
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
        # Whatever else fails inside the loop (a bug, a bad value), the arm is left holding and the cause reported.
        except Exception as e:
            stats.stop_reason = f"loop error at tick {k}: {type(e).__name__}: {e}"
            _log.exception("control loop stopped: %s; holding the arm", stats.stop_reason)
            self._try_hold("loop error")
        else:
            self._try_hold("loop finished")
        finally:
            stats.spin_s = self._spun
            set_slice(0, 0.0)
            stats.cpu_s, stats.wall_s = time.thread_time() - cpu0, time.monotonic() - wall0
            sys.setswitchinterval(old_switch)
            self._leave_realtime(old_sched)
            if own_worker:
                worker.stop()
        return stats

    # ------------------------------------------------------------------ helpers
    def _hold(self, reason: str, measured: np.ndarray | None, t_obs: float, t_k: float, stats: LoopStats) -> np.ndarray:
        """Hold the arm: decelerate it within the safety limits while it moves, then the robot's own hold."""
        if not self.safety.at_rest:
            command = self.safety.brake(measured, t_obs)
            if command is not None:
                self.robot.send_action(t_k, command)
                stats.braking[reason] += 1
                return command
        self.robot.hold(reason)
        self.safety.settle(measured)
        return self.safety.hold_command()

    def _measured(self, obs: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The measured arm position, or None when it is not finite (the layer then uses its last target)."""
        position = self.safety.position_from_obs(obs)
        return position if np.isfinite(position).all() else None

    def _enter_realtime(self) -> tuple[int, Any] | None:
        if self.realtime_priority <= 0:
            return None
        old = (os.sched_getscheduler(0), os.sched_getparam(0))
        return old if set_realtime_priority(self.realtime_priority, "control loop") else None

    def _leave_realtime(self, old: tuple[int, Any] | None) -> None:
        if old is not None:
            os.sched_setscheduler(0, old[0], old[1])

    def _sleep_until(self, t: float) -> None:
        """Sleep until ``FINE_S`` before ``t``, then in steps of at most ``FINE_STEP_S``, then spin the last
        ``spin_s``: each short sleep is a wake-up that a short scheduler slice lets preempt a busy core, and the
        last one lands close to ``t`` (see the module doc for what was measured)."""
        while True:
            remaining = t - time.monotonic()
            if remaining <= self.spin_s:
                break
            if remaining > FINE_S:
                time.sleep(remaining - FINE_S)
            else:
                time.sleep(min(FINE_STEP_S, remaining - self.spin_s))
        spin_start = time.monotonic()
        while time.monotonic() < t:
            pass
        self._spun += time.monotonic() - spin_start

    def _try_hold(self, reason: str) -> None:
        try:
            self.robot.hold(reason)
        # The arm must be asked to hold whatever the robot link did before; a failure here is only reported.
        except Exception as e:
            _log.error("could not hold the arm after stopping: %s: %s", type(e).__name__, e)

    def _keys(self, obs: Mapping[str, np.ndarray]) -> list[str]:
        return self.obs_keys if self.obs_keys is not None else list(obs)

    def _check_spec(self, obs: Mapping[str, np.ndarray]) -> None:
        missing = [k for k in self._keys(obs) if k not in obs]
        if missing:
            raise RobotError(
                f"the robot's observation lacks key(s) {missing} that the policy needs; it sends {list(obs)}"
            )

    def _check_unchanged(
        self, obs: Mapping[str, np.ndarray], spec: Mapping[str, tuple[tuple[int, ...], np.dtype]], k: int
    ) -> None:
        """The observation keeps the keys, shapes and dtypes of the first one (else :class:`RobotError`)."""
        for key, (shape, dtype) in spec.items():
            x = obs.get(key)
            if x is None:
                raise RobotError(f"the robot's observation lost key '{key}' at tick {k}; it sends {sorted(obs)}")
            if np.shape(x) != shape or np.asarray(x).dtype != dtype:
                raise RobotError(
                    f"the robot's observation '{key}' changed from {dtype} {list(shape)} to "
                    f"{np.asarray(x).dtype} {list(np.shape(x))} at tick {k}"
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
