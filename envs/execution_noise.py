"""DART-style execution noise for scripted-expert collection (Meta-World and robosuite collectors alike).

The env executes the expert's command plus temporally correlated noise while the dataset records the command
itself. The expert, a closed-loop controller, is then shown correcting drift it would not cause on its own, which
is what a cloned policy needs after its own errors (Laskey et al., DART, 2017).
"""

from __future__ import annotations

import numpy as np

from core.errors import ConfigError


def check_execution_noise(std: float) -> float:
    """``std`` as a float, or a :class:`ConfigError` that says what is allowed (negative, NaN and inf are refused)."""
    if not 0.0 <= float(std) < float("inf"):  # also refuses NaN
        raise ConfigError(f"execution_noise must be a finite number >= 0 (0 = clean demos), got {std}")
    return float(std)


class ExecutionNoise:
    """AR(1) noise on the translation part of an action: ``n_t = ρ n_{t-1} + sqrt(1 - ρ²) σ ε_t`` (stationary
    std ``σ``), so perturbations last a few steps (ρ = 0.9: ~10 control steps) and move the arm
    off the expert's path instead of averaging out within a step."""

    def __init__(self, std: float, corr: float = 0.9, seed: int = 0, dims: int = 3) -> None:
        if not 0.0 <= corr < 1.0:
            raise ValueError(f"execution noise needs 0 <= corr < 1, got corr={corr}")
        self.std, self.corr, self.dims = check_execution_noise(std), float(corr), int(dims)
        self.rng = np.random.default_rng(seed)
        self.state = self.rng.normal(0.0, self.std, self.dims)

    @classmethod
    def for_episode(cls, std: float, seed: int) -> ExecutionNoise:
        """The noise of the episode with demo seed ``seed``: its own stream (``seed`` + an offset), so the env's
        initial state and the expert's noise stay those of ``seed`` and a demo can be replayed exactly."""
        return cls(std, seed=seed + 7_919)

    def __call__(self, action: np.ndarray) -> np.ndarray:
        """``action`` with the next noise sample added to its first ``dims`` entries, clipped to [-1, 1]."""
        self.state = self.corr * self.state + np.sqrt(1.0 - self.corr**2) * self.rng.normal(0.0, self.std, self.dims)
        out = np.array(action, dtype=np.float64, copy=True)
        out[: self.dims] = np.clip(out[: self.dims] + self.state, -1.0, 1.0)
        return out
