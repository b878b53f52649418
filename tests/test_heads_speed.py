"""Issue 53's speed paths give the same numbers as the plain ones: the fused MeanFlow JVP (the MLP carries the
tangent beside its forward) against ``torch.func.jvp``, and cached time embeddings at inference against the
uncached samplers."""

from __future__ import annotations

import pytest
import torch
from torch.func import jvp

from policies.backbones import Backbone, ConditionalUnet1D, MLPBackbone
from policies.config import DiffusionConfig, FlowConfig, MeanFlowConfig
from policies.heads import ActionHead, make_head
from policies.heads.meanflow import MeanFlowHead

torch.set_num_threads(1)

H, DA, C = 4, 3, 6


def backbone(kind: str, k: int, dtype: torch.dtype = torch.float64) -> Backbone:
    torch.manual_seed(0)
    if kind == "mlp":
        net: Backbone = MLPBackbone(DA, H, C, k, hidden_dim=32, n_layers=2, time_embed_dim=16)
    else:
        net = ConditionalUnet1D(DA, C, k, down_dims=(16, 32), kernel_size=3, n_groups=4, time_embed_dim=16)
    return net.to(dtype)


def meanflow(kind: str, dtype: torch.dtype = torch.float64, **cfg: object) -> MeanFlowHead:
    return MeanFlowHead(backbone(kind, 2, dtype), H, MeanFlowConfig(**cfg)).to(dtype)  # type: ignore[arg-type]


def draws(batch: int, dtype: torch.dtype = torch.float64, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, H, DA, generator=g, dtype=dtype) * 2 - 1
    cond = torch.randn(batch, C, generator=g, dtype=dtype)
    noise = torch.randn(batch, H, DA, generator=g, dtype=dtype)
    a, b = torch.rand(2, batch, generator=g, dtype=dtype)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    r[1::3] = t[1::3]  # some samples with r = t, not in a block
    return x, cond, noise, t, r


def reference_loss(head: MeanFlowHead, x, cond, noise, t, r) -> torch.Tensor:
    """DESIGN section 2 directly: (u, du/dt) = jvp(u_fn, (z, t, r), (v, 1, 0)) over the whole batch."""
    te = t[:, None, None]
    z = (1 - te) * x + te * noise
    v = noise - x

    def u_fn(z_, t_, r_):
        return head.backbone(z_, torch.stack([t_, t_ - r_], 1), cond)

    u, dudt = jvp(u_fn, (z, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    u_tgt = (v - (t - r).clamp(0, 1)[:, None, None] * dudt).detach()
    d = (u - u_tgt).pow(2).sum(dim=(1, 2))
    return ((d.detach() + head.cfg.adaptive_c) ** -head.cfg.adaptive_p * d).mean()


# ------------------------------------------------------------------ fused JVP
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mlp_forward_with_tangent_is_forward_and_jvp(dtype: torch.dtype) -> None:
    net = backbone("mlp", 2, dtype)
    x, cond, _, t, r = draws(7, dtype)
    times = torch.stack([t, t - r], 1)
    x_dot = torch.randn(4, H, DA, dtype=dtype)
    times_dot = torch.rand(4, 2, dtype=dtype)
    out, out_dot = net.forward_with_tangent(x, times, cond, x_dot, times_dot)
    assert torch.equal(out, net(x, times, cond))  # the primal is the same ops as forward
    _, ref_dot = jvp(lambda x_, t_: net(x_, t_, cond[:4]), (x[:4], times[:4]), (x_dot, times_dot))
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(out_dot, ref_dot, **tol)
    assert float(ref_dot.detach().abs().max()) > 1e-3 and out.requires_grad and not out_dot.requires_grad


def test_mlp_forward_with_tangent_keeps_forward_hooks() -> None:
    """A hook on a block (the dispersive tap) must still fire: the generic torch.func.jvp version runs then."""
    net = backbone("mlp", 2)
    seen: list[int] = []
    net.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    x, cond, _, t, r = draws(5)
    times = torch.stack([t, t - r], 1)
    _, out_dot = net.forward_with_tangent(x, times, cond, torch.ones(3, H, DA, dtype=x.dtype), torch.ones(3, 2))
    assert seen and sum(seen) == 5
    _, ref = jvp(lambda x_, t_: net(x_, t_, cond[:3]), (x[:3], times[:3]), (torch.ones(3, H, DA), torch.ones(3, 2)))
    torch.testing.assert_close(out_dot, ref)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
@pytest.mark.parametrize("adaptive_p", [1.0, 0.0])
def test_fused_loss_equals_jvp_reference(kind: str, adaptive_p: float) -> None:
    head = meanflow(kind, jvp_mode="fused", adaptive_p=adaptive_p, adaptive_c=1e-2)
    batch = draws(9)
    loss, metrics = head.loss_from(*batch)
    torch.testing.assert_close(loss, reference_loss(head, *batch), rtol=1e-10, atol=1e-12)
    assert metrics["frac_r_neq_t"] == 6 / 9


def test_fused_loss_equals_reference_in_float32() -> None:
    head = meanflow("mlp", torch.float32)
    batch = draws(32, torch.float32)
    loss, _ = head.loss_from(*batch)
    torch.testing.assert_close(loss, reference_loss(head, *batch), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_fused_gradients_equal_primal_mode(kind: str) -> None:
    grads = {}
    for mode in ("fused", "primal"):
        head = meanflow(kind, jvp_mode=mode)
        loss, _ = head.loss_from(*draws(8))
        grads[mode] = torch.autograd.grad(loss, list(head.backbone.parameters()))
    for a, b in zip(grads["fused"], grads["primal"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert sum(float(g.abs().sum()) for g in grads["fused"]) > 0


def test_fused_with_no_r_neq_t_sample_is_flow_matching() -> None:
    head = meanflow("mlp")
    x, cond, noise, t, _ = draws(4)
    loss, metrics = head.loss_from(x, cond, noise, t, t.clone())
    torch.testing.assert_close(loss, reference_loss(head, x, cond, noise, t, t.clone()))
    assert metrics["frac_r_neq_t"] == 0.0


# ------------------------------------------------------------------ cached inference
HEADS = [("meanflow", 2, MeanFlowConfig()), ("flow", 1, FlowConfig()), ("ddim", 1, DiffusionConfig())]


def head_for(name: str, k: int, cfg: object, kind: str) -> ActionHead:
    return make_head(name, backbone(kind, k, torch.float32), cfg, H).eval()


def uncached(head: ActionHead, monkeypatch: pytest.MonkeyPatch, *args, **kwargs) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr(head, "may_cache", lambda cond: False)
        return head.sample(*args, **kwargs)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
@pytest.mark.parametrize(("name", "k", "cfg"), HEADS)
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_cached_sampling_gives_identical_actions(kind, name, k, cfg, steps, monkeypatch) -> None:
    head = head_for(name, k, cfg, kind)
    for batch in (1, 4):
        cond = torch.randn(batch, C)
        noise = torch.randn(batch, H, DA)
        with torch.inference_mode():
            fast = head.sample(cond, num_steps=steps, noise=noise)
            again = head.sample(cond, num_steps=steps, noise=noise)  # from the cache
        plain = uncached(head, monkeypatch, cond, num_steps=steps, noise=noise)
        assert torch.equal(fast, plain) and torch.equal(again, plain)


def test_ddpm_cached_sampling_gives_identical_actions(monkeypatch) -> None:
    head = head_for("ddpm", 1, DiffusionConfig(num_train_timesteps=20), "mlp")
    cond = torch.randn(2, C)
    fast = head.sample(cond, generator=torch.Generator().manual_seed(5))
    plain = uncached(head, monkeypatch, cond, generator=torch.Generator().manual_seed(5))
    assert torch.equal(fast, plain)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_cache_skips_the_time_embedding_and_follows_weight_updates(kind, monkeypatch) -> None:
    head = head_for("meanflow", 2, MeanFlowConfig(), kind)
    calls: list[int] = []
    head.backbone.time_embed.register_forward_hook(lambda m, i, o: calls.append(1))
    cond, noise = torch.randn(1, C), torch.randn(1, H, DA)
    first = head.sample(cond, noise=noise)
    head.sample(cond, noise=noise)
    assert len(calls) == 1  # the second call embedded nothing
    # an optimizer step on the time embedding changes the actions, and the cache must notice
    opt = torch.optim.SGD(head.backbone.time_embed.parameters(), lr=0.5)
    for p in head.backbone.time_embed.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    after = head.sample(cond, noise=noise)
    assert not torch.equal(after, first)
    assert torch.equal(after, uncached(head, monkeypatch, cond, noise=noise))
    # so must a load_state_dict, in place or assigning new tensors
    head.load_state_dict(head_for("meanflow", 2, MeanFlowConfig(), kind).state_dict())
    assert torch.equal(head.sample(cond, noise=noise), first)
    opt.step()
    assert not torch.equal(head.sample(cond, noise=noise), first)
    head.load_state_dict(head_for("meanflow", 2, MeanFlowConfig(), kind).state_dict(), assign=True)
    assert torch.equal(head.sample(cond, noise=noise), first)


def test_no_cache_with_gradient() -> None:
    head = head_for("meanflow", 2, MeanFlowConfig(), "mlp")
    cond = torch.randn(1, C)
    assert head.may_cache(cond) is False  # grad mode on: the embedding must stay differentiable
    with torch.no_grad():
        assert head.may_cache(cond) is True
    head.one_step(cond, torch.randn(1, H, DA)).sum().backward()
    assert head.backbone.time_embed.embeds[0][1].weight.grad is not None
