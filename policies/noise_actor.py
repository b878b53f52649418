"""A learned choice of the one-step generator's starting noise (noise-space steering, DSRL).

The generator stays as it was trained; this small network maps the observation embedding to a distribution over the
starting noise, bounded to ``|w| <= bound`` per entry by a tanh. At inference the policy uses its mean
(``bound * tanh(mu)``); fine-tuning samples it (a tanh-squashed Gaussian, log-probability with the squashing
correction) and learns it off-policy (training/rl/steering.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_STD_RANGE = (-5.0, 1.0)


class NoiseActor(nn.Module):
    """``cond (B, C)`` -> starting noise ``(B, H, Da)`` within ``[-bound, bound]``."""

    def __init__(self, cond_dim: int, horizon: int, action_dim: int, hidden_dim: int = 256, bound: float = 1.5):
        super().__init__()
        self.shape = (int(horizon), int(action_dim))
        self.bound = float(bound)
        size = self.shape[0] * self.shape[1]
        last = nn.Linear(hidden_dim, 2 * size)
        nn.init.zeros_(last.weight)  # starts at mean 0 (the generator's typical noise) and std 1
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Linear(cond_dim, hidden_dim), nn.Mish(), nn.Linear(hidden_dim, hidden_dim), nn.Mish(), last
        )

    def _params(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(cond).chunk(2, dim=-1)
        return mu, log_std.clamp(*LOG_STD_RANGE)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """The deterministic choice: ``bound * tanh(mu)``, ``(B, H, Da)``."""
        mu, _ = self._params(cond)
        return (self.bound * torch.tanh(mu)).view(-1, *self.shape)

    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized draw ``(B, H, Da)`` and its log-probability ``(B,)`` (tanh-squashed Gaussian)."""
        mu, log_std = self._params(cond)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        pre = mu + log_std.exp() * eps
        squashed = torch.tanh(pre)
        logp = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2.0 * math.pi)).sum(-1)
        logp = logp - (torch.log(self.bound * (1.0 - squashed.pow(2)) + 1e-6)).sum(-1)
        return (self.bound * squashed).view(-1, *self.shape), logp
