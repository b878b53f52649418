"""The sampler's starting noise on the robot, drawn exactly as ``mfp eval`` draws it, without torch.

``mfp eval`` seeds each episode's noise with ``Policy.reset(seed)``: a CPU ``torch.Generator().manual_seed(seed)``
from which every chunk draws ``torch.randn((1, horizon, Da))``. :class:`EpisodeNoise` reproduces that stream with
numpy, so an exported graph fed this noise produces the chunks the evaluated checkpoint produced for the same
observations and seed (``tests/test_deploy_export.py`` checks the stream against torch for many seeds and shapes).

What torch does, for a float32 tensor on the CPU (``aten/src/ATen/native/cpu/DistributionTemplates.h``): its
generator is the 32-bit Mersenne Twister seeded with the low 32 bits of the seed (the same state as numpy's legacy
``RandomState(seed)``). With 16 or more values, each value first gets a uniform ``(w & (2**24 - 1)) / 2**24`` from one
32-bit word; then each complete block of 16 is turned into normals by Box-Muller (``u1 = 1 - x[j]``, ``u2 = x[j + 8]``
for ``j < 8``; ``r = sqrt(-2 log u1)``; ``x[j] = r cos(2 pi u2)``, ``x[j + 8] = r sin(2 pi u2)``), and when the count is
not a multiple of 16 the last 16 values are redrawn from 16 fresh words the same way. Fewer than 16 values are drawn
one at a time in double precision: two 53-bit uniforms from two words each (high word first), ``r = sqrt(-2 log(1 -
u2))``, value ``r cos(2 pi u1)``, and ``r sin(2 pi u1)`` is kept for the next value. torch evaluates the 16-value
transform with vectorized float32 approximations on AVX2 machines, so values agree to about 1e-6, not bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

_MASK24 = (1 << 24) - 1
_MASK53 = (1 << 53) - 1


class EpisodeNoise:
    """Standard normal draws in torch's CPU order for ``torch.Generator().manual_seed(seed)``; :meth:`reset`
    restarts the stream (a new episode)."""

    def __init__(self, seed: int) -> None:
        self.reset(seed)

    def reset(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"noise seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self._mt = np.random.RandomState(self.seed & 0xFFFFFFFF)
        self._cached: float | None = None  # the second value of the last double-precision Box-Muller pair

    def _words(self, n: int) -> np.ndarray:
        """The next ``n`` 32-bit outputs of the Mersenne Twister."""
        return self._mt.randint(0, 1 << 32, size=n, dtype=np.uint64)

    def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        """The next draw of ``torch.randn(shape)`` from this stream, float32."""
        n = math.prod(shape)
        if n >= 16:
            x = ((self._words(n) & _MASK24).astype(np.float32) * np.float32(2.0**-24)).astype(np.float32)
            out = np.empty(n, dtype=np.float64)
            full = n - n % 16
            if full:
                out[:full] = _box_muller_16(x[:full].reshape(-1, 16)).reshape(-1)
            if n % 16:
                tail = ((self._words(16) & _MASK24).astype(np.float32) * np.float32(2.0**-24)).astype(np.float32)
                out[n - 16 :] = _box_muller_16(tail.reshape(1, 16)).reshape(-1)
            return out.astype(np.float32).reshape(shape)
        values = np.empty(n, dtype=np.float64)
        for i in range(n):
            if self._cached is not None:
                values[i], self._cached = self._cached, None
                continue
            w = self._words(4)
            u1 = ((int(w[0]) << 32 | int(w[1])) & _MASK53) * 2.0**-53
            u2 = ((int(w[2]) << 32 | int(w[3])) & _MASK53) * 2.0**-53
            r = math.sqrt(-2.0 * math.log1p(-u2))
            theta = 2.0 * math.pi * u1
            self._cached = r * math.sin(theta)
            values[i] = r * math.cos(theta)
        return values.astype(np.float32).reshape(shape)


def _box_muller_16(x: np.ndarray) -> np.ndarray:
    """Blocks ``(B, 16)`` of float32 uniforms -> normals (float64), torch's pairing within each block."""
    u1 = (np.float32(1.0) - x[:, :8]).astype(np.float64)
    u2 = x[:, 8:].astype(np.float64)
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)], axis=1)
