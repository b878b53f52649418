"""Run an `mfp export` directory's torch artefacts as an agent (needs torch): the ``torch.export`` program
(``model.pt2``, portable, runs at eager speed) or the AOTInductor package (``model_aoti.pt2``, compiled ahead of time).
Noise and observations are handled as in :class:`deploy.exported.ExportedPolicy`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deploy.exported import ExportedPolicy


class ExportedProgram(ExportedPolicy):
    """:class:`deploy.exported.ExportedPolicy` with the ``torch.export`` program in place of onnxruntime (torch
    threads are the caller's to set)."""

    backend = "pt2"

    def _open(self, file: Path, threads: int) -> None:
        self._program = torch.export.load(str(file)).module()

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return self._program(*[torch.from_numpy(feeds[s["name"]]) for s in self._inputs]).numpy()


class AOTIProgram(ExportedPolicy):
    """The AOTInductor package (``mfp export formats=[onnx,aoti]``): the same graph compiled to a shared library
    for this machine's CPU; it needs torch (not the training code) at run time."""

    backend = "aoti"

    def _open(self, file: Path, threads: int) -> None:
        self._program = torch._inductor.aoti_load_package(str(file))

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out = self._program(*[torch.from_numpy(feeds[s["name"]]) for s in self._inputs])
        return (out[0] if isinstance(out, (list, tuple)) else out).numpy()
