"""Bridges a task config to its data and its evaluation: the only place the trainer touches envs/ and demos/.

Everything here fails before training starts: an unknown task, a dataset whose keys or shapes do not match the
task's observation spec, a dataset collected for another task.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

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
    sweep learns from the same demonstrations, as in DP3/MP1. Jobs of a parallel sweep that need the same missing
    dataset take turns on a lock file beside it: one collects, the others wait and then read it. A Meta-World
    dataset this collector left with fewer than ``task.n_demos`` episodes (a killed collection) is completed.
    """
    path = Path(task.dataset)
    if path.exists() and not _needs_more_demos(path, task):
        return path
    if not path.exists() and not task.collect_if_missing:
        raise TaskDataError(f"dataset '{path}' does not exist; fix task.dataset or set task.collect_if_missing=true "
                            f"to generate scripted-expert demos there")
    with _collection_lock(path):
        if path.exists() and not _needs_more_demos(path, task):
            return path  # another job collected it while this one waited
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed job; none is writing now
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        if task.suite == "metaworld":
            from demos.collect import collect
            from demos.replay_buffer import ReplayBuffer, ReplayBufferError

            image_cameras = ("corner2",) if any(k.startswith("image") for k in task.obs_keys) else ()
            existing = ReplayBuffer.open(path).n_episodes if path.exists() else None
            what = "not found: collecting" if existing is None else f"holds {existing} episodes: completing it to"
            print(f"[data] {path} {what} {task.n_demos} scripted-expert demos of {task.env}")
            try:
                collect(task=task.env, n_episodes=task.n_demos, out_path=str(path), seed0=0,
                        num_points=task.num_points, image_cameras=image_cameras, image_size=task.image_size,
                        max_steps=task.max_episode_steps)
            except ReplayBufferError as e:
                if existing is None:
                    raise
                raise TaskDataError(f"'{path}' holds {existing} of task.n_demos={task.n_demos} episodes and cannot be "
                                    f"completed with this task's settings ({e}); set task.n_demos={existing} to train "
                                    "on them, or point task.dataset elsewhere") from e
        else:
            from demos.collect_robomimic import collect_robomimic

            # robomimic's HDF5 writer cannot append: write beside the target and rename, so a killed collection
            # leaves no partial file under the dataset's name.
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            print(f"[data] {path} not found: collecting {task.n_demos} scripted-expert demos of robomimic {task.env}")
            try:
                collect_robomimic(task=task.env, n_episodes=task.n_demos, out_path=str(tmp),
                                  image_size=task.image_size, overwrite=True)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
    return path


def _needs_more_demos(path: Path, task: TaskConfig) -> bool:
    """True for a Meta-World dataset of this task, made by the collector, holding fewer than ``task.n_demos``
    episodes while collection is allowed; any other existing dataset is used as it is."""
    if task.suite != "metaworld" or not task.collect_if_missing or not path.is_dir():  # zarr datasets are folders
        return False
    from demos.replay_buffer import ReplayBuffer  # zarr costs 0.5 s to import: only when a dataset is read

    rb = ReplayBuffer.open(path, mode="r")
    return rb.attrs.get("suite") == "metaworld" and rb.attrs.get("task") == task.env and rb.n_episodes < task.n_demos


@contextmanager
def _collection_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (``flock``) on ``.<name>.lock`` beside ``path``, held while collecting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[data] another process is collecting {path}: waiting for it", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
    policy_dir: Path, task: TaskConfig, episodes: int, workers: int, out_dir: Path, videos: int, device: str = "cpu"
) -> dict[str, Any]:
    """Run the fixed-seed evaluation of a saved policy on ``device`` and write ``out_dir/eval_info.json``."""
    from envs.runner import evaluate_checkpoint

    return evaluate_checkpoint(
        str(policy_dir), episodes=episodes, n_workers=workers, out_dir=str(out_dir), n_videos=videos,
        max_steps=task.max_episode_steps, task=task.env, device=device,
    )
