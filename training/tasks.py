"""Bridges a task config to its data: the task's observation spec, its demonstrations (collected if missing).

Everything here fails before training starts: an unknown task, a dataset whose keys or shapes do not match the
task's observation spec, a dataset collected for another task.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import MfpError
from core.spec import ShapeMeta
from demos.replay_buffer import ReplayBufferError
from envs.suites import get_suite
from policies.config import PolicyConfig
from training.config import TaskConfig


class TaskDataError(MfpError, ValueError):
    pass


@dataclass
class TaskData:
    shape_meta: ShapeMeta
    train: Any  # SequenceDataset: stats(), sample_batch(rng, batch_size)
    val: Any | None


def task_shape_meta(task: TaskConfig) -> ShapeMeta:
    """The observation/action spec of ``task`` restricted to ``task.obs_keys``: read from the environment, or for a
    task without a simulator from the dataset's ``obs_types`` (:func:`dataset_shape_meta`)."""
    if not task.has_simulator:
        return dataset_shape_meta(task)
    full = get_suite(task.suite).shape_meta(task.env, num_points=task.num_points, image_size=task.image_size)
    unknown = [k for k in task.obs_keys if k not in full.obs]
    if unknown:
        raise TaskDataError(f"task.obs_keys {unknown} are not observations of {task.env}; available: {list(full.obs)}")
    return ShapeMeta(obs={k: full.obs[k] for k in task.obs_keys}, action_dim=full.action_dim)


def check_policy_fits(shape_meta: ShapeMeta, policy: PolicyConfig) -> None:
    """:class:`TaskDataError` for a policy setting the observations cannot take: an image crop larger than the
    images (your own camera's size is whatever it recorded)."""
    crop = list(policy.encoder.image_crop_shape)
    for key, spec in shape_meta.obs.items():
        if spec.type == "rgb" and (crop[0] > spec.shape[-2] or crop[1] > spec.shape[-1]):
            h, w = spec.shape[-2:]
            raise TaskDataError(
                f"policy.encoder.image_crop_shape={crop} does not fit the {h}x{w} images of '{key}'; set it to "
                f"[{h * 9 // 10},{w * 9 // 10}] (90 %, as 76 of 84) or smaller"
            )


def dataset_shape_meta(task: TaskConfig) -> ShapeMeta:
    """The spec of ``task.obs_keys`` as the zarr dataset ``task.dataset`` records it (its ``obs_types`` attribute,
    written by `mfp convert` and `mfp deploy record=`); reads only the dataset's metadata."""
    from demos.replay_buffer import ReplayBuffer
    from demos.robomimic_hdf5 import is_robomimic_file

    path = Path(task.dataset)
    if not path.exists():
        raise TaskDataError(f"dataset '{path}' does not exist; task.dataset names your recordings for task.suite=none")
    if is_robomimic_file(path):
        raise TaskDataError(
            f"'{path}' is a robomimic HDF5 file; train it with its task (e.g. task=robomimic/lift task.dataset={path}) "
            f"or convert it with mfp convert src={path} out=<name>.zarr"
        )
    try:
        buffer = ReplayBuffer.open(path, mode="r")
    except Exception as e:  # zarr raises many error types for a path that is not a dataset
        raise TaskDataError(f"'{path}' is not a zarr dataset ({type(e).__name__}: {e})") from e
    types = dict(buffer.attrs.get("obs_types") or {})
    if not types:
        raise TaskDataError(
            f"dataset '{path}' records no obs_types (which of its keys {buffer.keys} are observations, of what type); "
            "make it with mfp convert or mfp deploy record=, or set the zarr attribute obs_types"
        )
    unknown = [k for k in task.obs_keys if k not in types]
    if unknown:
        raise TaskDataError(
            f"task.obs_keys {unknown} are not observations of dataset '{path}'; available: {list(types)}"
        )
    return buffer.shape_meta(task.obs_keys)  # SpecError (one line) for a key the dataset types but does not hold


def ensure_demos(task: TaskConfig) -> Path:
    """Path of the task's demonstration dataset, collecting it with the scripted expert if it does not exist.

    Demos always use the first demo seeds (core/seeds.py), whatever the training seed: every training seed of a
    sweep learns from the same demonstrations, as in DP3/MP1. Jobs of a parallel sweep that need the same missing
    dataset take turns on a lock file beside it: one collects, the others wait and then read it. A Meta-World
    dataset this collector left with fewer than ``task.demos_to_collect`` episodes (a killed collection) is completed.
    """
    path = Path(task.dataset)
    if path.exists() and not _needs_more_demos(path, task):
        return path
    if not task.has_simulator:
        raise TaskDataError(f"dataset '{path}' does not exist; task.dataset names your recordings for task.suite=none")
    if not path.exists() and not task.collect_if_missing:
        raise TaskDataError(
            f"dataset '{path}' does not exist; fix task.dataset or set task.collect_if_missing=true "
            f"to generate scripted-expert demos there"
        )
    suite = get_suite(task.suite)
    with _collection_lock(path):
        if path.exists() and not _needs_more_demos(path, task):
            return path  # another job collected it while this one waited
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed job; none is writing now
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        existing = _episodes_in(path) if path.exists() else None
        what = "not found: collecting" if existing is None else f"holds {existing} episodes: completing it to"
        count = task.demos_to_collect
        print(f"[data] {path} {what} {count} scripted-expert demos of {task.suite} {task.env}")
        try:
            suite.ensure_demos(
                task.env,
                path,
                count,
                task.obs_keys,
                task.num_points,
                task.image_size,
                task.max_episode_steps,
                mode_mix=task.mode_mix,
            )
        except ReplayBufferError as e:
            if existing is None:
                raise
            raise TaskDataError(
                f"'{path}' holds {existing} of the {count} episodes to collect and cannot be "
                f"completed with this task's settings ({e}); set task.n_demos={existing} to train "
                "on them, or point task.dataset elsewhere"
            ) from e
    return path


def _episodes_in(path: Path) -> int:
    from demos.replay_buffer import ReplayBuffer

    return ReplayBuffer.open(path, mode="r").n_episodes


def _needs_more_demos(path: Path, task: TaskConfig) -> bool:
    """True for a dataset the task's collector left short of ``task.demos_to_collect`` while collection is allowed;
    any other existing dataset is used as it is."""
    return task.collect_if_missing and get_suite(task.suite).needs_more_demos(path, task.env, task.demos_to_collect)


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
    check_policy_fits(shape_meta, policy)
    path = ensure_demos(task)
    source, selected = _select_demos(path, task, list(shape_meta.obs))
    train = SequenceDataset(
        source,
        shape_meta=shape_meta,
        horizon=policy.horizon,
        n_obs_steps=policy.n_obs_steps,
        n_action_steps=policy.n_action_steps,
        val_ratio=val_ratio,
        seed=seed,
        max_train_episodes=task.n_demos,
    )
    recorded = train.attrs.get("task")  # a simulator task's name (your recordings may hold an instruction there)
    if not task.has_simulator:
        recorded = None
    if recorded is not None and _canonical(task.suite, recorded) != _canonical(task.suite, task.env):
        raise TaskDataError(f"dataset {path} was collected for '{recorded}', but task.env is '{task.env}'")
    val = train.get_validation_dataset() if val_ratio > 0 else None
    available = train.n_episodes_total - (len(val.episodes) if val is not None else 0)
    parts = [selected] + ([f"{len(val.episodes)} held out for validation"] if val is not None else [])
    if task.n_demos is not None and task.n_demos < available:
        parts.append(f"a seeded {task.n_demos} of {available}: task.n_demos={task.n_demos}")
    elif task.n_demos is not None and task.n_demos > available:
        parts.append(f"fewer than task.n_demos={task.n_demos}")
    print(f"[data] {path}: training on {len(train.episodes)} demos ({'; '.join(parts)})", flush=True)
    return TaskData(shape_meta=shape_meta, train=train, val=val)


def _select_demos(path: Path, task: TaskConfig, obs_keys: list[str]) -> tuple[Any, str]:
    """The dataset to train on (a robomimic file read through ``mask/<filter_key>``) and a description of the
    selection for the log line: which demos of how many the file holds."""
    from demos.robomimic_hdf5 import is_robomimic_file, list_demos, load_replay_buffer, read_masks

    if not is_robomimic_file(path):
        if task.filter_key not in (None, "all"):
            raise TaskDataError(
                f"task.filter_key={task.filter_key}: {path} is a zarr dataset, which has no masks (robomimic HDF5 "
                "files do); set task.filter_key=null"
            )
        return path, "every demo of the dataset"
    masks = read_masks(path)
    total = len(list_demos(path))
    key = task.filter_key
    if key is None:
        key = "train" if "train" in masks else "all"
    if key == "all":
        names = None
        what = f"all {total} demos of the file" + (f"; its masks {sorted(masks)} unused" if masks else "")
    elif key not in masks:
        raise TaskDataError(
            f"task.filter_key={key}: {path} has no mask '{key}'; its masks: {sorted(masks) or 'none'} "
            "(task.filter_key=all trains on every demo)"
        )
    else:
        names = key
        what = f"mask '{key}': {len(masks[key])} of the {total} demos in the file"
    return load_replay_buffer(path, obs_keys=obs_keys, filter_key=names), what


def _canonical(suite: str, name: str) -> str:
    try:
        return get_suite(suite).check_task(name)
    except ValueError:
        return name
