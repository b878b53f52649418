"""Flow-matching (rectified flow) action head, MeanFlow's convention: data at t = 0, noise at t = 1.

``z_t = (1 - t) x + t eps``; the network regresses the conditional velocity ``v = eps - x``; sampling integrates
``dz/dt = v`` from t = 1 to 0 with k Euler steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from policies.backbones import Backbone
from policies.config import FlowConfig
from policies.heads.base import ActionHead, HeadEntry, register_head


class FlowHead(ActionHead):
    """Rectified-flow head: velocity regression, Euler sampling (``num_inference_steps`` by default)."""

    def __init__(self, backbone: Backbone, horizon: int, cfg: FlowConfig) -> None:
        super().__init__(backbone, horizon)
        if backbone.n_time_inputs != 1:
            raise ValueError(f"flow matching needs a backbone with n_time_inputs=1, got {backbone.n_time_inputs}")
        self.default_num_steps = int(cfg.num_inference_steps)
        self.t_sampling = cfg.t_sampling

    def sample_t(self, batch: int, device: torch.device) -> torch.Tensor:
        """Training times ``(B,)``: uniform on [0, 1] or logit-normal(0, 1)."""
        if self.t_sampling == "uniform":
            return torch.rand(batch, device=device)
        return torch.sigmoid(torch.randn(batch, device=device))

    def compute_loss(self, actions: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE between predicted and conditional velocity, ``actions (B, H, Da)``, ``cond (B, C)``."""
        self.check_batch(actions, cond)
        noise = torch.randn_like(actions)
        t = self.sample_t(actions.shape[0], actions.device)
        te = t[:, None, None]
        z = (1 - te) * actions + te * noise  # (B, H, Da)
        v_pred = self.backbone(z, t[:, None], cond)
        loss = F.mse_loss(v_pred, noise - actions)
        return loss, {"loss": float(loss.detach()), "mse": float(loss.detach())}

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        num_steps: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """k Euler steps ``z <- z - (t_i - t_{i+1}) v(z, t_i)`` on a uniform grid from 1 to 0; ``(B, H, Da)``."""
        steps = self.resolve_steps(num_steps)
        z = self.initial_noise(cond, noise, generator)
        grid = torch.linspace(1.0, 0.0, steps + 1, device=cond.device, dtype=cond.dtype)
        ones = torch.ones(cond.shape[0], 1, device=cond.device, dtype=cond.dtype)
        for i in range(steps):
            z = z - (grid[i] - grid[i + 1]) * self.backbone(z, grid[i] * ones, cond)
        return z


register_head(
    "flow", HeadEntry(build=FlowHead, config_type=FlowConfig, config_field="flow", n_time_inputs=1, draws_noise=True)
)
