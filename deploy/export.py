"""A policy checkpoint → one graph (ONNX for onnxruntime; optionally ``torch.export`` .pt2 and AOTInductor),
parity-checked.

The graph is normalization + observation encoders + the action head's sampler + unnormalization, with flat named
inputs: one tensor per observation key, shape ``(1, n_obs_steps, *spec.shape)``, then ``noise`` ``(1, horizon, Da)``
(the head's starting noise). The output ``action`` is the executed chunk ``(1, n_action_steps, Da)`` in robot units.
The runtime (:class:`deploy.exported.ExportedPolicy`) draws the noise per call from the same seeded stream
``mfp eval`` uses, so the exported policy is the evaluated sampled policy; ``export.json`` also stores one draw for
``noise=fixed``. Cropping and farthest point sampling stay outside the graph (they would unroll into thousands of
nodes): feed it the cloud the env/camera path produces.

Formats (``formats=``): ``onnx`` (the default, run by onnxruntime without torch: about half of eager latency at
batch 1 on one thread), ``pt2`` (the ``torch.export`` program, for torch-side tooling; it runs at eager speed, not a
fast path) and ``aoti`` (the program compiled by AOTInductor into ``model_aoti.pt2`` for this CPU: needs a C++
compiler at export and torch at run time; builds take minutes).

Every export is checked against the eager policy on ``n_check`` observation windows of real observations: from
``data=`` (a zarr dataset: demonstrations, or an episode ``mfp deploy record=`` wrote), else from the dataset the
checkpoint was trained on; ``data=synthetic`` draws inputs inside the normalizer's fitted ranges instead, and
``export.json`` says which. Each format must match eager within ``tolerance`` (1e-4), with the stored noise and with
fresh draws, and the ONNX runtime's own noise stream must reproduce the checkpoint's seeded chunks; otherwise nothing
is written and the command fails. Example::

    mfp export checkpoint=runs/reach/policy out=runs/reach/export data=data/reach-v3-10demos-512pts.zarr hz=50

Output directory: ``model.onnx`` (and ``model.pt2``, ``model_aoti.pt2`` if asked), ``export.json`` (inputs in order
with shapes and dtypes, n_obs_steps, n_action_steps, horizon, control rate, head and NFE, normalizer digest, noise,
parity results). An existing ``out`` is replaced only if it is an earlier export (or with ``overwrite=true``), never
when it is, contains or lies inside the checkpoint or the data; the replacement is atomic.
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

from core.atomic_write import check_output, replace_dir
from core.errors import MfpError
from demos.replay_buffer import ReplayBuffer
from deploy.export_format import (
    AOTI_FILE,
    DEFAULT_FORMATS,
    EXPORT_FORMAT,
    FORMATS,
    META_FILE,
    NOISE,
    NOISE_MODES,
    ONNX_FILE,
    OUTPUT,
    PT2_FILE,
    ExportError,
    is_export_dir,
)
from deploy.exported import ExportedPolicy
from deploy.onnx_session import onnx_session
from policies.checkpoint import load_policy, read_config
from policies.policy import Policy

SYNTHETIC = "synthetic"  # data=synthetic: parity on inputs drawn inside the normalizer's ranges
FILES = {"onnx": ONNX_FILE, "pt2": PT2_FILE, "aoti": AOTI_FILE}


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
    """``n`` windows of ``To`` consecutive recorded observations from the zarr dataset at ``path``."""
    try:
        buffer = ReplayBuffer.open(path, mode="r")
    except MfpError:
        raise
    except Exception as err:  # zarr raises many error types for a path that is not a dataset
        raise ExportError(
            f"cannot read observations for the parity check from '{path}': {type(err).__name__}: {err}"
        ) from err
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


def parity_source(checkpoint: str | Path, data: str | None) -> str:
    """Where the parity observations come from: ``data`` if given, else the checkpoint's training dataset."""
    if data is not None:
        return data
    task = read_config(checkpoint).get("metadata", {}).get("task", {})
    dataset = task.get("dataset") if isinstance(task, dict) else None
    if dataset and Path(dataset).exists():
        return str(dataset)
    where = f"the dataset it was trained on ('{dataset}') is not here" if dataset else "it names no dataset"
    raise ExportError(
        f"no real observations to check the export against: {where}. Pass data=<zarr of demonstrations or of an "
        f"`mfp deploy record=` episode>, or data={SYNTHETIC} to check on inputs drawn from the normalizer's ranges"
    )


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


def export_pt2(module: ExportablePolicy, example: tuple, path: Path) -> Any:
    """Save the ``torch.export`` program of ``module`` to ``path``; returns the program."""
    try:
        program = torch.export.export(module, example, strict=False)
        torch.export.save(program, str(path))
        return program
    except Exception as e:  # torch.export raises many error types; all mean "this graph did not export"
        raise ExportError(f"torch.export failed: {type(e).__name__}: {e}") from e


def export_aoti(module: ExportablePolicy, example: tuple, path: Path) -> None:
    """Compile ``module`` with AOTInductor into the package ``path`` (needs a C++ compiler; takes minutes)."""
    try:
        program = torch.export.export(module, example, strict=False)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    except Exception as e:  # inductor raises many error types; all mean "this graph did not compile"
        raise ExportError(f"AOTInductor build failed: {type(e).__name__}: {e} (is a C++ compiler installed?)") from e


def _runners(directory: Path, formats: tuple[str, ...]) -> dict[str, Any]:
    """Callable ``(*inputs) -> (1, n, Da)`` numpy for each exported format in ``directory``."""
    runners: dict[str, Any] = {}
    if "onnx" in formats:
        session = onnx_session(directory / ONNX_FILE)
        names = [i.name for i in session.get_inputs()]
        runners["onnx"] = lambda *x: session.run([OUTPUT], {n: t.numpy() for n, t in zip(names, x, strict=True)})[0]
    if "pt2" in formats:
        program = torch.export.load(str(directory / PT2_FILE)).module()
        runners["pt2"] = lambda *x: program(*x).numpy()
    if "aoti" in formats:
        compiled = torch._inductor.aoti_load_package(str(directory / AOTI_FILE))

        def run_aoti(*x: torch.Tensor) -> np.ndarray:
            out = compiled(*x)
            return (out[0] if isinstance(out, (list, tuple)) else out).numpy()

        runners["aoti"] = run_aoti
    return runners


def check_parity(
    policy: Policy,
    module: ExportablePolicy,
    windows: list[dict],
    noise: torch.Tensor,
    directory: Path,
    formats: tuple[str, ...],
    seed: int,
) -> dict[str, float]:
    """Max abs error against eager on ``windows``: of each exported format (the stored noise and fresh draws
    alternating), of ``Policy.predict_action`` (the API the graph replaces), and ``onnx_runtime_noise``: the ONNX
    runtime drawing its own noise from ``seed`` against the checkpoint reset to the same seed, call after call (the
    exported policy is the evaluated sampled policy)."""
    names = [s["name"] for s in input_specs(policy)]
    runners = _runners(directory, formats)
    g = torch.Generator().manual_seed(seed + 1)
    errors = {"policy_api": 0.0, **{f: 0.0 for f in runners}}
    with torch.no_grad():
        for i, window in enumerate(windows):
            z = noise if i % 2 == 0 else torch.randn(noise.shape, generator=g)
            inputs = _as_inputs(policy, window, z)
            eager = module(*inputs).numpy()
            api_noise = None if policy.noise_actor is not None else z  # a steered policy chooses its own noise
            window_obs = {k: x for k, x in zip(names[:-1], inputs[:-1], strict=True)}
            api = policy.predict_action(window_obs, noise=api_noise).numpy()
            errors["policy_api"] = max(errors["policy_api"], float(np.abs(api - eager).max()))
            for name, run in runners.items():
                errors[name] = max(errors[name], float(np.abs(run(*inputs) - eager).max()))
        if "onnx" in formats:
            runtime = ExportedPolicy(directory, threads=1, noise="sampled", seed=seed)
            runtime.reset(seed)
            policy.reset(seed=seed)
            worst = 0.0
            for window in windows:
                got = runtime.predict_action(window)
                want = policy.predict_action({k: np.asarray(window[k]) for k in names[:-1]})
                worst = max(worst, float(np.abs(got - want).max()))
            policy.reset()
            errors["onnx_runtime_noise"] = worst
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
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``checkpoint`` into directory ``out`` and return the metadata written to ``export.json``.

    ``data``: a zarr dataset for the parity check (default: the checkpoint's training dataset; ``"synthetic"``:
    made-up inputs). ``out`` may replace an earlier export; anything else only with ``overwrite``."""
    formats = tuple(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"formats must be a non-empty subset of {', '.join(FORMATS)}; got {list(formats)}")
    source_path = parity_source(checkpoint, data)
    inputs = [checkpoint] + ([source_path] if source_path != SYNTHETIC else [])
    check_output(out, inputs, overwrite, ours=is_export_dir)
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
    if source_path == SYNTHETIC:
        windows = _synthetic_windows(policy, n_check, rng)
        source = "synthetic: uniform within the normalizer's fitted ranges (not real observations)"
    else:
        windows = _recorded_windows(source_path, module.keys, policy.n_obs_steps, n_check, rng)
        source = f"recorded: {source_path}"
    example = _as_inputs(policy, windows[0], noise)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with torch.no_grad():
            if "onnx" in formats:
                export_onnx(module, example, names, tmp / ONNX_FILE, opset)
            if "pt2" in formats:
                export_pt2(module, example, tmp / PT2_FILE)
            if "aoti" in formats:
                export_aoti(module, example, tmp / AOTI_FILE)
        meta = {
            "format": EXPORT_FORMAT,
            "checkpoint": str(checkpoint),
            "trained_by": config.get("metadata", {}).get("code"),  # the commit that trained the checkpoint
            "files": {f: FILES[f] for f in formats},
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
            "noise": {
                "input": NOISE,
                "modes": list(NOISE_MODES),
                "default": "sampled: a standard normal draw per call from the episode's seeded stream "
                "(deploy.noise.EpisodeNoise = torch.Generator().manual_seed(seed) + torch.randn, as mfp eval)",
                "seed": seed,
                "values": noise[0].tolist(),  # one draw, for noise=fixed
            },
            "parity": None,  # filled in below, once checked
            "outside_graph": "workspace crop and farthest point sampling (envs.pointcloud / deploy.rgbd)",
            "versions": {"torch": torch.__version__, "opset": opset},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))  # the runtime check reads it
        errors = check_parity(policy, module, windows, noise, tmp, formats, seed)
        failed = {k: v for k, v in errors.items() if not v <= tolerance}
        if failed:
            raise ExportError(
                f"exported graph does not match eager: max abs error {failed} > tolerance {tolerance} "
                f"on {len(windows)} observation windows ({source}); nothing was written"
            )
        meta["parity"] = {"max_abs_error": errors, "tolerance": tolerance, "n_windows": len(windows), "source": source}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        tmp.chmod(0o755)
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return meta
