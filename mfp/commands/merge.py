"""`mfp merge`: concatenate robomimic HDF5 files of one task (e.g. clean demos plus recovery demos) into one.

mfp merge inputs=[data/robomimic-can-50demos.hdf5,data/can-recovery.hdf5] out=data/robomimic-can-100demos.hdf5
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from core.errors import ConfigError, check_int, check_number
from demos.robomimic_hdf5 import merge_robomimic
from mfp.cli_args import parse_overrides


@dataclass
class MergeConfig:
    """``key=value`` options of ``mfp merge``."""

    inputs: list[str] = field(default_factory=list)
    out: str = "???"
    val_ratio: float = 0.1
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if len(self.inputs) < 1:
            raise ConfigError("inputs must name at least one robomimic HDF5 file, e.g. inputs=[a.hdf5,b.hdf5]")
        check_number("val_ratio", self.val_ratio, 0.0, 1.0, high_open=True)
        check_int("seed", self.seed, 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg: MergeConfig = parse_overrides(MergeConfig, argv, "mfp merge")
    summary = merge_robomimic(cfg.inputs, cfg.out, val_ratio=cfg.val_ratio, seed=cfg.seed, overwrite=cfg.overwrite)
    parts = ", ".join(f"{n} from {p}" for p, n in summary["demos"].items())
    print(f"[merge] wrote {summary['total_demos']} demos ({summary['samples']} steps) to {summary['path']}: {parts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
