"""Safety layer: whatever the input, no command leaving it breaks a bound, the box, or a velocity/accel/jerk limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.safety import SafetyError, SafetyLayer, SafetyLimits

ROBOT_DIR = Path(__file__).resolve().parents[1] / "configs" / "robot"


def _limits(command: str, V: float, A: float, J: float, half_box: float, scale: float = 0.01) -> SafetyLimits:
    return SafetyLimits.from_dict(
        {
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
