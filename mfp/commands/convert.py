"""`mfp convert`: demonstrations between robosuite, robomimic, LeRobot and this package's zarr layout.

    mfp convert src=demo.hdf5 out=data/lift.hdf5                  # robosuite's raw demo.hdf5 -> robomimic
    mfp convert src=data/lift.hdf5 out=data/lift.zarr              # robomimic -> zarr
    mfp convert src=~/lerobot/my_dataset out=data/mine.zarr        # LeRobot v3.0 -> zarr (training here)
    mfp convert src=runs/reach/deploy.zarr out=lerobot/reach to=lerobot fps=50 task="reach the red dot"
    mfp convert src=data/lift.hdf5 out=lerobot/lift --to lerobot  # robomimic -> LeRobot

The source kind is recognised from the path: a directory with ``meta/info.json`` is LeRobot, another directory is
a zarr dataset, an HDF5 file without observations is robosuite's (or robomimic's before its extraction), another
HDF5 file is robomimic's. ``to`` defaults to the kind that trains here (robomimic for raw robosuite files, zarr for
LeRobot, zarr for robomimic, LeRobot for zarr).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError, check_choice, check_int, check_number
from mfp.cli_args import parse_overrides

TARGETS = ("", "zarr", "robomimic", "lerobot")


@dataclass
class ConvertConfig:
    """``key=value`` options of ``mfp convert`` (``--to lerobot`` is read as ``to=lerobot``)."""

    src: str = field(default="???", metadata={"help": "robosuite/robomimic .hdf5, LeRobot directory or .zarr"})
    out: str = field(default="???", metadata={"help": "output path"})
    to: str = field(default="", metadata={"help": "zarr | robomimic | lerobot (default: the source's natural one)"})
    overwrite: bool = False
    # robomimic sources
    filter_key: str = field(default="", metadata={"help": "robomimic source: only the demos of mask/<filter_key>"})
    # raw robosuite sources (observations are rendered)
    cameras: list[str] = field(default_factory=lambda: ["agentview", "robot0_eye_in_hand"])
    image_size: int = 84
    fast_render: bool = field(default=False, metadata={"help": "shadows/reflections off (robomimic renders them)"})
    # LeRobot outputs
    fps: float = field(default=0.0, metadata={"help": "frames per second (0: from the source)"})
    task: str = field(default="", metadata={"help": "task string of every episode (default: from the source)"})
    robot_type: str = ""
    video_codec: str = field(default="av1", metadata={"help": "av1 (lerobot's) | h264 | lossless (exact frames)"})
    # robomimic outputs from zarr
    val_ratio: float = 0.1

    def __post_init__(self) -> None:
        check_choice("to", self.to, TARGETS)
        check_choice("video_codec", self.video_codec, ("av1", "h264", "lossless"))
        check_int("image_size", self.image_size, 8)
        check_number("fps", self.fps, 0.0)
        check_number("val_ratio", self.val_ratio, 0.0, 1.0, high_open=True)
        if Path(self.src).resolve() == Path(self.out).resolve():
            raise ConfigError("src and out are the same path; convert into a new path")


def _argv(argv: list[str]) -> list[str]:
    """``--key value`` and ``--key=value`` as ``key=value`` (the issue's ``--to lerobot``)."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--") and arg not in ("--help",):
            key = arg[2:]
            out.append(key if "=" in key else f"{key}={next(it, '')}")
        else:
            out.append(arg)
    return out


def source_kind(src: str) -> str:
    """``lerobot``, ``zarr``, ``robosuite`` (states without observations) or ``robomimic``."""
    from demos.lerobot import is_lerobot_dataset
    from demos.robomimic_hdf5 import is_robomimic_file, list_demos, read_demo

    path = Path(src)
    if not path.exists():
        raise ConfigError(f"src {src} does not exist")
    if path.is_dir():
        return "lerobot" if is_lerobot_dataset(path) else "zarr"
    if not is_robomimic_file(path):
        raise ConfigError(f"src {src} is neither an HDF5 file nor a LeRobot/zarr directory")
    import h5py

    from demos.robomimic_hdf5 import is_raw_robosuite

    with h5py.File(path, "r") as f:
        if is_raw_robosuite(f):
            return "robosuite"
    names = list_demos(path)
    if names and not read_demo(path, names[0], require=("actions",), load_next_obs=False).obs:
        return "robosuite"
    return "robomimic"


def convert(cfg: ConvertConfig) -> dict[str, Any]:
    """Run one conversion; returns its summary."""
    kind = source_kind(cfg.src)
    to = cfg.to or {"robosuite": "robomimic", "lerobot": "zarr", "robomimic": "zarr", "zarr": "lerobot"}[kind]
    if kind == "robosuite":
        if to != "robomimic":
            raise ConfigError(f"{cfg.src} holds states only: convert it to robomimic first (to=robomimic), then on")
        from envs.robosuite.extract import extract_observations

        return extract_observations(
            cfg.src, cfg.out, cfg.cameras, cfg.image_size, fast_render=cfg.fast_render, overwrite=cfg.overwrite
        )
    if kind == "lerobot":
        if to != "zarr":
            raise ConfigError(f"a LeRobot dataset converts to zarr (the training layout here), not to={to}")
        from demos.lerobot import lerobot_to_zarr

        return lerobot_to_zarr(cfg.src, cfg.out, overwrite=cfg.overwrite)
    if kind == to:
        raise ConfigError(f"{cfg.src} already is a {kind} dataset")
    from demos.replay_buffer import ReplayBuffer

    if kind == "robomimic":
        from demos.robomimic_hdf5 import convert_to_zarr, load_replay_buffer, read_env_args

        if to == "zarr":
            n = convert_to_zarr(cfg.src, cfg.out, filter_key=cfg.filter_key or None, overwrite=cfg.overwrite)
            return {"path": cfg.out, "episodes": n}
        rb = load_replay_buffer(cfg.src, filter_key=cfg.filter_key or None)
        control_freq = read_env_args(cfg.src).get("env_kwargs", {}).get("control_freq", 20)
        return _to_lerobot(rb, cfg, default_fps=control_freq)
    rb = ReplayBuffer.load(cfg.src)
    if to == "robomimic":
        from demos.robomimic_hdf5 import replay_buffer_to_robomimic

        return replay_buffer_to_robomimic(rb, cfg.out, val_ratio=cfg.val_ratio, overwrite=cfg.overwrite)
    return _to_lerobot(rb, cfg)


def _to_lerobot(rb: Any, cfg: ConvertConfig, default_fps: float | None = None) -> dict[str, Any]:
    from demos.lerobot import replay_buffer_to_lerobot

    return replay_buffer_to_lerobot(
        rb,
        cfg.out,
        fps=int(cfg.fps) if cfg.fps else (int(default_fps) if default_fps else None),
        task=cfg.task or None,
        robot_type=cfg.robot_type or None,
        video_codec=cfg.video_codec,
        overwrite=cfg.overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    argv = _argv(list(sys.argv[1:] if argv is None else argv))
    cfg: ConvertConfig = parse_overrides(ConvertConfig, argv, "mfp convert")
    summary = convert(cfg)
    what = ", ".join(f"{k} {v}" for k, v in summary.items() if k != "path" and not isinstance(v, (dict, list)))
    print(f"[convert] wrote {summary['path']}: {what}")
    if summary.get("skipped"):
        print(f"[convert] left out (no LeRobot feature type): {summary['skipped']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
