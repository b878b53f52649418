"""Demonstration datasets in the diffusion_policy / DP3 zarr layout, appended one episode at a time, crash-safe.

Layout (zarr format 2 on disk, the format DP/DP3 tools read)::

    <path>/data/<key>            (T_total, ...) per-step arrays: point_cloud, image, agent_pos, action, full_state
    <path>/meta/episode_ends     (E,) int64, exclusive end index of each episode in the data arrays
    <path>/meta/episode_seeds    (E,) int64, the env seed of each episode
    <path>/.zattrs               task, metaworld version, camera parameters, crop box, point count, obs types ...

Crash safety: an episode is written data arrays first, then its seed, then its entry in ``episode_ends``
(the commit). Zarr writes each file atomically (temporary file + rename), so a process killed at any moment
leaves ``episode_ends`` describing only complete episodes, plus at most one trailing entry still at its fill value
0; opening the dataset keeps the committed episodes and ignores (mode ``"r"``) or truncates (mode ``"a"``) what
lies beyond them. A new dataset is created in a temporary directory and renamed into place, so it either exists
whole or not at all.

Integrity: anything else is damage, and opening the dataset says where instead of reading zeros: ``episode_ends``
not strictly increasing, an episode end past the length of a data array, a missing seed, a chunk file missing
(every chunk is written, even one of zeros, since format 2) or shorter than its compressed header says, a missing
root attribute file. :meth:`ReplayBuffer.load` also refuses NaN/inf and values beyond ``MAX_ABS_VALUE``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from core.atomic_write import replace_dir
from core.errors import MfpError
from core.spec import ObsSpec, ShapeMeta, SpecError

FORMAT = "mfp-replay-buffer/2"  # 2: every chunk is written, so a missing one is damage, not zeros
_ZARR3 = int(zarr.__version__.split(".")[0]) >= 3
if _ZARR3:
    # zarr 3 skips chunks that hold only the fill value; this package writes them, so a missing chunk file is
    # damage and never silently reads as zeros (zarr 2.11+ writes them by default). The setting is read when an
    # array is opened, so it is set once for the process.
    zarr.config.set({"array.write_empty_chunks": True})
_CHUNK_BYTES = 1 << 20
MAX_ABS_VALUE = 1e6  # a recorded float beyond this (metres, radians, normalized commands) is a corrupt value


class ReplayBufferError(MfpError, ValueError):
    """A dataset that is missing, corrupt, or not in the expected layout."""


class ReplayBuffer:
    """Episodes stored as per-key arrays concatenated along time plus ``episode_ends``.

    Build with :meth:`create` (new, writable), :meth:`open` (existing, on disk) or :meth:`load` (existing, read
    whole into memory). Arrays returned by indexing hold only complete episodes.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        episode_ends: np.ndarray,
        episode_seeds: np.ndarray,
        attrs: Mapping[str, Any],
        group: Any = None,
        path: Path | None = None,
    ) -> None:
        self._data = dict(data)
        self._ends = np.asarray(episode_ends, dtype=np.int64)
        self._seeds = np.asarray(episode_seeds, dtype=np.int64)
        self.attrs = dict(attrs)
        self._group = group
        self.path = path

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        keys: Mapping[str, tuple[Sequence[int], Any]],
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> ReplayBuffer:
        """A new empty dataset at ``path`` with arrays ``{key: (per-step shape, dtype)}``, open for appending."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ReplayBufferError(f"dataset '{path}' already exists; open it to append or pass overwrite=True")
        if not keys:
            raise ReplayBufferError("a dataset needs at least one data key")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        root = _open_group(tmp, "w")
        for key, (shape, dtype) in keys.items():
            shape = tuple(int(s) for s in shape)
            step_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            chunk_t = max(1, min(1000, _CHUNK_BYTES // max(1, step_bytes)))
            _create_array(root, f"data/{key}", (0, *shape), (chunk_t, *shape), dtype)
        _create_array(root, "meta/episode_ends", (0,), (4096,), np.int64)
        _create_array(root, "meta/episode_seeds", (0,), (4096,), np.int64)
        root.attrs.update({"format": FORMAT, **dict(attrs or {})})
        del root
        if path.exists():  # overwrite: swapped in one step, the old dataset stays whole until then
            replace_dir(tmp, path)
            return cls.open(path, mode="a")
        try:
            os.replace(tmp, path)
        except OSError as e:  # another process created the dataset meanwhile (os.replace keeps a non-empty dir)
            shutil.rmtree(tmp, ignore_errors=True)
            raise ReplayBufferError(
                f"dataset '{path}' was created by another process while this one made it ({e}); "
                "open it to append, or collect into another path"
            ) from e
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> ReplayBuffer:
        """Open ``path`` on disk. ``mode="a"`` also truncates any partial episode left by a killed writer."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got '{mode}'")
        path = Path(path)
        if not path.exists():
            raise ReplayBufferError(
                f"dataset '{path}' does not exist; generate it with `mfp collect task=<task> out={path}`"
            )
        try:
            root = _open_group(path, "r+" if mode == "a" else "r")
            attrs = dict(root.attrs)
            meta = root["meta"]
            data_group = root["data"]
            ends_arr = meta["episode_ends"]
            seeds_arr = meta["episode_seeds"] if "episode_seeds" in meta else None
            data = {key: data_group[key] for key in data_group.array_keys()}
        except ReplayBufferError:
            raise
        except Exception as e:  # zarr raises KeyError, FileNotFoundError, JSON and codec errors here
            raise ReplayBufferError(
                f"'{path}' is not a readable DP/DP3 zarr dataset (need data/<key> arrays and meta/episode_ends): "
                f"{type(e).__name__}: {e}"
            ) from e
        if not data:
            raise ReplayBufferError(f"dataset '{path}' has no arrays under data/")
        if ends_arr.ndim != 1:
            raise ReplayBufferError(f"'{path}/meta/episode_ends' must be 1-D, has shape {ends_arr.shape}")
        try:
            ends = np.asarray(ends_arr[:], dtype=np.int64)
            seeds = np.asarray(seeds_arr[:], dtype=np.int64) if seeds_arr is not None else np.full(len(ends), -1)
        except Exception as e:
            raise ReplayBufferError(
                f"'{path}/meta' cannot be read ({type(e).__name__}: {e}); the dataset is corrupt"
            ) from e
        lengths = {key: int(arr.shape[0]) for key, arr in data.items()}
        n_valid = _committed_episodes(path, ends, lengths, len(seeds) if seeds_arr is not None else None)
        ends = ends[:n_valid]
        seeds = seeds[:n_valid] if seeds_arr is not None else np.full(n_valid, -1, dtype=np.int64)
        _check_stored(path, root, attrs, seeds_arr is not None, int(ends[-1]) if n_valid else 0, n_valid)
        if mode == "a":
            _truncate(ends_arr, seeds_arr, data, n_valid, int(ends[-1]) if n_valid else 0)
        group = root if mode == "a" else None
        return cls(data, ends, seeds, attrs, group=group, path=path)

    @classmethod
    def load(cls, source: str | os.PathLike | ReplayBuffer) -> ReplayBuffer:
        """The complete episodes of a dataset, read whole into memory (numpy arrays)."""
        rb = source if isinstance(source, ReplayBuffer) else cls.open(source, mode="r")
        n = rb.n_steps
        try:
            data = {key: np.asarray(arr[:n]) for key, arr in rb._data.items()}
        except Exception as e:
            raise ReplayBufferError(
                f"'{rb.path}': reading the data arrays failed ({type(e).__name__}: {e}); the dataset is corrupt"
            ) from e
        for key, values in data.items():
            _check_values(rb.path, key, values, rb._ends)
        return cls(data, rb._ends.copy(), rb._seeds.copy(), rb.attrs, group=None, path=rb.path)

    # ------------------------------------------------------------------ reading
    @property
    def keys(self) -> list[str]:
        return list(self._data)

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    @property
    def episode_seeds(self) -> np.ndarray:
        return self._seeds.copy()

    @property
    def in_memory(self) -> bool:
        return all(isinstance(a, np.ndarray) for a in self._data.values())

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __getitem__(self, key: str) -> np.ndarray:
        """All complete steps of ``key``: (n_steps, ...)."""
        if key not in self._data:
            raise KeyError(f"dataset {self.path or ''} has no key '{key}'; it has {self.keys}")
        arr = self._data[key]
        return arr[: self.n_steps] if isinstance(arr, np.ndarray) else np.asarray(arr[: self.n_steps])

    def step_shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._data[key].shape[1:])

    def get_episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i`` as ``{key: (T_i, ...)}``."""
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range; the dataset has {self.n_episodes}")
        i %= self.n_episodes
        start = int(self._ends[i - 1]) if i > 0 else 0
        end = int(self._ends[i])
        return {key: np.asarray(arr[start:end]) for key, arr in self._data.items()}

    def shape_meta(self, obs_keys: Sequence[str], action_key: str = "action") -> ShapeMeta:
        """:class:`ShapeMeta` of ``obs_keys`` from the stored shapes and the ``obs_types`` attribute."""
        types = self.attrs.get("obs_types", {})
        specs = {}
        for key in obs_keys:
            if key not in self._data:
                raise SpecError(f"dataset {self.path or ''} has no key '{key}'; it has {self.keys}")
            if key not in types:
                raise SpecError(
                    f"dataset {self.path or ''} does not record the observation type of '{key}' "
                    f"(attribute obs_types = {types})"
                )
            specs[key] = ObsSpec(key, types[key], self.step_shape(key))
        if action_key not in self._data or len(self.step_shape(action_key)) != 1:
            raise SpecError(f"dataset {self.path or ''} needs a (T, Da) '{action_key}' array")
        return ShapeMeta(obs=specs, action_dim=self.step_shape(action_key)[0])

    # ------------------------------------------------------------------ writing
    def add_episode(self, episode: Mapping[str, np.ndarray], seed: int = -1) -> None:
        """Append one complete episode ``{key: (T, ...)}`` (every dataset key, equal T >= 1)."""
        if self._group is None:
            raise ReplayBufferError("this dataset is read-only; open it with mode='a' to append")
        missing = [k for k in self._data if k not in episode]
        extra = [k for k in episode if k not in self._data]
        if missing or extra:
            raise ReplayBufferError(f"episode keys do not match the dataset: missing {missing}, unexpected {extra}")
        lengths = {k: len(v) for k, v in episode.items()}
        T = next(iter(lengths.values()))
        if T < 1 or any(n != T for n in lengths.values()):
            raise ReplayBufferError(f"episode arrays need one equal length >= 1, got {lengths}")
        for key, value in episode.items():
            if tuple(np.shape(value)[1:]) != self.step_shape(key):
                raise ReplayBufferError(
                    f"episode '{key}' has step shape {tuple(np.shape(value)[1:])}; "
                    f"the dataset stores {self.step_shape(key)}"
                )
        start = self.n_steps
        for key, value in episode.items():
            arr = self._data[key]
            arr.resize((start + T, *arr.shape[1:]))
            arr[start : start + T] = np.asarray(value, dtype=arr.dtype)
        meta = self._group["meta"]
        n = self.n_episodes
        seeds_arr, ends_arr = meta["episode_seeds"], meta["episode_ends"]
        seeds_arr.resize((n + 1,))
        seeds_arr[n] = int(seed)
        ends_arr.resize((n + 1,))
        ends_arr[n] = start + T  # the commit: the episode exists from here on
        self._ends = np.append(self._ends, start + T)
        self._seeds = np.append(self._seeds, int(seed))


def _check_values(path: Path | None, key: str, values: np.ndarray, ends: np.ndarray) -> None:
    """Refuse NaN/inf and absurd magnitudes in a float array, naming the episode and step."""
    if values.dtype.kind != "f" or values.size == 0:
        return
    bad = ~np.isfinite(values) | (np.abs(values) > MAX_ABS_VALUE)
    if not bad.any():
        return
    row = int(np.argwhere(bad)[0][0])
    episode = int(np.searchsorted(ends, row, side="right"))
    step = row - (int(ends[episode - 1]) if episode > 0 else 0)
    value = values.reshape(len(values), -1)[row][bad.reshape(len(values), -1)[row]][0]
    raise ReplayBufferError(
        f"'{path or ''}/data/{key}' holds {value} at episode {episode}, step {step} (values must be finite and within "
        f"±{MAX_ABS_VALUE:g}); the dataset is corrupt or in other units"
    )


def _committed_episodes(path: Path, ends: np.ndarray, lengths: Mapping[str, int], n_seeds: int | None) -> int:
    """How many episodes ``ends`` commits; :class:`ReplayBufferError` for anything a killed writer cannot leave
    (a killed writer leaves at most one trailing entry at its fill value 0)."""
    n = len(ends)
    if n and ends[-1] == 0:
        n -= 1  # resized for the next episode, never written: the writer was killed before its commit
    prev = 0
    for i in range(n):
        if ends[i] <= prev:
            raise ReplayBufferError(
                f"'{path}/meta/episode_ends' is not strictly increasing at episode {i} ({int(prev)} then "
                f"{int(ends[i])}); the dataset is corrupt"
            )
        prev = int(ends[i])
    short = {key: length for key, length in lengths.items() if length < prev}
    if short:
        key, length = next(iter(short.items()))
        raise ReplayBufferError(
            f"'{path}/data/{key}' holds {length} steps but meta/episode_ends commits {prev}; the dataset is corrupt"
        )
    if n_seeds is not None and n_seeds < n:
        raise ReplayBufferError(
            f"'{path}/meta/episode_seeds' holds {n_seeds} seeds for {n} episodes; the dataset is corrupt"
        )
    return n


def _check_stored(path: Path, root: Any, attrs: Mapping[str, Any], own: bool, n_steps: int, n_episodes: int) -> None:
    """Refuse a dataset whose files were damaged: a missing root attribute file (datasets this package wrote
    always have one), or a chunk of the committed steps missing or cut short."""
    if own and not attrs:
        raise ReplayBufferError(f"'{path}/.zattrs' (the dataset's attributes: task, observation types) is missing")
    strict = attrs.get("format") == FORMAT
    for name in [f"data/{key}" for key in root["data"].array_keys()] + ["meta/episode_ends", "meta/episode_seeds"]:
        rows = n_episodes if name.startswith("meta/") else n_steps
        if name.startswith("meta/") and name.split("/")[1] not in root["meta"]:
            continue
        _check_chunks(path, name, rows, strict)


def _check_chunks(path: Path, name: str, rows: int, strict: bool) -> None:
    """Every chunk file of the first ``rows`` rows of array ``name`` exists and, for blosc, is as long as its header
    says (a truncated blosc chunk can crash the decompressor instead of raising). Without ``strict`` (datasets of
    earlier versions and other tools, written without empty chunks) only float arrays must be complete."""
    meta_file = path / name / ".zarray"
    if rows == 0 or not meta_file.is_file():
        return  # not a zarr-v2 directory store: its reader checks what it can
    try:
        meta = json.loads(meta_file.read_text())
        shape, chunks = meta["shape"], meta["chunks"]
        sep = meta.get("dimension_separator") or "."
        compressor = (meta.get("compressor") or {}).get("id")
        dtype = np.dtype(meta["dtype"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReplayBufferError(
            f"'{meta_file}' cannot be read ({type(e).__name__}: {e}); the dataset is corrupt"
        ) from e
    required = strict or dtype.kind == "f"
    chunk_bytes = int(np.prod(chunks, dtype=np.int64)) * dtype.itemsize
    grids = [range(-(-rows // chunks[0]))] + [
        range(-(-int(s) // int(c))) for s, c in zip(shape[1:], chunks[1:], strict=True)
    ]
    for index in itertools.product(*grids):
        file = path / name / sep.join(str(i) for i in index)
        if not file.is_file():
            if required:
                raise ReplayBufferError(f"chunk '{file}' is missing; the dataset is damaged (it would read as zeros)")
            continue
        size = file.stat().st_size
        if compressor == "blosc":
            with open(file, "rb") as f:
                header = f.read(16)
            stored = int.from_bytes(header[12:16], "little") if len(header) == 16 else -1
            declared = int.from_bytes(header[4:8], "little") if len(header) == 16 else -1
            if stored != size or declared != chunk_bytes:
                raise ReplayBufferError(
                    f"chunk '{file}' is damaged ({size} bytes on disk, its header says {stored} compressed / "
                    f"{declared} raw, {chunk_bytes} expected); the dataset is corrupt"
                )
        elif compressor is None and size != chunk_bytes:
            raise ReplayBufferError(
                f"chunk '{file}' holds {size} bytes, {chunk_bytes} expected; the dataset is damaged"
            )


def _truncate(ends_arr: Any, seeds_arr: Any, data: Mapping[str, Any], n_episodes: int, n_steps: int) -> None:
    """Drop everything beyond the last complete episode (after a killed writer)."""
    if ends_arr.shape[0] > n_episodes:
        # Zero the stale entries first: a later resize must not resurrect them as episode ends.
        ends_arr[n_episodes:] = 0
        ends_arr.resize((n_episodes,))
    if seeds_arr is not None and seeds_arr.shape[0] > n_episodes:
        seeds_arr.resize((n_episodes,))
    for arr in data.values():
        if arr.shape[0] > n_steps:
            arr.resize((n_steps, *arr.shape[1:]))


def _open_group(path: Path, mode: Literal["r", "r+", "a", "w", "w-"]) -> Any:
    if _ZARR3:
        if mode == "w":
            return zarr.open_group(str(path), mode="w", zarr_format=2)
        return zarr.open_group(str(path), mode=mode)
    return zarr.open_group(str(path), mode=mode)


def _create_array(root: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any) -> Any:
    if _ZARR3:
        return root.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    return root.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
