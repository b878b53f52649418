"""Robot bridge message schema: msgpack maps, checked strictly on encode and decode. No pickle anywhere.

Every message is one msgpack map with two envelope fields and the fields of its type::

    {"v": 1, "type": "<type>", ...fields}

Arrays travel as maps ``{"dtype": "<name>", "shape": [d0, d1, ...], "data": <bytes>}``: little-endian, C order,
dtype from :data:`DTYPES`, ``len(data) == prod(shape) * itemsize``, at most :data:`MAX_NDIM` dims.

Requests (the control loop's side, :class:`deploy.bridge.BridgeClient`) and their replies (the robot's side,
:class:`deploy.bridge.BridgeServer`):

============ ========================================= ====== =====================================================
request      fields                                    reply  reply fields
============ ========================================= ====== =====================================================
``hello``    ``client`` (str)                          ``info``  ``robot`` (str), ``action_dim`` (int),
                                                                 ``control_hz`` (float), ``obs`` (spec map)
``get_obs``  (none)                                    ``obs``   ``timestamp``, ``now`` (float), ``obs`` (array map),
                                                                 ``info`` (scalar map)
``action``   ``timestamp`` (float), ``action`` (1-D    ``ack``   ``now`` (float)
             float array)
``hold``     ``reason`` (str)                          ``ack``   ``now`` (float)
``bye``      (none)                                    ``ack``   ``now`` (float)
(any)                                                  ``error`` ``code`` (str), ``message`` (str)
============ ========================================= ====== =====================================================

A spec map is ``{key: {"dtype": str, "shape": [int, ...]}}``; an array map is ``{key: array}``; a scalar map is
``{key: int | float | bool | str}``. Times are seconds on the robot's clock: ``obs.timestamp`` is when the
observation was captured and ``now`` is when the reply was sent, so a client on any clock can place the capture at
``receive_time - (now - timestamp)``. Limits: :data:`MAX_MESSAGE_BYTES` per message, :data:`MAX_KEYS` keys per map,
keys of at most :data:`MAX_KEY_LEN` characters from ``[A-Za-z0-9_./-]``, strings of at most :data:`MAX_STR_LEN`.
Anything else (unknown type, unknown or missing field, wrong dtype or shape, oversized) raises
:class:`ProtocolError`. Three more types (``ready``, ``infer``, ``chunk``) carry observations and action chunks
between the control loop and its inference worker process (:mod:`deploy.inference_worker`); robots never see them.
The same text, for driver authors, is ``docs/robot_protocol.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from core.errors import MfpError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_NDIM = 4
MAX_KEYS = 32
MAX_KEY_LEN = 64
MAX_STR_LEN = 4096
# name -> little-endian numpy dtype
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("?"),
}
_FLOAT_DTYPES = ("float32", "float64")
_KEY_RE = re.compile(rf"^[A-Za-z0-9_./-]{{1,{MAX_KEY_LEN}}}$")

# Error codes carried by ``error`` replies.
ERR_PROTOCOL = "protocol"  # the request failed the schema or size checks
ERR_UNSUPPORTED = "unsupported"  # a valid message this server does not answer (e.g. a reply type sent as request)
ERR_REJECTED = "rejected"  # well-formed but refused by the robot (e.g. a non-finite action)
ERR_INTERNAL = "internal"  # the robot side failed while handling it


class ProtocolError(MfpError, ValueError):
    """A message that does not follow the schema (or is too large); the text says which field and why."""


@dataclass(frozen=True)
class Message:
    """A decoded, schema-checked message: its type and fields (arrays as numpy)."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]


# ---------------------------------------------------------------------------------------------- field checkers
# Each checker takes (name, wire value) and returns the Python value, raising ProtocolError when it does not fit.
def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"field '{name}' must be a string, got {type(value).__name__}")
    if len(value) > MAX_STR_LEN:
        raise ProtocolError(f"field '{name}' is {len(value)} characters; the limit is {MAX_STR_LEN}")
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"field '{name}' must be an integer, got {type(value).__name__}")
    if not 0 < value <= 1 << 20:
        raise ProtocolError(f"field '{name}' = {value} is outside 1..{1 << 20}")
    return value


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"field '{name}' must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ProtocolError(f"field '{name}' must be finite, got {value}")
    return float(value)


def _positive_float(name: str, value: Any) -> float:
    value = _float(name, value)
    if value <= 0:
        raise ProtocolError(f"field '{name}' must be positive, got {value}")
    return value


def _key(name: str, key: Any) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ProtocolError(f"'{name}' has an invalid key {key!r}: use 1-{MAX_KEY_LEN} characters from [A-Za-z0-9_./-]")
    return key


def _map(name: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"field '{name}' must be a map, got {type(value).__name__}")
    if len(value) > MAX_KEYS:
        raise ProtocolError(f"field '{name}' has {len(value)} keys; the limit is {MAX_KEYS}")
    return value


def _shape(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_NDIM:
        raise ProtocolError(f"'{name}.shape' must be a list of at most {MAX_NDIM} integers, got {value!r}"[:300])
    dims = []
    for d in value:
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= MAX_MESSAGE_BYTES:
            raise ProtocolError(f"'{name}.shape' has an invalid dimension {d!r}")
        dims.append(d)
    return tuple(dims)


def _dtype_name(name: str, value: Any) -> str:
    if value not in DTYPES:
        raise ProtocolError(f"'{name}.dtype' is {value!r}; allowed: {', '.join(DTYPES)}"[:300])
    return value


def _array(name: str, value: Any) -> np.ndarray:
    value = _map(name, value)
    if set(value) != {"dtype", "shape", "data"}:
        raise ProtocolError(
            f"array '{name}' must have exactly the fields dtype, shape, data; got {sorted(map(str, value))}"[:300]
        )
    dtype = DTYPES[_dtype_name(name, value["dtype"])]
    shape = _shape(name, value["shape"])
    data = value["data"]
    if not isinstance(data, bytes):
        raise ProtocolError(f"'{name}.data' must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(
            f"'{name}.data' has {len(data)} bytes; dtype {value['dtype']} shape {list(shape)} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _float_vector(name: str, value: Any) -> np.ndarray:
    arr = _array(name, value)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.name not in _FLOAT_DTYPES:
        raise ProtocolError(
            f"'{name}' must be a non-empty 1-D float32/float64 array, got {arr.dtype.name} {list(arr.shape)}"
        )
    return arr


def _float_matrix(name: str, value: Any) -> np.ndarray:
    arr = _array(name, value)
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.name not in _FLOAT_DTYPES:
        raise ProtocolError(
            f"'{name}' must be a non-empty 2-D float32/float64 array, got {arr.dtype.name} {list(arr.shape)}"
        )
    return arr


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 62:
        raise ProtocolError(f"field '{name}' must be a non-negative integer, got {value!r}"[:300])
    return value


def _array_map(name: str, value: Any) -> dict[str, np.ndarray]:
    return {_key(name, k): _array(f"{name}.{k}", v) for k, v in _map(name, value).items()}


def _spec_map(name: str, value: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for k, v in _map(name, value).items():
        v = _map(f"{name}.{_key(name, k)}", v)
        if set(v) != {"dtype", "shape"}:
            raise ProtocolError(f"'{name}.{k}' must have exactly the fields dtype, shape")
        out[k] = {"dtype": _dtype_name(f"{name}.{k}", v["dtype"]), "shape": list(_shape(f"{name}.{k}", v["shape"]))}
    return out


def _scalar_map(name: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in _map(name, value).items():
        _key(name, k)
        if isinstance(v, str):
            out[k] = _str(f"{name}.{k}", v)
        elif isinstance(v, (bool, int)):
            out[k] = v
        elif isinstance(v, float):
            out[k] = _float(f"{name}.{k}", v)
        else:
            raise ProtocolError(f"'{name}.{k}' must be an int, float, bool or string, got {type(v).__name__}")
    return out


# type -> {field: checker}
SCHEMAS: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "hello": {"client": _str},
    "info": {"robot": _str, "action_dim": _positive_int, "control_hz": _positive_float, "obs": _spec_map},
    "get_obs": {},
    "obs": {"timestamp": _float, "now": _float, "obs": _array_map, "info": _scalar_map},
    "action": {"timestamp": _float, "action": _float_vector},
    "hold": {"reason": _str},
    "bye": {},
    "ack": {"now": _float},
    "error": {"code": _str, "message": _str},
    # Between the control loop and its inference worker process (deploy/inference.py), same codec.
    "ready": {"n_obs_steps": _positive_int, "n_action_steps": _positive_int, "action_dim": _positive_int},
    "infer": {"seq": _count, "obs": _array_map},
    "chunk": {"seq": _count, "action": _float_matrix, "latency": _float},
}
REQUEST_TYPES = ("hello", "get_obs", "action", "hold", "bye")
REPLY_TYPES = ("info", "obs", "ack", "error")


# ---------------------------------------------------------------------------------------------- encode / decode
def _wire_dtype_name(dtype: np.dtype) -> str:
    for name, dt in DTYPES.items():
        if dt.kind == dtype.kind and dt.itemsize == dtype.itemsize:
            return name
    raise ProtocolError(f"arrays of dtype {dtype} cannot be sent; allowed: {', '.join(DTYPES)}")


def _to_wire(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        name = _wire_dtype_name(value.dtype)
        data = np.ascontiguousarray(value, dtype=DTYPES[name]).tobytes()
        return {"dtype": name, "shape": list(value.shape), "data": data}
    if isinstance(value, Mapping):
        return {k: _to_wire(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def _check(type_: Any, body: Mapping[str, Any]) -> Message:
    if not isinstance(type_, str) or type_ not in SCHEMAS:
        raise ProtocolError(f"unknown message type {type_!r}; known: {', '.join(SCHEMAS)}"[:300])
    schema = SCHEMAS[type_]
    missing = [f for f in schema if f not in body]
    unknown = [str(f) for f in body if f not in schema]
    if missing or unknown:
        raise ProtocolError(f"'{type_}' message: missing field(s) {missing}, unknown field(s) {unknown[:8]}"[:300])
    return Message(type_, {name: check(name, body[name]) for name, check in schema.items()})


def encode(type_: str, max_bytes: int = MAX_MESSAGE_BYTES, **fields: Any) -> bytes:
    """Check ``fields`` against the schema of ``type_`` and pack them; numpy arrays become array maps."""
    wire = {k: _to_wire(v) for k, v in fields.items()}
    _check(type_, wire)
    packed = msgpack.packb({"v": PROTOCOL_VERSION, "type": type_, **wire}, use_bin_type=True)
    if len(packed) > max_bytes:
        raise ProtocolError(f"'{type_}' message is {len(packed)} bytes; the limit is {max_bytes}")
    return packed


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Unpack and schema-check one message; any problem raises :class:`ProtocolError` (never another error)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ProtocolError(f"message is {len(data)} bytes; the limit is {max_bytes}")
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=1 << 16,
            max_map_len=1 << 16,
            max_ext_len=0,
        )
    # msgpack reports malformed input with several exception types (ExtraData, FormatError, StackError,
    # ValueError, UnicodeDecodeError, TypeError, ...): every one of them means "not a valid message".
    except Exception as e:
        raise ProtocolError(f"not a valid msgpack message: {type(e).__name__}: {e}"[:300]) from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a message must be a msgpack map, got {type(obj).__name__}")
    version = obj.pop("v", None)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(f"protocol version {version!r}; this side speaks version {PROTOCOL_VERSION}"[:300])
    type_ = obj.pop("type", None)
    return _check(type_, obj)


def spec_of(obs: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """The spec map (dtype name and shape per key) describing an observation dict."""
    return {k: {"dtype": _wire_dtype_name(np.asarray(v).dtype), "shape": list(np.shape(v))} for k, v in obs.items()}
