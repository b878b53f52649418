"""Encoders: shapes/dtypes, the exact sparse max-pool backward, point-order invariance, crop augmentation, export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.spec import AGENT_POS, IMAGE, POINT_CLOUD, ShapeMeta, SpecError
from encoders.image import ImageEncoder, load_imagenet_weights
from encoders.pointnet import PointNetEncoder
from encoders.state import StateEncoder
from policies.config import EncoderConfig
from policies.obs_encoder import ObservationEncoder

torch.set_num_threads(1)


def _meta(**obs: tuple[str, tuple[int, ...]]) -> ShapeMeta:
    return ShapeMeta.from_dict(
        {"obs": {k: {"type": t, "shape": list(s)} for k, (t, s) in obs.items()}, "action": {"shape": [4]}}
    )


def _structured_cloud(n: int, p: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Clouds shaped like a table top plus an object: a plane and a small box, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, p, channels, generator=g) * 2 - 1
    pts[:, : p // 2, 2] = -0.9
    pts[:, p // 2 :, :3] = pts[:, p // 2 :, :3] * 0.2 + torch.rand(n, 1, 3, generator=g) * 0.5
    return pts


@pytest.mark.parametrize("pooling", ["max", "maxmean"])
@pytest.mark.parametrize("channels", [3, 6])
def test_pointnet_shapes(pooling: str, channels: int) -> None:
    enc = PointNetEncoder(channels, [64, 128, 256], 64, pooling)
    out = enc(torch.randn(5, 128, channels))
    assert out.shape == (5, 64) and out.dtype == torch.float32 and enc.output_dim == 64
    # The final LayerNorm (default affine at init) gives zero-mean unit-variance rows.
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(5), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\(N, P, 3\)"):
        PointNetEncoder(3)(torch.randn(5, 128, 6))


def test_pointnet_is_the_dp3_math() -> None:
    """Same output as a literal DP3 stack (Linear, LayerNorm, ReLU per layer, max over points, Linear, LayerNorm)."""
    torch.manual_seed(0)
    enc = PointNetEncoder(3, [64, 128, 256], 64, "max")
    lins = [m for m in enc.mlp if isinstance(m, torch.nn.Linear)]
    norms = [m for m in enc.mlp if isinstance(m, torch.nn.LayerNorm)]
    x = _structured_cloud(4, 200)
    h = x
    for lin, norm in zip(lins, norms, strict=True):
        h = torch.relu(norm(lin(h)))
    ref = enc.proj(h.max(dim=1).values)
    torch.testing.assert_close(enc(x), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cloud", ["random", "structured"])
def test_sparse_backward_matches_dense(cloud: str) -> None:
    torch.manual_seed(1)
    sparse = PointNetEncoder(3, [64, 128, 256], 64, "max", sparse_backward=True)
    dense = PointNetEncoder(3, [64, 128, 256], 64, "max", sparse_backward=False)
    dense.load_state_dict(sparse.state_dict())
    x = torch.rand(16, 256, 3) * 2 - 1 if cloud == "random" else _structured_cloud(16, 256)
    xs, xd = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    target = torch.randn(16, 64)
    ys, yd = sparse(xs), dense(xd)
    torch.testing.assert_close(ys, yd, atol=1e-6, rtol=0)
    ((ys - target) ** 2).sum().backward()
    ((yd - target) ** 2).sum().backward()
    for (name, ps), pd in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(ps.grad, pd.grad, atol=1e-5, rtol=1e-4, msg=f"gradient of {name}")
    torch.testing.assert_close(xs.grad, xd.grad, atol=1e-6, rtol=1e-4)
    assert (xs.grad.abs().sum(-1) == 0).float().mean() > 0.3  # most points are not critical


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), n_points=st.integers(1, 64), pooling=st.sampled_from(["max", "maxmean"]))
def test_pointnet_is_invariant_to_point_order(seed: int, n_points: int, pooling: str) -> None:
    torch.manual_seed(seed)
    enc = PointNetEncoder(3, [16, 32], 8, pooling)
    x = torch.rand(3, n_points, 3) * 2 - 1
    perm = torch.randperm(n_points)
    torch.testing.assert_close(enc(x[:, perm]), enc(x), atol=2e-5, rtol=0)


def test_state_encoder_shapes() -> None:
    enc = StateEncoder(9, 64, 32)
    out = enc(torch.randn(7, 9))
    assert out.shape == (7, 32) and out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(N, 9\)"):
        enc(torch.randn(7, 8))


@pytest.fixture(scope="module")
def image_encoder() -> ImageEncoder:
    torch.manual_seed(0)
    return ImageEncoder((3, 84, 84), crop_shape=(76, 76), num_keypoints=32, out_dim=64)


def test_image_encoder_shapes_and_uint8(image_encoder: ImageEncoder) -> None:
    image_encoder.eval()
    images = torch.rand(2, 3, 84, 84)
    out = image_encoder(images)
    assert out.shape == (2, 64) and out.dtype == torch.float32
    as_uint8 = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(image_encoder(as_uint8), image_encoder(as_uint8.float() / 255))
    with pytest.raises(ValueError, match="3, 84, 84"):
        image_encoder(torch.rand(2, 3, 96, 96))


def test_image_crop_train_random_eval_centre(image_encoder: ImageEncoder) -> None:
    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 3, 84, 84, generator=g)
    image_encoder.eval()
    with torch.no_grad():
        e1, e2 = image_encoder(images), image_encoder(images)
    torch.testing.assert_close(e1, e2, atol=0, rtol=0)
    centre = image_encoder._center_crop(images)
    torch.testing.assert_close(centre, images[:, :, 4:80, 4:80], atol=0, rtol=0)

    image_encoder.train()
    with torch.no_grad():
        t1, t2 = image_encoder(images), image_encoder(images)
    image_encoder.eval()
    assert not torch.allclose(t1, t2) and not torch.allclose(t1, e1)
    # Each crop is a real window of its own image, and offsets differ across the batch.
    torch.manual_seed(5)
    crops = image_encoder._random_crop(images)
    offsets = []
    for b in range(4):
        windows = {(i, j): images[b, :, i : i + 76, j : j + 76] for i in range(9) for j in range(9)}
        hits = [ij for ij, window in windows.items() if torch.equal(crops[b], window)]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 1


def test_shallow_trunk_keeps_a_fine_keypoint_map_and_learns() -> None:
    """The CPU trunk: 76x76 crop -> 19x19 keypoint map; gradients reach its first conv; bad names are refused."""
    torch.manual_seed(0)
    enc = ImageEncoder((3, 84, 84), crop_shape=(76, 76), num_keypoints=16, out_dim=32, trunk="shallow")
    assert tuple(enc.pool.grid.shape) == (19 * 19, 2)
    out = enc(torch.rand(3, 3, 84, 84))
    assert out.shape == (3, 32)
    out.square().sum().backward()
    assert enc.trunk.layers[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="known: resnet18, shallow"):
        ImageEncoder((3, 84, 84), trunk="resnet50")
    with pytest.raises(ValueError, match="pretrained"):
        ImageEncoder((3, 84, 84), trunk="shallow", pretrained=True)
    with pytest.raises(ValueError, match="image_trunk"):
        EncoderConfig(image_trunk="vit")


def test_pretrained_without_torchvision_says_what_to_do() -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        from encoders.image import ResNet18GN

        with pytest.raises(ImportError, match="image_pretrained=false"):
            load_imagenet_weights(ResNet18GN())
    else:
        pytest.skip("torchvision is importable here; the ImageNet path needs a download")


def test_observation_encoder_mix_of_keys() -> None:
    meta = _meta(
        **{
            POINT_CLOUD: ("point_cloud", (64, 6)),
            IMAGE: ("rgb", (3, 40, 40)),
            "wrist_image": ("rgb", (3, 40, 40)),
            AGENT_POS: ("low_dim", (9,)),
        }
    )
    kwargs = dict(image_crop_shape=[36, 36], image_num_keypoints=8, image_out_dim=16)
    enc = ObservationEncoder(meta, 2, **kwargs)
    shared = ObservationEncoder(meta, 2, image_share_weights=True, **kwargs)
    assert enc.output_dim == 2 * (64 + 16 + 16 + 64) == shared.output_dim
    n_image_params = sum(p.numel() for p in ImageEncoder((3, 40, 40), (36, 36), 8, 16).parameters())
    n_enc, n_shared = (sum(p.numel() for p in m.parameters()) for m in (enc, shared))
    assert n_enc - n_shared == n_image_params
    obs = {
        POINT_CLOUD: torch.randn(3, 2, 64, 6),
        IMAGE: torch.randint(0, 256, (3, 2, 3, 40, 40), dtype=torch.uint8),
        "wrist_image": torch.rand(3, 2, 3, 40, 40),
        AGENT_POS: torch.randn(3, 2, 9),
    }
    enc.eval()
    out = enc(obs)
    assert out.shape == (3, enc.output_dim) and out.dtype == torch.float32
    # Colour is ignored by default: xyz-only PointNet, so changing rgb changes nothing.
    obs2 = dict(obs, **{POINT_CLOUD: torch.cat([obs[POINT_CLOUD][..., :3], torch.rand(3, 2, 64, 3)], -1)})
    torch.testing.assert_close(enc(obs2), out)
    # Frame t of sample b lands in slot t: encoding the steps separately gives the same blocks.
    step = enc.step_dim
    pc_enc = enc.encoders[POINT_CLOUD]
    torch.testing.assert_close(out[:, step : step + 64], pc_enc(obs[POINT_CLOUD][:, 1, :, :3]))


def test_observation_encoder_takes_encoder_config_fields() -> None:
    from dataclasses import asdict

    meta = _meta(**{POINT_CLOUD: ("point_cloud", (32, 3)), AGENT_POS: ("low_dim", (4,))})
    enc = ObservationEncoder(meta, 2, **asdict(EncoderConfig(point_net="pointnet_maxmean")))
    assert enc.encoders[POINT_CLOUD].pooling == "maxmean" and enc.output_dim == 2 * 128


def test_observation_encoder_errors_name_the_key() -> None:
    meta = _meta(**{POINT_CLOUD: ("point_cloud", (32, 3)), AGENT_POS: ("low_dim", (4,))})
    enc = ObservationEncoder(meta, 2)
    good = {POINT_CLOUD: torch.randn(2, 2, 32, 3), AGENT_POS: torch.randn(2, 2, 4)}
    with pytest.raises(SpecError, match=AGENT_POS):
        enc({POINT_CLOUD: good[POINT_CLOUD]})
    with pytest.raises(SpecError, match=f"'{AGENT_POS}'.*To=2"):
        enc(dict(good, **{AGENT_POS: torch.randn(2, 3, 4)}))
    with pytest.raises(SpecError, match="use_point_color"):
        ObservationEncoder(meta, 2, use_point_color=True)
    with pytest.raises(ValueError, match="unknown point_net"):
        ObservationEncoder(meta, 2, point_net="pointnet2")


def _onnx_run(module: torch.nn.Module, args: tuple, path) -> list[np.ndarray]:
    if len(args) == 1 and isinstance(args[0], dict):  # a trailing dict would be read as keyword arguments
        program = torch.onnx.export(module, (), str(path), kwargs={"obs": args[0]}, dynamo=True)
    else:
        program = torch.onnx.export(module, args, str(path), dynamo=True)
    assert program is not None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    flat = [a for arg in args for a in (arg.values() if isinstance(arg, dict) else [arg])]
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), flat, strict=True)}
    return session.run(None, feeds)


def _export_cases():
    meta = _meta(**{POINT_CLOUD: ("point_cloud", (512, 3)), AGENT_POS: ("low_dim", (9,))})
    obs = {POINT_CLOUD: torch.rand(2, 2, 512, 3) * 2 - 1, AGENT_POS: torch.randn(2, 2, 9)}
    return {
        "pointnet": lambda: (PointNetEncoder(3, [64, 128, 256], 64, "max"), (torch.rand(2, 512, 3) * 2 - 1,)),
        "pointnet_maxmean": lambda: (PointNetEncoder(6, [64, 128, 256], 64, "maxmean"), (torch.rand(2, 512, 6),)),
        "image": lambda: (ImageEncoder((3, 84, 84), (76, 76), 32, 64), (torch.rand(2, 3, 84, 84),)),
        "image_shallow": lambda: (
            ImageEncoder((3, 84, 84), (76, 76), 32, 64, trunk="shallow"),
            (torch.rand(2, 3, 84, 84),),
        ),
        "state": lambda: (StateEncoder(9, 64, 64), (torch.randn(2, 9),)),
        "fusion": lambda: (ObservationEncoder(meta, 2), (obs,)),
    }


@pytest.mark.parametrize("name", list(_export_cases()))
def test_export_parity(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    module, args = _export_cases()[name]()
    module.eval()
    with torch.no_grad():
        ref = module(*args)
    exported = torch.export.export(module, args)
    torch.testing.assert_close(exported.module()(*args), ref, atol=1e-4, rtol=0)
    (onnx_out,) = _onnx_run(module, args, tmp_path / f"{name}.onnx")
    np.testing.assert_allclose(onnx_out, ref.numpy(), atol=1e-4, rtol=0)


def test_export_in_train_mode_with_grad_uses_the_dense_path() -> None:
    """Exporters must never trace the data-dependent critical-point path."""
    enc = PointNetEncoder(3, [32, 64], 16, "max")
    x = torch.rand(2, 100, 3)
    exported = torch.export.export(enc, (x,))
    ops = {str(node.target) for node in exported.graph.nodes}
    assert not any("unique" in op for op in ops)
    torch.testing.assert_close(exported.module()(x), enc(x), atol=1e-5, rtol=0)


def test_image_weights_save_after_contiguous(image_encoder: ImageEncoder, tmp_path) -> None:
    """Conv weights are channels-last for speed; the safetensors round trip (with .contiguous()) is exact."""
    from safetensors.torch import load_file, save_file

    state = {k: v.contiguous() for k, v in image_encoder.state_dict().items()}
    save_file(state, str(tmp_path / "image.safetensors"))
    fresh = ImageEncoder((3, 84, 84), crop_shape=(76, 76), num_keypoints=32, out_dim=64).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "image.safetensors")))
    image_encoder.eval()
    images = torch.rand(2, 3, 84, 84)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), image_encoder(images), atol=0, rtol=0)


def test_bench_encoders_runs_and_writes_json(tmp_path) -> None:
    import json

    from benchmarks.encoders import main

    out = tmp_path / "encoders.json"
    args = [
        "--out",
        str(out),
        "--calls",
        "3",
        "--warmup",
        "1",
        "--train-reps",
        "1",
        "--batch",
        "4",
        "--points",
        "64",
        "--image-size",
        "40",
    ]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert set(result["latency"]) == {"pointnet", "pointnet_maxmean", "image_40", "condition_pc+state_2steps"}
    assert result["train"]["clouds_per_step"] == 8 and 0 < result["train"]["critical_fraction"] <= 1
    assert set(result["dispersive"]["overhead"]) == {"infonce_l2", "infonce_cosine", "hinge", "covariance"}
    assert all(s["p50_ms"] > 0 for s in result["latency"].values())


def test_pointnet_under_vmap_uses_the_dense_path() -> None:
    enc = PointNetEncoder(3, [16, 32], 8, "max")
    clouds = torch.rand(3, 2, 20, 3)
    batched = torch.vmap(enc)(clouds)  # (3, 2, 8): the critical-point path (torch.unique) cannot run in vmap
    torch.testing.assert_close(batched, enc(clouds.reshape(6, 20, 3)).reshape(3, 2, 8), atol=1e-5, rtol=0)
