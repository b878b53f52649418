"""Which strategy an episode followed, from its trajectory, and whether it dithered.

Each task turns one step of a trajectory into *evidence*: the strategy that this step already commits to (the limit
the hand moves along, the button pressed first) or nothing yet. The episode's mode is the last evidence up to the
task's decisive event (the pillar passed, a button pressed, the block lifted), ``none`` if that never happened;
the episode *dithers* when its evidence up to then switches from one strategy to another, or when the hand stalls
for :data:`STALL_STEPS` steps before the episode succeeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

NONE = "none"
STALL_STEPS = 30  # steps in which the hand travels less than STALL_DISTANCE, before success, count as a stall
STALL_DISTANCE = 0.01  # metres of path


@dataclass(frozen=True)
class ModeResult:
    """``mode``: a strategy name or ``none``; ``switched``: the evidence changed strategy mid-way; ``stalled``:
    the hand stood still for a while before success (or to the end)."""

    mode: str
    switched: bool
    stalled: bool

    @property
    def dithered(self) -> bool:
        return self.switched or self.stalled


def classify(
    full_states: np.ndarray,
    evidence: Callable[[np.ndarray], str | None],
    decided: Callable[[np.ndarray], bool],
    success: Sequence[bool] | np.ndarray | None = None,
) -> ModeResult:
    """Classify a trajectory ``full_states (T, D)`` (agent_pos then task state, one row per step).

    ``evidence(state)`` names the strategy a state commits to, or None; ``decided(state)`` says whether the task's
    decisive event has happened by that state (the fence passed, an object released, a button pressed), after
    which the mode is known; ``success (T,)`` cuts the stall test at the first successful step.
    """
    full_states = np.asarray(full_states, dtype=np.float64)
    if full_states.ndim != 2 or len(full_states) == 0:
        raise ValueError(f"full_states must be a non-empty (T, D) array, got shape {full_states.shape}")
    done = [decided(s) for s in full_states]
    until = done.index(True) + 1 if any(done) else len(full_states)
    seen = [e for e in map(evidence, full_states[:until]) if e is not None]
    switched = any(a != b for a, b in zip(seen, seen[1:], strict=False))
    mode = seen[-1] if seen and any(done) else NONE
    end = len(full_states)
    if success is not None and np.any(success):
        end = int(np.argmax(np.asarray(success, dtype=bool))) + 1
    return ModeResult(mode=mode, switched=switched, stalled=_stalled(full_states[:end, :3]))


def _stalled(hand: np.ndarray) -> bool:
    """The hand (T, 3) travels less than STALL_DISTANCE in some window of STALL_STEPS steps."""
    if len(hand) <= STALL_STEPS:
        return False
    travelled = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(hand, axis=0), axis=1))]  # (T,) path length so far
    return bool(np.any(travelled[STALL_STEPS:] - travelled[:-STALL_STEPS] < STALL_DISTANCE))
