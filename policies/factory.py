"""The one way to build a policy from its config: used by train, eval, export and deploy alike."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

import numpy as np

from core.spec import ShapeMeta
from encoders.dispersive import DispersiveLoss
from policies.backbones import Backbone, ConditionalUnet1D, MLPBackbone
from policies.config import PolicyConfig
from policies.heads import make_head, n_time_inputs_for
from policies.noise_actor import NoiseActor
from policies.normalizer import LinearNormalizer
from policies.obs_encoder import ObservationEncoder
from policies.policy import Policy


def build_policy(
    cfg: PolicyConfig,
    shape_meta: ShapeMeta,
    stats: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> Policy:
    """Build encoder, backbone, head and normalizer from ``cfg``; fit the normalizer when ``stats`` is given.

    ``stats`` maps every low_dim/point_cloud key and ``"action"`` to ``{"min", "max"}`` arrays (from the
    training set). Without stats (e.g. when loading a checkpoint) the normalizer is filled by the loader.
    """
    obs_encoder = ObservationEncoder(shape_meta, cfg.n_obs_steps, **asdict(cfg.encoder))
    cond_dim = obs_encoder.output_dim
    b = cfg.backbone
    n_times = n_time_inputs_for(cfg.head)
    if b.type == "unet":
        backbone: Backbone = ConditionalUnet1D(
            input_dim=shape_meta.action_dim,
            global_cond_dim=cond_dim,
            n_time_inputs=n_times,
            down_dims=list(b.down_dims),
            kernel_size=b.kernel_size,
            n_groups=b.n_groups,
            time_embed_dim=b.time_embed_dim,
            time_scale=b.time_scale,
        )
    else:
        backbone = MLPBackbone(
            input_dim=shape_meta.action_dim,
            horizon=cfg.horizon,
            global_cond_dim=cond_dim,
            n_time_inputs=n_times,
            hidden_dim=b.hidden_dim,
            n_layers=b.n_layers,
            time_embed_dim=b.time_embed_dim,
            time_scale=b.time_scale,
        )
    head = make_head(cfg.head, backbone, cfg.head_config(), horizon=cfg.horizon)

    normalizer = LinearNormalizer()
    if stats is not None:
        fit_normalizer(normalizer, shape_meta, stats)

    noise_actor = None
    if cfg.noise_actor_hidden > 0:
        noise_actor = NoiseActor(
            cond_dim, cfg.horizon, shape_meta.action_dim, cfg.noise_actor_hidden, cfg.noise_actor_bound
        )
    dispersive = None
    if cfg.dispersive.weight > 0:
        dispersive = DispersiveLoss(cfg.dispersive.variant, cfg.dispersive.temperature, cfg.dispersive.margin)
    return Policy(
        shape_meta=shape_meta,
        obs_encoder=obs_encoder,
        head=head,
        normalizer=normalizer,
        horizon=cfg.horizon,
        n_obs_steps=cfg.n_obs_steps,
        n_action_steps=cfg.n_action_steps,
        dispersive=dispersive,
        dispersive_weight=cfg.dispersive.weight,
        dispersive_layers=list(cfg.dispersive.layers),
        num_inference_steps=cfg.num_inference_steps,
        samples_per_obs=cfg.samples_per_obs,  # PolicyConfig already records 1 for heads that draw nothing
        noise_actor=noise_actor,
    )


def fit_normalizer(
    normalizer: LinearNormalizer, shape_meta: ShapeMeta, stats: Mapping[str, Mapping[str, np.ndarray]]
) -> None:
    """Fit every key of ``shape_meta`` (images: fixed 0..255 → [0, 1]) and the action from dataset stats."""
    needed = [k for k, s in shape_meta.obs.items() if s.type != "rgb"] + ["action"]
    missing = [k for k in needed if k not in stats]
    if missing:
        raise KeyError(f"normalizer stats missing for {missing}; the dataset must provide min/max for them")
    normalizer.fit({k: stats[k] for k in needed})
    for key in shape_meta.keys_of("rgb"):
        normalizer.fit_image(key, shape_meta.obs[key].shape[0])
