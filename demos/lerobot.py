"""LeRobot datasets (format "v3.0", lerobot 0.4) read and written without lerobot: pyarrow for the parquet files,
PyAV (which bundles FFmpeg) for the mp4 videos. lerobot itself pins an older torch than this package, so it cannot
be installed beside it; files written here were opened with lerobot 0.4.4's ``LeRobotDataset`` in its own
environment (``docs/results/lerobot_compat``), and the tests read datasets lerobot wrote (``tests/fixtures/lerobot``).

The layout (``<root>``)::

    meta/info.json                     codebase_version "v3.0", fps, features {name: {dtype, shape, names}}, paths
    meta/tasks.parquet                 one row per task string (the pandas index), task_index
    meta/episodes/chunk-*/file-*.parquet   one row per episode: length, tasks, its data rows [from, to), per camera
                                       the mp4 and the episode's [from_timestamp, to_timestamp) inside it
    meta/stats.json                    min/max/mean/std/count/q01..q99 per feature (optional for reading)
    data/chunk-*/file-*.parquet        one row per frame: every non-video feature + timestamp, frame_index,
                                       episode_index, index, task_index
    videos/<key>/chunk-*/file-*.mp4    one stream per camera, episodes one after another

Mapping to the zarr datasets here (:class:`demos.replay_buffer.ReplayBuffer`): one LeRobot episode is one episode;
a feature becomes the array of its name with ``.`` replaced by ``_`` (observation keys cannot hold dots: they name
network modules), e.g. ``observation.state`` -> ``observation_state``, ``observation.images.front`` ->
``observation_images_front`` (``rgb``, (3, H, W) uint8); ``action`` stays ``action``. ``observation.*`` features
are observations (``obs_types``), others are kept as plain arrays. The original names, per-dimension names, fps,
robot type and each episode's task strings are kept in the zarr's ``lerobot`` attribute, so converting back gives
the same feature names. Datasets recorded here (no ``lerobot`` attribute) are named ``observation.<key>`` (images
``observation.images.<key>``), ``action`` and, for ``mfp deploy`` recordings, ``hold`` and ``capture_timestamp``
(its loop-clock ``timestamp``; LeRobot's own ``timestamp`` is ``frame_index / fps``).

Video is lossy: frames written as AV1 (lerobot's default) come back within a few levels on average (the tests
check the tolerance lerobot's own round trip shows); ``video_codec="lossless"`` (H.264 RGB, qp 0, which lerobot
reads too) keeps them exact.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic_write import check_output, replace_dir
from core.errors import MfpError
from core.spec import ACTION

CODEBASE_VERSION = "v3.0"
DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
TIMESTAMP_TOLERANCE_S = 1e-4  # lerobot's tolerance_s: a video frame must sit this close to its row's time
VIDEO_CODECS = {  # name -> (PyAV encoder, pixel format, options)
    "av1": ("libsvtav1", "yuv420p", {"g": "2", "crf": "30", "preset": "10"}),  # lerobot's defaults
    "h264": ("libx264", "yuv420p", {"g": "2", "bf": "0", "crf": "18"}),
    "lossless": ("libx264rgb", "rgb24", {"g": "2", "qp": "0"}),
}
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


class LeRobotFormatError(MfpError, ValueError):
    """A LeRobot dataset directory that lacks a file or column, or holds values that do not fit its info.json."""


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("pyarrow is needed for LeRobot datasets: pip install 'meanflow-policy[lerobot]'") from e
    return pa, pq


def _av() -> Any:
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("PyAV is needed for LeRobot videos: pip install 'meanflow-policy[lerobot]'") from e
    return av


def zarr_key(name: str) -> str:
    """The array name of LeRobot feature ``name`` here (dots cannot name network modules)."""
    return name.replace(".", "_")


def is_lerobot_dataset(path: str | os.PathLike) -> bool:
    """True for a directory holding ``meta/info.json``."""
    return (Path(path) / "meta" / "info.json").is_file()


# ---------------------------------------------------------------------------------------------------- reading
@dataclass
class LeRobotData:
    """A LeRobot dataset opened for reading: its info.json, tasks, episode rows and frame columns (in memory)."""

    root: Path
    info: dict[str, Any]
    tasks: list[str]  # by task_index
    episodes: list[dict[str, Any]]  # meta/episodes rows (without the per-episode stats), by episode_index
    columns: dict[str, np.ndarray]  # every data column, rows in dataset order

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        """The user's features (the 5 default ones left out), in info.json order."""
        return {k: v for k, v in self.info["features"].items() if k not in DEFAULT_FEATURES}

    @property
    def video_keys(self) -> list[str]:
        return [k for k, v in self.features.items() if v["dtype"] == "video"]

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i``: ``{feature: (T, ...)}`` with vectors in their info.json dtype and cameras (T, H, W, 3)
        uint8, plus ``frame_index``, ``timestamp`` and ``task_index``."""
        where = f"{self.root}: episode {i}"
        if not 0 <= i < len(self.episodes):
            raise LeRobotFormatError(f"{self.root}: no episode {i}; it has {len(self.episodes)}")
        rows = np.flatnonzero(self.columns["episode_index"] == i)
        length = int(self.episodes[i].get("length", len(rows)))
        if len(rows) != length or (len(rows) and not np.array_equal(rows, np.arange(rows[0], rows[0] + length))):
            raise LeRobotFormatError(
                f"{where}: meta/episodes says {length} frames, the data files hold {len(rows)} rows for it "
                "(they must be contiguous and complete)"
            )
        frame_index = self.columns["frame_index"][rows]
        if not np.array_equal(frame_index, np.arange(length)):
            raise LeRobotFormatError(f"{where}: frame_index is not 0..{length - 1} in order")
        out = {
            name: self.columns[name][rows]
            for name in (*self.features, "timestamp", "task_index")
            if name in self.columns
        }
        for key in self.video_keys:
            out[key] = self._decode(i, key, frame_index)
        for name, feature in self.features.items():
            if feature["dtype"] == "image":
                out[name] = np.stack([_decode_png(b, f"{where}: '{name}'") for b in out[name]])
        return out

    def _decode(self, i: int, key: str, frame_index: np.ndarray) -> np.ndarray:
        """The episode's frames of camera ``key``: the mp4 frame at ``from_timestamp + frame_index / fps`` for each
        row, within lerobot's 1e-4 s (or an error naming the episode and time)."""
        row = self.episodes[i]
        where = f"{self.root}: episode {i}, video '{key}'"
        try:
            chunk, file = int(row[f"videos/{key}/chunk_index"]), int(row[f"videos/{key}/file_index"])
            start = float(row[f"videos/{key}/from_timestamp"])
        except KeyError as e:
            raise LeRobotFormatError(f"{where}: meta/episodes lacks column {e}") from None
        path = self.root / str(self.info.get("video_path") or VIDEO_PATH).format(
            video_key=key, chunk_index=chunk, file_index=file
        )
        if not path.is_file():
            raise LeRobotFormatError(f"{where}: {path} is missing")
        wanted = start + frame_index / self.fps
        frames = _read_video(path, float(wanted[0]) - 0.5 / self.fps, float(wanted[-1]) + 0.5 / self.fps, where)
        times = np.array([t for t, _ in frames])
        if not len(times):
            raise LeRobotFormatError(f"{where}: {path} has no frame near {wanted[0]:.4f} s")
        nearest = np.abs(times[None, :] - wanted[:, None]).argmin(axis=1)
        off = np.abs(times[nearest] - wanted)
        if off.max() >= TIMESTAMP_TOLERANCE_S:
            k = int(off.argmax())
            raise LeRobotFormatError(
                f"{where}: no frame at {wanted[k]:.4f} s in {path} (nearest {times[nearest[k]]:.4f} s; lerobot allows "
                f"{TIMESTAMP_TOLERANCE_S} s)"
            )
        return np.stack([frames[j][1] for j in nearest])


def _read_video(path: Path, t0: float, t1: float, where: str) -> list[tuple[float, np.ndarray]]:
    """``(seconds, (H, W, 3) uint8)`` of every frame of ``path`` presented in [t0, t1] (seek to the keyframe before
    t0, decode forward)."""
    av = _av()
    out: list[tuple[float, np.ndarray]] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            base = stream.time_base
            container.seek(max(0, int(t0 / base)), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * base)
                if t > t1:
                    break
                if t >= t0:
                    out.append((t, frame.to_ndarray(format="rgb24")))
    except av.FFmpegError as e:
        raise LeRobotFormatError(f"{where}: {path} cannot be decoded ({e})") from e
    return out


def _decode_png(cell: Any, where: str) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not data:
        raise LeRobotFormatError(f"{where}: an image cell holds no PNG bytes")
    return np.asarray(Image.open(BytesIO(data)).convert("RGB"))


def read_lerobot(root: str | os.PathLike) -> LeRobotData:
    """Open a LeRobot v3.0 dataset directory: info.json, tasks, episodes and every data column, checked against
    each other (the errors name the file and what is wrong). Video frames are decoded by :meth:`LeRobotData.episode`."""
    _, pq = _pyarrow()
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise LeRobotFormatError(f"{root}: no meta/info.json; is this a LeRobot dataset directory?")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as e:
        raise LeRobotFormatError(f"{info_path} is not readable JSON: {e}") from e
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise LeRobotFormatError(
            f"{root}: codebase_version {version or '(none)'}; only LeRobot format v3.0 (lerobot >= 0.4) is read. "
            "Convert older datasets with lerobot's own lerobot.datasets.v30.convert_dataset_v21_to_v30"
        )
    for key in ("fps", "features"):
        if key not in info:
            raise LeRobotFormatError(f"{info_path}: no '{key}'")
    missing = [k for k in DEFAULT_FEATURES if k not in info["features"]]
    if missing:
        raise LeRobotFormatError(f"{info_path}: features lack lerobot's default {missing}")
    tasks = _read_tasks(root, pq)
    episodes = _read_episodes(root, pq)
    columns = _read_data(root, pq, info)
    n = len(columns["index"])
    if "total_frames" in info and int(info["total_frames"]) != n:
        raise LeRobotFormatError(f"{root}: info.json says {info['total_frames']} frames, the data files hold {n}")
    if "total_episodes" in info and int(info["total_episodes"]) != len(episodes):
        raise LeRobotFormatError(
            f"{root}: info.json says {info['total_episodes']} episodes, meta/episodes holds {len(episodes)}"
        )
    bad_tasks = set(np.unique(columns["task_index"]).tolist()) - set(range(len(tasks)))
    if bad_tasks:
        raise LeRobotFormatError(f"{root}: task_index {sorted(bad_tasks)[:5]} not in meta/tasks.parquet")
    return LeRobotData(root=root, info=info, tasks=tasks, episodes=episodes, columns=columns)


def _read_table(pq: Any, path: Path) -> Any:
    """A parquet file as a pyarrow table; a damaged one is a :class:`LeRobotFormatError` naming it."""
    import pyarrow as pa

    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise LeRobotFormatError(f"{path} cannot be read as parquet ({e}); the file is damaged") from e


def _read_tasks(root: Path, pq: Any) -> list[str]:
    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        raise LeRobotFormatError(f"{root}: meta/tasks.parquet is missing")
    table = _read_table(pq, path)
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    index_cols = [c for c in meta.get("index_columns", []) if isinstance(c, str)]
    name_col = index_cols[0] if index_cols else ("task" if "task" in table.column_names else None)
    if name_col is None or "task_index" not in table.column_names:
        raise LeRobotFormatError(f"{path}: needs task_index and the task strings (the pandas index)")
    order = np.asarray(table.column("task_index").to_pylist())
    names = table.column(name_col).to_pylist()
    tasks = [""] * len(names)
    for i, name in zip(order, names, strict=True):
        if not 0 <= i < len(names):
            raise LeRobotFormatError(f"{path}: task_index {i} out of range")
        tasks[int(i)] = str(name)
    return tasks


def _read_episodes(root: Path, pq: Any) -> list[dict[str, Any]]:
    files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not files:
        raise LeRobotFormatError(f"{root}: meta/episodes/*/*.parquet is missing (one row per episode)")
    rows: list[dict[str, Any]] = []
    for file in files:
        table = _read_table(pq, file)
        keep = [c for c in table.column_names if not c.startswith("stats/")]
        rows += table.select(keep).to_pylist()
    if any("episode_index" not in r for r in rows):
        raise LeRobotFormatError(f"{root}: meta/episodes has no episode_index column")
    rows.sort(key=lambda r: int(r["episode_index"]))
    if [int(r["episode_index"]) for r in rows] != list(range(len(rows))):
        raise LeRobotFormatError(f"{root}: meta/episodes episode_index is not 0..{len(rows) - 1}")
    return rows


def _read_data(root: Path, pq: Any, info: Mapping[str, Any]) -> dict[str, np.ndarray]:
    files = sorted((root / "data").glob("*/*.parquet"))
    if not files:
        raise LeRobotFormatError(f"{root}: data/*/*.parquet is missing")
    wanted = [k for k, v in info["features"].items() if v["dtype"] != "video"]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in wanted}
    for file in files:
        table = _read_table(pq, file)
        missing = [k for k in wanted if k not in table.column_names]
        if missing:
            raise LeRobotFormatError(f"{file}: no column {missing[0]!r} for a feature of meta/info.json")
        for key in wanted:
            parts[key].append(_column(table.column(key), info["features"][key], f"{file}: '{key}'"))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def _column(column: Any, feature: Mapping[str, Any], where: str) -> np.ndarray:
    """A parquet column as (N,) or (N, n) in the feature's dtype; image columns as a list of cells."""
    if feature["dtype"] == "image":
        return np.asarray(column.to_pylist(), dtype=object)
    shape = [int(s) for s in feature.get("shape", [1])]
    dtype = np.dtype("U") if feature["dtype"] == "string" else np.dtype(feature["dtype"])
    values = column.to_pylist()
    if any(v is None for v in values):
        raise LeRobotFormatError(f"{where}: holds nulls")
    try:
        arr = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise LeRobotFormatError(f"{where}: values do not fit {feature['dtype']} {shape} ({e})") from e
    if shape == [1] and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if tuple(arr.shape[1:]) != (tuple(shape) if shape != [1] else ()):
        raise LeRobotFormatError(f"{where}: per-frame shape {list(arr.shape[1:])}, info.json says {shape}")
    return arr


# ---------------------------------------------------------------------------------------------------- to zarr
def lerobot_to_zarr(src: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> dict[str, Any]:
    """Write LeRobot dataset ``src`` as a zarr replay buffer at ``out`` (mapping in the module docstring); every
    episode is read and checked before the dataset is created. Returns a summary: episodes, frames, keys."""
    from demos.replay_buffer import ReplayBuffer

    data = read_lerobot(src)
    check_output(out, [src], overwrite)
    if ACTION not in data.features:
        raise LeRobotFormatError(f"{src}: no 'action' feature; training needs the commanded actions")
    keys = {name: (ACTION if name == ACTION else zarr_key(name)) for name in data.features}
    clash = sorted({k for k in keys.values() if list(keys.values()).count(k) > 1})
    if clash:
        raise LeRobotFormatError(f"{src}: features {sorted(n for n, k in keys.items() if k in clash)} map to {clash}")
    episodes = [data.episode(i) for i in range(len(data.episodes))]
    obs_types: dict[str, str] = {}
    layout: dict[str, tuple[tuple[int, ...], Any]] = {}
    for name, feature in data.features.items():
        first = episodes[0][name]
        if feature["dtype"] in ("video", "image"):
            layout[keys[name]] = ((3, *first.shape[1:3]), np.uint8)
            obs_types[keys[name]] = "rgb"
        else:
            step = first.shape[1:] if first.ndim > 1 or not name.startswith("observation.") else (1,)
            layout[keys[name]] = (step, first.dtype)
            if name.startswith("observation."):
                obs_types[keys[name]] = "low_dim"
    attrs = {
        "source": "lerobot",
        "task": data.tasks[int(episodes[0]["task_index"][0])] if data.tasks else None,
        "obs_types": obs_types,
        "fps": data.fps,
        "lerobot": {
            "codebase_version": data.info.get("codebase_version"),
            "fps": data.fps,
            "robot_type": data.info.get("robot_type"),
            "features": {keys[n]: {"name": n, **f} for n, f in data.features.items()},
            "episode_tasks": [[data.tasks[int(t)] for t in _unique(ep["task_index"])] for ep in episodes],
        },
    }
    rb = ReplayBuffer.create(out, layout, attrs=attrs, overwrite=overwrite)
    for ep in episodes:
        rb.add_episode(
            {
                keys[n]: np.ascontiguousarray(ep[n].transpose(0, 3, 1, 2))  # (T, H, W, 3) -> (T, 3, H, W)
                if obs_types.get(keys[n]) == "rgb"
                else ep[n].reshape(len(ep[n]), *layout[keys[n]][0])
                for n in data.features
            }
        )
    return {"path": os.fspath(out), "episodes": rb.n_episodes, "frames": rb.n_steps, "keys": keys, "fps": data.fps}


def _unique(values: np.ndarray) -> list[int]:
    """Distinct values in order of first appearance."""
    return list(dict.fromkeys(int(v) for v in values))


# ---------------------------------------------------------------------------------------------------- writing
def write_lerobot(
    out: str | os.PathLike,
    episodes: Sequence[Mapping[str, np.ndarray]],
    features: Mapping[str, Mapping[str, Any]],
    fps: int,
    episode_tasks: Sequence[str],
    robot_type: str | None = None,
    video_codec: str = "av1",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``episodes`` (``{feature: (T, ...)}``; cameras (T, H, W, 3) uint8) as a LeRobot v3.0 dataset at
    ``out``: one data file, one mp4 per camera, episodes in order, each with its task string. ``features`` gives
    each feature's LeRobot ``dtype`` (``video`` for cameras), ``shape`` and ``names``. The directory is built aside
    and moved into place whole."""
    pa, pq = _pyarrow()
    if video_codec not in VIDEO_CODECS:
        raise LeRobotFormatError(f"unknown video_codec '{video_codec}'; known: {', '.join(VIDEO_CODECS)}")
    if int(fps) != fps or fps <= 0:
        raise LeRobotFormatError(f"fps must be a positive integer (LeRobot stores it as one), got {fps}")
    if not episodes or len(episode_tasks) != len(episodes):
        raise LeRobotFormatError(f"need one task string per episode: {len(episodes)} episodes, {len(episode_tasks)}")
    bad = [n for n in features if "/" in n or n in DEFAULT_FEATURES]
    if bad:
        raise LeRobotFormatError(f"feature names {bad} are not allowed (no '/', not one of {DEFAULT_FEATURES})")
    fps = int(fps)
    out = Path(out)
    check_output(out, overwrite=overwrite)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tasks = list(dict.fromkeys(episode_tasks))
    videos = [n for n, f in features.items() if f["dtype"] == "video"]
    lengths = [len(ep[ACTION] if ACTION in ep else next(iter(ep.values()))) for ep in episodes]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    try:
        (tmp / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
        (tmp / "data" / "chunk-000").mkdir(parents=True)
        # frames
        columns: dict[str, Any] = {}
        for name, feature in features.items():
            if feature["dtype"] == "video":
                continue
            values = np.concatenate([np.asarray(ep[name]) for ep in episodes]).astype(feature["dtype"])
            columns[name] = _arrow_column(pa, values, feature)
        frame_index = np.concatenate([np.arange(n) for n in lengths]).astype(np.int64)
        columns["timestamp"] = pa.array((frame_index / fps).astype(np.float32), pa.float32())
        columns["frame_index"] = pa.array(frame_index, pa.int64())
        columns["episode_index"] = pa.array(np.repeat(np.arange(len(episodes)), lengths).astype(np.int64), pa.int64())
        columns["index"] = pa.array(np.arange(int(starts[-1]), dtype=np.int64), pa.int64())
        task_of = [tasks.index(t) for t in episode_tasks]
        columns["task_index"] = pa.array(np.repeat(task_of, lengths).astype(np.int64), pa.int64())
        pq.write_table(pa.table(columns), tmp / DATA_PATH.format(chunk_index=0, file_index=0), compression="snappy")
        # videos
        video_info = {}
        for name in videos:
            frames = np.concatenate([np.asarray(ep[name]) for ep in episodes])
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise LeRobotFormatError(
                    f"camera '{name}' must be (T, H, W, 3) uint8, got {frames.dtype} {frames.shape}"
                )
            path = tmp / VIDEO_PATH.format(video_key=name, chunk_index=0, file_index=0)
            video_info[name] = _write_video(path, frames, fps, video_codec)
        # episodes, tasks, info, stats
        ep_cols: dict[str, Any] = {
            "episode_index": np.arange(len(episodes), dtype=np.int64),
            "tasks": [[t] for t in episode_tasks],
            "length": np.asarray(lengths, dtype=np.int64),
            "data/chunk_index": np.zeros(len(episodes), dtype=np.int64),
            "data/file_index": np.zeros(len(episodes), dtype=np.int64),
            "dataset_from_index": starts[:-1].astype(np.int64),
            "dataset_to_index": starts[1:].astype(np.int64),
        }
        for name in videos:
            ep_cols[f"videos/{name}/chunk_index"] = np.zeros(len(episodes), dtype=np.int64)
            ep_cols[f"videos/{name}/file_index"] = np.zeros(len(episodes), dtype=np.int64)
            ep_cols[f"videos/{name}/from_timestamp"] = (starts[:-1] / fps).astype(np.float64)
            ep_cols[f"videos/{name}/to_timestamp"] = (starts[1:] / fps).astype(np.float64)
        ep_cols["meta/episodes/chunk_index"] = np.zeros(len(episodes), dtype=np.int64)
        ep_cols["meta/episodes/file_index"] = np.zeros(len(episodes), dtype=np.int64)
        pq.write_table(pa.table(ep_cols), tmp / EPISODES_PATH, compression="snappy")
        pandas_meta = {
            "index_columns": ["__index_level_0__"],
            "column_indexes": [],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64"},
                {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object"},
            ],
            "pandas_version": "2.0.0",
        }
        task_table = pa.table(
            {
                "task_index": pa.array(range(len(tasks)), pa.int64()),
                "__index_level_0__": pa.array(tasks, pa.large_string()),
            }
        ).replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        pq.write_table(task_table, tmp / "meta" / "tasks.parquet")
        info_features: dict[str, Any] = {}
        for name, feature in features.items():
            entry = {"dtype": feature["dtype"], "shape": list(feature["shape"]), "names": feature.get("names")}
            if name in video_info:
                entry["info"] = video_info[name]
            info_features[name] = entry
        info_features.update(
            {
                "timestamp": {"dtype": "float32", "shape": [1], "names": None},
                "frame_index": {"dtype": "int64", "shape": [1], "names": None},
                "episode_index": {"dtype": "int64", "shape": [1], "names": None},
                "index": {"dtype": "int64", "shape": [1], "names": None},
                "task_index": {"dtype": "int64", "shape": [1], "names": None},
            }
        )
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": len(episodes),
            "total_frames": int(starts[-1]),
            "total_tasks": len(tasks),
            "chunks_size": 1000,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if videos else None,
            "features": info_features,
        }
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
        stats = {
            name: _stats(np.concatenate([np.asarray(ep[name]) for ep in episodes]), f) for name, f in features.items()
        }
        stats["timestamp"] = _stats(frame_index / fps, {"dtype": "float32"})
        stats["frame_index"] = _stats(frame_index, {"dtype": "int64"})
        stats["episode_index"] = _stats(np.repeat(np.arange(len(episodes)), lengths), {"dtype": "int64"})
        stats["index"] = _stats(np.arange(int(starts[-1])), {"dtype": "int64"})
        stats["task_index"] = _stats(np.repeat(task_of, lengths), {"dtype": "int64"})
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
        if out.exists():
            replace_dir(tmp, out)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": os.fspath(out), "episodes": len(episodes), "frames": int(starts[-1]), "videos": videos}


def _arrow_column(pa: Any, values: np.ndarray, feature: Mapping[str, Any]) -> Any:
    """A fixed-size list column for vectors, a plain column for shape [1] (lerobot's Value features)."""
    if list(feature["shape"]) == [1]:
        return pa.array(values.reshape(len(values)))
    if values.ndim != 2:
        raise LeRobotFormatError(f"only vector features are written, got per-frame shape {values.shape[1:]}")
    flat = pa.array(values.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def _write_video(path: Path, frames: np.ndarray, fps: int, codec_name: str) -> dict[str, Any]:
    """Encode (T, H, W, 3) uint8 frames at ``fps`` (frame k presented at k / fps); returns info.json's video info."""
    av = _av()
    codec, pix_fmt, options = VIDEO_CODECS[codec_name]
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    if pix_fmt == "yuv420p" and (height % 2 or width % 2):
        raise LeRobotFormatError(f"{codec_name} video needs even image sizes, got {height}x{width}; use lossless")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=dict(options))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = Fraction(1, fps * 1024)
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = k * 1024
            frame.time_base = stream.time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {
        "video.height": int(height),
        "video.width": int(width),
        "video.codec": {"libsvtav1": "av1", "libx264": "h264", "libx264rgb": "h264"}[codec],
        "video.pix_fmt": pix_fmt,
        "video.is_depth_map": False,
        "video.fps": fps,
        "video.channels": 3,
        "has_audio": False,
    }


def _stats(values: np.ndarray, feature: Mapping[str, Any]) -> dict[str, Any]:
    """lerobot's stats of one feature: per dimension for vectors; per channel in [0, 1], shaped (3, 1, 1), for
    cameras (T, H, W, 3); true quantiles (lerobot's own are averaged over episodes)."""
    if feature["dtype"] in ("video", "image"):
        x = values.reshape(-1, 3).astype(np.float64) / 255.0
        shape: tuple[int, ...] = (3, 1, 1)
    else:
        x = values.reshape(len(values), -1).astype(np.float64)
        shape = (x.shape[1],)
    out = {
        "min": x.min(0),
        "max": x.max(0),
        "mean": x.mean(0),
        "std": x.std(0),
        **{k: np.quantile(x, q, axis=0) for k, q in QUANTILES.items()},
    }
    stats = {k: v.reshape(shape).tolist() for k, v in out.items()}
    stats["count"] = [int(len(values))]
    return stats


def replay_buffer_to_lerobot(
    rb: Any,
    out: str | os.PathLike,
    fps: int | None = None,
    task: str | None = None,
    robot_type: str | None = None,
    video_codec: str = "av1",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a :class:`demos.replay_buffer.ReplayBuffer` (a zarr dataset here, an ``mfp deploy`` recording, or a
    robomimic file's training view) as a LeRobot dataset. Names, fps and task strings come from its ``lerobot``
    attribute when it was converted from LeRobot; otherwise ``observation.<key>`` / ``observation.images.<key>``,
    ``fps`` (or the dataset's ``fps``/``hz``/``control_hz`` attribute) and ``task`` (or its ``task`` attribute).
    Point clouds have no LeRobot feature type and are left out (the summary lists them)."""
    attrs = dict(rb.attrs)
    meta = attrs.get("lerobot") or {}
    types = dict(attrs.get("obs_types") or {})
    fps = fps or meta.get("fps") or attrs.get("fps") or attrs.get("hz") or attrs.get("control_hz")
    if not fps:
        raise LeRobotFormatError("the dataset records no frame rate (fps, hz or control_hz): pass fps=<frames per s>")
    if float(fps) != int(float(fps)):
        raise LeRobotFormatError(f"LeRobot needs an integer fps; the dataset runs at {fps}: pass fps=<integer>")
    known = meta.get("features", {})
    features: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}
    skipped = []
    for key in [*[k for k in known if k in rb.keys], *[k for k in rb.keys if k not in known]]:
        shape = rb.step_shape(key)
        kind = types.get(key)
        if kind == "point_cloud" or (kind is None and len(shape) > 1):
            skipped.append(key)
            continue
        if key in known:
            entry = dict(known[key])
            name = entry.pop("name")
            entry.pop("info", None)
        elif kind == "rgb":
            name = f"observation.images.{key}"
            entry = {
                "dtype": "video",
                "shape": [shape[1], shape[2], shape[0]],
                "names": ["height", "width", "channels"],
            }
        else:
            name = {ACTION: ACTION, "timestamp": "capture_timestamp"}.get(key, f"observation.{key}" if kind else key)
            dtype = np.dtype(rb[key].dtype)
            entry = {"dtype": "float32" if dtype.kind == "f" and key != "timestamp" else dtype.name}
            entry["shape"] = [int(shape[0])] if shape else [1]
            entry["names"] = None
        if kind == "rgb" or entry["dtype"] == "video":
            entry["dtype"] = "video"
        features[name] = entry
        names[name] = key
    episodes = []
    for i in range(rb.n_episodes):
        ep = rb.get_episode(i)
        episodes.append(
            {
                name: np.ascontiguousarray(ep[key].transpose(0, 2, 3, 1))
                if features[name]["dtype"] == "video"
                else ep[key]
                for name, key in names.items()
            }
        )
    recorded_tasks = meta.get("episode_tasks")
    if task is None and recorded_tasks and len(recorded_tasks) == rb.n_episodes:
        episode_tasks = [t[0] if t else "" for t in recorded_tasks]
    else:
        episode_tasks = [task or str(attrs.get("task") or "")] * rb.n_episodes
    summary = write_lerobot(
        out,
        episodes,
        features,
        int(float(fps)),
        episode_tasks,
        robot_type=robot_type or meta.get("robot_type") or attrs.get("robot"),
        video_codec=video_codec,
        overwrite=overwrite,
    )
    return {**summary, "features": names, "skipped": skipped}
