"""Scripted-expert demonstrations of a Meta-World task into a DP/DP3 zarr dataset (what `mfp collect` runs).

Only successful episodes are kept (DP3's rule: success with at least ``min_success_steps`` successful steps).
``action_noise`` perturbs the expert's action and records the perturbed one; ``execution_noise``
(:mod:`envs.execution_noise`) perturbs only what the env executes and records the expert's own command, so the
demos show the expert correcting drift. Episodes are appended one at a time and crash-safe, so rerunning the
same command after an interruption continues to the requested count.

Other suites built on Meta-World's Sawyer scene (:mod:`envs.multimodal`) collect through the same function with
their own env, expert and suite name; an expert with ``n_obs_steps`` > 1 gets that many observations, as in the
evaluation runner.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic_write import replace_dir
from core.spec import ACTION, ShapeMeta
from demos.replay_buffer import ReplayBuffer, ReplayBufferError
from envs.execution_noise import ExecutionNoise, check_execution_noise
from envs.metaworld.env import MetaWorldEnv, metaworld_version
from envs.metaworld.expert import ScriptedExpert
from envs.suites import CollectionError

# Attributes that must agree between an existing dataset and a rerun that appends to it.
_MATCHING_ATTRS = (
    "task",
    "num_points",
    "point_cloud_cameras",
    "image_cameras",
    "image_size",
    "depth_size",
    "use_point_color",
    "crop_box",
    "max_steps",
    "action_noise",
    "execution_noise",
    "min_success_steps",
    "stop_on_success",
)


# Values of keys that datasets written before the key existed were collected with.
_ATTR_DEFAULTS = {"execution_noise": 0.0}


def collect(
    task: str,
    n_episodes: int,
    out_path: str | Path,
    seed0: int = 0,
    num_points: int = 512,
    point_cloud_cameras: Sequence[str] = ("corner2",),
    image_cameras: Sequence[str] = ("corner2",),
    image_size: int = 84,
    depth_size: int = 128,
    use_point_color: bool = False,
    crop_box: Sequence[Sequence[float]] | None = None,
    max_steps: int = 200,
    action_noise: float = 0.0,
    execution_noise: float = 0.0,
    min_success_steps: int = 5,
    stop_on_success: bool = True,
    max_attempts: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    make_env: Callable[..., Any] | None = None,
    expert: Any = None,
    suite: str = "metaworld",
    extra_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the scripted expert until ``out_path`` holds ``n_episodes`` successful episodes; returns a summary.

    An existing dataset at ``out_path`` that this collector made is continued (its settings must match these);
    episode seeds continue after the largest seed it holds. Anything else at ``out_path`` is refused, unless
    ``overwrite``: then the new dataset is collected beside it (resumable too) and swapped in when complete, so the
    old one stays whole until then. Raises :class:`CollectionError` if ``max_attempts`` episodes do not suffice.

    ``make_env(**options)`` builds another suite's env for ``task`` (default: :class:`MetaWorldEnv`), ``expert``
    is its scripted expert (default: Meta-World's with ``action_noise``), ``suite`` names the suite in the
    dataset's attributes, and ``extra_settings`` are further settings recorded with it that a rerun must match.
    """
    from core.seeds import EVAL_SEED_BASE, demo_seeds

    execution_noise = check_execution_noise(execution_noise)  # before the env is built
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        _check_appendable(out_path, suite)  # refuses what this collector did not make, before anything is written
    target = out_path.with_name(f".{out_path.name}.overwrite") if overwrite and out_path.exists() else out_path
    build = make_env if make_env is not None else functools.partial(MetaWorldEnv, task)
    env = build(
        point_cloud_cameras=point_cloud_cameras,
        num_points=num_points,
        image_cameras=image_cameras,
        image_size=image_size,
        crop_box=crop_box,
        use_point_color=use_point_color,
        depth_size=depth_size,
        max_episode_steps=max_steps,
        video_size=16,
    )
    if expert is None:
        expert = ScriptedExpert(env.task, noise_std=action_noise)
    meta = env.shape_meta(env.obs_keys)
    settings = {
        "task": task,
        "num_points": int(num_points) if point_cloud_cameras else 0,
        "point_cloud_cameras": list(point_cloud_cameras),
        "image_cameras": list(image_cameras),
        "image_size": int(image_size),
        "depth_size": int(depth_size),
        "use_point_color": bool(use_point_color),
        "crop_box": env.crop_box.tolist(),
        "max_steps": int(max_steps),
        "action_noise": float(action_noise),
        "execution_noise": execution_noise,
        "min_success_steps": int(min_success_steps),
        "stop_on_success": bool(stop_on_success),
        **(extra_settings or {}),
    }
    t0 = time.perf_counter()
    try:
        rb = _open_or_create(target, env, meta, settings, metaworld_version(), suite)
        need = n_episodes - rb.n_episodes
        next_seed = demo_seeds(1, seed0)[0]
        if rb.n_episodes:
            next_seed = max(next_seed, int(rb.episode_seeds.max()) + 1)
        budget = max_attempts if max_attempts > 0 else 10 * n_episodes
        attempts = kept = 0
        bar = _progress_bar(n_episodes, rb.n_episodes, env.task, progress)
        while kept < need:
            if attempts >= budget:
                raise CollectionError(
                    f"{env.task}: only {rb.n_episodes}/{n_episodes} successful episodes after {attempts} attempts "
                    f"(seeds up to {next_seed - 1}); raise max_attempts or lower action_noise / execution_noise"
                )
            if next_seed >= EVAL_SEED_BASE:
                raise CollectionError(f"demo seeds exhausted at {next_seed} (eval seeds start at {EVAL_SEED_BASE})")
            episode, n_success = _run_episode(
                env, expert, next_seed, min_success_steps, stop_on_success, execution_noise
            )
            attempts += 1
            if n_success >= min_success_steps:
                rb.add_episode(episode, seed=next_seed)
                kept += 1
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.set_postfix(attempts=attempts, seed=next_seed)
            next_seed += 1
        if bar is not None:
            bar.close()
        if target != out_path:
            replace_dir(target, out_path)
            rb = ReplayBuffer.open(out_path, mode="r")
    finally:
        env.close()
    return {
        "path": str(out_path),
        "task": env.task,
        "n_episodes": rb.n_episodes,
        "n_steps": rb.n_steps,
        "new_episodes": kept,
        "attempts": attempts,
        "seconds": time.perf_counter() - t0,
        "episode_lengths": rb.episode_lengths.tolist(),
    }


def _run_episode(
    env: Any,
    expert: Any,
    seed: int,
    min_success_steps: int,
    stop_on_success: bool,
    execution_noise: float = 0.0,
) -> tuple[dict, int]:
    """One expert episode: ``{key: (T, ...)}`` with the observation before each action (the expert's command),
    and its success count. An expert with ``n_obs_steps`` > 1 gets the last that many observations ``{key: (To,
    ...)}`` (the first one repeated at the start)."""
    obs, _ = env.reset(seed=seed)
    expert.reset(seed=seed)
    n_obs = int(getattr(expert, "n_obs_steps", 1))
    history = deque([obs] * n_obs, maxlen=n_obs)
    perturb = ExecutionNoise.for_episode(execution_noise, seed) if execution_noise > 0 else None
    steps: dict[str, list] = {key: [] for key in obs}
    steps[ACTION] = []
    n_success = 0
    while True:
        seen = obs if n_obs == 1 else {key: np.stack([o[key] for o in history]) for key in obs}
        action = expert.predict_action(seen)[0]  # (4,)
        for key, value in obs.items():
            steps[key].append(value)
        steps[ACTION].append(action)
        obs, _, _, truncated, info = env.step(perturb(action) if perturb else action)
        history.append(obs)
        n_success += int(info["success"])
        if truncated or (stop_on_success and n_success >= min_success_steps):
            break
    return {key: np.stack(values) for key, values in steps.items()}, n_success


def _check_appendable(path: Path, suite: str) -> None:
    """Refuse ``path`` unless it is a dataset this collector wrote (read-only check: nothing is changed)."""
    if not path.is_dir():
        raise CollectionError(
            f"out={path} is an existing file, not a dataset; choose a new path or pass overwrite=true"
        )
    rb = ReplayBuffer.open(path, mode="r")  # a damaged dataset is refused here, before it is opened for writing
    if rb.attrs.get("suite") != suite:
        raise CollectionError(
            f"out={path} is a dataset this collector did not make (suite {rb.attrs.get('suite')!r}); choose a new "
            "path or pass overwrite=true"
        )


def _open_or_create(
    path: Path, env: Any, meta: ShapeMeta, settings: dict, mw_version: str, suite: str = "metaworld"
) -> ReplayBuffer:
    """The dataset at ``path`` to continue (its settings must match) or a new one."""
    if path.exists():
        stored_attrs = ReplayBuffer.open(path, mode="r").attrs  # compare before opening for writing
        matching = [*_MATCHING_ATTRS, *(k for k in settings if k not in _MATCHING_ATTRS)]  # + a suite's own
        stored = {k: stored_attrs.get(k, _ATTR_DEFAULTS.get(k)) for k in matching}
        diff = {k: (stored[k], v) for k, v in settings.items() if stored[k] != v}
        if diff:
            details = "; ".join(f"{k}: dataset {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ReplayBufferError(
                f"'{path}' was collected with other settings ({details}); use another out path or overwrite=true"
            )
        return ReplayBuffer.open(path, mode="a")
    keys = {key: (spec.shape, np.uint8 if spec.type == "rgb" else np.float32) for key, spec in meta.obs.items()}
    keys[ACTION] = ((meta.action_dim,), np.float32)
    from core.seeds import DEMO_SEED_BASE, EVAL_SEED_BASE

    attrs = {
        **settings,
        "suite": suite,
        "metaworld_version": mw_version,
        "obs_types": {key: spec.type for key, spec in meta.obs.items()},
        "camera_params": env.camera_params(),
        "seed_ranges": {"demo": [DEMO_SEED_BASE, EVAL_SEED_BASE], "eval_from": EVAL_SEED_BASE},
        "point_cloud_frame": "world (metres), Meta-World table top at z = 0",
        "agent_pos": "end-effector xyz + normalized gripper opening",
    }
    return ReplayBuffer.create(path, keys, attrs)


def _progress_bar(total: int, initial: int, task: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"collect {task}", unit="ep", dynamic_ncols=True)
