"""The Sawyer scene shared by the multimodal tasks: Meta-World's arm, table and cameras plus a task's own objects.

A task is a :class:`metaworld.sawyer_xyz_env.SawyerXYZEnv` subclass, so it keeps Meta-World's mocap control
(action = xyz delta of 1 cm per unit + gripper effort, the mocap clipped to ``hand_low``/``hand_high``), its
``hand`` body, gripper and cameras (``corner2`` included). The model is composed from Meta-World's own scene files,
loaded by absolute path from the installed package, and the task's ``<mujocoinclude>`` file in ``assets/`` (its
own defaults, assets and worldbody); nothing is copied out of metaworld.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import mujoco
import numpy as np
import numpy.typing as npt
from gymnasium.spaces import Box
from metaworld.asset_path_utils import ENV_ASSET_DIR_V3
from metaworld.sawyer_xyz_env import SawyerXYZEnv

ASSET_DIR = Path(__file__).parent / "assets"

_SCENE_XML = """<mujoco>
  <compiler meshdir="{mw}/sawyer_xyz" texturedir="{mw}/sawyer_xyz"/>
  <include file="{mw}/scene/basic_scene.xml"/>
  <include file="{mw}/objects/assets/xyz_base_dependencies.xml"/>
  <worldbody>
    <include file="{mw}/objects/assets/xyz_base.xml"/>
  </worldbody>
  <include file="{task}"/>
  <actuator>
    <position ctrllimited="true" ctrlrange="-1 1" joint="r_close" kp="400" user="1"/>
    <position ctrllimited="true" ctrlrange="-1 1" joint="l_close" kp="400" user="1"/>
  </actuator>
  <equality>
    <weld body1="mocap" body2="hand" solref="0.02 1"/>
  </equality>
</mujoco>"""


def scene_xml(task_file: str | Path) -> str:
    """The full MJCF of a task: Meta-World's table, lights and Sawyer arm, then the task's include file."""
    return _SCENE_XML.format(mw=Path(ENV_ASSET_DIR_V3).as_posix(), task=Path(task_file).resolve().as_posix())


class MultimodalSceneEnv(SawyerXYZEnv):
    """Base of the multimodal tasks: model composition, a seeded placement vector and a task-state vector.

    Subclasses set ``scene_file``, the mocap limits ``hand_box_low``/``hand_box_high`` (metaworld's ``hand_low``/
    ``hand_high``) and the placement box
    ``placement_low``/``placement_high`` (task-specific dimensions, e.g. the hand's start), and implement
    :meth:`place` (apply a placement, including ``hand_init_pos``), :meth:`task_state` and :meth:`evaluate_state`.
    """

    scene_file: ClassVar[str]
    hand_box_low: ClassVar[tuple[float, float, float]]
    hand_box_high: ClassVar[tuple[float, float, float]]
    placement_low: ClassVar[tuple[float, ...]]
    placement_high: ClassVar[tuple[float, ...]]

    def __init__(self) -> None:
        super().__init__(hand_low=self.hand_box_low, hand_high=self.hand_box_high)
        low, high = np.asarray(self.placement_low), np.asarray(self.placement_high)
        self._random_reset_space = Box(low, high, dtype=np.float64)
        # metaworld seeds goal_space in seed(); the placement box plays that role here
        self.goal_space = Box(low, high, dtype=np.float64)
        self._target_pos = np.zeros(3)

    # ------------------------------------------------------------------ model
    @property
    def model_name(self) -> str:
        return str(ASSET_DIR / self.scene_file)

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = mujoco.MjModel.from_xml_string(scene_xml(self.model_name))
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    # ------------------------------------------------------------------ episode
    def reset_model(self) -> npt.NDArray[np.float64]:
        self.place(np.asarray(self._get_state_rand_vec(), dtype=np.float64))
        mujoco.mj_forward(self.model, self.data)
        self._reset_hand()
        return self._get_obs()

    def place(self, placement: np.ndarray) -> None:
        """Set the episode's start from ``placement`` (a draw from the placement box): ``hand_init_pos`` and
        the task's objects."""
        raise NotImplementedError

    def task_state(self) -> np.ndarray:
        """(D,) float64 positions and states of the task's objects (what experts and mode classifiers read)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ metaworld hooks
    def _get_pos_objects(self) -> npt.NDArray[Any]:
        return self.task_state()[:3]

    def _get_quat_objects(self) -> npt.NDArray[Any]:
        return np.array([1.0, 0.0, 0.0, 0.0])

    @property
    def _target_site_config(self) -> list[tuple[str, npt.NDArray[Any]]]:
        return []  # no metaworld "goal" site: targets are geoms, visible in the point cloud

    def set_free_body(self, joint: str, pos: npt.ArrayLike, quat: npt.ArrayLike = (1.0, 0.0, 0.0, 0.0)) -> None:
        """Put a free-joint body at ``pos`` with orientation ``quat``, at rest."""
        j = self.model.joint(joint)
        qpos, qvel = self.data.qpos.copy(), self.data.qvel.copy()
        qpos[j.qposadr[0] : j.qposadr[0] + 7] = np.concatenate([np.asarray(pos, float), np.asarray(quat, float)])
        qvel[j.dofadr[0] : j.dofadr[0] + 6] = 0.0
        self.set_state(qpos, qvel)
