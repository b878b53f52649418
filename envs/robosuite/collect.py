"""Scripted-expert demonstrations of the robosuite tasks, written as a robomimic HDF5 file.

    mfp collect task=robomimic/lift n_episodes=50 out=data/robomimic_lift.hdf5

Each episode uses the next demonstration seed (:mod:`core.seeds`) for both the initial state and the expert's
noise; only successful episodes are kept, each with its ``seed`` attribute, until ``n_episodes`` are written.

``execution_noise=S`` collects DART-style recovery demos: the executed translation is the expert's command plus
temporally correlated noise (std ``S`` in action units), while the *recorded* action stays the expert's own command.
The expert, a closed-loop waypoint controller, is then shown in states it would not reach by itself and corrects
them, which is what a cloned policy needs after its own errors (it re-grasps after a miss, but at the noise that
keeps it successful, 0.1 on Can, no demo held a miss).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic_write import check_output
from core.errors import ConfigError
from core.seeds import demo_seeds
from demos.robomimic_hdf5 import Demo, RobomimicFormatError, RobomimicWriter, read_file_attrs, split_masks
from envs.execution_noise import ExecutionNoise, check_execution_noise
from envs.robosuite.env import RobosuiteEnv
from envs.robosuite.experts import make_expert
from envs.suites import CollectionError


def record_episode(
    env: RobosuiteEnv, expert: Any, seed: int, max_steps: int | None = None, execution_noise: float = 0.0
) -> tuple[Demo, bool]:
    """Run ``expert`` in ``env`` from ``seed`` until success or ``max_steps``; returns the demo and success.

    ``obs[t]`` and ``states[t]`` are taken before ``actions[t]``; ``next_obs[t]``, ``rewards[t]`` after it;
    ``dones[t]`` is 1 at success or at the last step (robomimic's done_mode 2). ``obs[t]`` is the observation of
    ``states[t]`` itself (what robomimic's ``dataset_states_to_obs.py`` extracts from it), and ``model_file`` is the
    MJCF the env runs on: robomimic's ``playback_dataset.py --use-actions`` (rebuild from ``model_file``, set
    ``states[0]``, step ``actions``) reproduces ``states`` exactly (see :mod:`envs.robosuite.env`). With
    ``execution_noise > 0`` the env executes ``actions[t]`` plus :class:`ExecutionNoise` (the recorded label is the
    expert's command), so such demos do not replay from their actions; their ``states`` are what ran.
    """
    execution_noise = check_execution_noise(execution_noise)
    obs, _ = env.reset(seed=seed)
    expert.reset(seed)
    perturb = ExecutionNoise.for_episode(execution_noise, seed) if execution_noise > 0 else None
    model_file = env.get_state()["model"]
    frames: list[dict[str, np.ndarray]] = [obs]
    states, actions, rewards, dones = [], [], [], []
    success = False
    for _ in range(max_steps or env.max_episode_steps):
        states.append(env.flat_state())
        action = np.asarray(expert.predict_action(obs), dtype=np.float64).reshape(-1)
        obs, reward, success, truncated, _ = env.step(perturb(action) if perturb else action)
        actions.append(action)
        rewards.append(reward)
        dones.append(int(success))
        frames.append(obs)
        if success or truncated:
            break
    dones[-1] = 1
    stacked = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
    for key, arr in stacked.items():
        if arr.ndim == 4:  # (T+1, 3, H, W) -> robomimic's (T+1, H, W, 3)
            stacked[key] = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
    demo = Demo(
        actions=np.asarray(actions),  # (N, 7)
        obs={k: v[:-1] for k, v in stacked.items()},
        next_obs={k: v[1:] for k, v in stacked.items()},
        states=np.asarray(states),  # (N, Ds)
        rewards=np.asarray(rewards, dtype=np.float64),
        dones=np.asarray(dones, dtype=np.int64),
        attrs={"model_file": model_file, "seed": int(seed), "execution_noise": float(execution_noise)},
    )
    return demo, bool(success)


def collect_robomimic(
    task: str,
    n_episodes: int,
    out_path: str,
    seed0: int = 0,
    image_size: int = 84,
    cameras: Sequence[str] = ("agentview", "robot0_eye_in_hand"),
    max_attempts: int | None = None,
    val_ratio: float = 0.1,
    fast_render: bool = True,
    overwrite: bool = False,
    verbose: bool = True,
    execution_noise: float = 0.0,
) -> dict[str, Any]:
    """Write ``n_episodes`` successful scripted-expert demos of ``task`` (``lift``/``can``/``square``, with or
    without a ``robomimic/`` prefix) to ``out_path`` in robomimic's layout, with ``train``/``valid`` masks.

    Seeds are demonstration seeds ``seed0, seed0 + 1, ...``; at most ``max_attempts`` episodes are tried
    (default ``2 * n_episodes + 10``). ``execution_noise``: see the module docstring. Returns a summary: demos,
    attempts, seeds, failed seeds, seconds.

    The demos go to ``.<name>.partial`` beside ``out_path``, flushed after each one, and the file is renamed to
    ``out_path`` only when complete: a collection that is killed leaves no short file under the dataset's name,
    and the next run with the same settings continues the partial file from its last whole demo.
    """

    task = task.split("/", 1)[1] if task.startswith("robomimic/") else task
    if n_episodes < 1:
        raise ConfigError(f"n_episodes must be >= 1, got {n_episodes}")
    execution_noise = check_execution_noise(execution_noise)  # before the env is built
    check_output(out_path, overwrite=overwrite)
    max_attempts = int(max_attempts or 2 * n_episodes + 10)
    env = RobosuiteEnv(task, image_size=image_size, cameras=cameras, fast_render=fast_render)
    expert = make_expert(env)
    t0 = time.perf_counter()
    partial = Path(out_path).with_name(f".{Path(out_path).name}.partial")
    settings = {
        "creator": "meanflow-policy envs.robosuite.collect",
        "task": env.task,
        "seed0": int(seed0),
        "execution_noise": float(execution_noise),
        "image_size": int(image_size),
        "cameras": list(cameras),
    }
    resume = partial.exists() and _same_settings(partial, settings)
    failed: list[int] = []
    steps = 0
    with RobomimicWriter(partial, env.env_args(), overwrite=True, file_attrs=_attrs(settings), append=resume) as writer:
        kept_seeds = [int(a["seed"]) for a in writer.demo_attrs()]
        steps = writer.total
        if kept_seeds and verbose:
            print(f"[collect] {partial}: continuing after {len(kept_seeds)} demos", flush=True)
        first = max(kept_seeds) + 1 - demo_seeds(1)[0] if kept_seeds else seed0
        for seed in demo_seeds(max(0, max_attempts - len(kept_seeds)), start=first):
            if len(kept_seeds) == n_episodes:
                break
            demo, success = record_episode(env, expert, seed, execution_noise=execution_noise)
            if not success:
                failed.append(seed)
                continue
            writer.add_demo(demo)
            kept_seeds.append(seed)
            steps += len(demo)
            if verbose:
                print(
                    f"[collect] {env.task} seed {seed}: {len(demo)} steps ({len(kept_seeds)}/{n_episodes})", flush=True
                )
        masks = split_masks(writer.demo_names, val_ratio, seed=seed0)
        for key, names in masks.items():
            writer.set_mask(key, names)
    env.close()
    seconds = time.perf_counter() - t0
    if len(kept_seeds) < n_episodes:
        raise CollectionError(
            f"only {len(kept_seeds)} of {n_episodes} {task} episodes succeeded in {max_attempts} attempts "
            f"(failed seeds {failed[:10]}); {partial} holds the successful ones (raise max_attempts to continue it)"
        )
    os.replace(partial, out_path)
    summary = {
        "task": env.task,
        "path": out_path,
        "execution_noise": execution_noise,
        "demos": len(kept_seeds),
        "attempts": len(kept_seeds) + len(failed),
        "seeds": kept_seeds,
        "failed_seeds": failed,
        "steps": steps,
        "seconds": seconds,
    }
    if verbose:
        print(
            f"[collect] wrote {len(kept_seeds)} demos ({steps} steps) to {out_path} in {seconds:.1f} s; "
            f"{len(failed)} failed attempts"
        )
    return summary


def _attrs(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in settings.items()}


def _same_settings(path: Path, settings: dict[str, Any]) -> bool:
    """True when the partial file at ``path`` was collected with ``settings`` (and is still readable)."""
    try:
        stored = read_file_attrs(path)
    except (RobomimicFormatError, OSError):
        return False
    return all(stored.get(k) == v for k, v in _attrs(settings).items())
