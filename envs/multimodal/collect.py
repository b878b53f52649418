"""Scripted demonstrations of a multimodal task into a DP/DP3 zarr dataset, through Meta-World's collector
(:func:`envs.metaworld.collect.collect`) with the mixed expert: each episode follows the strategy its seed draws
from ``mode_mix``. The mix is recorded with the dataset (a rerun must use the same one), and so is each episode's
seed, from which :func:`envs.multimodal.experts.strategy_for_seed` gives back its strategy."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envs.metaworld.collect import collect as collect_zarr
from envs.multimodal.env import MultimodalEnv
from envs.multimodal.experts import StrategyExpert
from envs.multimodal.tasks import get_task
from envs.suites import CollectionError, get_suite

SUITE = "multimodal"
PREFIX = f"{SUITE}/"


def short_name(task: str) -> str:
    """``multimodal/detour`` or ``detour`` -> ``detour``."""
    return task[len(PREFIX) :] if task.startswith(PREFIX) else task


def collect(
    task: str, n_episodes: int, out_path: str | Path, mode_mix: Sequence[float] | None = None, **options: Any
) -> dict[str, Any]:
    """``n_episodes`` successful episodes of ``task`` at ``out_path``; ``options`` are those of Meta-World's
    collector (observations, seeds, ``max_steps``, ...), except ``action_noise``, which the strategies lack."""
    name = short_name(task)
    names = list(get_task(name).strategies)
    mix = get_suite(SUITE).check_mode_mix(task, [1.0 / len(names)] * len(names) if mode_mix is None else mode_mix)
    if options.get("action_noise"):
        raise CollectionError("the multimodal experts take no action_noise (use execution_noise)")
    return collect_zarr(
        f"{PREFIX}{name}",
        n_episodes,
        out_path,
        make_env=functools.partial(MultimodalEnv, name),
        expert=StrategyExpert(name, mix=mix),
        suite=SUITE,
        extra_settings={"mode_mix": mix, "strategies": names},
        **options,
    )
