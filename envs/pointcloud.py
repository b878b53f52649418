"""Depth images → workspace point clouds (the DP3 recipe): metric depth, back-projection, crop box, FPS.

The functions at the top are pure numpy and camera-agnostic (OpenCV pinhole convention: x right, y down,
z forward; ``cam_to_world`` is a 4×4 pose), so real RGB-D cameras reuse them. The ``mujoco_*`` helpers at the
bottom read the intrinsics and pose of a MuJoCo camera from the model/data and undo MuJoCo's depth-buffer
mapping; they take ``model``/``data`` objects but never import mujoco themselves.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.errors import MfpError

try:
    import fpsample as _fpsample
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    _fpsample = None
    warnings.warn(
        "fpsample is not installed; farthest point sampling falls back to slow numpy (pip install fpsample)",
        RuntimeWarning,
        stacklevel=2,
    )

# Workspace crop box in the Meta-World world frame (metres): [[x_min, y_min, z_min], [x_max, y_max, z_max]].
# The table top is at z = 0; z_min just above it drops the table plane, x/y bound the reachable area and z_max
# keeps the arm but drops the room. Tasks whose objects leave this box get an entry in TASK_CROP_BOXES.
DEFAULT_CROP_BOX: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (-0.6, 0.2, 0.003),
    (0.6, 1.05, 0.7),
)
TASK_CROP_BOXES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # These tasks raise the table top (boxes around a hole) to z = 0.05 / 0.054. In pick-out-of-hole the peg
    # starts inside the hole, below the cut, and appears once lifted; the hole itself sits at a fixed place.
    "hand-insert-v3": ((-0.6, 0.2, 0.055), (0.6, 1.05, 0.7)),
    "sweep-into-v3": ((-0.6, 0.2, 0.055), (0.6, 1.05, 0.7)),
    "pick-out-of-hole-v3": ((-0.6, 0.2, 0.058), (0.6, 1.05, 0.7)),
}


class PointCloudError(MfpError, ValueError):
    """A crop box or depth image that cannot give a point cloud."""


def crop_box_for_task(task: str) -> np.ndarray:
    """The crop box of ``task`` as a (2, 3) float array: the task's override if any, else the default."""
    return np.asarray(TASK_CROP_BOXES.get(task, DEFAULT_CROP_BOX), dtype=np.float64)


def intrinsics_from_fovy(fovy_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole matrix K (3, 3) of a camera with vertical field of view ``fovy_deg`` and square pixels.

    Pixel (u, v) = (column, row) has its centre at integer coordinates, so the principal point of an image
    whose optical axis goes through its middle is ((W - 1) / 2, (H - 1) / 2).
    """
    if not 0.0 < fovy_deg < 180.0:
        raise PointCloudError(f"fovy must be in (0, 180) degrees, got {fovy_deg}")
    f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def depth_to_points(
    depth: np.ndarray,
    K: np.ndarray,
    cam_to_world: np.ndarray,
    rgb: np.ndarray | None = None,
    max_depth: float = np.inf,
) -> np.ndarray:
    """Back-project a metric depth image (H, W) to world points (M, 3), or (M, 6) with colour in [0, 1].

    ``depth`` is the distance along the optical axis (not along the ray); pixels that are non-finite, <= 0 or
    >= ``max_depth`` are dropped. ``rgb`` (H, W, 3) uint8 adds the colour of each kept pixel.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise PointCloudError(f"depth must be (H, W), got shape {depth.shape}")
    h, w = depth.shape
    z = depth.reshape(-1).astype(np.float32)
    keep = np.isfinite(z) & (z > 0) & (z < max_depth)
    idx = np.flatnonzero(keep)
    z = z[idx]
    u = (idx % w).astype(np.float32)
    v = (idx // w).astype(np.float32)
    x = (u - np.float32(K[0, 2])) * z / np.float32(K[0, 0])
    y = (v - np.float32(K[1, 2])) * z / np.float32(K[1, 1])
    cam = np.stack([x, y, z], axis=1)  # (M, 3) camera frame
    R = cam_to_world[:3, :3].astype(np.float32)
    t = cam_to_world[:3, 3].astype(np.float32)
    points = cam @ R.T + t  # (M, 3) world frame
    if rgb is None:
        return points
    rgb = np.asarray(rgb)
    if rgb.shape[:2] != (h, w) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise PointCloudError(f"rgb must be (H, W, 3) matching depth {depth.shape}, got {rgb.shape}")
    colors = rgb.reshape(-1, 3)[idx].astype(np.float32) / 255.0
    return np.concatenate([points, colors], axis=1)


def crop_points(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Keep the points whose xyz lies inside ``box`` (2, 3) = [min_xyz, max_xyz] (bounds inclusive)."""
    box = np.asarray(box, dtype=np.float32)
    if box.shape != (2, 3) or not np.all(box[0] < box[1]):
        raise PointCloudError(
            f"crop box must be [[x_min, y_min, z_min], [x_max, y_max, z_max]] with min < max, got {box.tolist()}"
        )
    xyz = points[:, :3]
    inside = np.all((xyz >= box[0]) & (xyz <= box[1]), axis=1)
    return points[inside]


def farthest_point_indices(xyz: np.ndarray, n: int, start_idx: int = 0) -> np.ndarray:
    """Indices (n,) of a farthest point sample of ``xyz`` (M, 3), M >= n, starting from ``start_idx``.

    Uses ``fpsample`` (bucket-based FPS on a KD-tree); a numpy O(M·n) loop when it is not installed or M < 8.
    """
    m = len(xyz)
    if n > m:
        raise PointCloudError(f"cannot sample {n} distinct points from {m}")
    xyz = np.ascontiguousarray(xyz[:, :3], dtype=np.float32)
    if _fpsample is not None and m >= 8:  # its KD-tree needs 2**h <= M points
        h = 5 if m > 4096 else 3
        return np.asarray(_fpsample.bucket_fps_kdline_sampling(xyz, n, h=h, start_idx=start_idx), dtype=np.int64)
    return _numpy_fps(xyz, n, start_idx)


def _numpy_fps(xyz: np.ndarray, n: int, start_idx: int) -> np.ndarray:
    chosen = np.empty(n, dtype=np.int64)
    chosen[0] = start_idx
    dist = np.sum((xyz - xyz[start_idx]) ** 2, axis=1)
    for i in range(1, n):
        chosen[i] = int(np.argmax(dist))
        dist = np.minimum(dist, np.sum((xyz - xyz[chosen[i]]) ** 2, axis=1))
    return chosen


def sample_points(points: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` points from ``points`` (M, C).

    M > n: farthest point sampling (deterministic start at index 0). M == n: unchanged. 0 < M < n: all M points
    followed by repeats in cyclic order (point i goes to slots i, i + M, i + 2M, ...) — never zero padding, so
    the cloud's extent and max-pool features are the true ones. M == 0 raises.
    """
    m = len(points)
    if m == 0:
        raise PointCloudError(
            "no points left to sample from (the crop box removed everything); check the crop "
            "box against the scene or pass a task override"
        )
    if m > n:
        return points[farthest_point_indices(points, n)]
    if m == n:
        return points
    return points[np.arange(n) % m]


def points_to_pixels(xyz: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (M, 3) into a camera: pixel coords (M, 2) as (u, v) and depth along the axis (M,)."""
    world_to_cam = np.linalg.inv(cam_to_world)
    cam = xyz @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    z = cam[:, 2]
    uv = (cam[:, :2] / z[:, None]) * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
    return uv, z


# ---------------------------------------------------------------------------------------------- MuJoCo cameras
def depth_buffer_to_metric(buffer: np.ndarray, near: float, far: float, reversed_z: bool) -> np.ndarray:
    """OpenGL window depth in [0, 1] → distance along the optical axis (metres), float32.

    Standard mapping (0 at near, 1 at far): z = n·f / (f − d·(f − n)).
    Reversed mapping (1 at near, 0 at far, MuJoCo's ``mjDEPTH_ZEROFAR``): z = n·f / (n + d·(f − n)).
    Computed in float64: the mapping is steep near the far plane.
    """
    d = np.asarray(buffer, dtype=np.float64)
    if reversed_z:
        z = near * far / (near + d * (far - near))
    else:
        z = near * far / (far - d * (far - near))
    return z.astype(np.float32)


def mujoco_clip_planes(model: Any) -> tuple[float, float]:
    """(near, far) clipping distances in metres: ``vis.map.znear/zfar`` are fractions of ``stat.extent``."""
    extent = float(model.stat.extent)
    return float(model.vis.map.znear) * extent, float(model.vis.map.zfar) * extent


def mujoco_camera_intrinsics(model: Any, cam_id: int, width: int, height: int) -> np.ndarray:
    """K (3, 3) of MuJoCo camera ``cam_id`` rendered at ``width``×``height`` (fovy read from the model)."""
    return intrinsics_from_fovy(float(model.cam_fovy[cam_id]), width, height)


def mujoco_camera_pose(data: Any, cam_id: int) -> np.ndarray:
    """Camera-to-world 4×4 pose of MuJoCo camera ``cam_id`` in the OpenCV convention (x right, y down, z forward).

    MuJoCo cameras look along their −z axis with +y up, so the OpenCV axes are (x, −y, −z) of ``cam_xmat``.
    Read after ``mj_forward``/``mj_step`` (which fill ``data.cam_xpos``/``cam_xmat``).
    """
    pose = np.eye(4)
    pose[:3, :3] = np.asarray(data.cam_xmat[cam_id]).reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
    pose[:3, 3] = data.cam_xpos[cam_id]
    return pose


def mujoco_points(
    model: Any,
    data: Any,
    cam_id: int,
    depth_buffer: np.ndarray,
    reversed_z: bool,
    rgb: np.ndarray | None = None,
) -> np.ndarray:
    """World points (M, 3|6) seen by MuJoCo camera ``cam_id`` from an upright raw depth buffer (H, W).

    Pixels at the far plane (nothing rendered there) are dropped.
    """
    h, w = depth_buffer.shape
    near, far = mujoco_clip_planes(model)
    depth = depth_buffer_to_metric(depth_buffer, near, far, reversed_z)
    K = mujoco_camera_intrinsics(model, cam_id, w, h)
    return depth_to_points(depth, K, mujoco_camera_pose(data, cam_id), rgb=rgb, max_depth=0.99 * far)


def workspace_point_cloud(
    clouds: Sequence[np.ndarray],
    crop_box: np.ndarray | None,
    num_points: int,
) -> np.ndarray:
    """Merge per-camera clouds, crop to the workspace, and sample exactly ``num_points`` points (float32)."""
    points = clouds[0] if len(clouds) == 1 else np.concatenate(list(clouds), axis=0)
    if crop_box is not None:
        points = crop_points(points, crop_box)
    return np.ascontiguousarray(sample_points(points, num_points), dtype=np.float32)


def camera_params(model: Any, cam_names: Sequence[str], width: int, height: int) -> Mapping[str, dict]:
    """JSON-ready record of each camera's fovy, intrinsics and clip planes (for dataset attributes)."""
    near, far = mujoco_clip_planes(model)
    out = {}
    for name in cam_names:
        cam_id = model.camera(name).id
        out[name] = {
            "fovy": float(model.cam_fovy[cam_id]),
            "width": int(width),
            "height": int(height),
            "K": mujoco_camera_intrinsics(model, cam_id, width, height).tolist(),
            "pos": [float(v) for v in model.cam_pos[cam_id]],
            "quat": [float(v) for v in model.cam_quat[cam_id]],
            "near": near,
            "far": far,
        }
    return out
