"""The action-head contract and the registry that builds a head by name from its config dataclass.

A head turns a backbone (``forward(x (B, H, Da), times (B, K), cond (B, C)) -> (B, H, Da)``) into a generative
model of normalized action chunks: ``compute_loss(actions, cond)`` for training, ``sample(cond, ...)`` for inference.
Each head module registers itself with :func:`register_head`; this module imports none of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError
from policies.backbones import Backbone


class ActionHead(nn.Module, ABC):
    """Base class of every action head.

    Subclasses set ``default_num_steps`` (the NFE used when the caller does not say) and implement
    :meth:`compute_loss` and :meth:`sample`. Chunks are ``(B, H, Da)`` in normalized units ([-1, 1]).
    """

    default_num_steps: int = 1

    def __init__(self, backbone: Backbone, horizon: int) -> None:
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

    def one_step(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The chunk ``(B, H, Da)`` one network evaluation maps ``noise`` to, differentiable (for fine-tuning).
        Heads that need several evaluations have none."""
        raise ConfigError(f"a {type(self).__name__} has no one-step map; fine-tune a meanflow or regression policy")

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


HeadBuilder = Callable[[Backbone, int, Any], ActionHead]


@dataclass(frozen=True)
class HeadEntry:
    """How to build one registered head.

    ``config_field``: the :class:`policies.config.PolicyConfig` field holding its settings (None: it has none);
    ``n_time_inputs``: the time inputs its backbone needs (MeanFlow: t and t - r); ``draws_noise``: whether its loss
    draws noise and time, so several draws per encoded observation (``samples_per_obs``) mean something.
    """

    build: HeadBuilder
    config_type: type | None
    config_field: str | None
    n_time_inputs: int
    draws_noise: bool


_REGISTRY: dict[str, HeadEntry] = {}


def register_head(name: str, entry: HeadEntry) -> None:
    """Make head ``name`` buildable by :func:`make_head` (each head module registers its own names)."""
    if name in _REGISTRY:
        raise ValueError(f"action head '{name}' is registered twice")
    _REGISTRY[name] = entry


def head_names() -> list[str]:
    """Names of every registered head, in registration order."""
    return list(_REGISTRY)


def head_entry(name: str) -> HeadEntry:
    """The registry entry of ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown action head '{name}'; known: {', '.join(_REGISTRY)}") from None


def n_time_inputs_for(name: str) -> int:
    """How many time inputs the backbone of head ``name`` needs."""
    return head_entry(name).n_time_inputs


def make_head(name: str, backbone: Backbone, cfg: Any, horizon: int | None = None) -> ActionHead:
    """Build head ``name`` on ``backbone`` from its config dataclass (``None`` for a head without settings).

    ``horizon`` (the chunk length H) may be omitted only for a backbone that knows it (``MLPBackbone``).
    """
    entry = head_entry(name)
    if horizon is None:
        horizon = getattr(backbone, "horizon", None)
        if horizon is None:
            raise ValueError(f"make_head('{name}', ...): pass horizon=H; {type(backbone).__name__} works for any H")
    if backbone.n_time_inputs != entry.n_time_inputs:
        raise ValueError(
            f"head '{name}' needs a backbone with n_time_inputs={entry.n_time_inputs}, "
            f"got {backbone.n_time_inputs}; build it with n_time_inputs_for('{name}')"
        )
    if entry.config_type is not None and not isinstance(cfg, entry.config_type):
        raise TypeError(f"head '{name}' needs a {entry.config_type.__name__}, got {type(cfg).__name__}")
    return entry.build(backbone, int(horizon), cfg)
