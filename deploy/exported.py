"""Run an `mfp export` directory as an agent with onnxruntime: numpy in, numpy out, no torch and no training code.

``ExportedPolicy(dir).predict_action({key: (To, ...)})`` returns the executed chunk ``(n_action_steps, Da)`` like
:meth:`policies.policy.Policy.predict_action`; the control loop and ``mfp deploy`` accept it in place of a policy.

The graph's last input is the sampler's starting noise. By default (``noise="sampled"``) each call draws it from
the episode's stream, seeded like ``mfp eval`` seeds a checkpoint (:class:`deploy.noise.EpisodeNoise`): the policy
that runs on the robot is the sampled policy that was evaluated, chunk for chunk. ``noise="held"`` draws once per
episode and reuses the draw (``mfp eval hold_noise=true``); ``noise="fixed"`` uses the draw stored in
``export.json`` for every call of every episode.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.spec import ShapeMeta, SpecError
from deploy.export_format import EXPORT_FORMAT, META_FILE, NOISE, NOISE_MODES, OUTPUT, ExportError
from deploy.noise import EpisodeNoise
from deploy.onnx_session import onnx_session


class ExportedPolicy:
    """An exported policy graph behind the agent interface (``n_obs_steps``, ``reset``, ``predict_action``), run by
    onnxruntime on the CPU; :class:`deploy.exported_pt2.ExportedProgram` runs the ``torch.export`` program instead.

    Args:
        path: directory written by ``mfp export``.
        threads: onnxruntime intra-op threads.
        noise: ``"sampled"`` (a fresh draw per call), ``"held"`` (one draw per episode) or ``"fixed"`` (the draw
            stored in ``export.json``); see the module doc.
        seed: the episode seed when :meth:`reset` is called without one (``mfp eval`` passes each episode's).
    """

    backend = "onnx"

    def __init__(self, path: str | Path, threads: int = 1, noise: str = "sampled", seed: int = 0) -> None:
        path = Path(path)
        meta_file = path / META_FILE
        if not meta_file.is_file():
            raise ExportError(f"'{path}' has no {META_FILE}; export a checkpoint with `mfp export` first")
        self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        if self.meta.get("format") != EXPORT_FORMAT:
            raise ExportError(f"{meta_file}: format {self.meta.get('format')!r}; this package reads {EXPORT_FORMAT}")
        if self.backend not in self.meta["files"]:
            raise ExportError(f"'{path}' was exported without {self.backend}; it has {list(self.meta['files'])}")
        if noise not in NOISE_MODES:
            raise ExportError(f"noise must be one of {', '.join(NOISE_MODES)}; got '{noise}'")
        self.shape_meta = ShapeMeta.from_dict(self.meta["shape_meta"])
        self.n_obs_steps = int(self.meta["n_obs_steps"])
        self.n_action_steps = int(self.meta["n_action_steps"])
        self._inputs = self.meta["inputs"]
        self.noise_mode = noise
        self._fixed_noise = np.asarray(self.meta["noise"]["values"], dtype=np.float32)[None]  # (1, H, Da)
        self.seed = seed
        self._stream = EpisodeNoise(seed)
        self._held: np.ndarray | None = None
        self._open(path / self.meta["files"][self.backend], threads)

    def _open(self, file: Path, threads: int) -> None:
        self._session = onnx_session(file, threads)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's output ``(1, n_action_steps, Da)`` for named inputs."""
        return self._session.run([OUTPUT], feeds)[0]

    def reset(self, seed: int | None = None) -> None:
        """A new episode: its noise stream restarts from ``seed`` (else the constructor's), as ``Policy.reset(seed)``
        does for a checkpoint (the evaluation runner passes each episode's seed)."""
        self._stream.reset(self.seed if seed is None else seed)
        self._held = None

    def starting_noise(self, shape: list[int]) -> np.ndarray:
        """The noise input for the next call ``(1, H, Da)``, per :attr:`noise_mode`."""
        if self.noise_mode == "fixed":
            return self._fixed_noise
        if self.noise_mode == "held":
            if self._held is None:
                self._held = self._stream.standard_normal(tuple(shape))
            return self._held
        return self._stream.standard_normal(tuple(shape))

    def predict_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        """``obs`` {key: (To, ...)} numpy → (n_action_steps, Da) float32."""
        feeds = {}
        for spec in self._inputs:
            name = spec["name"]
            if name == NOISE:
                feeds[name] = self.starting_noise(spec["shape"])
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
