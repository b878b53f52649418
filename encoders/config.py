"""Typed configuration schemas for observation encoders and the dispersive regularizer."""
from __future__ import annotations

from dataclasses import dataclass, field

POINTNETS = ("pointnet", "pointnet_maxmean")
DISPERSIVE_VARIANTS = ("infonce_l2", "infonce_cosine", "hinge", "covariance")


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
        if self.point_net not in POINTNETS:
            raise ValueError(f"unknown point_net '{self.point_net}'; known: {', '.join(POINTNETS)}")
        if self.image_trunk not in ("resnet18", "shallow"):
            raise ValueError(f"unknown image_trunk '{self.image_trunk}'; known: resnet18, shallow")
        if not self.point_hidden_dims:
            raise ValueError("point_hidden_dims must not be empty")


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
        if self.variant not in DISPERSIVE_VARIANTS:
            raise ValueError(f"unknown dispersive variant '{self.variant}'; known: {', '.join(DISPERSIVE_VARIANTS)}")
        if self.weight < 0:
            raise ValueError("dispersive weight must be >= 0")
        if self.temperature <= 0:
            raise ValueError("dispersive temperature must be > 0")
