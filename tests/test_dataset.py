"""Sequence sampler: windows, DP padding at episode edges, splits, statistics, layout checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.spec import ShapeMeta, SpecError
from demos.dataset import SequenceDataset
from demos.replay_buffer import ReplayBuffer

N_POINTS = 6


def step_coded_buffer(lengths: list[int], with_image: bool = False) -> ReplayBuffer:
    """In-memory dataset whose every value encodes its global step index (so windows can be read back)."""
    T = sum(lengths)
    t = np.arange(T, dtype=np.float32)
    data = {
        "point_cloud": np.broadcast_to(t[:, None, None], (T, N_POINTS, 3)) + np.arange(3, dtype=np.float32),
        "agent_pos": np.stack([t, t + 0.5, -t, t * 2], axis=1),
        "action": np.stack([t, -t, t + 1, t * 3], axis=1),
    }
    if with_image:
        data["image"] = (np.broadcast_to(t[:, None, None, None], (T, 3, 4, 4)) % 256).astype(np.uint8)
    ends = np.cumsum(lengths)
    return ReplayBuffer(data, ends, np.arange(len(lengths)), attrs={"task": "synthetic"})


def meta(with_image: bool = False) -> ShapeMeta:
    obs = {
        "point_cloud": {"type": "point_cloud", "shape": [N_POINTS, 3]},
        "agent_pos": {"type": "low_dim", "shape": [4]},
    }
    if with_image:
        obs["image"] = {"type": "rgb", "shape": [3, 4, 4]}
    return ShapeMeta.from_dict({"obs": obs, "action": {"shape": [4]}})


def test_padding_repeats_first_and_last_frames():
    ds = SequenceDataset(step_coded_buffer([6]), meta(), horizon=4, n_obs_steps=2, n_action_steps=3)
    assert (ds.pad_before, ds.pad_after) == (1, 2)
    assert len(ds) == 6  # every step is the current observation exactly once
    first, last = ds[0], ds[len(ds) - 1]
    np.testing.assert_array_equal(first["obs"]["agent_pos"][:, 0], [0, 0])  # first frame repeated
    np.testing.assert_array_equal(first["action"][:, 0], [0, 0, 1, 2])
    np.testing.assert_array_equal(last["obs"]["agent_pos"][:, 0], [4, 5])
    np.testing.assert_array_equal(last["action"][:, 0], [4, 5, 5, 5])  # last frame repeated
    # Executed actions (window[To-1 : To-1+Ta]) of the last window are real: the last step then repeats.
    currents = [int(ds[i]["obs"]["agent_pos"][-1, 0]) for i in range(len(ds))]
    assert currents == list(range(6))


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    horizon=st.integers(1, 6),
    n_obs=st.integers(1, 3),
    n_act=st.integers(1, 4),
)
def test_windows_stay_inside_their_episode(lengths, horizon, n_obs, n_act):
    if n_obs - 1 + n_act > horizon:
        return
    ds = SequenceDataset(step_coded_buffer(lengths), meta(), horizon=horizon, n_obs_steps=n_obs, n_action_steps=n_act)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    expected = sum(max(0, n + (n_obs - 1) + (n_act - 1) - horizon + 1) for n in lengths)
    assert len(ds) == expected
    if len(ds) == 0:
        return
    batch = ds.get_batch(np.arange(len(ds)))
    steps = batch["action"][:, :, 0].numpy().astype(int)  # (N, H) global step of each window slot
    assert batch["obs"]["agent_pos"].shape == (len(ds), n_obs, 4)
    np.testing.assert_array_equal(batch["obs"]["agent_pos"][:, :, 0].numpy().astype(int), steps[:, :n_obs])
    for row in steps:
        ep = np.searchsorted(ends, row[0], side="right")
        assert np.all((row >= starts[ep]) & (row < ends[ep]))
        d = np.diff(row)
        assert np.all((d == 0) | (d == 1))  # consecutive, with repeats only from edge padding
        inner = row[(row > starts[ep]) & (row < ends[ep] - 1)]
        assert len(inner) == len(np.unique(inner))


def test_batches_are_float32_tensors_and_match_single_samples():
    ds = SequenceDataset(step_coded_buffer([5, 7], with_image=True), meta(with_image=True), horizon=4, n_obs_steps=2)
    idx = np.array([0, 3, 11, 3])
    batch = ds.get_batch(idx)
    assert batch["obs"]["point_cloud"].shape == (4, 2, N_POINTS, 3)
    assert batch["obs"]["image"].shape == (4, 2, 3, 4, 4)
    assert all(v.dtype == torch.float32 for v in batch["obs"].values()) and batch["action"].dtype == torch.float32
    assert batch["obs"]["image"].max() > 1.0  # raw 0..255 units: the policy's normalizer scales images
    for j, i in enumerate(idx):
        one = ds[int(i)]
        torch.testing.assert_close(one["action"], batch["action"][j])
        torch.testing.assert_close(one["obs"]["image"], batch["obs"]["image"][j])
    sampled = ds.sample_batch(np.random.default_rng(0), 64)
    assert sampled["action"].shape == (64, 4, 4)
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    assert next(iter(loader))["obs"]["agent_pos"].shape == (5, 2, 4)


def test_split_by_episode_is_disjoint_and_seeded():
    rb = step_coded_buffer([4, 5, 6, 7, 8, 9, 10, 11, 12, 13])
    a = SequenceDataset(rb, meta(), horizon=4, n_obs_steps=2, val_ratio=0.3, seed=1)
    b = SequenceDataset(rb, meta(), horizon=4, n_obs_steps=2, val_ratio=0.3, seed=1)
    val = a.get_validation_dataset()
    assert len(val.episodes) == 3 and len(a.episodes) == 7
    assert set(a.episodes).isdisjoint(val.episodes) and set(a.episodes) | set(val.episodes) == set(range(10))
    np.testing.assert_array_equal(a.episodes, b.episodes)
    # Validation windows only touch validation episodes.
    steps = val.get_batch(np.arange(len(val)))["action"][:, 0, 0].numpy().astype(int)
    ends = np.cumsum(rb.episode_lengths)
    assert set(np.searchsorted(ends, steps, side="right")) <= set(val.episodes)
    few = SequenceDataset(rb, meta(), horizon=4, n_obs_steps=2, val_ratio=0.3, seed=1, max_train_episodes=2)
    assert len(few.episodes) == 2 and set(few.episodes) <= set(a.episodes)
    assert len(SequenceDataset(rb, meta(), horizon=4).get_validation_dataset()) == 0


def test_stats_cover_training_episodes_per_coordinate():
    rb = step_coded_buffer([5, 6, 7, 8])
    ds = SequenceDataset(rb, meta(), horizon=4, n_obs_steps=2, val_ratio=0.25, seed=0)
    stats = ds.stats()
    assert set(stats) == {"point_cloud", "agent_pos", "action"}
    steps = np.concatenate(
        [np.arange(rb.episode_ends[e] - rb.episode_lengths[e], rb.episode_ends[e]) for e in ds.episodes]
    )
    pts = rb["point_cloud"][steps].reshape(-1, 3)
    assert stats["point_cloud"]["min"].shape == (3,)
    np.testing.assert_allclose(stats["point_cloud"]["min"], pts.min(0))
    np.testing.assert_allclose(stats["point_cloud"]["max"], pts.max(0))
    np.testing.assert_allclose(stats["action"]["max"], rb["action"][steps].max(0))
    assert "image" not in SequenceDataset(step_coded_buffer([5], True), meta(True), horizon=4).stats()


def test_layout_mismatches_name_the_key():
    rb = step_coded_buffer([5])
    wrong_points = ShapeMeta.from_dict(
        {"obs": {"point_cloud": {"type": "point_cloud", "shape": [512, 3]}}, "action": {"shape": [4]}}
    )
    with pytest.raises(SpecError, match=r"'point_cloud' has per-step shape \(6, 3\).*expects \(512, 3\)"):
        SequenceDataset(rb, wrong_points, horizon=4)
    missing = ShapeMeta.from_dict({"obs": {"image": {"type": "rgb", "shape": [3, 4, 4]}}, "action": {"shape": [4]}})
    with pytest.raises(SpecError, match=r"lacks key\(s\) \['image'\]"):
        SequenceDataset(rb, missing, horizon=4)
    wrong_action = ShapeMeta.from_dict(
        {"obs": {"agent_pos": {"type": "low_dim", "shape": [4]}}, "action": {"shape": [7]}}
    )
    with pytest.raises(SpecError, match="'action'"):
        SequenceDataset(rb, wrong_action, horizon=4)
    with pytest.raises(ValueError, match="horizon"):
        SequenceDataset(rb, meta(), horizon=2, n_obs_steps=2, n_action_steps=2)
