"""Headless offscreen MuJoCo rendering: colour and raw depth from a named camera in one pass.

Uses EGL by default (``MUJOCO_GL`` is set to ``egl`` when unset, before mujoco is imported); ``osmesa`` also
works. Fast settings (the default) turn off shadows, reflections, the skybox and multisampling: on a CPU
(llvmpipe) shadows and reflections cost ~4× per frame, and multisampling blends depths at object edges into
"flying" points between foreground and background.
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from core.errors import MfpError


class RenderError(MfpError, RuntimeError):
    """The OpenGL context could not be created or a camera does not exist."""


_live: weakref.WeakSet[OffscreenRenderer] = weakref.WeakSet()
_atexit_registered = False


def _close_all() -> None:
    for renderer in list(_live):
        renderer.close()


def _gl_context_class() -> Any:
    """The GLContext of the backend named by ``MUJOCO_GL``, chosen now rather than when mujoco was first imported
    (another library may have imported mujoco before this module set the variable)."""
    backend = os.environ.get("MUJOCO_GL", "egl").lower()
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        GLContext = mujoco.GLContext
    return GLContext


class OffscreenRenderer:
    """Renders cameras of one model at up to ``max_width`` × ``max_height`` pixels.

    ``render`` returns upright images (row 0 = top): rgb (H, W, 3) uint8 and the raw depth buffer (H, W) float32
    in the mapping given by :attr:`reversed_z` (convert with :func:`envs.pointcloud.depth_buffer_to_metric`).
    """

    def __init__(self, model: mujoco.MjModel, max_width: int, max_height: int, fast: bool = True) -> None:
        self.model = model
        glob = model.vis.global_
        glob.offwidth = max(int(glob.offwidth), int(max_width))
        glob.offheight = max(int(glob.offheight), int(max_height))
        if fast:
            model.vis.quality.offsamples = 0
        try:
            self._gl = _gl_context_class()(int(glob.offwidth), int(glob.offheight))
            self._gl.make_current()
        except Exception as e:  # EGL/OSMesa raise backend-specific errors
            raise RenderError(
                f"cannot create an offscreen OpenGL context with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} ({e}); "
                "install EGL (libegl1) or OSMesa (libosmesa6) and set MUJOCO_GL=egl or MUJOCO_GL=osmesa"
            ) from e
        global _atexit_registered
        if not _atexit_registered:
            # Registered after the GL backend's own exit hook, so it runs first (atexit is LIFO) and frees our
            # contexts while the display still exists.
            atexit.register(_close_all)
            _atexit_registered = True
        _live.add(self)
        self._con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        # Reversed Z keeps float depth precise far from the camera.
        self._con.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self.reversed_z = int(self._con.readDepthMap) == int(mujoco.mjtDepthMap.mjDEPTH_ZEROFAR)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
        self._scene = mujoco.MjvScene(model, maxgeom=10_000)
        if fast:
            for flag in (
                mujoco.mjtRndFlag.mjRND_SHADOW,
                mujoco.mjtRndFlag.mjRND_REFLECTION,
                mujoco.mjtRndFlag.mjRND_SKYBOX,
            ):
                self._scene.flags[flag] = 0
        self._option = mujoco.MjvOption()
        self._perturb = mujoco.MjvPerturb()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._max = (int(glob.offwidth), int(glob.offheight))

    def camera_id(self, name: str) -> int:
        cam_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, name)
        if cam_id < 0:
            names = [self.model.camera(i).name for i in range(self.model.ncam)]
            raise RenderError(f"unknown camera '{name}'; this model has {names}")
        return cam_id

    def render(
        self, data: mujoco.MjData, cam_id: int, width: int, height: int, rgb: bool = True, depth: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(rgb (H, W, 3) uint8 or None, raw depth buffer (H, W) float32 or None) of fixed camera ``cam_id``."""
        if width > self._max[0] or height > self._max[1]:
            raise RenderError(f"{width}x{height} exceeds this renderer's buffer {self._max[0]}x{self._max[1]}")
        self._gl.make_current()
        self._camera.fixedcamid = cam_id
        mujoco.mjv_updateScene(
            self.model, data, self._option, self._perturb, self._camera, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        viewport = mujoco.MjrRect(0, 0, width, height)
        flags = self._scene.flags
        depth_only = depth and not rgb
        if depth_only:
            # Flat segmentation colours skip lighting: ~3x faster on llvmpipe, same geometry in the depth buffer.
            flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 1
            flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
        mujoco.mjr_render(viewport, self._scene, self._con)
        if depth_only:
            flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 0
            flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 0
        rgb_buf = np.empty((height, width, 3), dtype=np.uint8) if rgb else None
        depth_buf = np.empty((height, width), dtype=np.float32) if depth else None
        mujoco.mjr_readPixels(rgb_buf, depth_buf, viewport, self._con)
        # OpenGL rows start at the bottom.
        return (
            None if rgb_buf is None else rgb_buf[::-1].copy(),
            None if depth_buf is None else depth_buf[::-1].copy(),
        )

    def close(self) -> None:
        if getattr(self, "_con", None) is not None:
            # MjrContext.free deletes GL objects by id in whatever context is current: make it ours.
            if getattr(self, "_gl", None) is not None:
                self._gl.make_current()
            self._con.free()
            self._con = None
        if getattr(self, "_gl", None) is not None:
            self._gl.free()
            self._gl = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
