"""Files made by robosuite's and robomimic's own scripts (``tests/fixtures/robomimic``, see its README) load, train
and convert here with robomimic's values."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from demos.robomimic_hdf5 import load_replay_buffer, read_robomimic
from mfp.cli import main as mfp

FIXTURES = Path(__file__).parent / "fixtures" / "robomimic"
EXPECTED = json.loads((FIXTURES / "expected_robomimic.json").read_text())["files"]


def test_robomimics_image_file_loads_with_exact_values():
    """robomimic's dataset_states_to_obs.py --compress output: every array as stored, images to (3, H, W)."""
    rb = load_replay_buffer(FIXTURES / "image.hdf5", filter_key="train")
    assert rb.attrs["demo_names"] == EXPECTED["image.hdf5"]["mask"]["train"] == ["demo_1"]
    with h5py.File(FIXTURES / "image.hdf5", "r") as f:
        obs = f["data/demo_1/obs"]
        for key in obs:
            stored = obs[key][()]
            ours = rb[key]
            if stored.ndim == 4:
                np.testing.assert_array_equal(ours, stored.transpose(0, 3, 1, 2), err_msg=key)
            else:
                np.testing.assert_array_equal(ours, stored.astype(np.float32), err_msg=key)
        np.testing.assert_array_equal(rb["action"], f["data/demo_1/actions"][()].astype(np.float32))
    assert rb.attrs["obs_types"]["agentview_image"] == "rgb" and rb.attrs["obs_types"]["robot0_joint_pos"] == "low_dim"


def test_robomimics_image_file_trains_on_its_train_mask(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = mfp(
        [
            "train",
            "task=robomimic/lift",
            f"task.dataset={FIXTURES / 'image.hdf5'}",
            "task.collect_if_missing=false",
            "task.image_size=32",
            "policy.encoder.image_crop_shape=[28,28]",
            f"output_dir={tmp_path / 'run'}",
            "num_steps=2",
            "batch_size=4",
            "eval.episodes=0",
            "profile=cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "training on 1 demos (mask 'train': 1 of the 2 demos in the file)" in out
    assert (tmp_path / "run").exists()


def test_a_raw_robosuite_file_is_refused_naming_mfp_convert(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("raw/demo.hdf5", "demo.hdf5"):  # robosuite's own, and robomimic's before extraction
        code = mfp(
            [
                "train",
                "task=robomimic/lift",
                f"task.dataset={FIXTURES / name}",
                "task.obs_keys=[robot0_eef_pos]",
                f"output_dir={tmp_path / 'run'}",
                "num_steps=1",
                "eval.episodes=0",
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert "states and actions, no observations" in err[0] and "mfp convert src=" in err[0], err


def test_mfp_convert_of_robosuites_file_gives_robomimics_observations(tmp_path):
    """`mfp convert` of raw/demo.hdf5 against robomimic's dataset_states_to_obs.py output from the same states:
    every obs and next_obs equal but the last next_obs of each demo (robomimic takes that one from robosuite's
    step output, which robosuite samples mid-step; here it is the observation of the state after the step)."""
    pytest.importorskip("robosuite")
    out = tmp_path / "low_dim.hdf5"
    assert mfp(["convert", f"src={FIXTURES / 'raw' / 'demo.hdf5'}", f"out={out}", "cameras=[]"]) == 0
    ours, theirs = read_robomimic(out), read_robomimic(FIXTURES / "low_dim.hdf5")
    assert list(ours.demos) == list(theirs.demos) == ["demo_1", "demo_2"]
    for name, demo in theirs.demos.items():
        mine = ours.demos[name]
        assert set(mine.obs) == set(demo.obs)
        for key in demo.obs:
            np.testing.assert_array_equal(mine.obs[key], demo.obs[key], err_msg=f"{name} obs/{key}")
            np.testing.assert_array_equal(mine.next_obs[key][:-1], demo.next_obs[key][:-1], err_msg=key)
        np.testing.assert_array_equal(mine.rewards, demo.rewards)
        np.testing.assert_array_equal(mine.dones, demo.dones)
        np.testing.assert_array_equal(mine.states, demo.states)
        assert mine.attrs["model_file"] == demo.attrs["model_file"]
    assert ours.env_args["env_name"] == "Lift" and ours.env_args["type"] == 1
    assert mfp(["convert", f"src={FIXTURES / 'raw' / 'demo.hdf5'}", f"out={out}", "cameras=[]"]) == 2  # exists


def test_robomimic_to_lerobot(tmp_path):
    pytest.importorskip("av")
    from demos.lerobot import read_lerobot

    out = tmp_path / "lift_lerobot"
    assert mfp(["convert", f"src={FIXTURES / 'image.hdf5'}", f"out={out}", "to=lerobot", "video_codec=lossless"]) == 0
    data = read_lerobot(out)
    assert data.fps == 20 and data.tasks == ["Lift"] and len(data.episodes) == 2
    assert data.features["observation.images.agentview_image"]["shape"] == [32, 32, 3]
    with h5py.File(FIXTURES / "image.hdf5", "r") as f:
        np.testing.assert_array_equal(
            data.episode(1)["observation.images.agentview_image"], f["data/demo_2/obs/agentview_image"][()]
        )
        np.testing.assert_array_equal(
            data.episode(0)["observation.robot0_joint_pos"],
            f["data/demo_1/obs/robot0_joint_pos"][()].astype(np.float32),
        )
