"""Write the LeRobot datasets that check_in_lerobot.py opens with lerobot itself (run in this package's venv).

    python docs/results/lerobot_compat/make_datasets.py OUT_DIR

Four datasets, each with ``expected.npz`` (every frame's values as this package's reader decodes them, keyed by
feature name) beside it:
  from_lerobot_video   tests/fixtures/lerobot/with_video -> mfp convert (zarr) -> mfp convert to=lerobot (AV1)
  from_lerobot_state   tests/fixtures/lerobot/state_only -> zarr -> LeRobot
  from_robomimic       tests/fixtures/robomimic/image.hdf5 (robomimic's own file, 32x32 cameras) -> LeRobot (AV1)
  from_deploy          an `mfp deploy record=...` zarr (deploy.recorder.EpisodeRecorder) -> LeRobot (lossless)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from demos.lerobot import read_lerobot
from deploy.recorder import EpisodeRecorder
from mfp.cli import main as mfp

REPO = Path(__file__).resolve().parents[3]


def dump(root: Path) -> None:
    data = read_lerobot(root)
    episodes = [data.episode(i) for i in range(len(data.episodes))]
    arrays = {name: np.concatenate([ep[name] for ep in episodes]) for name in data.features}
    np.savez(root.parent / f"{root.name}.expected.npz", **arrays)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    fixtures = REPO / "tests" / "fixtures"
    for name, src in [("video", "with_video"), ("state", "state_only")]:
        assert mfp(["convert", f"src={fixtures / 'lerobot' / src}", f"out={out / (name + '.zarr')}"]) == 0
        assert mfp(["convert", f"src={out / (name + '.zarr')}", f"out={out / ('from_lerobot_' + name)}"]) == 0
    robomimic = fixtures / "robomimic" / "image.hdf5"
    assert (
        mfp(["convert", f"src={robomimic}", f"out={out / 'from_robomimic'}", "to=lerobot", "task=lift the cube"]) == 0
    )
    rng = np.random.default_rng(0)
    recorder = EpisodeRecorder(out / "deploy.zarr", {"agent_pos": "low_dim", "wrist": "rgb"}, attrs={"hz": 20.0})
    for episode, n in enumerate((6, 9)):
        for t in range(n):
            obs = {"agent_pos": rng.normal(size=4), "wrist": rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)}
            recorder.add(obs, rng.normal(size=4), timestamp=10.0 + t / 20, hold=t == 3)
        recorder.save(seed=episode)
    args = ["convert", f"src={out / 'deploy.zarr'}", f"out={out / 'from_deploy'}", "task=pick", "video_codec=lossless"]
    assert mfp(args) == 0
    for name in ("from_lerobot_video", "from_lerobot_state", "from_robomimic", "from_deploy"):
        dump(out / name)


if __name__ == "__main__":
    main()
