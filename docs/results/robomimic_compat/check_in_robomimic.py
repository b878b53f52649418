"""Open, train on and replay a robomimic file written by this package, with robomimic 0.3.0's own code.

Runs in a venv with robomimic 0.3.0 + robosuite 1.5.1 (tests/fixtures/robomimic/README.md), never in CI:

    MUJOCO_GL=egl $RM_PYTHON docs/results/robomimic_compat/check_in_robomimic.py FILE.hdf5 [--out results.json]

1. robomimic's ``SequenceDataset`` (``hdf5_cache_mode="low_dim"``, ``filter_by_attribute="train"``, every obs key
   of the file, images included): every item read and compared with the stored arrays.
2. robomimic's BC training (``robomimic.scripts.train.train`` with a ``bc`` config, images and low-dim keys, a few
   gradient steps, no rollouts).
3. robomimic's ``playback_dataset.py --use-actions`` on every demo, run as its ``__main__``; its output is kept and
   its "playback diverged" warnings counted.
4. The time robomimic's ``SequenceDataset.__getitem__`` takes per item in ``low_dim`` cache mode (images read from
   disk every time) on the file as written and on a copy with robomimic's ``--compress`` layout (gzip, automatic
   chunks), which is how this package wrote images before.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import runpy
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "tests" / "fixtures" / "robomimic"))
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import rm_compat  # noqa: E402,F401  (mujoco_py stub + torchvision op schemas; before robomimic)


def obs_keys_of(path: str) -> tuple[list[str], list[str]]:
    with h5py.File(path, "r") as f:
        obs = f[f"data/{sorted(f['data'])[0]}/obs"]
        rgb = [k for k in obs if obs[k].ndim == 4]
        return [k for k in obs if k not in rgb], rgb


def check_dataset(path: str) -> dict:
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    low_dim, rgb = obs_keys_of(path)
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": low_dim, "rgb": rgb}})
    ds = SequenceDataset(
        hdf5_path=path,
        obs_keys=low_dim + rgb,
        dataset_keys=("actions", "rewards", "dones"),
        hdf5_cache_mode="low_dim",
        filter_by_attribute="train",
        seq_length=1,
    )
    worst = 0.0
    with h5py.File(path, "r", swmr=True, libver="latest") as f:  # as robomimic opens it (h5py wants the same flags)
        for i in range(len(ds)):
            item = ds[i]
            demo = ds._index_to_demo_id[i]
            t = i - ds._demo_id_to_start_indices[demo]
            for key in low_dim:
                worst = max(worst, float(np.abs(item["obs"][key][0] - f[f"data/{demo}/obs/{key}"][t]).max()))
            for key in rgb:  # the dataset returns the stored (H, W, 3) uint8 frames; its models process them later
                stored = f[f"data/{demo}/obs/{key}"][t].astype(np.float64)
                worst = max(worst, float(np.abs(item["obs"][key][0] - stored).max()))
            worst = max(worst, float(np.abs(item["actions"][0] - f[f"data/{demo}/actions"][t]).max()))
    return {"items": len(ds), "demos": len(ds.demos), "max_abs_diff_vs_stored": worst, "obs_keys": low_dim + rgb}


def check_training(path: str, steps: int = 5) -> dict:
    import robomimic.utils.torch_utils as TorchUtils
    from robomimic.config import config_factory
    from robomimic.scripts.train import train

    low_dim, rgb = obs_keys_of(path)
    config = config_factory("bc")
    with config.values_unlocked():
        config.train.data = path
        config.train.output_dir = tempfile.mkdtemp()
        config.train.num_epochs = 1
        config.train.batch_size = 4
        config.train.hdf5_cache_mode = "low_dim"
        config.train.hdf5_filter_key = "train"
        config.train.num_data_workers = 0
        config.experiment.name = "check"
        config.experiment.epoch_every_n_steps = steps
        config.experiment.validate = False
        config.experiment.rollout.enabled = False
        config.experiment.save.enabled = False
        config.experiment.logging.log_tb = False
        config.experiment.render_video = False
        config.observation.modalities.obs.low_dim = low_dim
        config.observation.modalities.obs.rgb = rgb
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(config, device=TorchUtils.get_torch_device(try_to_use_cuda=False))
    losses = [line for line in out.getvalue().splitlines() if "Loss" in line]
    return {"finished": True, "steps": steps, "loss_lines": losses[:6]}


def check_playback(path: str) -> dict:
    sys.argv = ["playback_dataset.py", "--dataset", path, "--use-actions"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_module("robomimic.scripts.playback_dataset", run_name="__main__", alter_sys=True)
    lines = out.getvalue().splitlines()
    played = [line for line in lines if line.startswith("Playing back episode")]
    diverged = [line for line in lines if "playback diverged" in line]
    return {"episodes_played": len(played), "diverged_warnings": len(diverged), "output": lines}


def time_items(path: str, reads: int = 300) -> float:
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    low_dim, rgb = obs_keys_of(path)
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": low_dim, "rgb": rgb}})
    ds = SequenceDataset(
        hdf5_path=path, obs_keys=low_dim + rgb, dataset_keys=("actions",), hdf5_cache_mode="low_dim", seq_length=1
    )
    rng = np.random.default_rng(0)
    times = []
    for i in rng.integers(0, len(ds), size=reads):
        t = time.perf_counter()
        ds[int(i)]
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def gzip_copy(path: str, out: str) -> None:
    """The file with its images as robomimic's --compress writes them (gzip, h5py's automatic chunks)."""
    with h5py.File(path, "r") as src, h5py.File(out, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value

        def copy(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Group):
                grp = dst.require_group(name)
                for k, v in obj.attrs.items():
                    grp.attrs[k] = v
            elif isinstance(obj, h5py.Dataset):
                opts = {"compression": "gzip"} if obj.ndim == 4 else {}
                dst.create_dataset(name, data=obj[()], **opts)

        src.visititems(copy)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--out", default=str(HERE / "robomimic_check.json"))
    args = parser.parse_args()
    import robomimic
    import robosuite

    result = {
        "file": os.path.basename(args.path),
        "robomimic": robomimic.__version__,
        "robosuite": robosuite.__version__,
    }
    result["sequence_dataset"] = check_dataset(args.path)
    print("SequenceDataset:", json.dumps(result["sequence_dataset"]), flush=True)
    result["training"] = check_training(args.path)
    print("training:", json.dumps(result["training"]), flush=True)
    result["playback"] = check_playback(args.path)
    print("playback:", {k: v for k, v in result["playback"].items() if k != "output"}, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        gz = os.path.join(tmp, "gzip.hdf5")
        gzip_copy(args.path, gz)
        result["item_time_ms_low_dim_cache"] = {"as_written": time_items(args.path), "gzip_auto_chunks": time_items(gz)}
    print("item time (ms):", result["item_time_ms_low_dim_cache"], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
