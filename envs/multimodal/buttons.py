"""Goal choice and order choice on one scene: two buttons at the ends of the two limits that meet in the corner.

Split point: the workspace's back-left-bottom corner (see :mod:`envs.multimodal.corner`). The ``right`` button
is pressed along +x at the end of the back limit, the ``far`` one along +y at the end of the left limit.

- ``either-button`` (goal choice): press one of them, either counts.
- ``button-order`` (order choice): press both, in either order; after the first press the state says which one
  is left, so only the first choice is multimodal.

A policy that averages the strategies stays clamped in the corner.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from envs.multimodal.corner import HUG, Corner
from envs.multimodal.scene import MultimodalSceneEnv

CORNER = Corner(limits=np.array([-0.15, 0.45, 0.07]), signs=np.array([-1.0, -1.0, -1.0]), arrival_axis=2)
BUTTONS = ("right", "far")
AXIS = {"right": 0, "far": 1}  # the axis each button is pressed along (+)
PRESSED = 0.015  # cap travel (metres) that counts as a press


class ButtonsEnv(MultimodalSceneEnv):
    """Task state (8,): right button (x, y, z), far button (x, y, z), then whether the right and the far button
    has been pressed (1.0) or not (0.0) in this episode: a press latches, as a button's lamp would, even if the cap
    rebounds a little. Placement (3,): the hand's start. Success when ``need_both`` and both are pressed, or when
    either is."""

    scene_file = "buttons.xml"
    hand_box_low = tuple(CORNER.limits)
    hand_box_high = (0.25, 0.85, 0.20)
    placement_low = (-0.10, 0.50, 0.12)
    placement_high = (0.00, 0.60, 0.17)
    need_both = False

    def place(self, placement: np.ndarray) -> None:
        self.hand_init_pos = np.asarray(placement, dtype=np.float64)
        for name in BUTTONS:
            self.data.joint(f"cap_{name}_joint").qpos[:] = 0.0
            self.data.joint(f"cap_{name}_joint").qvel[:] = 0.0
        self.pressed = np.zeros(len(BUTTONS))
        self._target_pos = self.model.body("button_right").pos.copy()

    def task_state(self) -> np.ndarray:
        pressed = getattr(self, "pressed", np.zeros(len(BUTTONS)))  # metaworld reads the state before place()
        return np.concatenate([self.model.body("button_right").pos, self.model.body("button_far").pos, pressed])

    def evaluate_state(
        self, obs: npt.NDArray[np.float64], action: npt.NDArray[np.float32]
    ) -> tuple[float, dict[str, Any]]:
        travel = np.array([self.data.joint(f"cap_{name}_joint").qpos[0] for name in BUTTONS])
        self.pressed = np.maximum(self.pressed, travel > PRESSED)
        success = bool(np.all(self.pressed) if self.need_both else np.any(self.pressed))
        return float(success), {"success": success, "travel_right": float(travel[0]), "travel_far": float(travel[1])}


class ButtonOrderEnv(ButtonsEnv):
    """The same scene; success needs both buttons pressed."""

    need_both = True


def _pressed(state: np.ndarray) -> dict[str, bool]:
    return {name: bool(state[4 + 6 + i] > 0.5) for i, name in enumerate(BUTTONS)}


def press(state: np.ndarray, name: str) -> np.ndarray:
    """Go to button ``name`` and push it in: along the limit that leads to it, hugging the other limits; from the
    other limit (after pressing the other button), back into the corner first."""
    hand, axis = state[:3], AXIS[name]
    if CORNER.depth(hand)[1 - axis] < 0.01:  # on the limit that leads to this button
        return CORNER.along(hand, axis)
    return np.append(CORNER.signs * HUG, -1.0).astype(np.float32)


def either_action(state: np.ndarray, prev: np.ndarray, name: str) -> np.ndarray:
    """Goal choice: press button ``name`` (then keep pushing it); from the current and the previous full state."""
    opening = CORNER.approach(state, prev)
    return opening if opening is not None else press(state, name)


def order_action(state: np.ndarray, prev: np.ndarray, first: str) -> np.ndarray:
    """Order choice: press ``first``, then the other button; from the current and the previous full state."""
    opening = CORNER.approach(state, prev)
    if opening is not None:
        return opening
    other = BUTTONS[1 - BUTTONS.index(first)]
    return press(state, other if _pressed(state)[first] else first)


def press_evidence(state: np.ndarray) -> str | None:
    """The button pressed first as far as this state shows (one pressed, the other not), else the limit the hand
    is moving along, else None. With both pressed it says nothing: the order was shown earlier."""
    pressed = _pressed(state)
    if pressed["right"] != pressed["far"]:
        return "right" if pressed["right"] else "far"
    if any(pressed.values()):
        return None
    depth = CORNER.depth(state[:3])
    if depth[2] > 0.02:
        return None
    if depth[1] < 0.01 and depth[0] > 0.03:
        return "right"
    if depth[0] < 0.01 and depth[1] > 0.03:
        return "far"
    return None


def order_evidence(state: np.ndarray) -> str | None:
    """:func:`press_evidence` named after the order strategies (``right-first``, ``far-first``)."""
    first = press_evidence(state)
    return None if first is None else f"{first}-first"


def any_pressed(state: np.ndarray) -> bool:
    return any(_pressed(state).values())
