"""The `Robot` interface the control loop talks to, and `BridgeRobot`, its implementation over the robot bridge.

A real arm's driver process serves the bridge protocol (``docs/robot_protocol.md``); the simulated arm
(:mod:`deploy.sim_arm`) serves the same protocol, so the loop cannot tell them apart.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import MfpError
from deploy.bridge import DEFAULT_ADDRESS, BridgeClient, BridgeTimeout, RemoteError
from deploy.protocol import Message, ProtocolError
from deploy.safety import SafetyLimits


class RobotError(MfpError, RuntimeError):
    """The robot refused a command or answered something unusable."""


class RobotConnectionError(RobotError):
    """The robot stopped answering: the loop must stop."""


@dataclass(frozen=True)
class RobotInfo:
    """What a robot says about itself when the loop connects."""

    name: str
    action_dim: int
    control_hz: float
    obs: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {"dtype": str, "shape": [..]}


class Robot(ABC):
    """What the control loop needs from an arm. Timestamps are ``time.monotonic()`` seconds of this process."""

    info: RobotInfo

    @abstractmethod
    def get_observation(self) -> tuple[float, dict[str, np.ndarray]]:
        """The latest observation and the time it was captured."""

    @abstractmethod
    def send_action(self, timestamp: float, action: np.ndarray) -> None:
        """Command ``action`` (Da,), scheduled for ``timestamp``."""

    @abstractmethod
    def hold(self, reason: str = "") -> None:
        """Stop and keep the current pose until the next action."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (the arm keeps holding)."""


class BridgeRobot(Robot):
    """A robot reached through the ZeroMQ/msgpack bridge (client side)."""

    def __init__(self, address: str = DEFAULT_ADDRESS, timeout_s: float = 1.0, allow_remote: bool = False) -> None:
        self._client = BridgeClient(address, timeout_s=timeout_s, allow_remote=allow_remote)
        self.last_info: dict[str, Any] = {}
        self._clock_offset = 0.0  # robot clock minus ours, from the latest reply (one-way latency ignored)
        reply = self._request("hello", client="meanflow-policy")
        self.info = RobotInfo(reply["robot"], reply["action_dim"], reply["control_hz"], reply["obs"])

    @property
    def address(self) -> str:
        return self._client.address

    def _request(self, type_: str, **fields: Any) -> Message:
        try:
            return self._client.request(type_, **fields)
        except BridgeTimeout as e:
            raise RobotConnectionError(f"robot connection lost: {e}") from e
        except RemoteError as e:
            raise RobotError(f"robot at {self.address} refused '{type_}': {e.remote_message} ({e.code})") from e
        except ProtocolError as e:
            raise RobotError(f"robot at {self.address} sent an invalid reply to '{type_}': {e}") from e

    def get_observation(self) -> tuple[float, dict[str, np.ndarray]]:
        reply = self._request("get_obs")
        received = time.monotonic()
        self.last_info = reply["info"]
        self._clock_offset = reply["now"] - received
        # Place the capture on our clock: the reply says how long ago (on the robot's clock) it was captured.
        return received - (reply["now"] - reply["timestamp"]), reply["obs"]

    def send_action(self, timestamp: float, action: np.ndarray) -> None:
        self._request(
            "action", timestamp=float(timestamp) + self._clock_offset, action=np.asarray(action, dtype=np.float64)
        )

    def hold(self, reason: str = "") -> None:
        self._request("hold", reason=reason)

    def close(self) -> None:
        try:
            self._client.request("bye")
        except (BridgeTimeout, RemoteError, ProtocolError):
            pass  # closing a connection to a robot that is already gone is not an error
        self._client.close()


def check_compatible(policy: Any, robot_info: RobotInfo, limits: SafetyLimits) -> None:
    """Raise ValueError naming every mismatch between policy, robot and limits."""
    problems = []
    for key, spec in policy.shape_meta.obs.items():
        have = robot_info.obs.get(key)
        if have is None:
            problems.append(f"the robot sends no '{key}' (it sends {sorted(robot_info.obs)})")
        elif tuple(have["shape"]) != tuple(spec.shape):
            problems.append(f"'{key}' has shape {tuple(have['shape'])} on the robot, {tuple(spec.shape)} in the policy")
    da = policy.shape_meta.action_dim
    if robot_info.action_dim != da:
        problems.append(f"the robot takes {robot_info.action_dim} action dims, the policy outputs {da}")
    if limits.action_dim != da:
        problems.append(f"limits '{limits.name}' describe {limits.action_dim} action dims, the policy outputs {da}")
    if limits.position_key not in robot_info.obs:
        problems.append(
            f"limits '{limits.name}' read the position from '{limits.position_key}', which the robot does not send"
        )
    if problems:
        raise ValueError("policy, robot and limits do not match: " + "; ".join(problems))
