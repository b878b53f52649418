"""RGB-D → point cloud on synthetic frames of known geometry; agrees with the simulator's back-projection."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.rgbd import CameraConfigError, RGBDPointCloud
from envs.pointcloud import depth_to_points

W, H = 64, 48
FX = FY = 50.0
CX, CY = 31.5, 23.5
LOOK_DOWN = [[1, 0, 0, 0.1], [0, -1, 0, 0.5], [0, 0, -1, 1.0], [0, 0, 0, 1]]  # camera 1 m up, looking at the floor


def _config(**over) -> dict:
    cfg = {
        "camera": {
            "width": W,
            "height": H,
            "fx": FX,
            "fy": FY,
            "cx": CX,
            "cy": CY,
            "depth_scale": 1000.0,
            "depth_trunc": 3.0,
            "cam_to_world": LOOK_DOWN,
        },
        "crop_box": [[-5, -5, -5], [5, 5, 5]],
        "num_points": 256,
        "voxel_size": 0.0,
    }
    cfg.update(over)
    return cfg


def test_a_plane_at_known_distance_lands_at_that_height():
    depth = np.full((H, W), 800, np.uint16)  # 0.8 m below a camera 1 m up: the floor is at z = 0.2
    cloud = RGBDPointCloud.from_dict(_config())(depth)
    assert cloud.shape == (256, 3) and cloud.dtype == np.float32
    np.testing.assert_allclose(cloud[:, 2], 0.2, atol=1e-5)
    # The footprint is the camera's field of view at 0.8 m, centred under the camera (0.1, 0.5).
    half_w = (W - 1 - CX) / FX * 0.8
    assert cloud[:, 0].min() == pytest.approx(0.1 - half_w, abs=0.02)
    assert cloud[:, 0].max() == pytest.approx(0.1 + half_w, abs=0.02)
    assert cloud[:, 1].mean() == pytest.approx(0.5, abs=0.02)


def test_crop_voxel_and_fps_keep_the_object_and_drop_the_table():
    depth = np.full((H, W), 1000, np.uint16)  # table at z = 0
    depth[10:30, 20:40] = 700  # a box whose top is at z = 0.3
    pc = RGBDPointCloud.from_dict(_config(crop_box=[[-1, -1, 0.05], [1, 1, 1]], num_points=64, voxel_size=0.01))
    cloud = pc(depth)
    assert cloud.shape == (64, 3)
    np.testing.assert_allclose(cloud[:, 2], 0.3, atol=1e-5)  # only the box top survives the crop
    # FPS spreads the samples over the whole box top (its extent is kept).
    x_box = (np.array([20, 39]) - CX) / FX * 0.7 + 0.1
    assert cloud[:, 0].min() == pytest.approx(x_box[0], abs=0.02) and cloud[:, 0].max() == pytest.approx(
        x_box[1], abs=0.02
    )
    # Far pixels beyond depth_trunc and zero (invalid) pixels are dropped.
    depth[:, :] = 0
    depth[0:5, 0:5] = 700
    assert np.allclose(pc(depth)[:, 2], 0.3, atol=1e-5)


def test_matches_the_simulator_back_projection_and_carries_colour():
    rng = np.random.default_rng(0)
    depth_mm = rng.integers(500, 900, size=(H, W)).astype(np.uint16)
    depth_m = depth_mm.astype(np.float32) / 1000.0
    rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]])
    sim = depth_to_points(depth_m, K, np.asarray(LOOK_DOWN, dtype=np.float64), rgb=rgb)  # (H*W, 6)
    pc = RGBDPointCloud.from_dict(_config(num_points=H * W, use_color=True))
    real = pc(depth_mm, rgb)  # every pixel valid and kept: both are in pixel order
    np.testing.assert_allclose(real[:, :3], sim[:, :3], atol=1e-5)
    np.testing.assert_allclose(real[:, 3:], sim[:, 3:], atol=1e-6)


def test_bad_camera_files_and_frames_are_named(tmp_path):
    with pytest.raises(CameraConfigError, match="missing camera key"):
        RGBDPointCloud.from_dict({"camera": {"width": 1}, "crop_box": [[0, 0, 0], [1, 1, 1]], "num_points": 1})
    bad_pose = _config()
    bad_pose["camera"] = dict(bad_pose["camera"], cam_to_world=[[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    with pytest.raises(CameraConfigError, match="proper rotation"):
        RGBDPointCloud.from_dict(bad_pose)
    with pytest.raises(CameraConfigError, match="depth frame"):
        RGBDPointCloud.from_dict(_config())(np.zeros((H + 1, W), np.uint16))
    path = tmp_path / "cam.yaml"
    import yaml

    path.write_text(yaml.safe_dump(_config()))
    assert RGBDPointCloud.from_yaml(path).num_points == 256
