"""Observation/action specification (``shape_meta``): the one place where keys, types and shapes are declared.

Every dimension in the package (encoder inputs, normalizer keys, dataset layout, export signatures) is
derived from a :class:`ShapeMeta`. Datasets are the start of the data flow, so the spec lives here and
encoders, policies, envs and deploy import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import MfpError

# Key names used by the Meta-World environment, the zarr datasets and the default configs.
POINT_CLOUD = "point_cloud"
IMAGE = "image"
AGENT_POS = "agent_pos"
FULL_STATE = "full_state"
GOAL_POS = "goal_pos"
ACTION = "action"

# Observation types an encoder knows how to consume.
OBS_TYPES = ("point_cloud", "rgb", "low_dim")


class SpecError(MfpError, ValueError):
    """Raised when data does not match the declared observation/action spec."""


@dataclass(frozen=True)
class ObsSpec:
    """One observation key: its type and per-step shape (no batch or time dims).

    point_cloud: (N, 3) or (N, 6) with colour; rgb: (C, H, W) uint8 or float; low_dim: (D,).
    """

    key: str
    type: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.type not in OBS_TYPES:
            raise SpecError(f"observation '{self.key}': unknown type '{self.type}'; known: {', '.join(OBS_TYPES)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        expected_ndim = {"point_cloud": 2, "rgb": 3, "low_dim": 1}[self.type]
        if len(self.shape) != expected_ndim:
            raise SpecError(
                f"observation '{self.key}' of type {self.type} needs {expected_ndim} dims, got shape {self.shape}"
            )
        if any(s <= 0 for s in self.shape):
            raise SpecError(f"observation '{self.key}': shape {self.shape} has a non-positive dim")


@dataclass(frozen=True)
class ShapeMeta:
    """Observation keys (ordered) and the action dimension of a task."""

    obs: Mapping[str, ObsSpec]
    action_dim: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action_dim <= 0:
            raise SpecError(f"action_dim must be positive, got {self.action_dim}")
        if not self.obs:
            raise SpecError("shape_meta declares no observation keys")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShapeMeta:
        """Build from the config/JSON form ``{obs: {key: {type, shape}}, action: {shape: [Da]}}``."""
        try:
            obs_d = d["obs"]
            action_shape = list(d["action"]["shape"])
        except (KeyError, TypeError) as e:
            raise SpecError(f"shape_meta needs 'obs' and 'action.shape'; got keys {list(d)}") from e
        if len(action_shape) != 1:
            raise SpecError(f"action.shape must be [Da], got {action_shape}")
        obs = {k: ObsSpec(k, v["type"], tuple(v["shape"])) for k, v in obs_d.items()}
        return cls(obs=obs, action_dim=int(action_shape[0]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "obs": {k: {"type": s.type, "shape": list(s.shape)} for k, s in self.obs.items()},
            "action": {"shape": [self.action_dim]},
        }

    def keys_of(self, type_: str) -> list[str]:
        return [k for k, s in self.obs.items() if s.type == type_]

    def check_obs(self, obs: Mapping[str, Any], leading_dims: int) -> None:
        """Raise :class:`SpecError` naming the key if ``obs`` lacks a key, has a wrong shape or non-finite values.

        ``leading_dims`` is the number of dims before the per-step shape (e.g. 2 for (B, To, ...)).
        """
        missing = [k for k in self.obs if k not in obs]
        if missing:
            raise SpecError(f"observation is missing key(s) {missing}; expected {list(self.obs)}, got {list(obs)}")
        for k, s in self.obs.items():
            x = obs[k]
            shape = tuple(x.shape)
            if shape[leading_dims:] != s.shape or len(shape) != leading_dims + len(s.shape):
                raise SpecError(
                    f"observation '{k}' has shape {shape}; expected {leading_dims} leading dims then {s.shape}"
                )
            if not _all_finite(x):
                raise SpecError(f"observation '{k}' contains NaN or inf")


def _all_finite(x: Any) -> bool:
    """True unless floating-point ``x`` (a numpy array or a torch tensor, read through its own methods so this
    module needs no torch) holds NaN or inf."""
    if hasattr(x, "is_floating_point"):  # a torch tensor
        return bool(x.isfinite().all()) if x.is_floating_point() else True
    arr = np.asarray(x)
    return bool(np.isfinite(arr).all()) if np.issubdtype(arr.dtype, np.floating) else True
