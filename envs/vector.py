"""Several envs of one task in worker processes, stepped one action chunk at a time (for online fine-tuning).

Each worker owns one env built by the task's suite (the same envs the evaluation runner builds). A step executes a
whole chunk ``(k, Da)`` per env and returns the ``n_obs_steps`` observations the policy reads next; the steps before
them are not rendered (their point clouds and images are never read). Rewards per chunk:

* ``sparse``: 1 when the task succeeds inside the chunk, and the episode ends there (terminated);
* ``dense``: the env's own reward summed over the chunk, divided by ``dense_scale`` (Meta-World: 10 per step), and
  the episode runs to its step limit (success does not end it: dense reward plus termination on success teaches
  an agent to hover short of the goal).

An episode that ends is reset at once with the env's next seed, and the step returns the new episode's first
observations with ``done`` set; ``final_state`` keeps the ended episode's last state (to bootstrap a time limit).
Workers are spawned processes (EGL contexts do not survive ``fork``).
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from core.errors import ConfigError, check_choice
from envs.suites import suite_for_task

REWARDS = ("sparse", "dense")


@dataclass
class ChunkStep:
    """What :meth:`ChunkVectorEnv.step` returns for N envs (numpy arrays, leading dim N)."""

    obs: dict[str, np.ndarray]  # {key: (N, To, ...)} the observations the policy reads next
    state: np.ndarray  # (N, S) the current state vector (the new episode's after a reset)
    reward: np.ndarray  # (N,) float32
    terminated: np.ndarray  # (N,) bool: the episode ended by success (sparse reward): no value beyond it
    truncated: np.ndarray  # (N,) bool: the episode hit its step limit: bootstrap from final_state
    final_state: np.ndarray  # (N, S) the last state of an ended episode (the current state otherwise)
    success: np.ndarray  # (N,) bool: the task succeeded in this chunk
    steps: np.ndarray  # (N,) int: env steps executed in this chunk
    episode_return: np.ndarray  # (N,) float: an ended episode's return (NaN otherwise)
    episode_success: np.ndarray  # (N,) float: 1/0 whether an ended episode succeeded at any step (NaN otherwise)


class ChunkVectorEnv:
    """``n_envs`` envs of ``task`` in worker processes; see the module docstring.

    Args:
        task: a task of any registered suite.
        n_envs: worker processes (one env each).
        n_obs_steps: observations returned per env (the policy's history length To).
        obs_keys: the policy's observation keys.
        state_keys: low-dimensional observation keys concatenated into the state vector (a critic's input).
        env_kwargs: the suite env's constructor arguments (e.g. from ``Suite.env_kwargs(shape_meta)``).
        max_steps: episode step limit.
        reward: ``sparse`` or ``dense``.
        seeds: each env's first episode seed; later episodes of env i count up by ``n_envs``.
    """

    def __init__(
        self,
        task: str,
        n_envs: int,
        n_obs_steps: int,
        obs_keys: Sequence[str],
        state_keys: Sequence[str],
        env_kwargs: Mapping[str, Any],
        max_steps: int,
        reward: str = "sparse",
        dense_scale: float = 10.0,
        threads_per_worker: int = 1,
    ) -> None:
        check_choice("reward", reward, REWARDS)
        if n_envs < 1 or n_obs_steps < 1:
            raise ConfigError(f"n_envs and n_obs_steps must be >= 1, got {n_envs}, {n_obs_steps}")
        suite = suite_for_task(task)
        self.task = suite.check_task(task)
        self.n_envs, self.n_obs_steps = int(n_envs), int(n_obs_steps)
        spec = {
            "task": self.task,
            "env_kwargs": dict(env_kwargs),
            "max_steps": int(max_steps),
            "n_obs_steps": self.n_obs_steps,
            "obs_keys": list(obs_keys),
            "state_keys": list(state_keys),
            "reward": reward,
            "dense_scale": float(dense_scale),
            "seed_stride": self.n_envs,  # env i runs seeds s_i, s_i + N, s_i + 2N, ...: no two envs share one
        }
        ctx = multiprocessing.get_context("spawn")
        saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LP_NUM_THREADS")}
        for k in saved:
            os.environ[k] = str(threads_per_worker)
        self._conns: list[Connection] = []
        self._procs = []
        try:
            for _ in range(self.n_envs):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, spec), daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            for conn in self._conns:
                _reply(conn)  # "ready", or the worker's error
        except BaseException:
            self.close()
            raise
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def reset(self, seeds: Sequence[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Start an episode in every env: env i with ``seeds[i]`` (its later episodes: + n_envs each).
        Returns the observations ``{key: (N, To, ...)}`` and states ``(N, S)``."""
        if len(seeds) != self.n_envs:
            raise ConfigError(f"reset needs {self.n_envs} seeds, got {len(seeds)}")
        for conn, seed in zip(self._conns, seeds, strict=True):
            conn.send(("reset", int(seed)))
        replies = [_reply(conn) for conn in self._conns]
        return _stack([r["obs"] for r in replies]), np.stack([r["state"] for r in replies])

    def step(self, chunks: np.ndarray) -> ChunkStep:
        """Execute ``chunks (N, k, Da)`` (robot units), one chunk per env."""
        chunks = np.asarray(chunks, dtype=np.float32)
        if chunks.ndim != 3 or chunks.shape[0] != self.n_envs:
            raise ConfigError(f"chunks must have shape ({self.n_envs}, k, Da), got {chunks.shape}")
        for conn, chunk in zip(self._conns, chunks, strict=True):
            conn.send(("step", chunk))
        r = [_reply(conn) for conn in self._conns]
        return ChunkStep(
            obs=_stack([x["obs"] for x in r]),
            state=np.stack([x["state"] for x in r]),
            reward=np.array([x["reward"] for x in r], dtype=np.float32),
            terminated=np.array([x["terminated"] for x in r]),
            truncated=np.array([x["truncated"] for x in r]),
            final_state=np.stack([x["final_state"] for x in r]),
            success=np.array([x["success"] for x in r]),
            steps=np.array([x["steps"] for x in r]),
            episode_return=np.array([x["episode_return"] for x in r], dtype=np.float64),
            episode_success=np.array([x["episode_success"] for x in r], dtype=np.float64),
        )

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        self._conns, self._procs = [], []

    def __enter__(self) -> ChunkVectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkerError(RuntimeError):
    """An env worker failed; the message carries its exception."""


def _reply(conn: Connection) -> Any:
    try:
        status, payload = conn.recv()
    except EOFError as e:
        raise WorkerError("an env worker died (see its output above)") from e
    if status == "error":
        raise WorkerError(payload)
    return payload


def _stack(histories: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([h[k] for h in histories]) for k in histories[0]}


# ---------------------------------------------------------------------------------------------- worker side
def _worker(conn: Connection, spec: dict[str, Any]) -> None:
    try:
        suite = suite_for_task(spec["task"])
        env = suite.make_env(spec["task"], max_episode_steps=spec["max_steps"], **spec["env_kwargs"])
        lazy = "render" in inspect.signature(env.step).parameters
        conn.send(("ok", "ready"))
    except Exception as e:  # the parent shows it and stops
        conn.send(("error", f"building the env failed: {type(e).__name__}: {e}"))
        return
    n_obs, keys, state_keys = spec["n_obs_steps"], spec["obs_keys"], spec["state_keys"]
    history: deque = deque(maxlen=n_obs)
    seed, ret, succeeded = 0, 0.0, False

    def observe(obs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {
            "obs": {k: np.stack([o[k] for o in history]) for k in keys},
            "state": np.concatenate([np.asarray(obs[k], dtype=np.float32).reshape(-1) for k in state_keys]),
        }

    def start(new_seed: int) -> dict[str, Any]:
        nonlocal seed, ret, succeeded
        seed, ret, succeeded = new_seed, 0.0, False
        obs, _ = env.reset(seed=seed)
        history.clear()
        history.extend([obs] * n_obs)
        return observe(obs)

    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "close":
                break
            if cmd == "reset":
                conn.send(("ok", start(arg)))
                continue
            chunk = arg
            reward, steps, success, terminated, truncated = 0.0, 0, False, False, False
            obs: Mapping[str, np.ndarray] = {}
            for i, action in enumerate(chunk):
                needed = i >= len(chunk) - n_obs
                obs, r, _, trunc, info = env.step(action, render=needed) if lazy else env.step(action)
                steps += 1
                history.append(obs)
                success = success or bool(info["success"])
                if spec["reward"] == "dense":
                    reward += float(r) / spec["dense_scale"]
                elif info["success"]:
                    reward, terminated = 1.0, True
                truncated = bool(trunc) and not terminated
                if terminated or truncated:
                    break
            ret += reward
            succeeded = succeeded or success
            final_state = np.concatenate([np.asarray(obs[k], dtype=np.float32).reshape(-1) for k in state_keys])
            episode_return = episode_success = float("nan")
            if terminated or truncated:  # its last frames may be unrendered: nothing reads them
                episode_return, episode_success = ret, float(succeeded)
                out = start(seed + spec["seed_stride"])
            else:
                out = observe(obs)
            conn.send(
                (
                    "ok",
                    {
                        **out,
                        "reward": reward,
                        "terminated": terminated,
                        "truncated": truncated,
                        "final_state": final_state,
                        "success": success,
                        "steps": steps,
                        "episode_return": episode_return,
                        "episode_success": episode_success,
                    },
                )
            )
    except Exception as e:  # the parent shows it and stops
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        env.close()
