"""Collapse diagnostics of an embedding batch (B, D): cheap, no grad, plain floats for logging.

A collapsed representation (all observations mapped near one point) shows a mean pairwise cosine near 1 and an
effective rank near 1. Both are uncentred, so a large offset shared by the whole batch reads the same way even when
the spread around it is wide; the centred effective rank tells the two apart (an offset is only a bias to the
layers that read the embedding, a spread in few directions is a real loss of information).
"""

from __future__ import annotations

import torch


def _as_matrix(z: torch.Tensor) -> torch.Tensor:
    if z.dim() < 2 or z.shape[0] < 2:
        raise ValueError(f"collapse diagnostics need a batch (B >= 2, ...), got shape {tuple(z.shape)}")
    return z.detach().reshape(z.shape[0], -1).double()  # (B, D)


@torch.no_grad()
def mean_pairwise_cosine(z: torch.Tensor) -> float:
    """Mean cos(z_i, z_j) over pairs i != j. z: (B, ...)."""
    z = torch.nn.functional.normalize(_as_matrix(z), dim=1, eps=1e-12)
    b = z.shape[0]
    sim = z @ z.T  # (B, B)
    return float((sim.sum() - torch.diagonal(sim).sum()) / (b * (b - 1)))


@torch.no_grad()
def mean_pairwise_distance(z: torch.Tensor) -> float:
    """Mean ||z_i - z_j|| over pairs i != j. z: (B, ...)."""
    z = _as_matrix(z)
    b = z.shape[0]
    return float(torch.pdist(z).sum() * 2 / (b * (b - 1)))


@torch.no_grad()
def effective_rank(z: torch.Tensor, center: bool = False) -> float:
    """exp(entropy of the normalized singular values) of the (B, D) batch (Roy & Vetterli 2007; RankMe).

    Uncentred by default, so a batch near one point has rank ~1 even though its tiny spread may be isotropic;
    ``center=True`` measures how many directions the spread itself uses. An all-zero batch gives 0.
    """
    z = _as_matrix(z)
    if center:
        z = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_metrics(z: torch.Tensor, prefix: str = "embed") -> dict[str, float]:
    """{prefix_mean_cos, prefix_erank, prefix_erank_centered, prefix_mean_dist} of an embedding batch, for the
    training log."""
    return {
        f"{prefix}_mean_cos": mean_pairwise_cosine(z),
        f"{prefix}_erank": effective_rank(z),
        f"{prefix}_erank_centered": effective_rank(z, center=True),
        f"{prefix}_mean_dist": mean_pairwise_distance(z),
    }
