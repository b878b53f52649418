"""Networks that map a noisy action chunk, K time inputs and a global condition to a chunk of the same shape.

Both backbones share one interface, ``forward(x (B, H, Da), times (B, K), cond (B, C)) -> (B, H, Da)``, so every
action head can run on either. Normalization is GroupNorm/LayerNorm only: the MeanFlow target needs forward-mode
AD (``torch.func.jvp``), which BatchNorm in train mode does not support.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn


class Backbone(nn.Module):
    """What a head needs of its network: ``forward(x (B, H, Da), times (B, K), cond (B, C)) -> (B, H, Da)`` and the
    sizes it was built for."""

    input_dim: int  # Da
    global_cond_dim: int  # C
    n_time_inputs: int  # K


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of ``scale * t``: half sines, half cosines over log-spaced frequencies in [1e-4, 1]."""

    freqs: torch.Tensor

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"time embedding dim must be an even number >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = float(scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = (self.scale * t)[:, None] * self.freqs[None, :]  # (B, half)
        return torch.cat([args.sin(), args.cos()], dim=-1)  # (B, dim)


class TimeEmbedding(nn.Module):
    """K time inputs, each through its own sinusoidal embedding + MLP; the K embeddings are summed."""

    def __init__(self, n_time_inputs: int, dim: int, scale: float) -> None:
        super().__init__()
        if n_time_inputs < 1:
            raise ValueError(f"n_time_inputs must be >= 1, got {n_time_inputs}")
        self.n_time_inputs = n_time_inputs
        self.embeds = nn.ModuleList(
            nn.Sequential(SinusoidalEmbedding(dim, scale), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))
            for _ in range(n_time_inputs)
        )

    def forward(self, times: torch.Tensor) -> torch.Tensor:
        if times.dim() != 2 or times.shape[1] != self.n_time_inputs:
            raise ValueError(f"times must have shape (B, {self.n_time_inputs}), got {tuple(times.shape)}")
        out = self.embeds[0](times[:, 0])
        for k in range(1, self.n_time_inputs):
            out = out + self.embeds[k](times[:, k])
        return out  # (B, dim)


def _check_inputs(x: torch.Tensor, times: torch.Tensor, cond: torch.Tensor, input_dim: int, cond_dim: int) -> None:
    if x.dim() != 3 or x.shape[-1] != input_dim:
        raise ValueError(f"x must have shape (B, H, {input_dim}), got {tuple(x.shape)}")
    if cond.dim() != 2 or cond.shape != (x.shape[0], cond_dim):
        raise ValueError(f"cond must have shape ({x.shape[0]}, {cond_dim}), got {tuple(cond.shape)}")
    if times.shape[0] != x.shape[0]:
        raise ValueError(f"times has batch {times.shape[0]} but x has batch {x.shape[0]}")


# ---------------------------------------------------------------------------------------------- 1-D U-Net
class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length preserving."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        if out_channels % n_groups:
            raise ValueError(f"channels {out_channels} not divisible by n_groups {n_groups}")
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM (per-channel scale and bias from the condition) between them, plus a residual."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.block2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.residual = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.block1(x)  # (B, C_out, L)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)  # (B, C_out, 1) each
        out = self.block2(scale * out + bias)
        return out + self.residual(x)


class ConditionalUnet1D(Backbone):
    """1-D convolutional U-Net over the horizon axis with FiLM conditioning (Diffusion Policy / DP3 layout).

    Every level but the last halves the length (stride-2 conv, ``ceil(L / 2)``) and every up level doubles it; the
    up path crops each upsampled map to the length of the skip it is joined with (and the output to H), so any
    horizon >= 1 works (e.g. 4 with three levels: 4 -> 2 -> 1 -> 2 -> 4; 5: 5 -> 3 -> 2 -> 4|3 -> 6|5).
    The condition fed to every FiLM layer is ``[sum of time embeddings, global cond]``.
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        n_time_inputs: int = 1,
        down_dims: Sequence[int] = (128, 256, 512),
        kernel_size: int = 5,
        n_groups: int = 8,
        time_embed_dim: int = 128,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not down_dims:
            raise ValueError("down_dims must not be empty")
        self.input_dim = input_dim
        self.global_cond_dim = global_cond_dim
        self.n_time_inputs = n_time_inputs
        self.time_embed = TimeEmbedding(n_time_inputs, time_embed_dim, time_scale)
        cond_dim = time_embed_dim + global_cond_dim
        dims = [input_dim, *down_dims]
        pairs = list(itertools.pairwise(dims))

        def block(cin: int, cout: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(cin, cout, cond_dim, kernel_size, n_groups)

        self.down_modules = nn.ModuleList()
        for i, (cin, cout) in enumerate(pairs):
            is_last = i == len(pairs) - 1
            down = nn.Conv1d(cout, cout, 3, stride=2, padding=1) if not is_last else nn.Identity()
            self.down_modules.append(nn.ModuleList([block(cin, cout), block(cout, cout), down]))
        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.up_modules = nn.ModuleList()
        for cin, cout in reversed(pairs[1:]):
            up = nn.ConvTranspose1d(cin, cin, 4, stride=2, padding=1)
            self.up_modules.append(nn.ModuleList([block(2 * cout, cin), block(cin, cin), up]))
        start = down_dims[0]
        self.final_conv = nn.Sequential(
            Conv1dBlock(start, start, kernel_size, n_groups), nn.Conv1d(start, input_dim, 1)
        )

    def forward(self, x: torch.Tensor, times: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x (B, H, Da)``, ``times (B, K)``, ``cond (B, C)`` -> ``(B, H, Da)``."""
        _check_inputs(x, times, cond, self.input_dim, self.global_cond_dim)
        film_cond = torch.cat([self.time_embed(times), cond], dim=-1)  # (B, E + C)
        h = x.transpose(1, 2)  # (B, Da, H)
        skips = []
        for level in self.down_modules:
            res1, res2, down = cast(nn.ModuleList, level)
            h = res2(res1(h, film_cond), film_cond)
            skips.append(h)
            h = down(h)
        for mid in self.mid_modules:
            h = mid(h, film_cond)
        for level in self.up_modules:
            res1, res2, up = cast(nn.ModuleList, level)
            skip = skips.pop()
            h = torch.cat([h[..., : skip.shape[-1]], skip], dim=1)  # upsampled length is >= the skip's
            h = res2(res1(h, film_cond), film_cond)
            h = up(h)
        h = self.final_conv(h[..., : x.shape[1]])
        return h.transpose(1, 2)  # (B, H, Da)


# ---------------------------------------------------------------------------------------------- MLP
class FiLMResidualBlock(nn.Module):
    """LayerNorm -> FiLM -> Linear -> Mish -> Linear, added to the input."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * dim))
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.Mish(), nn.Linear(dim, dim))

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).chunk(2, dim=-1)  # (B, D) each
        return h + self.mlp(self.norm(h) * (1 + scale) + bias)


class MLPBackbone(Backbone):
    """Residual MLP over the flattened chunk, FiLM-conditioned on ``[sum of time embeddings, global cond]``."""

    def __init__(
        self,
        input_dim: int,
        horizon: int,
        global_cond_dim: int,
        n_time_inputs: int = 1,
        hidden_dim: int = 512,
        n_layers: int = 4,
        time_embed_dim: int = 128,
        time_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if n_layers < 1 or hidden_dim < 1:
            raise ValueError("MLPBackbone needs n_layers >= 1 and hidden_dim >= 1")
        self.input_dim = input_dim
        self.horizon = horizon
        self.global_cond_dim = global_cond_dim
        self.n_time_inputs = n_time_inputs
        self.time_embed = TimeEmbedding(n_time_inputs, time_embed_dim, time_scale)
        cond_dim = time_embed_dim + global_cond_dim
        self.inp = nn.Linear(horizon * input_dim, hidden_dim)
        self.blocks = nn.ModuleList(FiLMResidualBlock(hidden_dim, cond_dim) for _ in range(n_layers))
        self.out = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, horizon * input_dim))

    def forward(self, x: torch.Tensor, times: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x (B, H, Da)``, ``times (B, K)``, ``cond (B, C)`` -> ``(B, H, Da)``."""
        _check_inputs(x, times, cond, self.input_dim, self.global_cond_dim)
        if x.shape[1] != self.horizon:
            raise ValueError(f"MLPBackbone was built for horizon {self.horizon}, got x of shape {tuple(x.shape)}")
        film_cond = torch.cat([self.time_embed(times), cond], dim=-1)  # (B, E + C)
        h = self.inp(x.flatten(1))  # (B, D)
        for block in self.blocks:
            h = block(h, film_cond)
        return self.out(h).view_as(x)  # (B, H, Da)
