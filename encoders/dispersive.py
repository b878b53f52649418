"""Dispersive regularization ("Diffuse and Disperse", Wang & He 2025) and forward-hook feature taps.

A batch-wise repulsion on intermediate features, no positive pairs, no parameters. Each loss flattens its input
to (B, D) and returns a scalar; lower means more dispersed. The training loss is
``head_loss + weight * sum(DispersiveLoss(f) for f in features)``; with weight 0 the caller skips the term, so
the loss is exactly the head loss.

Variants, with d_ij = ||z_i - z_j||^2 / D (the official code's normalized squared distance):
    infonce_l2      log mean_{i,j} exp(-d_ij / tau)              over the full B x B matrix (diagonal included)
    infonce_cosine  log mean_{i,j} exp(cos(z_i, z_j) / tau)      (dissimilarity -cos, same log-mean-exp)
    hinge           mean_{i != j} max(0, margin - d_ij)^2
    covariance      sum_{m != n} Cov_mn^2 of the batch-standardized features (grows with D^2: pick the weight
                    accordingly)
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

DISPERSIVE_VARIANTS = ("infonce_l2", "infonce_cosine", "hinge", "covariance")
OBS_EMBEDDING = "obs_embedding"  # reserved layer name: the encoder output, passed in by the policy


def _flatten(z: torch.Tensor) -> torch.Tensor:
    if z.dim() < 2 or z.shape[0] < 2:
        raise ValueError(
            f"dispersive loss needs features of shape (B >= 2, ...), got {tuple(z.shape)}; "
            "a batch of one has nothing to disperse (use drop_last in the data loader)"
        )
    return z.reshape(z.shape[0], -1)  # (B, D)


def _sq_dists(z: torch.Tensor) -> torch.Tensor:
    """Pairwise squared L2 distances (B, B) of (B, D) features, from the Gram matrix of centred features
    (centring leaves distances unchanged and avoids cancellation when all features share a large offset);
    the diagonal is exactly 0."""
    z = z - z.mean(dim=0, keepdim=True)
    sq = z.square().sum(dim=1)  # (B,)
    d = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return d.masked_fill(eye, 0.0)


def _log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(x.reshape(-1), dim=0) - math.log(x.numel())


def infonce_l2(z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Official dispersive loss: log mean_{i,j} exp(-||z_i - z_j||^2 / (D * tau)). z: (B, ...) -> scalar."""
    z = _flatten(z)
    return _log_mean_exp(-_sq_dists(z) / (z.shape[1] * temperature))


def infonce_cosine(z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log mean_{i,j} exp(cos(z_i, z_j) / tau). z: (B, ...) -> scalar."""
    zn = F.normalize(_flatten(z), dim=1, eps=1e-8)
    return _log_mean_exp((zn @ zn.T) / temperature)


def hinge(z: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """mean_{i != j} max(0, margin - ||z_i - z_j||^2 / D)^2. z: (B, ...) -> scalar."""
    z = _flatten(z)
    d = _sq_dists(z) / z.shape[1]
    off_diag = ~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return F.relu(margin - d[off_diag]).square().mean()


def covariance(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """sum_{m != n} Cov_mn^2 over batch-standardized features. z: (B, ...) -> scalar."""
    z = _flatten(z)
    z = (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0) + eps)
    cov = (z.T @ z) / (z.shape[0] - 1)  # (D, D)
    return cov.square().sum() - torch.diagonal(cov).square().sum()


class DispersiveLoss(nn.Module):
    """One dispersive variant with its temperature (InfoNCE) or margin (hinge); sums over a list of features."""

    def __init__(self, variant: str = "infonce_l2", temperature: float = 1.0, margin: float = 1.0) -> None:
        super().__init__()
        if variant not in DISPERSIVE_VARIANTS:
            raise ValueError(f"unknown dispersive variant '{variant}'; known: {', '.join(DISPERSIVE_VARIANTS)}")
        if temperature <= 0:
            raise ValueError(f"dispersive temperature must be > 0, got {temperature}")
        self.variant = variant
        self.temperature = float(temperature)
        self.margin = float(margin)

    def forward(self, features: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """features: one (B, ...) tensor or several (each flattened on its own) -> scalar sum of the losses."""
        feats = [features] if isinstance(features, torch.Tensor) else list(features)
        if not feats:
            raise ValueError("DispersiveLoss got no features; check the configured layers")
        if not torch.is_grad_enabled() and any(f.requires_grad for f in feats):
            # DM1's released code computed its dispersive term under no_grad for months: it had no effect.
            raise RuntimeError(
                "DispersiveLoss called under torch.no_grad() on features that require grad: the regularizer "
                "would have no gradient. Compute it with grad enabled (or skip it when its weight is 0)."
            )
        return torch.stack([self._one(f) for f in feats]).sum()

    def _one(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        if self.variant == "infonce_l2":
            return infonce_l2(z, self.temperature)
        if self.variant == "infonce_cosine":
            return infonce_cosine(z, self.temperature)
        if self.variant == "hinge":
            return hinge(z, self.margin)
        return covariance(z)

    def extra_repr(self) -> str:
        return f"variant={self.variant}, temperature={self.temperature}, margin={self.margin}"


def regularized_loss(
    loss: torch.Tensor,
    features: Sequence[torch.Tensor],
    dispersive: DispersiveLoss,
    weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``loss + weight * dispersive(features)`` and its metrics; weight 0 returns ``loss`` itself, uncomputed."""
    if weight == 0.0:
        return loss, {}
    disp = dispersive(features)
    return loss + weight * disp, {"dispersive_loss": float(disp.detach())}


def _primal(t: torch.Tensor) -> torch.Tensor | None:
    """The plain autograd tensor behind ``t``: ``t`` itself, the primal of a torch.func.jvp/grad wrapper (so a
    layer run inside MeanFlow's JVP is still regularized, with gradient), or None inside vmap (batched)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        if functorch.is_batchedtensor(t):
            return None
        t = functorch.get_unwrapped(t)
    return t


class FeatureTap:
    """Collect the outputs of named submodules during a forward pass, with hooks only between start and stop.

    ``layer_names`` are dotted names from ``model.named_modules()``; ``"obs_embedding"`` is reserved (the encoder
    output, which the policy passes in itself) and is not hooked. Outside a capture no hook is registered, so
    inference pays nothing. Only outputs computed with grad enabled are kept (a no-grad pass cannot be
    regularized); outputs computed inside torch.func.jvp are kept as their primal. Several calls of one layer in
    a capture (a batch split into chunks, like MeanFlow's JVP and non-JVP samples) are concatenated along the
    batch dim, so the layer is regularized over the whole batch.

        tap = FeatureTap(model, ["head.backbone.down_modules.0"])
        tap.start()
        loss = model(...)
        features = tap.stop()             # [tensor per hooked layer], in layer order

        with tap.capture() as features:  # the same, exception-safe; ``features`` is filled on exit
            loss = model(...)
    """

    def __init__(self, model: nn.Module, layer_names: Sequence[str]) -> None:
        self.layer_names = list(layer_names)
        self.wants_obs_embedding = OBS_EMBEDDING in self.layer_names
        self.module_names = [n for n in self.layer_names if n != OBS_EMBEDDING]
        available = [n for n, _ in model.named_modules() if n]
        unknown = [n for n in self.module_names if n not in set(available)]
        if unknown:
            hints = {n: difflib.get_close_matches(n, available, n=3) for n in unknown}
            hint_text = "; ".join(f"'{n}' (close: {', '.join(h) or 'none'})" for n, h in hints.items())
            raise KeyError(
                f"FeatureTap: unknown layer name(s) {hint_text}. '{OBS_EMBEDDING}' is reserved for the encoder "
                f"output; available module names: {', '.join(available)}"
            )
        self._targets = {n: model.get_submodule(n) for n in self.module_names}
        for name, module in self._targets.items():
            if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
                children = ", ".join(f"{name}.{c}" for c, _ in module.named_children())
                raise KeyError(
                    f"FeatureTap: '{name}' is a {type(module).__name__}, which is never called itself; "
                    f"tap one of its children: {children}"
                )
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._store: dict[str, list[torch.Tensor]] = {}

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def start(self) -> None:
        """Register the forward hooks and clear what an earlier capture collected."""
        if self.active:
            raise RuntimeError("FeatureTap.start(): a capture is already active; call stop() first")
        self._store = {n: [] for n in self.module_names}
        for name, module in self._targets.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def stop(self) -> list[torch.Tensor]:
        """Remove the hooks; return one (B, ...) tensor per hooked layer. Raises if a layer produced nothing."""
        self._remove_hooks()
        silent = [n for n, outs in self._store.items() if not outs]
        if silent:
            raise RuntimeError(
                f"FeatureTap: layer(s) {silent} produced no output with grad enabled during the capture; "
                "the forward did not call them, or called them only under torch.no_grad()"
            )
        return [outs[0] if len(outs) == 1 else torch.cat(outs, dim=0) for outs in self._store.values()]

    @contextmanager
    def capture(self) -> Iterator[list[torch.Tensor]]:
        """``start()`` on entry; on a normal exit the yielded list receives ``stop()``'s tensors."""
        features: list[torch.Tensor] = []
        self.start()
        try:
            yield features
        except BaseException:
            self._remove_hooks()
            raise
        features.extend(self.stop())

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"FeatureTap: layer '{name}' returned {type(output).__name__}, not a tensor")
            if torch.is_grad_enabled():
                primal = _primal(out)
                if primal is not None and primal.requires_grad:
                    self._store[name].append(primal)

        return hook
