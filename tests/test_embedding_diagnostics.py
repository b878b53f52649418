"""benchmarks/embedding_diagnostics.py on a saved policy and a real zarr dataset made here, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import random_stats
from test_policy import tiny_config

from benchmarks import embedding_diagnostics
from demos.replay_buffer import ReplayBuffer
from policies.checkpoint import save_policy
from policies.factory import build_policy


def make_run(tmp_path: Path, shape_meta) -> Path:
    """A run folder as `mfp train` leaves it: config.json naming its dataset, and the policy checkpoint."""
    rng = np.random.default_rng(0)
    dataset = tmp_path / "demos.zarr"
    rb = ReplayBuffer.create(
        dataset, {"point_cloud": ((64, 3), np.float32), "agent_pos": ((4,), np.float32), "action": ((4,), np.float32)}
    )
    for _ in range(2):
        rb.add_episode(
            {
                "point_cloud": rng.normal(size=(12, 64, 3)).astype(np.float32),
                "agent_pos": rng.normal(size=(12, 4)).astype(np.float32),
                "action": rng.normal(size=(12, 4)).astype(np.float32),
            }
        )
    cfg = tiny_config("meanflow")
    run = tmp_path / "run"
    save_policy(build_policy(cfg, shape_meta, random_stats(shape_meta)), cfg, run / "policy")
    (run / "config.json").write_text(json.dumps({"task": {"dataset": str(dataset)}}))
    return run


def test_row_measures_the_saved_policy_on_its_dataset(tmp_path, small_shape_meta):
    run = make_run(tmp_path, small_shape_meta)
    row = embedding_diagnostics.embedding_row(run, windows=16, seed=0)
    assert len(row) == len(embedding_diagnostics.COLUMNS) and row[1] == str(2 * 2 * 16)
    cos, erank, erank_c = (float(x) for x in row[2:5])
    assert -1 <= cos <= 1 and 0 < erank <= 16 and 0 < erank_c <= 16
    assert row == embedding_diagnostics.embedding_row(run, windows=16, seed=0), "a seeded sample repeats"


def test_missing_config_and_missing_dataset_say_what_to_do(tmp_path, small_shape_meta):
    with pytest.raises(SystemExit, match="no config.json; pass the folder `mfp train` wrote"):
        embedding_diagnostics.embedding_row(tmp_path / "nowhere", windows=4, seed=0)
    run = make_run(tmp_path, small_shape_meta)
    (run / "config.json").write_text(json.dumps({"task": {"dataset": str(tmp_path / "gone.zarr")}}))
    with pytest.raises(SystemExit, match="gone.zarr is missing"):
        embedding_diagnostics.embedding_row(run, windows=4, seed=0)
