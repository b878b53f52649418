"""Evaluation runner: N episodes of any suite's task on fixed seeds, in parallel worker processes → ``eval_info.json``.

Works with any *agent*: an object with ``reset()``, ``n_obs_steps`` and ``predict_action(obs) -> (n, Da)`` where
``obs`` is ``{key: (To, ...)}`` (the last ``n_obs_steps`` observations, the first one repeated at episode start).
The returned chunk is executed open-loop. An episode succeeds when Meta-World's ``info["success"]`` is true at
any step; it then ends. An agent that raises, or returns NaN/inf or a wrong shape, fails that episode with the
reason recorded, and the run goes on.

Workers are spawned processes (EGL contexts and torch threads do not survive ``fork``); each builds its own env
and agent. Pass the agent itself when it pickles (a ``Policy`` does), or a zero-argument factory such as
``functools.partial(training.evaluation.load_agent, "runs/x/policy")``. An agent that reads the simulator
(a robosuite scripted expert) may define ``bind_env(env)``; each worker calls it once, after building its env.

Modes: for a task whose suite has several demonstrated strategies and a mode classifier (``Suite.mode_classifier``,
e.g. the multimodal suite), each episode also records the strategy it followed (``mode``, from its ``full_state``
trajectory in ``info``) and whether it dithered (switched strategy mid-way, or stalled), and the aggregate gets the
mode frequencies next to the demonstrations' mix. Other suites record nothing of the kind.
"""

from __future__ import annotations

import inspect
import json
import math
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic_write import write_text
from core.spec import FULL_STATE
from envs.suites import suite_for_task
from envs.worker_threads import worker_thread_limits

EVAL_INFO, VIDEO_DIR = "eval_info.json", "videos"
NONE_MODE = "none"  # the mode of an episode that followed no strategy to its decisive event


def is_eval_dir(path: Path) -> bool:
    """True for a directory holding only what :func:`evaluate` writes (a re-run may replace it)."""
    return path.is_dir() and all(p.name in (EVAL_INFO, VIDEO_DIR) for p in path.iterdir())


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % (by default) Wilson score interval of a success rate; (0, 1) when ``n == 0``."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(
    agent: Any,
    task: str,
    seeds: Sequence[int],
    n_workers: int = 2,
    out_dir: str | os.PathLike | None = None,
    video_dir: str | os.PathLike | None = None,
    n_videos: int = 0,
    max_steps: int | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    threads_per_worker: int = 1,
    progress: bool = False,
    label: str = "",
    demo_mix: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Run one episode per seed; returns the eval info (also written to ``out_dir/eval_info.json``).

    Args:
        agent: an agent, or a zero-argument callable that builds one (in each worker).
        task: a task of any registered suite (:mod:`envs.suites`), e.g. ``reach-v3`` or ``robomimic/lift``.
        seeds: one episode per seed (use :func:`core.seeds.eval_seeds`).
        n_workers: worker processes; <= 1 runs in this process.
        out_dir: where ``eval_info.json`` (and, without ``video_dir``, ``videos/``) go; None writes nothing.
        video_dir: where the mp4 videos of the first ``n_videos`` episodes go.
        max_steps: step limit per episode (default: the suite's rollout horizon for the task).
        env_kwargs: extra arguments of the suite's env (the observations the agent needs, see ``Suite.env_kwargs``).
        threads_per_worker: torch/OpenMP threads in each worker.
        label: free text recorded as the agent's name.
        demo_mix: for a task with several strategies, the mix of its demonstrations (default: equal), reported
            beside the agent's mode frequencies.
    """
    suite = suite_for_task(task)
    task = suite.check_task(task)
    if max_steps is None:
        max_steps = suite.max_steps(task)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("evaluate needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must be distinct (one episode per seed)")
    if video_dir is None and out_dir is not None and n_videos > 0:
        video_dir = Path(out_dir) / VIDEO_DIR
    env_kwargs = dict(env_kwargs or {})
    strategies = suite.strategies(task)
    mix = None
    if strategies:
        mix = suite.check_mode_mix(task, demo_mix if demo_mix is not None else [1 / len(strategies)] * len(strategies))
    jobs = [(i, s, str(video_dir) if video_dir is not None and i < n_videos else None) for i, s in enumerate(seeds)]
    setup = (agent, task, env_kwargs, max_steps, threads_per_worker)

    t0 = time.perf_counter()
    results: list[dict] = []
    bar = _progress_bar(len(jobs), task, progress)
    if n_workers <= 1:
        _init_worker(*setup)
        try:
            for job in jobs:
                results.append(_run_job(*job))
                if bar is not None:
                    bar.update(1)
        finally:
            _worker.pop("env").close()
            _worker.clear()
    else:
        try:
            ctx = multiprocessing.get_context("spawn")
            with (
                worker_thread_limits(threads_per_worker),
                ProcessPoolExecutor(
                    max_workers=min(n_workers, len(jobs)), mp_context=ctx, initializer=_init_worker, initargs=setup
                ) as pool,
            ):
                futures = [pool.submit(_run_job, *job) for job in jobs]
                for fut in as_completed(futures):
                    results.append(fut.result())
                    if bar is not None:
                        bar.update(1)
        except BrokenProcessPool as e:
            raise RuntimeError(
                "an evaluation worker died while building its env or agent, or crashed; its "
                "traceback is printed above (run with n_workers=0 to debug in this process)"
            ) from e
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    results.sort(key=lambda r: r["episode_ix"])
    info = _summarize(results, task, elapsed, label, max_steps, n_workers, env_kwargs)
    if mix is not None:
        info["aggregated"]["modes"] = mode_summary(results, dict(zip(strategies, mix, strict=True)))
    if out_dir is not None:
        write_text(Path(out_dir) / EVAL_INFO, json.dumps(info, indent=2))
    return info


def _summarize(
    results: list[dict],
    task: str,
    elapsed: float,
    label: str,
    max_steps: int,
    n_workers: int,
    env_kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    latencies = np.concatenate([np.asarray(r.pop("latencies_s"), dtype=np.float64) for r in results])
    spans = np.array([r.pop("_span") for r in results])
    episodes_s = float(spans[:, 1].max() - spans[:, 0].min())  # from the first episode start: no worker start-up
    n = len(results)
    k = sum(r["success"] for r in results)
    lo, hi = wilson_interval(k, n)
    steps = sum(r["steps"] for r in results)
    aggregated = {
        "n_episodes": n,
        "n_success": k,
        "pc_success": 100.0 * k / n,
        "ci95_low": lo,
        "ci95_high": hi,
        "avg_sum_reward": float(np.mean([r["sum_reward"] for r in results])),
        "avg_max_reward": float(np.mean([r["max_reward"] for r in results])),
        "avg_steps": steps / n,
        "n_agent_failures": sum(r["failure"] is not None for r in results),
        "latency_ms_p50": float(np.percentile(latencies, 50) * 1e3) if len(latencies) else None,
        "latency_ms_p99": float(np.percentile(latencies, 99) * 1e3) if len(latencies) else None,
        "latency_calls": int(len(latencies)),
        "env_steps": steps,
        "env_steps_per_s": steps / episodes_s if episodes_s > 0 else None,
        "startup_s": max(0.0, elapsed - episodes_s),
        "eval_s": elapsed,
        "eval_ep_s": elapsed / n,
    }
    return {
        "task": task,
        "agent": label,
        "per_episode": results,
        "aggregated": aggregated,
        "video_paths": [r["video"] for r in results if r["video"]],
        "config": {
            "max_steps": max_steps,
            "n_workers": n_workers,
            "seeds": [r["seed"] for r in results],
            "env_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in env_kwargs.items()},
            "latency": "wall time of each predict_action call, first call per worker excluded",
        },
    }


def mode_summary(results: Sequence[Mapping[str, Any]], demo_mix: Mapping[str, float]) -> dict[str, Any]:
    """Mode frequencies of the episodes ``results`` (each with ``mode`` and ``dithered``, ``switched``,
    ``stalled``) beside ``demo_mix`` (strategy -> share of the demonstrations); episodes that reached no strategy
    count under ``none``. ``max_gap``: the largest distance between a strategy's frequency and its demo share."""
    n = len(results)
    counts = {name: 0 for name in demo_mix}
    for r in results:
        mode = r.get("mode", NONE_MODE)  # an episode whose reset failed has no trajectory
        counts[mode] = counts.get(mode, 0) + 1
    frequencies = {name: c / n for name, c in counts.items()}
    dithered = sum(bool(r.get("dithered")) for r in results)
    return {
        "demo_mix": dict(demo_mix),
        "frequencies": frequencies,
        "counts": counts,
        "max_gap": max(abs(frequencies[name] - share) for name, share in demo_mix.items()),
        "n_dithered": dithered,
        "pc_dithered": 100.0 * dithered / n,
        "n_switched": sum(bool(r.get("switched")) for r in results),
        "n_stalled": sum(bool(r.get("stalled")) for r in results),
    }


# ---------------------------------------------------------------------------------------------- worker side
_worker: dict[str, Any] = {}


def _init_worker(agent: Any, task: str, env_kwargs: Mapping[str, Any], max_steps: int, threads: int) -> None:
    """Build this process's env and agent (runs once per worker)."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if callable(agent) and not hasattr(agent, "predict_action"):
        agent = agent()
    for attr in ("reset", "predict_action"):
        if not callable(getattr(agent, attr, None)):
            raise TypeError(
                f"agent {type(agent).__name__} lacks {attr}(); see the agent interface in docs/ARCHITECTURE.md"
            )
    env = _worker.get("env")
    if env is not None:
        env.close()
    suite = suite_for_task(task)
    env = suite.make_env(task, max_episode_steps=max_steps, **env_kwargs)
    if callable(getattr(agent, "bind_env", None)):
        agent.bind_env(env)
    meta = getattr(agent, "shape_meta", None)
    keys = list(meta.obs) if meta is not None else env.obs_keys
    missing = [k for k in keys if k not in env.obs_keys]
    if missing:
        raise ValueError(
            f"the agent needs observation key(s) {missing} that this env does not produce "
            f"({env.obs_keys}); pass matching env_kwargs (see Suite.env_kwargs)"
        )
    reset_takes_seed = "seed" in inspect.signature(agent.reset).parameters
    lazy = "render" in inspect.signature(env.step).parameters  # the env can skip rendering an unread observation
    _worker.update(
        env=env,
        agent=agent,
        keys=keys,
        n_obs=int(getattr(agent, "n_obs_steps", 1)),
        reset_takes_seed=reset_takes_seed,
        lazy=lazy,
        max_steps=max_steps,
        warm=False,
        classify=suite.mode_classifier(task),
    )


def _run_job(episode_ix: int, seed: int, video_dir: str | None) -> dict[str, Any]:
    w = _worker
    env, agent, keys, n_obs = w["env"], w["agent"], w["keys"], w["n_obs"]
    result: dict[str, Any] = {
        "episode_ix": episode_ix,
        "seed": seed,
        "success": False,
        "steps": 0,
        "sum_reward": 0.0,
        "max_reward": 0.0,
        "failure": None,
        "video": None,
    }
    latencies: list[float] = []
    frames: list[np.ndarray] = []
    rewards: list[float] = []
    t_start = time.time()
    classify = w["classify"]
    states: list[np.ndarray] = []  # full_state trajectory, for the mode classifier
    successes: list[bool] = []
    try:
        obs, reset_info = env.reset(seed=seed)
        if classify is not None:
            states.append(np.asarray(reset_info[FULL_STATE]))
            successes.append(False)
        agent.reset(seed=seed) if w["reset_takes_seed"] else agent.reset()
        history = deque([obs] * n_obs, maxlen=n_obs)
        if video_dir is not None:
            frames.append(env.render())
        done = False
        while not done:
            stacked = {k: np.stack([o[k] for o in history]) for k in keys}  # (To, ...)
            t = time.perf_counter()
            try:
                chunk = agent.predict_action(stacked)
            except Exception as e:  # any agent bug fails this episode only
                result["failure"] = f"agent raised {type(e).__name__}: {e}"
                break
            dt = time.perf_counter() - t
            if w["warm"]:
                latencies.append(dt)
            w["warm"] = True
            chunk, problem = _check_chunk(chunk, env.action_dim)
            if problem is not None:
                result["failure"] = f"step {result['steps']}: {problem}"
                break
            for i, action in enumerate(chunk):
                # Only the last n_obs observations of a chunk feed the next prediction: the others go unrendered.
                needed = i >= len(chunk) - n_obs
                obs, reward, _, truncated, info = env.step(action, render=needed) if w["lazy"] else env.step(action)
                result["steps"] += 1
                rewards.append(reward)
                if classify is not None:
                    states.append(np.asarray(info[FULL_STATE]))
                    successes.append(bool(info["success"]))
                history.append(obs)
                if video_dir is not None:
                    frames.append(env.render())
                if info["success"]:
                    result["success"] = True
                if result["success"] or truncated or result["steps"] >= w["max_steps"]:
                    done = True
                    break
    except Exception as e:  # simulator errors also end only this episode
        result["failure"] = result["failure"] or f"episode error {type(e).__name__}: {e}"
    if classify is not None and states:
        result.update(classify(np.stack(states), np.asarray(successes)))
    if rewards:
        result["sum_reward"], result["max_reward"] = float(np.sum(rewards)), float(np.max(rewards))
    if frames and video_dir is not None:
        result["video"] = _write_video(frames, Path(video_dir) / f"episode_{episode_ix:03d}_seed{seed}.mp4")
    result["latencies_s"] = latencies
    result["_span"] = (t_start, time.time())
    return result


def _check_chunk(chunk: Any, action_dim: int) -> tuple[np.ndarray, str | None]:
    """(actions (n, Da) float32, None) or (_, reason) for a chunk the env cannot execute."""
    if hasattr(chunk, "detach"):
        chunk = chunk.detach().cpu().numpy()
    try:
        arr = np.asarray(chunk, dtype=np.float32)
    except (TypeError, ValueError) as e:
        return np.zeros((0, action_dim), np.float32), f"agent returned a non-numeric action ({e})"
    shape = arr.shape
    if arr.ndim == 3 and shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 1 and shape[0] == action_dim:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != action_dim or arr.shape[0] < 1:
        return arr, f"agent returned an action of shape {shape}; expected (n, {action_dim})"
    if not np.all(np.isfinite(arr)):
        return arr, "agent returned NaN or inf actions"
    return arr, None


def _write_video(frames: list[np.ndarray], path: Path, fps: int = 30) -> str | None:
    import warnings

    try:
        import imageio.v2 as imageio

        path.parent.mkdir(parents=True, exist_ok=True)
        imageio.mimwrite(str(path), list(frames), fps=fps, macro_block_size=1)
        return str(path)
    except Exception as e:  # missing ffmpeg must not lose the evaluation
        warnings.warn(f"could not write video {path}: {e} (pip install imageio-ffmpeg)", RuntimeWarning, stacklevel=2)
        return None


def _progress_bar(total: int, task: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"eval {task}", unit="ep", dynamic_ncols=True)
