"""One picture per multimodal task: the scene at its split point (the hand in the corner, gripper open), with the
hand paths of its strategies drawn in (one colour each), as a 256-px PNG.

    MUJOCO_GL=egl python benchmarks/multimodal_scene_pictures.py --out docs/results/multimodal-scenes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.spec import FULL_STATE  # noqa: E402
from envs import pointcloud as pc  # noqa: E402
from envs.multimodal.env import MultimodalEnv  # noqa: E402
from envs.multimodal.experts import StrategyExpert  # noqa: E402
from envs.multimodal.tasks import TASKS  # noqa: E402

COLOURS = np.array([[255, 210, 0], [0, 200, 255], [255, 80, 200]], dtype=np.uint8)
SEED = 100_000


def hand_path(env: MultimodalEnv, task: str, strategy: str) -> np.ndarray:
    """Hand positions (T, 3) of one episode of ``strategy``, up to success."""
    expert = StrategyExpert(task, strategy)
    obs, _ = env.reset(seed=SEED)
    states = [obs[FULL_STATE]] * 2
    for _ in range(env.max_episode_steps):
        obs, _, _, _, info = env.step(expert.predict_action({FULL_STATE: np.stack(states[-2:])})[0])
        states.append(obs[FULL_STATE])
        if info["success"]:
            break
    return np.stack(states[1:])[:, :3]


def at_split(env: MultimodalEnv, task: str) -> None:
    """Run the shared opening (approach and pause) of the first strategy, stopping where the strategies part."""
    spec = env.spec_task
    expert = StrategyExpert(task, next(iter(spec.strategies)))
    obs, _ = env.reset(seed=SEED)
    states = [obs[FULL_STATE].astype(np.float64)] * 2
    for _ in range(env.max_episode_steps):
        actions = [f(states[-1], states[-2]) for f in spec.strategies.values()]
        if not np.allclose(actions[0], actions[1]):
            return
        obs, *_ = env.step(expert.predict_action({FULL_STATE: np.stack(states[-2:])})[0])
        states.append(obs[FULL_STATE].astype(np.float64))


def draw(image: np.ndarray, env: MultimodalEnv, camera: str, path: np.ndarray, colour: np.ndarray) -> None:
    """Paint the points of ``path`` (T, 3) seen by ``camera`` onto the upright ``image`` (H, W, 3) in place."""
    size = image.shape[0]
    cam_id = env.model.camera(camera).id
    K = pc.mujoco_camera_intrinsics(env.model, cam_id, size, size)
    uv, depth = pc.points_to_pixels(path, K, pc.mujoco_camera_pose(env.data, cam_id))
    if env.data.cam_xmat[cam_id][7] < 0:  # the picture was turned by 180 degrees (see MultimodalEnv.camera_rgb)
        uv = size - 1 - uv
    for u, v in np.round(uv[depth > 0]).astype(int):
        image[max(v - 1, 0) : v + 2, max(u - 1, 0) : u + 2] = colour


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("docs/results/multimodal-scenes"))
    p.add_argument("--camera", default="corner3")
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import imageio.v2 as imageio

    for task, spec in TASKS.items():
        env = MultimodalEnv(task, point_cloud_cameras=(), video_size=args.size)
        paths = [hand_path(env, task, name) for name in spec.strategies]
        at_split(env, task)
        image = env.camera_rgb(args.camera, args.size)
        for path, colour in zip(paths, COLOURS, strict=False):
            draw(image, env, args.camera, path, colour)
        imageio.imwrite(args.out / f"{task}.png", image)
        print(f"{task}: {', '.join(f'{n} ({c.tolist()})' for n, c in zip(spec.strategies, COLOURS, strict=False))}")
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
