"""Open datasets written by this package with lerobot 0.4.4's own LeRobotDataset (run in a lerobot venv; see
tests/fixtures/lerobot/README.md), never in CI:

    HF_HUB_OFFLINE=1 $LEROBOT_PYTHON docs/results/lerobot_compat/check_in_lerobot.py OUT_DIR [--out results.json]

For each dataset OUT_DIR/<name> made by make_datasets.py: LeRobotDataset(repo_id, root) opens it; every item is read
(its default video backend decodes the frames) and compared with OUT_DIR/<name>.expected.npz, which holds what this
package's reader decodes; the task strings, episode count, fps and stats are read; and one item is read with
delta_timestamps (an action chunk of 4), which needs the episode index ranges.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lerobot  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402


def check(root: Path) -> dict:
    expected = np.load(root.parent / f"{root.name}.expected.npz")
    ds = LeRobotDataset(f"local/{root.name}", root=root)
    worst: dict[str, float] = {}
    tasks = []
    for i in range(len(ds)):
        item = ds[i]
        tasks.append(item["task"])
        for name in expected.files:
            value = item[name]
            if name in ds.meta.video_keys:  # float (C, H, W) in [0, 1]
                value = torch.round(value * 255).to(torch.uint8).permute(1, 2, 0)
            ours = np.asarray(expected[name][i])
            diff = float(np.abs(value.numpy().astype(np.float64).reshape(ours.shape) - ours.astype(np.float64)).max())
            worst[name] = max(worst.get(name, 0.0), diff)
    chunk = LeRobotDataset(
        f"local/{root.name}", root=root, delta_timestamps={"action": [k / ds.fps for k in range(4)]}
    )[0]["action"]
    return {
        "opened": True,
        "len": len(ds),
        "num_episodes": ds.num_episodes,
        "fps": ds.fps,
        "video_keys": ds.meta.video_keys,
        "features": list(ds.meta.features),
        "tasks_seen": sorted(set(tasks)),
        "stats_keys": sorted(ds.meta.stats) if ds.meta.stats is not None else None,
        "max_abs_diff_vs_mfp_reader": worst,
        "delta_timestamps_action_chunk_shape": list(chunk.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--out", default=str(Path(__file__).with_name("lerobot_check.json")))
    args = parser.parse_args()
    results = {"lerobot": lerobot.__version__, "torch": torch.__version__, "datasets": {}}
    for name in ("from_lerobot_video", "from_lerobot_state", "from_robomimic", "from_deploy"):
        try:
            results["datasets"][name] = check(Path(args.dir) / name)
        except Exception as e:  # a dataset lerobot refuses is the result to record, not a crash of the check
            results["datasets"][name] = {"opened": False, "error": f"{type(e).__name__}: {e}"}
        print(name, json.dumps(results["datasets"][name]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
