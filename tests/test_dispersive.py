"""Dispersive losses, the feature tap and the collapse diagnostics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from encoders.diagnostics import collapse_metrics, effective_rank, mean_pairwise_cosine, mean_pairwise_distance
from encoders.dispersive import (
    OBS_EMBEDDING,
    DispersiveLoss,
    FeatureTap,
    covariance,
    hinge,
    infonce_cosine,
    infonce_l2,
    regularized_loss,
)
from encoders.pointnet import PointNetEncoder
from policies.config import DISPERSIVE_VARIANTS

torch.set_num_threads(1)


def _official_infonce_l2(z: torch.Tensor, tau: float) -> torch.Tensor:
    """The released "Diffuse and Disperse" form: pdist^2 / dim, duplicated, plus the zero diagonal."""
    z = z.reshape(z.shape[0], -1)
    d = torch.pdist(z).pow(2) / z.shape[1]
    d = torch.cat([d, d, torch.zeros(z.shape[0])])
    return torch.log(torch.exp(-d / tau).mean())


def test_formulas_against_naive_references() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 4, 5, generator=g)  # flattened to (12, 20)
    zf = z.reshape(12, -1)
    torch.testing.assert_close(infonce_l2(z, 0.5), _official_infonce_l2(z, 0.5), atol=1e-5, rtol=1e-5)

    cos = torch.nn.functional.cosine_similarity(zf[:, None], zf[None, :], dim=-1)
    torch.testing.assert_close(infonce_cosine(z, 0.3), torch.log(torch.exp(cos / 0.3).mean()), atol=1e-5, rtol=1e-5)

    d = (zf[:, None] - zf[None, :]).pow(2).sum(-1) / zf.shape[1]
    off = ~torch.eye(12, dtype=torch.bool)
    torch.testing.assert_close(hinge(z, 2.5), (2.5 - d[off]).clamp_min(0).pow(2).mean(), atol=1e-5, rtol=1e-5)

    zs = (zf - zf.mean(0)) / zf.std(0)
    cov = zs.T @ zs / 11
    expected = sum(cov[m, n] ** 2 for m in range(20) for n in range(20) if m != n)
    torch.testing.assert_close(covariance(z, eps=0.0), expected, atol=1e-4, rtol=1e-4)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-6, 1e6), offset=st.floats(-1e3, 1e3), seed=st.integers(0, 1000))
def test_infonce_is_finite_and_bounded_at_any_scale(scale: float, offset: float, seed: int) -> None:
    """log-mean-exp stays finite and within [log(1/B), 0] (the diagonal is exactly zero distance)."""
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(seed)) * scale + offset
    z.requires_grad_(True)
    loss = infonce_l2(z)
    assert math.log(1 / 16) - 1e-5 <= loss.item() <= 1e-6
    loss.backward()
    assert torch.isfinite(z.grad).all()
    for variant in DISPERSIVE_VARIANTS:
        assert torch.isfinite(DispersiveLoss(variant)(z.detach())).all(), variant


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown dispersive variant 'infonce'"):
        DispersiveLoss("infonce")
    with pytest.raises(ValueError, match="B >= 2"):
        DispersiveLoss()(torch.randn(1, 8))
    with pytest.raises(ValueError, match="no features"):
        DispersiveLoss()([])


def _collapsed_pointnet(seed: int) -> PointNetEncoder:
    """A small PointNet whose embeddings all sit near one point (the projection is scaled to ~0)."""
    torch.manual_seed(seed)
    enc = PointNetEncoder(3, [16, 32], 16, "max")
    with torch.no_grad():
        enc.proj[0].weight.mul_(1e-3)
    return enc


@pytest.mark.parametrize("variant", DISPERSIVE_VARIANTS)
def test_gradient_reaches_encoder_and_undoes_collapse(variant: str) -> None:
    enc = _collapsed_pointnet(0)
    clouds = torch.rand(64, 32, 3) * 2 - 1
    with torch.no_grad():
        before = collapse_metrics(enc(clouds))
    assert before["embed_mean_cos"] > 0.999 and before["embed_erank"] < 1.1

    loss_fn = DispersiveLoss(variant, temperature=1.0, margin=1.0)
    loss = loss_fn(enc(clouds))
    loss.backward()
    first_layer = enc.mlp[0].weight
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0, "no gradient reached the first layer"

    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    w0 = first_layer.detach().clone()
    for _ in range(15):
        opt.zero_grad()
        loss_fn(enc(clouds)).backward()
        opt.step()
    assert not torch.equal(first_layer.detach(), w0)
    with torch.no_grad():
        after = collapse_metrics(enc(clouds))
    assert after["embed_mean_dist"] > 3 * before["embed_mean_dist"], (before, after)
    assert after["embed_erank"] > before["embed_erank"] + 0.5, (before, after)


def _train_step(weight: float, variant: str = "infonce_l2") -> tuple[float, dict[str, torch.Tensor]]:
    """One SGD step of encoder + linear head on MSE, with the dispersive term on the embedding via the helper."""
    torch.manual_seed(0)
    enc = PointNetEncoder(3, [16, 32], 16, "max")
    head = nn.Linear(16, 2)
    clouds, targets = torch.rand(32, 24, 3) * 2 - 1, torch.randn(32, 2)
    params = [*enc.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    z = enc(clouds)
    plain = (head(z) - targets).pow(2).mean()
    total, _ = regularized_loss(plain, [z], DispersiveLoss(variant), weight)
    opt.zero_grad()
    total.backward()
    opt.step()
    state = {f"enc.{k}": v.detach().clone() for k, v in enc.state_dict().items()}
    state |= {f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()}
    return float(total.detach()), state


def test_weight_zero_is_exactly_the_plain_loss() -> None:
    torch.manual_seed(0)
    enc = PointNetEncoder(3, [16, 32], 16, "max")
    z = enc(torch.rand(8, 10, 3))
    plain = z.square().mean()
    total, metrics = regularized_loss(plain, [z], DispersiveLoss(), 0.0)
    assert total is plain and metrics == {}

    loss0, state0 = _train_step(0.0)
    loss_half, state_half = _train_step(0.5)
    assert loss_half != loss0
    # The dispersive term changes the encoder's update and leaves the head's update alone.
    assert any(not torch.equal(state0[k], state_half[k]) for k in state0 if k.startswith("enc."))
    for k in (k for k in state0 if k.startswith("head.")):
        torch.testing.assert_close(state0[k], state_half[k], atol=0, rtol=0)


def test_refuses_to_run_under_no_grad() -> None:
    """DM1's bug: a dispersive term computed under no_grad has no effect. It must fail loudly instead."""
    enc = _collapsed_pointnet(1)
    z = enc(torch.rand(8, 16, 3))
    with torch.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
        DispersiveLoss()(z)
    # Validation batches computed entirely without grad are fine.
    with torch.no_grad():
        assert torch.isfinite(DispersiveLoss()(enc(torch.rand(8, 16, 3))))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = PointNetEncoder(3, [16, 32], 8, "max")
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8), nn.ReLU())])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        return h


def test_feature_tap_captures_named_layers_only_while_capturing() -> None:
    net = _Net()
    tap = FeatureTap(net, [OBS_EMBEDDING, "blocks.0", "blocks.1.0", "encoder.proj"])
    assert tap.wants_obs_embedding and tap.module_names == ["blocks.0", "blocks.1.0", "encoder.proj"]
    hooked = [net.blocks[0], net.blocks[1][0], net.encoder.proj]
    assert all(not m._forward_hooks for m in hooked)

    x = torch.rand(6, 20, 3)
    tap.start()
    assert tap.active and all(len(m._forward_hooks) == 1 for m in hooked)
    out = net(x)
    feats = tap.stop()
    assert not tap.active and all(not m._forward_hooks for m in hooked)
    assert [f.shape for f in feats] == [(6, 8), (6, 8), (6, 8)] and out.shape == (6, 8)
    torch.testing.assert_close(feats[1], net.blocks[1][0](net.blocks[0](net.encoder(x))))

    # Captured features carry gradient back into the encoder.
    DispersiveLoss()(feats[0]).backward()
    assert net.encoder.mlp[0].weight.grad.abs().sum() > 0

    # The context manager does the same and removes its hooks even when the forward raises.
    with tap.capture() as captured:
        net(x)
    assert len(captured) == 3
    with pytest.raises(ValueError), tap.capture():
        net(torch.rand(6, 20, 4))
    assert not tap.active and all(not m._forward_hooks for m in hooked)

    # A pass without grad cannot be regularized: stop() says the layers produced nothing.
    tap.start()
    with torch.no_grad():
        net(x)
    with pytest.raises(RuntimeError, match=r"no output with grad.*blocks\.0|blocks\.0.*no output with grad"):
        tap.stop()
    assert not tap.active


def test_feature_tap_keeps_the_primal_of_a_jvp_and_joins_chunks() -> None:
    """MeanFlow runs part of the batch inside torch.func.jvp and the rest plainly; the tap sees one batch."""
    net = _Net()
    tap = FeatureTap(net, ["blocks.0"])
    x = torch.rand(6, 10, 3)
    h = net.encoder(x)  # (6, 8), requires grad
    with tap.capture() as feats:
        _, tangent = torch.func.jvp(lambda a: net.blocks[1](net.blocks[0](a)), (h[:4],), (torch.ones_like(h[:4]),))
        net.blocks[1](net.blocks[0](h[4:]))
    (joined,) = feats
    assert tangent.shape == (4, 8)
    torch.testing.assert_close(joined, net.blocks[0](h))
    DispersiveLoss()(joined).backward()
    assert net.encoder.mlp[0].weight.grad.abs().sum() > 0

    # Inside vmap there is no per-sample batch to disperse: nothing is kept.
    tap.start()
    torch.vmap(net.blocks[0])(h.detach().unsqueeze(1).requires_grad_(True))
    with pytest.raises(RuntimeError, match="no output with grad"):
        tap.stop()


def test_feature_tap_rejects_containers_that_are_never_called() -> None:
    with pytest.raises(KeyError, match=r"'blocks' is a ModuleList.*blocks\.0, blocks\.1"):
        FeatureTap(_Net(), ["blocks"])


@settings(max_examples=30, deadline=None)
@given(name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz._0123456789", min_size=1, max_size=20))
def test_feature_tap_unknown_names_fail_loudly(name: str) -> None:
    net = _Net()
    modules = dict(net.named_modules())
    if name == OBS_EMBEDDING or (name in modules and not isinstance(modules[name], nn.ModuleList)):
        FeatureTap(net, [name])
    elif name in modules:
        with pytest.raises(KeyError, match="never called"):
            FeatureTap(net, [name])
    else:
        with pytest.raises(KeyError, match=r"unknown layer name.*available module names: encoder, encoder\.mlp"):
            FeatureTap(net, [name])


def test_centred_rank_separates_a_shared_offset_from_a_folded_spread() -> None:
    g = torch.Generator().manual_seed(0)
    offset = torch.full((16,), 10.0)
    wide = offset + torch.randn(256, 16, generator=g)  # isotropic spread around a far-away mean
    folded = offset + torch.randn(256, 1, generator=g) * torch.randn(1, 16, generator=g)  # spread along one line
    for z in (wide, folded):  # uncentred, both read as collapsed
        m = collapse_metrics(z)
        assert m["embed_mean_cos"] > 0.98 and m["embed_erank"] < 4  # of 16
    assert collapse_metrics(wide)["embed_erank_centered"] > 12
    assert collapse_metrics(folded)["embed_erank_centered"] < 1.5


def test_diagnostics_on_known_geometry() -> None:
    eye = torch.eye(8)
    assert mean_pairwise_cosine(eye) == pytest.approx(0.0, abs=1e-12)
    assert effective_rank(eye) == pytest.approx(8.0, rel=1e-9)
    assert effective_rank(torch.cat([eye[:3], eye[:3]])) == pytest.approx(3.0, rel=1e-9)

    collapsed = torch.ones(32, 16) + 1e-5 * torch.randn(32, 16)
    assert mean_pairwise_cosine(collapsed) > 0.9999
    assert effective_rank(collapsed) < 1.01
    assert effective_rank(collapsed, center=True) > 5  # the tiny spread itself is isotropic
    assert effective_rank(torch.zeros(4, 3)) == 0.0

    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    assert mean_pairwise_distance(pts) == pytest.approx((5 + 4 + 3) / 3)
    z = torch.randn(16, 8, requires_grad=True)
    metrics = collapse_metrics(z, prefix="obs")
    assert set(metrics) == {"obs_mean_cos", "obs_erank", "obs_erank_centered", "obs_mean_dist"}
    assert all(isinstance(v, float) for v in metrics.values()) and z.grad is None
