"""Sequence sampler over a demonstration dataset: observation history + action window with DP-style padding.

A sample is ``{"obs": {key: (To, ...)}, "action": (H, Da)}`` in raw units (float32; images 0..255). Its window of
``H = horizon`` steps starts at the first observation step (DP/DP3 alignment). At episode edges the window is
padded by repeating the first / last frame: ``pad_before = n_obs_steps - 1`` windows start before the episode and
``pad_after = n_action_steps - 1`` windows run past its end, so every step can be the current observation and
every executed action is a real one.

Batches for training come from :meth:`SequenceDataset.sample_batch` (vectorized gather through a precomputed
index table); ``__getitem__`` serves a torch ``DataLoader`` the same samples one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from core.spec import ACTION, ShapeMeta, SpecError
from demos.replay_buffer import ReplayBuffer


class SequenceDataset(torch.utils.data.Dataset):
    """Windows of ``horizon`` steps from the training (or validation) episodes of a dataset, held in memory.

    Args:
        replay_buffer_or_path: a :class:`ReplayBuffer` or the path of a zarr dataset or a robomimic HDF5 file
            (read whole into memory).
        shape_meta: the observation keys/shapes and action dim the policy expects; a mismatch raises
            :class:`SpecError` naming the key.
        horizon: action window length H.
        n_obs_steps: observation history To.
        n_action_steps: executed actions per chunk (sets ``pad_after``); default ``horizon - n_obs_steps + 1``.
        val_ratio: fraction of episodes held out for validation (split by episode, seeded).
        seed: seed of the split and of the ``max_train_episodes`` subsample.
        max_train_episodes: keep at most this many training episodes (None = all).
    """

    def __init__(
        self,
        replay_buffer_or_path: ReplayBuffer | str | os.PathLike,
        shape_meta: ShapeMeta,
        horizon: int,
        n_obs_steps: int = 2,
        n_action_steps: int | None = None,
        val_ratio: float = 0.0,
        seed: int = 0,
        max_train_episodes: int | None = None,
    ) -> None:
        if n_action_steps is None:
            n_action_steps = horizon - n_obs_steps + 1
        if horizon < 1 or n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError("horizon, n_obs_steps and n_action_steps must be >= 1")
        if n_obs_steps > horizon or n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"need n_obs_steps - 1 + n_action_steps <= horizon; got {n_obs_steps}, {n_action_steps}, {horizon}"
            )
        if not 0.0 <= val_ratio < 1.0:
            raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
        rb = replay_buffer_or_path
        if isinstance(rb, (str, os.PathLike)):
            from demos.robomimic_hdf5 import is_robomimic_file, load_replay_buffer

            if is_robomimic_file(rb):  # robomimic HDF5: read in the training layout (images (3, H, W))
                rb = load_replay_buffer(rb, obs_keys=list(shape_meta.obs))
        if not isinstance(rb, ReplayBuffer) or not rb.in_memory:
            rb = ReplayBuffer.load(rb)
        _check_layout(rb, shape_meta)
        if rb.n_episodes == 0:
            raise SpecError(f"dataset {rb.path or ''} holds no complete episode")
        self.shape_meta = shape_meta
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.pad_before, self.pad_after = n_obs_steps - 1, n_action_steps - 1
        self.path = rb.path
        self.attrs = rb.attrs
        self.n_episodes_total = rb.n_episodes  # before the validation split and max_train_episodes
        self._ends = rb.episode_ends
        # Float32 copies of everything but images (kept uint8: 4x smaller, cast per batch).
        self._data = {
            key: rb[key] if spec.type == "rgb" else rb[key].astype(np.float32, copy=False)
            for key, spec in shape_meta.obs.items()
        }
        self._data[ACTION] = rb[ACTION].astype(np.float32, copy=False)
        val_mask = _val_mask(rb.n_episodes, val_ratio, seed)
        train_mask = _downsample(~val_mask, max_train_episodes, seed)
        self._val_episodes = np.flatnonzero(val_mask)
        self._select(np.flatnonzero(train_mask))

    def _select(self, episodes: np.ndarray) -> None:
        self.episodes = episodes
        self._index = _window_table(self._ends, episodes, self.horizon, self.pad_before, self.pad_after)

    # ------------------------------------------------------------------ splits
    def get_validation_dataset(self) -> SequenceDataset:
        """The held-out episodes as a dataset sharing this one's memory (empty when ``val_ratio`` was 0)."""
        val = object.__new__(SequenceDataset)
        val.__dict__.update(self.__dict__)
        val._select(self._val_episodes)
        return val

    # ------------------------------------------------------------------ sampling
    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict:
        batch = self.get_batch(np.array([i]))
        return {"obs": {k: v[0] for k, v in batch["obs"].items()}, "action": batch["action"][0]}

    def get_batch(self, indices: np.ndarray) -> dict:
        """Samples ``indices`` as one batch: ``{"obs": {key: (B, To, ...)}, "action": (B, H, Da)}`` float32 tensors."""
        rows = self._index[np.asarray(indices, dtype=np.int64)]  # (B, H) absolute step indices
        obs_rows = rows[:, : self.n_obs_steps]  # (B, To)
        obs = {
            key: torch.from_numpy(np.ascontiguousarray(self._data[key][obs_rows], dtype=np.float32))
            for key in self.shape_meta.obs
        }
        action = torch.from_numpy(self._data[ACTION][rows])  # (B, H, Da)
        return {"obs": obs, "action": action}

    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> dict:
        """``batch_size`` windows drawn uniformly with replacement (see :meth:`get_batch`)."""
        if len(self) == 0:
            raise SpecError("this dataset split has no samples (no episodes selected)")
        return self.get_batch(rng.integers(0, len(self), size=batch_size))

    # ------------------------------------------------------------------ normalizer statistics
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """Per-key ``{"min", "max", "mean", "std"}`` over every step of the selected episodes.

        low_dim keys and ``action``: per dimension, shape (D,). Point clouds: per point channel over all points,
        shape (3,) or (6,). Images are left out (their normalization is fixed: 0..255 → [0, 1]).
        """
        steps = _episode_steps(self._ends, self.episodes)
        out = {}
        for key in [k for k, s in self.shape_meta.obs.items() if s.type != "rgb"] + [ACTION]:
            x = self._data[key][steps]
            x = x.reshape(-1, x.shape[-1])
            out[key] = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
        return out


def _check_layout(rb: ReplayBuffer, shape_meta: ShapeMeta) -> None:
    where = f"dataset {rb.path}" if rb.path else "dataset"
    needed = list(shape_meta.obs) + [ACTION]
    missing = [k for k in needed if k not in rb]
    if missing:
        raise SpecError(
            f"{where} lacks key(s) {missing} that the config needs; it has {rb.keys}. "
            f"Collect a dataset with those observations (mfp collect) or change the observation keys."
        )
    for key, spec in shape_meta.obs.items():
        have = rb.step_shape(key)
        if have != spec.shape:
            raise SpecError(
                f"{where}: '{key}' has per-step shape {have}, the config expects {spec.shape} "
                f"(e.g. a different point count or image size); recollect or change the config"
            )
    if rb.step_shape(ACTION) != (shape_meta.action_dim,):
        raise SpecError(
            f"{where}: 'action' has per-step shape {rb.step_shape(ACTION)}, "
            f"the config expects ({shape_meta.action_dim},)"
        )


def _val_mask(n_episodes: int, val_ratio: float, seed: int) -> np.ndarray:
    mask = np.zeros(n_episodes, dtype=bool)
    n_val = min(int(round(n_episodes * val_ratio)), n_episodes - 1)
    if val_ratio > 0 and n_episodes > 1:
        n_val = max(n_val, 1)
    if n_val > 0:
        mask[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    return mask


def _downsample(mask: np.ndarray, max_n: int | None, seed: int) -> np.ndarray:
    if max_n is None or mask.sum() <= max_n:
        return mask
    keep = np.random.default_rng(seed + 1).choice(np.flatnonzero(mask), size=max_n, replace=False)
    out = np.zeros_like(mask)
    out[keep] = True
    return out


def _window_table(
    ends: np.ndarray, episodes: Sequence[int] | np.ndarray, horizon: int, pad_before: int, pad_after: int
) -> np.ndarray:
    """(N, horizon) absolute step indices of every window, edges clamped to the episode (frame repetition)."""
    rows = []
    offsets = np.arange(horizon)
    for ep in episodes:
        start = int(ends[ep - 1]) if ep > 0 else 0
        length = int(ends[ep]) - start
        first = np.arange(-pad_before, length - horizon + pad_after + 1)  # window start within the episode
        if len(first) == 0:
            continue
        rows.append(np.clip(first[:, None] + offsets[None, :], 0, length - 1) + start)
    if not rows:
        return np.zeros((0, horizon), dtype=np.int64)
    return np.concatenate(rows).astype(np.int64)


def _episode_steps(ends: np.ndarray, episodes: Sequence[int] | np.ndarray) -> np.ndarray:
    parts = [np.arange(int(ends[ep - 1]) if ep > 0 else 0, int(ends[ep])) for ep in episodes]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def shape_meta_from_dataset(path: str | os.PathLike, obs_keys: Sequence[str]) -> ShapeMeta:
    """The :class:`ShapeMeta` of ``obs_keys`` as stored in the dataset at ``path``."""
    return ReplayBuffer.open(path).shape_meta(obs_keys)
