"""Run an `mfp export` directory's ``torch.export`` program (``model.pt2``) as an agent; needs torch."""

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
