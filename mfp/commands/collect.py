"""`mfp collect`: scripted-expert demonstrations of a task, in its suite's dataset format.

mfp collect task=reach-v3 n_episodes=10 out=data/reach.zarr
mfp collect task=hammer-v3 image_cameras=[] action_noise=0.05      # point clouds only, noisy expert
mfp collect task=coffee-pull-v3 execution_noise=0.2                # DART-style recovery demos
mfp collect task=robomimic/lift n_episodes=50                      # robosuite -> robomimic HDF5
mfp collect task=multimodal/detour n_episodes=20 mode_mix=[0.7,0.3]  # two strategies, 70/30 per demo seed
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import check_int, check_number
from envs.execution_noise import check_execution_noise
from envs.suites import suite_for_task
from mfp.cli_args import parse_overrides


@dataclass
class CollectConfig:
    """Arguments of `mfp collect` (hydra-style ``key=value`` overrides; unknown keys fail)."""

    task: str = "button-press-topdown-v3"
    n_episodes: int = 10
    # Output dataset; empty -> data/<task>.zarr
    out: str = ""
    # Offset into the demonstration seed range (core/seeds.py); episode k of a fresh dataset uses seed seed0 + k.
    seed0: int = 0
    num_points: int = 512
    point_cloud_cameras: list[str] = field(default_factory=lambda: ["corner2"])
    image_cameras: list[str] = field(default_factory=lambda: ["corner2"])
    image_size: int = 84
    depth_size: int = 128
    use_point_color: bool = False
    max_steps: int = 200
    # Std of Gaussian noise added to the expert's actions (diversity); 0 = the plain expert.
    action_noise: float = 0.0
    # Std of AR(1) noise added to the executed xyz only, the expert's command recorded (DART); 0 = none.
    execution_noise: float = 0.0
    min_success_steps: int = 5
    # End an episode once it has min_success_steps successful steps (the evaluation also stops at success);
    # false runs every episode to max_steps as DP3 did.
    stop_on_success: bool = True
    # Give up after this many episodes in total (0 -> 10 x n_episodes).
    max_attempts: int = 0
    overwrite: bool = False
    progress: bool = True
    # Multimodal tasks only: the probability of each scripted strategy per demo seed (null: equal).
    mode_mix: list[float] | None = None

    def __post_init__(self) -> None:
        for name in ("n_episodes", "num_points", "image_size", "depth_size", "max_steps", "min_success_steps"):
            check_int(name, getattr(self, name), 1)
        check_int("seed0", self.seed0, 0)
        check_int("max_attempts", self.max_attempts, 0)
        check_number("action_noise", self.action_noise, 0.0)
        check_execution_noise(self.execution_noise)


@dataclass
class RobomimicCollectConfig:
    """``key=value`` options of ``mfp collect task=robomimic/<task>``."""

    task: str = "lift"
    n_episodes: int = 10
    out: str = (
        ""  # default: data/robomimic-<task>-<n_episodes>demos.hdf5 (where `mfp train task=robomimic/<task>` looks)
    )
    seed0: int = 0
    image_size: int = 84
    cameras: list[str] = field(default_factory=lambda: ["agentview", "robot0_eye_in_hand"])
    val_ratio: float = 0.1
    fast_render: bool = True
    max_attempts: int = 0  # 0: 2 * n_episodes + 10
    overwrite: bool = False
    execution_noise: float = 0.0  # > 0: DART-style recovery demos (module docstring)

    def __post_init__(self) -> None:
        for name in ("n_episodes", "image_size"):
            check_int(name, getattr(self, name), 1)
        check_int("seed0", self.seed0, 0)
        check_int("max_attempts", self.max_attempts, 0)
        check_number("val_ratio", self.val_ratio, 0.0, 1.0, high_open=True)
        check_execution_noise(self.execution_noise)


def _task_arg(argv: list[str]) -> str | None:
    tasks = [a.split("=", 1)[1] for a in argv if a.startswith("task=")]
    return tasks[-1] if tasks else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    task = _task_arg(argv)
    if task is not None and suite_for_task(task).name == "robomimic":
        return _collect_robomimic(parse_overrides(RobomimicCollectConfig, argv, "mfp collect"))
    cfg: CollectConfig = parse_overrides(CollectConfig, argv, "mfp collect")
    suite = suite_for_task(cfg.task)
    out = cfg.out or f"data/{cfg.task.replace('/', '-')}.zarr"
    options: dict[str, Any] = {}
    collect: Callable[..., dict[str, Any]]
    if suite.name == "multimodal":
        from envs.multimodal.collect import collect as collect_multimodal

        collect = collect_multimodal
        options["mode_mix"] = suite.check_mode_mix(cfg.task, cfg.mode_mix) if cfg.mode_mix is not None else None
    else:
        from envs.metaworld.collect import collect as collect_metaworld

        collect = collect_metaworld
        if cfg.mode_mix is not None:
            suite.check_mode_mix(cfg.task, cfg.mode_mix)  # refuses: one strategy per task
    summary = collect(
        cfg.task,
        cfg.n_episodes,
        out,
        **options,
        seed0=cfg.seed0,
        num_points=cfg.num_points,
        point_cloud_cameras=cfg.point_cloud_cameras,
        image_cameras=cfg.image_cameras,
        image_size=cfg.image_size,
        depth_size=cfg.depth_size,
        use_point_color=cfg.use_point_color,
        max_steps=cfg.max_steps,
        action_noise=cfg.action_noise,
        execution_noise=cfg.execution_noise,
        min_success_steps=cfg.min_success_steps,
        stop_on_success=cfg.stop_on_success,
        max_attempts=cfg.max_attempts,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
    )
    lengths = summary["episode_lengths"]
    print(
        f"[collect] {summary['task']}: {summary['n_episodes']} episodes ({summary['n_steps']} steps, "
        f"length {min(lengths)}-{max(lengths)}) in {summary['path']}; {summary['new_episodes']} new from "
        f"{summary['attempts']} attempts in {summary['seconds']:.1f} s"
    )
    return 0


def _collect_robomimic(cfg: RobomimicCollectConfig) -> int:
    from envs.robosuite.collect import collect_robomimic

    task = cfg.task.split("/")[-1]
    out = cfg.out or f"data/robomimic-{task}-{cfg.n_episodes}demos.hdf5"
    collect_robomimic(
        task=task,
        n_episodes=cfg.n_episodes,
        out_path=out,
        seed0=cfg.seed0,
        image_size=cfg.image_size,
        cameras=tuple(cfg.cameras),
        max_attempts=cfg.max_attempts or None,
        val_ratio=cfg.val_ratio,
        fast_render=cfg.fast_render,
        overwrite=cfg.overwrite,
        execution_noise=cfg.execution_noise,
    )
    return 0
