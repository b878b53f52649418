"""MeanFlow head: the JVP, the target and loss, guidance baked into training, (t, r) sampling and sampling."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jvp

from policies.backbones import ConditionalUnet1D, MLPBackbone
from policies.config import MeanFlowConfig
from policies.meanflow import MeanFlowHead

torch.set_num_threads(1)

H, DA, C = 4, 3, 5


def make_head(kind: str = "unet", dtype: torch.dtype = torch.float64, **kwargs) -> MeanFlowHead:
    torch.manual_seed(0)
    if kind == "unet":
        net = ConditionalUnet1D(DA, C, 2, down_dims=(16, 32, 64), kernel_size=3, n_groups=4, time_embed_dim=16)
    else:
        net = MLPBackbone(DA, H, C, 2, hidden_dim=32, n_layers=2, time_embed_dim=16)
    return MeanFlowHead(net.to(dtype), H, **kwargs).to(dtype)


def draws(batch: int, seed: int = 1, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, H, DA, generator=g, dtype=dtype) * 2 - 1
    cond = torch.randn(batch, C, generator=g, dtype=dtype)
    noise = torch.randn(batch, H, DA, generator=g, dtype=dtype)
    a, b = torch.rand(2, batch, generator=g, dtype=dtype)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    r[::2] = t[::2]  # half the batch with r = t, as training does
    return x, cond, noise, t, r


def reference_loss(head: MeanFlowHead, x, cond, noise, t, r, v_tilde=None, fd_eps: float = 1e-6) -> torch.Tensor:
    """DESIGN section 2 written independently: du/dt by central finite differences along (v~, 1, 0)."""
    te = t[:, None, None]
    z = (1 - te) * x + te * noise
    v = noise - x if v_tilde is None else v_tilde
    with torch.no_grad():
        up = head.backbone(z + fd_eps * v, torch.stack([t + fd_eps, t + fd_eps - r], 1), cond)
        down = head.backbone(z - fd_eps * v, torch.stack([t - fd_eps, t - fd_eps - r], 1), cond)
        dudt = (up - down) / (2 * fd_eps)
        u_tgt = v - (t - r).clamp(0, 1)[:, None, None] * dudt
    d = (head.backbone(z, torch.stack([t, t - r], 1), cond) - u_tgt).pow(2).sum(dim=(1, 2))
    return ((d.detach() + head.adaptive_c) ** -head.adaptive_p * d).mean()


@pytest.mark.parametrize("prediction", ["u", "x"])
@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_jvp_matches_finite_differences(kind: str, prediction: str) -> None:
    head = make_head(kind, prediction=prediction)
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
@pytest.mark.parametrize("adaptive_p", [1.0, 0.75])
def test_loss_matches_reference_formulation(jvp_mode: str, adaptive_p: float) -> None:
    head = make_head(jvp_mode=jvp_mode, adaptive_p=adaptive_p, adaptive_c=1e-2)
    x, cond, noise, t, r = draws(8)
    loss, metrics = head.loss_from(x, cond, noise, t, r, torch.zeros(8, dtype=torch.bool))
    torch.testing.assert_close(loss, reference_loss(head, x, cond, noise, t, r), rtol=1e-6, atol=1e-9)
    assert metrics["frac_r_neq_t"] == 0.5


def test_jvp_modes_give_identical_gradients() -> None:
    grads = {}
    for mode in ("primal", "separate"):
        head = make_head(jvp_mode=mode)
        loss, _ = head.loss_from(*draws(8), torch.zeros(8, dtype=torch.bool))
        grads[mode] = torch.autograd.grad(loss, list(head.backbone.parameters()))
    for a, b in zip(grads["primal"], grads["separate"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sum(float(g.abs().sum()) for g in grads["primal"]) > 0


def imf_reference_loss(head: MeanFlowHead, x, cond, noise, t, r, fd_eps: float = 1e-6) -> torch.Tensor:
    """Improved MeanFlow's v-loss written independently: V = u(z, r, t) + (t - r) sg(du/dt), du/dt by central
    finite differences along (v_pred, 1, 0) with v_pred = u(z, t, t), regressed on eps - x."""
    te = t[:, None, None]
    z = (1 - te) * x + te * noise

    def u(z_, t_, r_):
        return head.backbone(z_, torch.stack([t_, t_ - r_], 1), cond)

    with torch.no_grad():
        v_pred = u(z, t, t)
        dudt = (u(z + fd_eps * v_pred, t + fd_eps, r) - u(z - fd_eps * v_pred, t - fd_eps, r)) / (2 * fd_eps)
    big_v = u(z, t, r) + (t - r).clamp(0, 1)[:, None, None] * dudt
    d = (big_v - (noise - x)).pow(2).sum(dim=(1, 2))
    return ((d.detach() + head.adaptive_c) ** -head.adaptive_p * d).mean()


@pytest.mark.parametrize("jvp_mode", ["primal", "separate"])
@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_predicted_tangent_is_the_improved_meanflow_v_loss(kind: str, jvp_mode: str) -> None:
    head = make_head(kind, jvp_tangent="predicted", jvp_mode=jvp_mode, adaptive_p=1.0, adaptive_c=1e-2)
    x, cond, noise, t, r = draws(8)
    drop = torch.zeros(8, dtype=torch.bool)
    loss, _ = head.loss_from(x, cond, noise, t, r, drop)
    reference = imf_reference_loss(head, x, cond, noise, t, r)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-9)
    grads = torch.autograd.grad(loss, list(head.backbone.parameters()))
    ref_grads = torch.autograd.grad(reference, list(head.backbone.parameters()))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    # It is a different objective from MeanFlow's: the same draws give another loss.
    conditional, _ = make_head(kind, adaptive_p=1.0, adaptive_c=1e-2).loss_from(x, cond, noise, t, r, drop)
    assert abs(float(conditional.detach()) - float(loss.detach())) > 1e-6
    # With every r = t there is no du/dt, and the two tangents are the same flow-matching loss.
    same = [
        make_head(kind, jvp_tangent=k).loss_from(x, cond, noise, t, t.clone(), drop)[0]
        for k in ("conditional", "predicted")
    ]
    torch.testing.assert_close(same[0], same[1])


def test_bad_jvp_tangent_is_refused() -> None:
    from policies.config import MeanFlowConfig

    with pytest.raises(ValueError, match="jvp_tangent"):
        MeanFlowConfig(jvp_tangent="noise")
    with pytest.raises(ValueError, match="jvp_tangent"):
        make_head(jvp_tangent="noise")


def test_all_r_equal_t_is_flow_matching_with_adaptive_weight() -> None:
    head = make_head(ratio_r_eq_t=1.0)
    x, cond, noise, t, _ = draws(6)
    loss, metrics = head.loss_from(x, cond, noise, t, t.clone(), torch.zeros(6, dtype=torch.bool))
    z = (1 - t[:, None, None]) * x + t[:, None, None] * noise
    d = (head.backbone(z, torch.stack([t, 0 * t], 1), cond) - (noise - x)).pow(2).sum(dim=(1, 2))
    torch.testing.assert_close(loss, (d / (d.detach() + head.adaptive_c)).mean())
    assert metrics["frac_r_neq_t"] == 0.0


# ------------------------------------------------------------------ guidance
def test_omega_one_kappa_zero_is_exactly_unguided() -> None:
    head = make_head(cfg_omega=1.0, cfg_kappa=0.0, cond_drop_prob=0.1)
    x, cond, noise, t, r = draws(8)
    keep = torch.zeros(8, dtype=torch.bool)
    te = t[:, None, None]
    z, v = (1 - te) * x + te * noise, noise - x
    # the guided formula itself reduces to v bit for bit, and the head does not evaluate it at all
    assert torch.equal(head.guided_velocity(z, t, v, cond, keep), v)
    assert not head.guided
    loss, _ = head.loss_from(x, cond, noise, t, r, keep)
    assert torch.equal(loss, make_head(cfg_omega=1.0, cfg_kappa=0.0).loss_from(x, cond, noise, t, r, keep)[0])
    torch.testing.assert_close(loss, reference_loss(head, x, cond, noise, t, r), rtol=1e-6, atol=1e-9)


def test_guided_target_follows_the_formula_inside_the_t_interval() -> None:
    head = make_head(cfg_omega=2.0, cfg_kappa=0.3, cond_drop_prob=0.1, cfg_t_min=0.2, cfg_t_max=0.8)
    x, cond, noise, _, _ = draws(6)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.5], dtype=torch.float64)
    drop = torch.tensor([False, False, False, False, False, True])
    te = t[:, None, None]
    z, v = (1 - te) * x + te * noise, noise - x
    got = head.guided_velocity(z, t, v, cond, drop)
    with torch.no_grad():
        u_c = head.u(z, t, t, cond)
        u_null = head.u(z, t, t, head.null_cond.expand_as(cond))
    guided = 2.0 * v + 0.3 * u_c + (1 - 2.0 - 0.3) * u_null
    inside = torch.tensor([False, True, True, True, False, False])  # outside the interval or dropped -> v
    torch.testing.assert_close(got[inside], guided[inside])
    torch.testing.assert_close(got[~inside], v[~inside])
    assert not got.requires_grad


def test_dropped_samples_use_null_condition_and_target_v() -> None:
    head = make_head(cfg_omega=2.5, cond_drop_prob=0.2)
    x, cond, noise, t, r = draws(6)
    drop = torch.tensor([True, False, True, False, False, True])
    loss, metrics = head.loss_from(x, cond, noise, t, r, drop)
    assert metrics["frac_cond_dropped"] == 0.5
    # Per-sample losses are independent, so the batch loss is the mean of per-sample references:
    # dropped rows see the null embedding with target v, kept rows the real condition with the guided v~.
    te = t[:, None, None]
    z, v = (1 - te) * x + te * noise, noise - x
    null = head.null_cond.expand_as(cond)
    v_tilde = head.guided_velocity(z, t, v, cond, drop)
    torch.testing.assert_close(v_tilde[drop], v[drop])
    per_row = []
    for i in range(6):
        s = slice(i, i + 1)
        c_i = null[s] if drop[i] else cond[s]
        per_row.append(reference_loss(head, x[s], c_i, noise[s], t[s], r[s], v_tilde=v_tilde[s]))
    torch.testing.assert_close(loss, torch.stack(per_row).mean(), rtol=1e-6, atol=1e-9)
    loss.backward()
    assert head.null_cond.grad is not None and head.null_cond.grad.abs().sum() > 0


def test_guidance_without_condition_dropout_is_rejected() -> None:
    with pytest.raises(ValueError, match="cond_drop_prob"):
        make_head(cfg_omega=2.0)


# ------------------------------------------------------------------ (t, r) sampling
@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 300), ratio=st.floats(0.0, 1.0), p_mean=st.floats(-2, 2), p_std=st.floats(0.1, 2),
       t_dist=st.sampled_from(["logit_normal", "uniform"]))
def test_t_r_sampling_invariants(batch: int, ratio: float, p_mean: float, p_std: float, t_dist: str) -> None:
    head = MeanFlowHead(MLPBackbone(DA, H, C, 2, hidden_dim=8, n_layers=1, time_embed_dim=4), H,
                        ratio_r_eq_t=ratio, p_mean=p_mean, p_std=p_std, t_dist=t_dist)
    t, r = head.sample_t_r(batch, torch.device("cpu"))
    assert t.shape == r.shape == (batch,)
    assert bool(((r >= 0) & (r <= t) & (t <= 1)).all())
    assert int((t == r).sum()) >= round(ratio * batch)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 300), ratio=st.floats(0.0, 1.0), share=st.floats(0.0, 1.0))
def test_one_step_share_draws_the_sampler_query(batch: int, ratio: float, share: float) -> None:
    share = min(share, 1.0 - ratio)
    head = make_head(ratio_r_eq_t=ratio, ratio_one_step=share, t_dist="uniform")
    t, r = head.sample_t_r(batch, torch.device("cpu"))
    assert bool(((r >= 0) & (r <= t) & (t <= 1)).all())
    n_eq, n_one = round(ratio * batch), min(round(share * batch), batch - round(ratio * batch))
    assert int((t == r).sum()) >= n_eq
    # two continuous draws never land on the corner, so every (1, 0) pair is one of the forced ones
    assert int(((t == 1) & (r == 0)).sum()) == n_one


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 300), ratio=st.floats(0.0, 1.0), frac=st.floats(0.01, 1.0), progress=st.floats(0.0, 1.0))
def test_flow_matching_warmup_ramps_the_mean_flow_share(batch: int, ratio: float, frac: float, progress: float) -> None:
    head = make_head(ratio_r_eq_t=ratio, t_dist="uniform", fm_warmup_frac=frac)
    head.training_progress = progress
    t, r = head.sample_t_r(batch, torch.device("cpu"))
    share = min(1.0, progress / frac)
    assert int((t != r).sum()) <= batch - round((ratio + (1.0 - ratio) * (1.0 - share)) * batch)
    if progress >= frac:
        assert int((t == r).sum()) >= round(ratio * batch), "after the ramp, the configured r = t share"
    if progress == 0.0:
        assert torch.equal(t, r), "at the first step every sample is a flow-matching sample"


def test_flow_matching_warmup_ends_at_the_configured_draws_and_bad_fractions_are_refused() -> None:
    plain = make_head(ratio_r_eq_t=0.5, ratio_one_step=0.25, t_dist="uniform")
    head = make_head(ratio_r_eq_t=0.5, ratio_one_step=0.25, t_dist="uniform", fm_warmup_frac=0.3)
    head.training_progress = 0.3
    torch.manual_seed(3)
    ref = plain.sample_t_r(64, torch.device("cpu"))
    torch.manual_seed(3)
    after = head.sample_t_r(64, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(ref, after))
    head.training_progress = 0.15  # halfway up the ramp: half of each r != t share
    t, r = head.sample_t_r(64, torch.device("cpu"))
    assert int((t == r).sum()) >= 64 - 24 and int(((t == 1) & (r == 0)).sum()) == 8
    from policies.config import MeanFlowConfig

    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fm_warmup_frac"):
            make_head(fm_warmup_frac=bad)
        with pytest.raises(ValueError, match="fm_warmup_frac"):
            MeanFlowConfig(fm_warmup_frac=bad)


def test_one_step_share_off_keeps_the_draws_and_bad_shares_are_refused() -> None:
    ref = make_head(ratio_r_eq_t=0.5, t_dist="uniform").sample_t_r(64, torch.device("cpu"))
    off = make_head(ratio_r_eq_t=0.5, ratio_one_step=0.0, t_dist="uniform").sample_t_r(64, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(ref, off))
    from policies.config import MeanFlowConfig

    for bad in (-0.1, 0.6, float("nan")):
        with pytest.raises(ValueError, match="ratio_one_step"):
            make_head(ratio_r_eq_t=0.5, ratio_one_step=bad)
        with pytest.raises(ValueError, match="ratio_one_step"):
            MeanFlowConfig(ratio_r_eq_t=0.5, ratio_one_step=bad)


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
    with pytest.raises(ValueError, match="t_dist"):
        make_head(t_dist="beta")
    from policies.config import MeanFlowConfig

    with pytest.raises(ValueError, match="known: logit_normal, uniform"):
        MeanFlowConfig(t_dist="beta")


@pytest.mark.parametrize("p, c, match", [(-1.0, 1e-3, "adaptive_p"), (float("nan"), 1e-3, "adaptive_p"),
                                         (1.0, 0.0, "adaptive_c"), (0.5, float("nan"), "adaptive_c")])
def test_meanflow_config_refuses_a_weight_that_cannot_work(p: float, c: float, match: str) -> None:
    from policies.config import MeanFlowConfig

    with pytest.raises(ValueError, match=match):
        MeanFlowConfig(adaptive_p=p, adaptive_c=c)
    MeanFlowConfig(adaptive_p=0.0, adaptive_c=0.0)  # plain squared error needs no c


# ------------------------------------------------------------------ x-prediction
def test_x_prediction_derives_u_from_the_denoised_output_and_one_step_returns_it() -> None:
    head = make_head(kind="mlp", prediction="x", x_t_floor=0.1)
    x, cond, noise, t, r = draws(6)
    t[0], r[0] = 0.01, 0.0  # below the floor: divided by 0.1, not by 0.01
    z = (1 - t[:, None, None]) * x + t[:, None, None] * noise
    out = head.backbone(z, torch.stack([t, t - r], 1), cond)
    torch.testing.assert_close(head.u(z, t, r, cond), (z - out) / t.clamp(min=0.1)[:, None, None])
    ones = torch.ones(3, dtype=torch.float64)
    eps = torch.randn(3, H, DA, dtype=torch.float64)
    with torch.no_grad():
        action = head.backbone(eps, torch.stack([ones, ones], 1), cond[:3])
    torch.testing.assert_close(head.eval().sample(cond[:3], noise=eps), action)  # a = x(eps, r=0, t=1)


def test_x_prediction_trains_a_one_step_map_to_a_fixed_chunk() -> None:
    """With a single target chunk, the x-head's one-step sample must approach it from any noise."""
    head = make_head(kind="mlp", dtype=torch.float32, prediction="x", adaptive_p=0.0, t_dist="uniform")
    target = torch.linspace(-0.8, 0.8, H * DA).reshape(1, H, DA)
    cond = torch.zeros(1, C)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    before = float((head.eval().sample(cond.expand(64, C)) - target).abs().mean())
    head.train()
    for _ in range(300):
        loss, _ = head.compute_loss(target.expand(64, H, DA), cond.expand(64, C))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float((head.eval().sample(cond.expand(64, C)) - target).abs().mean())
    assert after < 0.1 * before and after < 0.05, (before, after)


@pytest.mark.parametrize("field,value", [("prediction", "eps"), ("x_t_floor", 0.0), ("x_t_floor", 1.5)])
def test_bad_prediction_settings_are_refused(field: str, value) -> None:
    from policies.config import MeanFlowConfig

    with pytest.raises(ValueError, match=field):
        MeanFlowConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        make_head(**{field: value})


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
        loss, _ = head.loss_from(x, cond, noise, t, r, torch.zeros(4, dtype=torch.bool))
    assert loss.dtype == torch.float32
    ref, _ = head.loss_from(x, cond, noise, t, r, torch.zeros(4, dtype=torch.bool))
    assert torch.equal(loss, ref)


@pytest.mark.parametrize("prediction", ["u", "x"])
@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_alpha_flow_gradient_tends_to_meanflow_as_alpha_shrinks(kind: str, prediction: str) -> None:
    head = make_head(kind, adaptive_p=0.0, prediction=prediction)
    x, cond, noise, t, r = draws(8)
    drop = torch.zeros(8, dtype=torch.bool)

    def grad(alpha: float) -> torch.Tensor:
        head.zero_grad()
        head.loss_from(x, cond, noise, t, r, drop, alpha=alpha)[0].backward()
        return torch.cat([p.grad.flatten() for p in head.parameters() if p.grad is not None])

    g_mf = grad(0.0)
    gaps = [float((grad(a) - g_mf).norm() / g_mf.norm()) for a in (1e-2, 1e-3, 1e-4)]
    # first order in alpha: each tenth of alpha takes a tenth off the gap (measured ratios 0.0998-0.1002)
    assert gaps[2] < 1e-4 and 0.09 < gaps[1] / gaps[0] < 0.11 and 0.09 < gaps[2] / gaps[1] < 0.11
    assert float((grad(1.0) - g_mf).norm() / g_mf.norm()) > 10 * gaps[0], "alpha = 1 is a different objective"


def test_alpha_flow_at_alpha_one_is_trajectory_flow_matching() -> None:
    """alpha = 1: every sample, r = t or not, regresses u(z_t, r, t) on v = noise - x (written independently)."""
    head = make_head("mlp", adaptive_p=0.0)
    x, cond, noise, t, r = draws(8)
    loss, metrics = head.loss_from(x, cond, noise, t, r, torch.zeros(8, dtype=torch.bool), alpha=1.0)
    z = (1 - t[:, None, None]) * x + t[:, None, None] * noise
    ref = (head.backbone(z, torch.stack([t, t - r], 1), cond) - (noise - x)).pow(2).sum(dim=(1, 2)).mean()
    torch.testing.assert_close(loss, ref)
    assert metrics["alpha"] == 1.0


@settings(max_examples=40, deadline=None)
@given(frac=st.floats(0.01, 1.0), p1=st.floats(0.0, 1.0), p2=st.floats(0.0, 1.0))
def test_alpha_schedule_falls_from_one_to_meanflow(frac: float, p1: float, p2: float) -> None:
    head = make_head("mlp", alpha_anneal_frac=frac)
    head.training_progress = 0.0
    assert head.consistency_alpha() == 1.0
    alphas = []
    for p in sorted((p1, p2)):
        head.training_progress = p
        alphas.append(head.consistency_alpha())
    assert 0.0 <= alphas[1] <= alphas[0] <= 1.0
    head.training_progress = max(p1, p2)
    if max(p1, p2) >= frac:
        assert head.consistency_alpha() == 0.0
    assert make_head("mlp").consistency_alpha() == 0.0, "off by default: MeanFlow's target from the first step"


def test_bad_alpha_settings_are_refused() -> None:
    from policies.config import MeanFlowConfig

    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha_anneal_frac"):
            make_head(alpha_anneal_frac=bad)
        with pytest.raises(ValueError, match="alpha_anneal_frac"):
            MeanFlowConfig(alpha_anneal_frac=bad)
    head = make_head("mlp")
    x, cond, noise, t, r = draws(4)
    with pytest.raises(ValueError, match="alpha must be in"):
        head.loss_from(x, cond, noise, t, r, torch.zeros(4, dtype=torch.bool), alpha=1.5)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_cond_grad_r_eq_t_trains_the_encoder_from_the_flow_matching_samples_only(kind):
    """cond_grad="r_eq_t": the loss's gradient reaches the condition only through r = t samples; the head's
    parameters get the same gradient as with "all" (only the condition is detached)."""
    x, cond, noise, t, r = draws(8)
    r[::2] = t[::2]  # samples 0, 2, 4, 6 are flow-matching samples
    grads = {}
    for mode in ("all", "r_eq_t"):
        head = make_head(kind, cond_grad=mode)
        c = cond.clone().requires_grad_(True)
        loss, _ = head.loss_from(x, c, noise, t, r, torch.zeros(8, dtype=torch.bool))
        loss.backward()
        grads[mode] = (c.grad.abs().sum(dim=1), [p.grad.clone() for p in head.parameters()])
    per_sample_all, head_all = grads["all"]
    per_sample_fm, head_fm = grads["r_eq_t"]
    assert (per_sample_all > 0).all()
    assert (per_sample_fm[1::2] == 0).all() and (per_sample_fm[::2] > 0).all()
    torch.testing.assert_close(per_sample_fm[::2], per_sample_all[::2])
    for a, b in zip(head_all, head_fm):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="cond_grad"):
        make_head(kind, cond_grad="encoder")
    with pytest.raises(ValueError, match="unknown cond_grad 'encoder'"):
        MeanFlowConfig(cond_grad="encoder")  # a bad hydra override fails when the config is built, before training
