"""A conditional multimodal toy problem for action heads, with sample-based quality measures.

Data: for a condition ``c`` in [-1, 1], an action chunk ``(H, 2)`` is a straight ray from near the origin to one
of ``n_modes`` points on a ring of radius ``radius``, picked uniformly; the ring is rotated by ``c * pi / n_modes``
so the modes move with the condition. Gaussian noise of ``noise_std`` is added. A regressor averages the modes
(a chunk near the origin); a good generative head reproduces all of them.

Quality: conditional energy distance (U-statistic, 0 in expectation for identical distributions) averaged over
conditions, and mode statistics (share of samples per mode, coverage, precision).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from policies.heads.base import ActionHead

ACTION_DIM = 2
COND_DIM = 1


@dataclass(frozen=True)
class ToyProblem:
    """Ring of ``n_modes`` ray-shaped chunks whose phase depends on a scalar condition."""

    n_modes: int = 8
    horizon: int = 4
    radius: float = 0.8
    noise_std: float = 0.03

    @property
    def action_dim(self) -> int:
        return ACTION_DIM

    @property
    def cond_dim(self) -> int:
        return COND_DIM

    def mode_centers(self, c: torch.Tensor) -> torch.Tensor:
        """Noise-free chunk of every mode for conditions ``c (B,)`` -> ``(B, n_modes, H, 2)``."""
        k = torch.arange(self.n_modes, dtype=c.dtype, device=c.device)
        angle = 2 * math.pi * k[None, :] / self.n_modes + c[:, None] * math.pi / self.n_modes  # (B, M)
        direction = torch.stack([angle.cos(), angle.sin()], dim=-1)  # (B, M, 2)
        ramp = self.radius * torch.arange(1, self.horizon + 1, dtype=c.dtype, device=c.device) / self.horizon
        return ramp[None, None, :, None] * direction[:, :, None, :]  # (B, M, H, 2)

    def sample_actions(
        self, c: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunks ``(B, H, 2)`` and their mode index ``(B,)`` for conditions ``c (B,)``."""
        modes = torch.randint(0, self.n_modes, (c.shape[0],), generator=generator, device=c.device)
        centers = self.mode_centers(c)[torch.arange(c.shape[0], device=c.device), modes]  # (B, H, 2)
        noise = torch.randn(centers.shape, generator=generator, device=c.device, dtype=c.dtype)
        return centers + self.noise_std * noise, modes

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch: ``cond (B, 1)`` and ``actions (B, H, 2)``."""
        c = 2 * torch.rand(batch, generator=generator) - 1
        actions, _ = self.sample_actions(c, generator)
        return c[:, None], actions

    def mode_stats(self, c: torch.Tensor, samples: torch.Tensor) -> dict[str, float]:
        """Mode statistics of ``samples (N, H, 2)`` drawn for one condition value ``c`` (scalar tensor).

        A sample belongs to its nearest mode; it is *precise* when within half the distance between neighbouring
        modes' end points of that mode's chunk (RMS over the chunk). ``coverage`` is the fraction of modes holding
        at least a quarter of their fair share (1 / n_modes) of the precise samples.
        """
        centers = self.mode_centers(c.reshape(1))[0]  # (M, H, 2)
        rms = (samples[:, None] - centers[None]).pow(2).mean(dim=(2, 3)).sqrt()  # (N, M)
        dist, nearest = rms.min(dim=1)
        spacing_rms = 2 * self.radius * math.sin(math.pi / self.n_modes) * _rms_ramp(self.horizon)
        precise = dist < 0.5 * spacing_rms
        counts = torch.bincount(nearest[precise], minlength=self.n_modes).float()  # (M,)
        share = counts / samples.shape[0]
        return {
            "precision": float(precise.float().mean()),
            "coverage": float((share >= 0.25 / self.n_modes).float().mean()),
            "min_mode_share": float(share.min()),
        }


def _rms_ramp(horizon: int) -> float:
    """RMS over the chunk of a ray's per-step scale (h + 1) / H, turning end-point distances into chunk RMS."""
    ramp = torch.arange(1, horizon + 1, dtype=torch.float64) / horizon
    return float(ramp.pow(2).mean().sqrt()) / math.sqrt(2)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased (U-statistic) energy distance between samples ``x (N, ...)`` and ``y (M, ...)``, flattened.

    ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``; 0 in expectation when both come from the same distribution.
    """
    x, y = x.flatten(1).double(), y.flatten(1).double()
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("energy_distance needs at least 2 samples on each side")
    exact = "donot_use_mm_for_euclid_dist"  # the matmul shortcut loses precision for near-equal points
    xy = torch.cdist(x, y, compute_mode=exact).mean()
    xx = torch.cdist(x, x, compute_mode=exact).sum() / (n * (n - 1))
    yy = torch.cdist(y, y, compute_mode=exact).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)


def evaluate_sampler(
    problem: ToyProblem,
    sampler: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    n_conditions: int = 8,
    n_per_condition: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Average quality of ``sampler(cond (N, 1), generator) -> (N, H, 2)`` over evenly spaced conditions.

    Returns the mean conditional energy distance to fresh data, the mean precision and coverage, and the worst
    coverage over conditions.
    """
    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, list[float]] = {"energy_distance": [], "precision": [], "coverage": []}
    for c_value in torch.linspace(-0.95, 0.95, n_conditions):
        c = torch.full((n_per_condition,), float(c_value))
        data, _ = problem.sample_actions(c, gen)
        samples = sampler(c[:, None], gen)
        stats["energy_distance"].append(energy_distance(samples, data))
        modes = problem.mode_stats(c_value, samples)
        stats["precision"].append(modes["precision"])
        stats["coverage"].append(modes["coverage"])
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["worst_coverage"] = min(stats["coverage"])
    return out


def head_sampler(
    head: ActionHead, num_steps: int | None = None
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Wrap an action head's ``sample`` as a toy sampler."""

    def sample(cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        head.eval()
        return head.sample(cond, num_steps=num_steps, generator=gen)

    return sample


def train_head(
    head: ActionHead,
    problem: ToyProblem,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    time_budget_s: float | None = None,
) -> dict[str, float]:
    """Train ``head`` on fresh toy batches with AdamW and a cosine learning rate; stops early at ``time_budget_s``.

    Returns the number of steps done, wall time and the mean of the last 50 values of each metric.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.05)
    head.train()
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    done = 0
    for _ in range(steps):
        cond, actions = problem.sample(batch_size, gen)
        loss, metrics = head.compute_loss(actions, cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(metrics)
        done += 1
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            break
    tail = history[-50:]
    summary = {k: sum(m[k] for m in tail) / len(tail) for k in tail[0]}
    summary.update(steps=float(done), seconds=time.perf_counter() - start)
    return summary
