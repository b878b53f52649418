"""DDPM-trained diffusion head with DDPM (ancestral) or DDIM (deterministic, eta = 0) sampling, as DP3 configures it.

Noise schedule and both samplers are written here (no ``diffusers`` dependency) following the DDPM/DDIM papers
with diffusers' conventions: ``squaredcos_cap_v2`` betas capped at 0.999, DDIM timesteps ``(0..k-1) * (T // k)``
reversed, final alpha = 1 ("set_alpha_to_one"), DDPM posterior variance "fixed_small", optional clipping of the
predicted clean sample to [-1, 1]. The backbone sees the step index as time ``t / T`` in [0, 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from policies.backbones import Backbone
from policies.config import DiffusionConfig
from policies.heads.base import ActionHead, HeadEntry, register_head

SAMPLERS = ("ddpm", "ddim")


def make_betas(num_train_timesteps: int, schedule: str) -> torch.Tensor:
    """Betas ``(T,)`` in float64: "squaredcos_cap_v2" (Nichol & Dhariwal cosine) or "linear" (1e-4 to 0.02)."""
    if schedule == "linear":
        return torch.linspace(1e-4, 0.02, num_train_timesteps, dtype=torch.float64)
    if schedule == "squaredcos_cap_v2":

        def alpha_bar(x: float) -> float:
            return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2

        T = num_train_timesteps
        betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown beta_schedule '{schedule}'; known: squaredcos_cap_v2, linear")


class DiffusionHead(ActionHead):
    """Predicts the clean chunk ("sample", DP3) or the noise ("epsilon") from ``x_t``; samples with DDPM or DDIM."""

    alphas_cumprod: torch.Tensor

    def __init__(self, backbone: Backbone, horizon: int, cfg: DiffusionConfig, sampler: str = "ddim") -> None:
        super().__init__(backbone, horizon)
        if backbone.n_time_inputs != 1:
            raise ValueError(f"diffusion needs a backbone with n_time_inputs=1, got {backbone.n_time_inputs}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler '{sampler}'; known: {', '.join(SAMPLERS)}")
        self.sampler = sampler
        self.num_train_timesteps = int(cfg.num_train_timesteps)
        self.prediction_type = cfg.prediction_type
        self.clip_sample = bool(cfg.clip_sample)
        self.default_num_steps = self.num_train_timesteps if sampler == "ddpm" else int(cfg.num_inference_steps)
        alphas_cumprod = torch.cumprod(1.0 - make_betas(self.num_train_timesteps, cfg.beta_schedule), dim=0)
        # Schedule constants are derived from the config, so they are not saved in the state dict.
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    def _times(self, timesteps: torch.Tensor) -> torch.Tensor:
        return (timesteps.float() / self.num_train_timesteps)[:, None]  # (B, 1)

    def compute_loss(self, actions: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """DDPM loss: uniform step t, ``x_t = sqrt(ab_t) x + sqrt(1 - ab_t) eps``, MSE to x or eps."""
        self.check_batch(actions, cond)
        batch = actions.shape[0]
        noise = torch.randn_like(actions)
        timesteps = torch.randint(0, self.num_train_timesteps, (batch,), device=actions.device)
        ab = self.alphas_cumprod[timesteps][:, None, None]  # (B, 1, 1)
        noisy = ab.sqrt() * actions + (1 - ab).sqrt() * noise  # (B, H, Da)
        pred = self.backbone(noisy, self._times(timesteps), cond)
        target = actions if self.prediction_type == "sample" else noise
        loss = F.mse_loss(pred, target)
        return loss, {"loss": float(loss.detach()), "mse": float(loss.detach())}

    def timesteps_for(self, num_steps: int) -> list[int]:
        """Descending step indices ``(0..k-1) * (T // k)`` reversed (diffusers' "leading" spacing, offset 0)."""
        if not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"num_steps must be in [1, {self.num_train_timesteps}], got {num_steps}")
        stride = self.num_train_timesteps // num_steps
        return [i * stride for i in reversed(range(num_steps))]

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        num_steps: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Denoise ``noise`` over ``num_steps`` steps (DDPM default: all T; DDIM default: num_inference_steps).

        DDPM draws fresh noise at every step from ``generator``; DDIM is deterministic given ``noise``.
        """
        steps = self.resolve_steps(num_steps)
        x = self.initial_noise(cond, noise, generator)  # (B, H, Da)
        timesteps = self.timesteps_for(steps)
        stride = self.num_train_timesteps // steps
        acp = self.alphas_cumprod.tolist()
        ones = torch.ones(cond.shape[0], 1, device=cond.device, dtype=cond.dtype)
        for t in timesteps:
            out = self.backbone(x, (t / self.num_train_timesteps) * ones, cond)
            prev = t - stride
            ab_t = acp[t]
            ab_prev = acp[prev] if prev >= 0 else 1.0
            if self.prediction_type == "sample":
                x0 = out
            else:
                x0 = (x - math.sqrt(1 - ab_t) * out) / math.sqrt(ab_t)
            x0_used = x0.clamp(-1.0, 1.0) if self.clip_sample else x0
            if self.sampler == "ddim":
                # eps from the unclipped prediction (diffusers' default, use_clipped_model_output=False)
                eps = out if self.prediction_type == "epsilon" else (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
                x = math.sqrt(ab_prev) * x0_used + math.sqrt(1 - ab_prev) * eps
            else:
                alpha_t = ab_t / ab_prev
                beta_t = 1 - alpha_t
                coef_x0 = math.sqrt(ab_prev) * beta_t / (1 - ab_t)
                coef_xt = math.sqrt(alpha_t) * (1 - ab_prev) / (1 - ab_t)
                x = coef_x0 * x0_used + coef_xt * x
                if t > 0:
                    variance = max((1 - ab_prev) / (1 - ab_t) * beta_t, 1e-20)
                    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                    x = x + math.sqrt(variance) * z
        return x


def _builder(sampler: str) -> Callable[[Backbone, int, DiffusionConfig], DiffusionHead]:
    def build(backbone: Backbone, horizon: int, cfg: DiffusionConfig) -> DiffusionHead:
        return DiffusionHead(backbone, horizon, cfg, sampler=sampler)

    return build


for _sampler in SAMPLERS:
    register_head(
        _sampler,
        HeadEntry(
            build=_builder(_sampler),
            config_type=DiffusionConfig,
            config_field="diffusion",
            n_time_inputs=1,
            draws_noise=True,
        ),
    )
