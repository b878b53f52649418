"""The whole deployment path on this machine: demos → tiny trained policy → export (parity on recorded observations)
→ `mfp deploy` of the exported graph against the simulated-arm process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_deploy_loop import HZ, NUM_POINTS, REPO, SimArmProcess, _env

pytestmark = pytest.mark.slow


def test_trained_policy_exports_and_drives_the_sim_arm(tmp_path):
    from demos.dataset import SequenceDataset
    from demos.replay_buffer import ReplayBuffer
    from deploy.export import export_policy
    from envs.metaworld.collect import collect
    from policies.checkpoint import save_policy
    from policies.config import BackboneConfig, EncoderConfig, PolicyConfig
    from policies.factory import build_policy

    torch.set_num_threads(1)
    torch.manual_seed(0)
    demos = tmp_path / "reach.zarr"
    collect("reach-v3", 2, demos, num_points=NUM_POINTS, image_cameras=(), max_steps=100, progress=False)
    keys = ["point_cloud", "agent_pos"]
    shape_meta = ReplayBuffer.open(demos).shape_meta(keys)
    cfg = PolicyConfig(
        head="meanflow",
        horizon=4,
        n_obs_steps=2,
        n_action_steps=3,
        backbone=BackboneConfig(type="mlp", hidden_dim=128, n_layers=2, time_embed_dim=32),
        encoder=EncoderConfig(point_hidden_dims=[32, 64], point_out_dim=32, state_hidden_dim=32, state_out_dim=16),
    )
    data = SequenceDataset(demos, shape_meta, horizon=4, n_obs_steps=2, n_action_steps=3)
    policy = build_policy(cfg, shape_meta, data.stats())
    probe = data.get_batch(np.arange(0, len(data), 3))

    def action_error() -> float:  # 1-NFE chunk vs the demonstrated chunk, robot units
        with torch.no_grad():
            pred = policy.predict_action(probe["obs"], generator=torch.Generator().manual_seed(0))
        return float((pred - probe["action"][:, 1:4]).abs().mean())

    before = action_error()
    opt = torch.optim.AdamW(policy.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    for _ in range(300):
        loss, _ = policy.compute_loss(data.sample_batch(rng, 32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = action_error()
    assert after < 0.6 * before, (before, after)
    ckpt = save_policy(policy.eval(), cfg, tmp_path / "policy")

    meta = export_policy(ckpt, tmp_path / "export", data=str(demos), n_check=8, hz=HZ)
    assert meta["parity"]["source"].startswith("recorded")
    assert max(meta["parity"]["max_abs_error"].values()) <= 1e-4

    arm = SimArmProcess(tmp_path / "commands.jsonl")
    try:
        cmd = [
            sys.executable,
            "-m",
            "mfp.cli",
            "deploy",
            f"checkpoint={tmp_path / 'export'}",
            f"robot={arm.address}",
            f"hz={HZ}",
            "duration_s=3",
            f"stats={tmp_path / 'stats.json'}",
            f"record={tmp_path / 'run.zarr'}",
        ]
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180)
    finally:
        arm.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    # Most ticks carry an action; on a loaded 2-core box the watchdog rightly holds for some (measured 79 % there).
    assert stats["actions_sent"] >= 0.6 * stats["ticks"], stats
    run = ReplayBuffer.load(tmp_path / "run.zarr")
    # The exported policy moved the hand: its recorded positions span more than the hold jitter.
    assert np.ptp(run["agent_pos"][:, :3], axis=0).max() > 0.01
