"""The action-head contract and the registry that builds a head by name.

A head turns a backbone (``forward(x (B, H, Da), times (B, K), cond (B, C)) -> (B, H, Da)``) into a generative
model of normalized action chunks: ``compute_loss(actions, cond)`` for training, ``sample(cond, ...)`` for inference.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from policies.config import HEADS as HEAD_NAMES
from policies.config import DiffusionConfig, FlowConfig, MeanFlowConfig


class ActionHead(nn.Module, ABC):
    """Base class of every action head.

    Subclasses set ``default_num_steps`` (the NFE used when the caller does not say) and implement
    :meth:`compute_loss` and :meth:`sample`. Chunks are ``(B, H, Da)`` in normalized units ([-1, 1]).
    """

    default_num_steps: int = 1
    # Fraction of training done, in [0, 1]; the trainer sets it before each step (1 outside training). Derived from
    # the step count, so it is not part of the state and a resumed run sees the same value.
    training_progress: float = 1.0

    def __init__(self, backbone: nn.Module, horizon: int) -> None:
        super().__init__()
        for attr in ("input_dim", "global_cond_dim", "n_time_inputs"):
            if not hasattr(backbone, attr):
                raise TypeError(f"backbone {type(backbone).__name__} lacks attribute '{attr}'")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.backbone = backbone
        self.horizon = int(horizon)
        self.action_dim = int(backbone.input_dim)
        self.cond_dim = int(backbone.global_cond_dim)

    @abstractmethod
    def compute_loss(self, actions: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar training loss and float metrics for ``actions (B, H, Da)`` given ``cond (B, C)``."""

    @abstractmethod
    def sample(
        self,
        cond: torch.Tensor,
        num_steps: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Action chunks ``(B, H, Da)`` for ``cond (B, C)`` with ``num_steps`` network evaluations."""

    # ------------------------------------------------------------------ helpers for subclasses
    def check_batch(self, actions: torch.Tensor, cond: torch.Tensor) -> None:
        """Raise a ValueError naming the tensor when shapes disagree with the head."""
        expected = (self.horizon, self.action_dim)
        if actions.dim() != 3 or tuple(actions.shape[1:]) != expected:
            raise ValueError(f"actions must have shape (B, {expected[0]}, {expected[1]}), got {tuple(actions.shape)}")
        self.check_cond(cond)
        if cond.shape[0] != actions.shape[0]:
            raise ValueError(f"cond has batch {cond.shape[0]} but actions have batch {actions.shape[0]}")

    def check_cond(self, cond: torch.Tensor) -> None:
        if cond.dim() != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(f"cond must have shape (B, {self.cond_dim}), got {tuple(cond.shape)}")

    def resolve_steps(self, num_steps: int | None) -> int:
        steps = self.default_num_steps if num_steps is None else int(num_steps)
        if steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        return steps

    def initial_noise(
        self, cond: torch.Tensor, noise: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The given ``noise`` (checked) or a fresh standard normal draw, ``(B, H, Da)``."""
        self.check_cond(cond)
        shape = (cond.shape[0], self.horizon, self.action_dim)
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
            return noise.to(device=cond.device, dtype=cond.dtype)
        return torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)


def n_time_inputs_for(name: str) -> int:
    """How many time inputs the backbone of head ``name`` needs (MeanFlow: t and t - r; others: one)."""
    _check_name(name)
    return 2 if name == "meanflow" else 1


def make_head(name: str, backbone: nn.Module, cfg: Any, horizon: int | None = None) -> ActionHead:
    """Build head ``name`` on ``backbone`` from its config dataclass (``MeanFlowConfig`` for meanflow,
    ``FlowConfig`` for flow, ``DiffusionConfig`` for ddpm/ddim, ``None`` for regression).

    ``horizon`` (the chunk length H) may be omitted only for a backbone that knows it (``MLPBackbone``).
    """
    _check_name(name)
    if horizon is None:
        horizon = getattr(backbone, "horizon", None)
        if horizon is None:
            raise ValueError(f"make_head('{name}', ...): pass horizon=H; {type(backbone).__name__} works for any H")
    if backbone.n_time_inputs != n_time_inputs_for(name):
        raise ValueError(
            f"head '{name}' needs a backbone with n_time_inputs={n_time_inputs_for(name)}, "
            f"got {backbone.n_time_inputs}; build it with n_time_inputs_for('{name}')"
        )
    expected_cfg = {"meanflow": MeanFlowConfig, "flow": FlowConfig, "ddpm": DiffusionConfig, "ddim": DiffusionConfig}
    if name in expected_cfg and not isinstance(cfg, expected_cfg[name]):
        raise TypeError(f"head '{name}' needs a {expected_cfg[name].__name__}, got {type(cfg).__name__}")

    if name == "meanflow":
        from policies.meanflow import MeanFlowHead

        return MeanFlowHead(
            backbone,
            horizon,
            p_mean=cfg.p_mean,
            p_std=cfg.p_std,
            t_dist=cfg.t_dist,
            ratio_r_eq_t=cfg.ratio_r_eq_t,
            ratio_one_step=cfg.ratio_one_step,
            adaptive_p=cfg.adaptive_p,
            adaptive_c=cfg.adaptive_c,
            cfg_omega=cfg.cfg_omega,
            cfg_kappa=cfg.cfg_kappa,
            cond_drop_prob=cfg.cond_drop_prob,
            cfg_t_min=cfg.cfg_t_min,
            cfg_t_max=cfg.cfg_t_max,
            num_inference_steps=cfg.num_inference_steps,
            jvp_mode=cfg.jvp_mode,
            jvp_tangent=cfg.jvp_tangent,
            prediction=cfg.prediction,
            x_t_floor=cfg.x_t_floor,
            fm_warmup_frac=cfg.fm_warmup_frac,
            alpha_anneal_frac=cfg.alpha_anneal_frac,
            cond_grad=cfg.cond_grad,
        )
    if name == "flow":
        from policies.flow import FlowHead

        return FlowHead(backbone, horizon, num_inference_steps=cfg.num_inference_steps, t_sampling=cfg.t_sampling)
    if name in ("ddpm", "ddim"):
        from policies.diffusion import DiffusionHead

        return DiffusionHead(
            backbone,
            horizon,
            sampler=name,
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            prediction_type=cfg.prediction_type,
            num_inference_steps=cfg.num_inference_steps,
            clip_sample=cfg.clip_sample,
        )
    from policies.regression import RegressionHead

    return RegressionHead(backbone, horizon)


def _check_name(name: str) -> None:
    if name not in HEAD_NAMES:
        raise ValueError(f"unknown action head '{name}'; known: {', '.join(HEAD_NAMES)}")
