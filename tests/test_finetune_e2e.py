"""`mfp finetune` end to end on a real Meta-World task: a trained checkpoint in, a checkpoint out that `mfp eval` and
`mfp export` take unchanged, the success curve in metrics.jsonl, evaluation on the fixed eval seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policies.checkpoint import load_policy
from training.config import TaskConfig
from training.tasks import ensure_demos

REPO = Path(__file__).resolve().parents[1]
TASK = "button-press-topdown-v3"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def mfp(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mfp.cli", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A point-cloud MeanFlow policy trained for a few steps on two real scripted demos."""
    root = tmp_path_factory.mktemp("bc")
    demos = root / "demos.zarr"
    ensure_demos(TaskConfig(env=TASK, num_points=128, n_demos=2, dataset=str(demos)))
    done = mfp(
        "train",
        f"task.dataset={demos}",
        "task.n_demos=2",
        "task.num_points=128",
        "policy.backbone.type=mlp",
        "policy.backbone.hidden_dim=64",
        "policy.backbone.n_layers=2",
        "num_steps=10",
        "batch_size=16",
        "warmup_steps=2",
        "eval.episodes=0",
        "wandb.mode=disabled",
        "torch_threads=1",
        "progress=false",
        f"output_dir={root / 'run'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run" / "policy"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ppo", "steering"])
def test_finetune_writes_a_checkpoint_that_eval_and_export_take(tmp_path, checkpoint, method):
    out = tmp_path / "ft"
    done = mfp(
        "finetune",
        f"checkpoint={checkpoint}",
        f"finetune={method}",
        "ppo.n_envs=2",
        "ppo.critic_warmup_iterations=0",  # the actor update runs within this small budget
        "ppo.train_encoder=true",
        "steering.n_envs=2",
        "steering.learning_starts=8",
        "steering.batch_size=8",
        "max_episode_steps=40",
        "env_steps=160",
        "eval.episodes=2",
        "eval.workers=1",
        "wandb.mode=disabled",
        "progress=false",
        f"output_dir={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env_steps"] >= 160 and summary["success_before"] is not None
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("rollout_success" in m and "wall_s" in m for m in metrics if "iteration" in m)
    seeds = json.loads((out / "eval" / "eval_info.json").read_text())["per_episode"]
    assert [e["seed"] for e in seeds] == [100_000, 100_001]  # the fixed evaluation seeds
    policy = load_policy(out / "policy")
    assert policy.checkpoint_metadata["finetune"]["method"] == method
    evaluated = mfp(
        "eval", f"checkpoint={out / 'policy'}", "n_episodes=1", "n_workers=1", "n_videos=0", f"out={tmp_path / 'eval'}"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    exported = mfp("export", f"checkpoint={out / 'policy'}", f"out={tmp_path / 'export'}", "n_check=2")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "export" / "model.onnx").stat().st_size > 0
