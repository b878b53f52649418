"""`mfp export`: a policy checkpoint -> one graph (ONNX for onnxruntime by default; ``torch.export`` .pt2 and an
AOTInductor package on request), parity-checked on real observations.

    mfp export checkpoint=runs/reach/policy out=runs/reach/export data=data/reach-v3-10demos-512pts.zarr hz=50

See :mod:`deploy.export` for what the graph holds, the formats and how parity is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.errors import ConfigError, check_int, check_number
from deploy.export import export_policy
from deploy.export_format import DEFAULT_FORMATS, FORMATS
from mfp.cli_args import parse_overrides


@dataclass
class ExportConfig:
    """Arguments of `mfp export` (``key=value``; unknown keys fail)."""

    checkpoint: str = field(default="???", metadata={"help": "policy checkpoint directory (required)"})
    out: str = field(default="???", metadata={"help": "output directory (required)"})
    data: str | None = field(
        default=None,
        metadata={
            "help": "zarr with real observations for parity (demos or an `mfp deploy record=` episode); "
            "default: the checkpoint's dataset; 'synthetic' = made-up inputs"
        },
    )
    n_check: int = field(default=16, metadata={"help": "observation windows checked for parity"})
    tolerance: float = field(default=1e-4, metadata={"help": "max abs error allowed against eager"})
    hz: float = field(default=10.0, metadata={"help": "control rate recorded in the metadata"})
    num_inference_steps: int | None = field(default=None, metadata={"help": "NFE baked into the graph"})
    seed: int = field(default=0, metadata={"help": "seed of the noise draw stored for noise=fixed and of the checks"})
    opset: int = field(default=18, metadata={"help": "ONNX opset"})
    formats: list = field(
        default_factory=lambda: list(DEFAULT_FORMATS),
        metadata={"help": "onnx (fast, no torch needed), pt2 (torch.export, eager speed), aoti (compiled, slow build)"},
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing out that is not an earlier export"})

    def __post_init__(self) -> None:
        check_int("n_check", self.n_check, 1, 10_000)
        check_number("tolerance", self.tolerance, 0.0, low_open=True)
        check_number("hz", self.hz, 0.0, 10_000.0, low_open=True)
        if self.num_inference_steps is not None:
            check_int("num_inference_steps", self.num_inference_steps, 1, 1000)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_int("opset", self.opset, 17, 30)
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise ConfigError(f"formats must be a non-empty list from {', '.join(FORMATS)}; got {list(self.formats)}")


def main(argv: list[str]) -> int:
    cfg = parse_overrides(ExportConfig, argv, "mfp export")
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
        overwrite=cfg.overwrite,
    )
    errs = ", ".join(f"{k} {v:.2e}" for k, v in meta["parity"]["max_abs_error"].items())
    print(
        f"[export] {', '.join(meta['files'].values())} -> {cfg.out}; parity max abs error vs eager: {errs} "
        f"(tolerance {cfg.tolerance:g}, {meta['parity']['n_windows']} windows, {meta['parity']['source']})"
    )
    return 0
