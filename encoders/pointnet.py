"""Point-cloud encoders: the DP3 PointNet and a max+mean pooling variant.

Math (DP3 "PointNetEncoderXYZ"): per-point MLP, each Linear followed by LayerNorm and ReLU, pooled over points,
then Linear -> ``out_dim`` and LayerNorm. No BatchNorm, no T-Net.

CPU speed (DESIGN section 9: this encoder is ~95 % of a training step). Two exact rewrites, same function and
same gradients:

* With max pooling the last ReLU is applied after the pool: ReLU is monotonic, so
  ``max_p relu(h_p) = relu(max_p h_p)``, and the ReLU then touches (N, C) values instead of (N, P, C).
* The gradient of a max-pool reaches only the points that attain a channel's maximum (the "critical points";
  at most ``min(P, C)`` of them per cloud, ~20-30 % of the points in practice). Every per-point layer before the
  pool acts on one point at a time, so the rows of the other points receive exactly zero gradient. In training
  we therefore run the per-point MLP once without autograd on every point to find the critical points, then
  again with autograd on those points only; the backward pass then costs a fraction of the dense one.
  Exporters and ``torch.compile`` see only the plain dense path.

A pass without autograd runs a few clouds at a time (``CHUNK_POINTS`` points): the per-point activations of a
whole batch (128 clouds x 512 points x 256 channels = 64 MB) do not fit a CPU cache, those of 8 clouds do, so the
memory-bound LayerNorms, ReLUs and bias copies run from cache. Measured here on 128 clouds, 2 threads: 108 ms
against 346 ms for the whole batch at once (same indices).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("max", "maxmean")
CHUNK_POINTS = 4096  # points per chunk of a pass without autograd (8 clouds of 512)


def _tracing(points: torch.Tensor) -> bool:
    """True while an exporter, compiler or torch.func transform traces the module: they get the dense path."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch._C._functorch.is_functorch_wrapped_tensor(points)
    )


class PointNetEncoder(nn.Module):
    """Encode point clouds (N, P, in_channels) -> (N, out_dim).

    Args:
        in_channels: 3 for xyz, 6 for xyz + rgb.
        hidden_dims: widths of the per-point MLP (DP3: 64, 128, 256).
        out_dim: output width after the projection (DP3: 64).
        pooling: "max" (DP3) or "maxmean" (concatenated max and mean over points; the mean sends gradient to
            every point, so it trains at the dense cost, measured ~2-3x a "max" step with sparse_backward).
        sparse_backward: use the critical-point backward described in the module docstring (max pooling only).
    """

    def __init__(
        self,
        in_channels: int = 3,
        hidden_dims: Sequence[int] = (64, 128, 256),
        out_dim: int = 64,
        pooling: str = "max",
        sparse_backward: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling '{pooling}'; known: {', '.join(POOLINGS)}")
        if in_channels <= 0 or out_dim <= 0 or not hidden_dims or any(int(d) <= 0 for d in hidden_dims):
            raise ValueError(
                f"PointNetEncoder needs positive dims, got in_channels={in_channels}, "
                f"hidden_dims={list(hidden_dims)}, out_dim={out_dim}"
            )
        self.in_channels = int(in_channels)
        self.pooling = pooling
        self.sparse_backward = bool(sparse_backward)
        self.output_dim = int(out_dim)

        layers: list[nn.Module] = []
        widths = [self.in_channels, *(int(d) for d in hidden_dims)]
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers += [nn.Linear(d_in, d_out), nn.LayerNorm(d_out)]
            if i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=False))
        # The ReLU after the last LayerNorm is applied in forward (after the max-pool when pooling == "max").
        self.mlp = nn.Sequential(*layers)
        feat_dim = widths[-1]
        pooled_dim = feat_dim * (2 if pooling == "maxmean" else 1)
        self.proj = nn.Sequential(nn.Linear(pooled_dim, self.output_dim), nn.LayerNorm(self.output_dim))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """points: (N, P, in_channels) float -> (N, out_dim)."""
        if points.dim() != 3 or points.shape[-1] != self.in_channels:
            raise ValueError(
                f"PointNetEncoder expects points of shape (N, P, {self.in_channels}), got {tuple(points.shape)}"
            )
        if self.pooling == "max":
            if _tracing(points):
                pooled = self.mlp(points).amax(dim=1)  # (N, C)
            elif self.sparse_backward and self._needs_grad(points):
                pooled = self._max_pool_sparse(points)  # (N, C)
            elif not self._needs_grad(points):
                pooled = self._max_pool_no_grad(points)[0]  # (N, C)
            else:
                pooled = self.mlp(points).amax(dim=1)  # (N, C)
            pooled = F.relu(pooled)
        else:
            feats = F.relu(self.mlp(points))  # (N, P, C)
            pooled = torch.cat([feats.amax(dim=1), feats.mean(dim=1)], dim=-1)  # (N, 2C)
        return self.proj(pooled)

    def _needs_grad(self, points: torch.Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return points.requires_grad or any(p.requires_grad for p in self.mlp.parameters())

    def _max_pool_sparse(self, points: torch.Tensor) -> torch.Tensor:
        """Max-pool over points with autograd only through the critical points. (N, P, Cin) -> (N, C)."""
        n, p, c_in = points.shape
        arg = self._max_pool_no_grad(points)[1]  # (N, C): index of the max point per channel
        rows = arg + torch.arange(n, device=points.device).unsqueeze(1) * p  # (N, C) row in (N*P)
        crit_rows, inverse = torch.unique(rows, return_inverse=True)  # (K,), (N, C)
        crit_feats = self.mlp(points.reshape(n * p, c_in)[crit_rows])  # (K, C) with autograd
        channel = torch.arange(crit_feats.shape[1], device=points.device)
        return crit_feats[inverse, channel]  # (N, C)

    @torch.no_grad()
    def _max_pool_no_grad(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel max over points of the per-point MLP and the index of the point that attains it, without
        autograd, a few clouds at a time (see the module docstring). (N, P, Cin) -> (N, C), (N, C)."""
        n, p, _ = points.shape
        step = max(1, CHUNK_POINTS // max(1, p))
        values, indices = [], []
        for start in range(0, n, step):
            h = points[start : start + step]
            for layer in self.mlp:
                h = torch.relu_(h) if isinstance(layer, nn.ReLU) else layer(h)
            # max_pool1d over the point axis is several times faster than argmax over a middle dimension
            v, i = F.max_pool1d(h.transpose(1, 2), p, return_indices=True)  # (n_chunk, C, 1) each
            values.append(v.squeeze(-1))
            indices.append(i.squeeze(-1))
        return torch.cat(values), torch.cat(indices)
