"""Safety layer: every command leaving the control loop passes here. Limits come from a YAML file per robot.

The layer works from where the arm *is*. Each tick it gets the measured position of the arm (``position_key`` at
``position_index`` of the observation) and chooses the position it asks the arm to reach one period later, the
*target* ``p``. ``absolute`` commands send ``p``; ``delta`` commands (a displacement of ``delta_scale * command``
per period, Meta-World's end-effector actions) send ``(p - measured) / delta_scale``. The *asked velocity* is
``u = (p - measured) / dt``. For any input and any measured state inside the box, per control period ``dt``:

* every dimension of the command is within ``[lower, upper]``;
* the target ``p`` is inside the ``workspace`` box: a step that would leave it *from where the arm is* is clipped,
  and the arm is slowed early enough to stop inside;
* ``|u| <= max_velocity`` per axis: the arm is never asked to cover more than a period's travel from its measured
  position, however far it lags, so a stalled or lagging arm is not wound up;
* the asked velocities change by at most ``max_acceleration * dt`` per period and their change by at most
  ``max_jerk * dt`` (``franka::limitRate`` style). Holds obey the same limits: :meth:`SafetyLayer.brake` decelerates
  to rest, and only an arm at rest is handed to the robot's own hold;
* a NaN/inf or wrongly shaped command, or an arm measured outside the box, raises :class:`SafetyError` (the loop
  then holds the arm).

Two events are logged and counted instead of limited, because no command could satisfy every limit: a *re-anchor*,
when the measured position is further than ``jump_tolerance`` from the previous target (the arm was reset, pushed or
slipped; the layer restarts from rest where the arm is), and a *workspace clip*, when the arm itself moved (pushed,
or overshooting) so that it can no longer stop inside the box within the limits (the box wins).
``tests/test_deploy_safety.py`` drives the layer with simulated arms that lag, overshoot, are pushed and reset, and
checks every limit from the measured state on every tick that is not such an event.

How the limits are kept together: the acceleration is chosen from an interval that keeps the state in a set from
which the velocity limit can always be respected under the jerk limit (the bound ``a <= (J/A) (V - v)`` that
libfranka uses, made exact for the discrete step). The workspace needs look-ahead: a candidate is accepted only if
braking from the resulting state (the same jerk-limited rule aiming at zero velocity) stops inside the box. Braking
from the previous state is such a candidate, so a safe choice always exists; the layer takes the one closest to the
requested command. It is a limiter, not a planner: smooth commands pass unchanged, jumps are smoothed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import MfpError

COMMAND_KINDS = ("absolute", "delta")
_REQUIRED = (
    "name",
    "command",
    "action_dim",
    "lower",
    "upper",
    "position_dims",
    "workspace",
    "max_velocity",
    "max_acceleration",
    "max_jerk",
    "position_key",
    "position_index",
)
_OPTIONAL = ("delta_scale", "description", "jump_tolerance")
_log = logging.getLogger(__name__)
# Candidates tried between "brake" and "requested" when the requested acceleration cannot stop inside the box.
_N_CANDIDATES = 16


class SafetyError(MfpError, ValueError):
    """A command (or a limits file) the safety layer refuses."""


@dataclass(frozen=True)
class SafetyLimits:
    """Limits of one robot (see ``configs/robot/*.yaml``). Arrays are per action dim or per position dim."""

    name: str
    command: str
    lower: np.ndarray  # (Da,) command bounds
    upper: np.ndarray  # (Da,)
    position_dims: tuple[int, ...]  # action dims that move the arm (P of them)
    workspace_lower: np.ndarray  # (P,) position box
    workspace_upper: np.ndarray  # (P,)
    max_velocity: np.ndarray  # (P,) units/s
    max_acceleration: np.ndarray  # (P,) units/s^2
    max_jerk: np.ndarray  # (P,) units/s^3
    position_key: str  # observation key holding the measured position ...
    position_index: tuple[int, ...]  # ... at these indices (P of them)
    delta_scale: float = 1.0  # delta commands: position units per command unit
    jump_tolerance: np.ndarray | None = None  # (P,) re-anchor beyond this distance; None = 3 periods at max velocity

    @property
    def action_dim(self) -> int:
        return int(self.lower.shape[0])

    @classmethod
    def from_yaml(cls, path: str | Path) -> SafetyLimits:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise SafetyError(f"robot limits file '{path}' does not exist; see configs/robot/ for examples")
        with open(path) as f:
            data = yaml.safe_load(f)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> SafetyLimits:
        if not isinstance(d, Mapping):
            raise SafetyError(f"{source}: robot limits must be a mapping")
        missing = [k for k in _REQUIRED if k not in d]
        unknown = [k for k in d if k not in _REQUIRED + _OPTIONAL]
        if missing or unknown:
            raise SafetyError(f"{source}: missing key(s) {missing}, unknown key(s) {unknown}")
        if d["command"] not in COMMAND_KINDS:
            raise SafetyError(f"{source}: command '{d['command']}' unknown; known: {', '.join(COMMAND_KINDS)}")
        da = int(d["action_dim"])
        pdims = tuple(int(i) for i in d["position_dims"])
        if len(set(pdims)) != len(pdims) or any(not 0 <= i < da for i in pdims):
            raise SafetyError(f"{source}: position_dims {list(pdims)} must be distinct indices in 0..{da - 1}")
        ws = d["workspace"]
        if not isinstance(ws, Mapping) or set(ws) != {"lower", "upper"}:
            raise SafetyError(f"{source}: workspace must be a mapping with exactly 'lower' and 'upper'")

        def vec(value: Any, n: int, name: str, positive: bool = False) -> np.ndarray:
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
            if arr.shape != (n,) or not np.isfinite(arr).all():
                raise SafetyError(f"{source}: '{name}' must be {n} finite numbers, got {value!r}")
            if positive and (arr <= 0).any():
                raise SafetyError(f"{source}: '{name}' must be positive, got {value!r}")
            return arr

        p = len(pdims)
        limits = cls(
            name=str(d["name"]),
            command=d["command"],
            lower=vec(d["lower"], da, "lower"),
            upper=vec(d["upper"], da, "upper"),
            position_dims=pdims,
            workspace_lower=vec(ws["lower"], p, "workspace.lower"),
            workspace_upper=vec(ws["upper"], p, "workspace.upper"),
            max_velocity=vec(d["max_velocity"], p, "max_velocity", positive=True),
            max_acceleration=vec(d["max_acceleration"], p, "max_acceleration", positive=True),
            max_jerk=vec(d["max_jerk"], p, "max_jerk", positive=True),
            position_key=str(d["position_key"]),
            position_index=tuple(int(i) for i in d["position_index"]),
            delta_scale=float(d.get("delta_scale", 1.0)),
            jump_tolerance=(
                vec(d["jump_tolerance"], p, "jump_tolerance", positive=True)
                if d.get("jump_tolerance") is not None
                else None
            ),
        )
        if (limits.lower >= limits.upper).any():
            raise SafetyError(f"{source}: every 'lower' must be below its 'upper'")
        if (limits.workspace_lower >= limits.workspace_upper).any():
            raise SafetyError(f"{source}: every workspace.lower must be below its workspace.upper")
        if len(limits.position_index) != p:
            raise SafetyError(f"{source}: position_index needs {p} entries (one per position dim)")
        if not (math.isfinite(limits.delta_scale) and limits.delta_scale > 0):
            raise SafetyError(f"{source}: delta_scale must be a positive finite number")
        if limits.command == "delta":
            if limits.delta_scale <= 0:
                raise SafetyError(f"{source}: delta_scale must be positive")
            lo, hi = limits.lower[list(pdims)], limits.upper[list(pdims)]
            if (lo >= 0).any() or (hi <= 0).any():
                raise SafetyError(f"{source}: delta commands need lower < 0 < upper on the position dims (zero = stay)")
        else:
            lo, hi = limits.lower[list(pdims)], limits.upper[list(pdims)]
            if (lo > limits.workspace_lower).any() or (hi < limits.workspace_upper).any():
                raise SafetyError(f"{source}: absolute commands need [lower, upper] to contain the workspace box")
        return limits


class SafetyLayer:
    """Stateful filter applying :class:`SafetyLimits` at control period ``dt``, from the measured arm state; call
    :meth:`reset` with the measured position first."""

    def __init__(self, limits: SafetyLimits, dt: float) -> None:
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise SafetyError(f"control period must be a positive finite number of seconds, got {dt}")
        self.limits = limits
        self.dt = float(dt)
        pd = list(limits.position_dims)
        self._pd = pd
        self._lo_box = limits.workspace_lower
        self._hi_box = limits.workspace_upper
        vmax = limits.max_velocity.copy()
        if limits.command == "delta":
            # A delta command's bounds bound the displacement per period, i.e. the velocity.
            reach = np.minimum(-limits.lower[pd], limits.upper[pd]) * limits.delta_scale / self.dt
            vmax = np.minimum(vmax, reach * (1 - 1e-9))
        self._V = vmax
        self._A = limits.max_acceleration
        self._J = limits.max_jerk
        self._k = self._J / self._A
        self._den = 1.0 + self._k * self.dt
        horizon_s = 2.0 * (2.0 * self._A / self._J + 2.0 * self._V / self._A).max()
        self._horizon = int(min(4000, math.ceil(horizon_s / self.dt) + 10))
        tol = limits.jump_tolerance if limits.jump_tolerance is not None else 3.0 * self._V * self.dt
        if (tol <= 1.5 * self._V * self.dt).any():
            raise SafetyError(
                f"'{limits.name}': jump_tolerance {np.round(tol, 6).tolist()} must exceed 1.5 periods at max velocity "
                f"({np.round(1.5 * self._V * self.dt, 6).tolist()} at {1 / self.dt:g} Hz), or ordinary motion would "
                "count as a jump"
            )
        self.jump_tolerance = tol
        # An arm "at rest" can be handed to the robot's own hold (zero motion) within every limit.
        self._rest_v = 0.5 * np.minimum(self._A * self.dt, self._J * self.dt**2)
        self._rest_a = 0.5 * self._J * self.dt
        self._q: np.ndarray | None = None  # (P,) last target
        self._v = np.zeros(len(pd))  # (P,) last asked velocity
        self._a = np.zeros(len(pd))  # (P,) its last change per second
        self._t_meas = -math.inf  # capture time of the newest measurement used
        self._q_meas: np.ndarray | None = None
        self._last = np.clip(np.zeros(limits.action_dim), limits.lower, limits.upper)
        self.interventions = 0  # commands changed by more than rounding
        self.reanchors = 0  # measured jumps beyond jump_tolerance (logged)
        self.workspace_clips = 0  # ticks where the box overrode the rate limits (logged)
        self.outside_ticks = 0  # ticks with the arm measured outside the box (logged)
        self.events: list[str] = []  # what happened on the last filter/brake call ("reanchor", "workspace_clip")

    # ------------------------------------------------------------------ state
    def reset(self, position: np.ndarray) -> None:
        """Start from rest at the measured ``position`` (P,), which must be inside the workspace box."""
        position = self._check_position(position)
        self._q = position.copy()
        self._q_meas = position.copy()
        self._v[:] = 0.0
        self._a[:] = 0.0
        self._t_meas = -math.inf

    def _check_position(self, position: np.ndarray) -> np.ndarray:
        position = np.asarray(position, dtype=np.float64).reshape(-1)
        if position.shape != (len(self._pd),) or not np.isfinite(position).all():
            raise SafetyError(f"measured position {position} must be {len(self._pd)} finite numbers")
        if (position < self._lo_box).any() or (position > self._hi_box).any():
            raise SafetyError(
                f"measured position {np.round(position, 4).tolist()} is outside the workspace box "
                f"{self._lo_box.tolist()}..{self._hi_box.tolist()} of '{self.limits.name}'; move the arm inside "
                "or fix the workspace in its limits file"
            )
        return position

    def position_from_obs(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The measured position (P,) from the latest observation (``position_key`` at ``position_index``)."""
        key = self.limits.position_key
        if key not in obs:
            raise SafetyError(
                f"observation lacks '{key}', which the limits of '{self.limits.name}' read the position from"
            )
        x = np.asarray(obs[key], dtype=np.float64).reshape(-1)
        if x.shape[0] <= max(self.limits.position_index):
            raise SafetyError(
                f"observation '{key}' has {x.shape[0]} values; the limits read indices "
                f"{list(self.limits.position_index)}"
            )
        return x[list(self.limits.position_index)]

    def hold_command(self) -> np.ndarray:
        """The command that keeps the arm where it is (recorded for holds): zero delta / the last target."""
        cmd = self._last.copy()
        if self.limits.command == "delta":
            cmd[self._pd] = 0.0
        elif self._q is not None:
            cmd[self._pd] = self._q
        return cmd

    @property
    def at_rest(self) -> bool:
        """True when a zero-motion hold from here keeps every rate limit (asked velocity and its change ~ 0)."""
        return bool((np.abs(self._v) <= self._rest_v).all() and (np.abs(self._a) <= self._rest_a).all())

    def settle(self, position: np.ndarray | None = None) -> None:
        """Record that the robot holds (at rest, at the measured ``position`` if given and inside the box)."""
        if self._q is None:
            raise SafetyError("safety layer used before reset(position)")
        if position is not None:
            position = np.asarray(position, dtype=np.float64).reshape(-1)
            inside = (position >= self._lo_box).all() and (position <= self._hi_box).all()
            if position.shape == self._q.shape and np.isfinite(position).all() and inside:
                self._q = position.copy()
        self._v[:] = 0.0
        self._a[:] = 0.0

    @property
    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(last target, last asked velocity, its rate of change) on the position dims."""
        if self._q is None:
            raise SafetyError("safety layer used before reset(position)")
        return self._q.copy(), self._v.copy(), self._a.copy()

    # ------------------------------------------------------------------ filter
    def filter(
        self, command: np.ndarray, measured: np.ndarray | None = None, measured_time: float | None = None
    ) -> np.ndarray:
        """The safe version of ``command`` (Da,) for an arm measured at ``measured`` (P,), captured at
        ``measured_time`` (any clock; a measurement older than one already used is ignored); without a measurement
        the arm is assumed to be at the previous target. The layer's state advances to the result."""
        if self._q is None:
            raise SafetyError("safety layer used before reset(position); reset it from the first observation")
        command = np.asarray(command, dtype=np.float64)
        if command.shape != (self.limits.action_dim,):
            raise SafetyError(
                f"command has shape {command.shape}; '{self.limits.name}' takes ({self.limits.action_dim},)"
            )
        if not np.isfinite(command).all():
            raise SafetyError(f"command contains NaN or inf: {command.tolist()}")
        lim = self.limits
        self.events = []
        base = self._base(measured, measured_time)
        if not np.isfinite(base).all():
            raise SafetyError(f"measured position {base.tolist()} is not finite")
        if lim.command == "absolute" and not self._within_bounds(base):
            raise SafetyError(
                f"measured position {np.round(base, 4).tolist()} is outside the command bounds of "
                f"'{lim.name}' (the arm was pushed or slipped beyond them): no absolute target can start from there"
            )
        lo_box, hi_box = self._box_from(base)
        if measured is not None:
            self._check_jump(base)
        out = np.clip(command, lim.lower, lim.upper)
        target = base + lim.delta_scale * out[self._pd] if lim.command == "delta" else out[self._pd]
        target = np.clip(target, lo_box, hi_box)
        v, a = self._v, self._a
        lo, hi = self._accel_interval(v, a)
        a_req = np.clip(((target - base) / self.dt - v) / self.dt, lo, hi)
        a_brake = np.clip(-self._k * v / self._den, lo, hi)
        # Candidates from braking (m = 0, safe) to the request (m = M); keep the one nearest the request that can stop.
        frac = np.linspace(0.0, 1.0, _N_CANDIDATES + 1)[:, None]  # (M+1, 1)
        cands = a_brake[None] + frac * (a_req - a_brake)[None]  # (M+1, P)
        ok = self._can_stop(base[None], v[None], cands, lo_box, hi_box)  # (M+1, P)
        ok[0] = True
        best = ok.shape[0] - 1 - np.argmax(ok[::-1], axis=0)  # (P,) last ok index
        a_new = cands[best, np.arange(len(self._pd))]
        self._advance(base, a_new, out, lo_box, hi_box)
        if np.abs(out - command).max() > 1e-9:
            self.interventions += 1
        return out

    def brake(self, measured: np.ndarray | None = None, measured_time: float | None = None) -> np.ndarray | None:
        """A hold that decelerates: the command bringing the asked velocity towards rest within the acceleration and
        jerk limits (non-position dims keep their last value). Once :attr:`at_rest`, the robot's own hold is safe.
        None when no command can decelerate from where the arm is (an absolute arm outside its command bounds):
        then the robot's own hold is all there is."""
        if self._q is None:
            raise SafetyError("safety layer used before reset(position)")
        self.events = []
        base = self._base(measured, measured_time)
        if measured is not None and not np.isfinite(base).all():
            base = self._q.copy()  # no usable measurement: brake along the previous targets
        if self.limits.command == "absolute" and not self._within_bounds(base):
            return None
        out = self._last.copy()
        lo, hi = self._accel_interval(self._v, self._a)
        a_new = np.clip(-self._k * self._v / self._den, lo, hi)
        self._advance(base, a_new, out, *self._box_from(base))
        return out

    def _within_bounds(self, position: np.ndarray) -> bool:
        pd = self._pd
        return bool((position >= self.limits.lower[pd]).all() and (position <= self.limits.upper[pd]).all())

    def _box_from(self, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The box a target may lie in: the workspace, widened to the measured position when the arm is outside it
        (overshoot, a push), so that no step takes it further out and steps back in are allowed."""
        lo, hi = np.minimum(self._lo_box, base), np.maximum(self._hi_box, base)
        if (lo < self._lo_box).any() or (hi > self._hi_box).any():
            self.events.append("outside")
            self.outside_ticks += 1
            if self.outside_ticks <= 10 or self.outside_ticks % 100 == 0:
                _log.warning(
                    "safety: the arm is measured at %s, outside the workspace box; only steps back in are allowed",
                    np.round(base, 4).tolist(),
                )
        return lo, hi

    def _base(self, measured: np.ndarray | None, measured_time: float | None) -> np.ndarray:
        """Where the arm is: the newest measurement, else the previous target."""
        assert self._q is not None
        if measured is None:
            return self._q.copy()
        measured = np.asarray(measured, dtype=np.float64).reshape(-1)
        if measured_time is not None:
            if measured_time < self._t_meas and self._q_meas is not None:
                return self._q_meas.copy()  # an older observation than one already used: keep the newer one
            self._t_meas = float(measured_time)
        self._q_meas = measured.copy()
        return measured.copy()

    def _check_jump(self, base: np.ndarray) -> None:
        """Re-anchor (restart from rest here, logged) when the arm is far from where it was asked to go."""
        assert self._q is not None
        deviation = np.abs(base - self._q)
        if (deviation > self.jump_tolerance).any():
            self.reanchors += 1
            self.events.append("reanchor")
            _log.warning(
                "safety: re-anchored on the measured position %s, %s from the last target (tolerance %s): the arm "
                "was reset, pushed or slipped; restarting from rest there",
                np.round(base, 4).tolist(),
                np.round(deviation, 4).tolist(),
                np.round(self.jump_tolerance, 4).tolist(),
            )
            self._v[:] = 0.0
            self._a[:] = 0.0

    def _advance(
        self, base: np.ndarray, a_new: np.ndarray, out: np.ndarray, lo_box: np.ndarray, hi_box: np.ndarray
    ) -> None:
        """Apply the chosen acceleration from ``base``: set the position dims of ``out`` and the state."""
        lim, dt = self.limits, self.dt
        v_new = self._v + a_new * dt
        target = base + v_new * dt
        clipped = np.clip(target, lo_box, hi_box)
        if np.abs(clipped - target).max() > 1e-12 * (1 + np.abs(target).max()):
            self.workspace_clips += 1
            self.events.append("workspace_clip")
            if self.workspace_clips <= 10 or self.workspace_clips % 100 == 0:
                _log.warning(
                    "safety: the arm at %s cannot stop inside the workspace within the rate limits (pushed or "
                    "overshooting); the box wins (%d so far)",
                    np.round(base, 4).tolist(),
                    self.workspace_clips,
                )
            target = clipped
            v_new = (target - base) / dt
            a_new = np.clip((v_new - self._v) / dt, -self._A, self._A)  # keep the next interval non-empty
        if lim.command == "delta":
            out[self._pd] = np.clip((target - base) / lim.delta_scale, lim.lower[self._pd], lim.upper[self._pd])
        else:
            out[self._pd] = target
        self._q, self._v, self._a = target, v_new, a_new
        self._last = out.copy()

    def _accel_interval(self, v: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Accelerations allowed next: jerk-reachable, within ±A, and keeping |v| <= V enforceable."""
        dt, k, den, A, J, V = self.dt, self._k, self._den, self._A, self._J, self._V
        lo = np.maximum(np.maximum(a - J * dt, -A), -k * (V + v) / den)
        hi = np.minimum(np.minimum(a + J * dt, A), k * (V - v) / den)
        return lo, hi

    def _can_stop(
        self, q: np.ndarray, v: np.ndarray, a_next: np.ndarray, lo_box: np.ndarray, hi_box: np.ndarray
    ) -> np.ndarray:
        """For each candidate acceleration (C, P): can the arm, after taking it, brake to rest inside the box?"""
        dt, k, den = self.dt, self._k, self._den
        a = a_next
        v = v + a * dt
        q = q + v * dt
        ok = (q >= lo_box) & (q <= hi_box)
        done = np.zeros_like(ok)
        for _ in range(self._horizon):
            lo, hi = self._accel_interval(v, a)
            goal = -k * v / den
            a = np.clip(goal, lo, hi)
            # Once the braking rule is unconstrained it stays so: v shrinks by 1/den per step and the remaining
            # travel is exactly v / k (a geometric series), monotone from q.
            linear = (goal >= lo - 1e-12) & (goal <= hi + 1e-12) & ~done
            v = v + a * dt
            q = q + v * dt
            end = q + v / k
            inside = (q >= lo_box) & (q <= hi_box)
            ok &= inside | done
            ok &= ~linear | ((end >= lo_box) & (end <= hi_box))
            done |= linear
            if done.all():
                break
        return ok & done


def resolve_limits(name_or_path: str) -> Path:
    """A limits file: an existing path, or ``configs/robot/<name>.yaml`` shipped with the package."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = resources.files("configs") / "robot"
    candidate = shipped / f"{name_or_path}.yaml"
    if candidate.is_file():
        return Path(str(candidate))
    names = sorted(p.name[:-5] for p in shipped.iterdir() if p.name.endswith(".yaml"))
    raise SafetyError(f"robot limits '{name_or_path}' not found; pass a YAML path or one of: {', '.join(names)}")
