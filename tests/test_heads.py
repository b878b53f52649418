"""Every registered action head on both backbones: loss, gradients, sample shapes, determinism, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from policies.backbones import ConditionalUnet1D, MLPBackbone
from policies.config import DiffusionConfig, FlowConfig, MeanFlowConfig
from policies.heads import head_names, make_head, n_time_inputs_for
from policies.heads.diffusion import DiffusionHead, make_betas

HEAD_NAMES = head_names()

torch.set_num_threads(1)

ACTION_DIM, COND_DIM = 3, 6
CONFIGS = {
    "meanflow": MeanFlowConfig(),
    "flow": FlowConfig(num_inference_steps=3),
    "ddpm": DiffusionConfig(),
    "ddim": DiffusionConfig(num_inference_steps=4, prediction_type="epsilon"),
    "regression": None,
}


def build_backbone(kind: str, horizon: int, n_time_inputs: int) -> nn.Module:
    if kind == "unet":
        return ConditionalUnet1D(
            ACTION_DIM, COND_DIM, n_time_inputs, down_dims=(16, 32, 64), kernel_size=3, n_groups=4, time_embed_dim=16
        )
    return MLPBackbone(ACTION_DIM, horizon, COND_DIM, n_time_inputs, hidden_dim=32, n_layers=2, time_embed_dim=16)


def build_head(name: str, kind: str, horizon: int):
    torch.manual_seed(0)
    return make_head(name, build_backbone(kind, horizon, n_time_inputs_for(name)), CONFIGS[name], horizon)


@pytest.mark.parametrize("horizon", [4, 16])
@pytest.mark.parametrize("kind", ["unet", "mlp"])
@pytest.mark.parametrize("name", HEAD_NAMES)
def test_head_trains_and_samples(name: str, kind: str, horizon: int) -> None:
    head = build_head(name, kind, horizon)
    actions = torch.rand(8, horizon, ACTION_DIM) * 2 - 1
    cond = torch.randn(8, COND_DIM)
    loss, metrics = head.compute_loss(actions, cond)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(math.isfinite(v) for v in metrics.values()) and "loss" in metrics
    loss.backward()
    grads = [p.grad for p in head.backbone.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(torch.isfinite(g).all() for g in grads)

    head.eval()
    noise = torch.randn(5, horizon, ACTION_DIM)
    out = head.sample(cond[:5], noise=noise, generator=torch.Generator().manual_seed(1))
    assert out.shape == (5, horizon, ACTION_DIM) and torch.isfinite(out).all()
    again = head.sample(cond[:5], noise=noise, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    drawn = head.sample(cond[:2], num_steps=2)
    assert drawn.shape == (2, horizon, ACTION_DIM)


@pytest.mark.parametrize("name", ["meanflow", "flow", "ddim"])
def test_deterministic_heads_depend_on_noise_and_cond(name: str) -> None:
    head = build_head(name, "mlp", 4).eval()
    cond = torch.randn(3, COND_DIM)
    a = head.sample(cond, noise=torch.zeros(3, 4, ACTION_DIM))
    b = head.sample(cond, noise=torch.ones(3, 4, ACTION_DIM))
    c = head.sample(cond + 1.0, noise=torch.zeros(3, 4, ACTION_DIM))
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_flow_sampling_is_euler_on_the_velocity() -> None:
    head = build_head("flow", "mlp", 4).eval()
    cond, eps = torch.randn(2, COND_DIM), torch.randn(2, 4, ACTION_DIM)
    with torch.no_grad():
        z = eps
        for t in (1.0, 0.5):
            z = z - 0.5 * head.backbone(z, torch.full((2, 1), t), cond)
        one = eps - head.backbone(eps, torch.ones(2, 1), cond)
    torch.testing.assert_close(head.sample(cond, num_steps=2, noise=eps), z)
    torch.testing.assert_close(head.sample(cond, num_steps=1, noise=eps), one)


def test_regression_ignores_noise_and_fits_the_mean() -> None:
    head = build_head("regression", "mlp", 4)
    cond = torch.randn(4, COND_DIM)
    a = head.sample(cond, noise=torch.randn(4, 4, ACTION_DIM))
    assert torch.equal(a, head.sample(cond))
    # two equally likely targets per condition: MSE training converges to their average
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    target = torch.rand(1, 4, ACTION_DIM).expand(8, -1, -1)
    for _ in range(150):
        actions = torch.where(torch.arange(8)[:, None, None] % 2 == 0, target, -target)
        loss, _ = head.compute_loss(actions, torch.zeros(8, COND_DIM))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert head.sample(torch.zeros(1, COND_DIM)).abs().max() < 0.05


def test_registry_errors_name_what_is_known() -> None:
    with pytest.raises(ValueError, match="known: .*meanflow.*regression"):
        make_head("meanflw", build_backbone("mlp", 4, 2), MeanFlowConfig(), 4)
    with pytest.raises(ValueError, match="n_time_inputs=2"):
        make_head("meanflow", build_backbone("mlp", 4, 1), MeanFlowConfig(), 4)
    with pytest.raises(TypeError, match="FlowConfig"):
        make_head("flow", build_backbone("mlp", 4, 1), MeanFlowConfig(), 4)
    assert {n: n_time_inputs_for(n) for n in HEAD_NAMES} == {
        "meanflow": 2,
        "flow": 1,
        "ddpm": 1,
        "ddim": 1,
        "regression": 1,
    }


def test_shape_errors_name_the_tensor() -> None:
    head = build_head("flow", "unet", 4)
    with pytest.raises(ValueError, match=r"actions must have shape \(B, 4, 3\)"):
        head.compute_loss(torch.zeros(2, 5, ACTION_DIM), torch.zeros(2, COND_DIM))
    with pytest.raises(ValueError, match=r"cond must have shape \(B, 6\)"):
        head.sample(torch.zeros(2, COND_DIM + 1))
    with pytest.raises(ValueError, match="noise must have shape"):
        head.sample(torch.zeros(2, COND_DIM), noise=torch.zeros(2, 4, 2))


@pytest.mark.parametrize("horizon", [1, 3, 5, 7, 16])
def test_unet_handles_odd_horizons(horizon: int) -> None:
    net = build_backbone("unet", horizon, 2)
    out = net(torch.randn(2, horizon, ACTION_DIM), torch.rand(2, 2), torch.randn(2, COND_DIM))
    assert out.shape == (2, horizon, ACTION_DIM)


def test_backbone_time_inputs_each_matter() -> None:
    torch.manual_seed(0)
    for net in (build_backbone("unet", 4, 2), build_backbone("mlp", 4, 2)):
        x, c = torch.randn(2, 4, ACTION_DIM), torch.randn(2, COND_DIM)
        base = net(x, torch.tensor([[0.5, 0.2]] * 2), c)
        assert not torch.allclose(base, net(x, torch.tensor([[0.5, 0.3]] * 2), c))
        assert not torch.allclose(base, net(x, torch.tensor([[0.6, 0.2]] * 2), c))


def test_cosine_betas_match_closed_form() -> None:
    betas = make_betas(100, "squaredcos_cap_v2")

    def f(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    alphas_cumprod = torch.cumprod(1 - betas, 0)
    assert alphas_cumprod[49].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-9)
    assert betas.max().item() <= 0.999 and bool((betas > 0).all())


class GaussianDenoiser(nn.Module):
    """Bayes-optimal clean-sample predictor for data ~ N(0, s^2 I):
    E[x0 | x_t] = sqrt(ab) s^2 / (ab s^2 + 1 - ab) x_t."""

    n_time_inputs = 1

    def __init__(self, alphas_cumprod: torch.Tensor, std: float, horizon: int) -> None:
        super().__init__()
        self.input_dim, self.global_cond_dim, self.std, self.T = ACTION_DIM, COND_DIM, std, len(alphas_cumprod)
        self.register_buffer("acp", alphas_cumprod)

    def forward(self, x: torch.Tensor, times: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        ab = self.acp[(times[:, 0] * self.T).round().long()][:, None, None]
        return ab.sqrt() * self.std**2 / (ab * self.std**2 + 1 - ab) * x


def expected_std(sampler: str, steps: int, acp: list[float], std: float) -> float:
    """Output std of the sampler with the optimal denoiser, by the scalar variance recursion of its update
    ``x <- c_x0 * E[x0 | x] + c_x * x + sigma * z`` (written from the DDPM / DDIM update equations)."""
    var, stride = 1.0, 100 // steps
    for t in reversed(range(0, 100, stride)):
        ab, ab_prev = acp[t], (acp[t - stride] if t >= stride else 1.0)
        k = math.sqrt(ab) * std**2 / (ab * std**2 + 1 - ab)  # E[x0 | x_t] = k x_t
        if sampler == "ddim":
            gain = math.sqrt(ab_prev) * k + math.sqrt(1 - ab_prev) * (1 - math.sqrt(ab) * k) / math.sqrt(1 - ab)
            var = gain**2 * var
        else:
            beta = 1 - ab / ab_prev
            gain = math.sqrt(ab_prev) * beta / (1 - ab) * k + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
            var = gain**2 * var + ((1 - ab_prev) / (1 - ab) * beta if t > 0 else 0.0)
    return math.sqrt(var)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 100), ("ddpm", 20), ("ddim", 10)])
def test_samplers_match_the_variance_recursion_with_the_optimal_denoiser(sampler: str, steps: int) -> None:
    """With the exact denoiser of N(0, 0.3^2) data the sampled std must match the update equations' prediction
    (DDPM's fixed_small variance lands slightly below 0.3, DP3's 10-step DDIM from t = 90 at ~0.25)."""
    acp = torch.cumprod(1 - make_betas(100, "squaredcos_cap_v2"), 0)
    head = DiffusionHead(GaussianDenoiser(acp.float(), 0.3, 4), 4, DiffusionConfig(clip_sample=False), sampler=sampler)
    out = head.sample(torch.zeros(4000, COND_DIM), num_steps=steps, generator=torch.Generator().manual_seed(0))
    expected = expected_std(sampler, steps, acp.tolist(), 0.3)
    assert 0.2 < expected < 0.31
    assert out.std().item() == pytest.approx(expected, rel=0.015)
    assert abs(out.mean().item()) < 0.01
