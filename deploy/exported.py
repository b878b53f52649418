"""Run an `mfp export` directory as an agent with onnxruntime: numpy in, numpy out, no torch and no training code.

``ExportedPolicy(dir).predict_action({key: (To, ...)})`` returns the executed chunk ``(n_action_steps, Da)`` like
:meth:`policies.policy.Policy.predict_action`; the control loop and ``mfp deploy`` accept it in place of a policy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.spec import ShapeMeta, SpecError
from deploy.export_format import EXPORT_FORMAT, META_FILE, NOISE, OUTPUT, ExportError
from deploy.onnx_session import onnx_session


class ExportedPolicy:
    """An exported policy graph behind the agent interface (``n_obs_steps``, ``reset``, ``predict_action``), run by
    onnxruntime on the CPU; :class:`deploy.exported_pt2.ExportedProgram` runs the ``torch.export`` program instead.

    Args:
        path: directory written by ``mfp export``.
        threads: onnxruntime intra-op threads.
        noise: ``"fixed"`` uses the noise stored in ``export.json`` (deterministic actions); ``"random"`` draws
            standard normal noise per call from ``seed``.
    """

    backend = "onnx"

    def __init__(self, path: str | Path, threads: int = 1, noise: str = "fixed", seed: int | None = None) -> None:
        path = Path(path)
        meta_file = path / META_FILE
        if not meta_file.is_file():
            raise ExportError(f"'{path}' has no {META_FILE}; export a checkpoint with `mfp export` first")
        self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        if self.meta.get("format") != EXPORT_FORMAT:
            raise ExportError(f"{meta_file}: format {self.meta.get('format')!r}; this package reads {EXPORT_FORMAT}")
        if self.backend not in self.meta["files"]:
            raise ExportError(f"'{path}' was exported without {self.backend}; it has {list(self.meta['files'])}")
        if noise not in ("fixed", "random"):
            raise ExportError(f"noise must be 'fixed' or 'random', got '{noise}'")
        self.shape_meta = ShapeMeta.from_dict(self.meta["shape_meta"])
        self.n_obs_steps = int(self.meta["n_obs_steps"])
        self.n_action_steps = int(self.meta["n_action_steps"])
        self._inputs = self.meta["inputs"]
        self._noise_mode = noise
        self._fixed_noise = np.asarray(self.meta["noise"]["values"], dtype=np.float32)[None]  # (1, H, Da)
        self._rng = np.random.default_rng(seed)
        self._open(path / self.meta["files"][self.backend], threads)

    def _open(self, file: Path, threads: int) -> None:
        self._session = onnx_session(file, threads)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's output ``(1, n_action_steps, Da)`` for named inputs."""
        return self._session.run([OUTPUT], feeds)[0]

    def reset(self, seed: int | None = None) -> None:
        """The graph keeps no state; with ``seed`` and random noise, the episode's noise stream restarts from it
        (the evaluation runner passes each episode's seed, so re-evaluating an export reproduces its episodes)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def predict_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        """``obs`` {key: (To, ...)} numpy → (n_action_steps, Da) float32."""
        feeds = {}
        for spec in self._inputs:
            name = spec["name"]
            if name == NOISE:
                z = (
                    self._fixed_noise
                    if self._noise_mode == "fixed"
                    else self._rng.standard_normal(spec["shape"]).astype(np.float32)
                )
                feeds[name] = z
                continue
            if name not in obs:
                raise SpecError(f"observation is missing key '{name}'; the export needs {self.shape_meta.obs.keys()}")
            x = np.asarray(obs[name])
            if x.ndim == len(spec["shape"]) - 1 and x.shape[0] > self.n_obs_steps:
                x = x[-self.n_obs_steps :]
            if list(x.shape) == spec["shape"][1:]:
                x = x[None]  # (1, To, ...)
            if list(x.shape) != spec["shape"]:
                raise SpecError(
                    f"observation '{name}' has shape {tuple(np.shape(obs[name]))}; the export needs "
                    f"{spec['shape'][1:]} (n_obs_steps, ...)"
                )
            feeds[name] = np.ascontiguousarray(x, dtype=spec["dtype"])
        return self._run(feeds)[0]  # (n_action_steps, Da)
