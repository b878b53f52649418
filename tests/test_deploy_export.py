"""`mfp export`: one graph to ONNX and torch.export, parity with eager checked, metadata enough to run it alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.spec import ShapeMeta
from demos.replay_buffer import ReplayBuffer
from deploy.export import export_policy
from deploy.export_format import META_FILE, ExportError
from deploy.exported import ExportedPolicy
from deploy.exported_pt2 import ExportedProgram
from mfp.commands.export import main
from policies.checkpoint import load_policy, save_policy
from policies.config import BackboneConfig, EncoderConfig, PolicyConfig
from policies.factory import build_policy

SHAPE_META = ShapeMeta.from_dict(
    {
        "obs": {
            "point_cloud": {"type": "point_cloud", "shape": [64, 3]},
            "agent_pos": {"type": "low_dim", "shape": [4]},
        },
        "action": {"shape": [4]},
    }
)


def _dataset(path, n_steps: int = 30) -> ReplayBuffer:
    """A small recorded dataset in the demo layout: a cloud drifting over a table and a moving hand."""
    rng = np.random.default_rng(1)
    t = np.linspace(0, 1, n_steps, dtype=np.float32)
    pc = rng.uniform([-0.5, 0.4, 0.0], [0.5, 0.9, 0.3], size=(n_steps, 64, 3)).astype(np.float32)
    pos = np.stack([0.3 * t, 0.6 + 0.1 * t, 0.2 - 0.1 * t, t], axis=1).astype(np.float32)
    action = np.clip(rng.normal(0, 0.5, size=(n_steps, 4)), -1, 1).astype(np.float32)
    buffer = ReplayBuffer.create(
        path,
        {"point_cloud": ((64, 3), np.float32), "agent_pos": ((4,), np.float32), "action": ((4,), np.float32)},
        attrs={"obs_types": {"point_cloud": "point_cloud", "agent_pos": "low_dim"}},
    )
    buffer.add_episode({"point_cloud": pc, "agent_pos": pos, "action": action})
    return buffer


TRAINED_BY = {"package": "0.1.0", "git_commit": "0123456789abcdef0123456789abcdef01234567", "git_dirty": False}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    data = ReplayBuffer.load(_dataset(root / "demo.zarr").path)
    stats = {
        k: {"min": data[k].reshape(-1, data[k].shape[-1]).min(0), "max": data[k].reshape(-1, data[k].shape[-1]).max(0)}
        for k in ("point_cloud", "agent_pos", "action")
    }
    cfg = PolicyConfig(
        head="meanflow",
        horizon=4,
        n_obs_steps=2,
        n_action_steps=3,
        backbone=BackboneConfig(type="unet", down_dims=[16, 32], n_groups=4, time_embed_dim=16),
        encoder=EncoderConfig(point_hidden_dims=[16, 32], point_out_dim=16, state_hidden_dim=16, state_out_dim=8),
    )
    ckpt = save_policy(build_policy(cfg, SHAPE_META, stats), cfg, root / "policy", metadata={"code": TRAINED_BY})
    assert (
        main([f"checkpoint={ckpt}", f"out={root / 'export'}", f"data={root / 'demo.zarr'}", "n_check=6", "hz=50"]) == 0
    )
    return ckpt, root / "export", data


def test_export_writes_graphs_and_the_metadata_to_run_them(exported):
    ckpt, out, _ = exported
    meta = json.loads((out / META_FILE).read_text())
    assert (out / meta["files"]["onnx"]).is_file() and (out / meta["files"]["pt2"]).is_file()
    assert [(i["name"], i["shape"]) for i in meta["inputs"]] == [
        ("point_cloud", [1, 2, 64, 3]),
        ("agent_pos", [1, 2, 4]),
        ("noise", [1, 4, 4]),
    ]
    assert meta["n_obs_steps"] == 2 and meta["n_action_steps"] == 3 and meta["control_hz"] == 50
    assert meta["num_inference_steps"] == 1 and len(meta["normalizer"]["sha256"]) == 64
    assert meta["trained_by"] == TRAINED_BY  # the deployed graph names the commit that trained it
    parity = meta["parity"]
    assert parity["source"].startswith("recorded") and parity["n_windows"] == 6
    assert all(err <= 1e-4 for err in parity["max_abs_error"].values()), parity


RUNTIMES = {"onnx": ExportedPolicy, "pt2": ExportedProgram}


@pytest.mark.parametrize("backend", ["onnx", "pt2"])
def test_exported_graph_acts_like_the_eager_policy(exported, backend):
    ckpt, out, data = exported
    policy = load_policy(ckpt)
    runner = RUNTIMES[backend](out)
    noise = torch.tensor(runner.meta["noise"]["values"])[None]
    for t in (0, 11, 27):
        obs = {k: data[k][t : t + 2] for k in ("point_cloud", "agent_pos")}  # (To, ...) recorded windows
        got = runner.predict_action(obs)
        want = policy.predict_action({k: torch.from_numpy(v)[None] for k, v in obs.items()}, noise=noise)[0].numpy()
        assert got.shape == (3, 4)
        np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(Exception, match="agent_pos"):
        runner.predict_action({"point_cloud": data["point_cloud"][:2], "agent_pos": data["agent_pos"][:2, :3]})
    sampling = RUNTIMES[backend](out, noise="random")
    obs = {k: data[k][:2] for k in ("point_cloud", "agent_pos")}
    sampling.reset(seed=3)
    first = [sampling.predict_action(obs) for _ in range(2)]
    assert not np.array_equal(*first)
    sampling.reset(seed=3)  # an episode's seed restarts its noise stream
    assert all(np.array_equal(a, sampling.predict_action(obs)) for a in first)


def test_parity_failure_is_loud_and_writes_nothing(exported, tmp_path):
    ckpt, _, _ = exported
    with pytest.raises(ExportError, match="does not match eager"):
        export_policy(ckpt, tmp_path / "strict", n_check=4, tolerance=1e-12, formats=("onnx",))
    assert not (tmp_path / "strict").exists() and list(tmp_path.iterdir()) == []


def test_the_onnx_runtime_runs_an_export_without_torch(exported):
    """A robot computer needs numpy and onnxruntime only: running an export imports neither torch nor the
    training code (the import-linter contract says so statically; this runs it)."""
    import subprocess
    import sys
    from pathlib import Path

    _, out, data = exported
    np.savez(out.parent / "obs.npz", point_cloud=data["point_cloud"][:2], agent_pos=data["agent_pos"][:2])
    code = (
        "import sys, numpy as np\n"
        "from deploy.exported import ExportedPolicy\n"
        f"obs = dict(np.load({str(out.parent / 'obs.npz')!r}))\n"
        f"chunk = ExportedPolicy({str(out)!r}).predict_action(obs)\n"
        "assert chunk.shape == (3, 4), chunk.shape\n"
        "heavy = sorted(m for m in ('torch', 'omegaconf', 'hydra', 'policies', 'training') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
