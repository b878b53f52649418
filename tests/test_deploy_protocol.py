"""Bridge message schema: round trips, strict rejection, a decoder that never fails with anything but ProtocolError."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from deploy.protocol import DTYPES, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, ProtocolError, decode, encode

KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
ARRAYS = st.sampled_from(list(DTYPES)).flatmap(
    lambda name: hnp.arrays(DTYPES[name], hnp.array_shapes(min_dims=0, max_dims=3, max_side=5))
)
FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
SCALARS = st.one_of(st.booleans(), st.integers(-(2**62), 2**62), FINITE, st.text(max_size=20))


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype.kind == b.dtype.kind and a.shape == b.shape and a.tobytes() == b.astype(a.dtype).tobytes()


@settings(max_examples=60, deadline=None)
@given(
    ts=FINITE,
    now=FINITE,
    obs=st.dictionaries(KEYS, ARRAYS, max_size=4),
    info=st.dictionaries(KEYS, SCALARS, max_size=4),
)
def test_obs_round_trip(ts, now, obs, info):
    msg = decode(encode("obs", timestamp=ts, now=now, obs=obs, info=info))
    assert msg.type == "obs" and msg["timestamp"] == ts and msg["now"] == now and msg["info"] == info
    assert set(msg["obs"]) == set(obs)
    for k in obs:
        assert _same_array(msg["obs"][k], obs[k]), k


@settings(max_examples=60, deadline=None)
@given(
    ts=FINITE,
    action=hnp.arrays(st.sampled_from([np.float32, np.float64]), st.integers(1, 16), elements=st.floats(width=32)),
)
def test_action_round_trip_keeps_values_bit_exact(ts, action):
    msg = decode(encode("action", timestamp=ts, action=action))
    assert msg["action"].dtype == action.dtype and np.array_equal(msg["action"], action, equal_nan=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_protocol_error(data):
    try:
        decode(data)
    except ProtocolError:
        pass


WIRE = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=10),
        st.binary(max_size=16),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(["v", "type", "timestamp", "now", "obs", "action", "dtype", "shape", "data", "info", "x"]),
            children,
            max_size=5,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(body=WIRE, type_=st.sampled_from(["obs", "action", "info", "hello", "hold", "nope", 3]))
def test_random_structured_messages_raise_only_protocol_error(body, type_):
    msg = dict(body) if isinstance(body, dict) else {"x": body}
    msg.update({"v": PROTOCOL_VERSION, "type": type_})
    try:
        decode(msgpack.packb(msg, use_bin_type=True))
    except ProtocolError:
        pass


def _raw(**fields) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, **fields}, use_bin_type=True)


ARRAY_OK = {"dtype": "float32", "shape": [2], "data": np.zeros(2, np.float32).tobytes()}


@pytest.mark.parametrize(
    "data, needle",
    [
        (_raw(type="teleport"), "unknown message type"),
        (_raw(type="action", timestamp=1.0), "missing field(s) ['action']"),
        (_raw(type="action", timestamp=1.0, action=ARRAY_OK, extra=1), "unknown field(s) ['extra']"),
        (_raw(type="action", timestamp=float("nan"), action=ARRAY_OK), "must be finite"),
        (_raw(type="action", timestamp=1.0, action={**ARRAY_OK, "dtype": "object"}), "allowed"),
        (_raw(type="action", timestamp=1.0, action={**ARRAY_OK, "shape": [3]}), "needs 12"),
        (_raw(type="action", timestamp=1.0, action={**ARRAY_OK, "dtype": "int32"}), "float32/float64"),
        (
            _raw(type="action", timestamp=1.0, action={"dtype": "float32", "shape": [1, 2], "data": ARRAY_OK["data"]}),
            "1-D",
        ),
        (_raw(type="obs", timestamp=1.0, now=1.0, obs={"bad key!": ARRAY_OK}, info={}), "invalid key"),
        (_raw(type="obs", timestamp=1.0, now=1.0, obs={}, info={"a": [1]}), "int, float, bool or string"),
        (msgpack.packb({"v": 99, "type": "bye"}), "protocol version"),
        (msgpack.packb([1, 2, 3]), "must be a msgpack map"),
        (b"\x80\x04\x95pickle", "not a valid msgpack"),
    ],
)
def test_schema_violations_name_the_problem(data, needle):
    with pytest.raises(ProtocolError, match=None) as info:
        decode(data)
    assert needle in str(info.value)


def test_size_limits_on_both_ends():
    big = np.zeros(MAX_MESSAGE_BYTES // 4 + 16, np.float32)
    with pytest.raises(ProtocolError, match="limit"):
        encode("action", timestamp=0.0, action=big)
    with pytest.raises(ProtocolError, match="limit"):
        decode(b"\x00" * (MAX_MESSAGE_BYTES + 1))
    small = encode("action", timestamp=0.0, action=np.zeros(300))
    with pytest.raises(ProtocolError, match="limit"):
        decode(small, max_bytes=1000)


def test_encode_refuses_what_decode_would_refuse():
    with pytest.raises(ProtocolError, match="cannot be sent"):
        encode("action", timestamp=0.0, action=np.zeros(2, np.complex64))
    with pytest.raises(ProtocolError, match="missing field"):
        encode("ack")
