"""`ObservationEncoder`: the global condition (B, To * D_step) from any mix of point clouds, images and state.

One leaf encoder per observation key, chosen by the key's type in ``shape_meta`` (point_cloud -> PointNet,
rgb -> ResNet-18 per camera, optionally one shared by all cameras, low_dim -> state MLP). Each frame of the
(B, To) history is encoded once: the leaf encoders see B * To samples in one call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
from torch import nn

from core.spec import ShapeMeta, SpecError
from encoders.image import ImageEncoder
from encoders.pointnet import PointNetEncoder
from encoders.state import StateEncoder

POINTNET_POOLING = {"pointnet": "max", "pointnet_maxmean": "maxmean"}  # policy.encoder.point_net -> pooling


class ObservationEncoder(nn.Module):
    """Encode ``{key: (B, To, *shape)}`` into (B, To * step_dim); the arguments mirror ``EncoderConfig``.

    Feature order: for each step, the keys in ``shape_meta.obs`` order; then the steps are concatenated.
    ``output_dim`` = n_obs_steps * step_dim.
    """

    def __init__(
        self,
        shape_meta: ShapeMeta,
        n_obs_steps: int,
        point_net: str = "pointnet",
        point_hidden_dims: Sequence[int] = (64, 128, 256),
        point_out_dim: int = 64,
        use_point_color: bool = False,
        state_hidden_dim: int = 64,
        state_out_dim: int = 64,
        image_crop_shape: Sequence[int] = (76, 76),
        image_num_keypoints: int = 32,
        image_out_dim: int = 64,
        image_share_weights: bool = False,
        image_pretrained: bool = False,
        image_trunk: str = "resnet18",
    ) -> None:
        super().__init__()
        if n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {n_obs_steps}")
        if point_net not in POINTNET_POOLING:
            raise ValueError(f"unknown point_net '{point_net}'; known: {', '.join(POINTNET_POOLING)}")
        self.shape_meta = shape_meta
        self.n_obs_steps = int(n_obs_steps)
        self.keys = list(shape_meta.obs)
        self.encoders = nn.ModuleDict()
        self.shared_image: ImageEncoder | None = None
        self._point_channels: dict[str, int] = {}

        rgb_keys = shape_meta.keys_of("rgb")
        if image_share_weights and rgb_keys:
            shapes = {shape_meta.obs[k].shape for k in rgb_keys}
            if len(shapes) != 1:
                raise SpecError(f"image_share_weights needs one image shape for all cameras, got {sorted(shapes)}")
            self.shared_image = ImageEncoder(
                shapes.pop(), image_crop_shape, image_num_keypoints, image_out_dim, image_pretrained, image_trunk
            )

        for key, spec in shape_meta.obs.items():
            if "." in key:
                raise SpecError(f"observation key '{key}' contains '.', which module names cannot hold; rename it")
            if spec.type == "point_cloud":
                channels = spec.shape[1]
                if use_point_color and channels != 6:
                    raise SpecError(f"use_point_color=True needs '{key}' of shape (N, 6) (xyz + rgb), got {spec.shape}")
                if channels not in (3, 6):
                    raise SpecError(
                        f"point cloud '{key}' must have 3 (xyz) or 6 (xyz + rgb) channels, got {spec.shape}"
                    )
                self._point_channels[key] = 6 if use_point_color else 3
                self.encoders[key] = PointNetEncoder(
                    self._point_channels[key], point_hidden_dims, point_out_dim, POINTNET_POOLING[point_net]
                )
            elif spec.type == "rgb":
                if self.shared_image is None:
                    self.encoders[key] = ImageEncoder(
                        spec.shape, image_crop_shape, image_num_keypoints, image_out_dim, image_pretrained, image_trunk
                    )
            else:
                self.encoders[key] = StateEncoder(spec.shape[0], state_hidden_dim, state_out_dim)

        self.step_dim = sum(self._encoder(k).output_dim for k in self.keys)
        self.output_dim = self.n_obs_steps * self.step_dim

    def _encoder(self, key: str) -> PointNetEncoder | ImageEncoder | StateEncoder:
        if key in self.encoders:
            return cast("PointNetEncoder | ImageEncoder | StateEncoder", self.encoders[key])
        assert self.shared_image is not None
        return self.shared_image

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """obs: {key: (B, To, *shape)} with To == n_obs_steps -> (B, To * step_dim)."""
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise SpecError(f"ObservationEncoder: missing observation key(s) {missing}; got {list(obs)}")
        batch = obs[self.keys[0]].shape[0]
        feats = []
        for key in self.keys:
            x = obs[key]
            shape = self.shape_meta.obs[key].shape
            if tuple(x.shape) != (batch, self.n_obs_steps, *shape):
                raise SpecError(
                    f"observation '{key}' has shape {tuple(x.shape)}; expected (B={batch}, "
                    f"To={self.n_obs_steps}, {', '.join(map(str, shape))})"
                )
            x = x.reshape(batch * self.n_obs_steps, *shape)  # (B*To, ...)
            if key in self._point_channels:
                x = x[..., : self._point_channels[key]]
            feats.append(self._encoder(key)(x))  # (B*To, D_key)
        return torch.cat(feats, dim=-1).reshape(batch, self.output_dim)  # (B, To*step_dim)
