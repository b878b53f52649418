"""robosuite tasks (Lift, Can, Square) with robomimic's observation keys, on the current `mujoco` bindings.

A thin wrapper over ``robosuite.make``: Panda arm, OSC_POSE delta controller (robosuite 1.5 composite config),
two offscreen cameras, and the observation dict robomimic 0.3 datasets hold (its ``dataset_states_to_obs.py``
keeps ``object`` and every ``robot0_*`` observable: ``robot0_eef_pos``, ``robot0_eef_quat``, ``robot0_joint_pos``,
...), with images returned upright as (3, H, W) uint8. Success is the task's own ``_check_success()``.

robosuite draws from NumPy's global generator when it builds the model (Lift's cube size, for one) and at every
reset (object placements, joint noise). :class:`RobosuiteEnv` seeds that generator for the build (``model_seed``)
and for each reset (the episode seed) only, so a (model_seed, seed) pair gives one initial state in any process,
whatever ran before. Resets keep the model (robosuite's ``hard_reset=False``: a hard reset costs ~2 s here).

Exact replay, the way robomimic replays. robomimic's ``playback_dataset.py`` and ``dataset_states_to_obs.py`` rebuild
the simulator from the demo's ``model_file`` (``reset_from_xml_string``), call ``sim.reset()``, set ``states[0]``
and step the recorded actions. Two things make that differ from an episode that simply ran after ``env.reset()``:
the model printed to MJCF and read back has 6-digit floats, and robosuite's controllers keep the kinematics they
read at the (deterministic) reset pose until after the first physics substep. robosuite's ``DataCollectionWrapper``
records in that same situation, which is why its files replay exactly. This env does the same, cheaply: it runs on
the model read back from its own MJCF (rebuilt once, when built; reading it back again gives the same text), and
every :meth:`reset` ends as robomimic's ``reset_to`` leaves the simulator (a deterministic reset, ``sim.reset()``,
the seeded state set back). Observations are read after ``sim.forward()``, so they describe the stored state
exactly (what ``dataset_states_to_obs.py`` extracts), not one physics substep before it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import MfpError
from core.spec import ObsSpec, ShapeMeta

# robosuite picks its GL backend when first imported; headless machines need EGL (or osmesa).
os.environ.setdefault("MUJOCO_GL", "egl")

# robomimic observation keys.
AGENTVIEW_IMAGE = "agentview_image"
EYE_IN_HAND_IMAGE = "robot0_eye_in_hand_image"
EEF_POS = "robot0_eef_pos"
EEF_QUAT = "robot0_eef_quat"
EEF_QUAT_SITE = "robot0_eef_quat_site"
GRIPPER_QPOS = "robot0_gripper_qpos"
GRIPPER_QVEL = "robot0_gripper_qvel"
JOINT_POS = "robot0_joint_pos"
JOINT_POS_COS = "robot0_joint_pos_cos"
JOINT_POS_SIN = "robot0_joint_pos_sin"
JOINT_VEL = "robot0_joint_vel"
OBJECT = "object"
# robomimic 0.3's low-dim keys for one Panda under robosuite 1.5, sizes (robot0_eef_quat_site is float32 there).
ROBOT_KEY_DIMS = {
    EEF_POS: 3,
    EEF_QUAT: 4,
    EEF_QUAT_SITE: 4,
    GRIPPER_QPOS: 2,
    GRIPPER_QVEL: 2,
    JOINT_POS: 7,
    JOINT_POS_COS: 7,
    JOINT_POS_SIN: 7,
    JOINT_VEL: 7,
}
LOW_DIM_KEYS = (*ROBOT_KEY_DIMS, OBJECT)
ACTION_DIM = 7  # dx, dy, dz (±5 cm), axis-angle (±0.5 rad), gripper (-1 open, +1 close)

ROBOSUITE_ENV_TYPE = 1  # robomimic's EnvType.ROBOSUITE_TYPE, stored in env_args["type"]


@dataclass(frozen=True)
class TaskInfo:
    """A task this package can create: robosuite env name, evaluation horizon (robomimic's rollout lengths)
    and the length of robosuite's ``object-state`` (checked against the live env by the tests)."""

    env_name: str
    max_steps: int
    object_dim: int


TASKS: dict[str, TaskInfo] = {
    "lift": TaskInfo("Lift", 400, 10),
    "can": TaskInfo("PickPlaceCan", 400, 14),
    "square": TaskInfo("NutAssemblySquare", 400, 14),
}
TASK_PREFIX = "robomimic/"  # task names may be written robomimic/lift as in `mfp train task=robomimic/lift`


class RobosuiteEnvError(MfpError, ValueError):
    """Bad task name, camera, action or state for a robosuite environment."""


def task_info(task: str) -> TaskInfo:
    """Look up a task by our short name (``lift``, ``robomimic/lift``) or robosuite's env name (``Lift``)."""
    task = task[len(TASK_PREFIX) :] if task.startswith(TASK_PREFIX) else task
    if task in TASKS:
        return TASKS[task]
    for info in TASKS.values():
        if info.env_name == task:
            return info
    known = ", ".join(f"{k} ({v.env_name})" for k, v in TASKS.items())
    raise RobosuiteEnvError(f"unknown robosuite task '{task}'; known: {known}")


def is_robosuite_task(task: str) -> bool:
    """True for a task this module builds (``lift``, ``robomimic/can``, ``NutAssemblySquare``, ...)."""
    try:
        task_info(task)
    except RobosuiteEnvError:
        return False
    return True


def env_kwargs_from_shape_meta(shape_meta: ShapeMeta) -> dict[str, Any]:
    """:class:`RobosuiteEnv` arguments (cameras, image size) that produce the observations ``shape_meta`` declares."""
    cameras, sizes = [], set()
    for key, spec in shape_meta.obs.items():
        if spec.type != "rgb":
            continue
        if not key.endswith("_image") or spec.shape[1] != spec.shape[2]:
            raise RobosuiteEnvError(
                f"'{key}' {spec.shape}: robosuite images are '<camera>_image' keys, square (3, H, W)"
            )
        cameras.append(key[: -len("_image")])
        sizes.add(spec.shape[1])
    if len(sizes) > 1:
        raise RobosuiteEnvError(f"image keys of different sizes {sorted(sizes)} are not supported")
    return {"cameras": tuple(cameras), "image_size": sizes.pop() if sizes else 84}


def task_name(task: str) -> str:
    """Our short name for ``task`` given either form."""
    info = task_info(task)
    return next(k for k, v in TASKS.items() if v is info)


def robosuite_shape_meta(
    task: str, image_size: int = 84, cameras: Sequence[str] = ("agentview", "robot0_eye_in_hand")
) -> ShapeMeta:
    """The :class:`ShapeMeta` of :class:`RobosuiteEnv` observations without building the simulator."""
    info = task_info(task)
    specs: dict[str, ObsSpec] = {}
    for cam in cameras:
        specs[f"{cam}_image"] = ObsSpec(f"{cam}_image", "rgb", (3, image_size, image_size))
    dims = {**ROBOT_KEY_DIMS, OBJECT: info.object_dim}
    for key in LOW_DIM_KEYS:
        specs[key] = ObsSpec(key, "low_dim", (dims[key],))
    return ShapeMeta(obs=specs, action_dim=ACTION_DIM)


def _import_robosuite() -> Any:
    try:
        import robosuite
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "robosuite is needed for the robomimic tasks: pip install 'meanflow-policy[robomimic]'"
        ) from e
    return robosuite


def default_controller_config() -> dict[str, Any]:
    """Panda's robosuite 1.5 composite controller config: BASIC with an OSC_POSE delta arm and a GRIP gripper."""
    from robosuite.controllers import load_composite_controller_config

    cfg = load_composite_controller_config(robot="Panda")
    arm = cfg["body_parts"]["right"]
    if arm["type"] != "OSC_POSE" or arm["input_type"] != "delta":
        raise RobosuiteEnvError(
            f"robosuite's default Panda controller is {arm['type']}/{arm['input_type']}, "
            "expected OSC_POSE/delta; pass controller_configs explicitly"
        )
    return cfg


@contextmanager
def _global_numpy_seed(seed: int | None) -> Iterator[None]:
    """Seed NumPy's global generator inside the block and restore its previous state afterwards."""
    if seed is None:
        yield
        return
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


class RobosuiteEnv:
    """One robosuite task with robomimic observations.

    Args:
        task: ``lift``, ``can`` or ``square`` (or robosuite's ``Lift``, ``PickPlaceCan``, ``NutAssemblySquare``).
        image_size: height and width of every camera image.
        cameras: robosuite camera names; each gives the key ``<camera>_image``. Empty for a state-only env.
        seed: seed of the first :meth:`reset` (later resets without a seed continue from ``seed + n``).
        model_seed: seed of the model build (object sizes); keep it fixed to compare episodes across processes.
        max_episode_steps: episode length for evaluation; defaults to the task's robomimic horizon.
        fast_render: turn off shadows and reflections (≈4× faster on a CPU renderer); the images then differ
            from robosuite's defaults, so keep the same setting for collection and evaluation.
        controller_configs: robosuite controller config; Panda's OSC_POSE delta default when ``None``.
    """

    def __init__(
        self,
        task: str = "lift",
        image_size: int = 84,
        cameras: Sequence[str] = ("agentview", "robot0_eye_in_hand"),
        seed: int = 0,
        max_episode_steps: int | None = None,
        fast_render: bool = True,
        controller_configs: Mapping[str, Any] | None = None,
        model_seed: int = 0,
    ) -> None:
        robosuite = _import_robosuite()
        info = task_info(task)
        self.task = task_name(task)
        self.env_name = info.env_name
        self.max_episode_steps = int(max_episode_steps or info.max_steps)
        self.image_size = int(image_size)
        self.cameras = tuple(cameras)
        self.fast_render = bool(fast_render)
        self._next_seed = int(seed)
        self.model_seed = int(model_seed)
        if self.image_size <= 0:
            raise RobosuiteEnvError(f"image_size must be positive, got {image_size}")

        use_cameras = len(self.cameras) > 0
        self.env_kwargs: dict[str, Any] = dict(
            robots="Panda",
            controller_configs=dict(controller_configs) if controller_configs else default_controller_config(),
            has_renderer=False,
            has_offscreen_renderer=use_cameras,
            ignore_done=True,
            use_object_obs=True,
            use_camera_obs=use_cameras,
            camera_depths=False,
            camera_names=list(self.cameras) if use_cameras else "agentview",
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            reward_shaping=False,
            control_freq=20,
            hard_reset=False,
        )
        try:
            with _global_numpy_seed(self.model_seed):
                self._env = robosuite.make(info.env_name, **self.env_kwargs)
        except (AssertionError, ValueError) as e:
            raise RobosuiteEnvError(
                f"robosuite could not build '{info.env_name}' with cameras {self.cameras}: {e}"
            ) from e
        self._steps = 0
        self._obs_cache: dict[str, np.ndarray] | None = None
        self._quiet = False  # True while robosuite resets inside this env: their observations are not read
        self._observe_after_forward()
        self._xml = ""  # the MJCF (after robosuite's edit_model_xml) the simulator was last built from
        self._rebuild(self.sim.model.get_xml())  # the model robomimic rebuilds from the stored model_file

    # ------------------------------------------------------------------ robosuite access
    @property
    def sim(self) -> Any:
        """The robosuite ``MjSim`` (scripted experts read object poses from it)."""
        return self._env.sim

    @property
    def robosuite_env(self) -> Any:
        """The wrapped robosuite environment."""
        return self._env

    # ------------------------------------------------------------------ spec
    action_dim = ACTION_DIM

    @property
    def obs_keys(self) -> list[str]:
        """Every key this env returns, in order."""
        return [f"{cam}_image" for cam in self.cameras] + list(LOW_DIM_KEYS)

    def shape_meta(self) -> ShapeMeta:
        """rgb keys (3, H, W) for each camera, then the low-dim keys, action dim 7."""
        obs = self._observation() if self._obs_cache is None else self._obs_cache
        specs: dict[str, ObsSpec] = {}
        for cam in self.cameras:
            key = f"{cam}_image"
            specs[key] = ObsSpec(key, "rgb", obs[key].shape)
        for key in LOW_DIM_KEYS:
            specs[key] = ObsSpec(key, "low_dim", obs[key].shape)
        return ShapeMeta(obs=specs, action_dim=ACTION_DIM)

    # ------------------------------------------------------------------ episode
    def reset(
        self, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode from the initial state that ``seed`` determines; returns ``(obs, info)``.
        ``options`` is accepted for the gymnasium signature and unused."""
        if seed is None:
            seed = self._next_seed
        self._next_seed = int(seed) + 1
        with _global_numpy_seed(int(seed)), self._unobserved():
            self._env.reset()
        obs = self._restore(self.flat_state())
        return obs, {"seed": int(seed), "success": self.is_success()}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply one OSC_POSE delta action (7,); returns ``(obs, reward, terminated, truncated, info)``.

        ``terminated`` is task success; ``truncated`` is ``max_episode_steps`` reached. ``info["success"]`` as well.
        """
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise RobosuiteEnvError(f"action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise RobosuiteEnvError(f"action contains NaN or inf: {a}")
        self._make_gl_current()
        self._env.step(np.clip(a, -1.0, 1.0))
        self._steps += 1
        obs = self._forwarded_observation()
        success = self.is_success()
        reward = self.reward()
        return obs, reward, success, self._steps >= self.max_episode_steps, {"success": success}

    def is_success(self) -> bool:
        """The task's own success check."""
        result = self._env._check_success()
        if isinstance(result, dict):
            result = result["task"]
        return bool(result)

    def reward(self) -> float:
        """robosuite's reward for the current state (sparse: 1 on success)."""
        return float(self._env.reward())

    # ------------------------------------------------------------------ simulator state
    def get_state(self) -> dict[str, Any]:
        """``{"states": flattened MuJoCo state (time, qpos, qvel), "model": MJCF xml}`` as robomimic stores them."""
        return {"states": self.flat_state(), "model": self.sim.model.get_xml()}

    def flat_state(self) -> np.ndarray:
        """The flattened MuJoCo state alone (one row of a demo's ``states``)."""
        return np.array(self.sim.get_state().flatten())

    def reset_to(self, state: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Restore a state from :meth:`get_state` or an HDF5 demo (``states`` and optional ``model``); returns obs.

        As robomimic's ``reset_to``. With ``model`` (a demo's ``model_file``, for its first state) the simulator is
        rebuilt from that MJCF (skipped when it is the one this env already runs on: the same simulator) and left as
        at the start of a recorded episode, so stepping the demo's actions from there reproduces its ``states``.
        Without it only the state is set (cheap: for reading the observation of each stored state)."""
        if "states" not in state:
            raise RobosuiteEnvError(f"reset_to needs a 'states' entry; got keys {sorted(state)}")
        flat = np.asarray(state["states"], dtype=np.float64).reshape(-1)
        expected = self.flat_state().shape[0]
        if flat.shape[0] != expected:
            raise RobosuiteEnvError(
                f"state of length {flat.shape[0]} does not fit {self.env_name} (expects {expected}: time, qpos, qvel); "
                "was it recorded on another task or robosuite version?"
            )
        if state.get("model") is None:
            self.sim.set_state_from_flattened(flat)
            self.sim.forward()
            self._steps = 0
            return self._observation()
        xml = state["model"]
        self._rebuild(xml.decode() if isinstance(xml, bytes) else str(xml))
        return self._restore(flat)

    def _rebuild(self, xml: str) -> None:
        """Build the simulator from MJCF text as robomimic does (``edit_model_xml`` maps asset paths to this
        install); the same text again keeps the simulator, which is then the same one."""
        edited = self._env.edit_model_xml(xml)
        if edited == self._xml:
            return
        with self._unobserved():
            self._env.reset_from_xml_string(edited)
        self._xml = edited
        self._configure_renderer()

    def _restore(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Leave the simulator as robomimic's ``reset_to`` and robosuite's ``DataCollectionWrapper`` do before the
        first recorded action: robosuite's deterministic reset (robot at its nominal pose, controllers rebuilt there,
        the state of a fresh ``reset_from_xml_string``), ``sim.reset()``, then ``flat`` set and forwarded."""
        self._env.deterministic_reset = True
        try:
            with self._unobserved():
                self._env.reset()
        finally:
            self._env.deterministic_reset = False
        self._reset_gripper_commands()
        self.sim.reset()
        self.sim.set_state_from_flattened(flat)
        self.sim.forward()
        self._configure_renderer()
        self._steps = 0
        return self._observation()

    # ------------------------------------------------------------------ rendering / metadata
    def render(self, camera: str = "agentview", size: int = 256) -> np.ndarray:
        """An upright (H, W, 3) uint8 frame for videos (any camera of the model)."""
        if not self.cameras:
            raise RobosuiteEnvError("render() needs an offscreen renderer: build the env with at least one camera")
        self._make_gl_current()
        frame = self.sim.render(camera_name=camera, width=size, height=size)
        return np.ascontiguousarray(self._upright(frame))

    def env_args(self) -> dict[str, Any]:
        """robomimic's ``env_args``: env_name, env_version, type=1 (robosuite) and the ``robosuite.make`` kwargs."""
        robosuite = _import_robosuite()
        return {
            "env_name": self.env_name,
            "env_version": robosuite.__version__,
            "type": ROBOSUITE_ENV_TYPE,
            "env_kwargs": json.loads(json.dumps(self.env_kwargs)),
            "fast_render": self.fast_render,
            "model_seed": self.model_seed,
        }

    @classmethod
    def from_env_args(
        cls,
        env_args: Mapping[str, Any] | str,
        image_size: int | None = None,
        cameras: Sequence[str] | None = None,
        seed: int = 0,
        fast_render: bool | None = None,
    ) -> RobosuiteEnv:
        """Rebuild the environment a robomimic dataset was recorded in (its ``data.attrs["env_args"]``).

        Cameras and image size default to the dataset's; ``fast_render`` to ours when the file says nothing
        (robomimic's public datasets were rendered with robosuite's defaults: pass ``fast_render=False``).
        """
        args = json.loads(env_args) if isinstance(env_args, str) else dict(env_args)
        if args.get("type", ROBOSUITE_ENV_TYPE) != ROBOSUITE_ENV_TYPE:
            raise RobosuiteEnvError(f"env_args type {args.get('type')} is not robosuite ({ROBOSUITE_ENV_TYPE})")
        if "env_name" not in args:
            raise RobosuiteEnvError(f"env_args has no 'env_name'; got keys {sorted(args)}")
        kwargs = args.get("env_kwargs", {})
        robots = kwargs.get("robots", "Panda")
        if (robots if isinstance(robots, str) else list(robots)) not in ("Panda", ["Panda"]):
            raise RobosuiteEnvError(f"env_args robots {robots!r}: only the single-Panda tasks are supported")
        controller = kwargs.get("controller_configs")
        if controller is not None:
            from robosuite.controllers.composite.composite_controller_factory import (
                refactor_composite_controller_config,
            )

            # robosuite <= 1.4 datasets (robomimic v0.1) store a bare arm config: wrap it as 1.5 expects.
            controller = refactor_composite_controller_config(dict(controller), "Panda", ["right"])
        if cameras is None:
            names = kwargs.get("camera_names", []) if kwargs.get("use_camera_obs", True) else []
            cameras = [names] if isinstance(names, str) else list(names)
        if image_size is None:
            heights = kwargs.get("camera_heights", 84)
            image_size = int(heights[0] if isinstance(heights, (list, tuple)) else heights)
        if fast_render is None:
            fast_render = bool(args.get("fast_render", True))
        return cls(
            task=args["env_name"],
            image_size=image_size,
            cameras=cameras,
            seed=seed,
            fast_render=fast_render,
            controller_configs=controller,
            model_seed=int(args.get("model_seed", 0)),
        )

    def close(self) -> None:
        """Free the simulator and its render context."""
        self._env.close()

    # ------------------------------------------------------------------ internals
    def _configure_renderer(self) -> None:
        ctx = getattr(self.sim, "_render_context_offscreen", None)
        if ctx is None or not self.fast_render:
            return
        import mujoco

        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def _reset_gripper_commands(self) -> None:
        # robosuite's grippers integrate their command (speed-limited) and a soft reset keeps it, so an episode
        # would start with the previous episode's last gripper command.
        for robot in self._env.robots:
            for gripper in robot.gripper.values():
                if hasattr(gripper, "current_action"):
                    gripper.current_action = np.zeros(gripper.dof)

    def _make_gl_current(self) -> None:
        # robosuite binds its GL context once; another renderer in this process (a second env, a video
        # renderer) leaves its own context current and robosuite would then read garbage pixels.
        ctx = getattr(self.sim, "_render_context_offscreen", None)
        if ctx is not None:
            ctx.gl_ctx.make_current()

    @staticmethod
    def _upright(frame: np.ndarray) -> np.ndarray:
        from robosuite import macros

        return frame[::-1] if macros.IMAGE_CONVENTION == "opengl" else frame

    @contextmanager
    def _unobserved(self) -> Iterator[None]:
        """robosuite's own resets render and compute every observable; inside this block they skip that (the
        observation is read once, after the state is final)."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def _observe_after_forward(self) -> None:
        """robosuite samples its observables inside every ``step``, before the state is forwarded; this env reads
        them once per step, after ``sim.forward()`` (:meth:`_observation`), so the inner sampling is skipped (one
        camera render per step, as before)."""
        update = self._env._update_observables

        def update_when_forced(force: bool = False) -> None:
            if force and not self._quiet:
                update(force=True)

        self._env._update_observables = update_when_forced

    def _forwarded_observation(self) -> dict[str, np.ndarray]:
        """The observation of the state a step left: ``sim.forward()`` first (a step leaves MuJoCo's derived
        positions one physics substep behind ``qpos``), with the solver's warm start kept, so the next step runs
        exactly as it would have (robomimic's playback does not forward between steps)."""
        warmstart = self.sim.data.qacc_warmstart.copy()
        self.sim.forward()
        self.sim.data.qacc_warmstart[:] = warmstart
        return self._observation()

    def _observation(self) -> dict[str, np.ndarray]:
        """robomimic's keys from robosuite's observables of the current (forwarded) state; images (3, H, W) uint8
        upright, low-dim arrays with robosuite's dtypes (float64; ``robot0_eef_quat_site`` float32)."""
        self._make_gl_current()
        raw = self._env._get_observations(force_update=True)
        obs: dict[str, np.ndarray] = {}
        for cam in self.cameras:
            key = f"{cam}_image"
            img = self._upright(raw[key])  # (H, W, 3)
            obs[key] = np.ascontiguousarray(img.transpose(2, 0, 1))  # (3, H, W)
        for key in ROBOT_KEY_DIMS:
            obs[key] = np.array(raw[key])
        obs[OBJECT] = np.array(raw["object-state"])
        self._obs_cache = obs
        return obs
