"""training.tasks.ensure_demos: the one place a training job gets its demos, with real scripted-expert episodes.

Parallel sweep jobs that need the same missing dataset must not trip over each other, and a collection killed
half-way must not be trained on as if it were complete.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from demos.replay_buffer import ReplayBuffer, ReplayBufferError
from envs.metaworld.collect import collect
from training.config import TaskConfig
from training.tasks import TaskDataError, ensure_demos

TASK = "button-press-topdown-v3"
REPO = Path(__file__).resolve().parents[1]


def collect_one(path: Path) -> None:
    """One episode with the settings ensure_demos uses for a point-cloud task (no images)."""
    collect(
        task=TASK, n_episodes=1, out_path=str(path), num_points=128, image_cameras=(), max_steps=120, progress=False
    )


def task_cfg(path: Path, **kw) -> TaskConfig:
    return TaskConfig(env=TASK, num_points=128, n_demos=2, dataset=str(path), max_episode_steps=120, **kw)


def test_parallel_jobs_share_one_collection(tmp_path):
    path = tmp_path / "demos.zarr"
    code = (
        "import sys; from training.config import TaskConfig; from training.tasks import ensure_demos; "
        f"ensure_demos(TaskConfig(env={TASK!r}, num_points=128, n_demos=2, dataset=sys.argv[1], max_episode_steps=120))"
    )
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], outputs
    assert sum("not found: collecting" in out for out in outputs) == 1, (
        outputs
    )  # one job collected, the others read its result
    rb = ReplayBuffer.open(path)
    assert rb.n_episodes == 2
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_interrupted_collection_is_completed_not_trained_on(tmp_path):
    path = tmp_path / "demos.zarr"
    collect_one(path)
    first = ReplayBuffer.open(path)
    first_seed, first_actions = int(first.episode_seeds[0]), first.get_episode(0)["action"].copy()

    ensure_demos(task_cfg(path))
    rb = ReplayBuffer.open(path)
    assert rb.n_episodes == 2
    assert int(rb.episode_seeds[0]) == first_seed and (rb.get_episode(0)["action"] == first_actions).all()


def test_own_recordings_are_used_as_they_are(tmp_path):
    path = tmp_path / "mine.zarr"
    collect_one(path)
    assert ensure_demos(task_cfg(path, collect_if_missing=False)) == path
    assert ReplayBuffer.open(path).n_episodes == 1  # nothing was added to a dataset the user declared complete


def test_short_dataset_with_other_settings_is_refused_and_kept(tmp_path):
    path = tmp_path / "with-images.zarr"
    collect(task=TASK, n_episodes=1, out_path=str(path), num_points=128, max_steps=120, progress=False)  # + images
    with pytest.raises(TaskDataError, match=r"holds 1 of the 2 episodes to collect.*set task.n_demos=1"):
        ensure_demos(task_cfg(path))
    assert ReplayBuffer.open(path).n_episodes == 1


def test_corrupt_dataset_is_named_and_left_in_place(tmp_path):
    path = tmp_path / "broken.zarr"
    collect_one(path)
    for f in (path / "meta" / "episode_ends").rglob("*"):
        if f.is_file():
            f.write_bytes(b"not zarr")
    with pytest.raises(ReplayBufferError, match="broken.zarr"):
        ensure_demos(task_cfg(path))
    assert path.is_dir() and (path / "data").is_dir()


@pytest.mark.slow  # end to end, 20-30 s: keeps the fast suite under 10 minutes on 2 cores
def test_killed_robomimic_collection_leaves_no_dataset_and_the_next_job_collects(tmp_path):
    pytest.importorskip("robosuite")
    from demos.robomimic_hdf5 import list_demos

    path = tmp_path / "lift.hdf5"
    kw = dict(
        suite="robomimic",
        env="lift",
        obs_keys=["agentview_image", "robot0_eef_pos"],
        image_size=32,
        n_demos=1,
        dataset=str(path),
        max_episode_steps=400,
    )
    code = (
        "from training.config import TaskConfig; from training.tasks import ensure_demos; "
        f"ensure_demos(TaskConfig(**{kw!r}))"
    )
    job = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / ".lift.hdf5.partial").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    job.kill()
    job.wait()
    assert not path.exists(), "a killed collection must not leave a file under the dataset's name"

    assert ensure_demos(TaskConfig(**kw)) == path
    assert len(list_demos(path)) == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["lift.hdf5"]


@pytest.mark.slow  # end to end, 20-30 s: keeps the fast suite under 10 minutes on 2 cores
def test_an_interrupted_robomimic_collection_is_continued_not_restarted(tmp_path):
    """`mfp collect task=robomimic/...` stopped after one demo of two (here: out of attempts) keeps that demo in a
    partial file beside the output; the next run with the same settings continues it and then names the file."""
    pytest.importorskip("robosuite")
    from demos.robomimic_hdf5 import read_robomimic
    from envs.robosuite.collect import collect_robomimic
    from envs.suites import CollectionError

    out = tmp_path / "lift.hdf5"
    kw = dict(task="lift", n_episodes=2, out_path=str(out), image_size=32, cameras=("agentview",), verbose=False)
    with pytest.raises(CollectionError, match="raise max_attempts to continue"):
        collect_robomimic(max_attempts=1, **kw)
    assert not out.exists() and (tmp_path / ".lift.hdf5.partial").exists()
    collect_robomimic(max_attempts=5, **kw)
    done = read_robomimic(out)
    assert [d.attrs["seed"] for d in done.demos.values()] == [0, 1]  # the first demo kept, the second new
    assert not (tmp_path / ".lift.hdf5.partial").exists()
    with pytest.raises(ValueError, match="overwrite=true"):
        collect_robomimic(max_attempts=5, **kw)  # a finished file is not collected over
