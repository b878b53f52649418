"""ZeroMQ REQ/REP transport for the robot bridge: a client (control loop side) and a server (robot side).

Every receive has a timeout. The server checks each request with :func:`deploy.protocol.decode`; a malformed,
oversized or wrong-type request gets an ``error`` reply and the server keeps serving. Addresses are loopback
(``tcp://127.0.0.1:<port>``) unless ``allow_remote`` is passed: a robot must not be exposed on a network by accident.
Requests above ``4 * max_bytes`` are dropped by ZeroMQ itself (``ZMQ_MAXMSGSIZE``) without a reply, so a client
sending those sees a timeout; requests between the limits get an ``error`` reply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import zmq

from core.errors import MfpError
from deploy.protocol import (
    ERR_INTERNAL,
    ERR_PROTOCOL,
    ERR_REJECTED,
    ERR_UNSUPPORTED,
    MAX_MESSAGE_BYTES,
    REQUEST_TYPES,
    Message,
    ProtocolError,
    decode,
    encode,
)

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_log = logging.getLogger(__name__)

# A handler answers one valid request with (reply type, reply fields).
Handler = Callable[[Message], tuple[str, dict[str, Any]]]


class BridgeError(MfpError, RuntimeError):
    """The bridge could not complete a request."""


class BridgeTimeout(BridgeError):
    """No reply within the timeout: the other side is gone, stuck, or dropped the message."""


class RemoteError(BridgeError):
    """The other side answered with an ``error`` reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"robot replied error ({code}): {message}")
        self.code = code
        self.remote_message = message


class Rejected(Exception):
    """Raised by a server handler to refuse a well-formed request (sent back as an ``error`` with code rejected)."""


def check_address(address: str, allow_remote: bool = False) -> str:
    """Validate a ``tcp://host:port`` or ``ipc://path`` address; non-loopback hosts need ``allow_remote``."""
    parts = urlsplit(address)
    if parts.scheme == "ipc":
        return address
    if parts.scheme != "tcp" or not parts.hostname:
        raise ValueError(f"bridge address '{address}' must look like tcp://127.0.0.1:5555 (or ipc://path)")
    try:
        _ = parts.port  # urllib raises on a non-numeric or out-of-range port only when it is read
    except ValueError as e:
        raise ValueError(f"bridge address '{address}' has an invalid port") from e
    if parts.port is None:
        raise ValueError(f"bridge address '{address}' has no port; e.g. tcp://127.0.0.1:5555")
    if parts.hostname not in _LOOPBACK_HOSTS and not allow_remote:
        raise ValueError(
            f"bridge address '{address}' is not loopback; the robot bridge is local-only by default. "
            "Pass allow_remote=true if the robot really should be reachable from the network."
        )
    return address


class BridgeServer:
    """REP socket answering requests with ``handler``; ``serve`` runs until ``stop`` is set.

    Port 0 binds a free port; :attr:`address` then holds the real one.
    """

    def __init__(
        self,
        handler: Handler,
        address: str = DEFAULT_ADDRESS,
        allow_remote: bool = False,
        max_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        check_address(address, allow_remote)
        self._handler = handler
        self._max_bytes = max_bytes
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, 4 * max_bytes)
        bind_to = (
            address[: address.rfind(":")] + ":*" if address.startswith("tcp://") and address.endswith(":0") else address
        )
        try:
            self._sock.bind(bind_to)
        except zmq.ZMQError as e:
            self._sock.close(0)
            raise BridgeError(
                f"cannot bind the robot bridge to {address}: {e} (is another server using the port?)"
            ) from e
        self.address: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.requests = 0
        self.errors = 0

    def serve_once(self, timeout_s: float) -> bool:
        """Answer at most one request, waiting up to ``timeout_s``; False when none arrived."""
        if not self._sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            return False
        data = self._sock.recv(copy=True)
        self.requests += 1
        self._sock.send(self._answer(data))
        return True

    def serve(self, stop: threading.Event, poll_s: float = 0.05) -> None:
        """Serve until ``stop`` is set (checked every ``poll_s``)."""
        while not stop.is_set():
            self.serve_once(poll_s)

    def _answer(self, data: bytes) -> bytes:
        try:
            msg = decode(data, self._max_bytes)
        except ProtocolError as e:
            return self._error(ERR_PROTOCOL, str(e))
        if msg.type not in REQUEST_TYPES:
            return self._error(ERR_UNSUPPORTED, f"'{msg.type}' is not a request; requests: {', '.join(REQUEST_TYPES)}")
        try:
            reply_type, fields = self._handler(msg)
            return encode(reply_type, self._max_bytes, **fields)
        except Rejected as e:
            return self._error(ERR_REJECTED, str(e))
        # The robot side must answer every request and keep serving, whatever its handler did.
        except Exception as e:
            _log.exception("bridge handler failed on a '%s' request", msg.type)
            return self._error(ERR_INTERNAL, f"{type(e).__name__}: {e}")

    def _error(self, code: str, message: str) -> bytes:
        self.errors += 1
        _log.warning("bridge: replying error (%s): %s", code, message)
        return encode("error", code=code, message=message[:4000])

    def close(self) -> None:
        self._sock.close(0)


class BridgeClient:
    """REQ socket with a timeout on every request; after a timeout the socket is rebuilt (lazy-pirate pattern)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout_s: float = 1.0,
        allow_remote: bool = False,
        max_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = check_address(address, allow_remote)
        self.timeout_s = float(timeout_s)
        self._max_bytes = max_bytes
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._connect()

    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self._max_bytes)
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
        sock.connect(self.address)
        self._sock = sock

    def request(self, type_: str, **fields: Any) -> Message:
        """Send one schema-checked request and return the checked reply (``error`` raises :class:`RemoteError`)."""
        return self.request_raw(encode(type_, self._max_bytes, **fields), what=type_)

    def request_raw(self, data: bytes, what: str = "raw") -> Message:
        """Send already-encoded bytes (any bytes: used to probe a server) and return the checked reply."""
        if self._sock is None:
            raise BridgeError("the bridge client is closed")
        t0 = time.monotonic()
        try:
            self._sock.send(data)
        except zmq.Again:
            self._reconnect()
            raise BridgeTimeout(f"could not send '{what}' to {self.address} within {self.timeout_s:.3g} s") from None
        remaining = self.timeout_s - (time.monotonic() - t0)
        if remaining <= 0 or not self._sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
            self._reconnect()
            raise BridgeTimeout(
                f"no reply from {self.address} to '{what}' within {self.timeout_s:.3g} s; is the robot process running?"
            )
        reply = decode(self._sock.recv(), self._max_bytes)
        if reply.type == "error":
            raise RemoteError(reply["code"], reply["message"])
        return reply

    def _reconnect(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
        self._connect()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
