"""`mfp train task=dataset`: your own recordings (here the committed LeRobot fixtures, converted) train with one
command, with the observation spec the dataset records, no simulator, and a checkpoint export and deploy take."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from demos.replay_buffer import ReplayBuffer  # noqa: E402
from mfp.cli import main as mfp  # noqa: E402
from policies.checkpoint import load_policy  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot"
TINY = [
    "num_steps=3",
    "batch_size=4",
    "warmup_steps=1",
    "checkpoint_every=3",
    "log_every=3",
    "torch_threads=1",
    "progress=false",
    "wandb.mode=disabled",
    "policy.backbone.hidden_dim=32",
    "policy.backbone.n_layers=2",
]


def _convert(name: str, out: Path) -> Path:
    assert mfp(["convert", f"src={FIXTURES / name}", f"out={out}"]) == 0
    return out


@pytest.fixture(scope="module")
def state_run(tmp_path_factory):
    """The state-only fixture converted and trained for a few steps through the CLI: (dataset, run dir, stdout)."""
    root = tmp_path_factory.mktemp("state")
    data = _convert("state_only", root / "mine.zarr")
    run = root / "run"
    argv = ["train", "task=dataset", f"task.dataset={data}", "task.obs_keys=[observation_state]", f"output_dir={run}"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert mfp(argv + TINY) == 0
    return data, run, stdout.getvalue()


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mfp {command}: "), err
    return err[0]


def test_a_converted_lerobot_dataset_trains_with_mfp_train(state_run):
    data, run, stdout = state_run
    policy = load_policy(run / "policy")
    buffer = ReplayBuffer.open(data, mode="r")
    assert policy.shape_meta == buffer.shape_meta(["observation_state"])
    task = json.loads((run / "policy" / "config.json").read_text())["metadata"]["task"]
    assert task["suite"] == "none" and task["dataset"] == str(data) and not task["collect_if_missing"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and "eval" not in summary  # no simulator: nothing evaluated
    assert not (run / "eval").exists()
    assert "[data] " in stdout and "training on 3 demos (every demo of the dataset)" in stdout
    skipped = [line for line in stdout.splitlines() if line.startswith("[eval]")]
    assert len(skipped) == 1 and "skipped" in skipped[0] and "no simulator" in skipped[0], stdout
    # The checkpoint acts on the dataset's observations (what mfp deploy feeds it).
    history = buffer.get_episode(0)["observation_state"][: policy.n_obs_steps]
    action = policy.predict_action({"observation_state": history})
    assert action.shape == (policy.n_action_steps, buffer.step_shape("action")[0]) and np.isfinite(action).all()


def test_evaluating_a_run_without_a_simulator_is_one_line(state_run, tmp_path, capsys):
    _, run, _ = state_run
    capsys.readouterr()
    assert mfp(["eval", f"checkpoint={run / 'policy'}", "n_episodes=1", f"out={tmp_path / 'e'}"]) == 2
    assert "no simulator" in _one_error_line(capsys, "eval")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    "override, says",
    [
        ("task.obs_keys=[observation_state,wrist_image]", "task.obs_keys ['wrist_image'] are not observations of"),
        ("eval.every_steps=2", "eval.every_steps=2: task.suite=none has no simulator to evaluate in"),
        ("task.collect_if_missing=true", "task.suite=none has no scripted expert to collect demos with"),
    ],
)
def test_a_dataset_task_that_cannot_train_is_refused_before_anything_is_written(
    state_run, tmp_path, capsys, override, says
):
    data, _, _ = state_run
    run = tmp_path / "run"
    argv = ["train", "task=dataset", f"task.dataset={data}", "task.obs_keys=[observation_state]", override]
    capsys.readouterr()
    assert mfp(argv + TINY + [f"output_dir={run}"]) == 2
    line = _one_error_line(capsys, "train")
    assert says in line
    if "obs_keys" in override:
        assert "available: ['observation_state']" in line
    assert not run.exists()


def test_a_dataset_without_obs_types_or_a_missing_one_is_one_line(tmp_path, capsys):
    bare = ReplayBuffer.create(tmp_path / "bare.zarr", {"state": ((2,), np.float32), "action": ((2,), np.float32)})
    bare.add_episode({"state": np.zeros((5, 2), np.float32), "action": np.zeros((5, 2), np.float32)})
    for dataset, says in [(tmp_path / "bare.zarr", "records no obs_types"), (tmp_path / "gone.zarr", "does not exist")]:
        argv = ["train", "task=dataset", f"task.dataset={dataset}", "task.obs_keys=[state]"]
        assert mfp(argv + TINY + [f"output_dir={tmp_path / 'run'}"]) == 2
        assert says in _one_error_line(capsys, "train")
    assert not (tmp_path / "run").exists()


def test_an_image_crop_larger_than_the_recorded_images_is_one_line(tmp_path, capsys):
    data = _convert("with_video", tmp_path / "v.zarr")
    capsys.readouterr()
    keys = "task.obs_keys=[observation_images_front,observation_state]"
    assert mfp(["train", "task=dataset", f"task.dataset={data}", keys, f"output_dir={tmp_path / 'run'}"] + TINY) == 2
    line = _one_error_line(capsys, "train")
    assert "image_crop_shape=[76, 76] does not fit the 64x64 images of 'observation_images_front'" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_camera_recordings_train_through_the_image_encoder_and_export_with_parity(tmp_path, monkeypatch, capsys):
    """The video fixture (a 64x64 camera + joint state) trains with the image encoder; `mfp export` checks parity on
    the checkpoint's own dataset (its default), run from the directory the relative path was given in."""
    monkeypatch.chdir(tmp_path)
    _convert("with_video", Path("v.zarr"))
    keys = "task.obs_keys=[observation_images_front,observation_state]"
    argv = ["train", "task=dataset", "task.dataset=v.zarr", keys, "profile=cpu_image", "output_dir=run"]
    assert mfp(argv + TINY + ["policy.encoder.image_crop_shape=[56,56]"]) == 0
    policy = load_policy("run/policy")
    assert policy.shape_meta.obs["observation_images_front"].type == "rgb"
    assert policy.shape_meta.obs["observation_images_front"].shape == (3, 64, 64)
    capsys.readouterr()
    assert mfp(["export", "checkpoint=run/policy", "out=run/export", "n_check=4"]) == 0
    out = capsys.readouterr().out
    assert "recorded: v.zarr" in out, out
    meta = json.loads(Path("run/export/export.json").read_text())
    assert meta["parity"]["source"].startswith("recorded") and max(meta["parity"]["max_abs_error"].values()) < 1e-4
