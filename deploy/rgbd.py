"""RGB-D camera frames → the policy's point cloud, for real cameras (open3d back-projection).

Pipeline: depth (raw units) → metres via ``depth_scale`` → back-projected with open3d into the world frame
(``cam_to_world``, OpenCV axes: x right, y down, z forward) → workspace crop → voxel downsample (open3d) → farthest
point sampling to the policy's point count. Crop and sampling are :func:`envs.pointcloud.crop_points` and
:func:`envs.pointcloud.sample_points`, the functions the simulator path uses after rendering, so a real cloud is
made the way the training clouds were. Camera and workspace come from a YAML file::

    camera:
      width: 640
      height: 480
      fx: 605.0
      fy: 605.0
      cx: 319.5
      cy: 239.5
      depth_scale: 1000.0        # raw depth units per metre (RealSense z16: 1000)
      depth_trunc: 2.0           # metres; farther pixels are dropped
      cam_to_world: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]   # camera pose in the robot frame
    crop_box: [[-0.6, 0.2, 0.003], [0.6, 1.05, 0.7]]   # [[x, y, z]_min, [x, y, z]_max] in the robot frame
    num_points: 512
    voxel_size: 0.005            # metres; 0 = no voxel downsampling
    use_color: false             # (N, 6) points with rgb in [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import MfpError
from envs.pointcloud import crop_points, sample_points

_CAMERA_KEYS = ("width", "height", "fx", "fy", "cx", "cy", "depth_scale", "depth_trunc", "cam_to_world")
_TOP_KEYS = ("camera", "crop_box", "num_points", "voxel_size", "use_color")


class CameraConfigError(MfpError, ValueError):
    """A camera/workspace file or a frame that does not fit it."""


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics, depth units and pose of one RGB-D camera."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    depth_scale: float
    depth_trunc: float
    cam_to_world: np.ndarray  # (4, 4)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


class RGBDPointCloud:
    """Callable turning ``(depth (H, W), rgb (H, W, 3) | None)`` into ``(num_points, 3|6)`` float32."""

    def __init__(
        self,
        camera: PinholeCamera,
        crop_box: np.ndarray,
        num_points: int,
        voxel_size: float = 0.0,
        use_color: bool = False,
    ) -> None:
        import open3d as o3d

        self._o3d = o3d
        self.camera = camera
        self.crop_box = np.asarray(crop_box, dtype=np.float64)
        if self.crop_box.shape != (2, 3) or not (self.crop_box[0] < self.crop_box[1]).all():
            raise CameraConfigError(f"crop_box must be [[x, y, z]_min, [x, y, z]_max], got {crop_box}")
        if num_points < 1 or voxel_size < 0:
            raise CameraConfigError(f"num_points must be >= 1 and voxel_size >= 0, got {num_points}, {voxel_size}")
        self.num_points = int(num_points)
        self.voxel_size = float(voxel_size)
        self.use_color = bool(use_color)
        c = camera
        self._intrinsic = o3d.camera.PinholeCameraIntrinsic(c.width, c.height, c.fx, c.fy, c.cx, c.cy)
        self._extrinsic = np.linalg.inv(c.cam_to_world)  # open3d wants world -> camera

    @classmethod
    def from_yaml(cls, path: str | Path) -> RGBDPointCloud:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise CameraConfigError(f"camera file '{path}' does not exist")
        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f), source=str(path))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> RGBDPointCloud:
        if not isinstance(d, Mapping) or "camera" not in d or not isinstance(d["camera"], Mapping):
            raise CameraConfigError(f"{source}: needs a 'camera' mapping with {', '.join(_CAMERA_KEYS)}")
        unknown = [k for k in d if k not in _TOP_KEYS]
        cam = d["camera"]
        missing = [k for k in _CAMERA_KEYS if k not in cam]
        unknown += [f"camera.{k}" for k in cam if k not in _CAMERA_KEYS]
        if missing or unknown or "crop_box" not in d or "num_points" not in d:
            raise CameraConfigError(
                f"{source}: missing camera key(s) {missing}, unknown key(s) {unknown}; "
                "crop_box and num_points are required"
            )
        pose = np.asarray(cam["cam_to_world"], dtype=np.float64)
        if pose.shape != (4, 4) or not np.allclose(pose[3], [0, 0, 0, 1]):
            raise CameraConfigError(f"{source}: camera.cam_to_world must be a 4x4 rigid transform")
        R = pose[:3, :3]
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
            raise CameraConfigError(f"{source}: the rotation of camera.cam_to_world is not a proper rotation")
        camera = PinholeCamera(
            int(cam["width"]),
            int(cam["height"]),
            float(cam["fx"]),
            float(cam["fy"]),
            float(cam["cx"]),
            float(cam["cy"]),
            float(cam["depth_scale"]),
            float(cam["depth_trunc"]),
            pose,
        )
        if camera.depth_scale <= 0 or camera.depth_trunc <= 0 or camera.fx <= 0 or camera.fy <= 0:
            raise CameraConfigError(f"{source}: fx, fy, depth_scale and depth_trunc must be positive")
        return cls(
            camera,
            np.asarray(d["crop_box"]),
            int(d["num_points"]),
            float(d.get("voxel_size", 0.0)),
            bool(d.get("use_color", False)),
        )

    def __call__(self, depth: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
        """The workspace cloud of one frame; ``depth`` uint16 (raw units) or float32 (raw units)."""
        o3d, c = self._o3d, self.camera
        depth = np.asarray(depth)
        if depth.shape != (c.height, c.width):
            raise CameraConfigError(f"depth frame is {depth.shape}; the camera file says {(c.height, c.width)}")
        if depth.dtype not in (np.uint16, np.float32):
            depth = depth.astype(np.float32)
        depth_image = o3d.geometry.Image(np.ascontiguousarray(depth))
        if self.use_color:
            if rgb is None or np.shape(rgb) != (c.height, c.width, 3):
                raise CameraConfigError(f"use_color needs an rgb frame of shape {(c.height, c.width, 3)}")
            rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
                o3d.geometry.Image(np.ascontiguousarray(rgb, dtype=np.uint8)),
                depth_image,
                depth_scale=c.depth_scale,
                depth_trunc=c.depth_trunc,
                convert_rgb_to_intensity=False,
            )
            cloud = o3d.geometry.PointCloud.create_from_rgbd_image(rgbd, self._intrinsic, self._extrinsic)
            points = np.concatenate([np.asarray(cloud.points), np.asarray(cloud.colors)], axis=1)  # (M, 6)
        else:
            cloud = o3d.geometry.PointCloud.create_from_depth_image(
                depth_image, self._intrinsic, self._extrinsic, depth_scale=c.depth_scale, depth_trunc=c.depth_trunc
            )
            points = np.asarray(cloud.points)  # (M, 3)
        points = crop_points(points, self.crop_box)
        if self.voxel_size > 0 and len(points) > self.num_points:
            points = self._voxel_downsample(points)
        return np.ascontiguousarray(sample_points(points, self.num_points), dtype=np.float32)

    def _voxel_downsample(self, points: np.ndarray) -> np.ndarray:
        o3d = self._o3d
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[:, :3]))
        if points.shape[1] == 6:
            cloud.colors = o3d.utility.Vector3dVector(points[:, 3:])
        down = cloud.voxel_down_sample(self.voxel_size)
        xyz = np.asarray(down.points)
        return np.concatenate([xyz, np.asarray(down.colors)], axis=1) if points.shape[1] == 6 else xyz
