"""A toy task for fine-tuning tests: a point in the plane steered to a goal, with the vector-env interface.

Observations ``agent_pos`` (2,) (the point) over ``n_obs_steps``; actions (2,) move it by ``0.1 * clip(a, -1, 1)``;
reward per chunk: ``-distance`` to the goal after each step, summed (dense), so a policy that heads for the goal earns
more. Episodes last ``max_steps`` steps from a start drawn from the episode seed. Also a policy checkpoint for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.spec import ShapeMeta
from envs.vector import ChunkStep
from policies.checkpoint import save_policy
from policies.config import BackboneConfig, EncoderConfig, PolicyConfig
from policies.factory import build_policy

GOAL = np.array([0.6, -0.4])
SHAPE_META = ShapeMeta.from_dict({"obs": {"agent_pos": {"type": "low_dim", "shape": [2]}}, "action": {"shape": [2]}})


class ToyEnvs:
    """``n_envs`` toy episodes stepped one chunk at a time (ChunkVectorEnv's interface, in this process)."""

    def __init__(self, n_envs: int, n_obs_steps: int = 2, max_steps: int = 12) -> None:
        self.n_envs, self.n_obs, self.max_steps = n_envs, n_obs_steps, max_steps
        self.pos = np.zeros((n_envs, 2))
        self.t = np.zeros(n_envs, dtype=int)
        self.ret = np.zeros(n_envs)
        self.seed = np.zeros(n_envs, dtype=int)
        self.hist = np.zeros((n_envs, n_obs_steps, 2), np.float32)

    def _start(self, i: int, seed: int) -> None:
        self.seed[i] = seed
        self.pos[i] = np.random.default_rng(seed).uniform(-0.5, 0.5, 2)
        self.t[i], self.ret[i] = 0, 0.0
        self.hist[i] = self.pos[i]

    def reset(self, seeds: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        for i, s in enumerate(seeds):
            self._start(i, s)
        return {"agent_pos": self.hist.copy()}, self.pos.astype(np.float32).copy()

    def step(self, chunks: np.ndarray) -> ChunkStep:
        n = self.n_envs
        reward, truncated = np.zeros(n, np.float32), np.zeros(n, bool)
        final = np.zeros((n, 2), np.float32)
        ep_ret, ep_succ = np.full(n, np.nan), np.full(n, np.nan)
        steps = np.zeros(n, int)
        for i in range(n):
            for action in chunks[i]:
                self.pos[i] += 0.1 * np.clip(action, -1, 1)
                self.t[i] += 1
                steps[i] += 1
                reward[i] -= float(np.linalg.norm(self.pos[i] - GOAL))
                self.hist[i] = np.roll(self.hist[i], -1, axis=0)
                self.hist[i, -1] = self.pos[i]
                if self.t[i] >= self.max_steps:
                    truncated[i] = True
                    break
            self.ret[i] += reward[i]
            final[i] = self.pos[i]
            if truncated[i]:
                ep_ret[i], ep_succ[i] = self.ret[i], float(np.linalg.norm(self.pos[i] - GOAL) < 0.1)
                self._start(i, int(self.seed[i]) + n)
        return ChunkStep(
            obs={"agent_pos": self.hist.copy()},
            state=self.pos.astype(np.float32).copy(),
            reward=reward,
            terminated=np.zeros(n, bool),
            truncated=truncated,
            final_state=final,
            success=np.zeros(n, bool),
            steps=steps,
            episode_return=ep_ret,
            episode_success=ep_succ,
        )

    def close(self) -> None:
        pass


def toy_checkpoint(path: Path, head: str = "meanflow", seed: int = 0) -> Path:
    """An untrained one-step policy for the toy task, saved as a normal checkpoint."""
    import torch

    torch.manual_seed(seed)
    cfg = PolicyConfig(
        head=head,
        horizon=4,
        n_obs_steps=2,
        n_action_steps=3,
        backbone=BackboneConfig(type="mlp", hidden_dim=32, n_layers=2, time_embed_dim=16),
        encoder=EncoderConfig(state_hidden_dim=16, state_out_dim=16),
    )
    stats = {"agent_pos": {"min": -np.ones(2), "max": np.ones(2)}, "action": {"min": -np.ones(2), "max": np.ones(2)}}
    return save_policy(
        build_policy(cfg, SHAPE_META, stats), cfg, path, metadata={"task": {"env": "toy", "max_episode_steps": 12}}
    )
