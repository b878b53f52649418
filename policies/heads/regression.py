"""Regression head: plain MSE behaviour cloning of the action chunk on the same backbone.

The honest floor every generative head must beat: it cannot represent several modes and predicts their mean.
The backbone gets a zero chunk and zero time, so only the condition carries information.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from policies.backbones import Backbone
from policies.heads.base import ActionHead, HeadEntry, register_head


class RegressionHead(ActionHead):
    """Deterministic chunk predictor ``a = f(0, t=0 | c)`` trained with MSE; ``num_steps`` and noise are unused."""

    default_num_steps = 1

    def __init__(self, backbone: Backbone, horizon: int, cfg: None = None) -> None:
        super().__init__(backbone, horizon)
        if backbone.n_time_inputs != 1:
            raise ValueError(f"regression needs a backbone with n_time_inputs=1, got {backbone.n_time_inputs}")

    def predict(self, cond: torch.Tensor) -> torch.Tensor:
        """``cond (B, C)`` -> chunk ``(B, H, Da)``."""
        batch = cond.shape[0]
        zeros_x = cond.new_zeros(batch, self.horizon, self.action_dim)
        return self.backbone(zeros_x, cond.new_zeros(batch, 1), cond)

    def compute_loss(self, actions: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE between the predicted and the demonstrated chunk."""
        self.check_batch(actions, cond)
        loss = F.mse_loss(self.predict(cond), actions)
        return loss, {"loss": float(loss.detach()), "mse": float(loss.detach())}

    def one_step(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The predicted chunk with autograd; ``noise`` does not enter it."""
        return self.predict(cond)

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        num_steps: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The predicted chunk ``(B, H, Da)``; ``noise`` is only shape-checked, ``num_steps`` only validated."""
        self.resolve_steps(num_steps)
        self.check_cond(cond)
        if noise is not None:
            self.initial_noise(cond, noise, None)
        return self.predict(cond)


register_head(
    "regression",
    HeadEntry(build=RegressionHead, config_type=None, config_field=None, n_time_inputs=1, draws_noise=False),
)
