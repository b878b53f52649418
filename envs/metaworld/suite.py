"""Meta-World v3 as a registered suite (:mod:`envs.suites`): DP3's observation recipe, 200-step episodes, zarr demos."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.spec import IMAGE, POINT_CLOUD, ShapeMeta
from envs.suites import Suite

MAX_STEPS = 200  # DP3/MP1's episode length for Meta-World (metaworld's own limit is 500)


class MetaWorldSuite(Suite):
    name = "metaworld"
    dataset_format = "zarr"

    def owns(self, task: str) -> bool:
        return task.endswith("-v3")

    def check_task(self, task: str) -> str:
        from envs.metaworld.env import check_task

        return check_task(task)

    def task_names(self) -> list[str]:
        from envs.metaworld.env import task_names

        return task_names()

    def shape_meta(self, task: str, num_points: int = 512, image_size: int = 84) -> ShapeMeta:
        from envs.metaworld.env import metaworld_shape_meta

        return metaworld_shape_meta(task, num_points=num_points, image_size=image_size)

    def max_steps(self, task: str) -> int:
        return MAX_STEPS

    def env_kwargs(self, shape_meta: ShapeMeta, recorded: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``point_cloud`` (N, 3|6) sets the point count and colour; ``image`` is camera corner2 and
        ``image_<camera>`` keys name their camera; the image size comes from the (3, H, W) shape. A crop box, point
        cloud cameras or depth size recorded with a checkpoint's task override the defaults."""
        kwargs: dict[str, Any] = {"point_cloud_cameras": (), "image_cameras": ()}
        cameras, sizes = [], set()
        for key, spec in shape_meta.obs.items():
            if key == POINT_CLOUD:
                kwargs.update(
                    point_cloud_cameras=("corner2",), num_points=spec.shape[0], use_point_color=spec.shape[1] == 6
                )
            elif spec.type == "rgb":
                if spec.shape[1] != spec.shape[2]:
                    raise ValueError(f"'{key}': Meta-World images are square, shape_meta says {spec.shape}")
                sizes.add(spec.shape[1])
                cameras.append("corner2" if key == IMAGE else key[len(IMAGE) + 1 :])
        if len(sizes) > 1:
            raise ValueError(f"image keys of different sizes {sorted(sizes)} are not supported by MetaWorldEnv")
        if cameras:
            if IMAGE not in shape_meta.obs:
                raise ValueError(f"image keys {cameras} need the first camera under key '{IMAGE}'")
            kwargs.update(image_cameras=tuple(cameras), image_size=sizes.pop())
        for key in ("crop_box", "point_cloud_cameras", "depth_size"):
            if recorded and recorded.get(key) is not None:
                kwargs[key] = recorded[key]
        return kwargs

    def expert_env_kwargs(self, render_obs: bool, videos: bool) -> dict[str, Any]:
        return {} if render_obs else {"point_cloud_cameras": (), "image_cameras": ()}

    def make_env(self, task: str, max_episode_steps: int, **env_kwargs: Any) -> Any:
        from envs.metaworld.env import MetaWorldEnv

        return MetaWorldEnv(task, max_episode_steps=max_episode_steps, **env_kwargs)

    def make_expert(self, task: str, action_noise: float = 0.0) -> Any:
        from envs.metaworld.expert import ScriptedExpert

        return ScriptedExpert(task, noise_std=action_noise)

    def ensure_demos(
        self,
        task: str,
        path: Path,
        n_demos: int,
        obs_keys: Sequence[str],
        num_points: int,
        image_size: int,
        max_steps: int,
        mode_mix: Sequence[float] | None = None,
    ) -> None:
        """Collect (or complete, after a killed collection) ``n_demos`` episodes into the zarr at ``path``."""
        if mode_mix is not None:
            self.check_mode_mix(task, mode_mix)  # refuses: one strategy per task
        from envs.metaworld.collect import collect

        image_cameras = ("corner2",) if any(k.startswith(IMAGE) for k in obs_keys) else ()
        collect(
            task=task,
            n_episodes=n_demos,
            out_path=str(path),
            seed0=0,
            num_points=num_points,
            image_cameras=image_cameras,
            image_size=image_size,
            max_steps=max_steps,
        )

    def needs_more_demos(self, path: Path, task: str, n_demos: int) -> bool:
        """A zarr this collector wrote for ``task`` that holds fewer than ``n_demos`` episodes."""
        if not path.is_dir():  # zarr datasets are folders
            return False
        from demos.replay_buffer import ReplayBuffer  # zarr costs 0.5 s to import: only when a dataset is read

        rb = ReplayBuffer.open(path, mode="r")
        return rb.attrs.get("suite") == self.name and rb.attrs.get("task") == task and rb.n_episodes < n_demos
