import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from policies.normalizer import LinearNormalizer, NormalizerError

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(data=arrays(np.float32, st.tuples(st.integers(2, 20), st.integers(1, 6)), elements=finite))
def test_round_trip_and_range(data):
    norm = LinearNormalizer()
    norm.fit({"x": {"min": data.min(0), "max": data.max(0)}})
    x = torch.from_numpy(data)
    y = norm.normalize("x", x)
    wide = (data.max(0) - data.min(0)) >= 1e-4
    assert torch.all(y[:, torch.from_numpy(wide)].abs() <= 1.0 + 1e-4)
    back = norm.unnormalize("x", y)
    assert torch.allclose(back, x, atol=1e-3 * (1 + np.abs(data).max()))


def test_constant_feature_is_centred_not_divided_by_zero():
    norm = LinearNormalizer()
    norm.fit({"x": {"min": np.array([3.0, 0.0]), "max": np.array([3.0, 1.0])}})
    y = norm.normalize("x", torch.tensor([[3.0, 0.5]]))
    assert torch.allclose(y, torch.tensor([[0.0, 0.0]]))


def test_point_cloud_stats_broadcast_over_points():
    norm = LinearNormalizer()
    norm.fit({"pc": {"min": np.zeros(3), "max": np.ones(3) * 2}})
    y = norm.normalize("pc", torch.ones(2, 5, 128, 3))
    assert y.shape == (2, 5, 128, 3) and torch.allclose(y, torch.zeros_like(y))


def test_errors_name_the_key():
    norm = LinearNormalizer()
    norm.fit({"agent_pos": {"min": np.zeros(4), "max": np.ones(4)}})
    with pytest.raises(NormalizerError, match="no normalizer stats for key 'action'"):
        norm.normalize("action", torch.zeros(1, 4))
    with pytest.raises(NormalizerError, match="agent_pos"):
        norm.normalize("agent_pos", torch.zeros(1, 3))
    with pytest.raises(NormalizerError, match="NaN"):
        LinearNormalizer().fit({"a": {"min": np.array([np.nan]), "max": np.ones(1)}})


def test_state_tensors_round_trip():
    norm = LinearNormalizer()
    norm.fit({"a": {"min": np.zeros(2), "max": np.ones(2)}})
    norm.fit_image("img", 3)
    other = LinearNormalizer()
    other.load_state_tensors(norm.state_tensors())
    x = torch.rand(4, 2)
    assert torch.equal(other.normalize("a", x), norm.normalize("a", x))
    assert other.keys == norm.keys
    with pytest.raises(NormalizerError, match="lacks"):
        LinearNormalizer().load_state_tensors({"a/scale": torch.ones(2)})
