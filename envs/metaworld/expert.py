"""Scripted Meta-World experts (``metaworld.policies``) behind the agent interface.

An agent has ``reset()``, ``n_obs_steps`` and ``predict_action(obs) -> (n, Da)``; the expert reads only
``full_state`` and returns one action per call.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from core.spec import FULL_STATE
from envs.metaworld.env import ACTION_DIM, STATE_DIM, check_task


class ScriptedExpert:
    """The metaworld scripted policy of ``task``, optionally with Gaussian action noise.

    Args:
        task: v3 task name.
        noise_std: standard deviation of N(0, noise_std²) noise added to each action (then clipped to [-1, 1]).
        seed: seed of the noise generator; :meth:`reset` with a seed re-seeds it, so an episode seed fixes the
            noise too.
    """

    n_obs_steps = 1

    def __init__(self, task: str, noise_std: float = 0.0, seed: int | None = None) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        self.task = check_task(task)
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)
        policy_class: Any = ENV_POLICY_MAP[self.task]  # a concrete subclass per task; the map is typed by the base
        self._policy = policy_class()
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Start an episode; ``seed`` re-seeds the action noise."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def predict_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        """One action (1, 4) from ``obs[full_state]`` of shape (39,), (1, 39) or (1, 1, 39)."""
        if FULL_STATE not in obs:
            raise KeyError(f"the scripted expert needs observation key '{FULL_STATE}'; got {list(obs)}")
        state = np.asarray(obs[FULL_STATE], dtype=np.float64)
        if state.shape[-1] != STATE_DIM or state.size != STATE_DIM:
            raise ValueError(f"'{FULL_STATE}' must hold one {STATE_DIM}-d state, got shape {state.shape}")
        with warnings.catch_warnings():
            # metaworld's move() warns whenever its gain saturates the action; the action is clipped anyway.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            action = np.asarray(self._policy.get_action(state.reshape(STATE_DIM)), dtype=np.float32)
        if self.noise_std > 0:
            action = action + self._rng.normal(0.0, self.noise_std, size=ACTION_DIM).astype(np.float32)
        return np.clip(action, -1.0, 1.0).reshape(1, ACTION_DIM)
