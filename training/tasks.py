"""Bridges a task config to its data and its evaluation: the only place the trainer touches envs/ and demos/.

Everything here fails before training starts: an unknown task, a dataset whose keys or shapes do not match the
task's observation spec, a dataset collected for another task.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from demos.spec import ShapeMeta
from policies.config import PolicyConfig
from training.config import TaskConfig


class TaskDataError(ValueError):
    pass


@dataclass
class TaskData:
    shape_meta: ShapeMeta
    train: Any  # SequenceDataset: stats(), sample_batch(rng, batch_size)
    val: Optional[Any]


def task_shape_meta(task: TaskConfig) -> ShapeMeta:
    """The observation/action spec of ``task`` restricted to ``task.obs_keys`` (read from the environment)."""
    if task.suite == "metaworld":
        from envs.metaworld_env import metaworld_shape_meta

        full = metaworld_shape_meta(task.env, num_points=task.num_points, image_size=task.image_size)
    else:
        from envs.robosuite_env import robosuite_shape_meta

        full = robosuite_shape_meta(task.env, image_size=task.image_size)
    unknown = [k for k in task.obs_keys if k not in full.obs]
    if unknown:
        raise TaskDataError(f"task.obs_keys {unknown} are not observations of {task.env}; available: {list(full.obs)}")
    return ShapeMeta(obs={k: full.obs[k] for k in task.obs_keys}, action_dim=full.action_dim)


def ensure_demos(task: TaskConfig) -> Path:
    """Path of the task's demonstration dataset, collecting it with the scripted expert if it does not exist.

    Demos always use the first demo seeds (envs/seeds.py), whatever the training seed: every training seed of a
    sweep learns from the same demonstrations, as in DP3/MP1.
    """
    path = Path(task.dataset)
    if path.exists():
        return path
    if not task.collect_if_missing:
        raise TaskDataError(f"dataset '{path}' does not exist; fix task.dataset or set task.collect_if_missing=true "
                            f"to generate scripted-expert demos there")
    if task.suite == "metaworld":
        from demos.collect import collect

        image_cameras = ("corner2",) if any(k.startswith("image") for k in task.obs_keys) else ()
        print(f"[data] {path} not found: collecting {task.n_demos} scripted-expert demos of {task.env}")
        collect(task=task.env, n_episodes=task.n_demos, out_path=str(path), seed0=0, num_points=task.num_points,
                image_cameras=image_cameras, image_size=task.image_size, max_steps=task.max_episode_steps)
    else:
        from demos.collect_robomimic import collect_robomimic

        print(f"[data] {path} not found: collecting {task.n_demos} scripted-expert demos of robomimic {task.env}")
        collect_robomimic(task=task.env, n_episodes=task.n_demos, out_path=str(path), image_size=task.image_size)
    return path


def load_task_data(task: TaskConfig, policy: PolicyConfig, seed: int, val_ratio: float) -> TaskData:
    from demos.dataset import SequenceDataset

    shape_meta = task_shape_meta(task)
    path = ensure_demos(task)
    train = SequenceDataset(
        path,
        shape_meta=shape_meta,
        horizon=policy.horizon,
        n_obs_steps=policy.n_obs_steps,
        n_action_steps=policy.n_action_steps,
        val_ratio=val_ratio,
        seed=seed,
        max_train_episodes=task.n_demos,
    )
    recorded = train.attrs.get("task")
    if recorded is not None and recorded != task.env:
        raise TaskDataError(f"dataset {path} was collected for '{recorded}', but task.env is '{task.env}'")
    val = train.get_validation_dataset() if val_ratio > 0 else None
    return TaskData(shape_meta=shape_meta, train=train, val=val)


def evaluate_policy_dir(
    policy_dir: Path, task: TaskConfig, episodes: int, workers: int, out_dir: Path, videos: int
) -> dict[str, Any]:
    """Run the fixed-seed evaluation of a saved policy and write ``out_dir/eval_info.json``."""
    from envs.runner import evaluate_checkpoint

    return evaluate_checkpoint(
        str(policy_dir), episodes=episodes, n_workers=workers, out_dir=str(out_dir), n_videos=videos,
        max_steps=task.max_episode_steps, task=task.env,
    )
