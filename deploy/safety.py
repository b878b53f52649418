"""Safety layer: every command leaving the control loop passes here. Limits come from a YAML file per robot.

Per control period ``dt`` the layer guarantees, for any input (up to float rounding):

* every dimension of the command is within ``[lower, upper]``;
* the *position* dimensions (joints or end-effector xyz) stay inside the ``workspace`` box, and their velocity,
  acceleration and jerk (finite differences of the commanded positions over ``dt``) stay within
  ``max_velocity``, ``max_acceleration`` and ``max_jerk`` per axis (``franka::limitRate`` style);
* a NaN/inf or wrongly shaped command raises :class:`SafetyError` (the loop then holds the arm).

Commands are either ``absolute`` (each command is a position target) or ``delta`` (each command is a displacement
of ``delta_scale * command`` per period, Meta-World's end-effector actions); the layer integrates deltas into the
commanded position. Non-position dimensions (a gripper) are only clipped to their bounds.

How the limits are kept together: the acceleration is chosen from an interval that keeps the state in a set from
which the velocity limit can always be respected under the jerk limit (the bound ``a <= (J/A) (V - v)`` that
libfranka uses, made exact for the discrete step). The workspace needs look-ahead: a candidate is accepted only if
braking from the resulting state (the same jerk-limited rule aiming at zero velocity) stops inside the box. Braking
from the previous state is such a candidate, so a safe choice always exists; the layer takes the one closest to the
requested command. It is a limiter, not a planner: smooth commands pass unchanged, jumps are smoothed.
"""

from __future__ import annotations

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
_OPTIONAL = ("delta_scale", "description")
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
        )
        if (limits.lower >= limits.upper).any():
            raise SafetyError(f"{source}: every 'lower' must be below its 'upper'")
        if (limits.workspace_lower >= limits.workspace_upper).any():
            raise SafetyError(f"{source}: every workspace.lower must be below its workspace.upper")
        if len(limits.position_index) != p:
            raise SafetyError(f"{source}: position_index needs {p} entries (one per position dim)")
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
    """Stateful filter applying :class:`SafetyLimits` at control period ``dt``; call :meth:`reset` first."""

    def __init__(self, limits: SafetyLimits, dt: float) -> None:
        if not dt > 0:
            raise SafetyError(f"control period must be positive, got {dt}")
        self.limits = limits
        self.dt = float(dt)
        pd = list(limits.position_dims)
        self._pd = pd
        self._other = [i for i in range(limits.action_dim) if i not in pd]
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
        self._q: np.ndarray | None = None  # (P,) last commanded position
        self._v = np.zeros(len(pd))
        self._a = np.zeros(len(pd))
        self._last = np.clip(np.zeros(limits.action_dim), limits.lower, limits.upper)
        self.interventions = 0  # commands changed by more than rounding

    # ------------------------------------------------------------------ state
    def reset(self, position: np.ndarray) -> None:
        """Start from rest at the measured ``position`` (P,), which must be inside the workspace box."""
        position = np.asarray(position, dtype=np.float64).reshape(-1)
        if position.shape != (len(self._pd),) or not np.isfinite(position).all():
            raise SafetyError(f"measured position {position} must be {len(self._pd)} finite numbers")
        if (position < self._lo_box).any() or (position > self._hi_box).any():
            raise SafetyError(
                f"measured position {np.round(position, 4).tolist()} is outside the workspace box "
                f"{self._lo_box.tolist()}..{self._hi_box.tolist()} of '{self.limits.name}'; move the arm inside "
                "or fix the workspace in its limits file"
            )
        self._q = position.copy()
        self._v[:] = 0.0
        self._a[:] = 0.0

    def position_from_obs(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The measured position (P,) from the latest observation (``position_key`` at ``position_index``)."""
        key = self.limits.position_key
        if key not in obs:
            raise SafetyError(
                f"observation lacks '{key}', which the limits of '{self.limits.name}' read the position from"
            )
        x = np.asarray(obs[key], dtype=np.float64).reshape(-1)
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
    def state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position, velocity, acceleration) of the last command on the position dims."""
        if self._q is None:
            raise SafetyError("safety layer used before reset(position)")
        return self._q.copy(), self._v.copy(), self._a.copy()

    # ------------------------------------------------------------------ filter
    def filter(self, command: np.ndarray) -> np.ndarray:
        """The safe version of ``command`` (Da,); the layer's state advances to it."""
        if self._q is None:
            raise SafetyError("safety layer used before reset(position); reset it from the first observation")
        command = np.asarray(command, dtype=np.float64)
        if command.shape != (self.limits.action_dim,):
            raise SafetyError(
                f"command has shape {command.shape}; '{self.limits.name}' takes ({self.limits.action_dim},)"
            )
        if not np.isfinite(command).all():
            raise SafetyError(f"command contains NaN or inf: {command.tolist()}")
        lim, dt = self.limits, self.dt
        out = np.clip(command, lim.lower, lim.upper)
        if lim.command == "delta":
            target = self._q + lim.delta_scale * out[self._pd]
        else:
            target = out[self._pd]
        target = np.clip(target, self._lo_box, self._hi_box)
        q, v, a = self._q, self._v, self._a
        lo, hi = self._accel_interval(v, a)
        a_req = np.clip(((target - q) / dt - v) / dt, lo, hi)
        a_brake = np.clip(-self._k * v / self._den, lo, hi)
        # Candidates from braking (m = 0, safe) to the request (m = M); keep the one nearest the request that can stop.
        frac = np.linspace(0.0, 1.0, _N_CANDIDATES + 1)[:, None]  # (M+1, 1)
        cands = a_brake[None] + frac * (a_req - a_brake)[None]  # (M+1, P)
        ok = self._can_stop(q[None], v[None], cands)  # (M+1, P)
        ok[0] = True
        best = ok.shape[0] - 1 - np.argmax(ok[::-1], axis=0)  # (P,) last ok index
        a_new = cands[best, np.arange(len(self._pd))]
        v_new = v + a_new * dt
        q_new = np.clip(q + v_new * dt, self._lo_box, self._hi_box)
        if lim.command == "delta":
            out[self._pd] = np.clip((q_new - q) / lim.delta_scale, lim.lower[self._pd], lim.upper[self._pd])
        else:
            out[self._pd] = q_new
        if np.abs(out - command).max() > 1e-9:
            self.interventions += 1
        self._q, self._v, self._a = q_new, v_new, a_new
        self._last = out.copy()
        return out

    def _accel_interval(self, v: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Accelerations allowed next: jerk-reachable, within ±A, and keeping |v| <= V enforceable."""
        dt, k, den, A, J, V = self.dt, self._k, self._den, self._A, self._J, self._V
        lo = np.maximum(np.maximum(a - J * dt, -A), -k * (V + v) / den)
        hi = np.minimum(np.minimum(a + J * dt, A), k * (V - v) / den)
        return lo, hi

    def _can_stop(self, q: np.ndarray, v: np.ndarray, a_next: np.ndarray) -> np.ndarray:
        """For each candidate acceleration (C, P): can the arm, after taking it, brake to rest inside the box?"""
        dt, k, den = self.dt, self._k, self._den
        lo_box, hi_box = self._lo_box, self._hi_box
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
    raise FileNotFoundError(f"robot limits '{name_or_path}' not found; pass a YAML path or one of: {', '.join(names)}")
