"""Grasp choice: pick up a block, either from above (``top``) or sliding in from its left at table height
(``side``).

Split point: the workspace's back-left-*top* corner (see :mod:`envs.multimodal.corner`), reached last along y (from
the front); the block sits below the back limit. The top grasp runs along the ceiling (+x) to above the block and
descends onto it; the side grasp descends along the left limit to table height and slides in (+x) with the fingers
either side of the block. A policy that averages them stays clamped in the corner.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from envs.multimodal.corner import HUG, Corner
from envs.multimodal.scene import MultimodalSceneEnv

CORNER = Corner(limits=np.array([-0.15, 0.45, 0.20]), signs=np.array([-1.0, -1.0, 1.0]), arrival_axis=1)
BLOCK = np.array([0.0, 0.45, 0.02])  # where the block rests
GRASP_Z = 0.07  # hand height that puts the fingers around the block
LIFTED = 0.08  # block height (centre) that counts as picked up
HELD = 0.6  # gripper opening below which the fingers hold the block
FIRST_LEG_AXIS = {"top": 0, "side": 2}


class PickEnv(MultimodalSceneEnv):
    """Task state (3,): the block's position. Placement (3,): the hand's start."""

    scene_file = "pick.xml"
    hand_box_low = (-0.15, 0.45, 0.05)
    hand_box_high = (0.25, 0.85, 0.20)
    placement_low = (-0.10, 0.55, 0.10)
    placement_high = (0.05, 0.62, 0.15)

    def place(self, placement: np.ndarray) -> None:
        self.hand_init_pos = np.asarray(placement, dtype=np.float64)
        self.set_free_body("block_joint", BLOCK)
        self._target_pos = BLOCK + np.array([0.0, 0.0, LIFTED])

    def task_state(self) -> np.ndarray:
        return self.data.body("block").xpos.copy()

    def evaluate_state(
        self, obs: npt.NDArray[np.float64], action: npt.NDArray[np.float32]
    ) -> tuple[float, dict[str, Any]]:
        block = self.data.body("block").xpos
        success = bool(block[2] > LIFTED)
        return float(success), {"success": success, "block_z": float(block[2])}


def pick_action(state: np.ndarray, prev: np.ndarray, way: str) -> np.ndarray:
    """Scripted pick ``way`` from the current and the previous full state: ``top`` along the ceiling to above the
    block, down, close, lift; ``side`` down the left limit to grasp height, in along +x, close, lift."""
    opening = CORNER.approach(state, prev)
    if opening is not None:
        return opening
    hand, gripper, block = state[:3], state[3], state[4:7]
    grasp = block + np.array([0.0, 0.0, GRASP_Z - BLOCK[2]])
    if np.linalg.norm(hand - grasp) < 0.012 or gripper < HELD:  # at the block: close, then lift
        lift = np.clip(10.0 * (grasp + np.array([0.0, 0.0, 0.1]) - hand), -1.0, 1.0) if gripper < HELD else np.zeros(3)
        return np.append(lift, 1.0).astype(np.float32)
    axis = FIRST_LEG_AXIS[way]
    ahead = -CORNER.signs[axis] * (grasp[axis] - hand[axis])  # still to go along the first leg
    if ahead > 0.01 and CORNER.depth(hand)[2 - axis] < 0.01:  # first leg, along a limit
        return CORNER.along(hand, axis)
    action = np.clip(10.0 * (grasp - hand), -1.0, 1.0)
    action[1] = -HUG
    return np.append(action, -1.0).astype(np.float32)


def pick_evidence(state: np.ndarray) -> str | None:
    """``top`` once the hand has moved along the ceiling, ``side`` once it has gone down the left limit (both at
    the back limit, which the approach only reaches in the corner)."""
    depth = CORNER.depth(state[:3])
    if depth[1] > 0.01:
        return None
    if depth[0] < 0.01 and depth[2] > 0.04:
        return "side"
    if depth[2] < 0.01 and depth[0] > 0.04:
        return "top"
    return None


def picked(state: np.ndarray) -> bool:
    return bool(state[6] > BLOCK[2] + 0.01)
