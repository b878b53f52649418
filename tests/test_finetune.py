"""`mfp finetune`: PPO on a one-step policy (sanity checks, improvement, exact resume) and noise-space steering,
on an in-process toy task (tests/rl_toy.py); the simulator path is covered by a slow end-to-end test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rl_toy import GOAL, ToyEnvs, toy_checkpoint

from deploy.export import export_policy
from policies.checkpoint import load_policy
from policies.noise_actor import NoiseActor
from training.config import WandbConfig
from training.rl.actor import ChunkActor
from training.rl.config import FinetuneConfig, FinetuneEvalConfig, PPOConfig, SteeringConfig
from training.rl.finetune import STATE_FILE, Finetuner
from training.rl.ppo import RLError

torch.set_num_threads(1)


def toy_config(tmp_path: Path, ckpt: Path, steps: int, **kw: object) -> FinetuneConfig:
    ppo = PPOConfig(
        n_envs=4,
        epochs=4,
        minibatch=16,
        actor_lr=3e-3,
        critic_lr=3e-3,
        std_lr=1e-3,
        critic_warmup_iterations=1,
        bc_weight=0.0,
        std_min=0.05,
        std_max=0.3,
    )
    base = dict(
        checkpoint=str(ckpt),
        task="toy",
        output_dir=str(tmp_path / "run"),
        env_steps=steps,
        reward="dense",
        critic_keys=["agent_pos"],
        eval=FinetuneEvalConfig(episodes=0),
        progress=False,
        ppo=ppo,
        wandb=WandbConfig(mode="disabled"),
    )
    base.update(kw)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


def toy_return(policy_dir: Path, seeds: range) -> float:
    """The fine-tuned policy's mean episode return on held-out toy seeds (its deterministic one-step sampler)."""
    policy = load_policy(policy_dir)
    envs = ToyEnvs(len(seeds))
    obs, _ = envs.reset(list(seeds))
    total = np.zeros(len(seeds))
    for _ in range(4):  # 12 steps in chunks of 3
        chunks = np.stack(
            [
                policy.predict_action({"agent_pos": obs["agent_pos"][i]}, noise=np.zeros((4, 2), np.float32))
                for i in range(len(seeds))
            ]
        )
        total += envs.step(chunks).reward
        obs = {"agent_pos": envs.hist.copy()}
    return float(total.mean())


def test_log_probability_is_the_gaussian_density_per_chunk_entry(tmp_path):
    actor = ChunkActor(load_policy(toy_checkpoint(tmp_path / "p")), 0.05, 0.12)
    mean, std = torch.randn(5, 3, 2), 0.05 + 0.07 * torch.rand(5, 3, 2)
    action = mean + std * torch.randn(5, 3, 2)
    reference = torch.distributions.Normal(mean, std).log_prob(action).flatten(1).sum(1) / 6
    torch.testing.assert_close(actor.log_prob(action, mean, std), reference)


def test_the_std_stays_in_its_bounds_and_the_anchor_is_zero_at_the_pretrained_weights(tmp_path):
    ckpt = toy_checkpoint(tmp_path / "p")
    tuner = Finetuner(toy_config(tmp_path, ckpt, 10), env_factory=ToyEnvs)
    obs, state = tuner.envs.reset([1, 2, 3, 4])
    out = tuner.learner.act(obs, state, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(out["anchor"], np.clip(out["action"], -1, 1) * 0 + out["anchor"])  # shapes agree
    actor = tuner.learner.actor
    mean, std, _ = actor.mean_std({"agent_pos": torch.as_tensor(obs["agent_pos"])}, torch.as_tensor(out["noise"]))
    assert float(std.min()) >= 0.05 and float(std.max()) <= 0.3
    np.testing.assert_allclose(mean.detach().numpy(), out["anchor"], atol=1e-6)  # BC term: exactly zero at start


def test_the_ratio_check_catches_a_policy_that_changed_between_rollout_and_update(tmp_path):
    ckpt = toy_checkpoint(tmp_path / "p")
    tuner = Finetuner(toy_config(tmp_path, ckpt, 10), env_factory=ToyEnvs)
    tuner.learner.iteration = 5  # past the critic warm-up
    original = tuner.learner.update

    def stale(rollout, generator):  # the stored log-probabilities no longer match the policy
        rollout.logp = rollout.logp + 0.01
        return original(rollout, generator)

    tuner.learner.update = stale
    with pytest.raises(RLError, match="ratio on the first minibatch"):
        tuner._iteration()


def test_a_tiny_ppo_fine_tune_improves_the_return(tmp_path):
    ckpt = toy_checkpoint(tmp_path / "p")
    before = toy_return(ckpt, range(900, 916))
    summary = Finetuner(toy_config(tmp_path, ckpt, 12 * 4 * 25), env_factory=ToyEnvs).run()
    after = toy_return(Path(summary["policy_dir"]), range(900, 916))
    assert summary["env_steps"] >= 12 * 4 * 25 and summary["method"] == "ppo"
    assert after > before + 1.0, (before, after)  # the random start policy wanders; fine-tuned, it heads to GOAL
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("rollout_return") >= 20
    assert GOAL.shape == (2,)


def test_resume_continues_exactly_as_the_uninterrupted_run(tmp_path):
    ckpt = toy_checkpoint(tmp_path / "p")
    straight = Finetuner(toy_config(tmp_path / "a", ckpt, 12 * 4 * 4), env_factory=ToyEnvs)
    straight.run()
    first = Finetuner(toy_config(tmp_path / "b", ckpt, 12 * 4 * 2), env_factory=ToyEnvs)
    first.run()
    resumed = Finetuner(replace(toy_config(tmp_path / "b", ckpt, 12 * 4 * 4), resume=True), env_factory=ToyEnvs)
    assert resumed.iteration == 2
    resumed.run()
    for (name, a), (_, b) in zip(
        straight.learner.state_dict()["actor"].items(), resumed.learner.state_dict()["actor"].items(), strict=True
    ):
        assert torch.equal(a, b), name


_KILLED_RUN = """
import sys, time
sys.path.insert(0, sys.argv[2])
from rl_toy import ToyEnvs
from training.config import WandbConfig
from training.rl.config import FinetuneConfig, FinetuneEvalConfig, PPOConfig
from training.rl.finetune import Finetuner

class SlowToy(ToyEnvs):
    def step(self, chunks):
        time.sleep(0.05)
        return super().step(chunks)

ppo = PPOConfig(n_envs=4, epochs=4, minibatch=16, actor_lr=3e-3, critic_lr=3e-3, std_lr=1e-3,
                critic_warmup_iterations=1, bc_weight=0.0, std_min=0.05, std_max=0.3)
cfg = FinetuneConfig(checkpoint=sys.argv[1] + "/p", task="toy", output_dir=sys.argv[1] + "/run", env_steps=10**6,
                     reward="dense", critic_keys=["agent_pos"], eval=FinetuneEvalConfig(episodes=0), progress=False,
                     ppo=ppo, wandb=WandbConfig(mode="disabled"))
Finetuner(cfg, env_factory=SlowToy).run()
"""


def test_a_run_killed_with_sigkill_resumes_from_its_last_state(tmp_path):
    ckpt = toy_checkpoint(tmp_path / "p")
    tests_dir = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), tests_dir])}
    job = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, str(tmp_path), tests_dir],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state = tmp_path / "run" / STATE_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not state.exists():
        time.sleep(0.05)
    time.sleep(1.0)  # somewhere inside a later iteration, maybe inside a save
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert state.exists(), job.stderr.read().decode() if job.stderr else ""
    done = int(torch.load(state, weights_only=False)["iteration"])  # a torn file would fail to load here
    assert done >= 1
    target = replace(toy_config(tmp_path, ckpt, 12 * 4 * (done + 1)), resume=True)
    resumed = Finetuner(target, env_factory=ToyEnvs)
    resumed.run()
    straight = Finetuner(replace(target, output_dir=str(tmp_path / "straight"), resume=False), env_factory=ToyEnvs)
    straight.run()
    for (name, a), (_, b) in zip(
        straight.learner.state_dict()["actor"].items(), resumed.learner.state_dict()["actor"].items(), strict=True
    ):
        assert torch.equal(a, b), name


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(1e-3, 1e6), bound=st.floats(0.1, 3.0), seed=st.integers(0, 1000))
def test_the_noise_actor_stays_within_its_bound(scale: float, bound: float, seed: int) -> None:
    torch.manual_seed(seed)
    actor = NoiseActor(8, 4, 2, hidden_dim=16, bound=bound)
    for p in actor.parameters():
        p.data.normal_()
    cond = scale * torch.randn(32, 8)
    w_mean = actor(cond)
    w, logp = actor.sample(cond, torch.Generator().manual_seed(seed))
    assert w_mean.shape == w.shape == (32, 4, 2) and logp.shape == (32,)
    bound32 = float(np.float32(bound))  # tanh * bound rounds to the float32 nearest the bound
    assert float(w_mean.abs().max()) <= bound32 and float(w.abs().max()) <= bound32


def test_noise_steering_learns_the_noise_and_writes_a_policy_that_uses_it(tmp_path):
    ckpt = toy_checkpoint(tmp_path / "p")
    steering = SteeringConfig(n_envs=2, hidden_dim=32, batch_size=32, learning_starts=16, buffer_size=1000)
    cfg = toy_config(tmp_path, ckpt, 12 * 2 * 6, method="steering", steering=steering)
    summary = Finetuner(cfg, env_factory=ToyEnvs).run()
    policy = load_policy(summary["policy_dir"])
    assert policy.noise_actor is not None
    obs = {"agent_pos": np.zeros((2, 2), np.float32)}
    np.testing.assert_array_equal(policy.predict_action(obs), policy.predict_action(obs))  # the noise is chosen
    assert "critic_loss" in (tmp_path / "run" / "metrics.jsonl").read_text()
    meta = export_policy(summary["policy_dir"], tmp_path / "export", n_check=4, formats=("onnx",))
    assert meta["parity"]["max_abs_error"]["onnx"] <= 1e-4


def test_a_policy_without_a_one_step_map_is_refused(tmp_path):
    from core.errors import ConfigError

    ckpt = toy_checkpoint(tmp_path / "p", head="ddim")
    with pytest.raises(ConfigError, match="no one-step map"):
        Finetuner(toy_config(tmp_path, ckpt, 10), env_factory=ToyEnvs)
