"""robosuite (robomimic's tasks) as a registered suite (:mod:`envs.suites`): images + proprioception, robomimic's
rollout horizons, demos written in robomimic's HDF5 layout."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.spec import ShapeMeta
from envs.suites import Suite, UnknownTaskError


class RobosuiteSuite(Suite):
    name = "robomimic"
    dataset_format = "robomimic_hdf5"

    def owns(self, task: str) -> bool:
        from envs.robosuite.env import is_robosuite_task  # robosuite itself is imported only when an env is made

        return is_robosuite_task(task)

    def check_task(self, task: str) -> str:
        from envs.robosuite.env import RobosuiteEnvError, task_name

        try:
            return task_name(task)
        except RobosuiteEnvError as e:
            raise UnknownTaskError(str(e)) from None

    def task_names(self) -> list[str]:
        from envs.robosuite.env import TASKS

        return list(TASKS)

    def suggest(self, task: str) -> list[str]:
        short = task.split("/", 1)[-1]
        return [f"robomimic/{m}" for m in difflib.get_close_matches(short, self.task_names(), n=3, cutoff=0.6)]

    def shape_meta(self, task: str, num_points: int = 512, image_size: int = 84) -> ShapeMeta:
        from envs.robosuite.env import robosuite_shape_meta

        return robosuite_shape_meta(task, image_size=image_size)

    def max_steps(self, task: str) -> int:
        from envs.robosuite.env import task_info

        return task_info(task).max_steps

    def env_kwargs(self, shape_meta: ShapeMeta, recorded: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from envs.robosuite.env import env_kwargs_from_shape_meta

        return env_kwargs_from_shape_meta(shape_meta)

    def expert_env_kwargs(self, render_obs: bool, videos: bool) -> dict[str, Any]:
        # Without observation images the env still needs one camera when videos are asked for.
        return {} if render_obs else {"cameras": ("agentview",) if videos else ()}

    def make_env(self, task: str, max_episode_steps: int, **env_kwargs: Any) -> Any:
        from envs.robosuite.env import RobosuiteEnv

        return RobosuiteEnv(task, max_episode_steps=max_episode_steps, **env_kwargs)

    def make_expert(self, task: str, action_noise: float = 0.0) -> Any:
        from envs.robosuite.experts import RobosuiteExpertAgent

        return RobosuiteExpertAgent(task, action_noise=action_noise)

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
        """Collect ``n_demos`` demos into ``path`` (robomimic's HDF5 writer cannot append to a finished file: the
        collector writes a partial file beside it, continued by the next run if this one is killed, and renames it
        into place when complete)."""
        if mode_mix is not None:
            self.check_mode_mix(task, mode_mix)  # refuses: one strategy per task
        from envs.robosuite.collect import collect_robomimic

        collect_robomimic(task=task, n_episodes=n_demos, out_path=str(path), image_size=image_size)
