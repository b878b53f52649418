"""Scripted experts of the multimodal tasks behind the agent interface (``reset``, ``n_obs_steps``,
``predict_action``): one strategy, the mixed expert that draws a strategy per episode from its seed, and the
averaged expert whose action is the mean of every strategy's action in the current state.

Strategies are functions of the last two observations, ``(full_state (D,), previous full_state (D,)) -> action
(4,)`` (the phase is read from them; a policy sees as much with ``n_obs_steps=2``), so the averaged expert is well
defined anywhere, including the states that only averaging reaches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.spec import FULL_STATE
from envs.multimodal.tasks import MultimodalTask, get_task

ACTION_DIM = 4
MIX_STREAM = 0x6D6D  # keeps the strategy draw apart from every other use of the episode seed


def strategy_for_seed(seed: int, names: Sequence[str], mix: Sequence[float] | None = None) -> str:
    """The strategy a mixed expert follows in the episode of ``seed``; ``mix`` holds the probabilities of
    ``names`` (default: uniform)."""
    p = np.full(len(names), 1.0 / len(names)) if mix is None else np.asarray(mix, dtype=np.float64)
    if p.shape != (len(names),) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"mix must be {len(names)} probabilities summing to 1 (for {list(names)}), got {mix}")
    return str(names[np.random.default_rng([MIX_STREAM, int(seed)]).choice(len(names), p=p)])


def _states(obs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The latest full state of ``obs`` and the one before it (the latest again when only one step is given);
    ``full_state`` may be (D,), (To, D) or (1, To, D)."""
    if FULL_STATE not in obs:
        raise KeyError(f"the scripted experts read observation key '{FULL_STATE}'; got {list(obs)}")
    state = np.asarray(obs[FULL_STATE], dtype=np.float64)
    steps = state.reshape(-1, state.shape[-1])  # (To, D)
    return steps[-1], steps[max(len(steps) - 2, 0)]


class StrategyExpert:
    """One strategy of ``task``, or, with ``strategy=None``, the strategy that the episode seed draws from
    ``mix`` at each :meth:`reset` (the demonstrator of a multimodal dataset)."""

    n_obs_steps = 2

    @property
    def spec(self) -> MultimodalTask:
        """The task, looked up by name (an expert pickles by its task name, for the runner's worker processes)."""
        return get_task(self.task)

    def __init__(self, task: str, strategy: str | None = None, mix: Sequence[float] | None = None) -> None:
        self.task = task
        names = list(self.spec.strategies)
        if strategy is not None and strategy not in names:
            raise ValueError(f"task '{task}' has no strategy '{strategy}'; known: {', '.join(names)}")
        if mix is not None:
            strategy_for_seed(0, names, mix)  # validates
        self.fixed = strategy
        self.mix = None if mix is None else tuple(float(p) for p in mix)
        self.strategy = strategy or names[0]

    def reset(self, seed: int | None = None) -> None:
        """Start an episode; a mixed expert draws its strategy from ``seed``."""
        if self.fixed is None:
            if seed is None:
                raise ValueError("a mixed expert needs the episode seed to draw its strategy")
            self.strategy = strategy_for_seed(seed, list(self.spec.strategies), self.mix)

    def predict_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        """(1, 4) action of the current strategy from ``obs['full_state']`` of shape (2, D) (the last two steps)."""
        action = self.spec.strategies[self.strategy](*_states(obs))
        return np.clip(action, -1.0, 1.0).reshape(1, ACTION_DIM).astype(np.float32)


class AveragedExpert:
    """Per state, the mean of the actions of all strategies of ``task``: what MSE regression converges to on
    balanced demonstrations when the state does not tell the modes apart."""

    n_obs_steps = 2

    @property
    def spec(self) -> MultimodalTask:
        """The task, looked up by name (an expert pickles by its task name, for the runner's worker processes)."""
        return get_task(self.task)

    def __init__(self, task: str) -> None:
        self.task = task
        get_task(task)  # an unknown name fails here

    def reset(self, seed: int | None = None) -> None:
        """Nothing to reset (stateless)."""

    def predict_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        state, prev = _states(obs)
        actions = [np.clip(f(state, prev), -1.0, 1.0) for f in self.spec.strategies.values()]
        return np.mean(actions, axis=0).reshape(1, ACTION_DIM).astype(np.float32)
