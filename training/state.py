"""Training-state checkpoints: everything needed to resume a run exactly, written atomically.

Holds model, EMA, optimizer and scheduler state, the step, and every RNG state (python, numpy generator, torch).
Written to a temporary file and renamed into place, so a run killed at any moment leaves either the previous
complete file or the new complete file, never a torn one. Loaded with ``weights_only=True`` (no arbitrary pickle).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.atomic_write import open_atomic
from core.errors import MfpError

STATE_FILE = "train_state.pt"


class TrainStateError(MfpError, RuntimeError):
    pass


_CPU = torch.device("cpu")


def rng_state(np_rng: np.random.Generator, device: torch.device = _CPU) -> dict[str, Any]:
    """One process's RNG states: python, the batch sampler's numpy generator, torch CPU, and ``device``'s CUDA
    generator (where training draws its noise on a GPU)."""
    state = {
        "python": list(_tuple_to_list(random.getstate())),
        "numpy": np_rng.bit_generator.state,
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], np_rng: np.random.Generator, device: torch.device = _CPU) -> None:
    random.setstate(_list_to_tuple(state["python"]))
    np_rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def untouched_global_rng(device: torch.device) -> Iterator[None]:
    """Run the body without moving the global RNGs (python, numpy, torch CPU and ``device``'s CUDA generator).

    Training draws its noise from torch's global generator; building a policy to evaluate it (module init) and running
    episodes draw from it too, so without this a periodic evaluation would change the run it measures.
    """
    py, np_global = random.getstate(), np.random.get_state()
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_global)


def save_train_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically write ``state`` to ``path`` (tmp file in the same directory + fsync + rename)."""
    with open_atomic(path, "wb") as f:
        torch.save(state, f)


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TrainStateError(
            f"no training state at '{path}'; start without resume=true or point output_dir at the run"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt files
        raise TrainStateError(f"training state '{path}' cannot be read ({e}); it is corrupt") from e


def _tuple_to_list(x: Any) -> Any:
    return [_tuple_to_list(v) for v in x] if isinstance(x, (tuple, list)) else x


def _list_to_tuple(x: Any) -> Any:
    return tuple(_list_to_tuple(v) for v in x) if isinstance(x, (tuple, list)) else x
