"""Scene check: does MSE regression collapse on the multimodal tasks while a generative head does not?

Per task: demonstrations from the mixed expert (equal numbers of each strategy, seeds from 0) with *state*
observations (``full_state`` = agent_pos + the task's object positions; nothing is rendered), an MLP regression
head and a generative head on the same :class:`policies.backbones.MLPBackbone`, trained on chunks of H actions from
To observation steps, then both run closed loop on evaluation seeds (>= 100000). Reported: each strategy's expert
and the averaged expert on the same seeds, then per head the success rate, the mode frequencies (from the task's
mode classifier) and how many episodes dithered.

    MUJOCO_GL=egl OMP_NUM_THREADS=1 python benchmarks/multimodal_scene_check.py --tasks detour --out check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.seeds import demo_seeds, eval_seeds  # noqa: E402
from core.spec import FULL_STATE  # noqa: E402
from envs.multimodal.env import MultimodalEnv  # noqa: E402
from envs.multimodal.experts import AveragedExpert, StrategyExpert  # noqa: E402
from envs.multimodal.tasks import TASKS, get_task  # noqa: E402
from policies.backbones import MLPBackbone  # noqa: E402
from policies.config import FlowConfig, MeanFlowConfig  # noqa: E402
from policies.heads import make_head, n_time_inputs_for  # noqa: E402

HEAD_CONFIGS = {"regression": None, "flow": FlowConfig(num_inference_steps=10), "meanflow": MeanFlowConfig()}
MIN_SUCCESS_STEPS = 5  # a demo ends after this many successful steps (as `mfp collect` does)


@dataclass
class Demos:
    cond: np.ndarray  # (N, To, D) observation histories
    chunks: np.ndarray  # (N, H, 4) action chunks
    modes: Counter


def run_episode(env: MultimodalEnv, agent, seed: int, stop_after: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """``full_state`` before each action (T, D), the actions (T, 4) and success; the agent gets the last To states."""
    obs, _ = env.reset(seed=seed)
    agent.reset(seed=seed)
    history = deque([obs[FULL_STATE]] * agent.n_obs_steps, maxlen=agent.n_obs_steps)
    states, actions, n_success = [], [], 0
    queue: deque = deque()
    while True:
        if not queue:
            queue.extend(agent.predict_action({FULL_STATE: np.stack(history)}))
        action = queue.popleft()
        states.append(obs[FULL_STATE])
        actions.append(action)
        obs, _, _, truncated, info = env.step(action)
        history.append(obs[FULL_STATE])
        n_success += int(info["success"])
        if n_success >= stop_after or truncated:
            states.append(obs[FULL_STATE])
            return np.stack(states), np.stack(actions), n_success > 0


def collect(env: MultimodalEnv, task: str, n_demos: int, horizon: int, n_obs: int) -> Demos:
    """``n_demos`` successful demonstrations, the same number of each strategy, as (history, chunk) pairs."""
    names = list(get_task(task).strategies)
    quota = {name: n_demos // len(names) + (i < n_demos % len(names)) for i, name in enumerate(names)}
    expert = StrategyExpert(task)
    conds, chunks, modes = [], [], Counter()
    for seed in demo_seeds(1000 * n_demos):
        expert.reset(seed=seed)
        if modes[expert.strategy] >= quota[expert.strategy]:
            continue
        states, actions, ok = run_episode(env, expert, seed, MIN_SUCCESS_STEPS)
        if not ok:
            continue
        modes[expert.strategy] += 1
        T = len(actions)
        for t in range(T):
            idx = [max(t - k, 0) for k in range(n_obs - 1, -1, -1)]
            conds.append(states[idx])
            chunks.append(actions[[min(t + k, T - 1) for k in range(horizon)]])
        if sum(modes.values()) == n_demos:
            break
    return Demos(np.stack(conds).astype(np.float32), np.stack(chunks).astype(np.float32), modes)


class Normalizer:
    """Per-dimension min/max → [-1, 1]; constant dimensions are only centred."""

    def __init__(self, x: np.ndarray) -> None:
        flat = x.reshape(-1, x.shape[-1])
        lo, hi = flat.min(0), flat.max(0)
        self.center = torch.tensor((lo + hi) / 2)
        self.scale = torch.tensor(np.where(hi - lo > 1e-6, (hi - lo) / 2, 1.0))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center) / self.scale

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.center


class HeadAgent:
    """A trained head as an agent: normalizes the history, samples a chunk, executes its first ``n_exec`` actions."""

    def __init__(self, head, obs_norm: Normalizer, act_norm: Normalizer, n_obs: int, n_exec: int) -> None:
        self.head, self.obs_norm, self.act_norm = head, obs_norm, act_norm
        self.n_obs_steps, self.n_exec = n_obs, n_exec
        self.generator = torch.Generator()

    def reset(self, seed: int | None = None) -> None:
        self.generator.manual_seed(0 if seed is None else seed)

    @torch.no_grad()
    def predict_action(self, obs: dict) -> np.ndarray:
        cond = self.obs_norm(torch.as_tensor(obs[FULL_STATE], dtype=torch.float32)).reshape(1, -1)  # (1, To*D)
        chunk = self.act_norm.inverse(self.head.sample(cond, generator=self.generator))[0]  # (H, 4)
        return chunk[: self.n_exec].clamp(-1, 1).numpy()


def train_head(name: str, demos: Demos, obs_norm: Normalizer, act_norm: Normalizer, args) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    n, n_obs, dim = demos.cond.shape
    backbone = MLPBackbone(
        input_dim=4,
        horizon=args.horizon,
        global_cond_dim=n_obs * dim,
        n_time_inputs=n_time_inputs_for(name),
        hidden_dim=args.hidden,
        n_layers=args.layers,
    )
    head = make_head(name, backbone, HEAD_CONFIGS[name])
    cond = obs_norm(torch.from_numpy(demos.cond)).reshape(n, -1)  # (N, To*D)
    chunks = act_norm(torch.from_numpy(demos.chunks))  # (N, H, 4)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=1e-6)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.train_steps)
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(args.train_steps):
        idx = torch.randint(0, n, (args.batch,), generator=g)
        loss, _ = head.compute_loss(chunks[idx], cond[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return head.eval()


def evaluate(env: MultimodalEnv, task: str, agent, seeds: list[int]) -> dict:
    """Success rate, mode counts and dithering (episodes that switched strategy or stalled, and those that
    switched) of ``agent`` on ``seeds`` (each episode stops at success)."""
    spec = get_task(task)
    modes, dithered, switched, successes = Counter(), 0, 0, 0
    for seed in seeds:
        states, _, ok = run_episode(env, agent, seed, 1)
        result = spec.classify(states, success=np.r_[np.zeros(len(states) - 1, bool), ok])
        modes[result.mode] += 1
        dithered += int(result.dithered)
        switched += int(result.switched)
        successes += int(ok)
    return {"success": successes / len(seeds), "modes": dict(modes), "dithered": dithered, "switched": switched}


def check_task(task: str, args) -> dict:
    env = MultimodalEnv(task, point_cloud_cameras=())
    seeds = eval_seeds(args.episodes)
    out: dict = {"task": task, "experts": {}}
    t0 = time.time()
    for name in get_task(task).strategies:
        out["experts"][name] = evaluate(env, task, StrategyExpert(task, name), seeds)
    out["experts"]["averaged"] = evaluate(env, task, AveragedExpert(task), seeds)
    if not args.heads:  # the scene check of the experts only
        out["seconds"] = round(time.time() - t0, 1)
        env.close()
        return out
    demos = collect(env, task, args.demos, args.horizon, args.n_obs)
    out["demos"] = {"episodes": dict(demos.modes), "samples": len(demos.cond)}
    obs_norm, act_norm = Normalizer(demos.cond), Normalizer(demos.chunks)
    for name in args.heads:
        head = train_head(name, demos, obs_norm, act_norm, args)
        agent = HeadAgent(head, obs_norm, act_norm, args.n_obs, args.n_exec)
        out[name] = evaluate(env, task, agent, seeds)
        print(f"{task:10s} {name:10s} {json.dumps(out[name])}", flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    env.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument(
        "--heads", nargs="*", default=["regression", "flow"], choices=list(HEAD_CONFIGS), help="none: experts only"
    )
    p.add_argument("--demos", type=int, default=20, help="demonstrations per task (equal numbers per strategy)")
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes (seeds from 100000)")
    p.add_argument("--horizon", type=int, default=4, help="action chunk length H")
    p.add_argument("--n-obs", type=int, default=2, help="observation steps To")
    p.add_argument("--n-exec", type=int, default=4, help="actions executed per chunk")
    p.add_argument("--train-steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for task in args.tasks:
        results.append(check_task(task, args))
        print(json.dumps(results[-1]), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
