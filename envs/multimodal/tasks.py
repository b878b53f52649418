"""The registry of multimodal tasks: scene, strategies and mode evidence of each, by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.multimodal import buttons, detour, pick
from envs.multimodal.modes import ModeResult, classify
from envs.multimodal.scene import MultimodalSceneEnv

Strategy = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (full_state (D,), previous full_state (D,)) -> (4,)


@dataclass(frozen=True)
class MultimodalTask:
    """A task: its scene class and the length of its task state (``full_state`` is agent_pos (4) then that), its
    strategies (name -> expert reading the last two full states), the per-step mode evidence and the decisive event
    used by :func:`envs.multimodal.modes.classify`, and its episode length."""

    name: str
    kind: str
    scene: type[MultimodalSceneEnv]
    task_state_dim: int
    strategies: Mapping[str, Strategy]
    evidence: Callable[[np.ndarray], str | None]
    decided: Callable[[np.ndarray], bool]
    max_episode_steps: int = 200

    def classify(self, full_states: np.ndarray, success: Sequence[bool] | np.ndarray | None = None) -> ModeResult:
        """Mode and dithering of a trajectory ``full_states (T, D)``."""
        return classify(full_states, self.evidence, self.decided, success)

    def mode_record(
        self, full_states: np.ndarray, success: Sequence[bool] | np.ndarray | None = None
    ) -> dict[str, Any]:
        """:meth:`classify` as the JSON fields of one evaluation episode: ``mode``, ``switched``, ``stalled``,
        ``dithered``."""
        result = self.classify(full_states, success)
        fields = ("mode", "switched", "stalled", "dithered")
        return {name: getattr(result, name) for name in fields}


TASKS: dict[str, MultimodalTask] = {
    "detour": MultimodalTask(
        name="detour",
        kind="path",
        scene=detour.DetourEnv,
        task_state_dim=6,
        strategies={
            "right": lambda s, p: detour.detour_action(s, p, "right"),
            "left": lambda s, p: detour.detour_action(s, p, "left"),
        },
        evidence=detour.detour_evidence,
        decided=detour.detour_passed,
    ),
    "either-button": MultimodalTask(
        name="either-button",
        kind="goal",
        scene=buttons.ButtonsEnv,
        task_state_dim=8,
        strategies={
            "right": lambda s, p: buttons.either_action(s, p, "right"),
            "far": lambda s, p: buttons.either_action(s, p, "far"),
        },
        evidence=buttons.press_evidence,
        decided=buttons.any_pressed,
    ),
    "button-order": MultimodalTask(
        name="button-order",
        kind="order",
        scene=buttons.ButtonOrderEnv,
        task_state_dim=8,
        strategies={
            "right-first": lambda s, p: buttons.order_action(s, p, "right"),
            "far-first": lambda s, p: buttons.order_action(s, p, "far"),
        },
        evidence=buttons.order_evidence,
        decided=buttons.any_pressed,
    ),
    "pick": MultimodalTask(
        name="pick",
        kind="grasp",
        scene=pick.PickEnv,
        task_state_dim=3,
        strategies={
            "top": lambda s, p: pick.pick_action(s, p, "top"),
            "side": lambda s, p: pick.pick_action(s, p, "side"),
        },
        evidence=pick.pick_evidence,
        decided=pick.picked,
    ),
}


def get_task(name: str) -> MultimodalTask:
    """The task called ``name``; unknown names raise a ValueError listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown multimodal task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name]
