"""Typed configuration schemas of the policy: observation encoders, dispersive term, backbone, action heads.

Hydra composes these (as part of ``training.config.TrainConfig``); the factory reads them and every component it
builds receives plain arguments. Each dataclass validates itself on construction, so a typo or an out-of-range value
fails before anything runs. One home per setting: its default, validation and documentation are here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import ConfigError, check_choice, check_int, check_number
from encoders.dispersive import DISPERSIVE_VARIANTS
from encoders.image import TRUNKS as IMAGE_TRUNKS
from policies.obs_encoder import POINTNET_POOLING

POINTNETS = tuple(POINTNET_POOLING)
BACKBONES = ("unet", "mlp")

# Policy settings that earlier versions had and this one dropped, because their runs did not justify them (the runs
# stay in docs/results/): dotted key under `policy.` -> why. Checkpoints that saved them still load (see
# policies/checkpoint.py); `mfp train` names the reason when one is set.
REMOVED_SETTINGS: dict[str, str] = {
    "meanflow.cfg_omega": "guidance trained into the one-step map lowered success (docs/results/ablation-cfg/)",
    "meanflow.cfg_kappa": "guidance trained into the one-step map lowered success (docs/results/ablation-cfg/)",
    "meanflow.cond_drop_prob": "it served only the guidance, which lowered success (docs/results/ablation-cfg/)",
    "meanflow.cfg_t_min": "it served only the guidance, which lowered success (docs/results/ablation-cfg/)",
    "meanflow.cfg_t_max": "it served only the guidance, which lowered success (docs/results/ablation-cfg/)",
    "meanflow.cond_grad": "training the encoder from the r = t samples only collapsed it "
    "(docs/results/ablation-cond-grad/)",
    "meanflow.jvp_tangent": "improved MeanFlow's v-loss changed nothing (docs/results/ablation-imf/)",
    "meanflow.fm_warmup_frac": "a flow-matching warm-up helped one task of three (docs/results/ablation-fm-warmup/)",
    "meanflow.alpha_anneal_frac": "the alpha-Flow curriculum changed nothing (docs/results/ablation-alpha-flow/)",
    "meanflow.ratio_one_step": "drawing the one-step query more often moved two tasks in opposite directions "
    "(docs/results/ablation-adaptive-p0/)",
    "meanflow.prediction": "x-prediction did not help (docs/results/ablation-x-prediction/)",
    "meanflow.x_t_floor": "it served only x-prediction, which did not help (docs/results/ablation-x-prediction/)",
    "aux_regression_weight": "an auxiliary regression loss did not help (docs/results/ablation-aux-regression/)",
}


def _check_dims(name: str, dims: list[int]) -> None:
    if not dims:
        raise ConfigError(f"{name} must not be empty")
    for d in dims:
        check_int(f"{name} entries", d, 1)


@dataclass
class EncoderConfig:
    """How each observation type is encoded; dims per observation step (DP3: 64 point + 64 state)."""

    # Point clouds (DP3 PointNet): per-point MLP widths, then max-pool and Linear -> point_out_dim + LayerNorm.
    point_net: str = "pointnet"
    point_hidden_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    point_out_dim: int = 64
    use_point_color: bool = False
    # Low-dimensional state MLP: Linear(d -> state_hidden), ReLU, Linear(-> state_out_dim).
    state_hidden_dim: int = 64
    state_out_dim: int = 64
    # Images: a conv trunk with GroupNorm and spatial softmax, one encoder per camera key. Trunk "resnet18" is the
    # DP/robomimic anchor; "shallow" (four conv layers, 19x19 keypoint map at a 76x76 crop) is the CPU choice.
    image_trunk: str = "resnet18"
    image_crop_shape: list[int] = field(default_factory=lambda: [76, 76])
    image_num_keypoints: int = 32
    image_out_dim: int = 64
    image_share_weights: bool = False
    image_pretrained: bool = False

    def __post_init__(self) -> None:
        check_choice("policy.encoder.point_net", self.point_net, POINTNETS)
        check_choice("policy.encoder.image_trunk", self.image_trunk, IMAGE_TRUNKS)
        _check_dims("policy.encoder.point_hidden_dims", self.point_hidden_dims)
        for name in ("point_out_dim", "state_hidden_dim", "state_out_dim", "image_num_keypoints", "image_out_dim"):
            check_int(f"policy.encoder.{name}", getattr(self, name), 1)
        if len(self.image_crop_shape) != 2:
            raise ConfigError(f"policy.encoder.image_crop_shape must be [H, W], got {self.image_crop_shape}")
        _check_dims("policy.encoder.image_crop_shape", self.image_crop_shape)


@dataclass
class DispersiveConfig:
    """Dispersive regularization ("Diffuse and Disperse"): total loss = head loss + weight * sum over layers.

    ``layers`` names the features to regularize: "obs_embedding" (the global condition) and/or dotted
    names of modules inside the policy (taken with forward hooks), e.g. "head.backbone.down_modules.0.1" (the
    second residual block of the first U-Net level; a ModuleList itself is never called and is rejected).
    """

    weight: float = 0.0
    variant: str = "infonce_l2"
    temperature: float = 1.0
    margin: float = 1.0
    layers: list[str] = field(default_factory=lambda: ["obs_embedding"])

    def __post_init__(self) -> None:
        check_choice("policy.dispersive.variant", self.variant, DISPERSIVE_VARIANTS)
        check_number("policy.dispersive.weight", self.weight, 0.0)
        check_number("policy.dispersive.temperature", self.temperature, 0.0, low_open=True)
        check_number("policy.dispersive.margin", self.margin, 0.0)
        if self.weight > 0 and not self.layers:
            raise ConfigError("policy.dispersive.weight > 0 but policy.dispersive.layers is empty")


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
        check_choice("policy.backbone.type", self.type, BACKBONES)
        _check_dims("policy.backbone.down_dims", self.down_dims)
        for name in ("kernel_size", "n_groups", "hidden_dim", "n_layers", "time_embed_dim"):
            check_int(f"policy.backbone.{name}", getattr(self, name), 1)
        check_number("policy.backbone.time_scale", self.time_scale, 0.0, low_open=True)


@dataclass
class MeanFlowConfig:
    """MeanFlow (Geng et al. 2025), official convention: data at t = 0, noise at t = 1."""

    # (t, r) draws: "logit_normal" (official ImageNet, with p_mean/p_std) or "uniform" on [0, 1].
    t_dist: str = "logit_normal"
    p_mean: float = -0.4
    p_std: float = 1.0
    # Fraction of the batch with r = t (plain flow-matching samples). ImageNet official 0.75, MP1 0.5.
    ratio_r_eq_t: float = 0.5
    # Adaptive loss weight w = 1 / (d + c)^p; p = 0 is the plain squared error.
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3
    num_inference_steps: int = 1
    # How du/dt is obtained: "primal" backpropagates through torch.func.jvp's primal output; "separate" runs a
    # plain forward for u and the JVP under no_grad (less memory). Same loss and gradients.
    jvp_mode: str = "primal"

    def __post_init__(self) -> None:
        check_choice("policy.meanflow.t_dist", self.t_dist, ("logit_normal", "uniform"))
        check_number("policy.meanflow.p_mean", self.p_mean)
        check_number("policy.meanflow.p_std", self.p_std, 0.0, low_open=True)
        check_number("policy.meanflow.ratio_r_eq_t", self.ratio_r_eq_t, 0.0, 1.0)
        check_number("policy.meanflow.adaptive_p", self.adaptive_p, 0.0)
        check_number("policy.meanflow.adaptive_c", self.adaptive_c, 0.0, low_open=self.adaptive_p > 0)
        check_int("policy.meanflow.num_inference_steps", self.num_inference_steps, 1)
        check_choice("policy.meanflow.jvp_mode", self.jvp_mode, ("primal", "separate"))


@dataclass
class FlowConfig:
    """Rectified flow / flow matching, same convention (data at t = 0, noise at t = 1), Euler sampling."""

    num_inference_steps: int = 10
    # Timestep distribution for training: "uniform" or "logit_normal".
    t_sampling: str = "uniform"

    def __post_init__(self) -> None:
        check_int("policy.flow.num_inference_steps", self.num_inference_steps, 1)
        check_choice("policy.flow.t_sampling", self.t_sampling, ("uniform", "logit_normal"))


@dataclass
class DiffusionConfig:
    """DDPM training with DDPM or DDIM sampling, configured as DP3 does."""

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"  # "sample" (DP3) or "epsilon"
    num_inference_steps: int = 10  # DDIM steps; DDPM always uses num_train_timesteps
    clip_sample: bool = True

    def __post_init__(self) -> None:
        check_choice("policy.diffusion.prediction_type", self.prediction_type, ("sample", "epsilon"))
        check_choice("policy.diffusion.beta_schedule", self.beta_schedule, ("squaredcos_cap_v2", "linear"))
        check_int("policy.diffusion.num_train_timesteps", self.num_train_timesteps, 1)
        check_int("policy.diffusion.num_inference_steps", self.num_inference_steps, 1, self.num_train_timesteps)


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
    num_inference_steps: int | None = None
    # Noise/time draws per encoded observation in the training loss (MAR's "diffusion batch multiplier"): the head
    # sees batch_size * k samples while the encoder, most of a CPU step, still runs once per observation. Heads that
    # draw nothing (regression) train on each observation once whatever k is.
    samples_per_obs: int = 1
    # A learned starting noise for the one-step generator (noise-space steering, `mfp finetune finetune=steering`):
    # 0 = none (the noise is drawn), else the width of the small network that chooses it, within |w| <= bound.
    noise_actor_hidden: int = 0
    noise_actor_bound: float = 1.5

    def __post_init__(self) -> None:
        from policies.heads import base, head_names  # the registry; heads import this module, not the reverse

        check_choice("policy head", self.head, head_names())
        for name in ("horizon", "n_obs_steps", "n_action_steps", "samples_per_obs"):
            check_int(f"policy.{name}", getattr(self, name), 1)
        check_int("policy.noise_actor_hidden", self.noise_actor_hidden, 0)
        check_number("policy.noise_actor_bound", self.noise_actor_bound, 0.0, low_open=True)
        if self.num_inference_steps is not None:
            check_int("policy.num_inference_steps", self.num_inference_steps, 1)
        if not base.head_entry(self.head).draws_noise:
            self.samples_per_obs = 1  # record what runs: a profile's k does not make regression runs differ
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ConfigError(
                f"policy.n_obs_steps - 1 + policy.n_action_steps ({self.n_obs_steps - 1 + self.n_action_steps}) must "
                f"be <= policy.horizon ({self.horizon})"
            )

    def head_config(self) -> object | None:
        """The settings of the chosen head (``None`` for a head without settings, e.g. regression)."""
        from policies.heads.base import head_entry

        field_name = head_entry(self.head).config_field
        return None if field_name is None else getattr(self, field_name)
