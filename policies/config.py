"""Typed configuration schemas for action heads, backbones and the policy.

Hydra composes these (registered in ``configs/schema.py``); code below the factory receives plain arguments.
Each dataclass validates itself on construction so a typo or an out-of-range value fails early.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Optional

from encoders.config import DispersiveConfig, EncoderConfig

HEADS = ("meanflow", "flow", "ddpm", "ddim", "regression")
NOISE_HEADS = ("meanflow", "flow", "ddpm", "ddim")  # heads whose loss draws noise and time: samples_per_obs applies
BACKBONES = ("unet", "mlp")


@dataclass
class BackboneConfig:
    """Noise-prediction network shared by every head (same backbone = fair comparison)."""

    type: str = "unet"
    # 1-D conditional U-Net (DP3/MP1 size: [512, 1024, 2048]; compact CPU size: [128, 256, 512]).
    down_dims: list[int] = field(default_factory=lambda: [128, 256, 512])
    kernel_size: int = 5
    n_groups: int = 8
    # MLP backbone.
    hidden_dim: int = 512
    n_layers: int = 4
    # Time conditioning: sinusoidal embedding of (scale * time) then an MLP. Keep the scale <= 100 for MeanFlow
    # (DESIGN section 2): the (t - r) * dudt target carries a factor of this scale through d/dt.
    time_embed_dim: int = 128
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.type not in BACKBONES:
            raise ValueError(f"unknown backbone '{self.type}'; known: {', '.join(BACKBONES)}")
        if not self.down_dims or any(d <= 0 for d in self.down_dims):
            raise ValueError(f"down_dims must be positive, got {self.down_dims}")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")


@dataclass
class MeanFlowConfig:
    """MeanFlow (Geng et al. 2025), official convention: data at t = 0, noise at t = 1."""

    # (t, r) draws: "logit_normal" (official ImageNet, with p_mean/p_std) or "uniform" on [0, 1]. The 1-NFE query
    # sits at (t = 1, h = 1), which logit-normal(-0.4, 1) almost never draws; uniform draws it far more often.
    t_dist: str = "logit_normal"
    p_mean: float = -0.4
    p_std: float = 1.0
    # Fraction of the batch with r = t (plain flow-matching samples). ImageNet official 0.75, MP1 0.5.
    ratio_r_eq_t: float = 0.5
    # Fraction drawn exactly at (t, r) = (1, 0), the only point the 1-NFE sampler queries; two uniform draws reach
    # h = t - r near 1 with density 2 (1 - h), i.e. almost never.
    ratio_one_step: float = 0.0
    # Adaptive loss weight w = 1 / (d + c)^p.
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3
    # Guidance baked into training: v~ = w v + k u(z,t,t|c) + (1 - w - k) u(z,t,t|null). w=1, k=0 disables it.
    cfg_omega: float = 1.0
    cfg_kappa: float = 0.0
    cond_drop_prob: float = 0.0
    cfg_t_min: float = 0.0
    cfg_t_max: float = 1.0
    num_inference_steps: int = 1
    # How du/dt is obtained: "primal" backpropagates through torch.func.jvp's primal output; "separate" runs a
    # plain forward for u and the JVP under no_grad (less memory). Same loss and gradients. Measured train step
    # vs flow matching, B=128, 1 CPU thread: compact U-Net 1.48x (primal) vs 1.54x; MLP 1.75x vs 1.69x.
    jvp_mode: str = "primal"
    # Direction of du/dt's z-part: "conditional", the sampled v = eps - x (MeanFlow); "predicted", the network's own
    # instantaneous velocity u(z_t, t, t) without gradient (improved MeanFlow's v-loss; one extra forward).
    jvp_tangent: str = "conditional"
    # What the network outputs: "u", the average velocity (MeanFlow), or "x" = z_t - t u, a denoised action chunk
    # (pixel MeanFlow); the loss stays on u either way. x_t_floor bounds the 1/t in u = (z_t - x) / t.
    prediction: str = "u"
    x_t_floor: float = 0.05
    # Flow-matching warm-up: over this fraction of training the r != t share ramps linearly from 0 (every sample
    # r = t: plain flow matching, no JVP) to its configured value; 0 = MeanFlow from the first step.
    fm_warmup_frac: float = 0.0
    # alpha-Flow curriculum (AlphaFlow): over this fraction of training the r != t target anneals from trajectory
    # flow matching (alpha = 1, no JVP) to MeanFlow's (alpha -> 0) along a sigmoid; 0 = MeanFlow's target throughout.
    alpha_anneal_frac: float = 0.0
    # Which samples' loss trains the observation encoder: "all", or "r_eq_t": only the r = t (flow-matching) ones,
    # the r != t samples' condition detached, so the encoder never learns from the JVP target (the head still does).
    cond_grad: str = "all"

    def __post_init__(self) -> None:
        if self.cond_grad not in ("all", "r_eq_t"):
            raise ValueError(f"unknown cond_grad '{self.cond_grad}'; known: all, r_eq_t")
        if self.prediction not in ("u", "x"):
            raise ValueError(f"unknown prediction '{self.prediction}'; known: u, x")
        if not 0.0 < self.x_t_floor <= 1.0:
            raise ValueError(f"x_t_floor must be in (0, 1], got {self.x_t_floor}")
        if self.jvp_mode not in ("primal", "separate"):
            raise ValueError(f"unknown jvp_mode '{self.jvp_mode}'; known: primal, separate")
        if self.jvp_tangent not in ("conditional", "predicted"):
            raise ValueError(f"unknown jvp_tangent '{self.jvp_tangent}'; known: conditional, predicted")
        if self.t_dist not in ("logit_normal", "uniform"):
            raise ValueError(f"unknown t_dist '{self.t_dist}'; known: logit_normal, uniform")
        if not 0.0 <= self.ratio_r_eq_t <= 1.0:
            raise ValueError("ratio_r_eq_t must be in [0, 1]")
        if not (0.0 <= self.ratio_one_step <= 1.0 and self.ratio_r_eq_t + self.ratio_one_step <= 1.0):
            raise ValueError(
                f"ratio_one_step must be in [0, 1] and ratio_r_eq_t + ratio_one_step <= 1, got {self.ratio_one_step} "
                f"(ratio_r_eq_t {self.ratio_r_eq_t})"
            )
        if not (math.isfinite(self.adaptive_p) and self.adaptive_p >= 0.0):
            raise ValueError(f"adaptive_p must be a finite number >= 0 (0 = plain squared error), got {self.adaptive_p}")
        if self.adaptive_p > 0.0 and not (math.isfinite(self.adaptive_c) and self.adaptive_c > 0.0):
            raise ValueError(f"adaptive_c must be > 0 when adaptive_p > 0 (w = 1/(d + c)^p), got {self.adaptive_c}")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError("cond_drop_prob must be in [0, 1)")
        if not 0.0 <= self.fm_warmup_frac <= 1.0:
            raise ValueError(f"fm_warmup_frac must be in [0, 1], got {self.fm_warmup_frac}")
        if not 0.0 <= self.alpha_anneal_frac <= 1.0:
            raise ValueError(f"alpha_anneal_frac must be in [0, 1], got {self.alpha_anneal_frac}")
        if self.cfg_kappa >= 1.0:
            raise ValueError("cfg_kappa must be < 1 (effective scale is omega / (1 - kappa))")
        if self.num_inference_steps < 1:
            raise ValueError("num_inference_steps must be >= 1")


@dataclass
class FlowConfig:
    """Rectified flow / flow matching, same convention (data at t = 0, noise at t = 1), Euler sampling."""

    num_inference_steps: int = 10
    # Timestep distribution for training: "uniform" or "logit_normal".
    t_sampling: str = "uniform"

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ValueError("num_inference_steps must be >= 1")
        if self.t_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"unknown t_sampling '{self.t_sampling}'; known: uniform, logit_normal")


@dataclass
class DiffusionConfig:
    """DDPM training with DDPM or DDIM sampling, configured as DP3 does."""

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"  # "sample" (DP3) or "epsilon"
    num_inference_steps: int = 10  # DDIM steps; DDPM always uses num_train_timesteps
    clip_sample: bool = True

    def __post_init__(self) -> None:
        if self.prediction_type not in ("sample", "epsilon"):
            raise ValueError(f"unknown prediction_type '{self.prediction_type}'; known: sample, epsilon")
        if self.beta_schedule not in ("squaredcos_cap_v2", "linear"):
            raise ValueError(f"unknown beta_schedule '{self.beta_schedule}'; known: squaredcos_cap_v2, linear")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError("num_inference_steps must be in [1, num_train_timesteps]")


@dataclass
class PolicyConfig:
    """A policy = observation encoder + action head (on a backbone) + normalizer."""

    head: str = "meanflow"
    # The action window of `horizon` steps starts at the first observation step (DP/DP3 alignment); the executed
    # actions are window[n_obs_steps - 1 : n_obs_steps - 1 + n_action_steps].
    horizon: int = 4
    n_obs_steps: int = 2
    n_action_steps: int = 3
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    dispersive: DispersiveConfig = field(default_factory=DispersiveConfig)
    meanflow: MeanFlowConfig = field(default_factory=MeanFlowConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    # Optional override of the head's default number of sampling steps at inference.
    num_inference_steps: Optional[int] = None
    # Noise/time draws per encoded observation in the training loss (MAR's "diffusion batch multiplier"): the head
    # sees batch_size * k samples while the encoder, most of a CPU step, still runs once per observation. Heads that
    # draw nothing (regression) train on each observation once whatever k is.
    samples_per_obs: int = 1
    # Weight of an auxiliary MSE regression of the action chunk from the observation embedding (a small MLP, training
    # only): a noise-free signal for the encoder beside the head's loss. 0 = off: weight 1 gave MeanFlow coffee-pull
    # 32 / 28 % (26 / 26 without) and peg-insert-side 14 % (16); see docs/results/ablation-aux-regression/.
    aux_regression_weight: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.aux_regression_weight) and self.aux_regression_weight >= 0.0):
            raise ValueError(f"policy.aux_regression_weight must be a finite number >= 0, got {self.aux_regression_weight}")
        if self.head not in HEADS:
            raise ValueError(f"unknown policy head '{self.head}'; known: {', '.join(HEADS)}")
        if self.samples_per_obs < 1:
            raise ValueError(f"policy.samples_per_obs must be >= 1, got {self.samples_per_obs}")
        if self.head not in NOISE_HEADS:
            self.samples_per_obs = 1  # record what runs: a profile's k does not make regression runs differ
        if self.horizon < 1 or self.n_obs_steps < 1 or self.n_action_steps < 1:
            raise ValueError("horizon, n_obs_steps and n_action_steps must be >= 1")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"n_obs_steps - 1 + n_action_steps ({self.n_obs_steps - 1 + self.n_action_steps}) must be <= "
                f"horizon ({self.horizon})"
            )
