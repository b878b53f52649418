"""A corpus of damaged copies of small real artefacts, run through every command that consumes them.

Each case copies a real artefact made here (a zarr dataset written by the Meta-World collector, a saved policy
checkpoint, a robomimic HDF5 file written by the package's writer), damages the copy the way disks, killed
processes and other tools do (truncated, scrambled, zeroed or deleted chunks and attribute files, NaN tensors, wrong
shapes, types and attributes), and runs the command as a user would. Every case must end in one line on stderr
naming the problem, exit code 2, no traceback, and the damaged copy byte-for-byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file, save_file

from core.spec import ShapeMeta
from demos.robomimic_hdf5 import Demo, write_robomimic
from mfp.cli import main as mfp
from policies.checkpoint import save_policy
from policies.config import BackboneConfig, EncoderConfig, PolicyConfig
from policies.factory import build_policy

# ---------------------------------------------------------------------------------------------- artefacts


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from envs.metaworld.collect import collect

    root = tmp_path_factory.mktemp("artefacts")
    dataset = root / "reach.zarr"
    collect("reach-v3", 2, dataset, num_points=64, image_cameras=(), max_steps=60, progress=False)

    shape_meta = ShapeMeta.from_dict(
        {
            "obs": {
                "point_cloud": {"type": "point_cloud", "shape": [64, 3]},
                "agent_pos": {"type": "low_dim", "shape": [4]},
            },
            "action": {"shape": [4]},
        }
    )
    cfg = PolicyConfig(
        backbone=BackboneConfig(type="mlp", hidden_dim=32, n_layers=2, time_embed_dim=16),
        encoder=EncoderConfig(point_hidden_dims=[16, 32], point_out_dim=16, state_hidden_dim=16, state_out_dim=16),
    )
    ones = {"min": -np.ones(3), "max": np.ones(3)}
    stats = {
        "point_cloud": ones,
        "agent_pos": {"min": -np.ones(4), "max": np.ones(4)},
        "action": {"min": -np.ones(4), "max": np.ones(4)},
    }
    checkpoint = save_policy(
        build_policy(cfg, shape_meta, stats),
        cfg,
        root / "policy",
        metadata={"task": {"env": "reach-v3", "max_episode_steps": 5}},
    )

    rng = np.random.default_rng(0)
    demos = []
    for i, n in enumerate((6, 8)):
        obs = {
            "robot0_eef_pos": rng.normal(size=(n + 1, 3)),
            "robot0_gripper_qpos": rng.normal(size=(n + 1, 2)),
            "object": rng.normal(size=(n + 1, 10)),
        }
        dones = np.zeros(n, dtype=np.int64)
        dones[-1] = 1
        demos.append(
            Demo(
                actions=rng.uniform(-1, 1, (n, 7)),
                obs={k: v[:-1] for k, v in obs.items()},
                next_obs={k: v[1:] for k, v in obs.items()},
                states=rng.normal(size=(n, 32)),
                rewards=dones.astype(np.float64),
                dones=dones,
                attrs={"seed": i},
            )
        )
    hdf5 = root / "lift.hdf5"
    env_args = {"env_name": "Lift", "env_version": "1.5.1", "type": 1, "env_kwargs": {"robots": "Panda"}}
    write_robomimic(hdf5, demos, env_args, masks={"train": ["demo_0"], "valid": ["demo_1"]})
    return {"zarr": dataset, "checkpoint": checkpoint, "hdf5": hdf5}


# ---------------------------------------------------------------------------------------------- damage


def _chunk(path: Path, array: str) -> Path:
    return path / array / "0.0" if (path / array / "0.0").exists() else path / array / "0.0.0"


def _rewrite(file: Path, transform: Callable[[bytes], bytes]) -> None:
    file.write_bytes(transform(file.read_bytes()))


def _set_zarr(path: Path, array: str, index: tuple, value: float) -> None:
    arr = zarr.open_group(str(path), mode="r+")[array]
    arr[index] = value


def _edit_json(file: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(file.read_text())
    file.write_text(json.dumps(edit(data)))


def _shrink(meta: dict) -> dict:
    meta["shape"][0] -= 5
    return meta


ZARR_DAMAGE: dict[str, Callable[[Path], None]] = {
    "deleted chunk": lambda p: _chunk(p, "data/action").unlink(),
    "truncated chunk": lambda p: _rewrite(_chunk(p, "data/point_cloud"), lambda b: b[: len(b) // 2]),
    "zeroed chunk": lambda p: _rewrite(_chunk(p, "data/agent_pos"), lambda b: bytes(len(b))),
    "scrambled chunk": lambda p: _rewrite(_chunk(p, "data/action"), lambda b: np.random.default_rng(1).bytes(len(b))),
    "deleted attribute file": lambda p: (p / ".zattrs").unlink(),
    "shrunk array": lambda p: _edit_json(p / "data" / "action" / ".zarray", _shrink),
    "non-increasing episode ends": lambda p: _set_zarr(p, "meta/episode_ends", (1,), 3),
    "action of 1e30": lambda p: _set_zarr(p, "data/action", (7, 1), 1e30),
    "NaN in agent_pos": lambda p: _set_zarr(p, "data/agent_pos", (3, 0), float("nan")),
    "deleted episode_ends": lambda p: shutil.rmtree(p / "meta" / "episode_ends"),
}


def _tensor(file: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file))


def _nan_first(tensors: dict[str, torch.Tensor]) -> None:
    key = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))


def _zero_scale(tensors: dict[str, torch.Tensor]) -> None:
    tensors["action/scale"] = torch.zeros_like(tensors["action/scale"])


def _nan_scale(tensors: dict[str, torch.Tensor]) -> None:
    tensors["agent_pos/offset"] = torch.full_like(tensors["agent_pos/offset"], float("nan"))


def _wrong_type(config: dict) -> dict:
    config["policy"]["horizon"] = "four"
    return config


CHECKPOINT_DAMAGE: dict[str, Callable[[Path], None]] = {
    "NaN weights": lambda p: _tensor(p / "model.safetensors", _nan_first),
    "zero normalizer scale": lambda p: _tensor(p / "normalizer.safetensors", _zero_scale),
    "NaN normalizer": lambda p: _tensor(p / "normalizer.safetensors", _nan_scale),
    "config.json a JSON list": lambda p: (p / "config.json").write_text("[1, 2, 3]"),
    "wrong-typed field": lambda p: _edit_json(p / "config.json", _wrong_type),
    "truncated weights": lambda p: _rewrite(p / "model.safetensors", lambda b: b[: len(b) // 3]),
    "deleted weights": lambda p: (p / "model.safetensors").unlink(),
}


def _h5(path: Path, edit: Callable[..., None]) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        edit(f)


def _six_dim_actions(f: object) -> None:
    grp = f["data/demo_0"]  # type: ignore[index]
    actions = grp["actions"][()]
    del grp["actions"]
    grp.create_dataset("actions", data=actions[:, :6])


HDF5_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated file": lambda p: _rewrite(p, lambda b: b[: len(b) // 2]),
    "wrong total": lambda p: _h5(p, lambda f: f["data"].attrs.__setitem__("total", 999)),
    "mask naming a missing demo": lambda p: _h5(
        p, lambda f: (f.__delitem__("mask/train"), f.create_dataset("mask/train", data=np.array([b"demo_9"])))
    ),
    "actions of 6 dims": lambda p: _h5(p, _six_dim_actions),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(2).bytes(4096)),
}


# ---------------------------------------------------------------------------------------------- commands

# Each consumer: the command line for a damaged copy at `src`, with a fresh place to write at `out`.
ZARR_COMMANDS = {
    "train": lambda src, out: [
        "train",
        f"task.dataset={src}",
        f"output_dir={out}",
        "num_steps=2",
        "eval.episodes=0",
        "task.env=reach-v3",
        "task.num_points=64",
    ],
    "collect": lambda src, out: [
        "collect",
        "task=reach-v3",
        f"out={src}",
        "n_episodes=3",
        "num_points=64",
        "image_cameras=[]",
        "progress=false",
    ],
}
CHECKPOINT_COMMANDS = {
    "eval": lambda src, out: [
        "eval",
        f"checkpoint={src}",
        f"out={out}",
        "n_episodes=1",
        "n_workers=0",
        "n_videos=0",
        "progress=false",
    ],
    "export": lambda src, out: ["export", f"checkpoint={src}", f"out={out}"],
    "deploy": lambda src, out: ["deploy", f"checkpoint={src}", "duration_s=1"],
}
HDF5_COMMANDS = {
    "merge": lambda src, out: ["merge", f"inputs=[{src}]", f"out={out}/merged.hdf5"],
    "train": lambda src, out: [
        "train",
        "task=robomimic/lift",
        f"task.dataset={src}",
        "task.obs_keys=[robot0_eef_pos,robot0_gripper_qpos,object]",
        "task.n_demos=2",
        f"output_dir={out}",
        "num_steps=2",
        "eval.episodes=0",
        "profile=cpu",
    ],
}


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(str(file.relative_to(path.parent)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = mfp(argv)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


CASES = (
    [("zarr", d, c) for d in ZARR_DAMAGE for c in ZARR_COMMANDS]
    + [("checkpoint", d, c) for d in CHECKPOINT_DAMAGE for c in CHECKPOINT_COMMANDS]
    + [("hdf5", d, c) for d in HDF5_DAMAGE for c in HDF5_COMMANDS]
)
DAMAGE = {"zarr": ZARR_DAMAGE, "checkpoint": CHECKPOINT_DAMAGE, "hdf5": HDF5_DAMAGE}
COMMANDS = {"zarr": ZARR_COMMANDS, "checkpoint": CHECKPOINT_COMMANDS, "hdf5": HDF5_COMMANDS}


@pytest.mark.parametrize("kind, damage, command", CASES, ids=[f"{k}-{d}-{c}".replace(" ", "_") for k, d, c in CASES])
def test_damaged_input_is_one_clear_line_and_stays_as_it_was(
    artefacts: dict[str, Path],
    tmp_path: Path,
    kind: str,
    damage: str,
    command: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    original = artefacts[kind]
    src = tmp_path / original.name
    (shutil.copytree if original.is_dir() else shutil.copy)(original, src)
    DAMAGE[kind][damage](src)
    before = _digest(src)

    code, output = _run(COMMANDS[kind][command](src, tmp_path / "out"), capsys)

    error = [line for line in output.splitlines() if line.startswith(f"mfp {command.split()[0]}:")]
    assert code == 2, output
    assert "Traceback" not in output, output
    assert len(error) == 1, output
    assert _digest(src) == before, "the damaged input was changed"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "a failed command left output"


def test_the_undamaged_artefacts_pass_the_same_commands(
    artefacts: dict[str, Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    """The corpus only means something if the undamaged originals are accepted by the same checks."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    from demos.replay_buffer import ReplayBuffer
    from demos.robomimic_hdf5 import load_replay_buffer
    from policies.checkpoint import load_policy

    assert ReplayBuffer.load(artefacts["zarr"]).n_episodes == 2
    assert load_policy(artefacts["checkpoint"]).n_obs_steps == 2
    assert load_replay_buffer(artefacts["hdf5"]).n_episodes == 2
    code, output = _run(CHECKPOINT_COMMANDS["eval"](artefacts["checkpoint"], tmp_path / "out"), capsys)
    assert code == 0, output


os.environ.setdefault("MUJOCO_GL", "egl")


def test_export_never_replaces_what_it_did_not_make(tmp_path, capsys):
    """`mfp export out=` a non-empty foreign directory, an existing file or the checkpoint itself: one line, exit 2,
    nothing changed."""
    from rl_toy import toy_checkpoint

    ckpt = toy_checkpoint(tmp_path / "ckpt")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    a_file = tmp_path / "file.bin"
    a_file.write_bytes(b"keep")
    before = {p: p.read_bytes() for p in [foreign / "notes.txt", a_file, *sorted(ckpt.iterdir())]}
    for out in (foreign, a_file, ckpt, ckpt / "export"):
        assert mfp(["export", f"checkpoint={ckpt}", f"out={out}", "n_check=1"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in before} == before
    assert not (ckpt / "export").exists()
