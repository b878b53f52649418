"""Scripted experts for the robosuite tasks: waypoint controllers over OSC_POSE delta actions.

Each expert reads object poses from the simulator, moves the gripper site through task waypoints with a
saturated proportional law on position and yaw (the gripper always points down), and adds noise for
diversity: per-episode waypoint offsets and speed, and Gaussian noise on every translation command.

Experts are agents (``reset()``, ``n_obs_steps = 1``, ``predict_action(obs) -> (1, 7)``) so the evaluation
runner and the collectors drive them like a policy. ``make_expert(env, seed)`` picks the expert of the env's task.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np

from envs.robosuite.env import ACTION_DIM, RobosuiteEnv, RobosuiteEnvError, task_name

ROT_SCALE = 0.5  # radians per unit of action[3:6] (OSC_POSE output_max); action[:3] is ±5 cm
OPEN, CLOSE = -1.0, 1.0


def _rotvec(R: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix (angle in [0, π])."""
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-6:  # angle ≈ π: axis from the symmetric part
        axis = np.sqrt(np.maximum((np.diag(R) + 1.0) / 2.0, 0.0))
        i = int(np.argmax(axis))
        axis = R[:, i] + np.eye(3)[i]
        norm = np.linalg.norm(axis)
    return axis / norm * angle


def _down_rotation(yaw: float) -> np.ndarray:
    """Gripper-site frame pointing down (z = −world z) with its finger-closing x axis at ``yaw`` in the table plane."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])  # columns: x, y, z


def _quat_xyzw_yaw(q: np.ndarray) -> float:
    """Yaw of an xyzw quaternion (rotation about world z)."""
    x, y, z, w = q
    return float(np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))


def _nearest_yaw(target: float, current: float, period: float) -> float:
    """The angle ``target + k·period`` closest to ``current``."""
    return current + (target - current + period / 2.0) % period - period / 2.0


class WaypointExpert:
    """Base class: a generator of actions over waypoints, replayed one action per :meth:`predict_action` call.

    Args:
        env: the environment the expert acts in (its simulator is read for poses).
        seed: seed of the expert's noise; reseeded per episode by :meth:`reset` with ``seed``.
        action_noise: std of Gaussian noise on the translation command (action units).
        waypoint_noise: scale of per-episode waypoint offsets (metres, ≈ std).
    """

    n_obs_steps = 1
    n_action_steps = 1

    def __init__(self, env: RobosuiteEnv, seed: int = 0, action_noise: float = 0.05, waypoint_noise: float = 0.004):
        self.env = env
        self.action_noise = float(action_noise)
        self.waypoint_noise = float(waypoint_noise)
        robot = env.robosuite_env.robots[0]
        self._site = robot.eef_site_id["right"]
        self._base_body = env.sim.model.body_name2id(robot.robot_model.root_body)
        self.reset(seed)

    # ------------------------------------------------------------------ agent API
    def reset(self, seed: int | None = None) -> None:
        """Forget the episode; the plan is made from the simulator at the first :meth:`predict_action`."""
        if seed is not None:
            self._seed = int(seed)
        self.rng = np.random.default_rng(self._seed)
        self.speed = float(self.rng.uniform(0.7, 1.0))
        self._plan: Iterator[np.ndarray] | None = None
        self._gripper = OPEN
        self.done = False

    def predict_action(self, obs: Any = None) -> np.ndarray:
        """Next action as a chunk of one, (1, 7). ``obs`` is unused: the expert reads the simulator."""
        if self._plan is None:
            self._plan = self.plan()
        try:
            action = next(self._plan)
        except StopIteration:
            self.done = True
            action = self._hold()
        return action.reshape(1, ACTION_DIM).astype(np.float32)

    def plan(self) -> Generator[np.ndarray, None, None]:
        """Yield the episode's actions (each (7,))."""
        raise NotImplementedError

    # ------------------------------------------------------------------ simulator reads
    def eef_pos(self) -> np.ndarray:
        return np.array(self.env.sim.data.site_xpos[self._site])

    def eef_rot(self) -> np.ndarray:
        return np.array(self.env.sim.data.site_xmat[self._site]).reshape(3, 3)

    def eef_yaw(self) -> float:
        x_axis = self.eef_rot()[:, 0]
        return float(np.arctan2(x_axis[1], x_axis[0]))

    def body_pos(self, body_id: int) -> np.ndarray:
        return np.array(self.env.sim.data.body_xpos[body_id])

    def body_yaw(self, body_id: int) -> float:
        q_wxyz = np.array(self.env.sim.data.body_xquat[body_id])
        return _quat_xyzw_yaw(np.r_[q_wxyz[1:], q_wxyz[0]])

    # ------------------------------------------------------------------ motion primitives
    def _action(
        self, target_pos: np.ndarray, yaw: float, gripper: float, gain: float = 12.0, rot_gain: float = 2.0
    ) -> np.ndarray:
        """Saturated P-law: translation ``gain`` action units per metre of error, rotation ``rot_gain`` per
        action-scale radian; the target orientation points the gripper down at ``yaw``."""
        base_R = np.array(self.env.sim.data.xmat[self._base_body]).reshape(3, 3)
        dpos = base_R.T @ (target_pos - self.eef_pos())
        a_pos = np.clip(gain * self.speed * dpos, -1.0, 1.0)
        if self.action_noise > 0:
            a_pos = np.clip(a_pos + self.rng.normal(0.0, self.action_noise, 3), -1.0, 1.0)
        rot_err = base_R.T @ _rotvec(_down_rotation(yaw) @ self.eef_rot().T)
        a_rot = np.clip(rot_gain * rot_err / ROT_SCALE, -1.0, 1.0)
        self._gripper = gripper
        return np.concatenate([a_pos, a_rot, [gripper]])

    def _hold(self) -> np.ndarray:
        return np.concatenate([np.zeros(6), [self._gripper]])

    def goto(
        self, target: Any, yaw: float, gripper: float, tol: float = 0.01, max_steps: int = 80, yaw_tol: float = 0.05
    ) -> Iterator[np.ndarray]:
        """Move the gripper site to ``target`` (array or callable returning one) and ``yaw``; stop within ``tol``."""
        for _ in range(max_steps):
            pos = target() if callable(target) else target
            err = np.linalg.norm(pos - self.eef_pos())
            yaw_err = abs(_nearest_yaw(yaw, self.eef_yaw(), 2 * np.pi) - self.eef_yaw())
            if err < tol and yaw_err < yaw_tol:
                return
            yield self._action(pos, yaw, gripper)

    def actuate(self, gripper: float, steps: int, yaw: float) -> Iterator[np.ndarray]:
        """Hold the current position for ``steps`` while the gripper opens or closes."""
        hold = self.eef_pos()
        for _ in range(steps):
            yield self._action(hold, yaw, gripper)

    def pick(
        self,
        grasp_point: Callable[[], np.ndarray],
        grasp_yaw: Callable[[], float],
        carry_height: float,
        held: Callable[[], bool],
        attempts: int = 3,
    ) -> Generator[np.ndarray, None, bool]:
        """Top-down grasp at ``grasp_point()`` with ``grasp_yaw()`` (re-read on every attempt), then rise to
        ``carry_height`` above the grasp; retry when ``held()`` says the object did not come along.
        A generator whose return value is whether the object is held."""
        for _ in range(attempts):
            grasp, yaw = grasp_point(), grasp_yaw()
            yield from self.goto(grasp + np.r_[0.0, 0.0, self.rng.uniform(0.07, 0.12)], yaw, OPEN, tol=0.008)
            # Settle the xy error just above the object before contact, then descend.
            yield from self.goto(grasp + np.r_[0.0, 0.0, 0.025], yaw, OPEN, tol=0.005, max_steps=40)
            yield from self.goto(grasp, yaw, OPEN, tol=0.005, max_steps=40)
            yield from self.actuate(CLOSE, int(self.rng.integers(8, 13)), yaw)
            yield from self.goto(np.r_[grasp[:2], grasp[2] + carry_height], yaw, CLOSE, tol=0.02)
            if held():
                return True
            yield from self.actuate(OPEN, 6, yaw)
        return False

    def jitter(self, scale: float = 1.0) -> np.ndarray:
        """A per-episode xy offset (metres) for a waypoint."""
        return np.r_[self.rng.normal(0.0, self.waypoint_noise * scale, 2), 0.0]


class LiftExpert(WaypointExpert):
    """Lift: grasp the cube from above with the fingers square to its faces, lift it 15 cm."""

    def plan(self) -> Generator[np.ndarray, None, None]:
        env = self.env.robosuite_env
        cube_id = env.cube_body_id
        table_z = env.model.mujoco_arena.table_offset[2]
        yield from self.pick(
            grasp_point=lambda: (
                self.body_pos(cube_id) + self.jitter() + np.r_[0.0, 0.0, self.rng.uniform(-0.005, 0.003)]
            ),
            grasp_yaw=lambda: _nearest_yaw(self.body_yaw(cube_id), self.eef_yaw(), np.pi / 2),
            carry_height=self.rng.uniform(0.12, 0.2),
            held=lambda: self.body_pos(cube_id)[2] > table_z + 0.04,
        )


class CanExpert(WaypointExpert):
    """PickPlaceCan: grasp the can from above, carry it over the bin wall and drop it into its bin quadrant."""

    def plan(self) -> Generator[np.ndarray, None, None]:
        env = self.env.robosuite_env
        can_id = env.obj_body_id[env.obj_to_use]
        rest_z = self.body_pos(can_id)[2]
        yaw = self.eef_yaw() + self.rng.uniform(-0.3, 0.3)
        carry_z = env.bin2_pos[2] + self.rng.uniform(0.22, 0.28)
        held = yield from self.pick(
            grasp_point=lambda: self.body_pos(can_id) + self.jitter() + np.r_[0.0, 0.0, self.rng.uniform(0.0, 0.015)],
            grasp_yaw=lambda: yaw,
            carry_height=carry_z - rest_z,
            held=lambda: self.body_pos(can_id)[2] > rest_z + 0.05,
        )
        if not held:
            return
        goal = self._drop_point(env) + self.jitter(2.5)[:2]
        yield from self.goto(np.r_[goal, carry_z], yaw, CLOSE, tol=0.015, max_steps=100)
        drop_z = env.bin2_pos[2] + self.rng.uniform(0.10, 0.13)
        yield from self.goto(np.r_[goal, drop_z], yaw, CLOSE, tol=0.015)
        yield from self.actuate(OPEN, int(self.rng.integers(6, 10)), yaw)
        yield from self.goto(np.r_[goal, carry_z], yaw, OPEN, tol=0.02)

    @staticmethod
    def _drop_point(env: Any) -> np.ndarray:
        """(x, y) inside the can's quadrant of the target bin (robosuite's ``not_in_bin`` geometry), off-centre
        towards the robot: the quadrant's centre is at the edge of the Panda's reach at carrying height."""
        bin_id = env.object_id
        low = np.array(env.bin2_pos[:2], dtype=float)
        if bin_id in (0, 2):
            low[0] -= env.bin_size[0] / 2
        if bin_id < 2:
            low[1] -= env.bin_size[1] / 2
        return low + np.array(env.bin_size[:2]) / 2 * np.array([0.35, 0.3])


class SquareExpert(WaypointExpert):
    """NutAssemblySquare: grasp the nut's handle, carry the nut over the square peg and lower it around the peg."""

    def plan(self) -> Generator[np.ndarray, None, None]:
        env = self.env.robosuite_env
        nut_id = env.obj_body_id["SquareNut"]
        handle_site = env.sim.model.site_name2id("SquareNut_handle_site")
        peg = self.body_pos(env.peg1_body_id)
        # Let the nut settle on the table (it is placed a few cm above it).
        yield from self.actuate(OPEN, 4, self.eef_yaw())
        table_z = env.table_offset[2]

        def grasp_point() -> np.ndarray:
            # A little outwards along the handle: at its middle a finger can land on the nut's ring.
            handle = np.array(env.sim.data.site_xpos[handle_site])
            out = np.r_[
                np.cos(self._handle_dir(nut_id, handle_site)), np.sin(self._handle_dir(nut_id, handle_site)), 0.0
            ]
            return handle + 0.008 * out + self.jitter(0.5) + np.r_[0.0, 0.0, self.rng.uniform(-0.004, 0.002)]

        carry_z = peg[2] + self.rng.uniform(0.2, 0.24)
        held = yield from self.pick(
            grasp_point=grasp_point,
            grasp_yaw=lambda: _nearest_yaw(self._handle_dir(nut_id, handle_site) + np.pi / 2, self.eef_yaw(), np.pi),
            carry_height=carry_z - table_z,
            held=lambda: self.body_pos(nut_id)[2] > table_z + 0.05,
        )
        if not held:
            return
        # Turn the handle to the side of the nut nearest the robot's reach (−x, ±y): the peg is far out.
        handle_dir = self._handle_dir(nut_id, handle_site)
        want_dir = min(
            (np.pi / 2, np.pi, -np.pi / 2), key=lambda d: abs(_nearest_yaw(d, handle_dir, 2 * np.pi) - handle_dir)
        )
        aim = self.jitter(0.5)[:2]
        yield from self._align_over_peg(nut_id, handle_site, peg[:2] + aim, want_dir, carry_z, tol=0.004, max_steps=150)
        drop_z = self.eef_pos()[2] - (self.body_pos(nut_id)[2] - (env.table_offset[2] + 0.02))
        yield from self._align_over_peg(nut_id, handle_site, peg[:2] + aim, want_dir, drop_z, tol=0.006, max_steps=80)
        yield from self.actuate(OPEN, int(self.rng.integers(6, 10)), self.eef_yaw())
        yield from self.goto(self.eef_pos() + np.r_[0.0, 0.0, 0.1], self.eef_yaw(), OPEN, tol=0.02)

    def _handle_dir(self, nut_id: int, handle_site: int) -> float:
        d = np.array(self.env.sim.data.site_xpos[handle_site]) - self.body_pos(nut_id)
        return float(np.arctan2(d[1], d[0]))

    def _align_over_peg(
        self, nut_id: int, handle_site: int, goal_xy: np.ndarray, want_dir: float, z: float, tol: float, max_steps: int
    ) -> Iterator[np.ndarray]:
        """Closed loop on the held nut: move the gripper by the nut centre's xy error and turn it by the
        handle's heading error until the nut is over ``goal_xy`` at gripper height ``z``."""
        for _ in range(max_steps):
            nut_err = goal_xy - self.body_pos(nut_id)[:2]
            dir_err = _nearest_yaw(want_dir, self._handle_dir(nut_id, handle_site), 2 * np.pi) - self._handle_dir(
                nut_id, handle_site
            )
            target = np.r_[self.eef_pos()[:2] + nut_err, z]
            if np.linalg.norm(nut_err) < tol and abs(dir_err) < 0.03 and abs(z - self.eef_pos()[2]) < 0.01:
                return
            yield self._action(target, self.eef_yaw() + dir_err, CLOSE)


EXPERTS: dict[str, type[WaypointExpert]] = {"lift": LiftExpert, "can": CanExpert, "square": SquareExpert}


def make_expert(env: RobosuiteEnv, seed: int = 0, **kwargs: Any) -> WaypointExpert:
    """The scripted expert for ``env.task``."""
    return EXPERTS[_expert_task(env.task)](env, seed=seed, **kwargs)


def _expert_task(task: str) -> str:
    name = task_name(task)
    if name not in EXPERTS:
        raise RobosuiteEnvError(f"no scripted expert for task '{task}'; experts exist for: {', '.join(EXPERTS)}")
    return name


class RobosuiteExpertAgent:
    """The scripted expert of ``task`` as an evaluation agent: picklable before it has an env, bound to each
    runner worker's env through :meth:`bind_env` (the expert plans from that env's simulator)."""

    n_obs_steps = 1

    def __init__(self, task: str, action_noise: float = 0.05) -> None:
        self.task = _expert_task(task)
        self.action_noise = float(action_noise)
        self._expert: WaypointExpert | None = None

    def bind_env(self, env: RobosuiteEnv) -> None:
        self._expert = make_expert(env, action_noise=self.action_noise)

    def _bound(self) -> WaypointExpert:
        if self._expert is None:
            raise RuntimeError("RobosuiteExpertAgent.bind_env(env) must be called before the agent acts")
        return self._expert

    def reset(self, seed: int | None = None) -> None:
        self._bound().reset(seed)

    def predict_action(self, obs: Any = None) -> np.ndarray:
        return self._bound().predict_action(obs)
