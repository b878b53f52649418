"""A policy checkpoint → one graph (ONNX for onnxruntime, and ``torch.export`` .pt2), parity-checked.

The graph is normalization + observation encoders + the action head's sampler + unnormalization, with flat named
inputs: one tensor per observation key, shape ``(1, n_obs_steps, *spec.shape)``, then ``noise`` ``(1, horizon, Da)``
(the head's starting noise; pass the fixed ``noise`` stored in ``export.json`` for deterministic actions). The output
``action`` is the executed chunk ``(1, n_action_steps, Da)`` in robot units. Cropping and farthest point sampling stay
outside the graph (they would unroll into thousands of nodes): feed it the cloud the env/camera path produces.

Every export is checked against the eager policy on ``n_check`` observation windows (from a recorded dataset with
``data=``, else drawn inside the normalizer's fitted ranges, which ``export.json`` says); the max abs error must be
<= ``tolerance`` (1e-4) or nothing is written and the command fails. Example::

    mfp export checkpoint=runs/reach/policy out=runs/reach/export data=data/reach-v3-10demos-512pts.zarr hz=50

Output directory: ``model.onnx``, ``model.pt2``, ``export.json`` (inputs in order with shapes and dtypes,
n_obs_steps, n_action_steps, horizon, control rate, head and NFE, normalizer digest, noise, parity results).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.atomic_write import replace_dir
from demos.replay_buffer import ReplayBuffer
from deploy.export_format import EXPORT_FORMAT, META_FILE, NOISE, ONNX_FILE, OUTPUT, PT2_FILE, ExportError
from deploy.onnx_session import onnx_session
from policies.checkpoint import load_policy, read_config
from policies.policy import Policy


class ExportablePolicy(nn.Module):
    """``forward(*obs tensors in key order, noise) -> action (B, n_action_steps, Da)``: the whole policy, one graph."""

    def __init__(self, policy: Policy, num_steps: int | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.keys = list(policy.shape_meta.obs)
        self.num_steps = num_steps if num_steps is not None else policy.num_inference_steps
        self.start = policy.n_obs_steps - 1
        self.n_action_steps = policy.n_action_steps

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *obs, noise = inputs
        p = self.policy
        normalized = {k: p.normalizer.normalize(k, x) for k, x in zip(self.keys, obs, strict=True)}  # (B, To, ...)
        cond = p.obs_encoder(normalized)  # (B, To * D)
        if p.noise_actor is not None:  # a steered policy picks its own noise; the input stays for one interface
            noise = p.noise_actor(cond) + 0.0 * noise
        naction = p.head.sample(cond, num_steps=self.num_steps, noise=noise)  # (B, H, Da)
        action = p.normalizer.unnormalize(OUTPUT, naction)
        return action[:, self.start : self.start + self.n_action_steps]


def input_specs(policy: Policy) -> list[dict[str, Any]]:
    """Graph inputs in order: one per observation key, then the noise."""
    To = policy.n_obs_steps
    specs = []
    for key, spec in policy.shape_meta.obs.items():
        dtype = "uint8" if spec.type == "rgb" else "float32"
        specs.append({"name": key, "type": spec.type, "shape": [1, To, *spec.shape], "dtype": dtype})
    specs.append(
        {"name": NOISE, "type": "noise", "shape": [1, policy.horizon, policy.shape_meta.action_dim], "dtype": "float32"}
    )
    return specs


def _recorded_windows(path: str, keys: list[str], To: int, n: int, rng: np.random.Generator) -> list[dict]:
    buffer = ReplayBuffer.open(path, mode="r")
    missing = [k for k in keys if k not in buffer]
    if missing:
        raise ExportError(f"dataset '{path}' lacks observation key(s) {missing} the policy needs; it has {buffer.keys}")
    ends = buffer.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    valid = [(s, e) for s, e in zip(starts, ends, strict=True) if e - s >= To]
    if not valid:
        raise ExportError(f"dataset '{path}' has no episode with {To} steps")
    windows = []
    for _ in range(n):
        s, e = valid[rng.integers(len(valid))]
        t = int(rng.integers(s, e - To + 1))
        windows.append({k: np.asarray(buffer._data[k][t : t + To]) for k in keys})
    return windows


def _synthetic_windows(policy: Policy, n: int, rng: np.random.Generator) -> list[dict]:
    To = policy.n_obs_steps
    windows = []
    for _ in range(n):
        obs = {}
        for key, spec in policy.shape_meta.obs.items():
            if spec.type == "rgb":
                obs[key] = rng.integers(0, 256, size=(To, *spec.shape)).astype(np.uint8)
            else:
                s = policy.normalizer.stats(key)
                lo, hi = s["min"].cpu().numpy(), s["max"].cpu().numpy()
                obs[key] = rng.uniform(lo, hi, size=(To, *spec.shape)).astype(np.float32)
        windows.append(obs)
    return windows


def _as_inputs(policy: Policy, window: dict, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    tensors = []
    for key, spec in policy.shape_meta.obs.items():
        dtype = torch.uint8 if spec.type == "rgb" else torch.float32
        tensors.append(torch.as_tensor(np.asarray(window[key])).to(dtype).unsqueeze(0))  # (1, To, ...)
    return (*tensors, noise)


def normalizer_digest(policy: Policy) -> str:
    """sha256 over the normalizer's stats (names, shapes and float32 bytes): identifies the normalization baked in."""
    h = hashlib.sha256()
    for name, t in sorted(policy.normalizer.state_tensors().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def export_onnx(module: ExportablePolicy, example: tuple, names: list[str], path: Path, opset: int) -> None:
    try:
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=names,
            output_names=[OUTPUT],
            opset_version=opset,
            dynamo=True,
            external_data=False,
        )
    except Exception as e:  # the exporter raises many error types; all mean "this graph did not export"
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {e}") from e


def export_pt2(module: ExportablePolicy, example: tuple, path: Path) -> None:
    try:
        program = torch.export.export(module, example, strict=False)
        torch.export.save(program, str(path))
    except Exception as e:  # torch.export raises many error types; all mean "this graph did not export"
        raise ExportError(f"torch.export failed: {type(e).__name__}: {e}") from e


def check_parity(
    policy: Policy,
    module: ExportablePolicy,
    windows: list[dict],
    noise: torch.Tensor,
    onnx_path: Path | None,
    pt2_path: Path | None,
    seed: int,
) -> dict[str, float]:
    """Max abs error of each exported artefact against eager on ``windows`` (fixed noise and fresh noise)."""
    names = [s["name"] for s in input_specs(policy)]
    session = onnx_session(onnx_path) if onnx_path is not None else None
    program = torch.export.load(str(pt2_path)).module() if pt2_path is not None else None
    g = torch.Generator().manual_seed(seed + 1)
    errors = {"policy_api": 0.0}
    if session is not None:
        errors["onnx"] = 0.0
    if program is not None:
        errors["pt2"] = 0.0
    with torch.no_grad():
        for i, window in enumerate(windows):
            z = noise if i % 2 == 0 else torch.randn(noise.shape, generator=g)
            inputs = _as_inputs(policy, window, z)
            eager = module(*inputs).numpy()
            api_noise = None if policy.noise_actor is not None else z  # a steered policy chooses its own noise
            window_obs = {k: x for k, x in zip(names[:-1], inputs[:-1], strict=True)}
            api = policy.predict_action(window_obs, noise=api_noise).numpy()
            errors["policy_api"] = max(errors["policy_api"], float(np.abs(api - eager).max()))
            if session is not None:
                out = session.run([OUTPUT], {n: x.numpy() for n, x in zip(names, inputs, strict=True)})[0]
                errors["onnx"] = max(errors["onnx"], float(np.abs(out - eager).max()))
            if program is not None:
                out = program(*inputs).numpy()
                errors["pt2"] = max(errors["pt2"], float(np.abs(out - eager).max()))
    return errors


def export_policy(
    checkpoint: str | Path,
    out: str | Path,
    data: str | None = None,
    n_check: int = 16,
    tolerance: float = 1e-4,
    hz: float = 10.0,
    num_inference_steps: int | None = None,
    seed: int = 0,
    opset: int = 18,
    formats: tuple[str, ...] = ("onnx", "pt2"),
) -> dict[str, Any]:
    """Export ``checkpoint`` into directory ``out`` and return the metadata written to ``export.json``."""
    formats = tuple(formats)
    unknown = [f for f in formats if f not in ("onnx", "pt2")]
    if unknown or not formats:
        raise ExportError(f"formats must be a non-empty subset of onnx, pt2; got {list(formats)}")
    config = read_config(checkpoint)
    head = config["policy"]["head"]
    if head == "ddpm":
        raise ExportError(
            "a DDPM head draws fresh noise at every step, so its graph cannot reproduce eager; "
            "export a meanflow, flow, ddim or regression policy"
        )
    policy = load_policy(checkpoint).eval()
    module = ExportablePolicy(policy, num_inference_steps).eval()
    specs = input_specs(policy)
    names = [s["name"] for s in specs]
    noise = torch.randn(specs[-1]["shape"], generator=torch.Generator().manual_seed(seed))  # (1, H, Da)
    rng = np.random.default_rng(seed)
    if data is not None:
        windows = _recorded_windows(data, module.keys, policy.n_obs_steps, n_check, rng)
        source = f"recorded: {data}"
    else:
        windows = _synthetic_windows(policy, n_check, rng)
        source = "synthetic: uniform within the normalizer's fitted ranges (pass data=... for recorded observations)"
    example = _as_inputs(policy, windows[0], noise)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        onnx_path = tmp / ONNX_FILE if "onnx" in formats else None
        pt2_path = tmp / PT2_FILE if "pt2" in formats else None
        with torch.no_grad():
            if onnx_path is not None:
                export_onnx(module, example, names, onnx_path, opset)
            if pt2_path is not None:
                export_pt2(module, example, pt2_path)
        errors = check_parity(policy, module, windows, noise, onnx_path, pt2_path, seed)
        failed = {k: v for k, v in errors.items() if not v <= tolerance}
        if failed:
            raise ExportError(
                f"exported graph does not match eager: max abs error {failed} > tolerance {tolerance} "
                f"on {len(windows)} observation windows ({source}); nothing was written"
            )
        meta = {
            "format": EXPORT_FORMAT,
            "checkpoint": str(checkpoint),
            "trained_by": config.get("metadata", {}).get("code"),  # the commit that trained the checkpoint
            "files": {f: (ONNX_FILE if f == "onnx" else PT2_FILE) for f in formats},
            "inputs": specs,
            "output": {
                "name": OUTPUT,
                "shape": [1, policy.n_action_steps, policy.shape_meta.action_dim],
                "dtype": "float32",
                "units": "robot (unnormalized)",
            },
            "shape_meta": policy.shape_meta.to_dict(),
            "n_obs_steps": policy.n_obs_steps,
            "n_action_steps": policy.n_action_steps,
            "horizon": policy.horizon,
            "control_hz": hz,
            "head": head,
            "num_inference_steps": module.num_steps if module.num_steps is not None else policy.head.default_num_steps,
            "normalizer": {"checkpoint_format_version": config["format_version"], "sha256": normalizer_digest(policy)},
            "noise": {"seed": seed, "values": noise[0].tolist()},
            "parity": {"max_abs_error": errors, "tolerance": tolerance, "n_windows": len(windows), "source": source},
            "outside_graph": "workspace crop and farthest point sampling (envs.pointcloud / deploy.rgbd)",
            "versions": {"torch": torch.__version__, "opset": opset},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        tmp.chmod(0o755)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return meta
