"""The split point every multimodal task shares: a corner of the workspace (the mocap's position limits).

Why a corner. Closed-loop MSE regression escapes a split in free space: at the split it outputs the mean of the
strategies plus a little bias, the bias moves the hand, and one step later the state already looks like one
strategy's, which regression then follows. In a corner of the mocap box the mocap is clamped: an action that
pushes into the limits moves nothing. Each strategy leaves the corner along its own limit while pushing into the
others harder than it moves (:data:`ALONG` < :data:`HUG`), so the mean of the strategies, plus any bias smaller
than the margin, pushes into every limit, and the state does not change at all.

Why a pause. The state at the split must be the same in every demonstration (no randomness left that a regressor
could tie to the strategy of each demo), and the state a regressor stalls in must be that very state, history
included. The hand approaches with its gripper closing, and in the corner opens it while the arm comes to rest;
the strategies leave once the opening has read fully open (it saturates at 1) in the last two observations, by
when the arm is at rest: from exactly the two-step history that a policy stuck in the corner keeps seeing.
"""

from __future__ import annotations

import numpy as np

APPROACH = 0.02  # the hand is on its way to the corner while farther than this from its vertical limit, metres
AT = 0.03  # the hand is in the corner horizontally within this distance of both limits
OPEN = 0.999  # gripper opening that ends the pause
ALONG, HUG = 0.25, 1.0  # action along a limit near the corner, and into the limits
NEAR = 0.02  # how far from the corner the strategies move at ALONG (farther they move at full speed)


class Corner:
    """The corner ``limits`` (3,) of the mocap box on the side given by ``signs`` (3,) (-1: the lower limit of an
    axis, +1: the upper one). The hand arrives along ``arrival_axis`` last, and every strategy keeps hugging that
    limit on its first leg, so the approach (away from it) never looks like a strategy."""

    def __init__(self, limits: np.ndarray, signs: np.ndarray, arrival_axis: int = 2) -> None:
        self.limits = np.asarray(limits, dtype=np.float64)
        self.signs = np.asarray(signs, dtype=np.float64)
        self.arrival_axis = int(arrival_axis)
        self.other_axes = [a for a in range(3) if a != self.arrival_axis]

    def depth(self, hand: np.ndarray) -> np.ndarray:
        """(3,) distance of the hand from each limit, into the box (about 0 in the corner)."""
        return self.signs * (self.limits - np.asarray(hand)[:3])

    def inside(self, hand: np.ndarray) -> bool:
        """The hand is at the two limits other than the arrival axis's (it may still be on its way along it)."""
        return bool(np.max(self.depth(hand)[self.other_axes]) < AT)

    def approach(self, state: np.ndarray, prev: np.ndarray) -> np.ndarray | None:
        """The shared opening of every strategy, from the current and the previous full state, or None once it is
        over: with the gripper closing, push into the two other limits, then move along the arrival axis into its
        limit; there, open the gripper while pushing into all three limits until it has read fully open twice."""
        hand = state[:3]
        if self.depth(hand)[self.arrival_axis] > APPROACH:
            action = self.signs * HUG
            if not self.inside(hand):
                action[self.arrival_axis] = 0.0
            return np.append(action, 1.0).astype(np.float32)
        if self.inside(hand) and min(state[3], prev[3]) < OPEN:
            return np.append(self.signs * HUG, -1.0).astype(np.float32)
        return None

    def along(self, hand: np.ndarray, axis: int, gripper: float = -1.0) -> np.ndarray:
        """Move away from the corner along ``axis`` (slowly near it), pushing into the other two limits."""
        action = self.signs * HUG
        action[axis] = -self.signs[axis] * (ALONG if self.depth(hand)[axis] < NEAR else 1.0)
        return np.append(action, gripper).astype(np.float32)
