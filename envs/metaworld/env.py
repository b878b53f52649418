"""Meta-World v3 tasks (metaworld 3.x, gymnasium API) with point-cloud, image and state observations.

Observation dict (keys from :mod:`core.spec`):

- ``point_cloud`` (N, 3) float32 world xyz in metres, or (N, 6) with rgb in [0, 1] — the DP3 recipe, see
  :mod:`envs.pointcloud`;
- ``image`` (3, H, W) uint8, upright, from the first image camera; further cameras add ``image_<camera>``;
- ``agent_pos`` (4,) float32: end-effector (TCP) xyz and the normalized gripper opening;
- ``goal_pos`` (3,) float32: the episode's goal position (``full_state[-3:]``). Many tasks draw it at random
  and no geometry marks it (coffee-pull's mug target, push's puck target), so a point cloud cannot show it; the
  DP3 recipe leaves it out, ``configs/task/metaworld_goal.yaml`` adds it;
- ``full_state`` (39,) float32: Meta-World's goal-observable state vector (what the scripted experts read).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import metaworld  # noqa: E402  (after envs.render)
import metaworld.env_dict as _mw_envs  # noqa: E402
import mujoco  # noqa: E402
import numpy as np

from core.spec import AGENT_POS, FULL_STATE, GOAL_POS, IMAGE, POINT_CLOUD, ObsSpec, ShapeMeta
from envs import pointcloud as pc
from envs.render import OffscreenRenderer  # sets MUJOCO_GL before metaworld imports mujoco
from envs.suites import UnknownTaskError

ACTION_DIM = 4
STATE_DIM = 39
AGENT_POS_DIM = 4
GOAL_DIM = 3  # the last entries of the goal-observable state
MAX_PATH_LENGTH = 500  # metaworld raises if an episode goes past this


def task_names() -> list[str]:
    """The 50 Meta-World v3 task names (``reach-v3``, ...)."""
    return list(_mw_envs.ALL_V3_ENVIRONMENTS)


def check_task(task: str) -> str:
    """Return ``task`` if it is a known v3 task, else raise :class:`UnknownTaskError` listing close matches."""
    names = task_names()
    if task in names:
        return task
    close = difflib.get_close_matches(task, names, n=5, cutoff=0.5)
    if not close and not task.endswith("-v3"):
        close = difflib.get_close_matches(f"{task}-v3", names, n=5, cutoff=0.5)
    hint = f"did you mean: {', '.join(close)}?" if close else f"known tasks: {', '.join(names)}"
    raise UnknownTaskError(f"unknown Meta-World task '{task}'; {hint}")


def image_key(camera: str, index: int) -> str:
    """Observation key of image camera number ``index``: the first is ``image``, the others ``image_<camera>``."""
    return IMAGE if index == 0 else f"{IMAGE}_{camera}"


def metaworld_shape_meta(
    task: str,
    num_points: int = 512,
    image_size: int = 84,
    use_point_color: bool = False,
    image_cameras: Sequence[str] = ("corner2",),
) -> ShapeMeta:
    """Every observation a :class:`MetaWorldEnv` of ``task`` can produce (point cloud, images, agent_pos,
    goal_pos, full_state) with these settings, without building the simulator."""
    check_task(task)
    obs = {POINT_CLOUD: ObsSpec(POINT_CLOUD, "point_cloud", (num_points, 6 if use_point_color else 3))}
    for i, cam in enumerate(image_cameras):
        key = image_key(cam, i)
        obs[key] = ObsSpec(key, "rgb", (3, image_size, image_size))
    obs[AGENT_POS] = ObsSpec(AGENT_POS, "low_dim", (AGENT_POS_DIM,))
    obs[GOAL_POS] = ObsSpec(GOAL_POS, "low_dim", (GOAL_DIM,))
    obs[FULL_STATE] = ObsSpec(FULL_STATE, "low_dim", (STATE_DIM,))
    return ShapeMeta(obs=obs, action_dim=ACTION_DIM)


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task whose variation (object and goal placement) is fixed by the reset seed.

    Seeds: ``reset(seed=s)`` draws the task variation exactly as metaworld's MT1 benchmark draws its tasks —
    one reset with an unfrozen ``rand_vec``, uniform over the task's ``_random_reset_space`` (with the task's
    own rejection of overlapping object/goal placements) — except that the draw comes from a generator seeded
    with ``s`` (``env.seed(s)``) instead of the global numpy state; the variation is then frozen for the episode.
    So seed ``s`` always gives the same variation and, with a deterministic policy, the same episode. MT1 draws
    only 50 variations; seeds give as many as needed, and :mod:`core.seeds` keeps demo and eval seeds apart.
    ``reset()`` without a seed uses the constructor's ``seed`` and then counts up by one per episode.

    Args:
        task: a v3 task name, e.g. ``"reach-v3"``.
        point_cloud_cameras: cameras whose depth images are merged into ``point_cloud``; empty → no point cloud.
            (DP3 used ``corner2`` moved to (0.75, 0.075, 0.7), which is metaworld 3's ``corner4``.)
        num_points: points per cloud after farthest point sampling.
        image_cameras: cameras rendered as ``image`` observations; empty → no image.
        image_size: side of the square rgb images.
        crop_box: workspace box [[x, y, z]_min, [x, y, z]_max] in metres; default: the task's entry in
            :data:`envs.pointcloud.TASK_CROP_BOXES` or :data:`envs.pointcloud.DEFAULT_CROP_BOX`.
        use_point_color: (N, 6) points with rgb instead of (N, 3).
        seed: first seed used by ``reset()`` without a seed.
        depth_size: side of the square depth images that are back-projected (DP3: 128).
        max_episode_steps: ``step`` reports ``truncated`` after this many steps (metaworld's own limit is 500).
        fast_render: shadows, reflections, skybox and multisampling off (see :mod:`envs.render`).
        video_size: side of the frames returned by :meth:`render`.
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
        max_episode_steps: int = 200,
        fast_render: bool = True,
        video_camera: str = "corner2",
        video_size: int = 256,
    ) -> None:
        self.task = check_task(task)
        if not 1 <= max_episode_steps <= MAX_PATH_LENGTH:
            raise ValueError(f"max_episode_steps must be in [1, {MAX_PATH_LENGTH}], got {max_episode_steps}")
        if point_cloud_cameras and num_points < 1:
            raise ValueError(f"num_points must be >= 1 when point clouds are on, got {num_points}")
        self.point_cloud_cameras = tuple(point_cloud_cameras)
        self.image_cameras = tuple(image_cameras)
        self.num_points = int(num_points)
        self.image_size = int(image_size)
        self.depth_size = int(depth_size)
        self.use_point_color = bool(use_point_color)
        self.max_episode_steps = int(max_episode_steps)
        self.crop_box = pc.crop_box_for_task(self.task) if crop_box is None else np.asarray(crop_box, dtype=np.float64)
        if self.crop_box.shape != (2, 3) or not np.all(self.crop_box[0] < self.crop_box[1]):
            raise ValueError(f"crop_box must be [[x_min, y_min, z_min], [x_max, y_max, z_max]], got {crop_box}")
        self.video_camera = video_camera
        self.video_size = int(video_size)

        self._env = _make_goal_observable(self.task)
        self.model, self.data = self._env.model, self._env.data
        side = max(
            [
                self.depth_size if self.point_cloud_cameras else 0,
                self.image_size if self.image_cameras else 0,
                self.video_size,
            ]
        )
        self._renderer = OffscreenRenderer(self.model, side, side, fast=fast_render)
        self._pc_cam_ids = [self._renderer.camera_id(c) for c in self.point_cloud_cameras]
        self._img_cam_ids = [self._renderer.camera_id(c) for c in self.image_cameras]
        self._video_cam_id = self._renderer.camera_id(video_camera)

        self._next_seed = int(seed)
        self.episode_seed: int | None = None
        self._steps = 0
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        self.observation_space = gym.spaces.Dict(
            {key: _space(spec) for key, spec in self.shape_meta(self.obs_keys).obs.items()}
        )

    # ------------------------------------------------------------------ spec
    @property
    def obs_keys(self) -> list[str]:
        """Every key this env returns, in order."""
        keys = [POINT_CLOUD] if self.point_cloud_cameras else []
        keys += [image_key(c, i) for i, c in enumerate(self.image_cameras)]
        return keys + [AGENT_POS, GOAL_POS, FULL_STATE]

    def shape_meta(self, obs_keys: Sequence[str] | None = None) -> ShapeMeta:
        """The :class:`ShapeMeta` of ``obs_keys`` (default: every key but the privileged ``goal_pos`` and
        ``full_state``), action dim 4."""
        if obs_keys is None:
            obs_keys = [k for k in self.obs_keys if k not in (GOAL_POS, FULL_STATE)]
        unknown = [k for k in obs_keys if k not in self.obs_keys]
        if unknown:
            raise KeyError(f"observation key(s) {unknown} are not produced by this env; it produces {self.obs_keys}")
        full = metaworld_shape_meta(
            self.task, self.num_points, self.image_size, self.use_point_color, self.image_cameras
        )
        return ShapeMeta(obs={k: full.obs[k] for k in obs_keys}, action_dim=ACTION_DIM)

    def camera_params(self) -> dict[str, Any]:
        """Intrinsics/pose of the point-cloud and image cameras (JSON-ready, for dataset attributes)."""
        return {
            "point_cloud": dict(
                pc.camera_params(self.model, self.point_cloud_cameras, self.depth_size, self.depth_size)
            ),
            "image": dict(pc.camera_params(self.model, self.image_cameras, self.image_size, self.image_size)),
        }

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
        if seed is None:
            seed = self._next_seed
        seed = int(seed)
        self._next_seed = seed + 1
        env = self._env
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.seed(seed)
        state, info = env.reset()
        # Metaworld's reset leaves some derived positions (sites) from before it, which the cameras render: recompute
        # them from the new state, or the first observation depends on the episodes this env ran earlier.
        mujoco.mj_kinematics(self.model, self.data)
        env._freeze_rand_vec = True
        self.episode_seed = seed
        self._steps = 0
        info = dict(info)
        info["seed"] = seed
        return self._observation(state), info

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        """One env step. ``render=False`` leaves the rendered observations (point cloud, images) out of the returned
        observation: a step whose observation nobody reads (inside an executed chunk) then costs no rendering."""
        if self.episode_seed is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have {ACTION_DIM} values, got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action}")
        state, reward, _, _, info = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        info = dict(info)
        info["success"] = bool(info.get("success", False))
        truncated = self._steps >= self.max_episode_steps
        return self._observation(state, render), float(reward), False, truncated, info

    def render(self) -> np.ndarray:
        """Upright rgb frame (H, W, 3) uint8 from ``video_camera`` (for videos)."""
        return self._camera_rgb(self._video_cam_id, self.video_size)

    def close(self) -> None:
        self._renderer.close()
        self._env.close()

    # ------------------------------------------------------------------ observations
    def _observation(self, state: np.ndarray, render: bool = True) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self.point_cloud_cameras and render:
            obs[POINT_CLOUD] = self.point_cloud()
        for i, (cam, cam_id) in enumerate(zip(self.image_cameras, self._img_cam_ids, strict=True)):
            if not render:
                break
            obs[image_key(cam, i)] = np.ascontiguousarray(
                self._camera_rgb(cam_id, self.image_size).transpose(2, 0, 1)
            )  # (3, H, W)
        state = np.asarray(state, dtype=np.float32)
        obs[AGENT_POS] = state[:AGENT_POS_DIM].copy()
        obs[GOAL_POS] = state[-GOAL_DIM:].copy()
        obs[FULL_STATE] = state
        return obs

    def point_cloud(self) -> np.ndarray:
        """(num_points, 3|6) float32 workspace cloud of the current simulator state."""
        clouds = []
        for cam_id in self._pc_cam_ids:
            rgb, depth = self._renderer.render(
                self.data, cam_id, self.depth_size, self.depth_size, rgb=self.use_point_color, depth=True
            )
            assert depth is not None  # asked for above
            clouds.append(pc.mujoco_points(self.model, self.data, cam_id, depth, self._renderer.reversed_z, rgb=rgb))
        try:
            return pc.workspace_point_cloud(clouds, self.crop_box, self.num_points)
        except pc.PointCloudError as e:
            raise pc.PointCloudError(f"{self.task}, cameras {self.point_cloud_cameras}: {e}") from e

    def _camera_rgb(self, cam_id: int, size: int) -> np.ndarray:
        rgb, _ = self._renderer.render(self.data, cam_id, size, size, rgb=True, depth=False)
        assert rgb is not None  # asked for above
        if self._upside_down(cam_id):
            rgb = np.ascontiguousarray(rgb[::-1, ::-1])
        return rgb

    def _upside_down(self, cam_id: int) -> bool:
        """Meta-World's corner cameras are mounted upside down (their up axis points at the floor); their pictures
        are turned by 180 degrees, which is a camera roll, not a mirror."""
        return bool(self.data.cam_xmat[cam_id][7] < 0)  # world-z component of the camera's up (y) axis

    # ------------------------------------------------------------------ simulator access (tests, experts)
    @property
    def unwrapped_metaworld(self) -> Any:
        """The underlying metaworld ``SawyerXYZEnv``."""
        return self._env

    def object_position(self) -> np.ndarray:
        """World xyz of the task's main object."""
        return np.asarray(self._env._get_pos_objects()[:3], dtype=np.float64)


def _make_goal_observable(task: str) -> Any:
    """A metaworld v3 env set up as MT1 sets its tasks up (goal in the state, task kwargs applied)."""
    env = _mw_envs.ALL_V3_ENVIRONMENTS[task](render_mode=None)
    kwargs = dict(_mw_envs.ML1_ARGS_KWARGS[task]["kwargs"])
    kwargs.pop("task_id", None)
    env._partially_observable = False
    if "sawyer_observation_space" in env.__dict__:  # cached_property: recompute for the goal-observable size
        del env.sawyer_observation_space
    env._set_task_called = True
    env._set_task_inner(**kwargs)
    return env


def _space(spec: ObsSpec) -> gym.spaces.Box:
    if spec.type == "rgb":
        return gym.spaces.Box(0, 255, shape=spec.shape, dtype=np.uint8)
    return gym.spaces.Box(-np.inf, np.inf, shape=spec.shape, dtype=np.float32)


def metaworld_version() -> str:
    return getattr(metaworld, "__version__", None) or _dist_version("metaworld")


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"
