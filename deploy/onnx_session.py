"""An onnxruntime session configured for a control loop (CPU, pinned threads, quiet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session pinned to ``threads`` threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: ORT warns about ops it cannot constant-fold (harmless)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
