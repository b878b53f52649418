"""The trainer end to end on real scripted demos: train -> checkpoint -> evaluate, exact resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from policies.checkpoint import load_policy
from policies.config import BackboneConfig, EncoderConfig, PolicyConfig
from training.config import EvalConfig, TaskConfig, TrainConfig, WandbConfig
from training.provenance import code_version
from training.tasks import TaskDataError, load_task_data
from training.trainer import Trainer, TrainingError

TASK = "button-press-topdown-v3"
REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(out: Path, dataset: Path, steps: int, **kw) -> TrainConfig:
    policy = PolicyConfig(
        head="meanflow",
        horizon=4,
        n_obs_steps=2,
        n_action_steps=3,
        backbone=BackboneConfig(type="mlp", hidden_dim=64, n_layers=2, time_embed_dim=32),
        encoder=EncoderConfig(point_hidden_dims=[32, 64], point_out_dim=32, state_hidden_dim=32, state_out_dim=32),
    )
    task = TaskConfig(env=TASK, num_points=128, n_demos=2, dataset=str(dataset), max_episode_steps=120)
    base = TrainConfig(
        task=task,
        policy=policy,
        eval=EvalConfig(episodes=2, workers=1, videos=0),
        wandb=WandbConfig(mode="disabled"),
        batch_size=16,
        num_steps=steps,
        warmup_steps=5,
        output_dir=str(out),
        checkpoint_every=10,
        log_every=5,
        diagnostics_every=10,
        progress=False,
        torch_threads=1,
    )
    return replace(base, **kw)


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    """Two real scripted-expert episodes (collected through the trainer's own data path)."""
    from training.tasks import ensure_demos

    path = tmp_path_factory.mktemp("data") / "demos.zarr"
    ensure_demos(TaskConfig(env=TASK, num_points=128, n_demos=2, dataset=str(path)))
    return path


def test_train_checkpoint_evaluate(tmp_path, demos):
    trainer = Trainer(tiny_cfg(tmp_path / "run", demos, steps=40))
    summary = trainer.fit()
    info = trainer.evaluate(2, "eval", videos=0)
    trainer.close()
    assert summary["steps"] == 40
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("embedding_erank" in m and "embedding_mean_cos" in m for m in metrics), "collapse diagnostics are logged"
    policy = load_policy(tmp_path / "run" / "policy")
    assert policy.checkpoint_metadata["step"] == 40
    assert policy.checkpoint_metadata["code"] == summary["code"] == code_version()
    assert info["aggregated"]["n_episodes"] == 2
    assert (tmp_path / "run" / "eval" / "eval_info.json").is_file()


def test_the_code_recorded_is_the_code_at_the_start_of_the_run(tmp_path, demos, monkeypatch):
    """A commit made while a run trains must not be named as the code that trained it (it was, because the first
    lookup happened at the first checkpoint)."""
    import training.trainer as trainer_module

    commits = iter(["0" * 40, "1" * 40])  # the tree at the start, then after a commit made mid-run
    monkeypatch.setattr(
        trainer_module, "code_version", lambda: {"package": "0.1.0", "git_commit": next(commits), "git_dirty": False}
    )
    summary = Trainer(tiny_cfg(tmp_path / "run", demos, steps=10)).fit()
    assert summary["code"]["git_commit"] == "0" * 40
    assert load_policy(tmp_path / "run" / "policy").checkpoint_metadata["code"]["git_commit"] == "0" * 40


def test_resume_reproduces_an_uninterrupted_run(tmp_path, demos):
    def cfg(out: Path, **kw) -> TrainConfig:
        return tiny_cfg(out, demos, steps=20, **kw)

    straight = Trainer(cfg(tmp_path / "a"))
    straight.fit()
    # Interrupted run: stops at step 10 (a checkpoint boundary), then a new process-equivalent resumes it.
    first = Trainer(cfg(tmp_path / "b"))
    first._prepare_output()
    while first.step < 10:
        first.train_step(first.data.train.sample_batch(first.np_rng, 16))
    first.save_checkpoint()
    resumed = Trainer(cfg(tmp_path / "b", resume=True))
    resumed.fit()
    for (name, a), (_, b) in zip(
        straight.policy.state_dict().items(), resumed.policy.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), f"resumed run differs from the uninterrupted one at '{name}'"
    for (name, a), (_, b) in zip(
        straight.ema.ema_model.state_dict().items(), resumed.ema.ema_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), f"EMA differs at '{name}'"


def test_periodic_evaluation_does_not_change_the_trained_weights(tmp_path, demos):
    """Evaluating mid-run (in this process: building the policy draws from torch's global RNG) must leave the run
    it measures alone; it did not, so best-of-periodic runs trained other weights than the final-only runs."""
    plain = Trainer(tiny_cfg(tmp_path / "plain", demos, steps=20))
    plain.fit()
    cfg = tiny_cfg(tmp_path / "periodic", demos, steps=20)
    periodic = Trainer(replace(cfg, eval=replace(cfg.eval, every_steps=10, periodic_episodes=1)))
    periodic.fit()
    assert (tmp_path / "periodic" / "eval_step10" / "eval_info.json").is_file()
    for (name, a), (_, b) in zip(plain.policy.state_dict().items(), periodic.policy.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"a periodic evaluation changed the trained weights at '{name}'"


def test_resuming_on_another_number_of_processes_says_so_and_trains_on(tmp_path, demos, capsys):
    from training.state import STATE_FILE, load_train_state, save_train_state

    first = Trainer(tiny_cfg(tmp_path / "run", demos, steps=10))
    first.fit()
    state = load_train_state(tmp_path / "run" / STATE_FILE)
    assert len(state["rng"]) == 1  # one entry per process of the run
    save_train_state(tmp_path / "run" / STATE_FILE, {**state, "rng": state["rng"] * 2})  # as a two-rank run saves it
    resumed = Trainer(tiny_cfg(tmp_path / "run", demos, steps=20, resume=True))
    assert resumed.fit()["steps"] == 20
    assert "resuming a run saved by 2 process(es) on 1" in capsys.readouterr().out


def test_resuming_from_a_truncated_training_state_names_the_file_and_keeps_it(tmp_path, demos):
    from training.state import STATE_FILE

    Trainer(tiny_cfg(tmp_path / "run", demos, steps=10)).fit()
    state_file = tmp_path / "run" / STATE_FILE
    state_file.write_bytes(state_file.read_bytes()[:1000])  # what a copy cut off half-way leaves
    cut = state_file.read_bytes()
    with pytest.raises(TrainingError, match=f"training state '{state_file}' cannot be read .* corrupt"):
        Trainer(tiny_cfg(tmp_path / "run", demos, steps=20, resume=True)).fit()
    assert state_file.read_bytes() == cut and (tmp_path / "run" / "policy").is_dir()


def test_existing_run_needs_resume_flag_and_resume_needs_same_config(tmp_path, demos):
    Trainer(tiny_cfg(tmp_path / "run", demos, steps=10)).fit()
    with pytest.raises(TrainingError, match="resume=true"):
        Trainer(tiny_cfg(tmp_path / "run", demos, steps=10)).fit()
    other = tiny_cfg(tmp_path / "run", demos, steps=20, resume=True)
    other = replace(other, policy=replace(other.policy, head="flow"))
    with pytest.raises(TrainingError, match="policy"):
        Trainer(other).fit()


def test_bad_data_fails_before_training(tmp_path, demos):
    cfg = tiny_cfg(tmp_path / "run", demos, steps=10)
    # Dataset collected for another task.
    with pytest.raises(TaskDataError, match="collected for"):
        load_task_data(replace(cfg.task, env="drawer-open-v3"), cfg.policy, 0, 0.0)
    # Keys the dataset does not hold.
    with pytest.raises(Exception, match="image"):
        load_task_data(replace(cfg.task, obs_keys=["image", "agent_pos"]), cfg.policy, 0, 0.0)
    # Point count that does not match the dataset.
    with pytest.raises(Exception, match="point_cloud"):
        load_task_data(replace(cfg.task, num_points=256), cfg.policy, 0, 0.0)
    # Unknown task name: the error lists close matches.
    with pytest.raises(Exception, match="button-press-topdown-v3"):
        load_task_data(replace(cfg.task, env="button-press-topdown"), cfg.policy, 0, 0.0)
    assert not (tmp_path / "run").exists(), "nothing is written when the data is bad"


def test_resuming_a_run_of_another_task_or_a_missing_dataset_fails_before_training(tmp_path, demos):
    Trainer(tiny_cfg(tmp_path / "run", demos, steps=5)).fit()
    other = tiny_cfg(tmp_path / "run", demos, steps=10, resume=True)
    other = replace(other, task=replace(other.task, env="drawer-open-v3"))
    with pytest.raises((TrainingError, TaskDataError), match="drawer-open-v3|task"):
        Trainer(other).fit()
    missing = tiny_cfg(tmp_path / "run2", demos, steps=5)
    missing = replace(
        missing, task=replace(missing.task, dataset=str(tmp_path / "nope.zarr"), collect_if_missing=False)
    )
    with pytest.raises(TaskDataError, match="nope.zarr"):
        Trainer(missing)
    assert not (tmp_path / "run2").exists()


def logged_steps(run: Path) -> list[int]:
    """Steps of the metrics log's rows (every line must be whole JSON)."""
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_cuts_the_metrics_log_back_to_the_checkpoint(tmp_path, demos):
    """A killed run logged past its last checkpoint and left a torn line; the resumed log reads whole and in order."""
    run = tmp_path / "run"
    Trainer(tiny_cfg(run, demos, steps=10)).fit()
    with open(run / "metrics.jsonl", "a") as f:  # what a run killed at step 17 leaves after its step-10 checkpoint
        f.write(json.dumps({"step": 15, "loss": 1.0}) + "\n" + '{"step": 17, "lo')
    Trainer(tiny_cfg(run, demos, steps=20, resume=True)).fit()
    steps = logged_steps(run)
    assert steps == sorted(steps) and steps[-1] == 20
    assert 17 not in steps and steps.count(15) == 1, "rows past the checkpoint are logged once, by the resumed run"


def test_offline_wandb_records_the_run_its_video_and_its_resume_under_one_id(tmp_path, demos, monkeypatch):
    """The default logger (wandb offline) on a real run: the run lives under the output dir, the eval video is in its
    media, and a resumed run continues the same run id (what `wandb sync` and an online resume key on)."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # conftest disables wandb for every other test
    run = tmp_path / "run"
    cfg = tiny_cfg(
        run, demos, steps=10, wandb=WandbConfig(mode="offline"), eval=EvalConfig(episodes=1, workers=0, videos=1)
    )
    trainer = Trainer(cfg)
    trainer.fit()
    trainer.evaluate(1, "eval")
    trainer.close()
    resumed = Trainer(replace(cfg, num_steps=20, resume=True))
    resumed.fit()
    resumed.close()
    segments = sorted((run / "wandb").glob("offline-run-*"))
    assert len(segments) == 2, segments
    ids = {p.name.rsplit("-", 1)[1] for p in segments}
    assert len(ids) == 1, f"a resumed run must keep its wandb id, got {ids}"
    assert all(next(p.glob("run-*.wandb")).stat().st_size > 0 for p in segments)
    videos = list((segments[0] / "files" / "media" / "videos").rglob("*.mp4"))
    assert videos and videos[0].stat().st_size > 0


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path, demos):
    """A real `mfp train` process killed with SIGKILL resumes from its last training state."""
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "mfp.cli",
        "train",
        f"task.dataset={demos}",
        "task.n_demos=2",
        "task.num_points=128",
        "policy.backbone.type=mlp",
        "policy.backbone.hidden_dim=64",
        "policy.backbone.n_layers=2",
        "num_steps=400",
        "checkpoint_every=20",
        "batch_size=16",
        "eval.episodes=0",
        "wandb.mode=disabled",
        "torch_threads=1",
        "progress=false",
        f"output_dir={out}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / "train_state.pt"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), proc.stderr.read().decode()[-2000:]
    saved = torch.load(state, weights_only=True)["step"]
    assert 20 <= saved < 400
    load_policy(out / "policy")  # the portable checkpoint is readable after the kill
    done = subprocess.run(args + ["resume=true"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(state, weights_only=True)["step"] == 400
    assert load_policy(out / "policy").checkpoint_metadata["step"] == 400
    steps = logged_steps(out)
    assert steps == sorted(steps) and steps[-1] == 400


@pytest.mark.slow
def test_a_multirun_sweep_trains_each_seed_in_parallel_local_jobs(tmp_path, demos):
    """`mfp train -m seed=0,1 hydra/launcher=joblib_local`: two jobs in their own processes, one run dir each."""
    args = [
        sys.executable,
        "-m",
        "mfp.cli",
        "train",
        "-m",
        "seed=0,1",
        "hydra/launcher=joblib_local",
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
        f"output_dir={tmp_path}/seed" + "${seed}",
        f"hydra.sweep.dir={tmp_path}/multirun",
    ]
    done = subprocess.run(
        args, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stdout, done.stdout[-2000:]
    policies = [load_policy(tmp_path / f"seed{s}" / "policy") for s in (0, 1)]
    assert [p.checkpoint_metadata["step"] for p in policies] == [10, 10]
    assert [json.loads((tmp_path / f"seed{s}" / "config.json").read_text())["seed"] for s in (0, 1)] == [0, 1]
    first, second = (next(iter(p.state_dict().values())) for p in policies)
    assert not torch.equal(first, second), "each job trains its own seed"


def test_code_version_names_the_checked_out_commit():
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    version = code_version()
    assert version["git_commit"] == head.stdout.strip() and isinstance(version["git_dirty"], bool)
    assert isinstance(version["package"], str) and version["package"]
