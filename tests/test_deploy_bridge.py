"""Robot bridge over real ZeroMQ sockets on 127.0.0.1: bad requests get error replies and the server keeps serving."""

from __future__ import annotations

import threading

import msgpack
import numpy as np
import pytest

from deploy.bridge import BridgeClient, BridgeServer, BridgeTimeout, Rejected, RemoteError, check_address
from deploy.protocol import PROTOCOL_VERSION, encode


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
