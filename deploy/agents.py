"""What `mfp deploy` runs: a policy checkpoint (eager torch) or an `mfp export` directory (ONNX, .pt2 or AOTInductor).

Every agent draws the sampler's starting noise the way ``mfp eval`` does for the same seed: a checkpoint through
``Policy.reset(seed)``, an export through :class:`deploy.noise.EpisodeNoise` (the same stream without torch), so
deploying an export or its checkpoint gives the chunks the evaluation saw for the same observations.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from core.errors import check_choice
from deploy.export_format import META_FILE, NOISE_MODES
from deploy.exported import ExportedPolicy
from deploy.exported_pt2 import AOTIProgram, ExportedProgram
from deploy.inference import InferenceError
from policies.checkpoint import CONFIG_FILE, load_policy
from policies.policy import Policy

BACKENDS = ("auto", "eager", "onnx", "pt2", "aoti")


class SeededPolicy:
    """A checkpoint's policy whose episodes start from ``seed`` unless :meth:`reset` is given another: ``"sampled"``
    draws fresh starting noise per chunk from the episode's generator, ``"held"`` draws once per episode (as
    ``mfp eval hold_noise=true``)."""

    def __init__(self, policy: Policy, seed: int = 0, noise: str = "sampled") -> None:
        check_choice("noise", noise, ("sampled", "held"))
        self.policy, self.seed, self.noise_mode = policy, int(seed), noise
        self.n_obs_steps = policy.n_obs_steps
        self.n_action_steps = policy.n_action_steps
        self.shape_meta = policy.shape_meta
        self._held: torch.Tensor | None = None
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset(seed=self.seed if seed is None else seed)
        self._held = None

    def predict_action(self, obs: Mapping[str, Any]) -> Any:
        if self.noise_mode == "held":
            if self._held is None:
                self._held = self.policy.starting_noise(1)
            return self.policy.predict_action(obs, noise=self._held[0])
        return self.policy.predict_action(obs)


def load_deploy_agent(
    path: str,
    backend: str = "auto",
    threads: int = 1,
    num_inference_steps: int | None = None,
    device: str = "cpu",
    noise: str = "sampled",
    seed: int = 0,
) -> Any:
    """The agent at ``path`` (``reset``, ``n_obs_steps``, ``n_action_steps``, ``shape_meta``, ``predict_action``).

    ``backend``: ``auto`` (eager for a checkpoint, ONNX for an export), ``eager``, ``onnx``, ``pt2`` or ``aoti``;
    an export's sampling steps are baked into its graph and it runs on the CPU; a checkpoint runs on ``device``.
    ``noise`` (``sampled`` | ``held`` | ``fixed``, the last for exports only) and ``seed`` set the starting noise."""
    if backend not in BACKENDS:
        raise InferenceError(f"unknown backend '{backend}'; known: {', '.join(BACKENDS)}")
    check_choice("noise", noise, NOISE_MODES)
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
            raise InferenceError("an export directory runs its graph (backend onnx, pt2 or aoti) with its NFE baked in")
        runtime = {"pt2": ExportedProgram, "aoti": AOTIProgram}.get(backend, ExportedPolicy)
        return runtime(path, threads=threads, noise=noise, seed=seed)
    if backend not in ("auto", "eager"):
        raise InferenceError(f"backend={backend} needs an `mfp export` directory; '{path}' is a checkpoint")
    if noise == "fixed":
        raise InferenceError("noise=fixed replays the draw stored by `mfp export`; a checkpoint has none (use held)")
    policy = load_policy(path, device=device).eval()
    if num_inference_steps is not None:
        policy.num_inference_steps = num_inference_steps
    return SeededPolicy(policy, seed, noise)
