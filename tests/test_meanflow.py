"""MeanFlow head: the JVP, the target and loss, (t, r) sampling, and one-step / k-step sampling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jvp

from policies.backbones import ConditionalUnet1D, MLPBackbone
from policies.config import MeanFlowConfig
from policies.heads.meanflow import MeanFlowHead

torch.set_num_threads(1)

H, DA, C = 4, 3, 5


def make_head(kind: str = "unet", dtype: torch.dtype = torch.float64, **settings_: object) -> MeanFlowHead:
    torch.manual_seed(0)
    if kind == "unet":
        net = ConditionalUnet1D(DA, C, 2, down_dims=(16, 32, 64), kernel_size=3, n_groups=4, time_embed_dim=16)
    else:
        net = MLPBackbone(DA, H, C, 2, hidden_dim=32, n_layers=2, time_embed_dim=16)
    return MeanFlowHead(net.to(dtype), H, MeanFlowConfig(**settings_)).to(dtype)  # type: ignore[arg-type]


def draws(batch: int, seed: int = 1, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, H, DA, generator=g, dtype=dtype) * 2 - 1
    cond = torch.randn(batch, C, generator=g, dtype=dtype)
    noise = torch.randn(batch, H, DA, generator=g, dtype=dtype)
    a, b = torch.rand(2, batch, generator=g, dtype=dtype)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    r[::2] = t[::2]  # half the batch with r = t, as training does
    return x, cond, noise, t, r


def reference_loss(head: MeanFlowHead, x, cond, noise, t, r, fd_eps: float = 1e-6) -> torch.Tensor:
    """DESIGN section 2 written independently: du/dt by central finite differences along (v, 1, 0)."""
    te = t[:, None, None]
    z = (1 - te) * x + te * noise
    v = noise - x
    with torch.no_grad():
        up = head.backbone(z + fd_eps * v, torch.stack([t + fd_eps, t + fd_eps - r], 1), cond)
        down = head.backbone(z - fd_eps * v, torch.stack([t - fd_eps, t - fd_eps - r], 1), cond)
        dudt = (up - down) / (2 * fd_eps)
        u_tgt = v - (t - r).clamp(0, 1)[:, None, None] * dudt
    d = (head.backbone(z, torch.stack([t, t - r], 1), cond) - u_tgt).pow(2).sum(dim=(1, 2))
    return ((d.detach() + head.cfg.adaptive_c) ** -head.cfg.adaptive_p * d).mean()


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_jvp_matches_finite_differences(kind: str) -> None:
    head = make_head(kind)
    _, cond, _, t, r = draws(6)
    tangent = torch.randn(6, H, DA, dtype=torch.float64)
    z = torch.randn(6, H, DA, dtype=torch.float64)

    def u_fn(z_, t_, r_):
        return head.u(z_, t_, r_, cond)

    _, dudt = jvp(u_fn, (z, t, r), (tangent, torch.ones_like(t), torch.zeros_like(r)))
    eps = 1e-6
    fd = (u_fn(z + eps * tangent, t + eps, r) - u_fn(z - eps * tangent, t - eps, r)) / (2 * eps)
    assert dudt.abs().max() > 1e-3  # a non-trivial derivative
    torch.testing.assert_close(dudt, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("jvp_mode", ["primal", "separate"])
@pytest.mark.parametrize("adaptive_p", [1.0, 0.75, 0.0])
def test_loss_matches_reference_formulation(jvp_mode: str, adaptive_p: float) -> None:
    head = make_head(jvp_mode=jvp_mode, adaptive_p=adaptive_p, adaptive_c=1e-2)
    x, cond, noise, t, r = draws(8)
    loss, metrics = head.loss_from(x, cond, noise, t, r)
    torch.testing.assert_close(loss, reference_loss(head, x, cond, noise, t, r), rtol=1e-6, atol=1e-9)
    assert metrics["frac_r_neq_t"] == 0.5


def test_jvp_modes_give_identical_gradients() -> None:
    grads = {}
    for mode in ("primal", "separate"):
        head = make_head(jvp_mode=mode)
        loss, _ = head.loss_from(*draws(8))
        grads[mode] = torch.autograd.grad(loss, list(head.backbone.parameters()))
    for a, b in zip(grads["primal"], grads["separate"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sum(float(g.abs().sum()) for g in grads["primal"]) > 0


def test_all_r_equal_t_is_flow_matching_with_adaptive_weight() -> None:
    head = make_head(ratio_r_eq_t=1.0)
    x, cond, noise, t, _ = draws(6)
    loss, metrics = head.loss_from(x, cond, noise, t, t.clone())
    z = (1 - t[:, None, None]) * x + t[:, None, None] * noise
    d = (head.backbone(z, torch.stack([t, 0 * t], 1), cond) - (noise - x)).pow(2).sum(dim=(1, 2))
    torch.testing.assert_close(loss, (d / (d.detach() + head.cfg.adaptive_c)).mean())
    assert metrics["frac_r_neq_t"] == 0.0


# ------------------------------------------------------------------ (t, r) sampling
@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 300),
    ratio=st.floats(0.0, 1.0),
    p_mean=st.floats(-2, 2),
    p_std=st.floats(0.1, 2),
    t_dist=st.sampled_from(["logit_normal", "uniform"]),
)
def test_t_r_sampling_invariants(batch: int, ratio: float, p_mean: float, p_std: float, t_dist: str) -> None:
    cfg = MeanFlowConfig(ratio_r_eq_t=ratio, p_mean=p_mean, p_std=p_std, t_dist=t_dist)
    head = MeanFlowHead(MLPBackbone(DA, H, C, 2, hidden_dim=8, n_layers=1, time_embed_dim=4), H, cfg)
    t, r = head.sample_t_r(batch, torch.device("cpu"))
    assert t.shape == r.shape == (batch,)
    assert bool(((r >= 0) & (r <= t) & (t <= 1)).all())
    assert int((t == r).sum()) >= round(ratio * batch)


def test_t_r_distribution_is_logit_normal_order_statistics() -> None:
    torch.manual_seed(0)
    head = make_head(ratio_r_eq_t=0.0, p_mean=-0.4, p_std=1.0)
    t, r = head.sample_t_r(20000, torch.device("cpu"))
    logit_t, logit_r = torch.logit(t), torch.logit(r)
    # max / min of two N(-0.4, 1) draws have means -0.4 +/- 1/sqrt(pi)
    assert logit_t.mean().item() == pytest.approx(-0.4 + 0.5642, abs=0.03)
    assert logit_r.mean().item() == pytest.approx(-0.4 - 0.5642, abs=0.03)


def test_uniform_t_r_are_order_statistics_and_reach_the_one_step_corner() -> None:
    torch.manual_seed(0)
    head = make_head(ratio_r_eq_t=0.0, t_dist="uniform")
    t, r = head.sample_t_r(20000, torch.device("cpu"))
    # max / min of two U(0, 1) draws have means 2/3 and 1/3
    assert t.mean().item() == pytest.approx(2 / 3, abs=0.01)
    assert r.mean().item() == pytest.approx(1 / 3, abs=0.01)
    # P(t - r > 0.8) = 0.2^2 = 4 %; logit-normal(-0.4, 1) gives about 0.1 %
    assert ((t - r) > 0.8).float().mean().item() == pytest.approx(0.04, abs=0.006)
    with pytest.raises(ValueError, match="known: logit_normal, uniform"):
        MeanFlowConfig(t_dist="beta")


@pytest.mark.parametrize(
    "settings_, match",
    [
        ({"adaptive_p": -1.0}, "adaptive_p"),
        ({"adaptive_p": float("nan")}, "adaptive_p"),
        ({"adaptive_p": 1.0, "adaptive_c": 0.0}, "adaptive_c"),
        ({"adaptive_p": 0.5, "adaptive_c": float("nan")}, "adaptive_c"),
        ({"ratio_r_eq_t": 1.5}, "ratio_r_eq_t"),
        ({"p_std": 0.0}, "p_std"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"jvp_mode": "dual"}, "jvp_mode"),
    ],
)
def test_meanflow_config_refuses_values_that_cannot_work(settings_: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MeanFlowConfig(**settings_)
    MeanFlowConfig(adaptive_p=0.0, adaptive_c=0.0)  # plain squared error needs no c


# ------------------------------------------------------------------ sampling
def test_one_step_and_k_step_sampling() -> None:
    head = make_head(kind="mlp", num_inference_steps=1).eval()
    cond = torch.randn(3, C, dtype=torch.float64)
    eps = torch.randn(3, H, DA, dtype=torch.float64)
    ones = torch.ones(3, dtype=torch.float64)
    with torch.no_grad():
        one_step = eps - head.u(eps, ones, 0 * ones, cond)  # a = eps - u(eps, t=1, h=1)
        z = eps
        for t_, r_ in [(1.0, 2 / 3), (2 / 3, 1 / 3), (1 / 3, 0.0)]:
            z = z - (t_ - r_) * head.u(z, t_ * ones, r_ * ones, cond)
    torch.testing.assert_close(head.sample(cond, noise=eps), one_step)
    torch.testing.assert_close(head.sample(cond, num_steps=1, noise=eps), one_step)
    torch.testing.assert_close(head.sample(cond, num_steps=3, noise=eps), z)
    assert head.sample(cond, num_steps=5).shape == (3, H, DA)
    with pytest.raises(ValueError, match="num_steps"):
        head.sample(cond, num_steps=0)


def test_float32_head_under_bf16_autocast_keeps_the_jvp_in_fp32() -> None:
    head = make_head(dtype=torch.float32)
    x, cond, noise, t, r = (d.float() for d in draws(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = head.loss_from(x, cond, noise, t, r)
    assert loss.dtype == torch.float32
    ref, _ = head.loss_from(x, cond, noise, t, r)
    assert torch.equal(loss, ref)
