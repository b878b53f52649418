"""The policy: observation encoder + action head + normalizer, behind one small API.

Training calls :meth:`Policy.compute_loss`; evaluation, export and deployment call :meth:`Policy.predict_action`
(a whole executed chunk per call) or :meth:`Policy.select_action` (one action per call, served from a queue).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import nn

from core.spec import ShapeMeta, SpecError
from encoders.dispersive import OBS_EMBEDDING, DispersiveLoss, FeatureTap, regularized_loss
from policies.heads.base import ActionHead
from policies.noise_actor import NoiseActor
from policies.normalizer import LinearNormalizer
from policies.obs_encoder import ObservationEncoder

# A normalized observation beyond this magnitude (training data spans [-1, 1]) is named when the actions blow up.
OUT_OF_RANGE = 1e3


class Policy(nn.Module):
    """A visuomotor policy that predicts an action chunk from ``n_obs_steps`` observations.

    The action window has ``horizon`` steps aligned with the first observation step; the executed part is
    ``window[n_obs_steps - 1 : n_obs_steps - 1 + n_action_steps]`` (DP/DP3 convention).
    """

    def __init__(
        self,
        shape_meta: ShapeMeta,
        obs_encoder: ObservationEncoder,
        head: ActionHead,
        normalizer: LinearNormalizer,
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        dispersive: DispersiveLoss | None = None,
        dispersive_weight: float = 0.0,
        dispersive_layers: Sequence[str] = (OBS_EMBEDDING,),
        num_inference_steps: int | None = None,
        samples_per_obs: int = 1,
        noise_actor: NoiseActor | None = None,
    ) -> None:
        super().__init__()
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError("n_obs_steps - 1 + n_action_steps must be <= horizon")
        if samples_per_obs < 1:
            raise ValueError(f"samples_per_obs must be >= 1, got {samples_per_obs}")
        self.shape_meta = shape_meta
        self.obs_encoder = obs_encoder
        self.head = head
        self.normalizer = normalizer
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.num_inference_steps = num_inference_steps
        # Training only: each encoded observation is repeated this many times in the head's loss, each copy with
        # its own noise and time draws (the encoder's gradient sums over the copies).
        self.samples_per_obs = int(samples_per_obs)
        # When present, chooses the sampler's starting noise from the observation (noise-space steering).
        self.noise_actor = noise_actor
        # reset(seed=...) makes the episode's sampling noise a function of its seed (reproducible evaluation).
        self._episode_seed: int | None = None
        self._episode_generator: torch.Generator | None = None
        self.dispersive_weight = float(dispersive_weight)
        self.dispersive = dispersive if self.dispersive_weight > 0 else None
        self._disperse_embedding = OBS_EMBEDDING in dispersive_layers
        block_layers = [name for name in dispersive_layers if name != OBS_EMBEDDING]
        if self.dispersive is not None and not (block_layers or self._disperse_embedding):
            raise ValueError("dispersive weight > 0 but no layer to regularize; set dispersive.layers")
        self._tap = FeatureTap(self, block_layers) if self.dispersive is not None and block_layers else None
        self._obs_history: deque = deque(maxlen=n_obs_steps)
        self._action_queue: deque = deque()

    # ------------------------------------------------------------------ training
    def compute_loss(
        self, batch: Mapping[str, Any], diagnostics: bool = False
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on a batch ``{"obs": {key: (B, To, ...)}, "action": (B, H, Da)}`` in raw (unnormalized) units."""
        obs, actions = batch["obs"], batch["action"]
        self.shape_meta.check_obs(obs, leading_dims=2)
        self._check_actions(actions)
        steps = obs[next(iter(self.shape_meta.obs))].shape[1]
        if steps != self.n_obs_steps:
            raise SpecError(f"batch has {steps} observation steps; this policy needs {self.n_obs_steps}")
        nactions = self.normalizer.normalize("action", actions)  # (B, H, Da)
        with self._capture() as block_features:
            cond = self.obs_encoder(self._normalize_obs(obs))  # (B, To * D)
            k = self.samples_per_obs
            loss, metrics = self.head.compute_loss(nactions.repeat_interleave(k, 0), cond.repeat_interleave(k, 0))
        metrics = dict(metrics)
        if self.dispersive is not None:
            features = ([cond] if self._disperse_embedding else []) + block_features
            loss, disp_metrics = regularized_loss(loss, features, self.dispersive, self.dispersive_weight)
            metrics.update(disp_metrics)
        metrics["loss"] = float(loss.detach())
        if diagnostics:
            from encoders.diagnostics import collapse_metrics

            metrics.update(collapse_metrics(cond.detach(), prefix="embedding"))
        return loss, metrics

    def _capture(self) -> AbstractContextManager[list[torch.Tensor]]:
        """Hooks on the configured backbone blocks for the duration of one loss computation."""
        return self._tap.capture() if self._tap is not None else contextlib.nullcontext([])

    def _check_actions(self, actions: torch.Tensor) -> None:
        expected = (self.horizon, self.shape_meta.action_dim)
        if actions.dim() != 3 or tuple(actions.shape[1:]) != expected:
            raise SpecError(f"'action' has shape {tuple(actions.shape)}; expected (B, {expected[0]}, {expected[1]})")
        if not torch.isfinite(actions).all():
            raise SpecError("'action' contains NaN or inf")

    def _normalize_obs(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: self.normalizer.normalize(key, obs[key]) for key in self.shape_meta.obs}

    def condition(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The head's condition ``(B, To * D)`` for raw observations ``{key: (B, To, ...)}``, with autograd."""
        self.shape_meta.check_obs(obs, leading_dims=2)
        return self.obs_encoder(self._normalize_obs(obs))

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def embed(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Condition embedding ``(B, To * D)`` the head sees for raw observations ``{key: (B, To, ...)}``: what the
        collapse diagnostics and the dispersive term look at."""
        self.shape_meta.check_obs(obs, leading_dims=2)
        return self.obs_encoder(self._normalize_obs(obs))

    @torch.no_grad()
    def predict_action(
        self,
        obs: Mapping[str, Any],
        num_steps: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Any:
        """Executed action chunk from an observation history.

        ``obs``: ``{key: (B, To, ...)}`` or unbatched ``{key: (To, ...)}``, torch tensors or numpy arrays; a longer
        history is cut to the last ``n_obs_steps``. Returns ``(B, n_action_steps, Da)`` (or ``(n_action_steps, Da)``
        when unbatched), numpy when the input was numpy. An explicit ``noise`` is the sampler's starting noise
        ``(B, H, Da)``; without it the noise comes from ``generator``, else the episode's (see :meth:`reset`).
        """
        missing = [k for k in self.shape_meta.obs if k not in obs]
        if missing:
            raise SpecError(f"observation is missing key(s) {missing}; expected {list(self.shape_meta.obs)}")
        first = next(iter(self.shape_meta.obs.values()))
        as_numpy = isinstance(obs[first.key], np.ndarray)
        tensors = {}
        for key in self.shape_meta.obs:
            try:
                tensors[key] = torch.as_tensor(obs[key], device=self._device())
            except (TypeError, ValueError, RuntimeError) as e:
                raise SpecError(f"observation '{key}' is not a numeric array ({type(e).__name__}: {e})") from None
        unbatched = tensors[first.key].dim() == len(first.shape) + 1
        for key, x in tensors.items():
            x = x.unsqueeze(0) if unbatched else x
            tensors[key] = x[:, -self.n_obs_steps :] if x.dim() >= 2 else x  # keep the latest history
        self.shape_meta.check_obs(tensors, leading_dims=2)
        steps = tensors[first.key].shape[1]
        if steps != self.n_obs_steps:
            raise SpecError(f"got {steps} observation steps; this policy needs {self.n_obs_steps}")
        normalized = self._normalize_obs(tensors)
        cond = self.obs_encoder(normalized)
        if generator is None:
            generator = self._episode_rng(cond.device)
        n = num_steps if num_steps is not None else self.num_inference_steps
        if noise is not None:
            noise = torch.as_tensor(noise, device=cond.device)
            noise = noise.unsqueeze(0) if unbatched and noise.dim() == 2 else noise
        elif self.noise_actor is not None:
            noise = self.noise_actor(cond)
        naction = self.head.sample(cond, num_steps=n, noise=noise, generator=generator)  # (B, H, Da)
        action = self.normalizer.unnormalize("action", naction)
        if not torch.isfinite(action).all():
            raise SpecError(self._why_not_finite(normalized))
        start = self.n_obs_steps - 1
        action = action[:, start : start + self.n_action_steps]
        if unbatched:
            action = action[0]
        return action.cpu().numpy() if as_numpy else action

    def _why_not_finite(self, normalized: Mapping[str, torch.Tensor]) -> str:
        """Name the observation that drove the network out of its range, when one did."""
        for key, x in normalized.items():
            if self.shape_meta.obs[key].type == "rgb":
                continue
            peak = float(x.abs().max()) if x.numel() else 0.0
            if not peak <= OUT_OF_RANGE:  # also NaN
                lo, hi = (self.normalizer.stats(key)[b].cpu().numpy() for b in ("min", "max"))
                return (
                    f"the policy produced NaN/inf actions: observation '{key}' lies far outside the range it was "
                    f"trained on (normalized magnitude {peak:.3g}; training range min {lo.tolist()}, max {hi.tolist()})"
                )
        return "the policy produced NaN/inf actions from in-range observations; its weights may be damaged"

    @torch.no_grad()
    def select_action(self, obs: Mapping[str, Any]) -> Any:
        """One action for the current single-step observation ``{key: (B, ...)}`` (or unbatched ``(...)``).

        Keeps the last ``n_obs_steps`` observations (repeating the first at episode start) and a queue of actions;
        the network runs only when the queue is empty.
        """
        self._obs_history.append(obs)
        while len(self._obs_history) < self.n_obs_steps:
            self._obs_history.appendleft(obs)
        if not self._action_queue:
            history = {
                key: _stack([o[key] for o in self._obs_history], axis=-len(spec.shape) - 1)
                for key, spec in self.shape_meta.obs.items()
            }
            chunk = self.predict_action(history)  # (B, n, Da) or (n, Da)
            steps = chunk.shape[-2]
            for i in range(steps):
                self._action_queue.append(chunk[..., i, :])
        return self._action_queue.popleft()

    def reset(self, seed: int | None = None) -> None:
        """Clear the observation history and the action queue (call at every episode start).

        With ``seed``, the episode's sampling noise is drawn from a generator seeded with it instead of torch's global
        one, so evaluating a checkpoint on fixed episode seeds gives the same actions every time, whatever the number
        of worker processes or the order of episodes (the evaluation runner passes each episode's seed)."""
        self._obs_history.clear()
        self._action_queue.clear()
        self._episode_seed = None if seed is None else int(seed)
        self._episode_generator = None

    def _episode_rng(self, device: torch.device) -> torch.Generator | None:
        """The episode's generator (made on first use, on the device the noise is drawn on); None without a seed."""
        if self._episode_seed is None:
            return None
        if self._episode_generator is None or self._episode_generator.device != device:
            self._episode_generator = torch.Generator(device=device).manual_seed(self._episode_seed)
        return self._episode_generator

    def starting_noise(self, batch: int = 1) -> torch.Tensor:
        """A draw of the sampler's starting noise ``(batch, H, Da)`` from the episode's generator (see :meth:`reset`),
        e.g. to hold one draw for a whole episode."""
        device = self._device()
        shape = (batch, self.horizon, self.shape_meta.action_dim)
        return torch.randn(shape, generator=self._episode_rng(device), device=device)

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


def _stack(items: list[Any], axis: int) -> Any:
    if isinstance(items[0], np.ndarray):
        return np.stack(items, axis=axis)
    return torch.stack([torch.as_tensor(x) for x in items], dim=axis)
