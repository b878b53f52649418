"""robomimic HDF5 datasets: reader, writer, and the view the training code consumes.

The layout (robomimic's, so files made by robomimic's and robosuite's tools load here and ours load there)::

    data                      attrs: total (samples in the file), env_args (JSON: env_name, env_version, type=1,
                                     env_kwargs for robosuite.make)
    data/demo_<i>             attrs: num_samples, model_file (MJCF xml; optional), our extra: seed
        actions   (N, Da)     float
        states    (N, Ds)     float, flattened MuJoCo state (time, qpos, qvel) before each action
        rewards   (N,)        float, reward after each action
        dones     (N,)        int, 1 at success or at the last step (robomimic's done_mode 2)
        obs/<key>      (N, ...)  observation before each action; images (N, H, W, 3) uint8, upright
        next_obs/<key> (N, ...)  observation after each action (optional)
    mask/<filter>             array of demo-name bytes (b"demo_0", ...), e.g. train / valid

Training uses images as (3, H, W): :func:`training_episode` converts. Every check names the file, demo and key.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.atomic_write import OutputError, check_output

if TYPE_CHECKING:
    from demos.replay_buffer import ReplayBuffer

from core.errors import MfpError
from core.spec import ACTION

DEMO_PREFIX = "demo_"
PER_STEP_KEYS = ("actions", "states", "rewards", "dones")


class RobomimicFormatError(MfpError, ValueError):
    """A robomimic HDF5 file that lacks a key, has a wrong dtype or shape, or a truncated demo."""


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("h5py is needed for robomimic datasets: pip install 'meanflow-policy[robomimic]'") from e
    return h5py


@dataclass
class Demo:
    """One demonstration in robomimic's layout (images (N, H, W, 3) uint8)."""

    actions: np.ndarray  # (N, Da)
    obs: dict[str, np.ndarray]  # key -> (N, ...)
    next_obs: dict[str, np.ndarray] | None = None
    states: np.ndarray | None = None  # (N, Ds)
    rewards: np.ndarray | None = None  # (N,)
    dones: np.ndarray | None = None  # (N,)
    attrs: dict[str, Any] = field(default_factory=dict)  # model_file, seed, ...

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def is_image_array(arr: np.ndarray) -> bool:
    """robomimic stores images as (N, H, W, 3) or (N, H, W, 1)."""
    return arr.ndim == 4 and arr.shape[-1] in (1, 3)


def demo_names(group: Any) -> list[str]:
    """Names of the ``demo_<i>`` groups under ``data``, in numeric order (as robomimic sorts them)."""
    names = [k for k in group.keys() if re.fullmatch(rf"{DEMO_PREFIX}\d+", k)]
    return sorted(names, key=lambda k: int(k[len(DEMO_PREFIX) :]))


# ---------------------------------------------------------------------------------------------------- writing
class RobomimicWriter:
    """Appends demos to a robomimic HDF5 file; ``data.attrs["total"]`` is kept current after every demo.

    Use as a context manager. Images are stored uncompressed and contiguous, as robomimic's
    ``dataset_states_to_obs.py`` stores them without ``--compress``: robomimic's ``SequenceDataset`` in its ``low_dim``
    cache mode reads them from disk for every item, and gzip with automatic chunks made that ~7x slower (measured in
    ``docs/results/robomimic_compat``). ``compress=True`` gzips them one chunk per frame (3x smaller, a read costs
    ~1.4x the uncompressed one).
    ``append=True`` continues a file this writer left (same ``env_args``): a demo whose write was cut off (no
    ``num_samples`` attribute yet) is dropped, and ``total`` is recounted from the demos kept.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        env_args: Mapping[str, Any],
        overwrite: bool = False,
        compress: bool = False,
        file_attrs: Mapping[str, Any] | None = None,
        append: bool = False,
    ) -> None:
        h5py = _h5py()
        self.path = os.fspath(path)
        self.compress = bool(compress)
        self._layout: dict[str, tuple[int, ...]] | None = None  # per-step shapes every demo must share
        if append and os.path.exists(self.path):
            self._open_existing(h5py, env_args)
            return
        if os.path.exists(self.path) and not overwrite:
            raise OutputError(f"{self.path} exists; pass overwrite=True or choose another path")
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._f = h5py.File(self.path, "w")
        for k, v in (file_attrs or {}).items():
            self._f.attrs[k] = v
        self._data = self._f.create_group("data")
        self._data.attrs["env_args"] = json.dumps(dict(env_args), indent=4)
        self._data.attrs["total"] = 0
        self._total = 0
        self._count = 0

    def _open_existing(self, h5py: Any, env_args: Mapping[str, Any]) -> None:
        try:
            self._f = h5py.File(self.path, "a")
            self._data = self._f["data"]
            stored = json.loads(_attr(self._data.attrs["env_args"]))
        except Exception as e:  # h5py raises OSError, KeyError, ValueError for a file cut off mid-write
            raise RobomimicFormatError(f"{self.path} cannot be continued: {type(e).__name__}: {e}") from e
        if stored != json.loads(json.dumps(dict(env_args))):
            self._f.close()
            raise RobomimicFormatError(f"{self.path} was written for another environment; it cannot be continued")
        for name in demo_names(self._data):
            if "num_samples" not in self._data[name].attrs:
                del self._data[name]  # cut off mid-write: its arrays may be incomplete
        names = demo_names(self._data)
        self._count = int(names[-1][len(DEMO_PREFIX) :]) + 1 if names else 0
        self._total = sum(int(self._data[n].attrs["num_samples"]) for n in names)
        self._data.attrs["total"] = self._total

    def demo_attrs(self) -> list[dict[str, Any]]:
        """The attributes of every demo written so far (e.g. their seeds), in order."""
        return [{k: _attr(v) for k, v in self._data[n].attrs.items()} for n in self.demo_names]

    @property
    def demo_names(self) -> list[str]:
        return demo_names(self._data)

    @property
    def total(self) -> int:
        """Samples written so far (``data.attrs["total"]``)."""
        return self._total

    def add_demo(self, demo: Demo, name: str | None = None) -> str:
        """Write one demo (validated first); returns its group name."""
        name = name or f"{DEMO_PREFIX}{self._count}"
        _check_demo_arrays(demo, where=f"{self.path}: {name}")
        layout = {"actions": np.shape(demo.actions)[1:], **{k: np.shape(v)[1:] for k, v in demo.obs.items()}}
        if self._layout is not None and layout != self._layout:
            raise RobomimicFormatError(
                f"{self.path}: {name} has arrays of shapes {layout}, the demos before it {self._layout}; "
                "one file holds one layout"
            )
        self._layout = layout
        grp = self._data.create_group(name)
        grp.create_dataset("actions", data=np.asarray(demo.actions))
        for key in ("states", "rewards", "dones"):
            value = getattr(demo, key)
            if value is not None:
                grp.create_dataset(key, data=np.asarray(value))
        for group_name, obs in (("obs", demo.obs), ("next_obs", demo.next_obs)):
            if obs is None:
                continue
            for key, arr in obs.items():
                arr = np.asarray(arr)
                opts: dict[str, Any] = {}
                if self.compress and is_image_array(arr):
                    opts = {"compression": "gzip", "compression_opts": 4, "chunks": (1, *arr.shape[1:])}
                grp.create_dataset(f"{group_name}/{key}", data=arr, **opts)
        for k, v in demo.attrs.items():
            grp.attrs[k] = v
        grp.attrs["num_samples"] = len(demo)
        self._count += 1
        self._total += len(demo)
        self._data.attrs["total"] = self._total
        self._f.flush()
        return name

    def set_mask(self, filter_key: str, names: Sequence[str]) -> None:
        """Write ``mask/<filter_key>`` listing ``names`` (each must be a written demo)."""
        missing = sorted(set(names) - set(self.demo_names))
        if missing:
            raise RobomimicFormatError(f"{self.path}: mask '{filter_key}' names demos that were not written: {missing}")
        path = f"mask/{filter_key}"
        if path in self._f:
            del self._f[path]
        self._f.create_dataset(path, data=np.array([n.encode() for n in names], dtype="S"))

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None

    def __enter__(self) -> RobomimicWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_robomimic(
    path: str | os.PathLike,
    demos: Sequence[Demo],
    env_args: Mapping[str, Any],
    masks: Mapping[str, Sequence[str]] | None = None,
    overwrite: bool = False,
    compress: bool = False,
    file_attrs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write ``demos`` as ``demo_0..`` with ``masks`` (filter key -> demo names); returns the demo names."""
    with RobomimicWriter(path, env_args, overwrite=overwrite, compress=compress, file_attrs=file_attrs) as w:
        names = [w.add_demo(d) for d in demos]
        for key, members in (masks or {}).items():
            w.set_mask(key, members)
    return names


def split_masks(names: Sequence[str], val_ratio: float, seed: int = 0) -> dict[str, list[str]]:
    """robomimic's ``train`` / ``valid`` filter keys: a seeded random ``val_ratio`` of the demos is held out."""
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    n_val = int(round(len(names) * val_ratio))
    if val_ratio > 0 and len(names) > 1:
        n_val = max(1, min(n_val, len(names) - 1))
    order = np.random.default_rng(seed).permutation(len(names))
    val = {names[i] for i in order[:n_val]}
    return {"train": [n for n in names if n not in val], "valid": [n for n in names if n in val]}


# ---------------------------------------------------------------------------------------------------- reading
def read_file_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The file-level attributes (who wrote it, with which settings)."""
    with _open_read(path) as f:
        return {k: _attr(v) for k, v in f.attrs.items()}


def read_env_args(path: str | os.PathLike) -> dict[str, Any]:
    """``data.attrs["env_args"]`` parsed from JSON."""
    with _open_read(path) as f:
        return _env_args(f, os.fspath(path))


def read_masks(path: str | os.PathLike) -> dict[str, list[str]]:
    """Every ``mask/<filter>`` as a list of demo names."""
    with _open_read(path) as f:
        return _masks(f, os.fspath(path))


def list_demos(path: str | os.PathLike, filter_key: str | None = None) -> list[str]:
    """Demo names in numeric order, restricted to ``mask/<filter_key>`` when given."""
    with _open_read(path) as f:
        return _select(f, os.fspath(path), filter_key)


def read_demo(
    path: str | os.PathLike,
    name: str,
    obs_keys: Sequence[str] | None = None,
    load_next_obs: bool = True,
    require: Sequence[str] = ("actions", "obs"),
) -> Demo:
    """Read and validate one demo. ``obs_keys`` restricts (and requires) observation keys; ``require`` lists
    what must be present among actions, obs, next_obs, states, rewards, dones."""
    with _open_read(path) as f:
        return _read_demo(f, os.fspath(path), name, obs_keys, load_next_obs, require)


def iter_demos(
    path: str | os.PathLike,
    filter_key: str | None = None,
    obs_keys: Sequence[str] | None = None,
    load_next_obs: bool = True,
    require: Sequence[str] = ("actions", "obs"),
) -> Iterator[tuple[str, Demo]]:
    """``(name, Demo)`` for each demo (of ``filter_key``), validated, one at a time."""
    p = os.fspath(path)
    with _open_read(p) as f:
        for name in _select(f, p, filter_key):
            yield name, _read_demo(f, p, name, obs_keys, load_next_obs, require)


@dataclass
class RobomimicFile:
    """A whole file in memory: env_args, demos by name, masks, and the file/data attributes."""

    env_args: dict[str, Any]
    demos: dict[str, Demo]
    masks: dict[str, list[str]]
    file_attrs: dict[str, Any]
    total: int


def read_robomimic(
    path: str | os.PathLike,
    filter_key: str | None = None,
    obs_keys: Sequence[str] | None = None,
    load_next_obs: bool = True,
    require: Sequence[str] = ("actions", "obs"),
) -> RobomimicFile:
    """Read a whole robomimic file (validated: keys, dtypes, lengths, ``total``)."""
    p = os.fspath(path)
    with _open_read(p) as f:
        _check_file(f, p)
        demos = {n: _read_demo(f, p, n, obs_keys, load_next_obs, require) for n in _select(f, p, filter_key)}
        total = int(f["data"].attrs.get("total", -1))
        if filter_key is None and "total" in f["data"].attrs:
            counted = sum(len(d) for d in demos.values())
            if counted != total:
                raise RobomimicFormatError(f"{p}: data.attrs['total'] is {total} but the demos hold {counted} samples")
        return RobomimicFile(
            env_args=_env_args(f, p),
            demos=demos,
            masks=_masks(f, p),
            file_attrs={k: _attr(v) for k, v in f.attrs.items()},
            total=total,
        )


def merge_robomimic(
    inputs: Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    val_ratio: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Concatenate robomimic files of one task into ``out_path`` (``demo_0..`` in input order, new ``train`` /
    ``valid`` masks), e.g. clean demos plus recovery demos collected separately. Every input is read and checked
    (same ``env_name``, same obs keys and shapes) before anything is written, and a demo that fails validation while
    copying leaves no output behind (it is written aside and renamed at the end); each copied demo keeps its attributes
    and gains ``source_file`` / ``source_demo``. Returns a summary: demos per input, total samples."""
    paths = [os.fspath(p) for p in inputs]
    if not paths:
        raise RobomimicFormatError("merge_robomimic needs at least one input file")
    for p in paths:
        if not os.path.isfile(p):
            raise RobomimicFormatError(f"{p}: no such robomimic file to merge")
    check_output(out_path, paths, overwrite)
    for p in paths:
        with _open_read(p) as f:
            _check_file(f, p)
    env_args = [read_env_args(p) for p in paths]
    names = {p: list_demos(p) for p in paths}
    layout = {}
    for p in paths:
        if not names[p]:
            raise RobomimicFormatError(f"{p}: no demos to merge")
        d = read_demo(p, names[p][0], load_next_obs=False)
        layout[p] = {k: v.shape[1:] for k, v in d.obs.items()}
    for p, args in zip(paths[1:], env_args[1:], strict=True):
        if args.get("env_name") != env_args[0].get("env_name"):
            raise RobomimicFormatError(
                f"{p}: env '{args.get('env_name')}' differs from {paths[0]}'s "
                f"'{env_args[0].get('env_name')}'; merge files of one task only"
            )
        if layout[p] != layout[paths[0]]:
            raise RobomimicFormatError(f"{p}: observations {layout[p]} differ from {paths[0]}'s {layout[paths[0]]}")
    counts: dict[str, int] = {}
    partial = f"{os.fspath(out_path)}.partial"  # renamed into place only when every demo was copied and checked
    try:
        with RobomimicWriter(
            partial,
            env_args[0],
            overwrite=True,
            file_attrs={"creator": "meanflow-policy merge_robomimic", "sources": json.dumps(paths)},
        ) as w:
            for p in paths:
                for name, demo in iter_demos(p, require=("actions", "obs")):
                    demo.attrs = {**demo.attrs, "source_file": os.path.basename(p), "source_demo": name}
                    w.add_demo(demo)
                counts[p] = len(names[p])
            for key, members in split_masks(w.demo_names, val_ratio, seed=seed).items():
                w.set_mask(key, members)
            total = w.total
        os.replace(partial, out_path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return {"path": os.fspath(out_path), "demos": counts, "total_demos": sum(counts.values()), "samples": total}


# ---------------------------------------------------------------------------------------------------- training view
def training_episode(demo: Demo, obs_keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """One episode in the training layout: ``{obs_key: (N, ...), "action": (N, Da) float32}``; images become
    (N, 3, H, W) uint8, low-dim arrays float32."""
    keys = list(demo.obs) if obs_keys is None else list(obs_keys)
    out: dict[str, np.ndarray] = {}
    for key in keys:
        arr = demo.obs[key]
        if is_image_array(arr):
            out[key] = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))  # (N, H, W, C) -> (N, C, H, W)
        else:
            out[key] = np.asarray(arr, dtype=np.float32)
    out[ACTION] = np.asarray(demo.actions, dtype=np.float32)
    return out


def load_replay_buffer(
    path: str | os.PathLike, obs_keys: Sequence[str] | None = None, filter_key: str | None = None
) -> ReplayBuffer:
    """The file (or its ``mask/<filter_key>`` demos) as an in-memory :class:`demos.replay_buffer.ReplayBuffer`:
    arrays ``{obs_key: (T, ...), "action": (T, Da)}`` in the training layout, ``episode_ends``, episode seeds
    (the demos' ``seed`` attribute, -1 when absent) and attrs ``task``, ``env_args``, ``obs_types``,
    ``demo_names``, ``source``. ``obs_keys`` defaults to every key under the first demo's ``obs``."""
    from demos.replay_buffer import ReplayBuffer

    p = os.fspath(path)
    with _open_read(p) as f:
        _check_file(f, p)
    if obs_keys is None:
        names = list_demos(p, filter_key)
        if not names:
            raise RobomimicFormatError(f"{p}: no demos" + (f" in mask '{filter_key}'" if filter_key else ""))
        obs_keys = list(read_demo(p, names[0], load_next_obs=False).obs)
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in [*obs_keys, ACTION]}
    ends: list[int] = []
    seeds: list[int] = []
    names = []
    obs_types: dict[str, str] = {}
    total = 0
    for name, demo in iter_demos(p, filter_key=filter_key, obs_keys=obs_keys, load_next_obs=False):
        for k, v in training_episode(demo, obs_keys).items():
            chunks[k].append(v)
        if not obs_types:
            obs_types = {k: "rgb" if is_image_array(demo.obs[k]) else "low_dim" for k in obs_keys}
        total += len(demo)
        ends.append(total)
        seeds.append(int(demo.attrs.get("seed", -1)))
        names.append(name)
    if not ends:
        raise RobomimicFormatError(f"{p}: no demos" + (f" in mask '{filter_key}'" if filter_key else ""))
    for k in [*obs_keys, ACTION]:
        shapes = {c.shape[1:] for c in chunks[k]}
        if len(shapes) > 1:
            what = "actions" if k == ACTION else f"obs '{k}'"
            raise RobomimicFormatError(f"{p}: {what} change shape between demos: {sorted(shapes)}")
    data = {k: np.concatenate(v, axis=0) for k, v in chunks.items()}
    env_args = read_env_args(p)
    attrs = {
        "task": env_args.get("env_name"),
        "env_args": env_args,
        "obs_types": obs_types,
        "demo_names": names,
        "source": "robomimic_hdf5",
    }
    return ReplayBuffer(data, np.asarray(ends, dtype=np.int64), np.asarray(seeds, dtype=np.int64), attrs, path=None)


def is_robomimic_file(path: str | os.PathLike) -> bool:
    """True for an HDF5 file (by its signature), so a dataset path can be routed to :func:`load_replay_buffer`."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        return False
    with open(p, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def convert_to_zarr(
    hdf5_path: str | os.PathLike,
    zarr_path: str | os.PathLike,
    obs_keys: Sequence[str] | None = None,
    filter_key: str | None = None,
    overwrite: bool = False,
) -> int:
    """Write a robomimic file as a zarr replay buffer (DP layout); returns the number of episodes."""
    from demos.replay_buffer import ReplayBuffer

    rb = load_replay_buffer(hdf5_path, obs_keys=obs_keys, filter_key=filter_key)
    keys = {k: (rb.step_shape(k), rb[k].dtype) for k in rb.keys}
    attrs = {k: v for k, v in rb.attrs.items()}
    out = ReplayBuffer.create(zarr_path, keys, attrs=attrs, overwrite=overwrite)
    for i, seed in enumerate(rb.episode_seeds):
        out.add_episode(rb.get_episode(i), seed=int(seed))
    return out.n_episodes


# ---------------------------------------------------------------------------------------------------- internals
def _attr(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def raw_robosuite_hint(path: str) -> str:
    """What to run on a raw robosuite ``demo.hdf5`` (``states`` and ``actions`` only) to make it usable."""
    return (
        f"{path} is a raw robosuite demo file (states and actions, no observations); make a training file from it "
        f"with `mfp convert src={path} out=<name>.hdf5` (it replays the states for the observations, as robomimic's "
        "dataset_states_to_obs.py does)"
    )


def is_raw_robosuite(f: Any) -> bool:
    """True for robosuite's own ``gather_demonstrations_as_hdf5`` output (``data`` attrs ``env``/``env_info``,
    demos of ``states`` and ``actions``, no ``obs``), before robomimic's conversion."""
    if "data" not in f or "env_args" in f["data"].attrs:
        return False
    names = demo_names(f["data"])
    if "env_info" in f["data"].attrs or "env" in f["data"].attrs:
        return True
    return bool(names) and "states" in f["data"][names[0]] and "obs" not in f["data"][names[0]]


@dataclass
class RawDemo:
    """One demo of a file without observations: what robomimic's ``dataset_states_to_obs.py`` starts from."""

    name: str
    states: np.ndarray  # (N, Ds)
    actions: np.ndarray  # (N, Da)
    model_file: str


def read_states_file(path: str | os.PathLike) -> tuple[dict[str, Any], list[RawDemo], dict[str, list[str]]]:
    """``(env_args, demos, masks)`` of a file of states and actions: robosuite's own ``demo.hdf5`` (its
    ``env_info`` becomes robomimic's ``env_args``) or one robomimic converted but did not extract yet."""
    p = os.fspath(path)
    with _open_read(p) as f:
        if "data" not in f:
            raise RobomimicFormatError(f"{p}: no 'data' group; is this a robosuite or robomimic dataset?")
        attrs = f["data"].attrs
        if "env_args" in attrs:
            env_args = _env_args(f, p)
        elif "env_info" in attrs:
            try:
                info = json.loads(_attr(attrs["env_info"]))
            except (TypeError, json.JSONDecodeError) as e:
                raise RobomimicFormatError(f"{p}: data.attrs['env_info'] is not valid JSON: {e}") from e
            env_args = {"env_name": info.pop("env_name", _attr(attrs.get("env", ""))), "type": 1, "env_kwargs": info}
        else:
            raise RobomimicFormatError(f"{p}: data has neither robomimic's 'env_args' nor robosuite's 'env_info'")
        env_args["env_kwargs"] = {k: v for k, v in env_args.get("env_kwargs", {}).items() if k != "env_name"}
        demos = []
        for name in demo_names(f["data"]):
            grp = f["data"][name]
            where = f"{p}: data/{name}"
            for key in ("states", "actions"):
                if key not in grp:
                    raise RobomimicFormatError(f"{where}: missing '{key}' (present: {sorted(grp.keys())})")
            if "model_file" not in grp.attrs:
                raise RobomimicFormatError(f"{where}: missing attribute 'model_file' (the MJCF the demo ran on)")
            states, actions = grp["states"][()], grp["actions"][()]
            if len(states) != len(actions) or not len(actions):
                raise RobomimicFormatError(f"{where}: {len(states)} states for {len(actions)} actions")
            demos.append(RawDemo(name, states, actions, str(_attr(grp.attrs["model_file"]))))
        if not demos:
            raise RobomimicFormatError(f"{p}: no demos under data/")
        return env_args, demos, _masks(f, p)


def _env_args(f: Any, path: str) -> dict[str, Any]:
    if "data" not in f:
        raise RobomimicFormatError(f"{path}: no 'data' group; is this a robomimic dataset?")
    if is_raw_robosuite(f):
        raise RobomimicFormatError(raw_robosuite_hint(path))
    if "env_args" not in f["data"].attrs:
        raise RobomimicFormatError(
            f"{path}: data has no 'env_args' attribute (robomimic stores the env metadata there)"
        )
    raw = _attr(f["data"].attrs["env_args"])
    try:
        args = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as e:
        raise RobomimicFormatError(f"{path}: data.attrs['env_args'] is not valid JSON: {e}") from e
    if not isinstance(args, dict) or "env_name" not in args:
        raise RobomimicFormatError(f"{path}: env_args must be a JSON object with 'env_name'; got {raw[:200]!r}")
    return args


@contextmanager
def _open_read(path: str | os.PathLike) -> Iterator[Any]:
    """The HDF5 file opened read-only; a file that is not HDF5, or is cut short, is a :class:`RobomimicFormatError`
    (h5py raises OSError for both, also later while reading a damaged dataset)."""
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            yield f
    except OSError as e:
        raise RobomimicFormatError(f"{os.fspath(path)} cannot be read as HDF5 ({e}); the file is damaged") from e


def _check_file(f: Any, path: str) -> None:
    """What a reader relies on and robomimic's own loaders do not check: the demos' ``num_samples`` add up to
    ``data.attrs["total"]`` and every mask names demos that exist."""
    if "data" not in f:
        raise RobomimicFormatError(f"{path}: no 'data' group; is this a robomimic dataset?")
    if is_raw_robosuite(f):
        raise RobomimicFormatError(raw_robosuite_hint(path))
    names = demo_names(f["data"])
    try:
        counted = sum(int(f["data"][n].attrs["num_samples"]) for n in names)
    except KeyError as e:
        raise RobomimicFormatError(f"{path}: a demo lacks its 'num_samples' attribute ({e})") from e
    if "total" in f["data"].attrs and int(f["data"].attrs["total"]) != counted:
        raise RobomimicFormatError(
            f"{path}: data.attrs['total'] is {int(f['data'].attrs['total'])} but the demos hold {counted} samples"
        )
    _masks(f, path)


def _masks(f: Any, path: str) -> dict[str, list[str]]:
    if "mask" not in f:
        return {}
    demos = set(demo_names(f["data"])) if "data" in f else set()
    masks = {}
    for key in f["mask"].keys():
        names = [_attr(n) for n in f["mask"][key][()]]
        missing = sorted(set(names) - demos)
        if missing:
            raise RobomimicFormatError(f"{path}: mask '{key}' names demos that do not exist: {missing[:5]}")
        masks[key] = names
    return masks


def _select(f: Any, path: str, filter_key: str | None) -> list[str]:
    if "data" not in f:
        raise RobomimicFormatError(f"{path}: no 'data' group; is this a robomimic dataset?")
    names = demo_names(f["data"])
    if filter_key is None:
        return names
    masks = _masks(f, path)
    if filter_key not in masks:
        raise RobomimicFormatError(
            f"{path}: no mask '{filter_key}'; filter keys in the file: {sorted(masks) or 'none'}"
        )
    wanted = set(masks[filter_key])
    return [n for n in names if n in wanted]


def _read_demo(
    f: Any, path: str, name: str, obs_keys: Sequence[str] | None, load_next_obs: bool, require: Sequence[str]
) -> Demo:
    where = f"{path}: data/{name}"
    if name not in f["data"]:
        raise RobomimicFormatError(f"{path}: no demo '{name}'; demos: {demo_names(f['data'])[:10]}")
    grp = f[f"data/{name}"]
    for key in require:
        if key not in grp:
            if key == "obs" and "states" in grp:
                raise RobomimicFormatError(f"{where}: no 'obs'. " + raw_robosuite_hint(path))
            raise RobomimicFormatError(f"{where}: missing '{key}' (present: {sorted(grp.keys())})")

    def read_obs(group_name: str) -> dict[str, np.ndarray] | None:
        if group_name not in grp:
            return None
        g = grp[group_name]
        keys = list(g.keys()) if obs_keys is None else list(obs_keys)
        missing = [k for k in keys if k not in g]
        if missing:
            raise RobomimicFormatError(f"{where}: missing '{group_name}/{missing[0]}' (present: {sorted(g.keys())})")
        return {k: g[k][()] for k in keys}

    if "actions" not in grp:
        raise RobomimicFormatError(f"{where}: missing 'actions' (present: {sorted(grp.keys())})")
    demo = Demo(
        actions=grp["actions"][()],
        obs=read_obs("obs") or {},
        next_obs=read_obs("next_obs") if load_next_obs else None,
        states=grp["states"][()] if "states" in grp else None,
        rewards=grp["rewards"][()] if "rewards" in grp else None,
        dones=grp["dones"][()] if "dones" in grp else None,
        attrs={k: _attr(v) for k, v in grp.attrs.items()},
    )
    if "num_samples" not in grp.attrs:
        raise RobomimicFormatError(f"{where}: missing attribute 'num_samples'")
    n = int(grp.attrs["num_samples"])
    if len(demo) != n:
        raise RobomimicFormatError(f"{where}: 'actions' has {len(demo)} rows but num_samples is {n} (truncated demo?)")
    _check_demo_arrays(demo, where)
    return demo


def _check_demo_arrays(demo: Demo, where: str) -> None:
    """Dtypes and per-step lengths of one demo; raises naming the demo and key."""
    actions = np.asarray(demo.actions)
    if actions.ndim != 2 or not np.issubdtype(actions.dtype, np.floating):
        raise RobomimicFormatError(
            f"{where}: 'actions' must be a float (N, Da) array, got {actions.dtype} {actions.shape}"
        )
    n = actions.shape[0]
    if n == 0:
        raise RobomimicFormatError(f"{where}: 'actions' is empty")
    expected_kind = {"states": "float", "rewards": "number", "dones": "integer or bool"}
    for key in ("states", "rewards", "dones"):
        value = getattr(demo, key)
        if value is None:
            continue
        arr = np.asarray(value)
        ok = {
            "states": np.issubdtype(arr.dtype, np.floating),
            "rewards": np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_,
            "dones": np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_,
        }[key]
        if not ok:
            raise RobomimicFormatError(f"{where}: '{key}' must be {expected_kind[key]}, got dtype {arr.dtype}")
        if arr.shape[0] != n:
            raise RobomimicFormatError(
                f"{where}: '{key}' has {arr.shape[0]} rows but 'actions' has {n} (truncated demo?)"
            )
    for group_name, obs in (("obs", demo.obs), ("next_obs", demo.next_obs)):
        for key, value in (obs or {}).items():
            arr = np.asarray(value)
            if arr.shape[:1] != (n,):
                raise RobomimicFormatError(
                    f"{where}: '{group_name}/{key}' has {arr.shape[0] if arr.ndim else 0} rows but 'actions' has {n} "
                    "(truncated demo?)"
                )
            if is_image_array(arr) or key.endswith("_image"):
                if arr.dtype != np.uint8 or not is_image_array(arr):
                    raise RobomimicFormatError(
                        f"{where}: image '{group_name}/{key}' must be uint8 (N, H, W, 3) as robomimic stores it, "
                        f"got {arr.dtype} {arr.shape}"
                    )
            elif not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                raise RobomimicFormatError(f"{where}: '{group_name}/{key}' must be numeric, got dtype {arr.dtype}")


def replay_buffer_to_robomimic(
    rb: ReplayBuffer, out_path: str | os.PathLike, val_ratio: float = 0.1, seed: int = 0, overwrite: bool = False
) -> dict[str, Any]:
    """Write a zarr dataset (e.g. an ``mfp deploy`` recording) as a robomimic file: one demo per episode, its
    observation keys under ``obs`` (images (N, H, W, 3) uint8), ``action`` as ``actions`` (float64), other arrays
    (``timestamp``, ``hold``) under ``obs`` too only if typed as observations, else kept as demo datasets robomimic
    ignores; ``train``/``valid`` masks. ``env_args`` is the dataset's own (a file converted from robomimic) or names
    its task with robomimic's gym type (2), which robomimic's ``SequenceDataset`` reads without building an env."""
    types = dict(rb.attrs.get("obs_types") or {})
    if ACTION not in rb.keys:
        raise RobomimicFormatError(f"{rb.path}: no 'action' array; robomimic demos need actions")
    env_args = rb.attrs.get("env_args") or {
        "env_name": str(rb.attrs.get("task") or "unknown"),
        "env_version": None,
        "type": 2,
        "env_kwargs": {},
    }
    check_output(out_path, [p for p in [rb.path] if p is not None], overwrite)
    partial = f"{os.fspath(out_path)}.partial"
    try:
        with RobomimicWriter(partial, env_args, overwrite=True, file_attrs={"source": str(rb.path or "")}) as w:
            for i in range(rb.n_episodes):
                ep = rb.get_episode(i)
                obs = {
                    k: np.ascontiguousarray(v.transpose(0, 2, 3, 1)) if types[k] == "rgb" else v
                    for k, v in ep.items()
                    if k in types
                }
                demo = Demo(actions=ep[ACTION].astype(np.float64), obs=obs, attrs={"seed": int(rb.episode_seeds[i])})
                name = w.add_demo(demo)
                for key in [k for k in ep if k not in types and k != ACTION]:
                    w._data[name].create_dataset(key, data=ep[key])
            for key, members in split_masks(w.demo_names, val_ratio, seed=seed).items():
                w.set_mask(key, members)
            total = w.total
        os.replace(partial, out_path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return {"path": os.fspath(out_path), "demos": rb.n_episodes, "samples": total}
