"""The `mfp export` directory format, shared by the exporter and the runtime (no torch import here)."""

from __future__ import annotations

from core.errors import MfpError

EXPORT_FORMAT = "mfp-export/1"
ONNX_FILE, PT2_FILE, META_FILE = "model.onnx", "model.pt2", "export.json"
NOISE = "noise"  # the graph's last input: the sampler's starting noise (1, H, Da)
OUTPUT = "action"  # the graph's output: the executed chunk (1, n_action_steps, Da) in robot units


class ExportError(MfpError, RuntimeError):
    """The export failed, does not reproduce the eager policy, or an export directory is unusable."""
