"""Every hydra preset composes onto the typed schema, and typos fail instead of being dropped."""

from importlib import resources

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from training.config import TrainConfig


def presets(group: str) -> list[str]:
    root = resources.files("configs") / group
    found = []
    for entry in root.iterdir():
        if entry.name.endswith(".yaml"):
            found.append(entry.name[:-5])
        elif entry.is_dir():
            found += [f"{entry.name}/{e.name[:-5]}" for e in entry.iterdir() if e.name.endswith(".yaml")]
    return sorted(found)


def make(overrides: list[str]) -> TrainConfig:
    with initialize_config_module(config_module="configs", version_base=None):
        cfg = compose("train", overrides=overrides)
    cfg.output_dir = "runs/test"  # the default interpolates hydra's runtime choices, set only under `mfp train`
    return OmegaConf.to_object(cfg)


@pytest.mark.parametrize("profile", presets("profile"))
@pytest.mark.parametrize("policy", presets("policy"))
def test_every_policy_and_profile_composes(policy, profile):
    cfg = make([f"policy={policy}", f"profile={profile}"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.policy.head in policy or policy.startswith("meanflow")


@pytest.mark.parametrize("task", presets("task"))
def test_every_task_composes(task):
    cfg = make([f"task={task}"])
    assert cfg.task.obs_keys and cfg.task.max_episode_steps > 0


def test_goal_preset_adds_the_goal_position_to_the_dp3_observation():
    from training.tasks import task_shape_meta

    cfg = make(["task=metaworld_goal", "task.env=coffee-pull-v3"])
    assert cfg.task.obs_keys == ["point_cloud", "agent_pos", "goal_pos"]
    assert cfg.task.dataset == "data/coffee-pull-v3-10demos-512pts-goal.zarr"  # never an older dataset without it
    meta = task_shape_meta(cfg.task)
    assert meta.obs["goal_pos"].shape == (3,) and meta.obs["goal_pos"].type == "low_dim"


def test_presets_exist():
    assert {"meanflow", "meanflow_dispersive", "ddim", "ddpm", "flow", "regression"} <= set(presets("policy"))
    assert {"metaworld", "metaworld_goal", "robomimic/lift", "robomimic/can", "robomimic/square"} <= set(
        presets("task")
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("policy.hed=flow", "hed"),
        ("policy.head=meanflw", "meanflw"),
        ("batch_size=-1", "batch_size"),
        ("grad_clip=0", "grad_clip"),
        ("grad_clip=-1", "grad_clip"),
        ("grad_clip=nan", "grad_clip"),
        ("task.suite=libero", "libero"),
    ],
)
def test_typos_and_bad_values_fail(override, message):
    with pytest.raises(Exception, match=message):
        make([override])


@pytest.mark.parametrize(
    "launcher, target",
    [
        ("joblib_local", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ],
)
def test_sweep_launchers_compose_and_their_plugins_import(launcher, target):
    """The documented sweep launchers resolve to an installed plugin class (SLURM itself is not reachable here)."""
    import importlib

    with initialize_config_module(config_module="configs", version_base=None):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    module, _, name = target.rpartition(".")
    assert hasattr(importlib.import_module(module), name)
