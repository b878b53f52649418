"""Safety layer: whatever the input, no command leaving it breaks a bound, the box, or a velocity/accel/jerk limit,
also measured from where a simulated arm that lags, overshoots, is pushed and is reset actually is."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.safety import SafetyError, SafetyLayer, SafetyLimits

ROBOT_DIR = Path(__file__).resolve().parents[1] / "configs" / "robot"


def _limits(command: str, V: float, A: float, J: float, half_box: float, scale: float = 0.01, **extra) -> SafetyLimits:
    return SafetyLimits.from_dict(
        {
            **extra,
            "name": "test_arm",
            "command": command,
            "action_dim": 3,
            "lower": [-1.0, -1.0, -1.0] if command == "delta" else [-half_box, -half_box, -1.0],
            "upper": [1.0, 1.0, 1.0] if command == "delta" else [half_box, half_box, 1.0],
            "delta_scale": scale,
            "position_dims": [0, 1],
            "workspace": {"lower": [-half_box, -half_box], "upper": [half_box, half_box]},
            "max_velocity": [V, V],
            "max_acceleration": [A, A],
            "max_jerk": [J, J],
            "position_key": "agent_pos",
            "position_index": [0, 1],
        }
    )


def _check_trajectory(layer: SafetyLayer, q0: np.ndarray, outputs: list[np.ndarray]) -> None:
    """Reconstruct commanded positions from the outputs and check every limit by finite differences."""
    lim, dt = layer.limits, layer.dt
    pd = list(lim.position_dims)
    out = np.array(outputs)  # (T, Da)
    assert np.isfinite(out).all()
    assert (out >= lim.lower - 1e-12).all() and (out <= lim.upper + 1e-12).all()
    if lim.command == "delta":
        q = q0 + np.cumsum(lim.delta_scale * out[:, pd], axis=0)
    else:
        q = out[:, pd]
    q = np.concatenate([q0[None], q0[None], q0[None], q], axis=0)  # at rest before the first command
    box_tol = 1e-9
    assert (q >= lim.workspace_lower - box_tol).all() and (q <= lim.workspace_upper + box_tol).all()
    rounding = 1e-12 * (1 + np.abs(q).max())
    v = np.diff(q, axis=0) / dt
    a = np.diff(v, axis=0) / dt
    j = np.diff(a, axis=0) / dt
    assert (np.abs(v) <= lim.max_velocity * (1 + 1e-6) + rounding / dt).all(), np.abs(v).max(0)
    assert (np.abs(a) <= lim.max_acceleration * (1 + 1e-6) + 2 * rounding / dt**2).all(), np.abs(a).max(0)
    assert (np.abs(j) <= lim.max_jerk * (1 + 1e-6) + 4 * rounding / dt**3).all(), np.abs(j).max(0)


COMMANDS = st.lists(
    st.lists(st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, 1.0, -1.0, 1e9, -1e9])), min_size=3, max_size=3),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    command=st.sampled_from(["delta", "absolute"]),
    V=st.floats(0.05, 3.0),
    A=st.floats(0.5, 50.0),
    J=st.floats(5.0, 1e4),
    hz=st.sampled_from([10.0, 50.0, 100.0, 1000.0]),
    half_box=st.floats(0.05, 2.0),
    start=st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=2),
    commands=COMMANDS,
)
def test_no_output_exceeds_any_limit(command, V, A, J, hz, half_box, start, commands):
    limits = _limits(command, V, A, J, half_box)
    layer = SafetyLayer(limits, dt=1.0 / hz)
    q0 = np.asarray(start) * half_box
    layer.reset(q0)
    outputs = [layer.filter(np.asarray(c)) for c in commands]
    _check_trajectory(layer, q0, outputs)


@settings(max_examples=40, deadline=None)
@given(bad=st.sampled_from([np.nan, np.inf, -np.inf]), where=st.integers(0, 2))
def test_non_finite_commands_raise(bad, where):
    layer = SafetyLayer(_limits("delta", 0.5, 10.0, 500.0, 0.5), dt=0.02)
    layer.reset(np.zeros(2))
    cmd = np.zeros(3)
    cmd[where] = bad
    with pytest.raises(SafetyError, match="NaN or inf"):
        layer.filter(cmd)


def test_smooth_commands_pass_unchanged_and_the_wall_is_approached_without_a_jolt():
    layer = SafetyLayer(_limits("delta", 0.5, 20.0, 2000.0, 0.3), dt=0.02)
    layer.reset(np.zeros(2))
    small = np.array([0.05, -0.05, 0.7])
    np.testing.assert_allclose(layer.filter(small), small)
    # Push towards +x forever: the arm must slow down and stop at the wall, not overshoot it.
    outputs = [layer.filter(np.array([1.0, 0.0, 0.0])) for _ in range(200)]
    q, v, _ = layer.state
    assert q[0] == pytest.approx(0.3, abs=2e-3) and abs(v[0]) < 1e-3
    _check_trajectory(layer, np.zeros(2), [small] + outputs)


def test_shipped_robot_files_load_and_bad_files_say_what_is_wrong(tmp_path):
    for path in sorted(ROBOT_DIR.glob("*.yaml")):
        limits = SafetyLimits.from_yaml(path)
        assert limits.action_dim == len(limits.lower)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncommand: teleport\n")
    with pytest.raises(SafetyError, match="missing key"):
        SafetyLimits.from_yaml(bad)
    with pytest.raises(SafetyError, match="does not exist"):
        SafetyLimits.from_yaml(tmp_path / "none.yaml")


def test_reset_outside_the_box_is_refused():
    layer = SafetyLayer(_limits("absolute", 1.0, 10.0, 100.0, 0.5), dt=0.02)
    with pytest.raises(SafetyError, match="outside the workspace box"):
        layer.reset(np.array([0.6, 0.0]))


# ---------------------------------------------------------------------------------------------- a measured arm
@dataclass
class Arm:
    """A position-controlled arm: each period it covers ``gain`` of the way to the target it was asked for (< 1 lags,
    > 1 overshoots, 0 is stuck); the test pushes it and resets it."""

    q: np.ndarray
    gain: float

    def step(self, target: np.ndarray) -> None:
        self.q = self.q + self.gain * (target - self.q)


@dataclass
class Tick:
    measured: np.ndarray
    target: np.ndarray  # where the command asks the arm to be one period later
    events: list = field(default_factory=list)


def _drive(layer: SafetyLayer, arm: Arm, commands, holds=frozenset(), pushes=None, resets=None) -> list[Tick]:
    """The control loop's use of the layer against ``arm``: filter (or brake / hold on ``holds`` ticks), send, step,
    then the test's disturbances. Returns what each command asked from where the arm was measured."""
    lim = layer.limits
    pd = list(lim.position_dims)
    pushes, resets = pushes or {}, resets or {}
    ticks = []
    layer.reset(arm.q)
    for k, command in enumerate(commands):
        measured = arm.q.copy()
        out, refused = None, False
        if not (k in holds and layer.at_rest):
            try:
                out = layer.brake(measured) if k in holds else layer.filter(np.asarray(command), measured, float(k))
            except SafetyError:  # refused (an absolute arm pushed beyond its bounds): the loop holds
                out, refused = layer.brake(measured), True
            refused = refused or out is None
        if out is None:
            layer.settle(measured)  # the robot's own hold: stay where it is
            target, events = measured.copy(), (["refused"] if refused else [])
        else:
            assert np.isfinite(out).all()
            assert (out >= lim.lower - 1e-12).all() and (out <= lim.upper + 1e-12).all(), out
            target = measured + lim.delta_scale * out[pd] if lim.command == "delta" else out[pd]
            events = list(layer.events)
        ticks.append(Tick(measured, target, events))
        arm.step(target)
        if k in pushes:
            arm.q = arm.q + pushes[k]
        if k in resets:
            arm.q = resets[k].copy()
    return ticks


def _check_from_measured(layer: SafetyLayer, ticks: list[Tick]) -> None:
    """No command asks the arm, from where it was measured, to leave the box (or go further out) or to exceed the
    velocity limit; the asked velocities respect the acceleration and jerk limits on every tick that is not a
    logged workspace clip or a refusal (an absolute arm pushed past its command bounds, left to the robot's own hold;
    a re-anchor restarts from rest)."""
    lim, dt = layer.limits, layer.dt
    lo, hi = lim.workspace_lower, lim.workspace_upper
    V, A, J = lim.max_velocity, lim.max_acceleration, lim.max_jerk
    u_prev, a_prev, skip_jerk = np.zeros_like(V), np.zeros_like(V), False
    for k, t in enumerate(ticks):
        scale = 1 + np.abs(t.measured).max()
        tol = 1e-9 * scale
        box_lo, box_hi = np.minimum(lo, t.measured), np.maximum(hi, t.measured)
        assert (t.target >= box_lo - tol).all() and (t.target <= box_hi + tol).all(), (k, t)
        u = (t.target - t.measured) / dt
        assert (np.abs(u) <= V * (1 + 1e-6) + tol / dt).all(), (k, u, V)
        if "reanchor" in t.events:
            u_prev, a_prev = np.zeros_like(u), np.zeros_like(u)
        a = (u - u_prev) / dt
        if "workspace_clip" in t.events or "refused" in t.events:
            skip_jerk = True
        else:
            assert (np.abs(a) <= A * (1 + 1e-6) + 4 * tol / dt**2).all(), (k, a, A)
            if not skip_jerk:
                assert (np.abs(a - a_prev) <= J * (1 + 1e-6) + 8 * tol / dt**3).all(), (k, a - a_prev, J)
            skip_jerk = False
        u_prev, a_prev = u, a


VECTORS = st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3)


@settings(max_examples=120, deadline=None)
@given(
    command=st.sampled_from(["delta", "absolute"]),
    V=st.floats(0.05, 3.0),
    A=st.floats(0.5, 50.0),
    J=st.floats(5.0, 1e4),
    hz=st.sampled_from([10.0, 50.0, 100.0]),
    half_box=st.floats(0.05, 2.0),
    gain=st.floats(0.0, 1.0),
    start=st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=2),
    commands=st.lists(VECTORS, min_size=1, max_size=60),
    holds=st.sets(st.integers(0, 59), max_size=20),
)
def test_a_lagging_or_stuck_arm_is_never_asked_past_a_limit_and_causes_no_events(
    command, V, A, J, hz, half_box, gain, start, commands, holds
):
    limits = _limits(command, V, A, J, half_box)
    layer = SafetyLayer(limits, dt=1.0 / hz)
    arm = Arm(np.asarray(start) * half_box, gain)
    scale = half_box if command == "absolute" else 1.0  # absolute commands are positions in the box
    ticks = _drive(layer, arm, [np.asarray(c) * scale for c in commands], holds=holds)
    _check_from_measured(layer, ticks)
    assert all(not t.events for t in ticks), [t.events for t in ticks if t.events]


@settings(max_examples=150, deadline=None)
@given(
    command=st.sampled_from(["delta", "absolute"]),
    V=st.floats(0.05, 3.0),
    A=st.floats(0.5, 50.0),
    J=st.floats(5.0, 1e4),
    hz=st.sampled_from([10.0, 50.0, 100.0]),
    half_box=st.floats(0.05, 2.0),
    gain=st.floats(0.0, 1.6),
    start=st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=2),
    commands=st.lists(
        st.one_of(VECTORS, st.sampled_from([[1e9, -1e9, 0.0], [-1e9, 1e9, 1.0]])), min_size=1, max_size=80
    ),
    holds=st.sets(st.integers(0, 79), max_size=25),
    pushes=st.dictionaries(st.integers(0, 79), st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=2), max_size=8),
    resets=st.dictionaries(st.integers(0, 79), st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=2), max_size=3),
)
def test_an_arm_that_overshoots_is_pushed_and_reset_is_never_asked_past_a_limit_from_where_it_is(
    command, V, A, J, hz, half_box, gain, start, commands, holds, pushes, resets
):
    limits = _limits(command, V, A, J, half_box)
    layer = SafetyLayer(limits, dt=1.0 / hz)
    arm = Arm(np.asarray(start) * half_box, gain)
    # Pushes up to 0.3 of the box (some beyond the jump tolerance), resets anywhere in the box.
    push = {k: 0.3 * half_box * np.asarray(d) for k, d in pushes.items()}
    reset = {k: np.asarray(q) * half_box for k, q in resets.items()}
    scale = half_box if command == "absolute" else 1.0
    ticks = _drive(layer, arm, [np.asarray(c) * scale for c in commands], holds, push, reset)
    _check_from_measured(layer, ticks)
    n_reanchor = sum("reanchor" in t.events for t in ticks)
    assert n_reanchor == layer.reanchors
    if gain <= 1.0 and not pushes and not resets:
        assert not any(t.events for t in ticks)


def test_a_reset_arm_re_anchors_once_with_a_log_line_and_restarts_from_rest(caplog):
    layer = SafetyLayer(_limits("delta", 0.5, 20.0, 2000.0, 0.4), dt=0.02)
    arm = Arm(np.zeros(2), 1.0)
    commands = [np.array([1.0, 0.0, 0.0])] * 60
    with caplog.at_level(logging.WARNING, logger="deploy.safety"):
        ticks = _drive(layer, arm, commands, resets={30: np.array([-0.3, 0.2])})
    assert layer.reanchors == 1 and ticks[31].events == ["reanchor"]
    assert "re-anchored on the measured position [-0.3, 0.2]" in caplog.text
    asked = [(t.target - t.measured)[0] / 0.02 for t in ticks]
    assert asked[31] <= 20.0 * 0.02 + 1e-9  # from rest again: one period of the acceleration limit
    _check_from_measured(layer, ticks)


def test_a_stuck_arm_is_not_wound_up_and_the_box_is_kept_from_where_it_is():
    """Stuck (gain 0) while the policy pushes on: the target stays one period's travel ahead of the arm, instead of
    running to the wall; released, it does not jump. Near the wall, the step that would leave the box is clipped."""
    layer = SafetyLayer(_limits("absolute", 0.5, 20.0, 2000.0, 0.3), dt=0.02)
    arm = Arm(np.array([0.0, 0.0]), 0.0)
    ticks = _drive(layer, arm, [np.array([0.3, 0.0, 0.0])] * 100)
    gaps = [abs(t.target[0] - t.measured[0]) for t in ticks]
    assert max(gaps) <= 0.5 * 0.02 + 1e-12
    arm.gain = 1.0
    more = _drive_on(layer, arm, [np.array([0.3, 0.0, 0.0])] * 200)
    _check_from_measured(layer, ticks + more)
    assert abs(arm.q[0] - 0.3) < 1e-3 and all(t.target[0] <= 0.3 + 1e-12 for t in more)


def _drive_on(layer: SafetyLayer, arm: Arm, commands) -> list[Tick]:
    """Like :func:`_drive`, without resetting the layer first."""
    ticks = []
    for command in commands:
        measured = arm.q.copy()
        out = layer.filter(command, measured)
        ticks.append(Tick(measured, out[:2].copy(), list(layer.events)))
        arm.step(out[:2])
    return ticks


def test_a_hold_decelerates_within_the_limits_then_hands_over_at_rest():
    layer = SafetyLayer(_limits("delta", 0.5, 20.0, 2000.0, 2.0), dt=0.02)
    arm = Arm(np.zeros(2), 1.0)
    ticks = _drive(layer, arm, [np.array([1.0, -1.0, 0.5])] * 40 + [None] * 60, holds=set(range(40, 100)))
    _check_from_measured(layer, ticks)
    speeds = [np.abs(t.target - t.measured).max() / 0.02 for t in ticks]
    assert speeds[39] == pytest.approx(0.5, rel=1e-6)  # at full speed when the hold starts
    assert all(b <= a + 1e-12 for a, b in zip(speeds[40:], speeds[41:], strict=False))  # slowing, never a jump
    assert 0 < speeds[40] < speeds[39] and speeds[-1] == 0.0 and layer.at_rest  # a ramp down, not a stop


def test_limits_files_may_set_the_jump_tolerance_and_it_must_exceed_ordinary_motion():
    limits = _limits("absolute", 0.5, 20.0, 2000.0, 0.4, jump_tolerance=[0.05, 0.05])
    assert SafetyLayer(limits, dt=0.02).jump_tolerance.tolist() == [0.05, 0.05]
    with pytest.raises(SafetyError, match="jump_tolerance"):
        SafetyLayer(limits, dt=0.1)  # 1.5 periods at 0.5 m/s = 0.075 m > 0.05
    assert SafetyLayer(_limits("delta", 0.5, 20.0, 2000.0, 0.4), dt=0.02).jump_tolerance == pytest.approx(0.03)
    for bad in (0.0, float("nan"), -1.0):
        with pytest.raises(SafetyError):
            SafetyLayer(limits, dt=bad)


def test_an_absolute_arm_pushed_past_its_command_bounds_is_left_to_the_robots_hold():
    """Found by the property test: no absolute target can start beyond the command bounds, so the layer refuses
    (the loop holds) and braking hands over to the robot's own hold instead of commanding out of bounds."""
    layer = SafetyLayer(_limits("absolute", 0.5, 10.0, 100.0, 1.0), dt=0.02)
    layer.reset(np.array([0.9, 0.0]))
    layer.filter(np.array([1.0, 0.0, 0.0]), np.array([0.9, 0.0]))
    with pytest.raises(SafetyError, match="outside the command bounds"):
        layer.filter(np.array([1.0, 0.0, 0.0]), np.array([1.3, 0.0]))
    assert layer.brake(np.array([1.3, 0.0])) is None
    layer.settle(np.array([1.3, 0.0]))
    out = layer.filter(np.array([0.5, 0.0, 0.0]), np.array([0.99, 0.0]))  # back inside: commands resume
    assert (np.abs(out[:2] - [0.99, 0.0]) <= 0.5 * 0.02 + 1e-12).all()
