"""Shared test set-up: headless rendering, offline wandb, and small real objects built through public APIs."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see mfp/cli.py

import numpy as np
import pytest
import torch

from core.spec import ShapeMeta


@pytest.fixture
def small_shape_meta() -> ShapeMeta:
    return ShapeMeta.from_dict(
        {
            "obs": {
                "point_cloud": {"type": "point_cloud", "shape": [64, 3]},
                "agent_pos": {"type": "low_dim", "shape": [4]},
            },
            "action": {"shape": [4]},
        }
    )


def random_stats(shape_meta: ShapeMeta, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    stats = {}
    for key, spec in shape_meta.obs.items():
        if spec.type == "rgb":
            continue
        lo = rng.uniform(-2, 0, size=spec.shape[-1]).astype(np.float32)
        stats[key] = {"min": lo, "max": lo + rng.uniform(0.5, 2, size=spec.shape[-1]).astype(np.float32)}
    lo = rng.uniform(-1, 0, size=shape_meta.action_dim).astype(np.float32)
    stats["action"] = {"min": lo, "max": lo + 1.0}
    return stats


def random_batch(shape_meta: ShapeMeta, batch: int, n_obs_steps: int, horizon: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    obs = {k: torch.rand(batch, n_obs_steps, *s.shape, generator=g) for k, s in shape_meta.obs.items()}
    return {"obs": obs, "action": torch.rand(batch, horizon, shape_meta.action_dim, generator=g) - 0.5}


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield
