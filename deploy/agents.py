"""What `mfp deploy` runs: a policy checkpoint (eager torch) or an `mfp export` directory (ONNX or .pt2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from deploy.export_format import META_FILE
from deploy.exported import ExportedPolicy
from deploy.exported_pt2 import ExportedProgram
from deploy.inference import InferenceError
from policies.checkpoint import CONFIG_FILE, load_policy

BACKENDS = ("auto", "eager", "onnx", "pt2")


def load_deploy_agent(
    path: str, backend: str = "auto", threads: int = 1, num_inference_steps: int | None = None, device: str = "cpu"
) -> Any:
    """The agent at ``path`` (``reset``, ``n_obs_steps``, ``n_action_steps``, ``shape_meta``, ``predict_action``).

    ``backend``: ``auto`` (eager for a checkpoint, ONNX for an export), ``eager``, ``onnx`` or ``pt2``; an export's
    sampling steps are baked into its graph and it runs on the CPU; a checkpoint runs on ``device``."""
    if backend not in BACKENDS:
        raise InferenceError(f"unknown backend '{backend}'; known: {', '.join(BACKENDS)}")
    if not Path(path).exists():
        raise InferenceError(f"'{path}' does not exist; pass a policy checkpoint or an `mfp export` directory")
    is_export = (Path(path) / META_FILE).is_file()
    if not (is_export or (Path(path) / CONFIG_FILE).is_file()):
        raise InferenceError(
            f"'{path}' is neither a policy checkpoint ({CONFIG_FILE}) nor an `mfp export` directory ({META_FILE})"
        )
    torch.set_num_threads(threads)
    if is_export:
        if backend == "eager" or num_inference_steps is not None:
            raise InferenceError("an export directory runs its graph (backend onnx or pt2) with its NFE baked in")
        if backend == "pt2":
            return ExportedProgram(path)
        return ExportedPolicy(path, threads=threads)
    if backend not in ("auto", "eager"):
        raise InferenceError(f"backend={backend} needs an `mfp export` directory; '{path}' is a checkpoint")
    policy = load_policy(path, device=device).eval()
    if num_inference_steps is not None:
        policy.num_inference_steps = num_inference_steps
    return policy
