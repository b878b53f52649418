"""Episode recorder: what the control loop saw and commanded, in the demonstration dataset layout.

One control-loop run is one episode, appended to a zarr dataset written by :class:`demos.replay_buffer.ReplayBuffer`
(``data/<key>``, ``meta/episode_ends``), so runs can be replayed, inspected and used for fine-tuning with the same
loaders as demonstrations. Per tick it stores every observation key, ``action`` (the command actually sent after the
safety layer; for a hold, the command that keeps the arm still), ``timestamp`` (observation capture time, loop clock,
float64) and ``hold`` (uint8, 1 where the tick held). Ticks whose observation had NaN/inf are not recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from demos.replay_buffer import ReplayBuffer

ACTION, TIMESTAMP, HOLD = "action", "timestamp", "hold"


def _obs_type(key: str, shape: tuple[int, ...], known: Mapping[str, str]) -> str:
    if key in known:
        return known[key]
    return {1: "low_dim", 2: "point_cloud", 3: "rgb"}.get(len(shape), "low_dim")


class EpisodeRecorder:
    """Collects ticks in memory; :meth:`save` appends them as one episode (creating the dataset if needed).

    Args:
        path: dataset directory (``.zarr``).
        obs_types: observation key → ``point_cloud | rgb | low_dim`` (the policy's ``shape_meta``); other keys
            are typed by their number of dims.
        attrs: extra dataset attributes written on creation (robot, control rate, checkpoint, ...).
    """

    def __init__(
        self, path: str | Path, obs_types: Mapping[str, str] | None = None, attrs: Mapping[str, Any] | None = None
    ) -> None:
        self.path = Path(path)
        self._types = dict(obs_types or {})
        self._attrs = dict(attrs or {})
        self._steps: list[tuple[dict[str, np.ndarray], np.ndarray, float, bool]] = []

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, obs: Mapping[str, np.ndarray], action: np.ndarray, timestamp: float, hold: bool) -> None:
        self._steps.append(
            (
                {k: np.asarray(v) for k, v in obs.items()},
                np.asarray(action, dtype=np.float32),
                float(timestamp),
                bool(hold),
            )
        )

    def save(self, seed: int = -1) -> ReplayBuffer | None:
        """Append the collected ticks as one episode; None when nothing was recorded."""
        if not self._steps:
            return None
        keys = list(self._steps[0][0])
        episode = {k: np.stack([s[0][k] for s in self._steps]) for k in keys}
        episode[ACTION] = np.stack([s[1] for s in self._steps])
        episode[TIMESTAMP] = np.array([s[2] for s in self._steps], dtype=np.float64)
        episode[HOLD] = np.array([s[3] for s in self._steps], dtype=np.uint8)
        if self.path.exists():
            buffer = ReplayBuffer.open(self.path, mode="a")
        else:
            layout = {k: (v.shape[1:], v.dtype) for k, v in episode.items()}
            types = {k: _obs_type(k, episode[k].shape[1:], self._types) for k in keys}
            attrs = {"source": "mfp deploy", "obs_types": types, **self._attrs}
            buffer = ReplayBuffer.create(self.path, layout, attrs=attrs)
        buffer.add_episode(episode, seed=seed)
        self._steps.clear()
        return buffer
