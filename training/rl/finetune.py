"""Online fine-tuning of a one-step policy checkpoint in its task's simulator (`mfp finetune`).

An iteration starts every env on a fresh fine-tuning seed (core.seeds.finetune_seeds: never an evaluation seed),
collects ``chunks_per_iteration`` chunks per env, and learns from them (PPO) or from the replay buffer (steering).
Because iterations never carry an episode over, the run's whole state at an iteration boundary is the learner, the
random generators and two counters: a run killed at any moment resumes from its last checkpoint and continues exactly
as the uninterrupted run. The output directory holds a normal policy checkpoint (``policy/``) that `mfp eval`,
`mfp export` and `mfp deploy` take unchanged, ``metrics.jsonl`` (success against env steps and wall time), the final
evaluation on the fixed evaluation seeds and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from core.atomic_write import check_output, open_atomic, write_text
from core.errors import ConfigError, MfpError
from core.seeds import EVAL_SEED_BASE, FINETUNE_SEED_BASE, finetune_seeds
from core.spec import ShapeMeta
from envs.suites import get_suite, suite_for_task
from envs.vector import ChunkStep, ChunkVectorEnv
from policies.checkpoint import load_policy, policy_config_from_dict, read_config, save_policy
from policies.config import PolicyConfig
from policies.factory import build_policy
from policies.policy import Policy
from training.distributed import resolve_device
from training.evaluation import evaluate_checkpoint
from training.provenance import code_version
from training.rl.actor import ChunkActor, StateCritic
from training.rl.config import FinetuneConfig
from training.rl.ppo import PPO, ReturnScaler, Rollout
from training.rl.steering import NoiseSteering
from training.run_log import METRICS_FILE, RunLogger, rewind_metrics
from training.trainer import seed_everything

STATE_FILE = "finetune_state.pt"
POLICY_DIR = "policy"


class VectorEnv(Protocol):
    """What the fine-tuner needs of its envs (:class:`envs.vector.ChunkVectorEnv`, or a toy one in tests)."""

    n_envs: int

    def reset(self, seeds: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]: ...

    def step(self, chunks: np.ndarray) -> ChunkStep: ...

    def close(self) -> None: ...


EnvFactory = Callable[[int], VectorEnv]  # n_envs -> envs


def is_finetune_dir(path: Path) -> bool:
    """A directory a fine-tuning run made (its state or its policy), or one holding only logs."""
    if not path.is_dir():
        return False
    made = any((path / name).exists() for name in (".hydra", STATE_FILE, POLICY_DIR, METRICS_FILE))
    return made or all(p.is_file() and p.suffix == ".log" for p in path.iterdir())


class Finetuner:
    """One fine-tuning run; see the module docstring. ``env_factory`` replaces the simulator's envs (tests)."""

    def __init__(self, cfg: FinetuneConfig, env_factory: EnvFactory | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.device = resolve_device(cfg.device)
        torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)  # the std head's and the critic's initial weights
        source = read_config(cfg.checkpoint)  # a damaged checkpoint is refused before anything is written
        check_output(self.out, [cfg.checkpoint], what="output_dir", ours=is_finetune_dir, offer_overwrite=False)
        if (self.out / STATE_FILE).exists() and not cfg.resume:
            raise ConfigError(
                f"'{self.out}' holds a fine-tuning run; pass resume=true to continue it or choose another"
            )
        self.task_meta = dict(source.get("metadata", {}).get("task", {}) or {})
        self.task = cfg.task or self.task_meta.get("env", "")
        if not self.task:
            raise ConfigError(f"checkpoint '{cfg.checkpoint}' records no task; pass task=<name>")
        if env_factory is None:  # the task's own simulator, from the suite registry
            suite = get_suite(self.task_meta["suite"]) if self.task_meta.get("suite") else suite_for_task(self.task)
            self.task = suite.check_task(self.task)
            self.suite_name = suite.name
            recorded = self.task_meta.get("max_episode_steps") or suite.max_steps(self.task)
        else:
            self.suite_name = str(self.task_meta.get("suite", ""))
            recorded = self.task_meta.get("max_episode_steps") or 0
        self.max_steps = cfg.max_episode_steps or int(recorded)
        if self.max_steps < 1:
            raise ConfigError("pass max_episode_steps: neither the checkpoint nor the task says how long an episode is")
        self.policy_cfg, self.policy = self._load_policy(source)
        shape_meta = self.policy.shape_meta
        self.k = self.policy.n_action_steps
        method = cfg.ppo if cfg.method == "ppo" else cfg.steering
        self.n_envs = method.n_envs
        self.chunks = method.chunks_per_iteration or math.ceil(self.max_steps / self.k)
        if env_factory is None:
            env_kwargs = get_suite(self.suite_name).env_kwargs(shape_meta, self.task_meta)
            env_factory = self._simulator_envs(shape_meta, env_kwargs)
        self.envs = env_factory(self.n_envs)
        obs, state = self.envs.reset(finetune_seeds(self.n_envs))
        self.state_dim = state.shape[1]
        if cfg.method == "ppo":
            actor = ChunkActor(self.policy, cfg.ppo.std_min, cfg.ppo.std_max).to(self.device)
            self.learner: PPO | NoiseSteering = PPO(
                actor, StateCritic(self.state_dim).to(self.device), cfg.ppo, self.device
            )
        else:
            self.learner = NoiseSteering(self.policy, cfg.steering, self.device)
        self.scaler = ReturnScaler(self.n_envs, cfg.ppo.gamma if cfg.method == "ppo" else cfg.steering.gamma)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.np_rng = np.random.default_rng(cfg.seed)
        self.iteration, self.env_steps, self.wall_s = 0, 0, 0.0
        self.code = code_version()
        if cfg.resume:
            self._load_state()
        self.out.mkdir(parents=True, exist_ok=True)
        self._logger: RunLogger | None = None

    # ------------------------------------------------------------------ setup
    def _load_policy(self, source: Mapping[str, Any]) -> tuple[PolicyConfig, Policy]:
        policy = load_policy(self.cfg.checkpoint, device=str(self.device))
        cfg = policy_config_from_dict(source["policy"])
        if self.cfg.method == "steering" and policy.noise_actor is None:
            cfg = replace(
                cfg, noise_actor_hidden=self.cfg.steering.hidden_dim, noise_actor_bound=self.cfg.steering.noise_bound
            )
            steered = build_policy(cfg, policy.shape_meta)
            steered.normalizer.load_state_tensors(policy.normalizer.state_tensors())
            weights = {k: v for k, v in policy.state_dict().items() if not k.startswith("normalizer.")}
            missing, _ = steered.load_state_dict(weights, strict=False)
            if any(not k.startswith(("noise_actor.", "normalizer.")) for k in missing):
                raise ConfigError(f"cannot add a noise actor to '{self.cfg.checkpoint}': missing {missing[:4]}")
            policy = steered.to(self.device)
        try:
            policy.head.one_step(
                torch.zeros(1, policy.head.cond_dim, device=self.device),
                torch.zeros(1, policy.horizon, policy.shape_meta.action_dim, device=self.device),
            )
        except ConfigError as e:
            raise ConfigError(f"'{self.cfg.checkpoint}': {e}") from None
        return cfg, policy

    def _simulator_envs(self, shape_meta: ShapeMeta, env_kwargs: Mapping[str, Any]) -> EnvFactory:
        cfg = self.cfg

        def make(n_envs: int) -> VectorEnv:
            return ChunkVectorEnv(
                self.task,
                n_envs,
                self.policy.n_obs_steps,
                list(shape_meta.obs),
                cfg.critic_keys,
                env_kwargs,
                self.max_steps,
                reward=cfg.reward,
                dense_scale=cfg.dense_scale,
            )

        return make

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.resume:
            rewind_metrics(self.out / METRICS_FILE, self.env_steps)
        self._logger = RunLogger(self.out, cfg)
        write_text(self.out / "config.json", json.dumps(asdict(cfg), indent=2, default=str))
        before = None
        if self.iteration == 0 and cfg.eval.episodes > 0:
            before = self._evaluate(Path(cfg.checkpoint), cfg.eval.episodes, "eval_before")
        bar = _progress(cfg.env_steps, self.env_steps, cfg.progress)
        try:
            while self.env_steps < cfg.env_steps:
                t0 = time.perf_counter()
                metrics = self._iteration()
                self.wall_s += time.perf_counter() - t0
                metrics.update(env_steps=self.env_steps, wall_s=self.wall_s, iteration=self.iteration)
                self._logger.log(self.env_steps, metrics)
                if bar is not None:
                    bar.update(metrics["iteration_env_steps"])
                    bar.set_postfix(success=f"{metrics['rollout_success']:.2f}")
                if self.iteration % cfg.checkpoint_every == 0 or self.env_steps >= cfg.env_steps:
                    self.save()
                every = cfg.eval.every_iterations
                if every and self.iteration % every == 0 and self.env_steps < cfg.env_steps:
                    info = self._evaluate(
                        self.out / POLICY_DIR, cfg.eval.periodic_episodes, f"eval_iter{self.iteration}"
                    )
                    self._logger.log(
                        self.env_steps, {"eval/success_rate": info["pc_success"] / 100, "wall_s": self.wall_s}
                    )
        finally:
            if bar is not None:
                bar.close()
            self.envs.close()
        self.save()
        after = self._evaluate(self.out / POLICY_DIR, cfg.eval.episodes, "eval") if cfg.eval.episodes else None
        summary = self._summary(before, after)
        write_text(self.out / "summary.json", json.dumps(summary, indent=2, default=str))
        if after is not None:
            self._logger.log(self.env_steps, {"eval/success_rate": after["pc_success"] / 100, "wall_s": self.wall_s})
        return summary

    def _iteration(self) -> dict[str, Any]:
        span = EVAL_SEED_BASE - FINETUNE_SEED_BASE - self.n_envs * (self.chunks + 1)
        start = (self.iteration * self.n_envs * (self.chunks + 1)) % span
        obs, state = self.envs.reset(finetune_seeds(self.n_envs, start))
        if isinstance(self.learner, PPO):
            metrics = self._ppo_iteration(obs, state)
        else:
            metrics = self._steering_iteration(obs)
        self.iteration += 1
        return metrics

    def _ppo_iteration(self, obs: dict[str, np.ndarray], state: np.ndarray) -> dict[str, Any]:
        assert isinstance(self.learner, PPO)
        ppo, steps = self.learner, _Tally()
        records: dict[str, list[Any]] = {k: [] for k in Rollout.__dataclass_fields__ if k not in ("obs", "last_value")}
        obs_list: list[dict[str, np.ndarray]] = []
        for _ in range(self.chunks):
            out = ppo.act(obs, state, self.generator)
            result = self.envs.step(out["robot_action"])
            ended = result.terminated | result.truncated
            obs_list.append(obs)
            records["state"].append(state)
            for key in ("noise", "action", "logp", "value", "anchor"):
                records[key].append(out[key])
            records["reward"].append(self.scaler(result.reward, ended))
            records["terminated"].append(result.terminated)
            records["truncated"].append(result.truncated)
            records["final_value"].append(ppo.value(result.final_state))
            steps.add(result)
            obs, state = result.obs, result.state
        if isinstance(ppo.critic, StateCritic):
            ppo.critic.fit_normalizer(torch.as_tensor(np.concatenate(records["state"]), device=self.device))
        rollout = Rollout(
            obs={k: np.stack([o[k] for o in obs_list]) for k in obs_list[0]},
            last_value=ppo.value(state),
            **{k: np.stack(v) for k, v in records.items()},
        )
        metrics = ppo.update(rollout, self.generator)
        self.env_steps += steps.steps
        return {**metrics, **steps.metrics()}

    def _steering_iteration(self, obs: dict[str, np.ndarray]) -> dict[str, Any]:
        assert isinstance(self.learner, NoiseSteering)
        learner, cfg, steps = self.learner, self.cfg.steering, _Tally()
        cond = learner.embed(obs)
        losses: list[dict[str, float]] = []
        for _ in range(self.chunks):
            explore = learner.buffer.count < cfg.learning_starts
            out = learner.act(cond, self.generator, explore_uniform=explore)
            result = self.envs.step(out["robot_action"])
            next_cond = learner.embed(result.obs)
            done = (result.terminated | result.truncated).astype(np.float32)
            learner.buffer.add(cond, out["w"], result.reward, next_cond, done)
            steps.add(result)
            if learner.buffer.count >= cfg.learning_starts:
                for _ in range(cfg.updates_per_step * self.n_envs):
                    losses.append(learner.update(self.np_rng, self.generator))
            cond = next_cond
        self.env_steps += steps.steps
        mean = {k: float(np.mean([x[k] for x in losses])) for k in losses[0]} if losses else {}
        return {**mean, **steps.metrics(), "buffer": learner.buffer.count}

    # ------------------------------------------------------------------ evaluation and state
    def _evaluate(self, policy_dir: Path, episodes: int, name: str) -> dict[str, Any]:
        info = evaluate_checkpoint(
            policy_dir,
            episodes=episodes,
            n_workers=self.cfg.eval.workers,
            out_dir=self.out / name,
            max_steps=self.max_steps,
            task=self.task,
            device=str(self.device),
        )
        return dict(info["aggregated"])

    def save(self) -> None:
        """The fine-tuned policy (a normal checkpoint) and the run's state, each replaced atomically."""
        metadata = {
            "task": {**self.task_meta, "env": self.task, "max_episode_steps": self.max_steps},
            "finetune": {
                "method": self.cfg.method,
                "from": str(self.cfg.checkpoint),
                "env_steps": self.env_steps,
                "iteration": self.iteration,
            },
            "code": self.code,
        }
        save_policy(self.policy, self.policy_cfg, self.out / POLICY_DIR, metadata=metadata)
        state = {
            "learner": self.learner.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "np_rng": self.np_rng.bit_generator.state,
            "python_rng": random.getstate(),
            "torch_rng": torch.get_rng_state(),
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "wall_s": self.wall_s,
        }
        with open_atomic(self.out / STATE_FILE, "wb") as f:
            torch.save(state, f)

    def _load_state(self) -> None:
        path = self.out / STATE_FILE
        if not path.is_file():
            raise ConfigError(f"resume=true but '{path}' does not exist; start without resume")
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as e:  # a torn or foreign file: torch raises several error types
            raise MfpError(f"'{path}' cannot be read ({type(e).__name__}: {e})") from e
        self.learner.load_state_dict(state["learner"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.np_rng.bit_generator.state = state["np_rng"]
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.iteration, self.env_steps, self.wall_s = int(state["iteration"]), int(state["env_steps"]), state["wall_s"]

    def _summary(self, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
        return {
            "task": self.task,
            "suite": self.suite_name,
            "method": self.cfg.method,
            "head": self.policy_cfg.head,
            "checkpoint": str(self.cfg.checkpoint),
            "success_before": None if before is None else before["pc_success"],
            "success_after": None if after is None else after["pc_success"],
            "ci95_after": None if after is None else [after["ci95_low"], after["ci95_high"]],
            "env_steps": self.env_steps,
            "wall_s": self.wall_s,
            "iterations": self.iteration,
            "policy_dir": str(self.out / POLICY_DIR),
            "code": self.code,
        }


class _Tally:
    """Env steps, successes and finished episodes' returns over one iteration."""

    def __init__(self) -> None:
        self.steps = 0
        self.returns: list[float] = []
        self.successes: list[float] = []

    def add(self, result: ChunkStep) -> None:
        self.steps += int(result.steps.sum())
        ended = ~np.isnan(result.episode_return)
        self.returns += result.episode_return[ended].tolist()
        self.successes += result.episode_success[ended].tolist()

    def metrics(self) -> dict[str, float]:
        return {
            "iteration_env_steps": self.steps,
            "rollout_episodes": len(self.returns),
            "rollout_success": float(np.mean(self.successes)) if self.successes else float("nan"),
            "rollout_return": float(np.mean(self.returns)) if self.returns else float("nan"),
        }


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="finetune", unit="step", dynamic_ncols=True)
