"""The registry of simulator suites: for a task name, how to build its env, its scripted expert and its demos.

Each suite (Meta-World, robosuite, ...) is a :class:`Suite` subclass in its own package; this module names them by
import path and imports one only when it is asked for, so ``import envs.suites`` starts no simulator. Everything
that used to ask "is this a robosuite task?" asks the registry instead: :func:`suite_for_task` for a task name,
:func:`get_suite` for a suite name (``task.suite`` in the training config).
"""

from __future__ import annotations

import difflib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import ConfigError, MfpError
from core.spec import ShapeMeta


class UnknownTaskError(MfpError, ValueError):
    """A task name that no registered suite knows."""


class CollectionError(MfpError, RuntimeError):
    """A collector cannot produce what was asked (too few successful episodes, seeds exhausted, a wrong out path)."""


class Suite(ABC):
    """What the rest of the package needs from a simulator suite; every method takes plain arguments."""

    name: str = ""
    dataset_format: str = ""  # "zarr" (DP/DP3 layout) or "robomimic_hdf5"

    @abstractmethod
    def owns(self, task: str) -> bool:
        """True when ``task`` names a task of this suite (cheap: imports no simulator)."""

    @abstractmethod
    def check_task(self, task: str) -> str:
        """The canonical name of ``task``; :class:`UnknownTaskError` (with close matches) for a name it lacks."""

    @abstractmethod
    def task_names(self) -> list[str]:
        """Every task of the suite (canonical names)."""

    @abstractmethod
    def shape_meta(self, task: str, num_points: int = 512, image_size: int = 84) -> ShapeMeta:
        """Every observation the suite's env of ``task`` can produce with these settings, and the action size."""

    @abstractmethod
    def max_steps(self, task: str) -> int:
        """The benchmark's own rollout horizon for ``task`` (the evaluation's default step limit)."""

    @abstractmethod
    def env_kwargs(self, shape_meta: ShapeMeta, recorded: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Constructor arguments of :meth:`make_env` that produce the observations ``shape_meta`` declares;
        ``recorded`` holds settings a checkpoint's task metadata recorded (e.g. a point-cloud crop box)."""

    @abstractmethod
    def expert_env_kwargs(self, render_obs: bool, videos: bool) -> dict[str, Any]:
        """Constructor arguments for running the scripted expert: nothing rendered that it does not read, unless
        ``render_obs``; a camera for the videos when ``videos``."""

    @abstractmethod
    def make_env(self, task: str, max_episode_steps: int, **env_kwargs: Any) -> Any:
        """The env: ``reset(seed) -> (obs, info)``, ``step(a) -> (obs, reward, terminated, truncated, info)`` with
        ``info["success"]``, ``obs_keys``, ``action_dim``, ``render()``, ``close()``."""

    @abstractmethod
    def make_expert(self, task: str, action_noise: float = 0.0) -> Any:
        """The scripted expert as an agent (``reset(seed)``, ``n_obs_steps``, ``predict_action(obs)``)."""

    @abstractmethod
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
        """Write (or complete) ``n_demos`` scripted-expert demos of ``task`` at ``path`` in this suite's format;
        ``mode_mix``: the probability of each of :meth:`strategies` (None: equal), for suites that have several."""

    def strategies(self, task: str) -> list[str]:
        """The strategies that the scripted demos of ``task`` mix (a multimodal suite), else []."""
        return []

    def mode_classifier(self, task: str) -> Callable[[Any, Any], Mapping[str, Any]] | None:
        """For a suite with :meth:`strategies`: ``f(full_states (T, D), success (T,)) -> {"mode", "switched",
        "stalled", "dithered"}``, the strategy an evaluation episode followed, decided from its ``full_state``
        trajectory (``info["full_state"]`` of the reset and of every step); None where there is nothing to classify."""
        return None

    def check_mode_mix(self, task: str, mode_mix: Sequence[float]) -> list[float]:
        """``mode_mix`` as one probability per strategy of ``task``; :class:`MfpError` if it is not that."""
        names = self.strategies(task)
        if not names:
            raise ConfigError(
                f"task '{task}' ({self.name}) has one scripted strategy: a mode_mix applies only to multimodal tasks"
            )
        mix = [float(p) for p in mode_mix]
        if len(mix) != len(names) or any(p < 0 for p in mix) or abs(sum(mix) - 1.0) > 1e-6:
            raise ConfigError(
                f"mode_mix must be {len(names)} probabilities summing to 1, one per strategy of {task} "
                f"({', '.join(names)}); got {mix}"
            )
        return mix

    def needs_more_demos(self, path: Path, task: str, n_demos: int) -> bool:
        """True when ``path`` is a dataset this suite's collector left short of ``n_demos`` (a killed collection)
        and can complete; suites whose collector cannot append say False."""
        return False

    def suggest(self, task: str) -> list[str]:
        """Close matches of an unknown ``task`` among this suite's names."""
        return difflib.get_close_matches(task, self.task_names(), n=3, cutoff=0.6)


# Suite name -> "module:Class". Later suites plug in with register_suite; the first suite whose owns() accepts a task
# name gets it.
_SUITES: dict[str, str] = {
    "robomimic": "envs.robosuite.suite:RobosuiteSuite",
    "metaworld": "envs.metaworld.suite:MetaWorldSuite",
    "multimodal": "envs.multimodal.suite:MultimodalSuite",
}
_INSTANCES: dict[str, Suite] = {}

# ``task.suite`` of a task with no simulator: your own recordings (a converted LeRobot dataset, `mfp deploy record=`
# episodes). Its observation spec comes from the dataset's ``obs_types``; it has no scripted expert to collect demos
# with and no env to evaluate or fine-tune in. Not a registered suite: :func:`get_suite` refuses it by name.
NO_SIMULATOR = "none"


def register_suite(name: str, target: str) -> None:
    """Register suite ``name`` implemented by ``target`` (``"package.module:ClassName"``)."""
    if name in _SUITES and _SUITES[name] != target:
        raise ValueError(f"suite '{name}' is registered twice ({_SUITES[name]} and {target})")
    _SUITES[name] = target


def suite_names() -> list[str]:
    return list(_SUITES)


def get_suite(name: str) -> Suite:
    """The suite registered as ``name``; an unknown name lists the known ones."""
    if name == NO_SIMULATOR:
        raise UnknownTaskError(
            f"task.suite={NO_SIMULATOR} trains on a dataset alone: there is no simulator to collect, evaluate or "
            "fine-tune in"
        )
    if name not in _SUITES:
        raise UnknownTaskError(f"unknown task suite '{name}'; known: {', '.join(_SUITES)}")
    if name not in _INSTANCES:
        module_name, class_name = _SUITES[name].split(":")
        _INSTANCES[name] = getattr(importlib.import_module(module_name), class_name)()
    return _INSTANCES[name]


def suite_for_task(task: str) -> Suite:
    """The suite that owns ``task``; an unknown name lists close matches from every suite."""
    for name in _SUITES:
        suite = get_suite(name)
        if suite.owns(task):
            return suite
    close = [m for name in _SUITES for m in get_suite(name).suggest(task)]
    hint = (
        f"did you mean: {', '.join(close)}?"
        if close
        else "; ".join(f"{name}: e.g. {', '.join(get_suite(name).task_names()[:3])}" for name in _SUITES)
    )
    raise UnknownTaskError(f"unknown task '{task}'; {hint}")
