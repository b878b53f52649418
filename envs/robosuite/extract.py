"""Observations for a file of robosuite states: what robomimic's ``dataset_states_to_obs.py`` does, with this
package's env.

    mfp convert src=demo.hdf5 out=image.hdf5                    # robosuite's own demo.hdf5 (states, actions)

Per demo: the simulator is rebuilt from the demo's ``model_file`` and set to each stored state in turn; the
observation of ``states[t]`` is ``obs[t]``, of ``states[t + 1]`` ``next_obs[t]`` (the last one by stepping the last
action, as robomimic does), ``rewards[t]`` the reward there and ``dones[t]`` 1 at success or at the last step
(robomimic's ``--done_mode 2``). Masks are copied. Images are rendered with robosuite's defaults unless
``fast_render`` (shadows and reflections off, as this package's own collections): robomimic renders its datasets
with the defaults.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.atomic_write import check_output
from demos.robomimic_hdf5 import Demo, RobomimicWriter, read_states_file
from envs.robosuite.env import RobosuiteEnv


def extract_observations(
    src: str | os.PathLike,
    out: str | os.PathLike,
    cameras: Sequence[str] = ("agentview", "robot0_eye_in_hand"),
    image_size: int = 84,
    fast_render: bool = False,
    overwrite: bool = False,
    verbose: bool = True,
) -> dict[str, Any]:
    """Write ``src`` (states and actions) with observations, rewards and dones as a robomimic file at ``out``;
    returns a summary (demos, samples, seconds). The file is written aside and renamed into place when complete."""
    env_args, demos, masks = read_states_file(src)
    check_output(out, [src], overwrite)
    t0 = time.perf_counter()
    env = RobosuiteEnv.from_env_args(env_args, image_size=image_size, cameras=cameras, fast_render=fast_render)
    partial = f"{os.fspath(out)}.partial"
    total = 0
    try:
        with RobomimicWriter(partial, env.env_args(), overwrite=True, file_attrs={"source": os.fspath(src)}) as w:
            for raw in demos:
                demo = _extract(env, raw.states, raw.actions, raw.model_file)
                w.add_demo(demo, name=raw.name)
                total += len(demo)
                if verbose:
                    print(f"[convert] {raw.name}: {len(demo)} steps", flush=True)
            for key, names in masks.items():
                w.set_mask(key, names)
        os.replace(partial, out)
    finally:
        env.close()
        if os.path.exists(partial):
            os.remove(partial)
    return {"path": os.fspath(out), "demos": len(demos), "samples": total, "seconds": time.perf_counter() - t0}


def _extract(env: RobosuiteEnv, states: np.ndarray, actions: np.ndarray, model_file: str) -> Demo:
    frames = [env.reset_to({"states": states[0], "model": model_file})]
    rewards, dones = [], []
    for t in range(1, len(states) + 1):
        if t < len(states):
            obs = env.reset_to({"states": states[t]})
            success, reward = env.is_success(), env.reward()
        else:
            obs, reward, success, _, _ = env.step(actions[-1])
        frames.append(obs)
        rewards.append(reward)
        dones.append(int(success or t == len(states)))
    stacked = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
    for key, arr in stacked.items():
        if arr.ndim == 4:  # (T+1, 3, H, W) -> robomimic's (T+1, H, W, 3)
            stacked[key] = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
    return Demo(
        actions=np.asarray(actions),
        obs={k: v[:-1] for k, v in stacked.items()},
        next_obs={k: v[1:] for k, v in stacked.items()},
        states=np.asarray(states),
        rewards=np.asarray(rewards, dtype=np.float64),
        dones=np.asarray(dones, dtype=np.int64),
        attrs={"model_file": model_file},
    )
