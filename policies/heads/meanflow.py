"""MeanFlow action head (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"), official convention.

Data at t = 0, noise at t = 1: ``z_t = (1 - t) x + t eps``, ``v = eps - x``. The network predicts the average
velocity ``u(z_t, r, t) = 1 / (t - r) * int_r^t v dtau`` conditioned on ``(t, t - r)``, trained towards
``u_tgt = v - clip(t - r, 0, 1) * du/dt`` with ``du/dt`` from ``torch.func.jvp`` along tangents ``(v, 1, 0)``.
One network evaluation then maps noise to an action chunk: ``a = eps - u(eps, t=1, h=1)``.
"""

from __future__ import annotations

import torch
from torch.func import jvp

from policies.backbones import Backbone
from policies.config import MeanFlowConfig
from policies.heads.base import ActionHead, HeadEntry, register_head


class MeanFlowHead(ActionHead):
    """One-step generative head trained with the MeanFlow identity; settings from :class:`MeanFlowConfig`.

    ``jvp_mode``: "primal" backpropagates through the JVP's primal output (one forward-mode pass gives u and
    du/dt; the graph also records the dual ops); "separate" runs a normal forward for u and the JVP under no_grad
    (one extra forward, less memory). Same loss and gradients. Only samples with r != t enter the JVP: for r = t
    the du/dt term is multiplied by zero, so it is not computed.
    """

    def __init__(self, backbone: Backbone, horizon: int, cfg: MeanFlowConfig) -> None:
        super().__init__(backbone, horizon)
        if backbone.n_time_inputs != 2:
            raise ValueError(
                f"MeanFlow conditions on (t, t - r): the backbone needs n_time_inputs=2, got {backbone.n_time_inputs}"
            )
        self.cfg = cfg
        self.default_num_steps = int(cfg.num_inference_steps)

    def u(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Average velocity ``u(z (B, H, Da), r (B,), t (B,) | cond (B, C))``; the network sees (t, t - r)."""
        return self.backbone(z, torch.stack([t, t - r], dim=1), cond)

    # ------------------------------------------------------------------ training
    def sample_t_r(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Two draws (logit-normal or uniform), t = max and r = min; then r = t for round(ratio_r_eq_t * B)
        samples, chosen at random."""
        cfg = self.cfg
        if cfg.t_dist == "uniform":
            s = torch.rand(2, batch, device=device)  # (2, B)
        else:
            s = torch.sigmoid(cfg.p_std * torch.randn(2, batch, device=device) + cfg.p_mean)
        t, r = s.max(dim=0).values, s.min(dim=0).values
        n_eq = round(cfg.ratio_r_eq_t * batch)
        if n_eq:
            idx = torch.randperm(batch, device=device)[:n_eq]
            r[idx] = t[idx]
        return t, r

    def compute_loss(self, actions: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MeanFlow loss on ``actions (B, H, Da)`` given ``cond (B, C)``; draws the noise and (t, r)."""
        self.check_batch(actions, cond)
        noise = torch.randn_like(actions)
        t, r = self.sample_t_r(actions.shape[0], actions.device)
        return self.loss_from(actions, cond, noise, t, r)

    def loss_from(
        self, actions: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss for given random draws: ``noise (B, H, Da)``, ``t, r (B,)`` with r <= t."""
        self.check_batch(actions, cond)
        dtype = torch.promote_types(actions.dtype, torch.float32)  # the JVP runs in fp32 (or wider), never bf16
        with torch.autocast(device_type=actions.device.type, enabled=False):
            x, noise, cond = actions.to(dtype), noise.to(dtype), cond.to(dtype)
            t, r = t.to(dtype), r.to(dtype)
            te = t[:, None, None]
            z = (1 - te) * x + te * noise  # (B, H, Da)
            v = noise - x  # (B, H, Da)

            # Reorder so samples needing du/dt (r != t) come first: the loss is a mean, so order is irrelevant.
            needs_jvp = t != r
            order = torch.cat([needs_jvp.nonzero().squeeze(1), (~needs_jvp).nonzero().squeeze(1)])
            n_jvp = int(needs_jvp.sum())
            z, t, r, v, cond = z[order], t[order], r[order], v[order], cond[order]
            u_pred, dudt = self._u_and_dudt(z, t, r, v, cond, n_jvp)  # (B, H, Da), (n_jvp, H, Da)
            u_tgt = v.clone()
            if dudt is not None:
                h = (t[:n_jvp] - r[:n_jvp]).clamp(0.0, 1.0)[:, None, None]
                u_tgt[:n_jvp] = v[:n_jvp] - h * dudt
            delta = u_pred - u_tgt.detach()  # (B, H, Da)
            d = delta.pow(2).sum(dim=(1, 2))  # (B,)
            w = (d.detach() + self.cfg.adaptive_c).pow(-self.cfg.adaptive_p)  # (B,)
            loss = (w * d).mean()
        metrics = {
            "loss": float(loss.detach()),
            "mse": float(delta.detach().pow(2).mean()),
            "frac_r_neq_t": n_jvp / len(order),
        }
        return loss, metrics

    def _u_and_dudt(
        self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, v: torch.Tensor, cond: torch.Tensor, n_jvp: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """u for the whole batch (with gradient) and du/dt (no gradient) for its first ``n_jvp`` samples along
        the tangent (v, 1, 0)."""
        if n_jvp == 0:
            return self.u(z, t, r, cond), None
        zj, tj, rj, cj = z[:n_jvp], t[:n_jvp], r[:n_jvp], cond[:n_jvp]
        tangents = (v[:n_jvp].detach(), torch.ones_like(tj), torch.zeros_like(rj))

        def u_fn(z_: torch.Tensor, t_: torch.Tensor, r_: torch.Tensor) -> torch.Tensor:
            return self.u(z_, t_, r_, cj)

        if self.cfg.jvp_mode == "separate":
            u_pred = self.u(z, t, r, cond)
            with torch.no_grad():
                dudt = jvp(u_fn, (zj, tj, rj), tangents)[1]
            return u_pred, dudt
        u_j, dudt = jvp(u_fn, (zj, tj, rj), tangents)[:2]
        if n_jvp == z.shape[0]:
            return u_j, dudt.detach()
        u_rest = self.u(z[n_jvp:], t[n_jvp:], r[n_jvp:], cond[n_jvp:])
        return torch.cat([u_j, u_rest]), dudt.detach()

    def one_step(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``a = eps - u(eps, t=1, h=1 | c)`` with autograd (the map the one-step sampler applies)."""
        ones = torch.ones(cond.shape[0], device=cond.device, dtype=cond.dtype)
        return noise - self.u(noise, ones, 0 * ones, cond)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        num_steps: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """k uniform steps ``z_r = z_t - (t - r) u(z_t, t, t - r | c)`` from t = 1 to 0; k = 1 is
        ``a = eps - u(eps, t=1, h=1 | c)``. Returns ``(B, H, Da)``."""
        steps = self.resolve_steps(num_steps)
        z = self.initial_noise(cond, noise, generator)  # (B, H, Da)
        grid = torch.linspace(1.0, 0.0, steps + 1, device=cond.device, dtype=cond.dtype)
        ones = torch.ones(cond.shape[0], device=cond.device, dtype=cond.dtype)
        for i in range(steps):
            t, r = grid[i] * ones, grid[i + 1] * ones
            z = z - (grid[i] - grid[i + 1]) * self.u(z, t, r, cond)
        return z


register_head(
    "meanflow",
    HeadEntry(
        build=MeanFlowHead, config_type=MeanFlowConfig, config_field="meanflow", n_time_inputs=2, draws_noise=True
    ),
)
