"""Robot bridge over real ZeroMQ sockets on 127.0.0.1: bad requests get error replies and the server keeps serving,
also when thousands of random and malformed messages hit a live server process or `mfp sim-arm`."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from test_deploy_loop import REPO, _env

from deploy.bridge import BridgeClient, BridgeServer, BridgeTimeout, Rejected, RemoteError, check_address
from deploy.protocol import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, ProtocolError, decode, encode
from deploy.robot import BridgeRobot


class _Counter:
    """A small robot-side handler: counts actions, refuses non-finite ones."""

    def __init__(self) -> None:
        self.actions: list[np.ndarray] = []

    def __call__(self, msg):
        if msg.type == "action":
            if not np.isfinite(msg["action"]).all():
                raise Rejected("non-finite action")
            self.actions.append(msg["action"])
            return "ack", {"now": 1.0}
        if msg.type == "get_obs":
            return "obs", {"timestamp": 0.5, "now": 1.0, "obs": {"agent_pos": np.arange(4.0)}, "info": {}}
        if msg.type == "hold":
            raise RuntimeError("the hold brake is broken")
        return "ack", {"now": 1.0}


@pytest.fixture
def served():
    handler = _Counter()
    server = BridgeServer(handler, "tcp://127.0.0.1:0", max_bytes=64 * 1024)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop, 0.01), daemon=True)
    thread.start()
    client = BridgeClient(server.address, timeout_s=2.0, max_bytes=64 * 1024)
    yield server, client, handler
    stop.set()
    thread.join(2)
    client.close()
    server.close()


def _ok(client) -> None:
    assert client.request("get_obs")["obs"]["agent_pos"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_bad_requests_get_error_replies_and_the_server_keeps_serving(served):
    server, client, handler = served
    bad = [
        (b"\x80\x04\x95\x00garbage", "protocol"),  # a pickle header
        (msgpack.packb({"v": PROTOCOL_VERSION, "type": "teleport"}), "protocol"),  # unknown type
        (msgpack.packb({"v": PROTOCOL_VERSION, "type": "action", "timestamp": 0.0}), "protocol"),  # missing field
        (encode("ack", now=0.0), "unsupported"),  # a reply as request
        (b"\x00" * (100 * 1024), "protocol"),  # oversized
        (encode("action", timestamp=0.0, action=np.array([np.nan, 0.0])), "rejected"),  # refused by handler
        (encode("hold", reason="test"), "internal"),  # handler crashed
    ]
    for data, code in bad:
        with pytest.raises(RemoteError) as info:
            client.request_raw(data)
        assert info.value.code == code, (data[:20], info.value)
        _ok(client)
    client.request("action", timestamp=1.0, action=np.ones(4))
    assert len(handler.actions) == 1 and server.errors == len(bad)


def test_client_times_out_and_recovers_when_the_server_comes_back():
    server = BridgeServer(_Counter(), "tcp://127.0.0.1:0")
    address = server.address
    server.close()
    client = BridgeClient(address, timeout_s=0.2)
    with pytest.raises(BridgeTimeout, match="is the robot process running"):
        client.request("get_obs")
    server = BridgeServer(_Counter(), address)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop, 0.01), daemon=True)
    thread.start()
    try:
        _ok(client)
    finally:
        stop.set()
        thread.join(2)
        client.close()
        server.close()


def test_addresses_are_loopback_unless_asked():
    assert check_address("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5555"
    with pytest.raises(ValueError, match="not loopback"):
        check_address("tcp://0.0.0.0:5555")
    assert check_address("tcp://0.0.0.0:5555", allow_remote=True)
    with pytest.raises(ValueError, match="no port"):
        check_address("tcp://127.0.0.1")


# ---------------------------------------------------------------------------------------------- fuzzing a live server
FUZZ_MAX_BYTES = 64 * 1024
_SERVER = """
import signal, sys, threading
import numpy as np
from deploy.bridge import BridgeServer, Rejected

def handler(msg):
    if msg.type == "get_obs":
        return "obs", {"timestamp": 0.5, "now": 1.0, "obs": {"agent_pos": np.arange(4.0)}, "info": {}}
    if msg.type == "action" and not np.isfinite(msg["action"]).all():
        raise Rejected("non-finite action")
    if msg.type == "hello":
        return "info", {"robot": "echo", "action_dim": 4, "control_hz": 50.0, "obs": {}}
    return "ack", {"now": 1.0}

server = BridgeServer(handler, "tcp://127.0.0.1:0", max_bytes=int(sys.argv[1]))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
print("serving on", server.address, flush=True)
server.serve(stop, 0.02)
print(f"served {server.requests} requests, {server.errors} errors, {server.failures} failures", flush=True)
"""


def _array(dtype="float64", shape=(4,), data=None) -> dict:
    data = np.zeros(shape, dtype).tobytes() if data is None else data
    return {"dtype": dtype, "shape": list(shape), "data": data}


def fuzz_messages(rng: np.random.Generator, n: int, max_bytes: int) -> list[tuple[str, list[bytes]]]:
    """``n`` requests that must each get an ``error`` reply: (category, frames). Deterministic for a given ``rng``."""
    v = PROTOCOL_VERSION
    valid = [
        encode("get_obs"),
        encode("action", timestamp=1.0, action=np.ones(4)),
        encode("hold", reason="x"),
        encode("hello", client="fuzz"),
    ]
    wrong_values: list = [None, True, -1, 2**63, 1.5, float("nan"), float("inf"), "s", b"b", [], [1, 2], {}, {"a": 1}]

    def pack(obj) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    def nested(depth: int) -> bytes:
        return b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]: no packer recursion needed

    makers = {
        "random bytes": lambda: rng.bytes(int(rng.integers(1, 600))),
        "empty": lambda: b"",
        "not a map": lambda: pack(wrong_values[int(rng.integers(len(wrong_values)))]),
        "unknown type": lambda: pack({"v": v, "type": f"t{int(rng.integers(1000))}"}),
        "wrong version": lambda: pack({"v": wrong_values[int(rng.integers(len(wrong_values)))], "type": "get_obs"}),
        "reply as request": lambda: encode("ack", now=1.0),
        "missing field": lambda: pack({"v": v, "type": "action", "timestamp": 1.0}),
        "unknown field": lambda: pack({"v": v, "type": "get_obs", f"f{int(rng.integers(99))}": 1}),
        "wrong field type": lambda: pack(
            {"v": v, "type": "action", "timestamp": wrong_values[int(rng.integers(7, 13))], "action": _array()}
        ),
        "non-string map key": lambda: pack({"v": v, "type": "get_obs", 7: 1}),
        "bad array": lambda: pack(
            {
                "v": v,
                "type": "action",
                "timestamp": 1.0,
                "action": [
                    _array(dtype="complex64"),
                    _array(shape=(3,)) | {"data": b"\x00" * 5},
                    _array() | {"shape": [-1]},
                    _array() | {"shape": [2**40, 2**40]},
                    _array() | {"shape": [1, 1, 1, 1, 1, 1]},
                    _array() | {"data": "text"},
                    _array(shape=(2, 2)),
                    _array(dtype="int32"),
                    _array() | {"extra": 1},
                ][int(rng.integers(9))],
            }
        ),
        "nan timestamp": lambda: pack({"v": v, "type": "action", "timestamp": float("nan"), "action": _array()}),
        "inf timestamp": lambda: pack({"v": v, "type": "action", "timestamp": -float("inf"), "action": _array()}),
        "nan action": lambda: encode("action", timestamp=1.0, action=np.full(4, np.nan)),
        "deep nesting": lambda: nested(int(rng.integers(100, 100_000))),
        "huge declared bin": lambda: b"\x81\xa1v\xc6" + int(rng.integers(2**20, 2**32)).to_bytes(4, "big") + b"xx",
        "huge declared array": lambda: b"\xdd" + int(rng.integers(2**17, 2**32)).to_bytes(4, "big") + b"\xc0",
        "huge declared map": lambda: b"\xdf" + int(rng.integers(2**17, 2**32)).to_bytes(4, "big") + b"\xa1v\x01",
        "truncated": lambda: valid[int(rng.integers(len(valid)))][: -int(rng.integers(1, 5))],
        "trailing bytes": lambda: valid[int(rng.integers(len(valid)))] + rng.bytes(int(rng.integers(1, 8))),
        "extension type": lambda: b"\xd4\x01\x00",
        "oversized": lambda: b"\x00" * (max_bytes + int(rng.integers(1, 4096))),
    }
    names = list(makers)
    out: list[tuple[str, list[bytes]]] = []
    for i in range(n):
        if i % 10 == 9:  # multipart: two to five frames, even when each frame alone is valid
            k = int(rng.integers(2, 6))
            out.append(("multipart", [valid[int(rng.integers(len(valid)))] for _ in range(k)]))
            continue
        name = names[i % len(names)] if i < 4 * len(names) else names[int(rng.integers(len(names)))]
        out.append((name, [makers[name]()]))
    return out


def _fuzz(address: str, n: int, max_bytes: int, seed: int = 0) -> dict[str, int]:
    """Send the fuzz messages one by one over a REQ socket; every one must get an ``error`` reply in time."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    counts: dict[str, int] = {}
    try:
        for category, frames in fuzz_messages(np.random.default_rng(seed), n, max_bytes):
            sock.send_multipart(frames)
            assert sock.poll(10_000, zmq.POLLIN), f"no reply to a '{category}' request: the server stopped answering"
            reply = decode(sock.recv())
            assert reply.type == "error", (category, reply)
            assert reply["code"] in ("protocol", "unsupported", "rejected"), (category, reply.fields)
            assert reply["message"], category
            counts[category] = counts.get(category, 0) + 1
    finally:
        sock.close(0)
    return counts


def test_fuzzed_server_process_answers_every_message_and_keeps_serving():
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(FUZZ_MAX_BYTES)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        address = proc.stdout.readline().strip().split(" on ")[1]
        counts = _fuzz(address, 3000, FUZZ_MAX_BYTES)
        assert sum(counts.values()) == 3000 and len(counts) >= 20, counts
        # A DEALER peer may leave out the REQ delimiter frame or send an empty one: still one error reply each.
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(address)
        for frames in ([encode("get_obs")], [b"", b""], [b"\xc1"], [b"", encode("get_obs"), b"x"]):
            dealer.send_multipart(frames)
            assert dealer.poll(5000, zmq.POLLIN), frames
            reply = dealer.recv_multipart()
            assert decode(reply[-1]).type in ("obs", "error"), reply
        dealer.close(0)
        # Far over the message limit, still below the transport limit: an error reply too.
        client = BridgeClient(address, timeout_s=5.0, max_bytes=FUZZ_MAX_BYTES)
        with pytest.raises(RemoteError, match="limit"):
            client.request_raw(b"\x00" * (7 * FUZZ_MAX_BYTES))
        # Above the transport limit ZeroMQ drops the connection unread (memory guard); the server serves on.
        with pytest.raises(BridgeTimeout):
            client.request_raw(b"\x00" * (9 * FUZZ_MAX_BYTES))
        _ok(client)  # and after all of it, a valid request succeeds
        client.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "failures" in out, out
    served = [int(w) for w in out.split("served ")[1].split()[::2][:3]]
    assert served[2] == 0, out  # no transport failure on the server's side


def test_fuzzed_sim_arm_answers_every_message_and_keeps_stepping(tmp_path):
    from test_deploy_loop import SimArmProcess

    arm = SimArmProcess(tmp_path / "commands.jsonl")
    try:
        counts = _fuzz(arm.address, 2000, MAX_MESSAGE_BYTES, seed=1)
        assert sum(counts.values()) == 2000
        robot = BridgeRobot(arm.address, timeout_s=5.0)  # a valid hello, then valid requests, all answered
        t, obs = robot.get_observation()
        step = robot.last_info["step"]
        robot.send_action(t, np.zeros(4))
        time.sleep(0.3)
        assert robot.get_observation()[1]["agent_pos"].shape == (4,)
        assert robot.last_info["step"] != step, "the arm stopped stepping"
        robot.close()
        assert arm.proc.poll() is None
    finally:
        arm.stop()


def test_client_refuses_a_reply_of_the_wrong_type_and_multipart_replies():
    """A driver that answers `get_obs` with an `ack`, or with two frames, is named, not a KeyError later."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = BridgeClient(f"tcp://127.0.0.1:{port}", timeout_s=5.0)
    replies = iter([[encode("ack", now=1.0)], [encode("ack", now=1.0), b"x"]])

    def answer() -> None:
        for reply in replies:
            frames = router.recv_multipart()
            router.send_multipart([*frames[:2], *reply])

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(ProtocolError, match="answered 'get_obs' with a 'ack' message; expected 'obs'"):
            client.request("get_obs")
        with pytest.raises(ProtocolError, match="2 ZeroMQ frames"):
            client.request("get_obs")
    finally:
        thread.join(5)
        client.close()
        router.close(0)
