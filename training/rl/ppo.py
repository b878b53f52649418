"""PPO for a one-step policy (ReinFlow / DMPO scheme, DESIGN section 10).

One RL action is one executed chunk. Per rollout step the actor's starting noise, the sampled chunk, its
log-probability, the critic's value and the pre-trained policy's chunk at the same noise (the behaviour-cloning
anchor's target) are stored; advantages come from GAE over chunks; the update is the clipped surrogate plus a value
loss, an entropy bonus and the anchor, its weight decayed over iterations. Rewards are divided by a running standard
deviation of the discounted return. Two sanity checks run in the update: the probability ratio is exactly 1 on the
first minibatch (nothing changed the policy between rollout and update), and log-probabilities are per chunk entry.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.errors import MfpError
from training.rl.actor import ChunkActor, StateCritic
from training.rl.config import PPOConfig

RATIO_TOLERANCE = 1e-4


class RLError(MfpError, RuntimeError):
    """Fine-tuning cannot go on (a broken sanity check, a non-finite loss)."""


@dataclass
class Rollout:
    """T steps of N envs; every array has leading dims (T, N)."""

    obs: dict[str, np.ndarray]  # {key: (T, N, To, ...)}
    state: np.ndarray  # (T, N, S)
    noise: np.ndarray  # (T, N, H, Da)
    action: np.ndarray  # (T, N, k, Da) normalized, as sampled
    logp: np.ndarray  # (T, N)
    value: np.ndarray  # (T, N)
    anchor: np.ndarray  # (T, N, k, Da): the pre-trained policy's chunk at the same noise
    reward: np.ndarray  # (T, N), as scaled for learning
    terminated: np.ndarray  # (T, N) bool
    truncated: np.ndarray  # (T, N) bool
    final_value: np.ndarray  # (T, N): value of an ended episode's last state (bootstraps a time limit)
    last_value: np.ndarray  # (N,): value of each env's state after the last step


def gae(
    reward: np.ndarray,
    value: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    final_value: np.ndarray,
    last_value: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimates and returns ``(T, N)`` over chunk steps. A success (terminated) has no
    value beyond it; a time limit (truncated) bootstraps from ``final_value``; either way the next step belongs to
    a new episode, so no advantage flows across it."""
    steps = reward.shape[0]
    adv = np.zeros_like(reward, dtype=np.float64)
    running = np.zeros(reward.shape[1], dtype=np.float64)
    for t in reversed(range(steps)):
        ended = terminated[t] | truncated[t]
        next_value = last_value if t == steps - 1 else value[t + 1]
        bootstrap = np.where(terminated[t], 0.0, np.where(truncated[t], final_value[t], next_value))
        delta = reward[t] + gamma * bootstrap - value[t]
        running = delta + gamma * lam * np.where(ended, 0.0, running)
        adv[t] = running
    return adv.astype(np.float32), (adv + value).astype(np.float32)


class ReturnScaler:
    """Divides rewards by the running standard deviation of the discounted return (per env stream)."""

    def __init__(self, n_envs: int, gamma: float) -> None:
        self.gamma = gamma
        self.running = np.zeros(n_envs)
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def __call__(self, reward: np.ndarray, ended: np.ndarray) -> np.ndarray:
        self.running = self.running * self.gamma + reward
        for x in self.running:
            self.count += 1
            delta = x - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (x - self.mean)
        self.running = np.where(ended, 0.0, self.running)
        std = (self.m2 / self.count) ** 0.5 if self.count > 1 else 1.0
        return (reward / max(std, 1e-2)).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running.tolist(), "count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.running = np.asarray(state["running"], dtype=np.float64)
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


class PPO:
    """The learner: actor (fine-tuned policy + std network), critic, a frozen copy of the pre-trained policy."""

    def __init__(self, actor: ChunkActor, critic: StateCritic, cfg: PPOConfig, device: torch.device) -> None:
        self.actor, self.critic, self.cfg, self.device = actor, critic, cfg, device
        self.reference = copy.deepcopy(actor.policy).eval().requires_grad_(False)
        policy_params = [
            p for name, p in actor.policy.named_parameters() if cfg.train_encoder or not name.startswith("obs_encoder")
        ]
        self.actor_opt = torch.optim.Adam(policy_params, lr=cfg.actor_lr)
        self.std_opt = torch.optim.Adam(actor.std_net.parameters(), lr=cfg.std_lr)
        self.critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr)
        self.iteration = 0

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(
        self, obs: Mapping[str, np.ndarray], state: np.ndarray, generator: torch.Generator
    ) -> dict[str, np.ndarray]:
        """Sample one chunk per env: noise, normalized action, its log-probability, the value, the anchor."""
        self.actor.eval()
        obs_t = {k: torch.as_tensor(v, device=self.device) for k, v in obs.items()}
        n = state.shape[0]
        noise = torch.randn(self.actor.noise_shape(n), generator=generator, device=self.device)
        mean, std, _ = self.actor.mean_std(obs_t, noise)
        eps = torch.randn(mean.shape, generator=generator, device=self.device)
        action = mean + std * eps
        anchor_cond = self.reference.condition(obs_t)
        start, k = self.actor.start, self.actor.k
        anchor = self.reference.head.one_step(anchor_cond, noise)[:, start : start + k].clamp(-1.0, 1.0)
        value = self.critic(torch.as_tensor(state, device=self.device))
        return {
            "noise": noise.cpu().numpy(),
            "action": action.cpu().numpy(),
            "robot_action": self.actor.to_robot(action.clamp(-1.0, 1.0)).cpu().numpy(),
            "logp": self.actor.log_prob(action, mean, std).cpu().numpy(),
            "value": value.cpu().numpy(),
            "anchor": anchor.cpu().numpy(),
        }

    @torch.no_grad()
    def value(self, state: np.ndarray) -> np.ndarray:
        return self.critic(torch.as_tensor(state, device=self.device)).cpu().numpy()

    # ------------------------------------------------------------------ learning
    def bc_weight(self) -> float:
        cfg = self.cfg
        if cfg.bc_decay_iterations == 0:
            return cfg.bc_weight_final
        frac = min(1.0, self.iteration / cfg.bc_decay_iterations)
        return cfg.bc_weight + frac * (cfg.bc_weight_final - cfg.bc_weight)

    def update(self, rollout: Rollout, generator: torch.Generator) -> dict[str, float]:
        """One PPO update on ``rollout``; returns mean losses and diagnostics."""
        cfg = self.cfg
        adv, ret = gae(
            rollout.reward,
            rollout.value,
            rollout.terminated,
            rollout.truncated,
            rollout.final_value,
            rollout.last_value,
            cfg.gamma,
            cfg.gae_lambda,
        )
        flat = _flatten(rollout, adv, ret)
        total = flat["adv"].shape[0]
        adv_t = torch.as_tensor(flat["adv"], device=self.device)
        flat["adv"] = ((adv_t - adv_t.mean()) / (adv_t.std() + 1e-8)).cpu().numpy()
        warmup = self.iteration < cfg.critic_warmup_iterations
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "entropy", "bc", "ratio_dev")}
        self.actor.eval()  # no dropout/crop randomness: the same function as during the rollout
        first = True
        for _ in range(cfg.epochs):
            order = torch.randperm(total, generator=generator).numpy()
            for start in range(0, total, cfg.minibatch):
                idx = order[start : start + cfg.minibatch]
                mb = {
                    k: (v[idx] if not isinstance(v, dict) else {kk: vv[idx] for kk, vv in v.items()})
                    for k, v in flat.items()
                }
                t = _to_tensors(mb, self.device)
                value = self.critic(t["state"])
                value_loss = 0.5 * (value - t["ret"]).pow(2).mean()
                if warmup:
                    self._step(value_loss * cfg.value_coef, critic_only=True)
                    stats["value_loss"].append(float(value_loss.detach()))
                    continue
                mean, std, _ = self.actor.mean_std(t["obs"], t["noise"])
                logp = self.actor.log_prob(t["action"], mean, std)
                ratio = torch.exp(logp - t["logp"])
                if first:
                    deviation = float((ratio.detach() - 1.0).abs().max())
                    if deviation > RATIO_TOLERANCE:
                        raise RLError(
                            f"the probability ratio on the first minibatch is {1 + deviation:.6f}, not 1: the policy "
                            "computed during the update differs from the one that acted (a random layer in training "
                            "mode, or stale stored log-probabilities)"
                        )
                    first = False
                a = t["adv"]
                policy_loss = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
                entropy = self.actor.entropy(std).mean()
                bc = (mean - t["anchor"]).pow(2).mean()
                loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy * entropy + self.bc_weight() * bc
                self._step(loss, critic_only=False)
                stats["policy_loss"].append(float(policy_loss))
                stats["value_loss"].append(float(value_loss.detach()))
                stats["entropy"].append(float(entropy))
                stats["bc"].append(float(bc))
                stats["ratio_dev"].append(float((ratio.detach() - 1.0).abs().mean()))
        self.iteration += 1
        out = {k: float(np.mean(v)) for k, v in stats.items() if v}
        out.update(bc_weight=self.bc_weight(), critic_warmup=float(warmup), std_mean=float(flat_std(self, flat)))
        return out

    def _step(self, loss: torch.Tensor, critic_only: bool) -> None:
        if not torch.isfinite(loss):
            raise RLError(f"the fine-tuning loss became {float(loss)} at iteration {self.iteration}")
        opts = [self.critic_opt] if critic_only else [self.critic_opt, self.actor_opt, self.std_opt]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for opt in opts for group in opt.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        for opt in opts:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "std_opt": self.std_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "reference": self.reference.state_dict(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.reference.load_state_dict(state["reference"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.std_opt.load_state_dict(state["std_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.iteration = int(state["iteration"])


@torch.no_grad()
def flat_std(ppo: PPO, flat: Mapping[str, Any]) -> float:
    """The mean exploration std on (up to 64 of) the rollout's observations (a diagnostic)."""
    obs = {k: torch.as_tensor(v[:64], device=ppo.device) for k, v in flat["obs"].items()}
    noise = torch.as_tensor(flat["noise"][:64], device=ppo.device)
    return float(ppo.actor.mean_std(obs, noise)[1].mean())


def _flatten(rollout: Rollout, adv: np.ndarray, ret: np.ndarray) -> dict[str, Any]:
    def f(x: np.ndarray) -> np.ndarray:
        return x.reshape(-1, *x.shape[2:])

    return {
        "obs": {k: f(v) for k, v in rollout.obs.items()},
        "state": f(rollout.state),
        "noise": f(rollout.noise),
        "action": f(rollout.action),
        "logp": f(rollout.logp),
        "anchor": f(rollout.anchor),
        "adv": f(adv),
        "ret": f(ret),
    }


def _to_tensors(mb: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in mb.items():
        out[k] = (
            {kk: torch.as_tensor(vv, device=device) for kk, vv in v.items()}
            if isinstance(v, dict)
            else (torch.as_tensor(v, device=device))
        )
    return out
