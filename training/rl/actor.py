"""The one-step policy as a Gaussian over its executed chunk (the PPO actor), and a value function on a state vector.

``mean(obs, noise)`` is the chunk the policy's one network evaluation maps its starting noise to, clipped to the
normalized action range and cut to the executed steps: ``(B, k, Da)``. A small network on the (detached) observation
embedding gives a per-dimension standard deviation bounded to ``[std_min, std_max]``, so the executed chunk
``a = mean + std * eps`` has an exact Gaussian log-probability; it is summed over the chunk and divided by the number
of its entries (``k * Da``), so a chunk counts as one action at the scale of one dimension. The starting noise is
stored with each rollout step, which makes the mean a deterministic function of (observation, noise).

At evaluation and export the std network is dropped: the saved policy is the fine-tuned :class:`Policy` itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from policies.policy import Policy


class ChunkActor(nn.Module):
    """Gaussian actor around a one-step :class:`Policy` (see the module docstring)."""

    def __init__(self, policy: Policy, std_min: float, std_max: float, hidden_dim: int = 128) -> None:
        super().__init__()
        self.policy = policy
        self.start = policy.n_obs_steps - 1
        self.k = policy.n_action_steps
        self.action_dim = policy.shape_meta.action_dim
        self.std_min, self.std_max = float(std_min), float(std_max)
        cond_dim = policy.head.cond_dim
        last = nn.Linear(hidden_dim, self.k * self.action_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)  # starts at the middle of the range
        self.std_net = nn.Sequential(nn.Linear(cond_dim, hidden_dim), nn.Mish(), last)

    @property
    def chunk_size(self) -> int:
        return self.k * self.action_dim

    def noise_shape(self, batch: int) -> tuple[int, int, int]:
        return (batch, self.policy.horizon, self.action_dim)

    def mean_std(
        self, obs: Mapping[str, torch.Tensor], noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean (B, k, Da), std (B, k, Da), cond (B, C))`` for raw observations ``{key: (B, To, ...)}`` and
        starting noise ``(B, H, Da)``; mean and std in normalized action units."""
        cond = self.policy.condition(obs)
        chunk = self.policy.head.one_step(cond, noise)[:, self.start : self.start + self.k]  # (B, k, Da)
        mean = chunk.clamp(-1.0, 1.0)
        unit = torch.sigmoid(self.std_net(cond.detach())).view(-1, self.k, self.action_dim)
        std = self.std_min + (self.std_max - self.std_min) * unit
        return mean, std, cond

    def log_prob(self, action: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Gaussian log-density of ``action (B, k, Da)`` per chunk entry: summed over the chunk, divided by k*Da."""
        z = (action - mean) / std
        per_entry = -0.5 * z.pow(2) - std.log() - 0.5 * math.log(2.0 * math.pi)
        return per_entry.flatten(1).sum(1) / self.chunk_size

    def entropy(self, std: torch.Tensor) -> torch.Tensor:
        """Gaussian entropy per chunk entry (the same normalization as :meth:`log_prob`)."""
        return (std.log() + 0.5 * math.log(2.0 * math.pi * math.e)).flatten(1).mean(1)

    def to_robot(self, action: torch.Tensor) -> torch.Tensor:
        """Normalized executed actions ``(B, k, Da)`` -> robot units."""
        return self.policy.normalizer.unnormalize("action", action)


class StateCritic(nn.Module):
    """``V(state)`` for a state vector ``(B, S)``, standardized by statistics fixed from the first rollout."""

    mean: torch.Tensor
    std: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, state_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(state_dim))
        self.register_buffer("std", torch.ones(state_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.net = nn.Sequential(
            nn.Linear(state_dim, hidden_dim),
            nn.Mish(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.Mish(),
            nn.Linear(hidden_dim, 1),
        )

    def fit_normalizer(self, states: torch.Tensor) -> None:
        """Fix the standardization from the first rollout's states (once; later rollouts keep it)."""
        if bool(self.fitted):
            return
        self.mean.copy_(states.mean(0))
        self.std.copy_(states.std(0).clamp_min(1e-3))
        self.fitted.fill_(True)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net((state - self.mean) / self.std).squeeze(-1)
