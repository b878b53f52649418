"""Meta-World env, point-cloud geometry and scripted experts, on the real simulator and renderer."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.spec import AGENT_POS, FULL_STATE, GOAL_POS, IMAGE, POINT_CLOUD
from envs import pointcloud as pc
from envs.metaworld.env import MetaWorldEnv, UnknownTaskError, check_task, metaworld_shape_meta, task_names
from envs.metaworld.expert import ScriptedExpert


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv("pick-place-v3", image_cameras=("corner2",), num_points=512)
    yield e
    e.close()


def test_fifty_v3_tasks_each_with_an_expert():
    from metaworld.policies import ENV_POLICY_MAP

    names = task_names()
    assert len(names) == 50 and all(n.endswith("-v3") for n in names)
    assert set(names) <= set(ENV_POLICY_MAP)


@pytest.mark.parametrize(
    "typo, expected", [("pick-place-v2", "pick-place-v3"), ("reach", "reach-v3"), ("drawer-opn-v3", "drawer-open-v3")]
)
def test_unknown_task_lists_close_matches(typo, expected):
    with pytest.raises(UnknownTaskError, match=expected):
        check_task(typo)
    with pytest.raises(UnknownTaskError, match="did you mean"):
        MetaWorldEnv(typo)


def test_observation_keys_shapes_and_dtypes(env):
    obs, info = env.reset(seed=3)
    assert info["seed"] == 3
    meta = env.shape_meta(env.obs_keys)
    assert list(obs) == env.obs_keys == [POINT_CLOUD, IMAGE, AGENT_POS, GOAL_POS, FULL_STATE]
    for key, spec in meta.obs.items():
        assert obs[key].shape == spec.shape, key
        assert env.observation_space[key].contains(obs[key]), key
    assert obs[POINT_CLOUD].dtype == np.float32 and obs[IMAGE].dtype == np.uint8
    np.testing.assert_array_equal(obs[AGENT_POS], obs[FULL_STATE][:4])
    assert meta.action_dim == 4
    # The default spec (what a policy sees unless asked) leaves out the privileged keys.
    assert list(env.shape_meta().obs) == [POINT_CLOUD, IMAGE, AGENT_POS]
    assert metaworld_shape_meta("pick-place-v3").obs[POINT_CLOUD] == meta.obs[POINT_CLOUD]
    # A point cloud with no zero padding: distinct points.
    assert len(np.unique(obs[POINT_CLOUD], axis=0)) == 512


def test_seed_fixes_the_variation_and_the_episode(env):
    expert = ScriptedExpert("pick-place-v3")

    def rollout(seed):
        obs, _ = env.reset(seed=seed)
        first = {k: v.copy() for k, v in obs.items()}
        for _ in range(5):
            obs, *_ = env.step(expert.predict_action(obs)[0])
        return first, obs

    a0, a5 = rollout(7)
    b0, b5 = rollout(7)
    c0, _ = rollout(8)
    for key in (POINT_CLOUD, IMAGE, FULL_STATE):
        np.testing.assert_array_equal(a0[key], b0[key])
        np.testing.assert_array_equal(a5[key], b5[key])
    # Another seed moves the object and/or the goal.
    assert not np.allclose(a0[FULL_STATE][4:7], c0[FULL_STATE][4:7]) or not np.allclose(
        a0[FULL_STATE][-3:], c0[FULL_STATE][-3:]
    )


def test_the_first_observation_does_not_depend_on_earlier_episodes():
    """Evaluation workers run different episodes before a given seed; what the seed shows must not change with that."""
    fresh, used = MetaWorldEnv("push-v3"), MetaWorldEnv("push-v3")
    used.reset(seed=100001)
    for _ in range(30):
        used.step(np.full(4, 0.5, np.float32))
    a, _ = fresh.reset(seed=100005)
    b, _ = used.reset(seed=100005)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    fresh.close()
    used.close()


def test_goal_pos_is_the_episode_goal_that_the_point_cloud_barely_shows():
    e = MetaWorldEnv("coffee-pull-v3", num_points=512)
    try:
        goals = []
        for seed in (100000, 100001):
            obs, _ = e.reset(seed=seed)
            goal = np.asarray(e.unwrapped_metaworld._target_pos, dtype=np.float32)
            np.testing.assert_allclose(obs[GOAL_POS], goal, atol=1e-6)
            np.testing.assert_array_equal(obs[GOAL_POS], obs[FULL_STATE][-3:])
            # The mug's target is a small site sphere at table height, not geometry: the crop leaves at most one of
            # the 512 points on it (one in 29 of the first 50 eval episodes), before and after a step.
            assert (np.linalg.norm(obs[POINT_CLOUD] - goal, axis=1) < 0.03).sum() <= 1
            obs, *_ = e.step(np.zeros(4, dtype=np.float32))
            assert (np.linalg.norm(obs[POINT_CLOUD] - goal, axis=1) < 0.03).sum() <= 1
            np.testing.assert_array_equal(obs[GOAL_POS], goal)  # fixed within the episode
            goals.append(goal)
        assert not np.allclose(goals[0], goals[1])  # drawn per episode
    finally:
        e.close()


def test_point_cloud_lands_on_the_object(env):
    env.reset(seed=0)
    obj = env.object_position()  # puck centre; the puck is ~2 cm in radius
    cloud = env.point_cloud()
    dist = np.linalg.norm(cloud - obj, axis=1)
    assert (dist < 0.04).sum() >= 3, f"no sampled points near the object at {obj}; nearest {dist.min():.3f} m"
    # Every point lies in the crop box, and the cloud spans the scene rather than one spot.
    box = env.crop_box
    assert np.all(cloud >= box[0] - 1e-6) and np.all(cloud <= box[1] + 1e-6)
    assert np.ptp(cloud[:, 0]) > 0.3


def test_metric_depth_matches_mujocos_own_renderer(env):
    env.reset(seed=0)
    cam = env._renderer.camera_id("corner2")
    _, buffer = env._renderer.render(env.data, cam, 64, 64, rgb=False)
    near, far = pc.mujoco_clip_planes(env.model)
    ours = pc.depth_buffer_to_metric(buffer, near, far, env._renderer.reversed_z)
    ref = mujoco.Renderer(env.model, 64, 64)
    ref.enable_depth_rendering()
    ref.update_scene(env.data, camera="corner2")
    theirs = ref.render()
    ref.close()
    close = theirs < 0.5 * far  # the renderers agree to float precision on real surfaces
    assert close.mean() > 0.5
    np.testing.assert_allclose(ours[close], theirs[close], rtol=1e-4, atol=1e-4)


def test_back_projected_pixels_reproject_onto_the_rendered_depth(env):
    """Points from the depth image projected back through K and the pose hit their own pixel at their depth."""
    env.reset(seed=1)
    cam = env._renderer.camera_id("corner2")
    _, buffer = env._renderer.render(env.data, cam, 96, 96, rgb=False)
    near, far = pc.mujoco_clip_planes(env.model)
    depth = pc.depth_buffer_to_metric(buffer, near, far, env._renderer.reversed_z)
    K = pc.mujoco_camera_intrinsics(env.model, cam, 96, 96)
    pose = pc.mujoco_camera_pose(env.data, cam)
    points = pc.depth_to_points(depth, K, pose, max_depth=0.99 * far)
    uv, z = pc.points_to_pixels(points.astype(np.float64), K, pose)
    cols, rows = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    assert np.all((cols >= 0) & (cols < 96) & (rows >= 0) & (rows < 96))
    np.testing.assert_allclose(depth[rows, cols], z, rtol=1e-4)


def test_images_are_upright(env):
    """World 'up' appears as image 'up': a point 30 cm above the table projects to a higher image row."""
    env.reset(seed=0)
    for name in ("corner", "corner2", "corner3"):
        cam = env._renderer.camera_id(name)
        K = pc.mujoco_camera_intrinsics(env.model, cam, 84, 84)
        pose = pc.mujoco_camera_pose(env.data, cam)
        uv, _ = pc.points_to_pixels(np.array([[0.0, 0.6, 0.0], [0.0, 0.6, 0.3]]), K, pose)
        rows = uv[:, 1]
        if env._upside_down(cam):
            rows = 83 - rows  # the env turns these images by 180 degrees
        assert rows[1] < rows[0], name
    # The observation image is the raw render turned by 180 degrees for the upside-down corner2 camera.
    obs, _ = env.reset(seed=0)
    raw, _ = env._renderer.render(env.data, env._renderer.camera_id("corner2"), 84, 84, depth=False)
    np.testing.assert_array_equal(obs[IMAGE].transpose(1, 2, 0), raw[::-1, ::-1])


def test_coloured_points_and_several_cameras():
    e = MetaWorldEnv("reach-v3", point_cloud_cameras=("corner2", "corner3"), num_points=256, use_point_color=True)
    try:
        obs, _ = e.reset(seed=0)
        cloud = obs[POINT_CLOUD]
        assert cloud.shape == (256, 6) and e.shape_meta().obs[POINT_CLOUD].shape == (256, 6)
        assert np.all((cloud[:, 3:] >= 0) & (cloud[:, 3:] <= 1)) and cloud[:, 3:].std() > 0.01
    finally:
        e.close()


def test_expert_reaches_success_and_is_reproducible():
    e = MetaWorldEnv("reach-v3", point_cloud_cameras=(), max_episode_steps=150)
    try:
        for noise in (0.0, 0.1):
            traces = []
            for _ in range(2):
                expert = ScriptedExpert("reach-v3", noise_std=noise)
                obs, _ = e.reset(seed=5)
                expert.reset(seed=5)
                actions, success = [], False
                for _ in range(150):
                    a = expert.predict_action(obs)
                    assert a.shape == (1, 4) and np.all(np.abs(a) <= 1)
                    actions.append(a)
                    obs, _, _, truncated, info = e.step(a[0])
                    success |= info["success"]
                    if success or truncated:
                        break
                assert success
                traces.append(np.concatenate(actions))
            np.testing.assert_array_equal(traces[0], traces[1])
    finally:
        e.close()


def test_step_rejects_bad_actions(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0, 0, 0]))
    with pytest.raises(ValueError, match="4 values"):
        env.step(np.zeros(3))


# ---------------------------------------------------------------------------------------------- pure numpy
@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 700), n=st.integers(1, 600))
@example(m=2, n=1)  # fewer points than fpsample's KD-tree accepts
def test_sample_points_returns_n_real_points(m, n):
    rng = np.random.default_rng(m * 1000 + n)
    points = rng.normal(size=(m, 3)).astype(np.float32)
    out = pc.sample_points(points, n)
    assert out.shape == (n, 3)
    # Every output point is an input point (never zeros or invented), and all inputs appear when m <= n.
    matches = (out[:, None, :] == points[None, :, :]).all(-1).any(1)
    assert matches.all()
    if m <= n:
        assert len(np.unique(out, axis=0)) == len(np.unique(points, axis=0))
    else:
        assert len(np.unique(out, axis=0)) == n


def test_farthest_point_sampling_spreads_out():
    rng = np.random.default_rng(0)
    # A dense blob and four far corners: FPS must pick the corners among its first points.
    blob = rng.normal(scale=0.01, size=(2000, 3))
    corners = np.array([[1, 1, 0], [-1, 1, 0], [1, -1, 0], [-1, -1, 0]], dtype=float)
    points = np.concatenate([blob, corners]).astype(np.float32)
    idx = pc.farthest_point_indices(points, 8)
    assert set(range(2000, 2004)) <= set(idx.tolist())
    assert len(set(idx.tolist())) == 8


def test_empty_crop_raises():
    points = np.random.default_rng(0).uniform(-1, 1, size=(100, 3)).astype(np.float32)
    with pytest.raises(pc.PointCloudError, match="crop box"):
        pc.workspace_point_cloud([points], np.array([[5.0, 5, 5], [6, 6, 6]]), 16)
    with pytest.raises(pc.PointCloudError, match="min < max"):
        pc.crop_points(points, np.array([[1.0, 0, 0], [0, 1, 1]]))


@settings(max_examples=25, deadline=None)
@given(fovy=st.floats(20, 100), w=st.integers(8, 64), h=st.integers(8, 64), seed=st.integers(0, 1000))
def test_depth_to_points_inverts_projection(fovy, w, h, seed):
    """Generic pinhole geometry: back-projection then projection returns each pixel and its depth."""
    rng = np.random.default_rng(seed)
    K = pc.intrinsics_from_fovy(fovy, w, h)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pose = np.eye(4)
    pose[:3, :3] = q * np.sign(np.linalg.det(q))
    pose[:3, 3] = rng.normal(size=3)
    depth = rng.uniform(0.3, 3.0, size=(h, w)).astype(np.float32)
    points = pc.depth_to_points(depth, K, pose)
    uv, z = pc.points_to_pixels(points.astype(np.float64), K, pose)
    vv, uu = np.mgrid[0:h, 0:w]
    np.testing.assert_allclose(uv[:, 0], uu.ravel(), atol=2e-3)
    np.testing.assert_allclose(uv[:, 1], vv.ravel(), atol=2e-3)
    np.testing.assert_allclose(z, depth.ravel(), rtol=1e-4)


def test_depth_buffer_mappings_hit_the_clip_planes():
    near, far = 0.02, 100.0
    for reversed_z, at_near, at_far in ((True, 1.0, 0.0), (False, 0.0, 1.0)):
        z = pc.depth_buffer_to_metric(np.array([at_near, at_far]), near, far, reversed_z)
        np.testing.assert_allclose(z, [near, far], rtol=1e-5)
