"""The policy: observation encoder + action head + normalizer, behind one small API.

Training calls :meth:`Policy.compute_loss`; evaluation, export and deployment call :meth:`Policy.predict_action`
(a whole executed chunk per call) or :meth:`Policy.select_action` (one action per call, served from a queue).
"""
from __future__ import annotations

import contextlib
from collections import deque
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from demos.spec import ShapeMeta, SpecError
from encoders.dispersive import OBS_EMBEDDING, FeatureTap, regularized_loss
from policies.normalizer import LinearNormalizer



class Policy(nn.Module):
    """A visuomotor policy that predicts an action chunk from ``n_obs_steps`` observations.

    The action window has ``horizon`` steps aligned with the first observation step; the executed part is
    ``window[n_obs_steps - 1 : n_obs_steps - 1 + n_action_steps]`` (DP/DP3 convention).
    """

    def __init__(
        self,
        shape_meta: ShapeMeta,
        obs_encoder: nn.Module,
        head: nn.Module,
        normalizer: LinearNormalizer,
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        dispersive: Optional[nn.Module] = None,
        dispersive_weight: float = 0.0,
        dispersive_layers: Sequence[str] = (OBS_EMBEDDING,),
        num_inference_steps: Optional[int] = None,
        samples_per_obs: int = 1,
        aux_regression: Optional[nn.Module] = None,
        aux_regression_weight: float = 0.0,
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
        # Scale of the sampler's starting noise at inference: 1 = the trained distribution, 0 = one deterministic
        # chunk per observation (the head's map of the noise origin). Set after loading, e.g. by `mfp eval`.
        self.noise_scale = 1.0
        # One starting noise per episode instead of a fresh draw per chunk: drawn at the first chunk after reset()
        # and reused until the next, so successive chunks are the same draw of the policy and a multimodal policy
        # does not switch modes between re-plans. Set after loading, e.g. by `mfp eval hold_noise=true`.
        self.hold_noise = False
        self._held_noise: Optional[torch.Tensor] = None
        # Inference only: the executed chunk is the mean of this many sampler draws (normalized action space), an
        # estimate of the learned policy's conditional mean, which is what regression predicts. It suits unimodal
        # demonstrations (scripted experts); averaging draws of a multimodal policy mixes its modes. 1 = one draw.
        self.average_draws = 1
        # reset(seed=...) makes the episode's sampling noise a function of its seed (reproducible evaluation).
        self._episode_seed: Optional[int] = None
        self._episode_generator: Optional[torch.Generator] = None
        self.dispersive_weight = float(dispersive_weight)
        self.dispersive = dispersive if self.dispersive_weight > 0 else None
        self._disperse_embedding = OBS_EMBEDDING in dispersive_layers
        block_layers = [name for name in dispersive_layers if name != OBS_EMBEDDING]
        if self.dispersive is not None and not (block_layers or self._disperse_embedding):
            raise ValueError("dispersive weight > 0 but no layer to regularize; set dispersive.layers")
        self._tap = FeatureTap(self, block_layers) if self.dispersive is not None and block_layers else None
        # Training only: an auxiliary regression of the chunk from the embedding, added to the loss with this weight.
        self.aux_regression_weight = float(aux_regression_weight)
        self.aux_regression = aux_regression if self.aux_regression_weight > 0 else None
        self._obs_history: deque = deque(maxlen=n_obs_steps)
        self._action_queue: deque = deque()

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any], diagnostics: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
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
        if self.aux_regression is not None:
            aux = self.aux_regression.loss(cond, nactions)
            loss = loss + self.aux_regression_weight * aux
            metrics["aux_regression"] = float(aux.detach())
        if self.dispersive is not None:
            features = ([cond] if self._disperse_embedding else []) + block_features
            loss, disp_metrics = regularized_loss(loss, features, self.dispersive, self.dispersive_weight)
            metrics.update(disp_metrics)
        metrics["loss"] = float(loss.detach())
        if diagnostics:
            from encoders.diagnostics import collapse_metrics

            metrics.update(collapse_metrics(cond.detach(), prefix="embedding"))
        return loss, metrics

    def _capture(self):
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
        num_steps: Optional[int] = None,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Any:
        """Executed action chunk from an observation history.

        ``obs``: ``{key: (B, To, ...)}`` or unbatched ``{key: (To, ...)}``, torch tensors or numpy arrays; a longer
        history is cut to the last ``n_obs_steps``. Returns ``(B, n_action_steps, Da)`` (or ``(n_action_steps, Da)``
        when unbatched), numpy when the input was numpy. An explicit ``noise`` is ``(B * average_draws, H, Da)``.
        """
        missing = [k for k in self.shape_meta.obs if k not in obs]
        if missing:
            raise SpecError(f"observation is missing key(s) {missing}; expected {list(self.shape_meta.obs)}")
        first = next(iter(self.shape_meta.obs.values()))
        as_numpy = isinstance(obs[first.key], np.ndarray)
        unbatched = obs[first.key].ndim == len(first.shape) + 1
        tensors = {}
        for key in self.shape_meta.obs:
            x = torch.as_tensor(obs[key], device=self._device())
            x = x.unsqueeze(0) if unbatched else x
            tensors[key] = x[:, -self.n_obs_steps :] if x.dim() >= 2 else x  # keep the latest history
        self.shape_meta.check_obs(tensors, leading_dims=2)
        steps = tensors[first.key].shape[1]
        if steps != self.n_obs_steps:
            raise SpecError(f"got {steps} observation steps; this policy needs {self.n_obs_steps}")
        cond = self.obs_encoder(self._normalize_obs(tensors))
        if generator is None:
            generator = self._episode_rng(cond.device)
        n = num_steps if num_steps is not None else self.num_inference_steps
        draws = int(self.average_draws)
        if draws < 1:
            raise ValueError(f"average_draws must be >= 1, got {draws}")
        if draws > 1:  # the encoder ran once; only the head sees the repeated condition
            cond = cond.repeat_interleave(draws, dim=0)
        if noise is None and (self.hold_noise or self.noise_scale != 1.0):
            noise = self.noise_scale * self._starting_noise(cond, generator)
        naction = self.head.sample(cond, num_steps=n, noise=noise, generator=generator)  # (B * draws, H, Da)
        if draws > 1:
            naction = naction.unflatten(0, (-1, draws)).mean(dim=1)
        action = self.normalizer.unnormalize("action", naction)
        start = self.n_obs_steps - 1
        action = action[:, start : start + self.n_action_steps]
        if unbatched:
            action = action[0]
        return action.cpu().numpy() if as_numpy else action

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
            history = {key: _stack([o[key] for o in self._obs_history], axis=-len(spec.shape) - 1)
                       for key, spec in self.shape_meta.obs.items()}
            chunk = self.predict_action(history)  # (B, n, Da) or (n, Da)
            steps = chunk.shape[-2]
            for i in range(steps):
                self._action_queue.append(chunk[..., i, :])
        return self._action_queue.popleft()

    def reset(self, seed: Optional[int] = None) -> None:
        """Clear the observation history, the action queue and any held noise (call at every episode start).

        With ``seed``, the episode's sampling noise is drawn from a generator seeded with it instead of torch's global
        one, so evaluating a checkpoint on fixed episode seeds gives the same actions every time, whatever the number
        of worker processes or the order of episodes (the evaluation runner passes each episode's seed)."""
        self._obs_history.clear()
        self._action_queue.clear()
        self._held_noise = None
        self._episode_seed = None if seed is None else int(seed)
        self._episode_generator = None

    def _episode_rng(self, device: torch.device) -> Optional[torch.Generator]:
        """The episode's generator (made on first use, on the device the noise is drawn on); None without a seed."""
        if self._episode_seed is None:
            return None
        if self._episode_generator is None or self._episode_generator.device != device:
            self._episode_generator = torch.Generator(device=device).manual_seed(self._episode_seed)
        return self._episode_generator

    def _starting_noise(self, cond: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """A standard normal draw for the sampler; with ``hold_noise`` the episode's first draw, kept until reset()."""
        held = self._held_noise
        if not self.hold_noise or held is None or held.shape[0] != cond.shape[0] or held.device != cond.device:
            held = self.head.initial_noise(cond, None, generator)
        if self.hold_noise:
            self._held_noise = held
        return held

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


def _stack(items: list[Any], axis: int) -> Any:
    if isinstance(items[0], np.ndarray):
        return np.stack(items, axis=axis)
    return torch.stack([torch.as_tensor(x) for x in items], dim=axis)
