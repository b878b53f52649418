"""Path choice: reach a target diagonally behind a pillar, passing the pillar on its right or on its left.

The split point is the back-left corner of the workspace (the mocap's lower limits). The hand starts at a random
place in front of the pillar, pushes into the corner, sinks to the working height and opens its gripper there
(a pause while the arm comes to rest), so every episode reaches the same state. The right path then runs along the back limit (+x) and up the right side;
the left path along the left limit (+y) and across the back. Each path hugs its limit (pushes into it while moving
along it, slower than it pushes), so the mean of the two at the corner pushes into both limits: the mocap stays
clamped in the corner and a policy that averages never moves. Leaving along the diagonal meets the pillar.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from envs.multimodal.scene import MultimodalSceneEnv

CORNER = np.array([-0.15, 0.45, 0.07])  # mocap lower limits: the split point
CORNER_HAND = CORNER + np.array([-0.0005, 0.0003, -0.004])  # where the hand rests when the mocap is in the corner
TARGET = np.array([0.15, 0.75, 0.066])
PILLAR = np.array([0.0, 0.60, 0.0])
PILLAR_HALF = np.array([0.065, 0.07])
APPROACH = 0.02  # the hand is above the working height by more than this while it approaches the corner
AT = 0.008  # the hand is in the corner within this distance (x and y), metres
OPEN = 0.999  # gripper opening that ends the pause in the corner
ALONG, HUG = 0.6, 1.0  # action along a limit next to the corner, and into the limit
SUCCESS_RADIUS = 0.03


class DetourEnv(MultimodalSceneEnv):
    """Task state (6,): pillar (x, y, z) then target (x, y, z), both fixed. Placement (3,): the hand's start."""

    scene_file = "detour.xml"
    hand_low = tuple(CORNER)
    hand_high = (0.25, 0.85, 0.20)
    placement_low = (-0.12, 0.455, 0.12)
    placement_high = (0.10, 0.47, 0.17)

    def place(self, placement: np.ndarray) -> None:
        self.hand_init_pos = np.asarray(placement, dtype=np.float64)
        self._target_pos = TARGET.copy()

    def task_state(self) -> np.ndarray:
        return np.concatenate([self.model.body("pillar").pos, self.model.body("target").pos])

    def evaluate_state(self, obs: npt.NDArray[np.float64], action: npt.NDArray[np.float32]) -> tuple[float, dict[str, Any]]:
        dist = float(np.linalg.norm(self.get_endeff_pos() - self.model.body("target").pos))
        success = dist <= SUCCESS_RADIUS
        return float(success), {"success": success, "target_dist": dist}


def _toward(hand: np.ndarray, goal: np.ndarray, gain: float = 10.0) -> np.ndarray:
    return np.clip(gain * (goal - hand), -1.0, 1.0)


def detour_action(state: np.ndarray, prev: np.ndarray, side: str) -> np.ndarray:
    """Scripted path on ``side`` (``right``: along the back limit, then up; ``left``: along the left limit, then
    across). Stateless: above the working height the hand pushes into the corner with its gripper closing and
    sinks there; in the corner it opens the gripper (a pause while the arm comes to rest) and, once it is fully
    open, leaves along its first limit, hugging it."""
    hand, opening = state[:3], state[3]
    rel = hand - CORNER_HAND
    if rel[2] > APPROACH:  # into the corner at the current height, then sink
        return np.array([-HUG, -HUG, -1.0 if max(rel[0], rel[1]) < AT else 0.0, 1.0], dtype=np.float32)
    if max(rel[0], rel[1]) < AT and opening < OPEN:  # in the corner: open the gripper, hugging both limits
        return np.array([-HUG, -HUG, -HUG, -1.0], dtype=np.float32)
    a, b = (0, 1) if side == "right" else (1, 0)  # axis along the first leg, axis of the limit it hugs
    if hand[a] < TARGET[a] - 0.01:  # first leg, along the limit
        action = np.zeros(3)
        action[a] = ALONG if rel[a] < 0.02 else 1.0
        action[b] = -HUG
    else:  # second leg, to the target
        action = _toward(hand, TARGET)
    action[2] = -HUG
    return np.append(action, -1.0).astype(np.float32)


def detour_evidence(state: np.ndarray) -> str | None:
    """``right`` once the hand has moved along the back limit, ``left`` along the left limit, else None."""
    rel = state[:3] - CORNER_HAND
    if rel[2] > APPROACH:
        return None
    if rel[1] < 0.01 and rel[0] > 0.03:
        return "right"
    if rel[0] < 0.01 and rel[1] > 0.03:
        return "left"
    return None


def detour_passed(state: np.ndarray) -> bool:
    """The hand is beside or behind the pillar."""
    hand = state[:3]
    return bool(hand[0] > PILLAR[0] + PILLAR_HALF[0] or hand[1] > PILLAR[1] + PILLAR_HALF[1])
