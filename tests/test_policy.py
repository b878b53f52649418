"""Policy API and portable checkpoints, parametrized over every registered head and both backbones."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import random_batch, random_stats
from safetensors.torch import load_file, save_file

from core.spec import SpecError
from policies.checkpoint import CheckpointError, load_policy, save_policy
from policies.config import BackboneConfig, EncoderConfig, PolicyConfig
from policies.factory import build_policy
from policies.heads import head_names

HEADS = head_names()


def tiny_config(head: str, backbone: str = "mlp") -> PolicyConfig:
    return PolicyConfig(
        head=head,
        horizon=4,
        n_obs_steps=2,
        n_action_steps=3,
        backbone=BackboneConfig(
            type=backbone, down_dims=[16, 32], hidden_dim=32, n_layers=2, time_embed_dim=16, n_groups=4
        ),
        encoder=EncoderConfig(point_hidden_dims=[16, 32], point_out_dim=16, state_hidden_dim=16, state_out_dim=16),
    )


@pytest.mark.parametrize("backbone", ["mlp", "unet"])
@pytest.mark.parametrize("head", HEADS)
def test_loss_predict_and_checkpoint_round_trip(head, backbone, small_shape_meta, tmp_path):
    cfg = tiny_config(head, backbone)
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta))
    batch = random_batch(small_shape_meta, 8, cfg.n_obs_steps, cfg.horizon)
    loss, metrics = policy.compute_loss(batch)
    assert torch.isfinite(loss) and "loss" in metrics
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.obs_encoder.parameters())

    policy.eval()
    obs = {k: v[:2] for k, v in batch["obs"].items()}
    noise = torch.randn(2, cfg.horizon, small_shape_meta.action_dim)
    a = policy.predict_action(obs, noise=noise, generator=torch.Generator().manual_seed(0))  # DDPM: per-step noise
    assert a.shape == (2, cfg.n_action_steps, small_shape_meta.action_dim)

    save_policy(policy, cfg, tmp_path / "ckpt", metadata={"task": "unit"})
    loaded = load_policy(tmp_path / "ckpt")
    b = loaded.predict_action(obs, noise=noise, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b), "save -> load must give identical actions for the same noise"
    assert loaded.checkpoint_metadata["task"] == "unit"


def test_predict_action_accepts_unbatched_numpy(small_shape_meta):
    cfg = tiny_config("meanflow")
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta)).eval()
    obs = {k: np.random.rand(3, *s.shape).astype(np.float32) for k, s in small_shape_meta.obs.items()}  # To=3 > 2
    a = policy.predict_action(obs)
    assert isinstance(a, np.ndarray) and a.shape == (cfg.n_action_steps, 4)


def test_select_action_serves_queue_and_calls_network_once_per_chunk(small_shape_meta):
    cfg = tiny_config("meanflow")
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta)).eval()
    calls = []
    original = policy.predict_action
    policy.predict_action = lambda obs, **kw: calls.append(1) or original(obs, **kw)
    step = {k: torch.rand(1, *s.shape) for k, s in small_shape_meta.obs.items()}
    actions = [policy.select_action(step) for _ in range(7)]
    assert all(a.shape == (1, 4) for a in actions)
    assert len(calls) == 3  # ceil(7 / n_action_steps=3)
    policy.reset()
    policy.select_action(step)
    assert len(calls) == 4


def test_bad_batches_name_the_key(small_shape_meta):
    cfg = tiny_config("flow")
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta))
    batch = random_batch(small_shape_meta, 4, 2, 4)
    bad = {"obs": dict(batch["obs"]), "action": batch["action"]}
    bad["obs"]["agent_pos"] = torch.rand(4, 2, 5)
    with pytest.raises(SpecError, match="agent_pos"):
        policy.compute_loss(bad)
    bad["obs"]["agent_pos"] = batch["obs"]["agent_pos"].clone()
    bad["obs"]["agent_pos"][0, 0, 0] = float("nan")
    with pytest.raises(SpecError, match="agent_pos.*NaN"):
        policy.compute_loss(bad)
    del bad["obs"]["point_cloud"]
    with pytest.raises(SpecError, match="point_cloud"):
        policy.compute_loss(bad)
    with pytest.raises(SpecError, match="action"):
        policy.compute_loss({"obs": batch["obs"], "action": torch.rand(4, 4, 7)})
    nan_action = batch["action"].clone()
    nan_action[1, 2, 3] = float("nan")
    with pytest.raises(SpecError, match="action.*NaN"):
        policy.compute_loss({"obs": batch["obs"], "action": nan_action})


def test_corrupt_and_mismatched_checkpoints_raise_clear_errors(small_shape_meta, tmp_path):
    cfg = tiny_config("meanflow")
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta))
    ckpt = save_policy(policy, cfg, tmp_path / "ckpt")

    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nope")

    # Truncated weights file.
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_policy(ckpt)

    # Config edited to a different architecture: weights no longer fit -> error names the tensors.
    ckpt = save_policy(policy, cfg, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["policy"]["backbone"]["hidden_dim"] = 48
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_policy(ckpt)

    # Normalizer stats for another observation layout.
    ckpt = save_policy(policy, cfg, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["shape_meta"]["obs"]["agent_pos"]["shape"] = [7]
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="agent_pos"):
        load_policy(ckpt)

    # Unknown config key (typo) fails instead of being dropped.
    ckpt = save_policy(policy, cfg, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["policy"]["horizn"] = 8
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="horizn"):
        load_policy(ckpt)

    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(ckpt)


@pytest.mark.parametrize("jvp_mode", ["primal", "separate"])
def test_dispersive_on_embedding_and_backbone_block_reaches_encoder(small_shape_meta, jvp_mode):
    from policies.config import DispersiveConfig

    cfg = tiny_config("meanflow", backbone="unet")
    cfg.meanflow.jvp_mode = jvp_mode
    cfg.dispersive = DispersiveConfig(weight=0.5, layers=["obs_embedding", "head.backbone.down_modules.0.1"])
    torch.manual_seed(0)
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta))
    plain_cfg = tiny_config("meanflow", backbone="unet")
    plain_cfg.meanflow.jvp_mode = jvp_mode
    torch.manual_seed(0)
    plain = build_policy(plain_cfg, small_shape_meta, random_stats(small_shape_meta))
    batch = random_batch(small_shape_meta, 8, 2, 4)

    torch.manual_seed(1)
    loss, metrics = policy.compute_loss(batch)
    torch.manual_seed(1)
    plain_loss, _ = plain.compute_loss(batch)
    assert metrics["dispersive_loss"] != 0.0
    assert not torch.allclose(loss, plain_loss), "the regularizer must change the loss"
    loss.backward()
    plain_loss.backward()
    enc = dict(policy.obs_encoder.named_parameters())
    differs = [n for n, p in plain.obs_encoder.named_parameters() if not torch.allclose(p.grad, enc[n].grad)]
    assert differs, "the dispersive gradient must reach the encoder parameters"
    # Hooks exist only during a loss computation: inference pays nothing.
    assert not any(m._forward_hooks for m in policy.modules())


def test_dispersive_weight_zero_is_exactly_the_plain_loss(small_shape_meta):
    from policies.config import DispersiveConfig

    cfg = tiny_config("meanflow")
    cfg.dispersive = DispersiveConfig(weight=0.0, layers=["obs_embedding"])
    torch.manual_seed(0)
    a = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta))
    torch.manual_seed(0)
    b = build_policy(tiny_config("meanflow"), small_shape_meta, random_stats(small_shape_meta))
    batch = random_batch(small_shape_meta, 8, 2, 4)
    torch.manual_seed(3)
    la, ma = a.compute_loss(batch)
    torch.manual_seed(3)
    lb, _ = b.compute_loss(batch)
    assert torch.equal(la, lb) and "dispersive_loss" not in ma


def test_predict_action_rejects_bad_observations(small_shape_meta):
    policy = build_policy(tiny_config("meanflow"), small_shape_meta, random_stats(small_shape_meta)).eval()
    good = {k: np.random.rand(2, *s.shape).astype(np.float32) for k, s in small_shape_meta.obs.items()}
    with pytest.raises(SpecError, match="point_cloud"):
        policy.predict_action({"agent_pos": good["agent_pos"]})
    with pytest.raises(SpecError, match="1 observation steps"):
        policy.predict_action({k: v[:1] for k, v in good.items()})
    nan = dict(good, agent_pos=good["agent_pos"].copy())
    nan["agent_pos"][1, 2] = np.nan
    with pytest.raises(SpecError, match="agent_pos.*NaN"):
        policy.predict_action(nan)
    with pytest.raises(SpecError, match="point_cloud"):
        policy.predict_action(dict(good, point_cloud=np.zeros((2, 64, 4), np.float32)))


@pytest.mark.parametrize("head", ["meanflow", "ddim", "flow"])
def test_samples_per_obs_encodes_once_and_draws_k_per_observation(head, small_shape_meta, monkeypatch):
    cfg = tiny_config(head)
    cfg.samples_per_obs = 3
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta))
    encoded, seen = [], []
    policy.obs_encoder.register_forward_hook(lambda m, args, out: encoded.append(out.shape[0]))
    head_loss = policy.head.compute_loss
    monkeypatch.setattr(policy.head, "compute_loss", lambda a, c: (seen.append((a, c)), head_loss(a, c))[1])
    batch = random_batch(small_shape_meta, 5, cfg.n_obs_steps, cfg.horizon)
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    assert encoded == [5]
    actions, cond = seen[0]
    assert actions.shape[0] == cond.shape[0] == 15
    # Copies of one observation are consecutive and identical; their noise draws are the head's business.
    assert torch.equal(cond[0], cond[2]) and not torch.equal(cond[0], cond[3])
    assert torch.equal(actions[3], actions[5])
    assert all(p.grad is not None for p in policy.obs_encoder.parameters())


def test_samples_per_obs_is_validated_and_ignored_by_regression(small_shape_meta):
    with pytest.raises(ValueError, match="samples_per_obs must be >= 1"):
        PolicyConfig(samples_per_obs=0)
    from dataclasses import replace

    cfg = replace(tiny_config("regression"), samples_per_obs=4)  # one profile value serves every head
    torch.manual_seed(0)
    repeated = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta))
    torch.manual_seed(0)
    plain = build_policy(tiny_config("regression"), small_shape_meta, random_stats(small_shape_meta))
    batch = random_batch(small_shape_meta, 6, 2, 4)
    assert repeated.samples_per_obs == 1
    assert PolicyConfig(head="regression", samples_per_obs=4).samples_per_obs == 1  # saved configs say what ran
    assert torch.equal(repeated.compute_loss(batch)[0], plain.compute_loss(batch)[0])


def test_embed_is_the_condition_the_head_samples_from(small_shape_meta, monkeypatch):
    cfg = tiny_config("meanflow")
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta)).eval()
    obs = random_batch(small_shape_meta, 5, cfg.n_obs_steps, cfg.horizon)["obs"]
    seen = []
    sample = policy.head.sample
    monkeypatch.setattr(policy.head, "sample", lambda cond, **kw: seen.append(cond) or sample(cond, **kw))
    policy.predict_action(obs)
    z = policy.embed(obs)
    assert z.shape == (5, cfg.n_obs_steps * 2 * 16)  # two observation steps of point (16) + state (16) features
    assert torch.equal(z, seen[0])
    with pytest.raises(SpecError, match="point_cloud"):
        policy.embed({"agent_pos": obs["agent_pos"]})


def test_a_checkpoint_saved_with_removed_settings_still_loads_and_acts_the_same(small_shape_meta, tmp_path):
    """Settings dropped from this version (tried, not kept) were saved by earlier ones: their checkpoints load, with
    the training-only weights dropped; an x-predicting head, which changed inference, is refused by name."""
    cfg = tiny_config("meanflow")
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta)).eval()
    save_policy(policy, cfg, tmp_path / "new")
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    config["policy"]["meanflow"].update(
        cfg_omega=1.0,
        cond_drop_prob=0.1,
        fm_warmup_frac=0.5,
        prediction="u",
        x_t_floor=0.05,
        jvp_tangent="conditional",
        cond_grad="all",
    )
    config["policy"]["aux_regression_weight"] = 0.5
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    weights = load_file(str(tmp_path / "old" / "model.safetensors"))
    weights["head.null_cond"] = torch.zeros(policy.head.cond_dim)
    weights["aux_regression.net.0.weight"] = torch.zeros(4, 4)
    save_file(weights, str(tmp_path / "old" / "model.safetensors"))

    old = load_policy(tmp_path / "old")
    obs = random_batch(small_shape_meta, 2, cfg.n_obs_steps, cfg.horizon)["obs"]
    noise = torch.randn(2, cfg.horizon, small_shape_meta.action_dim)
    torch.testing.assert_close(old.predict_action(obs, noise=noise), policy.predict_action(obs, noise=noise))

    config["policy"]["meanflow"]["prediction"] = "x"
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="predicts x"):
        load_policy(tmp_path / "old")


def test_predict_action_names_the_input_that_broke_it(small_shape_meta):
    """Finite but huge observations (1e38) used to come back as NaN actions without a word; non-numeric values as
    a torch TypeError."""
    cfg = tiny_config("meanflow")
    policy = build_policy(cfg, small_shape_meta, random_stats(small_shape_meta)).eval()
    obs = {k: v[0].numpy() for k, v in random_batch(small_shape_meta, 1, cfg.n_obs_steps, cfg.horizon)["obs"].items()}
    assert np.isfinite(policy.predict_action(obs)).all()
    key = next(k for k, s in small_shape_meta.obs.items() if s.type == "low_dim")
    with pytest.raises(SpecError, match=f"observation '{key}' lies far outside the range it was trained on"):
        policy.predict_action({**obs, key: np.full_like(obs[key], 1e38)})
    with pytest.raises(SpecError, match=f"observation '{key}' is not a numeric array"):
        policy.predict_action({**obs, key: [["a", "b"]]})
