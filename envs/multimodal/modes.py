"""Which strategy an episode followed, from its trajectory, and whether it dithered.

Each task turns one step of a trajectory into *evidence*: the strategy that this step already commits to (a side of
the fence, a bin, the button pressed first, the side the gripper approaches from) or nothing yet. The episode's
mode is the last committed strategy once the task's decisive event happened (``none`` if it never did); the episode
*dithers* when its evidence switches from one strategy to another, or when the hand stalls for
:data:`STALL_STEPS` steps before the episode succeeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

NONE = "none"
STALL_STEPS = 30  # steps without the hand moving STALL_DISTANCE before success count as a stall
STALL_DISTANCE = 0.01  # metres


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
    evidence: Callable[[np.ndarray], Optional[str]],
    decided: Callable[[np.ndarray], bool],
    success: Optional[Sequence[bool]] = None,
) -> ModeResult:
    """Classify a trajectory ``full_states (T, D)`` (agent_pos then task state, one row per step).

    ``evidence(state)`` names the strategy a state commits to, or None; ``decided(state)`` says whether the task's
    decisive event has happened by that state (the fence passed, an object released, a button pressed), after
    which the mode is known; ``success (T,)`` cuts the stall test at the first successful step.
    """
    full_states = np.asarray(full_states, dtype=np.float64)
    if full_states.ndim != 2 or len(full_states) == 0:
        raise ValueError(f"full_states must be a non-empty (T, D) array, got shape {full_states.shape}")
    seen = [e for e in map(evidence, full_states) if e is not None]
    switched = any(a != b for a, b in zip(seen, seen[1:]))
    is_decided = any(decided(s) for s in full_states)
    mode = seen[-1] if seen and is_decided else NONE
    end = len(full_states)
    if success is not None and np.any(success):
        end = int(np.argmax(np.asarray(success, dtype=bool))) + 1
    return ModeResult(mode=mode, switched=switched, stalled=_stalled(full_states[:end, :3]))


def _stalled(hand: np.ndarray) -> bool:
    """The hand (T, 3) stays within STALL_DISTANCE of where it was STALL_STEPS steps earlier."""
    if len(hand) <= STALL_STEPS:
        return False
    moved = np.linalg.norm(hand[STALL_STEPS:] - hand[:-STALL_STEPS], axis=1)
    return bool(np.any(moved < STALL_DISTANCE))
