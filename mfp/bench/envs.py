"""`mfp bench envs`: the Meta-World observation pipeline, demo collection and evaluation throughput.

Measures on this machine (one process unless said otherwise, torch/OpenMP at 1 thread):
Wall times suffer from other processes on a shared machine; process CPU times (all threads) are reported too.
(1) observation pipeline per step: render the depth image → metric depth → back-project → crop → FPS to the
    point count, timed along scripted-expert trajectories (scenes change), with its parts timed separately;
(2) collecting ``--demos`` scripted demonstrations with point clouds and 84×84 images into a fresh zarr;
(3) evaluation throughput in env steps/s with ``--workers`` worker processes (scripted expert as the agent,
    point-cloud observations rendered, worker start-up excluded), and the same without rendering.
Prints a table against the issue's targets and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic_write import write_text

TARGETS = {"obs_pipeline_ms": 8.0, "collect_10_demos_s": 60.0}


def _median_ms(samples: list[float]) -> float:
    return float(np.median(samples) * 1e3)


def bench_obs_pipeline(task: str, steps: int, num_points: int) -> dict:
    from envs import pointcloud as pc
    from envs.metaworld.env import MetaWorldEnv
    from envs.metaworld.expert import ScriptedExpert

    env = MetaWorldEnv(task, num_points=num_points, max_episode_steps=500)
    expert = ScriptedExpert(task)
    cam = env._pc_cam_ids[0]
    near, far = pc.mujoco_clip_planes(env.model)
    size = env.depth_size
    K = pc.mujoco_camera_intrinsics(env.model, cam, size, size)
    parts: dict[str, list[float]] = {
        k: [] for k in ("total", "render", "back_project", "crop", "fps", "image84", "sim_step")
    }
    image_cam = env._renderer.camera_id("corner2")
    seed = 0
    state = env.reset(seed=seed)[0]["full_state"]
    env.point_cloud()  # warm-up (shader compilation)
    cpu_total = 0.0
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        env.point_cloud()
        parts["total"].append(time.perf_counter() - t0)
        cpu_total += time.process_time() - c0

        t0 = time.perf_counter()
        _, buffer = env._renderer.render(env.data, cam, size, size, rgb=False)
        assert buffer is not None  # depth=True
        t1 = time.perf_counter()
        depth = pc.depth_buffer_to_metric(buffer, near, far, env._renderer.reversed_z)
        points = pc.depth_to_points(depth, K, pc.mujoco_camera_pose(env.data, cam), max_depth=0.99 * far)
        t2 = time.perf_counter()
        cropped = pc.crop_points(points, env.crop_box)
        t3 = time.perf_counter()
        pc.sample_points(cropped, num_points)
        t4 = time.perf_counter()
        env._camera_rgb(image_cam, 84)
        t5 = time.perf_counter()
        parts["render"].append(t1 - t0)
        parts["back_project"].append(t2 - t1)
        parts["crop"].append(t3 - t2)
        parts["fps"].append(t4 - t3)
        parts["image84"].append(t5 - t4)

        action = expert.predict_action({"full_state": state})[0]
        t0 = time.perf_counter()
        state = env.unwrapped_metaworld.step(action)[0]  # simulation only, no rendering
        parts["sim_step"].append(time.perf_counter() - t0)
        if env.unwrapped_metaworld.curr_path_length >= 400:
            seed += 1
            state = env.reset(seed=seed)[0]["full_state"]
    env.close()
    out: dict[str, Any] = {f"{k}_ms": _median_ms(v) for k, v in parts.items()}
    out["total_p90_ms"] = float(np.percentile(parts["total"], 90) * 1e3)
    out["total_cpu_ms"] = 1e3 * cpu_total / steps  # process CPU time (all threads): robust to other load
    out.update(task=task, steps=steps, num_points=num_points, depth_size=size)
    return out


def bench_collect(task: str, demos: int) -> dict:
    from envs.metaworld.collect import collect

    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        summary = collect(
            task, demos, Path(tmp) / "demos.zarr", image_cameras=("corner2",), image_size=84, progress=False
        )
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    return {
        "task": task,
        "demos": demos,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "steps": summary["n_steps"],
        "attempts": summary["attempts"],
        "ms_per_step": 1e3 * seconds / summary["n_steps"],
    }


def bench_eval(task: str, episodes: int, workers: int, render: bool) -> dict:
    from core.seeds import eval_seeds
    from envs.metaworld.expert import ScriptedExpert
    from envs.runner import evaluate

    env_kwargs = {"image_cameras": ()} if render else {"point_cloud_cameras": (), "image_cameras": ()}
    info = evaluate(
        ScriptedExpert(task), task, eval_seeds(episodes), n_workers=workers, max_steps=200, env_kwargs=env_kwargs
    )
    a = info["aggregated"]
    return {
        "task": task,
        "episodes": episodes,
        "workers": workers,
        "point_clouds": render,
        "env_steps": a["env_steps"],
        "env_steps_per_s": a["env_steps_per_s"],
        "startup_s": a["startup_s"],
        "wall_s": a["eval_s"],
        "success": a["pc_success"],
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mfp bench envs", description=__doc__.split("\n")[0])
    p.add_argument("--task", default="pick-place-v3")
    p.add_argument("--steps", type=int, default=200, help="observation-pipeline steps to time")
    p.add_argument("--num-points", type=int, default=512)
    p.add_argument("--demos", type=int, default=10)
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes for the throughput figure")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip", default="", help="comma list of parts to skip: obs,collect,eval")
    p.add_argument("--out", type=Path, default=Path("envs.json"), help="JSON output file")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    result: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1min": os.getloadavg()[0],
            "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
            "LP_NUM_THREADS": os.environ.get("LP_NUM_THREADS"),
        }
    }
    if "obs" not in skip:
        result["obs_pipeline"] = bench_obs_pipeline(args.task, args.steps, args.num_points)
    if "collect" not in skip:
        result["collect"] = bench_collect(args.task, args.demos)
    if "eval" not in skip:
        result["eval_point_clouds"] = bench_eval(args.task, args.episodes, args.workers, render=True)
        result["eval_state_only"] = bench_eval(args.task, args.episodes, args.workers, render=False)
    result["machine"]["load_avg_1min_end"] = os.getloadavg()[0]

    rows = []
    if "obs_pipeline" in result:
        o = result["obs_pipeline"]
        rows.append(
            (
                f"obs pipeline render->{o['num_points']} pts, ms/step (median wall / CPU)",
                f"{o['total_ms']:.2f} / {o['total_cpu_ms']:.2f}",
                f"<= {TARGETS['obs_pipeline_ms']}",
            )
        )
        rows.append(
            (
                "  parts: render / back-project / crop / FPS (ms)",
                f"{o['render_ms']:.2f} / {o['back_project_ms']:.2f} / {o['crop_ms']:.2f} / {o['fps_ms']:.2f}",
                "",
            )
        )
        rows.append(("  84x84 rgb image / sim step (ms)", f"{o['image84_ms']:.2f} / {o['sim_step_ms']:.2f}", ""))
    if "collect" in result:
        c = result["collect"]
        rows.append(
            (
                f"collect {c['demos']} demos, point clouds + 84x84 images, s (wall / CPU)",
                f"{c['seconds']:.1f} / {c['cpu_seconds']:.1f}",
                f"<= {TARGETS['collect_10_demos_s']:.0f}",
            )
        )
        rows.append(("  steps / ms per step", f"{c['steps']} / {c['ms_per_step']:.1f}", ""))
    for key, name in (("eval_point_clouds", "with point clouds"), ("eval_state_only", "state only")):
        if key in result:
            e = result[key]
            rows.append(
                (
                    f"eval throughput, {e['workers']} workers, {name} (env steps/s)",
                    f"{e['env_steps_per_s']:.0f}",
                    f"start-up {e['startup_s']:.1f} s",
                )
            )
    width = max(len(r[0]) for r in rows)
    print(
        f"Meta-World benchmark ({args.task}; load average {result['machine']['load_avg_1min']:.1f} on "
        f"{os.cpu_count()} CPUs)"
    )
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value:>24}  {target}")
    write_text(args.out, json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0
