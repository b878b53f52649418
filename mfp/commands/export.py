"""`mfp export`: a policy checkpoint -> one graph (ONNX for onnxruntime, and ``torch.export`` .pt2), parity-checked.

    mfp export checkpoint=runs/reach/policy out=runs/reach/export data=data/reach-v3-10demos-512pts.zarr hz=50

See :mod:`deploy.export` for what the graph holds and how parity is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.atomic_write import check_output
from deploy.export import export_policy
from deploy.export_format import META_FILE
from mfp.cli_args import parse_overrides


@dataclass
class ExportConfig:
    checkpoint: str = field(default="???", metadata={"help": "policy checkpoint directory (required)"})
    out: str = field(default="???", metadata={"help": "output directory (required)"})
    data: str | None = field(default=None, metadata={"help": "zarr dataset with recorded observations for parity"})
    n_check: int = field(default=16, metadata={"help": "observation windows checked for parity"})
    tolerance: float = field(default=1e-4, metadata={"help": "max abs error allowed against eager"})
    hz: float = field(default=10.0, metadata={"help": "control rate recorded in the metadata"})
    num_inference_steps: int | None = field(default=None, metadata={"help": "NFE baked into the graph"})
    seed: int = field(default=0, metadata={"help": "seed of the fixed noise stored with the export"})
    opset: int = field(default=18, metadata={"help": "ONNX opset"})
    formats: list = field(default_factory=lambda: ["onnx", "pt2"], metadata={"help": "onnx and/or pt2"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing export directory"})


def _is_export_dir(path: Path) -> bool:
    return (path / META_FILE).is_file()


def main(argv: list[str]) -> int:
    cfg = parse_overrides(ExportConfig, argv, "mfp export")
    inputs = [cfg.checkpoint] + ([cfg.data] if cfg.data else [])
    check_output(cfg.out, inputs, cfg.overwrite, what="out", ours=_is_export_dir)
    torch.set_num_threads(1)
    meta = export_policy(
        cfg.checkpoint,
        cfg.out,
        cfg.data,
        cfg.n_check,
        cfg.tolerance,
        cfg.hz,
        cfg.num_inference_steps,
        cfg.seed,
        cfg.opset,
        tuple(cfg.formats),
    )
    errs = ", ".join(f"{k} {v:.2e}" for k, v in meta["parity"]["max_abs_error"].items())
    print(
        f"[export] {', '.join(meta['files'].values())} -> {cfg.out}; parity max abs error vs eager: {errs} "
        f"(tolerance {cfg.tolerance:g}, {meta['parity']['n_windows']} windows, {meta['parity']['source']})"
    )
    return 0
