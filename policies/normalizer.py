"""Per-key linear normalizer: maps each key's fitted [min, max] to [-1, 1].

An ``nn.Module`` whose statistics are buffers, so they travel in the policy's state_dict and in its
checkpoint: a saved policy always carries the stats it was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from core.errors import MfpError

_FIELDS = ("scale", "offset", "min", "max")
# Ranges narrower than this are treated as constant: the key is centred, not stretched (avoids division by ~0).
_MIN_RANGE = 1e-4


class NormalizerError(MfpError, ValueError):
    """Stats missing for a key, or stats whose shape does not match the data."""


class LinearNormalizer(nn.Module):
    """``y = x * scale + offset`` per key; image keys (``uint8`` 0..255) use a fixed scale to [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self._keys: list[str] = []

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def fit(
        self, stats: Mapping[str, Mapping[str, np.ndarray]], output_range: tuple[float, float] = (-1.0, 1.0)
    ) -> None:
        """Set scale/offset from ``{key: {"min": array, "max": array}}`` (per-feature limits over the training set)."""
        lo_out, hi_out = output_range
        for key, s in stats.items():
            lo = torch.as_tensor(np.asarray(s["min"]), dtype=torch.float32)
            hi = torch.as_tensor(np.asarray(s["max"]), dtype=torch.float32)
            if lo.shape != hi.shape:
                raise NormalizerError(
                    f"normalizer stats for '{key}': min shape {tuple(lo.shape)} != max {tuple(hi.shape)}"
                )
            if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
                raise NormalizerError(f"normalizer stats for '{key}' contain NaN or inf; check the dataset")
            rng = hi - lo
            const = rng < _MIN_RANGE
            scale = torch.where(const, torch.ones_like(rng), (hi_out - lo_out) / rng.clamp_min(_MIN_RANGE))
            offset = torch.where(const, -lo, lo_out - lo * scale)
            self._set(key, scale, offset, lo, hi)

    def fit_image(self, key: str, channels: int) -> None:
        """Images: uint8 0..255 (or float 0..255) → float [0, 1]; the image encoder does its own normalization."""
        ones = torch.ones(channels, 1, 1)
        self._set(key, ones / 255.0, torch.zeros(channels, 1, 1), torch.zeros(channels, 1, 1), 255.0 * ones)

    def _set(self, key: str, scale: torch.Tensor, offset: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        for name, value in (("scale", scale), ("offset", offset), ("min", lo), ("max", hi)):
            self.register_buffer(f"{_safe(key)}__{name}", value.clone())
        if key not in self._keys:
            self._keys.append(key)

    def _params(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self._keys:
            raise NormalizerError(f"no normalizer stats for key '{key}'; known keys: {self._keys}")
        return getattr(self, f"{_safe(key)}__scale"), getattr(self, f"{_safe(key)}__offset")

    def stats(self, key: str) -> dict[str, torch.Tensor]:
        self._params(key)
        return {"min": getattr(self, f"{_safe(key)}__min"), "max": getattr(self, f"{_safe(key)}__max")}

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._params(key)
        self._check_broadcast(key, x, scale)
        return x.to(scale.dtype) * scale + offset

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        scale, offset = self._params(key)
        self._check_broadcast(key, y, scale)
        return (y - offset) / scale

    @staticmethod
    def _check_broadcast(key: str, x: torch.Tensor, scale: torch.Tensor) -> None:
        """Stats broadcast over leading dims: (D,) over (..., D); points (3,) over (..., N, 3); (C,1,1) over images."""
        try:
            ok = torch.broadcast_shapes(x.shape, scale.shape) == x.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise NormalizerError(
                f"'{key}': data shape {tuple(x.shape)} does not broadcast with the normalizer's shape "
                f"{tuple(scale.shape)}"
            )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``{"<key>/<scale|offset|min|max>": tensor}`` for a safetensors file."""
        out = {}
        for key in self._keys:
            for name in _FIELDS:
                out[f"{key}/{name}"] = getattr(self, f"{_safe(key)}__{name}").detach().cpu().contiguous()
        return out

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_tensors`; every key needs all four fields of equal shape."""
        keys: dict[str, dict[str, torch.Tensor]] = {}
        for flat, value in tensors.items():
            key, _, name = flat.rpartition("/")
            if not key or name not in _FIELDS:
                raise NormalizerError(f"unexpected normalizer entry '{flat}'")
            keys.setdefault(key, {})[name] = value
        for key, fields in keys.items():
            missing = [n for n in _FIELDS if n not in fields]
            if missing:
                raise NormalizerError(f"normalizer entry for '{key}' lacks {missing}")
            shapes = {tuple(v.shape) for v in fields.values()}
            if len(shapes) != 1:
                raise NormalizerError(f"normalizer entry for '{key}' has fields of different shapes {shapes}")
            for name, value in fields.items():
                if not torch.isfinite(value).all():
                    raise NormalizerError(f"normalizer entry '{key}/{name}' holds NaN or inf")
            if (fields["scale"] == 0).any():
                raise NormalizerError(f"normalizer entry '{key}/scale' holds zeros (actions could not be unnormalized)")
            self._set(key, fields["scale"], fields["offset"], fields["min"], fields["max"])


def _safe(key: str) -> str:
    """Buffer names cannot contain dots."""
    return key.replace(".", "__dot__")
