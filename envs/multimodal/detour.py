"""Path choice: reach a target diagonally behind a pillar, passing the pillar on its right or on its left.

Split point: the workspace's back-left-bottom corner (see :mod:`envs.multimodal.corner`). The right path runs
along the back limit (+x) and then up the right side of the pillar; the left path along the left limit (+y) and
then across behind it. A policy that averages them stays clamped in the corner; one that leaves along the diagonal
meets the pillar.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from envs.multimodal.corner import APPROACH, HUG, Corner
from envs.multimodal.scene import MultimodalSceneEnv

CORNER = Corner(limits=np.array([-0.15, 0.45, 0.07]), signs=np.array([-1.0, -1.0, -1.0]), arrival_axis=2)
TARGET = np.array([0.15, 0.75, 0.066])
PILLAR = np.array([0.0, 0.60, 0.0])
PILLAR_HALF = np.array([0.065, 0.07])
SUCCESS_RADIUS = 0.03
FIRST_LEG_AXIS = {"right": 0, "left": 1}


class DetourEnv(MultimodalSceneEnv):
    """Task state (6,): pillar (x, y, z) then target (x, y, z), both fixed. Placement (3,): the hand's start."""

    scene_file = "detour.xml"
    hand_box_low = tuple(CORNER.limits)
    hand_box_high = (0.25, 0.85, 0.20)
    placement_low = (-0.12, 0.455, 0.12)
    placement_high = (0.10, 0.47, 0.17)

    def place(self, placement: np.ndarray) -> None:
        self.hand_init_pos = np.asarray(placement, dtype=np.float64)
        self._target_pos = TARGET.copy()

    def task_state(self) -> np.ndarray:
        return np.concatenate([self.model.body("pillar").pos, self.model.body("target").pos])

    def evaluate_state(
        self, obs: npt.NDArray[np.float64], action: npt.NDArray[np.float32]
    ) -> tuple[float, dict[str, Any]]:
        dist = float(np.linalg.norm(self.get_endeff_pos() - self.model.body("target").pos))
        success = dist <= SUCCESS_RADIUS
        return float(success), {"success": success, "target_dist": dist}


def detour_action(state: np.ndarray, prev: np.ndarray, side: str) -> np.ndarray:
    """Scripted path on ``side`` from the current and the previous full state: ``right`` along the back limit then
    up, ``left`` along the left limit then across; both at the working height, pushing down into the bottom
    limit."""
    opening = CORNER.approach(state, prev)
    if opening is not None:
        return opening
    hand, axis = state[:3], FIRST_LEG_AXIS[side]
    if hand[axis] < TARGET[axis] - 0.01:
        return CORNER.along(hand, axis)
    action = np.clip(10.0 * (TARGET - hand), -1.0, 1.0)
    action[2] = -HUG
    return np.append(action, -1.0).astype(np.float32)


def detour_evidence(state: np.ndarray) -> str | None:
    """``right`` once the hand has moved along the back limit, ``left`` along the left limit, else None."""
    depth = CORNER.depth(state[:3])
    if depth[2] > 0.02:
        return None
    if depth[1] < 0.01 and depth[0] > 0.03:
        return "right"
    if depth[0] < 0.01 and depth[1] > 0.03:
        return "left"
    return None


def detour_passed(state: np.ndarray) -> bool:
    """The hand is at the working height, beside or behind the pillar."""
    hand = state[:3]
    low = CORNER.depth(hand)[2] < APPROACH
    return bool(low and (hand[0] > PILLAR[0] + PILLAR_HALF[0] or hand[1] > PILLAR[1] + PILLAR_HALF[1]))
