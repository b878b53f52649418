"""MeanFlow action head (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"), official convention.

Data at t = 0, noise at t = 1: ``z_t = (1 - t) x + t eps``, ``v = eps - x``. The network predicts the average
velocity ``u(z_t, r, t) = 1 / (t - r) * int_r^t v dtau`` conditioned on ``(t, t - r)``, trained towards
``u_tgt = v~ - clip(t - r, 0, 1) * du/dt`` with ``du/dt`` from ``torch.func.jvp`` along tangents ``(v~, 1, 0)``.
One network evaluation then maps noise to an action chunk: ``a = eps - u(eps, t=1, h=1)``.

``prediction="x"`` (pixel MeanFlow, Lu et al. 2026) keeps that loss but has the network output the field
``x(z_t, r, t) = z_t - t u`` and derives ``u = (z_t - x) / t``: at the one-step query ``x`` is the action itself,
so the network never has to carry the noise through to cancel it (DP3's DDIM predicts the sample for the same reason).

``alpha_anneal_frac > 0`` trains the r != t samples with the alpha-Flow family (Zhang et al. 2025, "AlphaFlow") for
that first fraction of training: with ``s = alpha r + (1 - alpha) t`` the target is
``alpha v~ + (1 - alpha) u(z_s, r, s)`` (no gradient), weighted by ``1 / alpha``. alpha = 1 is trajectory flow
matching (u regressed on v, no JVP); as alpha -> 0 the gradient becomes MeanFlow's. alpha follows a sigmoid from 1 to 0
and MeanFlow's JVP target takes over once it drops below ``ALPHA_MIN``.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import jvp

from policies.heads import ActionHead

JVP_MODES = ("primal", "separate")
JVP_TANGENTS = ("conditional", "predicted")
PREDICTIONS = ("u", "x")
T_DISTS = ("logit_normal", "uniform")
COND_GRADS = ("all", "r_eq_t")
ALPHA_MIN = 5e-3  # below this the alpha-Flow target is MeanFlow's to within the JVP's own error: switch to the JVP
ALPHA_SHARPNESS = 10.0  # slope of the sigmoid that takes alpha from 1 to 0 over the anneal


class MeanFlowHead(ActionHead):
    """One-step generative head trained with the MeanFlow identity.

    ``jvp_mode``: "primal" backpropagates through the JVP's primal output (one forward-mode pass gives u and
    du/dt; the graph also records the dual ops); "separate" runs a normal forward for u and the JVP under no_grad
    (one extra forward, less memory). Same loss and gradients; on CPU "primal" is ~4 % faster on the U-Net and
    ~4 % slower on the MLP backbone. Only samples with r != t enter the JVP: for r = t the du/dt term is
    multiplied by zero, so it is not computed.
    """

    def __init__(
        self,
        backbone: nn.Module,
        horizon: int,
        p_mean: float = -0.4,
        p_std: float = 1.0,
        t_dist: str = "logit_normal",
        ratio_r_eq_t: float = 0.5,
        ratio_one_step: float = 0.0,
        adaptive_p: float = 1.0,
        adaptive_c: float = 1e-3,
        cfg_omega: float = 1.0,
        cfg_kappa: float = 0.0,
        cond_drop_prob: float = 0.0,
        cfg_t_min: float = 0.0,
        cfg_t_max: float = 1.0,
        num_inference_steps: int = 1,
        jvp_mode: str = "primal",
        jvp_tangent: str = "conditional",
        prediction: str = "u",
        x_t_floor: float = 0.05,
        fm_warmup_frac: float = 0.0,
        alpha_anneal_frac: float = 0.0,
        cond_grad: str = "all",
    ) -> None:
        super().__init__(backbone, horizon)
        if backbone.n_time_inputs != 2:
            raise ValueError(f"MeanFlow conditions on (t, t - r): the backbone needs n_time_inputs=2, got {backbone.n_time_inputs}")
        if jvp_mode not in JVP_MODES:
            raise ValueError(f"unknown jvp_mode '{jvp_mode}'; known: {', '.join(JVP_MODES)}")
        if jvp_tangent not in JVP_TANGENTS:
            raise ValueError(f"unknown jvp_tangent '{jvp_tangent}'; known: {', '.join(JVP_TANGENTS)}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction '{prediction}'; known: {', '.join(PREDICTIONS)}")
        if not 0.0 < x_t_floor <= 1.0:
            raise ValueError(f"x_t_floor must be in (0, 1], got {x_t_floor}")
        if cond_grad not in COND_GRADS:
            raise ValueError(f"unknown cond_grad '{cond_grad}'; known: {', '.join(COND_GRADS)}")
        if t_dist not in T_DISTS:
            raise ValueError(f"unknown t_dist '{t_dist}'; known: {', '.join(T_DISTS)}")
        if not 0.0 <= ratio_r_eq_t <= 1.0:
            raise ValueError("ratio_r_eq_t must be in [0, 1]")
        if not (0.0 <= ratio_one_step <= 1.0 and ratio_r_eq_t + ratio_one_step <= 1.0):
            raise ValueError(
                f"ratio_one_step must be in [0, 1] and ratio_r_eq_t + ratio_one_step <= 1, got {ratio_one_step} "
                f"(ratio_r_eq_t {ratio_r_eq_t})"
            )
        if not 0.0 <= cond_drop_prob < 1.0:
            raise ValueError("cond_drop_prob must be in [0, 1)")
        if not 0.0 <= fm_warmup_frac <= 1.0:
            raise ValueError(f"fm_warmup_frac must be in [0, 1], got {fm_warmup_frac}")
        if not 0.0 <= alpha_anneal_frac <= 1.0:
            raise ValueError(f"alpha_anneal_frac must be in [0, 1], got {alpha_anneal_frac}")
        if cfg_kappa >= 1.0:
            raise ValueError("cfg_kappa must be < 1")
        uses_null = cfg_omega + cfg_kappa != 1.0
        if uses_null and cond_drop_prob == 0.0:
            raise ValueError(
                f"guidance with cfg_omega + cfg_kappa != 1 ({cfg_omega} + {cfg_kappa}) uses the null condition, which "
                "is only trained when cond_drop_prob > 0; set cond_drop_prob (e.g. 0.1)"
            )
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.t_dist = t_dist
        self.ratio_r_eq_t = float(ratio_r_eq_t)
        self.ratio_one_step = float(ratio_one_step)
        self.adaptive_p, self.adaptive_c = float(adaptive_p), float(adaptive_c)
        self.cfg_omega, self.cfg_kappa = float(cfg_omega), float(cfg_kappa)
        self.cond_drop_prob = float(cond_drop_prob)
        self.cfg_t_min, self.cfg_t_max = float(cfg_t_min), float(cfg_t_max)
        self.default_num_steps = int(num_inference_steps)
        self.jvp_mode, self.jvp_tangent = jvp_mode, jvp_tangent
        self.prediction, self.x_t_floor = prediction, float(x_t_floor)
        self.fm_warmup_frac = float(fm_warmup_frac)
        self.alpha_anneal_frac = float(alpha_anneal_frac)
        self.cond_grad = cond_grad
        # Learned "no condition" embedding, used for dropped samples and the unconditional guidance term.
        self.null_cond = nn.Parameter(0.02 * torch.randn(self.cond_dim)) if cond_drop_prob > 0 else None

    @property
    def guided(self) -> bool:
        """False when omega = 1 and kappa = 0: then v~ = v and no extra network evaluation is made."""
        return self.cfg_omega != 1.0 or self.cfg_kappa != 0.0

    def u(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Average velocity ``u(z (B, H, Da), r (B,), t (B,) | cond (B, C))``; the network sees (t, t - r).

        With ``prediction="x"`` the network output is ``x`` and ``u = (z - x) / max(t, x_t_floor)``; the floor keeps
        the division (and its weight on the loss) bounded near t = 0, where ``x`` is z to within t."""
        out = self.backbone(z, torch.stack([t, t - r], dim=1), cond)
        if self.prediction == "u":
            return out
        return (z - out) / t.clamp(min=self.x_t_floor)[:, None, None]

    # ------------------------------------------------------------------ training
    def mean_flow_share(self) -> float:
        """How much of the configured r != t share is in use now: 1, or during the first ``fm_warmup_frac`` of
        training a linear ramp from 0 (every sample r = t, i.e. plain flow matching, no JVP) to 1."""
        if self.fm_warmup_frac <= 0.0:
            return 1.0
        return min(1.0, self.training_progress / self.fm_warmup_frac)

    def consistency_alpha(self) -> float:
        """alpha of the alpha-Flow target now: a sigmoid in training progress from 1 at the first step to 0 at
        ``alpha_anneal_frac``; 0 (MeanFlow's JVP target) after it, when it is off, or once alpha < ``ALPHA_MIN``."""
        if self.alpha_anneal_frac <= 0.0 or self.training_progress >= self.alpha_anneal_frac:
            return 0.0
        q, k = self.training_progress / self.alpha_anneal_frac, ALPHA_SHARPNESS

        def sig(x: float) -> float:
            return 1.0 / (1.0 + math.exp(-x))

        alpha = (sig(k * (0.5 - q)) - sig(-k / 2)) / (sig(k / 2) - sig(-k / 2))
        return alpha if alpha >= ALPHA_MIN else 0.0

    def sample_t_r(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Two draws (logit-normal or uniform), t = max and r = min; then r = t for round(ratio_r_eq_t * B) samples
        and (t, r) = (1, 0), the point the one-step sampler queries, for round(ratio_one_step * B) others. During
        the flow-matching warm-up both r != t shares are scaled by :meth:`mean_flow_share`."""
        if self.t_dist == "uniform":
            s = torch.rand(2, batch, device=device)  # (2, B)
        else:
            s = torch.sigmoid(self.p_std * torch.randn(2, batch, device=device) + self.p_mean)
        t, r = s.max(dim=0).values, s.min(dim=0).values
        share = self.mean_flow_share()
        # written so that share = 1 gives exactly ratio_r_eq_t (1 - (1 - 0.1) is 0.09999999999999998: one sample short)
        n_eq = round((self.ratio_r_eq_t + (1.0 - self.ratio_r_eq_t) * (1.0 - share)) * batch)
        n_one = min(round(self.ratio_one_step * share * batch), batch - n_eq)
        if n_eq or n_one:
            idx = torch.randperm(batch, device=device)
            r[idx[:n_eq]] = t[idx[:n_eq]]
            t[idx[n_eq:n_eq + n_one]], r[idx[n_eq:n_eq + n_one]] = 1.0, 0.0
        return t, r

    def compute_loss(self, actions: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MeanFlow loss on ``actions (B, H, Da)`` given ``cond (B, C)``; draws noise, (t, r) and the drop mask."""
        self.check_batch(actions, cond)
        batch = actions.shape[0]
        noise = torch.randn_like(actions)
        t, r = self.sample_t_r(batch, actions.device)
        drop = torch.rand(batch, device=actions.device) < self.cond_drop_prob
        return self.loss_from(actions, cond, noise, t, r, drop)

    def loss_from(
        self,
        actions: torch.Tensor,
        cond: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        r: torch.Tensor,
        drop: torch.Tensor,
        alpha: float | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss for given random draws: ``noise (B, H, Da)``, ``t, r (B,)`` with r <= t, ``drop (B,)`` bool.
        ``alpha`` in [0, 1] picks the r != t target (0: MeanFlow's JVP; > 0: alpha-Flow); None: the schedule's."""
        self.check_batch(actions, cond)
        alpha = self.consistency_alpha() if alpha is None else float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        dtype = torch.promote_types(actions.dtype, torch.float32)  # the JVP runs in fp32 (or wider), never bf16
        with torch.autocast(device_type=actions.device.type, enabled=False):
            x, noise, cond = actions.to(dtype), noise.to(dtype), cond.to(dtype)
            t, r = t.to(dtype), r.to(dtype)
            te = t[:, None, None]
            z = (1 - te) * x + te * noise  # (B, H, Da)
            v = noise - x  # (B, H, Da)
            if self.null_cond is not None and bool(drop.any()):
                cond_in = torch.where(drop[:, None], self.null_cond.expand_as(cond), cond)
            else:
                cond_in = cond
            v_tilde = self.guided_velocity(z, t, v, cond, drop) if self.guided else v

            # Reorder so samples needing du/dt (r != t) come first: the loss is a mean, so order is irrelevant.
            needs_jvp = t != r
            order = torch.cat([needs_jvp.nonzero().squeeze(1), (~needs_jvp).nonzero().squeeze(1)])
            n_jvp = int(needs_jvp.sum())
            z, t, r, v, v_tilde, cond_in = z[order], t[order], r[order], v[order], v_tilde[order], cond_in[order]
            if self.cond_grad == "r_eq_t" and n_jvp:  # the encoder learns from the flow-matching samples only
                cond_in = torch.cat([cond_in[:n_jvp].detach(), cond_in[n_jvp:]])
            if alpha > 0.0:
                u_pred, u_tgt = self._alpha_flow_target(z, t, r, v, v_tilde, cond_in, n_jvp, alpha)
            else:
                u_pred, dudt = self._u_and_dudt(z, t, r, v_tilde, cond_in, n_jvp)  # (B, H, Da), (n_jvp, H, Da)
                u_tgt = v_tilde.clone()
                if n_jvp:
                    h = (t[:n_jvp] - r[:n_jvp]).clamp(0.0, 1.0)[:, None, None]
                    u_tgt[:n_jvp] = v_tilde[:n_jvp] - h * dudt
            u_tgt = u_tgt.detach()
            delta = u_pred - u_tgt  # (B, H, Da)
            d = delta.pow(2).sum(dim=(1, 2))  # (B,)
            if alpha > 0.0 and n_jvp:
                d = torch.cat([d[:n_jvp] / alpha, d[n_jvp:]])  # the 1/alpha keeps the gradient MeanFlow's as alpha -> 0
            w = (d.detach() + self.adaptive_c).pow(-self.adaptive_p)  # (B,)
            loss = (w * d).mean()
        metrics = {
            "loss": float(loss.detach()),
            "mse": float(delta.detach().pow(2).mean()),
            "frac_r_neq_t": n_jvp / len(order),
            "alpha": alpha,
            "frac_cond_dropped": float(drop.float().mean()) if self.null_cond is not None else 0.0,
        }
        return loss, metrics

    def guided_velocity(
        self, z: torch.Tensor, t: torch.Tensor, v: torch.Tensor, cond: torch.Tensor, drop: torch.Tensor
    ) -> torch.Tensor:
        """``v~ = w v + k u(z, t, t | c) + (1 - w - k) u(z, t, t | null)`` (no gradient) inside [t_min, t_max] for
        samples whose condition is kept; plain ``v`` elsewhere (dropped samples always use ``v``)."""
        w_null = 1.0 - self.cfg_omega - self.cfg_kappa
        with torch.no_grad():
            v_tilde = self.cfg_omega * v
            if self.cfg_kappa != 0.0:
                v_tilde = v_tilde + self.cfg_kappa * self.u(z, t, t, cond)
            if w_null != 0.0:
                v_tilde = v_tilde + w_null * self.u(z, t, t, self.null_cond.expand_as(cond))
        apply = (~drop) & (t >= self.cfg_t_min) & (t <= self.cfg_t_max)
        return torch.where(apply[:, None, None], v_tilde, v)

    def _alpha_flow_target(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        r: torch.Tensor,
        v: torch.Tensor,
        v_tilde: torch.Tensor,
        cond: torch.Tensor,
        n_mf: int,
        alpha: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u for the whole batch (with gradient) and the target: v~, and for the first ``n_mf`` (r != t) samples
        ``alpha v~ + (1 - alpha) u(z_s, r, s)`` at ``s = alpha r + (1 - alpha) t``. ``z_s = z_t - (t - s) v`` is the
        same noise/action pair's point at s: the average velocity over [r, t] is the alpha / (1 - alpha) blend of
        those over [s, t] (~ v~ when t - s is short) and [r, s]."""
        u_pred = self.u(z, t, r, cond)
        u_tgt = v_tilde.clone()
        if n_mf:
            tj, rj = t[:n_mf], r[:n_mf]
            s = alpha * rj + (1.0 - alpha) * tj
            z_s = z[:n_mf] - (tj - s)[:, None, None] * v[:n_mf]
            with torch.no_grad():
                u_s = self.u(z_s, s, rj, cond[:n_mf])
            u_tgt[:n_mf] = alpha * v_tilde[:n_mf] + (1.0 - alpha) * u_s
        return u_pred, u_tgt

    def _u_and_dudt(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        r: torch.Tensor,
        v_tilde: torch.Tensor,
        cond: torch.Tensor,
        n_jvp: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """u for the whole batch (with gradient) and du/dt for its first ``n_jvp`` samples along (v~, 1, 0), or
        along (u(z, t, t), 1, 0) with ``jvp_tangent="predicted"``."""
        if n_jvp == 0:
            return self.u(z, t, r, cond), None
        zj, tj, rj, cj = z[:n_jvp], t[:n_jvp], r[:n_jvp], cond[:n_jvp]
        if self.jvp_tangent == "predicted":
            with torch.no_grad():
                dz = self.u(zj, tj, tj, cj)
        else:
            dz = v_tilde[:n_jvp].detach()
        tangents = (dz, torch.ones_like(tj), torch.zeros_like(rj))

        def u_fn(z_: torch.Tensor, t_: torch.Tensor, r_: torch.Tensor) -> torch.Tensor:
            return self.u(z_, t_, r_, cj)

        if self.jvp_mode == "separate":
            u_pred = self.u(z, t, r, cond)
            with torch.no_grad():
                _, dudt = jvp(u_fn, (zj, tj, rj), tangents)
            return u_pred, dudt
        u_j, dudt = jvp(u_fn, (zj, tj, rj), tangents)
        if n_jvp == z.shape[0]:
            return u_j, dudt.detach()
        u_rest = self.u(z[n_jvp:], t[n_jvp:], r[n_jvp:], cond[n_jvp:])
        return torch.cat([u_j, u_rest]), dudt.detach()

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
