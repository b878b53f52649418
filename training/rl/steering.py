"""Noise-space steering (DSRL, DESIGN section 10): SAC over the one-step generator's starting noise.

The trained policy stays frozen; a :class:`policies.noise_actor.NoiseActor` chooses its starting noise ``w`` (bounded
per entry) from the observation embedding, and twin critics ``Q(embedding, w)`` learn off-policy from a replay
buffer of chunk transitions. Each environment step (one executed chunk) is one transition; embeddings are computed
once by the frozen encoder and stored, so an update touches only small networks: the sample-efficient option for slow
(image) simulators. A transition that ends at the step limit is stored without a bootstrap (the next observation
there belongs to the new episode), a small bias towards short horizons.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies.noise_actor import NoiseActor
from policies.policy import Policy
from training.rl.config import SteeringConfig
from training.rl.ppo import RLError


class TwinQ(nn.Module):
    """Two critics ``Q(cond (B, C), w (B, H, Da)) -> (B,)`` (their minimum counters over-estimation)."""

    def __init__(self, cond_dim: int, noise_size: int, hidden_dim: int) -> None:
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(cond_dim + noise_size, hidden_dim),
                nn.Mish(),
                nn.Linear(hidden_dim, hidden_dim),
                nn.Mish(),
                nn.Linear(hidden_dim, 1),
            )

        self.q1, self.q2 = mlp(), mlp()

    def forward(self, cond: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([cond, w.flatten(1)], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class ReplayBuffer:
    """A fixed-size ring of chunk transitions held as numpy arrays."""

    def __init__(self, size: int, cond_dim: int, noise_shape: tuple[int, int]) -> None:
        self.cond = np.zeros((size, cond_dim), np.float32)
        self.w = np.zeros((size, *noise_shape), np.float32)
        self.reward = np.zeros(size, np.float32)
        self.next_cond = np.zeros((size, cond_dim), np.float32)
        self.done = np.zeros(size, np.float32)
        self.size, self.count, self.pos = size, 0, 0

    def add(self, cond: np.ndarray, w: np.ndarray, reward: np.ndarray, next_cond: np.ndarray, done: np.ndarray) -> None:
        for i in range(len(reward)):
            self.cond[self.pos], self.w[self.pos], self.reward[self.pos] = cond[i], w[i], reward[i]
            self.next_cond[self.pos], self.done[self.pos] = next_cond[i], done[i]
            self.pos = (self.pos + 1) % self.size
            self.count = min(self.count + 1, self.size)

    def sample(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        idx = rng.integers(0, self.count, batch)
        return {
            "cond": self.cond[idx],
            "w": self.w[idx],
            "reward": self.reward[idx],
            "next_cond": self.next_cond[idx],
            "done": self.done[idx],
        }

    def state_dict(self) -> dict[str, Any]:
        n = self.count
        return {
            "cond": self.cond[:n],
            "w": self.w[:n],
            "reward": self.reward[:n],
            "next_cond": self.next_cond[:n],
            "done": self.done[:n],
            "pos": self.pos,
            "count": n,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        n = int(state["count"])
        for key in ("cond", "w", "reward", "next_cond", "done"):
            getattr(self, key)[:n] = state[key]
        self.count, self.pos = n, int(state["pos"])


class NoiseSteering:
    """The learner: the frozen policy, its noise actor (trained), twin critics and their targets, a temperature."""

    def __init__(self, policy: Policy, cfg: SteeringConfig, device: torch.device) -> None:
        if policy.noise_actor is None:
            raise RLError("the policy has no noise actor: build it with policy.noise_actor_hidden > 0")
        self.policy, self.cfg, self.device = policy.eval(), cfg, device
        for name, p in policy.named_parameters():
            p.requires_grad_(name.startswith("noise_actor."))
        self.actor: NoiseActor = policy.noise_actor
        cond_dim = policy.head.cond_dim
        shape = (policy.horizon, policy.shape_meta.action_dim)
        self.critic = TwinQ(cond_dim, shape[0] * shape[1], cfg.hidden_dim).to(device)
        self.target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(float(np.log(cfg.init_temperature)), device=device, requires_grad=True)
        self.target_entropy = -float(shape[0] * shape[1])
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.actor_lr)
        self.buffer = ReplayBuffer(cfg.buffer_size, cond_dim, shape)
        self.updates = 0

    @torch.no_grad()
    def embed(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.policy.embed({k: torch.as_tensor(v, device=self.device) for k, v in obs.items()}).cpu().numpy()

    @torch.no_grad()
    def act(self, cond: np.ndarray, generator: torch.Generator, explore_uniform: bool) -> dict[str, np.ndarray]:
        """Noise ``w`` per env (uniform within the bound before learning starts) and the chunk it gives."""
        c = torch.as_tensor(cond, device=self.device)
        if explore_uniform:
            shape = (c.shape[0], *self.actor.shape)
            w = (2 * torch.rand(shape, generator=generator, device=self.device) - 1) * self.actor.bound
        else:
            w, _ = self.actor.sample(c, generator)
        chunk = self.policy.head.sample(c, num_steps=1, noise=w)
        start = self.policy.n_obs_steps - 1
        executed = self.policy.normalizer.unnormalize("action", chunk)[:, start : start + self.policy.n_action_steps]
        return {"w": w.cpu().numpy(), "robot_action": executed.cpu().numpy()}

    def update(self, rng: np.random.Generator, generator: torch.Generator) -> dict[str, float]:
        cfg = self.cfg
        b = {k: torch.as_tensor(v, device=self.device) for k, v in self.buffer.sample(cfg.batch_size, rng).items()}
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_w, next_logp = self.actor.sample(b["next_cond"], generator)
            q1_t, q2_t = self.target(b["next_cond"], next_w)
            target = b["reward"] + cfg.gamma * (1 - b["done"]) * (torch.min(q1_t, q2_t) - alpha * next_logp)
        q1, q2 = self.critic(b["cond"], b["w"])
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self._step(self.critic_opt, critic_loss)
        w, logp = self.actor.sample(b["cond"], generator)
        q1_pi, q2_pi = self.critic(b["cond"], w)
        actor_loss = (alpha * logp - torch.min(q1_pi, q2_pi)).mean()
        self._step(self.actor_opt, actor_loss)
        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self._step(self.alpha_opt, alpha_loss)
        with torch.no_grad():
            for p, p_t in zip(self.critic.parameters(), self.target.parameters(), strict=True):
                p_t.mul_(1 - cfg.tau).add_(cfg.tau * p)
        self.updates += 1
        return {"critic_loss": float(critic_loss), "actor_loss": float(actor_loss), "alpha": float(alpha)}

    def _step(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise RLError(f"the steering loss became {float(loss)} after {self.updates} updates")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target": self.target.state_dict(),
            "log_alpha": self.log_alpha.detach().cpu(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "buffer": self.buffer.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target.load_state_dict(state["target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.buffer.load_state_dict(state["buffer"])
        self.updates = int(state["updates"])
