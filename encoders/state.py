"""Low-dimensional state encoder (DP3): Linear(d -> hidden), ReLU, Linear(hidden -> out)."""

from __future__ import annotations

import torch
from torch import nn


class StateEncoder(nn.Module):
    """(N, in_dim) -> (N, out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int = 64, out_dim: int = 64) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) <= 0:
            raise ValueError(f"StateEncoder needs positive dims, got {in_dim=}, {hidden_dim=}, {out_dim=}")
        self.in_dim = int(in_dim)
        self.output_dim = int(out_dim)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if state.dim() != 2 or state.shape[-1] != self.in_dim:
            raise ValueError(f"StateEncoder expects state of shape (N, {self.in_dim}), got {tuple(state.shape)}")
        return self.net(state)
