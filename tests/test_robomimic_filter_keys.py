"""Which demos of a robomimic file training uses: ``mask/train`` when the file has it, ``task.filter_key`` to choose,
``task.n_demos`` only as a cap, and one log line that says what was chosen."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("h5py")

from core.errors import ConfigError  # noqa: E402
from demos.robomimic_hdf5 import Demo, write_robomimic  # noqa: E402
from policies.config import PolicyConfig  # noqa: E402
from training.config import TaskConfig, compose_train_config  # noqa: E402
from training.tasks import TaskDataError, load_task_data  # noqa: E402

OBS_KEYS = ["robot0_eef_pos", "robot0_gripper_qpos", "object"]
ENV_ARGS = {"env_name": "Lift", "env_version": "1.5.1", "type": 1, "env_kwargs": {"robots": ["Panda"]}}


def _demo(rng: np.random.Generator, n: int, seed: int) -> Demo:
    obs = {"robot0_eef_pos": rng.normal(size=(n, 3)), "robot0_gripper_qpos": rng.normal(size=(n, 2))}
    obs["object"] = rng.normal(size=(n, 10))
    return Demo(actions=rng.uniform(-1, 1, (n, 7)), obs=obs, attrs={"seed": seed})


@pytest.fixture
def six_demos(tmp_path):
    """Six demos; mask/train holds four of them, mask/valid two."""
    rng = np.random.default_rng(0)
    path = tmp_path / "lift.hdf5"
    masks = {"train": ["demo_0", "demo_1", "demo_3", "demo_5"], "valid": ["demo_2", "demo_4"]}
    write_robomimic(path, [_demo(rng, 12, i) for i in range(6)], ENV_ARGS, masks=masks)
    return path


def _load(path, capsys, **task):
    cfg = TaskConfig(suite="robomimic", env="lift", obs_keys=OBS_KEYS, dataset=str(path), collect_if_missing=False)
    for key, value in {"n_demos": None, **task}.items():
        setattr(cfg, key, value)
    cfg.__post_init__()
    data = load_task_data(cfg, PolicyConfig(horizon=4, n_obs_steps=2, n_action_steps=3), seed=0, val_ratio=0.0)
    log = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[data]")]
    assert len(log) == 1, log
    return data.train, log[0]


def test_the_train_mask_is_used_when_present_and_the_count_is_logged(six_demos, capsys):
    train, log = _load(six_demos, capsys)
    assert sorted(train.attrs["demo_names"]) == ["demo_0", "demo_1", "demo_3", "demo_5"]
    assert len(train.episodes) == 4
    assert "training on 4 demos (mask 'train': 4 of the 6 demos in the file)" in log


def test_filter_key_chooses_a_mask_or_every_demo(six_demos, capsys):
    train, log = _load(six_demos, capsys, filter_key="valid")
    assert train.attrs["demo_names"] == ["demo_2", "demo_4"] and "mask 'valid': 2 of the 6" in log
    train, log = _load(six_demos, capsys, filter_key="all")
    assert len(train.episodes) == 6 and "all 6 demos of the file; its masks ['train', 'valid'] unused" in log
    with pytest.raises(TaskDataError, match=r"no mask 'test'; its masks: \['train', 'valid'\]"):
        _load(six_demos, capsys, filter_key="test")


def test_n_demos_only_caps_and_says_so(six_demos, capsys):
    train, log = _load(six_demos, capsys, n_demos=3)
    assert len(train.episodes) == 3 and "a seeded 3 of 4: task.n_demos=3" in log
    assert set(np.asarray(train.attrs["demo_names"])[train.episodes]) <= {"demo_0", "demo_1", "demo_3", "demo_5"}
    train, log = _load(six_demos, capsys, n_demos=10)
    assert len(train.episodes) == 4 and "fewer than task.n_demos=10" in log


def test_a_file_without_masks_trains_on_every_demo(tmp_path, capsys):
    path = tmp_path / "plain.hdf5"
    write_robomimic(path, [_demo(np.random.default_rng(1), 8, i) for i in range(5)], ENV_ARGS)
    train, log = _load(path, capsys)
    assert len(train.episodes) == 5 and "all 5 demos of the file)" in log


def test_the_robomimic_task_configs_do_not_cap_and_name_the_collection_count():
    cfg = compose_train_config(["task=robomimic/lift"]).task
    assert cfg.n_demos is None and cfg.filter_key is None and cfg.demos_to_collect == 50
    assert cfg.dataset == "data/robomimic-lift-50demos.hdf5"
    with pytest.raises(ConfigError, match="filter_key"):
        TaskConfig(filter_key="mask/train")
    with pytest.raises(ConfigError, match="collect_demos"):
        TaskConfig(n_demos=None).demos_to_collect  # noqa: B018
