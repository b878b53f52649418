"""Portable policy checkpoints: a directory that loads without pickle and without the training code.

Layout::

    <dir>/config.json             format version, resolved PolicyConfig, shape_meta, free-form metadata (task, ...)
    <dir>/model.safetensors       weights of encoder + head (strict load)
    <dir>/normalizer.safetensors  per-key normalizer stats ("<key>/scale|offset|min|max")

Loading rebuilds the model through :func:`policies.factory.build_policy` and loads strictly; any mismatch raises
:class:`CheckpointError` naming the keys or shapes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.atomic_write import interrupted_swap, replace_dir
from core.errors import MfpError
from core.spec import ShapeMeta, SpecError
from policies.config import REMOVED_SETTINGS, PolicyConfig
from policies.normalizer import NormalizerError
from policies.policy import Policy

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
NORMALIZER_FILE = "normalizer.safetensors"


class CheckpointError(MfpError, RuntimeError):
    """A checkpoint that is missing, corrupt, or does not match the model its config describes."""


def save_policy(
    policy: Policy, cfg: PolicyConfig, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``policy`` to directory ``path`` atomically: a temporary sibling, swapped into place in one step."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp-*") if path.parent.is_dir() else []:
        shutil.rmtree(stale)  # left by a writer that was killed before its swap
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    config = {
        "format_version": FORMAT_VERSION,
        "policy": asdict(cfg),
        "shape_meta": policy.shape_meta.to_dict(),
        "metadata": dict(metadata or {}),
    }
    # No sort_keys: the order of shape_meta["obs"] is the order in which the encoder concatenates features.
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
    save_file(_model_tensors(policy), str(tmp / MODEL_FILE), metadata={"format_version": str(FORMAT_VERSION)})
    save_file(policy.normalizer.state_tensors(), str(tmp / NORMALIZER_FILE))
    replace_dir(tmp, path)
    return path


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory (format version checked)."""
    path = Path(path)
    file = path / CONFIG_FILE
    if not path.is_dir():
        previous = interrupted_swap(path)
        if previous is not None:
            raise CheckpointError(
                f"checkpoint directory '{path}' is missing: a save was killed while replacing it; "
                f"the previous checkpoint is '{previous}' (rename it to '{path.name}')"
            )
        raise CheckpointError(f"checkpoint directory '{path}' does not exist; pass the directory written by training")
    if not file.is_file():
        raise CheckpointError(f"'{path}' has no {CONFIG_FILE}; is this a policy checkpoint directory?")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}); the checkpoint is corrupt") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} holds a JSON {type(config).__name__}, not an object; the checkpoint is corrupt")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{file}: format_version {version!r}; this package reads version {FORMAT_VERSION}")
    for key in ("policy", "shape_meta"):
        if not isinstance(config.get(key), dict):
            raise CheckpointError(f"{file} lacks the object '{key}'; the checkpoint is corrupt")
    config["policy"] = asdict(policy_config_from_dict(config["policy"]))  # typed and validated, errors named
    if not isinstance(config.get("metadata", {}), dict):
        raise CheckpointError(f"{file}: 'metadata' must be an object; the checkpoint is corrupt")
    return config


# Weights only the training of a removed setting used (the null condition of guidance, the auxiliary regression).
_REMOVED_WEIGHTS = ("head.null_cond", "aux_regression.")


def _drop_removed_settings(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` without the settings this version removed (``REMOVED_SETTINGS``). All but x-prediction shaped training
    only, so a checkpoint that used them runs as it was evaluated; x-prediction changed what the network outputs."""
    d = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}
    if (d.get("meanflow") or {}).get("prediction", "u") != "u":
        raise CheckpointError(
            "this checkpoint's MeanFlow head predicts x (policy.meanflow.prediction=x), which this version no longer "
            f"builds: {REMOVED_SETTINGS['meanflow.prediction']}"
        )
    for dotted in REMOVED_SETTINGS:
        *parents, key = dotted.split(".")
        target: dict[str, Any] = d
        for part in parents:
            child = target.get(part)
            target = child if isinstance(child, dict) else {}
        target.pop(key, None)
    return d


def policy_config_from_dict(d: Mapping[str, Any]) -> PolicyConfig:
    """Rebuild a typed :class:`PolicyConfig`; unknown keys or wrong types raise (settings this version removed are
    dropped, see ``REMOVED_SETTINGS``)."""
    current = _drop_removed_settings(d)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(PolicyConfig), OmegaConf.create(current))
        return cast(PolicyConfig, OmegaConf.to_object(merged))
    except Exception as e:  # omegaconf raises several error types; all mean "config does not fit the schema"
        raise CheckpointError(f"policy config does not match this package's PolicyConfig: {e}") from e


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu") -> Policy:
    """Rebuild the policy of checkpoint ``path`` (eval mode) with its weights and normalizer."""
    from policies.factory import build_policy

    path = Path(path)
    config = read_config(path)
    cfg = policy_config_from_dict(config["policy"])
    try:
        shape_meta = ShapeMeta.from_dict(config["shape_meta"])
    except SpecError as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: bad shape_meta: {e}") from e
    policy = build_policy(cfg, shape_meta)
    weights = _read_safetensors(path / MODEL_FILE)
    norm = _read_safetensors(path / NORMALIZER_FILE)
    try:
        policy.normalizer.load_state_tensors(norm)
    except NormalizerError as e:
        raise CheckpointError(f"{path / NORMALIZER_FILE}: {e}") from e
    _check_normalizer_keys(policy, path)
    weights = {k: v for k, v in weights.items() if not k.startswith(_REMOVED_WEIGHTS)}
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"'{path / MODEL_FILE}': tensor '{bad[0]}' holds NaN or inf; the checkpoint is corrupt")
    _load_strict(policy, weights, path / MODEL_FILE)
    policy.to(device).eval()
    policy.checkpoint_metadata = config.get("metadata", {})
    return policy


def _model_tensors(policy: Policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items() if not k.startswith("normalizer.")}


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"checkpoint file '{file}' is missing")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{file}' cannot be read as safetensors ({e}); the checkpoint is corrupt") from e


def _check_normalizer_keys(policy: Policy, path: Path) -> None:
    expected = set(policy.shape_meta.obs) | {"action"}
    have = set(policy.normalizer.keys)
    if have != expected:
        raise CheckpointError(
            f"{path / NORMALIZER_FILE}: normalizer keys {sorted(have)} do not match the policy's "
            f"observation/action keys {sorted(expected)} (missing {sorted(expected - have)}, "
            f"extra {sorted(have - expected)})"
        )
    for key, spec in policy.shape_meta.obs.items():
        if spec.type == "rgb":
            continue
        n = policy.normalizer.stats(key)["min"].shape
        if n != (spec.shape[-1],):
            raise CheckpointError(
                f"normalizer stats for '{key}' have shape {tuple(n)}; shape_meta needs ({spec.shape[-1]},)"
            )
    a = policy.normalizer.stats("action")["min"].shape
    if a != (policy.shape_meta.action_dim,):
        raise CheckpointError(
            f"normalizer stats for 'action' have shape {tuple(a)}; expected ({policy.shape_meta.action_dim},)"
        )


def _load_strict(policy: Policy, weights: Mapping[str, torch.Tensor], file: Path) -> None:
    own = {k: v for k, v in policy.state_dict().items() if not k.startswith("normalizer.")}
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if wrong:
            details.append(
                "shape mismatch "
                + ", ".join(f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:8])
            )
        raise CheckpointError(f"'{file}' does not match the model built from config.json: " + "; ".join(details))
    full = dict(weights)
    full.update({k: v for k, v in policy.state_dict().items() if k.startswith("normalizer.")})
    policy.load_state_dict(full, strict=True)
