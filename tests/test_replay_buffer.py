"""Zarr demonstration datasets: layout, read-back, crash safety (simulated and a real SIGKILL), collection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.spec import ShapeMeta, SpecError
from demos.dataset import SequenceDataset
from demos.replay_buffer import ReplayBuffer, ReplayBufferError
from envs.metaworld.collect import collect

REPO = Path(__file__).resolve().parents[1]
KEYS = {"point_cloud": ((8, 3), np.float32), "agent_pos": ((4,), np.float32), "action": ((4,), np.float32)}


def make_episode(length: int, tag: float) -> dict[str, np.ndarray]:
    """Values encode (episode tag, step) so any mix-up between episodes or steps is visible."""
    t = np.arange(length, dtype=np.float32)
    return {
        "point_cloud": np.broadcast_to((tag + t / 1000)[:, None, None], (length, 8, 3)).copy(),
        "agent_pos": np.stack([np.full(length, tag), t, t, t], axis=1).astype(np.float32),
        "action": np.stack([np.full(length, tag), t, -t, t], axis=1).astype(np.float32),
    }


def test_create_append_reopen_load(tmp_path):
    path = tmp_path / "d.zarr"
    rb = ReplayBuffer.create(
        path, KEYS, attrs={"task": "reach-v3", "obs_types": {"point_cloud": "point_cloud", "agent_pos": "low_dim"}}
    )
    episodes = [make_episode(n, tag) for n, tag in ((5, 1.0), (3, 2.0), (7, 3.0))]
    for i, ep in enumerate(episodes):
        rb.add_episode(ep, seed=10 + i)
    for reader in (ReplayBuffer.open(path), ReplayBuffer.load(path)):
        assert reader.n_episodes == 3 and reader.n_steps == 15
        np.testing.assert_array_equal(reader.episode_ends, [5, 8, 15])
        np.testing.assert_array_equal(reader.episode_seeds, [10, 11, 12])
        assert reader.attrs["task"] == "reach-v3"
        for i, ep in enumerate(episodes):
            got = reader.get_episode(i)
            for key in KEYS:
                np.testing.assert_array_equal(got[key], ep[key])
    assert ReplayBuffer.load(path).in_memory
    meta = ReplayBuffer.open(path).shape_meta(["point_cloud", "agent_pos"])
    assert meta.obs["point_cloud"].shape == (8, 3) and meta.action_dim == 4
    # The DP/DP3 layout on disk (zarr format 2).
    assert (path / "data" / "point_cloud" / ".zarray").is_file()
    assert (path / "meta" / "episode_ends" / ".zarray").is_file()


def test_add_episode_validates(tmp_path):
    rb = ReplayBuffer.create(tmp_path / "d.zarr", KEYS)
    ep = make_episode(4, 1.0)
    with pytest.raises(ReplayBufferError, match="missing"):
        rb.add_episode({k: v for k, v in ep.items() if k != "action"})
    with pytest.raises(ReplayBufferError, match="equal length"):
        rb.add_episode({**ep, "action": ep["action"][:2]})
    with pytest.raises(ReplayBufferError, match="step shape"):
        rb.add_episode({**ep, "point_cloud": np.zeros((4, 9, 3), np.float32)})
    with pytest.raises(ReplayBufferError, match="read-only"):
        ReplayBuffer.open(tmp_path / "d.zarr").add_episode(ep)
    with pytest.raises(ReplayBufferError, match="already exists"):
        ReplayBuffer.create(tmp_path / "d.zarr", KEYS)


def test_missing_and_corrupt_datasets_give_clear_errors(tmp_path):
    with pytest.raises(ReplayBufferError, match="does not exist.*mfp collect"):
        ReplayBuffer.open(tmp_path / "nope.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ReplayBufferError, match="not a readable DP/DP3 zarr dataset"):
        ReplayBuffer.open(tmp_path / "empty.zarr")
    path = tmp_path / "d.zarr"
    ReplayBuffer.create(path, KEYS).add_episode(make_episode(3, 1.0), seed=0)
    (path / "meta" / "episode_ends" / ".zarray").write_text("{ not json")
    with pytest.raises(ReplayBufferError, match=str(path.name)):
        ReplayBuffer.open(path)


def _simulate_partial_episode(path: Path, length: int, stage: str) -> None:
    """Leave the on-disk state of a writer killed while appending an episode of ``length`` steps."""
    import zarr

    root = zarr.open_group(str(path), mode="r+")
    n_steps = int(root["meta/episode_ends"][-1]) if root["meta/episode_ends"].shape[0] else 0
    keys = list(root["data"].array_keys())
    written = keys if stage != "some_data" else keys[:1]
    for key in written:
        arr = root["data"][key]
        arr.resize((n_steps + length, *arr.shape[1:]))
        arr[n_steps:] = 99.0
    if stage in ("seed", "ends_resized"):
        seeds = root["meta/episode_seeds"]
        seeds.resize((seeds.shape[0] + 1,))
        seeds[-1] = 99
    if stage == "ends_resized":  # resized, value never written: reads as the fill value 0
        ends = root["meta/episode_ends"]
        ends.resize((ends.shape[0] + 1,))


@pytest.mark.parametrize("stage", ["some_data", "all_data", "seed", "ends_resized"])
def test_partial_episode_is_invisible_then_truncated(tmp_path, stage):
    path = tmp_path / "d.zarr"
    rb = ReplayBuffer.create(path, KEYS)
    first = make_episode(4, 1.0)
    rb.add_episode(first, seed=0)
    _simulate_partial_episode(path, 6, stage)
    reader = ReplayBuffer.open(path)  # read-only: ignores the partial episode
    assert reader.n_episodes == 1 and reader["action"].shape == (4, 4)
    writer = ReplayBuffer.open(path, mode="a")  # truncates, then appends cleanly
    second = make_episode(2, 2.0)
    writer.add_episode(second, seed=1)
    back = ReplayBuffer.load(path)
    assert back.n_episodes == 2 and back.n_steps == 6
    np.testing.assert_array_equal(back.get_episode(1)["action"], second["action"])
    import zarr

    root = zarr.open_group(str(path), mode="r")
    assert all(root["data"][k].shape[0] == 6 for k in KEYS)


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    partial=st.integers(1, 6),
    stage=st.sampled_from(["some_data", "all_data", "seed", "ends_resized"]),
)
def test_any_kill_point_keeps_exactly_the_complete_episodes(lengths, partial, stage):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.zarr"
        rb = ReplayBuffer.create(path, KEYS)
        for i, n in enumerate(lengths):
            rb.add_episode(make_episode(n, float(i)), seed=i)
        _simulate_partial_episode(path, partial, stage)
        back = ReplayBuffer.load(ReplayBuffer.open(path, mode="a"))
        assert back.n_episodes == len(lengths)
        np.testing.assert_array_equal(back.episode_lengths, lengths)
        for i, n in enumerate(lengths):
            np.testing.assert_array_equal(back.get_episode(i)["action"], make_episode(n, float(i))["action"])


# ---------------------------------------------------------------------------------------------- real collection
COLLECT_ARGS = dict(
    num_points=128, image_cameras=("corner2",), image_size=32, depth_size=64, max_steps=100, progress=False
)


def test_two_episode_collection_reads_back(tmp_path):
    path = tmp_path / "reach.zarr"
    summary = collect("reach-v3", 2, path, **COLLECT_ARGS)
    assert summary["n_episodes"] == 2 and summary["new_episodes"] == 2
    rb = ReplayBuffer.load(path)
    assert rb.n_episodes == 2
    assert set(rb.keys) == {"point_cloud", "image", "agent_pos", "goal_pos", "full_state", "action"}
    T = rb.n_steps
    assert rb["point_cloud"].shape == (T, 128, 3) and rb["point_cloud"].dtype == np.float32
    assert rb["image"].shape == (T, 3, 32, 32) and rb["image"].dtype == np.uint8
    assert rb["full_state"].shape == (T, 39) and rb["action"].shape == (T, 4)
    np.testing.assert_array_equal(rb["agent_pos"], rb["full_state"][:, :4])
    np.testing.assert_array_equal(rb["goal_pos"], rb["full_state"][:, -3:])
    np.testing.assert_array_equal(rb.episode_seeds, [0, 1])
    attrs = rb.attrs
    assert attrs["task"] == "reach-v3" and attrs["num_points"] == 128 and attrs["metaworld_version"] != "unknown"
    assert attrs["camera_params"]["point_cloud"]["corner2"]["fovy"] == 60.0
    assert np.array(attrs["crop_box"]).shape == (2, 3)
    json.dumps(attrs)  # attributes are plain JSON
    # Each kept episode ends with >= 5 successful steps (stop_on_success): the expert's last actions are small.
    assert np.all(rb.episode_lengths < 100)
    # The sampler reads it with the dataset's own shape_meta.
    ds = SequenceDataset(path, rb.shape_meta(["point_cloud", "agent_pos"]), horizon=4, n_obs_steps=2)
    batch = ds.sample_batch(np.random.default_rng(0), 8)
    assert batch["obs"]["point_cloud"].shape == (8, 2, 128, 3) and batch["action"].shape == (8, 4, 4)
    # A rerun with other settings refuses to mix them into the dataset.
    with pytest.raises(ReplayBufferError, match="num_points"):
        collect("reach-v3", 3, path, **{**COLLECT_ARGS, "num_points": 64})
    wrong = ShapeMeta.from_dict(
        {"obs": {"point_cloud": {"type": "point_cloud", "shape": [512, 3]}}, "action": {"shape": [4]}}
    )
    with pytest.raises(SpecError, match=r"'point_cloud' has per-step shape \(128, 3\)"):
        SequenceDataset(path, wrong, horizon=4)


_KILL_SCRIPT = """
import sys
from envs.metaworld.collect import collect
collect("reach-v3", 4, sys.argv[1], num_points=64, image_cameras=(), depth_size=64, max_steps=100, progress=False)
"""


def test_killed_collection_leaves_complete_episodes_and_rerun_finishes(tmp_path):
    path = tmp_path / "reach.zarr"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if path.exists() and ReplayBuffer.open(path).n_episodes >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"collector ended early: {proc.stderr.read().decode()[-2000:]}"
        time.sleep(0.3)  # well inside the next episode (each takes ~1 s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = ReplayBuffer.open(path)
    n_killed = killed.n_episodes
    assert 1 <= n_killed < 4
    kept = ReplayBuffer.load(path)
    assert kept.n_steps == int(kept.episode_ends[-1]) and len(kept["action"]) == kept.n_steps
    first_episode = kept.get_episode(0)
    summary = collect(
        "reach-v3", 4, path, num_points=64, image_cameras=(), depth_size=64, max_steps=100, progress=False
    )
    assert summary["new_episodes"] == 4 - n_killed
    done = ReplayBuffer.load(path)
    assert done.n_episodes == 4
    np.testing.assert_array_equal(done.episode_seeds, [0, 1, 2, 3])  # reach always succeeds: no seed skipped
    for key, value in first_episode.items():
        np.testing.assert_array_equal(done.get_episode(0)[key], value)
    # Rerunning the finished collection adds nothing.
    assert (
        collect("reach-v3", 4, path, num_points=64, image_cameras=(), depth_size=64, max_steps=100, progress=False)[
            "new_episodes"
        ]
        == 0
    )
