"""Evaluating a saved policy: load the checkpoint in each worker, build the env its observations need, run the
fixed evaluation seeds (:func:`envs.runner.evaluate`). The runner sees only an agent; loading is done here."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from core.errors import ConfigError, check_int
from core.seeds import eval_seeds
from core.spec import ShapeMeta
from envs.runner import evaluate
from envs.suites import NO_SIMULATOR, get_suite, suite_for_task
from policies.checkpoint import load_policy, read_config
from policies.policy import Policy


@dataclass(frozen=True)
class InferenceOptions:
    """Evaluation-time choices that leave the trained weights alone.

    ``num_steps`` > 0: sampling steps (NFE) instead of the policy's; ``n_action_steps`` > 0: actions executed per
    predicted chunk (fewer = re-planned more often), at most ``horizon - n_obs_steps + 1``; ``hold_noise``: one
    starting noise per episode instead of one per chunk, so successive chunks are the same draw of the policy.
    """

    num_steps: int = 0
    n_action_steps: int = 0
    hold_noise: bool = False

    def __post_init__(self) -> None:
        check_int("num_steps", self.num_steps, 0)
        check_int("n_action_steps", self.n_action_steps, 0)

    def check_fits(self, horizon: int, n_obs_steps: int) -> None:
        """Raise :class:`ConfigError` unless ``n_action_steps`` fits the policy's chunk."""
        most = horizon - n_obs_steps + 1
        if self.n_action_steps > most:
            raise ConfigError(
                f"n_action_steps={self.n_action_steps} exceeds what this policy predicts: horizon "
                f"{horizon} with {n_obs_steps} observation steps leaves at most {most}"
            )

    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in (("num_steps", self.num_steps), ("n_action_steps", self.n_action_steps)) if v]
        return ", ".join(parts + (["hold_noise=true"] if self.hold_noise else []))


class HeldNoiseAgent:
    """A policy that draws its sampler's starting noise once per episode (at the first chunk after ``reset``) and
    reuses it for every chunk of that episode."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.n_obs_steps = policy.n_obs_steps
        self.shape_meta = policy.shape_meta
        self._noise: torch.Tensor | None = None

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset(seed=seed)
        self._noise = None

    def predict_action(self, obs: Mapping[str, Any]) -> Any:
        if self._noise is None:
            self._noise = self.policy.starting_noise(1)
        return self.policy.predict_action(obs, noise=self._noise[0])


def load_agent(path: str, options: InferenceOptions = InferenceOptions(), device: str = "cpu") -> Any:
    """The policy saved at ``path`` as an evaluation agent (module level, so worker processes can build it from a
    ``functools.partial``)."""
    policy = load_policy(path, device=device)
    options.check_fits(policy.horizon, policy.n_obs_steps)
    if options.num_steps > 0:
        policy.num_inference_steps = options.num_steps
    if options.n_action_steps > 0:
        policy.n_action_steps = options.n_action_steps
    return HeldNoiseAgent(policy) if options.hold_noise else policy


def evaluate_checkpoint(
    policy_dir: str | os.PathLike,
    episodes: int = 50,
    n_workers: int = 2,
    out_dir: str | os.PathLike | None = None,
    n_videos: int = 0,
    seed0: int = 0,
    max_steps: int | None = None,
    task: str | None = None,
    device: str = "cpu",
    progress: bool = False,
    options: InferenceOptions = InferenceOptions(),
) -> dict[str, Any]:
    """Evaluate the policy saved in ``policy_dir`` on ``eval_seeds(episodes, seed0)``.

    The task and step limit come from the checkpoint's ``metadata.task`` unless given; the env's observations are
    derived from the checkpoint's shape_meta by the task's suite (plus what the task metadata recorded, e.g. a
    point-cloud crop box). For a multimodal task the mode frequencies are reported beside the demos' ``mode_mix``
    that the task metadata recorded.
    """
    config = read_config(policy_dir)
    saved_task = config.get("metadata", {}).get("task", {})
    if not isinstance(saved_task, Mapping):
        saved_task = {"env": str(saved_task)}
    task = task or saved_task.get("env")
    if not task:
        raise ConfigError(f"checkpoint '{policy_dir}' records no task (metadata.task.env); pass task=<name>")
    saved_suite = saved_task.get("suite")
    if saved_suite == NO_SIMULATOR and task == saved_task.get("env"):
        raise ConfigError(
            f"checkpoint '{policy_dir}' was trained on a dataset with no simulator (task.suite={NO_SIMULATOR}); "
            "there is nothing to evaluate it in: try it on the robot with mfp deploy, or pass task=<simulator task> "
            "whose observations it takes"
        )
    suite = get_suite(saved_suite) if saved_suite and task == saved_task.get("env") else suite_for_task(task)
    env_kwargs = suite.env_kwargs(ShapeMeta.from_dict(config["shape_meta"]), saved_task)
    max_steps = max_steps or int(saved_task.get("max_episode_steps") or suite.max_steps(suite.check_task(task)))
    policy_cfg = config["policy"]  # a bad option fails here, before any worker starts
    options.check_fits(int(policy_cfg["horizon"]), int(policy_cfg["n_obs_steps"]))
    agent = functools.partial(load_agent, str(policy_dir), options, device)
    label = f"checkpoint:{policy_dir}" + (f" ({options.label()})" if options.label() else "")
    return evaluate(
        agent,
        task,
        eval_seeds(episodes, seed0),
        n_workers=n_workers,
        out_dir=out_dir,
        n_videos=n_videos,
        max_steps=max_steps,
        env_kwargs=env_kwargs,
        progress=progress,
        label=label,
        demo_mix=saved_task.get("mode_mix") if task == saved_task.get("env") else None,
    )
