"""The multimodal tasks (:mod:`envs.multimodal`) as a registered suite (:mod:`envs.suites`): Meta-World's Sawyer
scene and observation recipe (point cloud from corner2 + agent_pos), each task's own episode length, demos from the
seed-drawn mix of strategies, and a mode classifier for the evaluation."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.spec import AGENT_POS, FULL_STATE, POINT_CLOUD, ObsSpec, ShapeMeta
from envs.metaworld.suite import MetaWorldSuite
from envs.suites import UnknownTaskError

PREFIX = "multimodal/"


class MultimodalSuite(MetaWorldSuite):
    """Task names are ``multimodal/<task>``; observations and their env arguments are Meta-World's."""

    name = "multimodal"
    dataset_format = "zarr"

    def owns(self, task: str) -> bool:
        return task.startswith(PREFIX)

    def check_task(self, task: str) -> str:
        from envs.multimodal.tasks import TASKS

        short = task[len(PREFIX) :] if task.startswith(PREFIX) else task
        if short in TASKS:
            return PREFIX + short
        close = difflib.get_close_matches(short, list(TASKS), n=3, cutoff=0.5)
        known = ", ".join(PREFIX + c for c in close) if close else ""
        hint = f"did you mean: {known}?" if close else f"known: {', '.join(self.task_names())}"
        raise UnknownTaskError(f"unknown multimodal task '{task}'; {hint}")

    def task_names(self) -> list[str]:
        from envs.multimodal.tasks import TASKS

        return [PREFIX + t for t in TASKS]

    def suggest(self, task: str) -> list[str]:
        short = task.split("/", 1)[-1]
        return [PREFIX + m for m in difflib.get_close_matches(short, [t[len(PREFIX) :] for t in self.task_names()])]

    def _task(self, task: str) -> Any:
        from envs.multimodal.tasks import get_task

        return get_task(self.check_task(task)[len(PREFIX) :])

    def shape_meta(self, task: str, num_points: int = 512, image_size: int = 84) -> ShapeMeta:
        """Point cloud, the corner2 image, agent_pos and the privileged full_state (agent_pos + task state)."""
        spec = self._task(task)
        obs = {
            POINT_CLOUD: ObsSpec(POINT_CLOUD, "point_cloud", (num_points, 3)),
            "image": ObsSpec("image", "rgb", (3, image_size, image_size)),
            AGENT_POS: ObsSpec(AGENT_POS, "low_dim", (4,)),
            FULL_STATE: ObsSpec(FULL_STATE, "low_dim", (4 + spec.task_state_dim,)),
        }
        return ShapeMeta(obs=obs, action_dim=4)

    def max_steps(self, task: str) -> int:
        return int(self._task(task).max_episode_steps)

    def make_env(self, task: str, max_episode_steps: int, **env_kwargs: Any) -> Any:
        from envs.multimodal.env import MultimodalEnv

        return MultimodalEnv(self._task(task).name, max_episode_steps=max_episode_steps, **env_kwargs)

    def make_expert(self, task: str, action_noise: float = 0.0) -> Any:
        """The mixed expert (each episode's strategy drawn from its seed, equal mix)."""
        from envs.multimodal.experts import StrategyExpert

        if action_noise:
            raise UnknownTaskError("the multimodal experts take no action_noise")
        return StrategyExpert(self._task(task).name)

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
        """Collect (or complete) ``n_demos`` episodes of the ``mode_mix`` of strategies into the zarr at ``path``."""
        from envs.multimodal.collect import collect

        collect(
            self.check_task(task),
            n_demos,
            path,
            mode_mix=mode_mix,
            seed0=0,
            num_points=num_points,
            image_cameras=("corner2",) if any(k.startswith("image") for k in obs_keys) else (),
            image_size=image_size,
            max_steps=max_steps,
        )

    def strategies(self, task: str) -> list[str]:
        return list(self._task(task).strategies)

    def mode_classifier(self, task: str) -> Callable[[Any, Any], Mapping[str, Any]] | None:
        """:meth:`envs.multimodal.tasks.MultimodalTask.mode_record`: the strategy an episode followed and whether
        it dithered, from its ``full_state`` trajectory."""
        return self._task(task).mode_record
