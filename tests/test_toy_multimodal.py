"""The conditional multimodal toy problem: its quality measures, and one-step MeanFlow against the alternatives."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mfp.bench.toy import (
    ToyProblem,
    energy_distance,
    evaluate_sampler,
    head_sampler,
    train_head,
)
from policies.backbones import MLPBackbone
from policies.config import FlowConfig, MeanFlowConfig
from policies.heads import make_head, n_time_inputs_for

torch.set_num_threads(1)
PROBLEM = ToyProblem()


def data_sampler(c: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return PROBLEM.sample_actions(c[:, 0], g)[0]


def dropped_mode_sampler(c: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The exact data distribution with the last of the eight modes missing."""
    modes = torch.randint(0, PROBLEM.n_modes - 1, (c.shape[0],), generator=g)
    centers = PROBLEM.mode_centers(c[:, 0])[torch.arange(c.shape[0]), modes]
    return centers + PROBLEM.noise_std * torch.randn(centers.shape, generator=g)


def mean_sampler(c: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What MSE regression converges to: the average of the modes."""
    return PROBLEM.mode_centers(c[:, 0]).mean(dim=1)


def test_measures_separate_data_from_mode_dropping_and_averaging() -> None:
    data = evaluate_sampler(PROBLEM, data_sampler, n_conditions=4, n_per_condition=256)
    dropped = evaluate_sampler(PROBLEM, dropped_mode_sampler, n_conditions=4, n_per_condition=256)
    mean = evaluate_sampler(PROBLEM, mean_sampler, n_conditions=4, n_per_condition=256)
    assert abs(data["energy_distance"]) < 0.01 and data["precision"] > 0.99 and data["worst_coverage"] == 1.0
    assert dropped["energy_distance"] > 0.012 and dropped["coverage"] == pytest.approx(7 / 8)
    assert mean["energy_distance"] > 0.5 and mean["precision"] == 0.0 and mean["coverage"] == 0.0


def test_modes_rotate_with_the_condition() -> None:
    a, b = PROBLEM.mode_centers(torch.tensor([-1.0, 1.0]))
    assert a.shape == (PROBLEM.n_modes, PROBLEM.horizon, 2)
    # c = 1 is c = -1 rotated by two half-steps: mode k at c = 1 is mode k + 1 at c = -1
    torch.testing.assert_close(b, torch.roll(a, shifts=-1, dims=0), atol=1e-6, rtol=0)
    assert not torch.allclose(a, b)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 40), m=st.integers(2, 40), scale=st.floats(0.1, 10.0), seed=st.integers(0, 10_000))
def test_energy_distance_invariants(n: int, m: int, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.rand(k, 3, generator=g, dtype=torch.float64) for k in (n, m))  # inside the unit cube
    d = energy_distance(x, y)
    assert energy_distance(y, x) == pytest.approx(d, abs=1e-9)
    assert energy_distance(x + 3.0, y + 3.0) == pytest.approx(d, abs=1e-9)  # translation invariant
    assert energy_distance(scale * x, scale * y) == pytest.approx(scale * d, rel=1e-9, abs=1e-12)  # 1-homogeneous
    # a shift beyond twice the cube's diagonal makes every cross distance exceed every within-set one
    assert energy_distance(x, y + 4.0) > 2 * (4.0 - 3**0.5) - 2 * 3**0.5


@pytest.mark.slow
def test_one_step_meanflow_beats_one_step_flow_and_regression() -> None:
    """About 600 training steps each on an MLP backbone (tens of seconds on one idle core each)."""

    def trained(name: str, cfg, steps: int):
        torch.manual_seed(0)
        net = MLPBackbone(PROBLEM.action_dim, PROBLEM.horizon, PROBLEM.cond_dim, n_time_inputs_for(name), 256, 3, 128)
        head = make_head(name, net, cfg, PROBLEM.horizon)
        train_head(head, PROBLEM, steps, batch_size=256, lr=2e-3)
        return evaluate_sampler(PROBLEM, head_sampler(head, 1), n_conditions=8, n_per_condition=512, seed=3)

    meanflow = trained("meanflow", MeanFlowConfig(), 600)
    flow = trained("flow", FlowConfig(), 600)
    regression = trained("regression", None, 300)
    dropped = evaluate_sampler(PROBLEM, dropped_mode_sampler, n_conditions=8, n_per_condition=512, seed=3)

    # Threshold: one-step MeanFlow must be closer to the data than an exact sampler of the data that only misses
    # one of the eight modes (energy distance ~0.019); the U-statistic's own noise at 512 samples is ~0.003.
    assert meanflow["energy_distance"] < dropped["energy_distance"], (meanflow, dropped)
    assert meanflow["worst_coverage"] == 1.0 and meanflow["precision"] > 0.8, meanflow
    # One-step flow matching and regression land between the modes (their mean): far worse.
    assert meanflow["energy_distance"] < 0.2 * flow["energy_distance"], (meanflow, flow)
    assert meanflow["energy_distance"] < 0.2 * regression["energy_distance"], (meanflow, regression)
    assert regression["coverage"] == 0.0
