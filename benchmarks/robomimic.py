"""`mfp bench robomimic`: the robosuite tasks' step cost, scripted-expert success, and demo collection time.

Measures on this machine (one process, torch/OpenMP at 1 thread):
(1) env step time with the two 84×84 cameras (``agentview``, ``robot0_eye_in_hand``), fast and default
    rendering, and without cameras (physics + controller only), along scripted-expert trajectories;
(2) each scripted expert's success over ``--episodes`` demonstration seeds (0, 1, ...), without cameras
    (the experts read the simulator, so images do not change the outcome);
(3) collecting ``--demos`` Lift demos with both cameras into a fresh robomimic HDF5 file.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from core.atomic_write import write_text


def bench_step(task: str, steps: int, cameras: tuple[str, ...], fast_render: bool) -> dict:
    from envs.robosuite.env import RobosuiteEnv
    from envs.robosuite.experts import make_expert

    env = RobosuiteEnv(task, image_size=84, cameras=cameras, fast_render=fast_render)
    expert = make_expert(env)
    times: list[float] = []
    seed = 0
    obs, _ = env.reset(seed=seed)
    expert.reset(seed)
    env.step(expert.predict_action(obs)[0])  # warm-up (shader compilation)
    while len(times) < steps:
        action = expert.predict_action(obs)[0]
        t0 = time.perf_counter()
        obs, _, terminated, truncated, _ = env.step(action)
        times.append(time.perf_counter() - t0)
        if terminated or truncated:
            seed += 1
            obs, _ = env.reset(seed=seed)
            expert.reset(seed)
    env.close()
    return {
        "task": task,
        "cameras": list(cameras),
        "fast_render": fast_render,
        "steps": steps,
        "step_ms_p50": float(np.median(times) * 1e3),
        "step_ms_p90": float(np.percentile(times, 90) * 1e3),
    }


def bench_expert(task: str, episodes: int) -> dict:
    from core.seeds import demo_seeds
    from envs.robosuite.env import RobosuiteEnv
    from envs.robosuite.experts import make_expert

    env = RobosuiteEnv(task, cameras=())
    expert = make_expert(env)
    seeds = demo_seeds(episodes)
    successes, lengths, failed = 0, [], []
    t0 = time.perf_counter()
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        expert.reset(seed)
        info = {"success": False}
        steps = 0
        while steps < env.max_episode_steps:
            obs, _, terminated, truncated, info = env.step(expert.predict_action(obs)[0])
            steps += 1
            if terminated or truncated:
                break
        if info["success"]:
            successes += 1
            lengths.append(steps)
        else:
            failed.append(seed)
    env.close()
    return {
        "task": task,
        "episodes": episodes,
        "seeds": f"{seeds[0]}..{seeds[-1]}",
        "successes": successes,
        "success_rate": successes / episodes,
        "failed_seeds": failed,
        "mean_steps_success": float(np.mean(lengths)) if lengths else None,
        "seconds": time.perf_counter() - t0,
    }


def bench_collect(task: str, demos: int) -> dict:
    from envs.robosuite.collect import collect_robomimic

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{task}.hdf5"
        t0 = time.perf_counter()
        summary = collect_robomimic(task, demos, str(path), verbose=False)
        total = time.perf_counter() - t0
        size_mb = os.path.getsize(path) / 2**20
    return {
        "task": task,
        "demos": demos,
        "steps": summary["steps"],
        "attempts": summary["attempts"],
        "seconds_total": total,
        "seconds_episodes": summary["seconds"],
        "ms_per_step": summary["seconds"] / summary["steps"] * 1e3,
        "file_mb": size_mb,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mfp bench robomimic", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="lift,can,square", help="comma-separated tasks for expert success")
    parser.add_argument("--episodes", type=int, default=20, help="expert episodes (seeds) per task")
    parser.add_argument("--steps", type=int, default=100, help="timed env steps per step-time setting")
    parser.add_argument("--demos", type=int, default=5, help="Lift demos to collect for the timing")
    parser.add_argument("--out", default="bench_robomimic.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    two_cams = ("agentview", "robot0_eye_in_hand")
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "step": [
            bench_step("lift", args.steps, two_cams, True),
            bench_step("lift", args.steps, two_cams, False),
            bench_step("lift", args.steps, (), True),
        ],
        "experts": [bench_expert(t, args.episodes) for t in args.tasks.split(",") if t],
        "collect": bench_collect("lift", args.demos) if args.demos > 0 else None,
    }

    print(f"{'env step (Lift, expert trajectory)':<54} p50 ms   p90 ms")
    for r in result["step"]:
        cams = "+".join(r["cameras"]) or "no cameras"
        label = f"{cams} 84x84, {'fast' if r['fast_render'] else 'default'} render" if r["cameras"] else cams
        print(f"  {label:<52} {r['step_ms_p50']:7.1f}  {r['step_ms_p90']:7.1f}")
    print("scripted expert   success   seeds        mean steps   time s")
    for r in result["experts"]:
        print(
            f"  {r['task']:<15} {r['successes']:>3}/{r['episodes']:<4} {r['seeds']:<12} "
            f"{r['mean_steps_success'] or 0:8.1f}   {r['seconds']:7.1f}"
        )
    if result["collect"]:
        c = result["collect"]
        print(
            f"collect {c['demos']} {c['task']} demos (2 cams 84x84): {c['seconds_total']:.1f} s total, "
            f"{c['ms_per_step']:.1f} ms/step over {c['steps']} steps, {c['file_mb']:.1f} MB"
        )
    write_text(args.out, json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
