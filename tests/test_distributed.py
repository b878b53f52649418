"""Data-parallel training: 2 CPU processes on gloo must keep bit-identical parameters (gradients all-reduced),
and would drift apart without the all-reduce (each rank sees different data)."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import random_stats

from core.spec import ShapeMeta
from policies.config import BackboneConfig, EncoderConfig, PolicyConfig
from training.config import EvalConfig, TrainConfig, WandbConfig
from training.tasks import TaskData


class SyntheticSequences:
    """In-memory stand-in for a demo dataset: random observation/action sequences (real tensors, fixed seed)."""

    def __init__(self, shape_meta: ShapeMeta, horizon: int, n_obs_steps: int) -> None:
        self.shape_meta, self.horizon, self.n_obs_steps = shape_meta, horizon, n_obs_steps

    def stats(self):
        return random_stats(self.shape_meta)

    def sample_batch(self, rng: np.random.Generator, batch_size: int):
        obs = {
            k: rng.random((batch_size, self.n_obs_steps, *s.shape), dtype=np.float32)
            for k, s in self.shape_meta.obs.items()
        }
        return {
            "obs": obs,
            "action": rng.random((batch_size, self.horizon, self.shape_meta.action_dim), dtype=np.float32),
        }


def make_cfg(out: str, head: str = "meanflow") -> TrainConfig:
    policy = PolicyConfig(
        head=head,
        horizon=4,
        n_obs_steps=2,
        n_action_steps=3,
        backbone=BackboneConfig(type="mlp", hidden_dim=32, n_layers=2, time_embed_dim=16),
        encoder=EncoderConfig(point_hidden_dims=[16, 32], point_out_dim=16, state_hidden_dim=16, state_out_dim=16),
    )
    return TrainConfig(
        policy=policy,
        eval=EvalConfig(episodes=0),
        wandb=WandbConfig(mode="disabled"),
        batch_size=8,
        num_steps=4,
        warmup_steps=1,
        output_dir=out,
        checkpoint_every=100,
        progress=False,
        torch_threads=1,
        lr=1e-2,
    )


SHAPE_META = ShapeMeta.from_dict(
    {
        "obs": {
            "point_cloud": {"type": "point_cloud", "shape": [32, 3]},
            "agent_pos": {"type": "low_dim", "shape": [4]},
        },
        "action": {"shape": [4]},
    }
)


def _synthetic_data() -> TaskData:
    return TaskData(SHAPE_META, SyntheticSequences(SHAPE_META, 4, 2), None)


def _worker(rank: int, world: int, port: int, out: str, sync: bool, result_dir: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from training import distributed
    from training.trainer import Trainer

    data = _synthetic_data()
    if not sync:
        distributed.all_reduce_gradients = lambda model: None  # what a jvp-through-model.module bug would do
    trainer = Trainer(make_cfg(out), data=data)
    trainer.fit()
    flat = torch.cat([p.detach().reshape(-1) for p in trainer.policy.parameters()])
    torch.save(flat, os.path.join(result_dir, f"rank{rank}.pt"))
    trainer.close()


def _resume_worker(rank: int, world: int, port: int, run_dir: str, result_dir: str) -> None:
    """Train 4 steps straight, and 2 steps + checkpoint + resume to 4, in one process group."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from dataclasses import replace

    from training.trainer import Trainer

    straight = Trainer(make_cfg(os.path.join(run_dir, "straight")), data=_synthetic_data())
    straight.fit()
    first = Trainer(make_cfg(os.path.join(run_dir, "resumed")), data=_synthetic_data())
    first._prepare_output()
    while first.step < 2:
        first.train_step(first.data.train.sample_batch(first.np_rng, 8))
    first.save_checkpoint()
    resumed = Trainer(replace(make_cfg(os.path.join(run_dir, "resumed")), resume=True), data=_synthetic_data())
    resumed.fit()
    for name, trainer in (("straight", straight), ("resumed", resumed)):
        flat = torch.cat([p.detach().reshape(-1) for p in trainer.policy.parameters()])
        torch.save(flat, os.path.join(result_dir, f"{name}{rank}.pt"))
    resumed.close()


@pytest.mark.slow  # end to end, 20-30 s: keeps the fast suite under 10 minutes on 2 cores
def test_a_resumed_data_parallel_run_matches_an_uninterrupted_one(tmp_path):
    """Each rank resumes its own sampling streams; restoring rank 0's on every rank (as a single saved state did)
    makes both ranks draw the same batches and noise after the resume, and the averaged gradients change."""
    mp.spawn(_resume_worker, args=(2, _free_port(), str(tmp_path / "runs"), str(tmp_path)), nprocs=2, join=True)
    straight, resumed = torch.load(tmp_path / "straight0.pt"), torch.load(tmp_path / "resumed0.pt")
    assert torch.equal(resumed, torch.load(tmp_path / "resumed1.pt"))
    assert torch.equal(straight, resumed), "the resumed two-rank run differs from the uninterrupted one"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # end to end, 20-30 s: keeps the fast suite under 10 minutes on 2 cores
@pytest.mark.parametrize("sync", [True, False])
def test_ddp_parameters_stay_identical_across_ranks(tmp_path, sync):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "run"), sync, str(tmp_path)), nprocs=2, join=True)
    p0, p1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    if sync:
        assert torch.equal(p0, p1), "ranks diverged although gradients are all-reduced"
    else:
        assert not torch.equal(p0, p1), "test cannot detect a missing all-reduce"


def test_each_torchrun_rank_trains_on_its_own_gpu(monkeypatch):
    """A bare device=cuda under torchrun resolves to cuda:LOCAL_RANK (all ranks on GPU 0 is what NCCL refuses)."""
    from training import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.resolve_device("cuda") == torch.device("cuda", 1)
    assert distributed.resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="only 2 GPU"):
        distributed.resolve_device("cuda:3")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("LOCAL_RANK")
    single = distributed.resolve_device("cuda")
    assert single == torch.device("cuda", 0)
    # What torch.cuda.set_device (called by the trainer) checks first: a bare "cuda" is refused there.
    from torch.cuda._utils import _get_device_index

    assert _get_device_index(single) == 0
    with pytest.raises(ValueError, match="specified index"):
        _get_device_index(torch.device("cuda"))


def test_bad_devices_fail_before_any_training(tmp_path, monkeypatch):
    from training import distributed
    from training.trainer import Trainer

    with pytest.raises(ValueError, match="device='gpu' is not a device"):
        distributed.resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine
    cfg = make_cfg(str(tmp_path / "run"))
    cfg.device = "cuda"
    with pytest.raises(ValueError, match="device=cuda but this torch .* sees no CUDA GPU; use device=cpu"):
        Trainer(cfg, data=None)  # before the (missing) dataset is even looked at
    cfg.device, cfg.eval.device = "cpu", "cuda:0"
    with pytest.raises(ValueError, match="eval.device=cuda:0 .* use eval.device=cpu"):
        Trainer(cfg, data=None)
    assert not (tmp_path / "run").exists()
