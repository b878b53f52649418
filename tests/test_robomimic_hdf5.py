"""robomimic HDF5 reader/writer: round trips, clear errors on broken files, the training view, real collection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

h5py = pytest.importorskip("h5py")

from demos.replay_buffer import ReplayBuffer  # noqa: E402
from demos.robomimic_hdf5 import (  # noqa: E402
    Demo,
    RobomimicFormatError,
    convert_to_zarr,
    is_robomimic_file,
    list_demos,
    load_replay_buffer,
    merge_robomimic,
    read_demo,
    read_env_args,
    read_robomimic,
    split_masks,
    write_robomimic,
)

ENV_ARGS = {
    "env_name": "Lift",
    "env_version": "1.5.1",
    "type": 1,
    "env_kwargs": {"robots": "Panda", "camera_names": ["agentview"], "camera_heights": 8},
}


def make_demo(rng: np.random.Generator, n: int, image: int = 8, obj_dim: int = 10, seed: int = 0) -> Demo:
    obs_seq = {
        "agentview_image": rng.integers(0, 256, (n + 1, image, image, 3), dtype=np.uint8),
        "robot0_eef_pos": rng.normal(size=(n + 1, 3)),
        "object": rng.normal(size=(n + 1, obj_dim)),
    }
    dones = np.zeros(n, dtype=np.int64)
    dones[-1] = 1
    return Demo(
        actions=rng.uniform(-1, 1, (n, 7)),
        obs={k: v[:-1] for k, v in obs_seq.items()},
        next_obs={k: v[1:] for k, v in obs_seq.items()},
        states=rng.normal(size=(n, 32)),
        rewards=dones.astype(np.float64),
        dones=dones,
        attrs={"model_file": "<mujoco model='x'/>", "seed": seed},
    )


def assert_demo_equal(a: Demo, b: Demo) -> None:
    for key in ("actions", "states", "rewards", "dones"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
        assert getattr(a, key).dtype == getattr(b, key).dtype, key
    for group in ("obs", "next_obs"):
        ga, gb = getattr(a, group), getattr(b, group)
        assert list(ga) == sorted(gb) or set(ga) == set(gb)
        for key in ga:
            np.testing.assert_array_equal(ga[key], gb[key], err_msg=f"{group}/{key}")
            assert ga[key].dtype == gb[key].dtype
    assert {k: v for k, v in b.attrs.items() if k != "num_samples"} == a.attrs
    assert b.attrs["num_samples"] == len(a)


@pytest.fixture
def demo_file(tmp_path):
    rng = np.random.default_rng(0)
    demos = [make_demo(rng, n, seed=i) for i, n in enumerate([5, 3, 7])]
    path = tmp_path / "demo.hdf5"
    names = write_robomimic(
        path,
        demos,
        ENV_ARGS,
        masks={"train": ["demo_0", "demo_2"], "valid": ["demo_1"]},
        file_attrs={"creator": "test"},
    )
    return path, demos, names


def test_round_trip_arrays_and_attributes(demo_file):
    path, demos, names = demo_file
    assert names == ["demo_0", "demo_1", "demo_2"]
    f = read_robomimic(path)
    assert f.env_args == ENV_ARGS
    assert f.total == 15
    assert f.masks == {"train": ["demo_0", "demo_2"], "valid": ["demo_1"]}
    assert f.file_attrs == {"creator": "test"}
    for name, demo in zip(names, demos, strict=True):
        assert_demo_equal(demo, f.demos[name])


def test_layout_is_robomimics(demo_file):
    path, demos, _ = demo_file
    with h5py.File(path, "r") as f:
        assert json.loads(f["data"].attrs["env_args"])["type"] == 1
        assert int(f["data"].attrs["total"]) == 15
        assert int(f["data/demo_1"].attrs["num_samples"]) == 3
        assert f["mask/train"].dtype.kind == "S" and list(f["mask/valid"][()]) == [b"demo_1"]
        assert f["data/demo_0/obs/agentview_image"].shape == (5, 8, 8, 3)
        assert f["data/demo_0/obs/agentview_image"].dtype == np.uint8
        assert set(f["data/demo_0"].keys()) == {"actions", "states", "rewards", "dones", "obs", "next_obs"}
    assert list_demos(path, "train") == ["demo_0", "demo_2"]
    assert read_env_args(path)["env_name"] == "Lift"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    obj_dim=st.integers(1, 20),
    image=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(tmp_path_factory, lengths, obj_dim, image, seed):
    rng = np.random.default_rng(seed)
    demos = [make_demo(rng, n, image=image, obj_dim=obj_dim, seed=i) for i, n in enumerate(lengths)]
    path = tmp_path_factory.mktemp("rt") / "d.hdf5"
    names = write_robomimic(path, demos, ENV_ARGS)
    f = read_robomimic(path)
    assert f.total == sum(lengths)
    for name, demo in zip(names, demos, strict=True):
        assert_demo_equal(demo, f.demos[name])


def _break(path, fn) -> None:
    with h5py.File(path, "a") as f:
        fn(f)


def test_missing_key_names_demo_and_key(demo_file):
    path, _, _ = demo_file
    _break(path, lambda f: f.__delitem__("data/demo_1/obs/robot0_eef_pos"))
    with pytest.raises(RobomimicFormatError, match=r"data/demo_1: missing 'obs/robot0_eef_pos'"):
        read_demo(path, "demo_1", obs_keys=["agentview_image", "robot0_eef_pos"])
    _break(path, lambda f: f.__delitem__("data/demo_2/actions"))
    with pytest.raises(RobomimicFormatError, match=r"data/demo_2: missing 'actions'"):
        read_robomimic(path)


def test_wrong_dtype_names_demo_and_key(demo_file):
    path, demos, _ = demo_file

    def float_images(f):
        del f["data/demo_0/obs/agentview_image"]
        f["data/demo_0/obs/agentview_image"] = demos[0].obs["agentview_image"].astype(np.float32) / 255

    _break(path, float_images)
    with pytest.raises(RobomimicFormatError, match=r"data/demo_0: image 'obs/agentview_image' must be uint8"):
        read_demo(path, "demo_0")

    def string_actions(f):
        del f["data/demo_2/actions"]
        f["data/demo_2/actions"] = np.array([b"x"] * 7)

    _break(path, string_actions)
    with pytest.raises(RobomimicFormatError, match=r"data/demo_2: 'actions' must be a float"):
        read_demo(path, "demo_2")


def test_truncated_demo_names_demo_and_key(demo_file):
    path, demos, _ = demo_file

    def cut(f):
        data = f["data/demo_2/obs/object"][()]
        del f["data/demo_2/obs/object"]
        f["data/demo_2/obs/object"] = data[:4]

    _break(path, cut)
    with pytest.raises(RobomimicFormatError, match=r"data/demo_2: 'obs/object' has 4 rows but 'actions' has 7"):
        read_robomimic(path)
    _break(path, lambda f: f["data/demo_1"].attrs.__setitem__("num_samples", 9))
    with pytest.raises(RobomimicFormatError, match=r"data/demo_1: 'actions' has 3 rows but num_samples is 9"):
        read_demo(path, "demo_1")


def test_bad_file_level_metadata(tmp_path, demo_file):
    path, _, _ = demo_file
    _break(path, lambda f: f["data"].attrs.__setitem__("total", 99))
    with pytest.raises(RobomimicFormatError, match=r"\['total'\] is 99 but the demos hold 15"):
        read_robomimic(path)
    _break(path, lambda f: f["data"].attrs.__delitem__("env_args"))
    with pytest.raises(RobomimicFormatError, match="no 'env_args'"):
        read_env_args(path)
    with pytest.raises(RobomimicFormatError, match="no mask 'test'; filter keys in the file: \\['train', 'valid'\\]"):
        list_demos(path, "test")
    with pytest.raises(FileExistsError):
        write_robomimic(path, [], ENV_ARGS)


def test_replay_buffer_view_and_zarr_conversion(tmp_path, demo_file):
    path, demos, _ = demo_file
    assert is_robomimic_file(path) and not is_robomimic_file(tmp_path)
    rb = load_replay_buffer(path, obs_keys=["agentview_image", "object"], filter_key="train")
    assert rb.n_episodes == 2 and list(rb.episode_ends) == [5, 12] and list(rb.episode_seeds) == [0, 2]
    assert rb.attrs["task"] == "Lift" and rb.attrs["obs_types"] == {"agentview_image": "rgb", "object": "low_dim"}
    ep = rb.get_episode(1)
    np.testing.assert_array_equal(ep["agentview_image"], demos[2].obs["agentview_image"].transpose(0, 3, 1, 2))
    assert ep["agentview_image"].shape == (7, 3, 8, 8) and ep["agentview_image"].dtype == np.uint8
    np.testing.assert_allclose(ep["action"], demos[2].actions.astype(np.float32))
    assert rb.shape_meta(["agentview_image", "object"]).to_dict() == {
        "obs": {"agentview_image": {"type": "rgb", "shape": [3, 8, 8]}, "object": {"type": "low_dim", "shape": [10]}},
        "action": {"shape": [7]},
    }
    n = convert_to_zarr(path, tmp_path / "d.zarr", obs_keys=["agentview_image", "object"])
    z = ReplayBuffer.load(tmp_path / "d.zarr")
    assert n == 3 and list(z.episode_ends) == [5, 8, 15] and z.attrs["task"] == "Lift"
    np.testing.assert_array_equal(z.get_episode(2)["agentview_image"], ep["agentview_image"])


def test_split_masks_is_seeded_and_disjoint():
    names = [f"demo_{i}" for i in range(10)]
    a, b = split_masks(names, 0.2, seed=1), split_masks(names, 0.2, seed=1)
    assert a == b and len(a["valid"]) == 2 and set(a["train"]) | set(a["valid"]) == set(names)
    assert not set(a["train"]) & set(a["valid"])
    assert split_masks(names, 0.0)["valid"] == []


def test_merge_keeps_every_demo_and_its_provenance(demo_file, tmp_path):
    """Two files of one task become one: demos in input order, arrays identical, new disjoint masks."""
    path, demos, _ = demo_file
    rng = np.random.default_rng(1)
    extra = [make_demo(rng, 4, seed=100), make_demo(rng, 6, seed=101)]
    other = tmp_path / "extra.hdf5"
    write_robomimic(other, extra, ENV_ARGS)
    out = tmp_path / "merged.hdf5"
    summary = merge_robomimic([path, other], out, val_ratio=0.2, seed=3)
    assert summary["total_demos"] == 5 and summary["samples"] == 15 + 10
    f = read_robomimic(out)
    assert list(f.demos) == [f"demo_{i}" for i in range(5)] and f.total == 25 and f.env_args == ENV_ARGS
    for merged, original, source in zip(f.demos.values(), [*demos, *extra], [path] * 3 + [other] * 2, strict=True):
        np.testing.assert_array_equal(merged.actions, original.actions)
        np.testing.assert_array_equal(merged.obs["agentview_image"], original.obs["agentview_image"])
        np.testing.assert_array_equal(merged.next_obs["object"], original.next_obs["object"])
        assert merged.attrs["seed"] == original.attrs["seed"] and merged.attrs["source_file"] == source.name
    assert sorted(f.masks["train"] + f.masks["valid"]) == sorted(f.demos) and len(f.masks["valid"]) == 1

    from mfp.cli import main as mfp_main

    again = tmp_path / "again.hdf5"
    assert mfp_main(["merge", f"inputs=[{path},{other}]", f"out={again}", "val_ratio=0.2", "seed=3"]) == 0
    assert read_robomimic(again).masks == f.masks
    assert mfp_main(["merge", f"inputs=[{path},{other}]", f"out={again}"]) == 2  # exists: refused, not replaced


def test_merge_refuses_other_tasks_other_observations_and_overwriting_an_input(demo_file, tmp_path):
    path, _, _ = demo_file
    rng = np.random.default_rng(2)
    can = tmp_path / "can.hdf5"
    write_robomimic(can, [make_demo(rng, 3)], {**ENV_ARGS, "env_name": "PickPlaceCan"})
    with pytest.raises(RobomimicFormatError, match="PickPlaceCan.*one task"):
        merge_robomimic([path, can], tmp_path / "out.hdf5")
    wide = tmp_path / "wide.hdf5"
    write_robomimic(wide, [make_demo(rng, 3, image=16)], ENV_ARGS)
    with pytest.raises(RobomimicFormatError, match="observations"):
        merge_robomimic([path, wide], tmp_path / "out.hdf5")
    assert not (tmp_path / "out.hdf5").exists()  # checked before anything was written
    with pytest.raises(ValueError, match="input"):
        merge_robomimic([path, can], path, overwrite=True)
    assert read_robomimic(path).total == 15


def test_merge_of_a_truncated_demo_names_it_and_leaves_no_output(demo_file, tmp_path):
    path, _, _ = demo_file
    broken = tmp_path / "broken.hdf5"
    write_robomimic(broken, [make_demo(np.random.default_rng(3), 5)], ENV_ARGS)

    def cut(f):
        data = f["data/demo_0/actions"][()]
        del f["data/demo_0/actions"]
        f["data/demo_0/actions"] = data[:2]

    _break(broken, cut)
    out = tmp_path / "out.hdf5"
    with pytest.raises(RobomimicFormatError, match=r"broken.hdf5: data/demo_0"):
        merge_robomimic([path, broken], out)
    assert list(tmp_path.glob("out.hdf5*")) == []  # neither the output nor its partial file
    assert read_robomimic(path).total == 15


@pytest.fixture(scope="module")
def collected_lift(tmp_path_factory):
    """Two real scripted Lift demos (one 32x32 camera), collected once for this module."""
    pytest.importorskip("robosuite")
    from envs.robosuite.collect import collect_robomimic

    out = tmp_path_factory.mktemp("collect") / "lift.hdf5"
    summary = collect_robomimic("robomimic/lift", 2, str(out), image_size=32, cameras=("agentview",), verbose=False)
    return out, summary


def test_mfp_collect_writes_robomimic_hdf5_for_robosuite_tasks(tmp_path, monkeypatch):
    """`mfp collect task=robomimic/lift` goes to the robomimic writer; the default path is where training looks."""
    pytest.importorskip("robosuite")
    from mfp.cli import main as mfp_main

    monkeypatch.chdir(tmp_path)
    assert mfp_main(["collect", "task=robomimic/lift", "n_episodes=1", "image_size=32", "cameras=[agentview]"]) == 0
    f = read_robomimic(tmp_path / "data" / "robomimic-lift-1demos.hdf5")
    assert list(f.demos) == ["demo_0"] and f.demos["demo_0"].obs["agentview_image"].shape[1:] == (32, 32, 3)


def test_collect_lift_then_replay_states_and_actions(collected_lift):
    """Real collection; then robomimic's two uses of a file: observations from ``states`` and action playback."""
    from envs.robosuite.env import RobosuiteEnv

    out, summary = collected_lift
    assert summary["demos"] == 2 and summary["seeds"] == [0, 1]
    f = read_robomimic(out)
    assert f.total == sum(len(d) for d in f.demos.values()) and set(f.masks) == {"train", "valid"}
    demo = f.demos["demo_0"]
    assert demo.attrs["seed"] == 0 and demo.dones[-1] == 1 and demo.rewards[-1] == 1.0
    assert demo.obs["agentview_image"].shape == (len(demo), 32, 32, 3)
    np.testing.assert_array_equal(demo.obs["object"][1:], demo.next_obs["object"][:-1])

    env = RobosuiteEnv.from_env_args(f.env_args)
    try:
        assert env.cameras == ("agentview",) and env.image_size == 32
        # robomimic's way: the demo's model_file and first state, then the recorded actions replay it exactly.
        obs = env.reset_to({"states": demo.states[0], "model": demo.attrs["model_file"]})
        np.testing.assert_array_equal(obs["object"], demo.obs["object"][0])
        for action in demo.actions:
            obs, _, terminated, _, _ = env.step(action)
        assert terminated, "open-loop playback of the recorded actions must reproduce the success"
        np.testing.assert_array_equal(obs["robot0_eef_pos"], demo.next_obs["robot0_eef_pos"][-1])
        np.testing.assert_array_equal(obs["agentview_image"].transpose(1, 2, 0), demo.next_obs["agentview_image"][-1])
    finally:
        env.close()


class ReplayAgent:
    """Replays a file's recorded actions for the episode seed it was recorded with (an agent for the runner)."""

    n_obs_steps = 1

    def __init__(self, path):
        self.by_seed = {d.attrs["seed"]: d.actions for d in read_robomimic(path).demos.values()}
        self.queue: list = []

    def reset(self, seed=None):
        self.queue = list(self.by_seed[seed])

    def predict_action(self, obs):
        assert obs["agentview_image"].shape == (1, 3, 32, 32)
        return np.asarray(self.queue.pop(0))[None]  # (1, 7)


def test_runner_evaluates_robosuite_tasks(collected_lift, tmp_path):
    """The shared eval runner drives a robosuite env: the same seeds rebuild the demos' initial states."""
    from envs.runner import evaluate

    out, summary = collected_lift
    seed = summary["seeds"][1]
    info = evaluate(
        ReplayAgent(out),
        "robomimic/lift",
        seeds=[seed],
        n_workers=1,
        out_dir=tmp_path,
        env_kwargs={"cameras": ("agentview",), "image_size": 32},
        label="replay",
    )
    assert info["task"] == "lift" and info["config"]["max_steps"] == 400
    assert info["aggregated"]["n_success"] == 1 and info["aggregated"]["n_agent_failures"] == 0
    assert info["per_episode"][0]["steps"] == len(read_robomimic(out).demos["demo_1"])
    assert (tmp_path / "eval_info.json").exists()


def test_sequence_dataset_trains_from_the_hdf5_file(collected_lift):
    """The training sampler reads a robomimic file directly: (To, 3, H, W) images, low-dim keys, actions."""
    import torch

    from demos.dataset import SequenceDataset
    from envs.robosuite.env import robosuite_shape_meta

    out, summary = collected_lift
    meta = robosuite_shape_meta("lift", image_size=32, cameras=("agentview",))
    ds = SequenceDataset(str(out), meta, horizon=8, n_obs_steps=2)
    batch = ds.sample_batch(np.random.default_rng(0), 4)
    assert tuple(batch["obs"]["agentview_image"].shape) == (4, 2, 3, 32, 32)
    assert tuple(batch["obs"]["object"].shape) == (4, 2, 10) and tuple(batch["action"].shape) == (4, 8, 7)
    assert ds.attrs["task"] == "Lift"  # robomimic's env_name, as the file records it
    first = read_robomimic(out).demos["demo_0"]
    sample = ds[0]  # the first window starts one padded frame before demo_0's first step
    image = sample["obs"]["agentview_image"]
    image = image.numpy() if isinstance(image, torch.Tensor) else image
    np.testing.assert_array_equal(image[1], first.obs["agentview_image"][0].transpose(2, 0, 1))
