"""A multimodal task as a gymnasium env with the observations of :class:`envs.metaworld_env.MetaWorldEnv`.

Observation dict:

- ``point_cloud`` (N, 3|6) float32: the DP3 recipe from ``corner2`` (see :mod:`envs.pointcloud`);
- ``image`` (3, H, W) uint8 from the first image camera; further cameras add ``image_<camera>``;
- ``agent_pos`` (4,) float32: hand xyz and the normalized gripper opening (as Meta-World's state[:4]);
- ``full_state`` (4 + D,) float32: ``agent_pos`` then the task state (object positions, buttons pressed), which the
  scripted experts and the mode classifier read. D depends on the task (MetaWorldEnv's is Meta-World's 39-d
  vector); there is no ``goal_pos``: every target is a visible object.

``info`` of every step carries ``success`` and ``full_state`` (the trajectory the mode classifier reads), plus the
scene's own diagnostics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from core.spec import AGENT_POS, FULL_STATE, POINT_CLOUD, ObsSpec, ShapeMeta  # noqa: E402
from envs import pointcloud as pc  # noqa: E402
from envs.metaworld.env import ACTION_DIM, AGENT_POS_DIM, MAX_PATH_LENGTH, image_key  # noqa: E402
from envs.multimodal.scene import MultimodalSceneEnv
from envs.multimodal.tasks import get_task  # noqa: E402
from envs.render import OffscreenRenderer  # sets MUJOCO_GL before mujoco is imported


class MultimodalEnv(gym.Env):
    """Multimodal task ``task`` (see :data:`envs.multimodal.tasks.TASKS`); ``reset(seed)`` fixes the placement.

    The constructor takes MetaWorldEnv's observation options with the same meaning and defaults, except that
    ``max_episode_steps`` defaults to the task's own length. No renderer is made while no camera is used
    (``point_cloud_cameras=()``, ``image_cameras=()``), so state-only rollouts need no OpenGL until :meth:`render`.
    """

    metadata = {"render_modes": ["rgb_array"]}
    action_dim = ACTION_DIM

    def __init__(
        self,
        task: str,
        point_cloud_cameras: Sequence[str] = ("corner2",),
        num_points: int = 512,
        image_cameras: Sequence[str] = (),
        image_size: int = 84,
        crop_box: Sequence[Sequence[float]] | None = None,
        use_point_color: bool = False,
        seed: int = 0,
        depth_size: int = 128,
        max_episode_steps: int | None = None,
        fast_render: bool = True,
        video_camera: str = "corner2",
        video_size: int = 256,
    ) -> None:
        self.spec_task = get_task(task)
        self.task = task
        steps = self.spec_task.max_episode_steps if max_episode_steps is None else int(max_episode_steps)
        if not 1 <= steps <= MAX_PATH_LENGTH:
            raise ValueError(f"max_episode_steps must be in [1, {MAX_PATH_LENGTH}], got {max_episode_steps}")
        if point_cloud_cameras and num_points < 1:
            raise ValueError(f"num_points must be >= 1 when point clouds are on, got {num_points}")
        self.max_episode_steps = steps
        self.point_cloud_cameras = tuple(point_cloud_cameras)
        self.image_cameras = tuple(image_cameras)
        self.num_points = int(num_points)
        self.image_size = int(image_size)
        self.depth_size = int(depth_size)
        self.use_point_color = bool(use_point_color)
        self.crop_box = np.asarray(pc.DEFAULT_CROP_BOX if crop_box is None else crop_box, dtype=np.float64)
        if self.crop_box.shape != (2, 3) or not np.all(self.crop_box[0] < self.crop_box[1]):
            raise ValueError(f"crop_box must be [[x_min, y_min, z_min], [x_max, y_max, z_max]], got {crop_box}")
        self.fast_render = bool(fast_render)
        self.video_camera = video_camera
        self.video_size = int(video_size)

        self._env = self.spec_task.scene()
        self._env._set_task_called = True
        self.model, self.data = self._env.model, self._env.data
        self._renderer: OffscreenRenderer | None = None
        if self.point_cloud_cameras or self.image_cameras:
            self._make_renderer()

        self._next_seed = int(seed)
        self.episode_seed: int | None = None
        self._steps = 0
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self.observation_space = gym.spaces.Dict(
            {
                key: gym.spaces.Box(0, 255, shape=s.shape, dtype=np.uint8)
                if s.type == "rgb"
                else gym.spaces.Box(-np.inf, np.inf, shape=s.shape, dtype=np.float32)
                for key, s in self.shape_meta(self.obs_keys).obs.items()
            }
        )

    # ------------------------------------------------------------------ spec
    @property
    def obs_keys(self) -> list[str]:
        """Every key this env returns, in order."""
        keys = [POINT_CLOUD] if self.point_cloud_cameras else []
        keys += [image_key(c, i) for i, c in enumerate(self.image_cameras)]
        return keys + [AGENT_POS, FULL_STATE]

    @property
    def state_dim(self) -> int:
        """Length of ``full_state``: agent_pos (4) and the task state."""
        return AGENT_POS_DIM + len(self._env.task_state())

    def shape_meta(self, obs_keys: Sequence[str] | None = None) -> ShapeMeta:
        """The :class:`ShapeMeta` of ``obs_keys`` (default: every key but the privileged ``full_state``)."""
        if obs_keys is None:
            obs_keys = [k for k in self.obs_keys if k != FULL_STATE]
        specs = {
            POINT_CLOUD: ObsSpec(POINT_CLOUD, "point_cloud", (self.num_points, 6 if self.use_point_color else 3)),
            AGENT_POS: ObsSpec(AGENT_POS, "low_dim", (AGENT_POS_DIM,)),
            FULL_STATE: ObsSpec(FULL_STATE, "low_dim", (self.state_dim,)),
        }
        for i, cam in enumerate(self.image_cameras):
            specs[image_key(cam, i)] = ObsSpec(image_key(cam, i), "rgb", (3, self.image_size, self.image_size))
        unknown = [k for k in obs_keys if k not in self.obs_keys]
        if unknown:
            raise KeyError(f"observation key(s) {unknown} are not produced by this env; it produces {self.obs_keys}")
        return ShapeMeta(obs={k: specs[k] for k in obs_keys}, action_dim=ACTION_DIM)

    def camera_params(self) -> dict[str, Any]:
        """Intrinsics/pose of the point-cloud and image cameras (JSON-ready, for dataset attributes)."""
        depth, image = self.depth_size, self.image_size
        return {
            "point_cloud": dict(pc.camera_params(self.model, self.point_cloud_cameras, depth, depth)),
            "image": dict(pc.camera_params(self.model, self.image_cameras, image, image)),
        }

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """Placement drawn from a generator seeded with ``seed`` (default: the constructor's seed, counting up)."""
        seed = self._next_seed if seed is None else int(seed)
        self._next_seed = seed + 1
        env = self._env
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.seed(seed)
        env.reset()
        env._freeze_rand_vec = True
        self.episode_seed = seed
        self._steps = 0
        obs = self._observation()
        return obs, {"seed": seed, "success": False, FULL_STATE: obs[FULL_STATE].copy()}

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        """One env step. ``render=False`` leaves the rendered observations (point cloud, images) out of the returned
        observation, as :meth:`envs.metaworld.env.MetaWorldEnv.step` does."""
        if self.episode_seed is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have {ACTION_DIM} values, got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action}")
        _, reward, _, _, info = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        obs = self._observation(render)
        info = dict(info)
        info["success"] = bool(info.get("success", False))
        info[FULL_STATE] = obs[FULL_STATE].copy()
        return obs, float(reward), False, self._steps >= self.max_episode_steps, info

    def render(self) -> np.ndarray:
        """Upright rgb frame (H, W, 3) uint8 from ``video_camera``."""
        return self.camera_rgb(self.video_camera, self.video_size)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
        self._env.close()

    # ------------------------------------------------------------------ observations
    def _observation(self, render: bool = True) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self.point_cloud_cameras and render:
            obs[POINT_CLOUD] = self.point_cloud()
        for i, cam in enumerate(self.image_cameras if render else ()):
            obs[image_key(cam, i)] = np.ascontiguousarray(self.camera_rgb(cam, self.image_size).transpose(2, 0, 1))
        state = self.full_state()
        obs[AGENT_POS] = state[:AGENT_POS_DIM].copy()
        obs[FULL_STATE] = state
        return obs

    def full_state(self) -> np.ndarray:
        """(4 + D,) float32: hand xyz, gripper opening in [0, 1], then the task state."""
        env = self._env
        gripper = env._get_curr_obs_combined_no_goal()[3]
        return np.concatenate([env.get_endeff_pos(), [gripper], env.task_state()]).astype(np.float32)

    def point_cloud(self) -> np.ndarray:
        """(num_points, 3|6) float32 workspace cloud of the current simulator state."""
        renderer = self._make_renderer()
        clouds = []
        for cam in self.point_cloud_cameras:
            cam_id = renderer.camera_id(cam)
            rgb, depth = renderer.render(
                self.data, cam_id, self.depth_size, self.depth_size, rgb=self.use_point_color, depth=True
            )
            assert depth is not None  # asked for above
            clouds.append(pc.mujoco_points(self.model, self.data, cam_id, depth, renderer.reversed_z, rgb=rgb))
        return pc.workspace_point_cloud(clouds, self.crop_box, self.num_points)

    def camera_rgb(self, camera: str, size: int) -> np.ndarray:
        """Upright rgb (size, size, 3) uint8 from ``camera`` (Meta-World's corner cameras are mounted upside down:
        their pictures are turned by 180 degrees)."""
        renderer = self._make_renderer()
        cam_id = renderer.camera_id(camera)
        rgb, _ = renderer.render(self.data, cam_id, size, size, rgb=True, depth=False)
        assert rgb is not None  # asked for above
        if self.data.cam_xmat[cam_id][7] < 0:  # world-z component of the camera's up axis
            rgb = np.ascontiguousarray(rgb[::-1, ::-1])
        return rgb

    def _make_renderer(self) -> OffscreenRenderer:
        if self._renderer is None:
            side = max(
                self.depth_size if self.point_cloud_cameras else 0,
                self.image_size if self.image_cameras else 0,
                self.video_size,
            )
            self._renderer = OffscreenRenderer(self.model, side, side, fast=self.fast_render)
        return self._renderer

    @property
    def scene(self) -> MultimodalSceneEnv:
        """The underlying :class:`envs.multimodal.scene.MultimodalSceneEnv` (tests, pictures)."""
        return self._env
