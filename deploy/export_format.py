"""The `mfp export` directory format, shared by the exporter and the runtime (no torch import here)."""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import MfpError

EXPORT_FORMAT = "mfp-export/1"
ONNX_FILE, PT2_FILE, AOTI_FILE, META_FILE = "model.onnx", "model.pt2", "model_aoti.pt2", "export.json"
FORMATS = ("onnx", "pt2", "aoti")
DEFAULT_FORMATS = ("onnx",)  # the formats written by default: each runs at <= 0.6x eager latency
NOISE = "noise"  # the graph's last input: the sampler's starting noise (1, H, Da)
# How a runtime fills it: a fresh draw per call, one draw per episode, or the draw stored in export.json.
NOISE_MODES = ("sampled", "held", "fixed")
OUTPUT = "action"  # the graph's output: the executed chunk (1, n_action_steps, Da) in robot units


class ExportError(MfpError, RuntimeError):
    """The export failed, does not reproduce the eager policy, or an export directory is unusable."""


def is_export_dir(path: Path) -> bool:
    """True when ``path`` is a directory ``mfp export`` wrote (its ``export.json`` names this format)."""
    meta = Path(path) / META_FILE
    try:
        return Path(path).is_dir() and json.loads(meta.read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False
