"""ZeroMQ transport for the robot bridge: a client (control loop side, REQ) and a server (robot side, ROUTER).

Every receive has a timeout. The server answers every request exactly once: a malformed, multipart, oversized or
wrong-type request gets an ``error`` reply that names the problem, and nothing a peer sends can stop it serving
(``tests/test_deploy_bridge.py`` fuzzes a live server process with thousands of such messages). The client checks
that each reply has the type its request calls for. Addresses are loopback (``tcp://127.0.0.1:<port>``) unless
``allow_remote`` is passed: a robot must not be exposed on a network by accident.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import zmq

from core.errors import ConfigError, MfpError
from deploy.protocol import (
    ERR_INTERNAL,
    ERR_PROTOCOL,
    ERR_REJECTED,
    ERR_UNSUPPORTED,
    MAX_MESSAGE_BYTES,
    MAX_STR_LEN,
    REPLY_FOR,
    REQUEST_TYPES,
    Message,
    ProtocolError,
    decode,
    encode,
)

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
# ZeroMQ drops (without reading) frames announced above this multiple of the message limit: a memory guard.
TRANSPORT_FACTOR = 8
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_log = logging.getLogger(__name__)

# A handler answers one valid request with (reply type, reply fields).
Handler = Callable[[Message], tuple[str, dict[str, Any]]]


class BridgeError(MfpError, RuntimeError):
    """The bridge could not complete a request."""


class BridgeTimeout(BridgeError):
    """No reply within the timeout: the other side is gone, stuck, or dropped the message."""


class RemoteError(BridgeError):
    """The other side answered with an ``error`` reply (to the request named ``request``)."""

    def __init__(self, code: str, message: str, request: str = "") -> None:
        super().__init__(f"robot replied error ({code}): {message}")
        self.code = code
        self.remote_message = message
        self.request = request


class Rejected(Exception):
    """Raised by a server handler to refuse a well-formed request (sent back as an ``error`` with code rejected)."""


def check_address(address: str, allow_remote: bool = False) -> str:
    """Validate a ``tcp://host:port`` or ``ipc://path`` address; non-loopback hosts need ``allow_remote``.
    Raises :class:`core.errors.ConfigError` (a ``ValueError``)."""
    if not isinstance(address, str):
        raise ConfigError(f"bridge address must be a string like tcp://127.0.0.1:5555, got {address!r}")
    parts = urlsplit(address)
    if parts.scheme == "ipc":
        return address
    if parts.scheme != "tcp" or not parts.hostname:
        raise ConfigError(f"bridge address '{address}' must look like tcp://127.0.0.1:5555 (or ipc://path)")
    try:
        _ = parts.port  # urllib raises on a non-numeric or out-of-range port only when it is read
    except ValueError as e:
        raise ConfigError(f"bridge address '{address}' has an invalid port (0-65535)") from e
    if parts.port is None:
        raise ConfigError(f"bridge address '{address}' has no port; e.g. tcp://127.0.0.1:5555")
    if parts.hostname not in _LOOPBACK_HOSTS and not allow_remote:
        raise ConfigError(
            f"bridge address '{address}' is not loopback; the robot bridge is local-only by default. "
            "Pass allow_remote=true if the robot really should be reachable from the network."
        )
    return address


class BridgeServer:
    """ROUTER socket answering each request with ``handler``; :meth:`serve` runs until ``stop`` is set.

    Every request gets exactly one reply, whatever it holds: a multipart or empty request, bytes that are not
    msgpack, a schema violation or an oversized message get an ``error`` reply naming the problem, and so does a
    handler that fails or returns a reply the schema refuses. A ROUTER socket (not REP) keeps no send/receive state
    that a bad request could wedge, and REQ clients (and DEALER clients) talk to it unchanged. Nothing a peer sends
    can end :meth:`serve`.

    Size: a request over ``max_bytes`` is answered with an ``error`` before any decoding. ZeroMQ itself closes the
    connection of a peer that announces a frame over ``transport_limit_bytes`` (default ``8 * max_bytes``) before
    reading it, so that a huge declared length cannot make the robot process allocate it; that peer gets no reply.
    Port 0 binds a free port; :attr:`address` then holds the real one.
    """

    def __init__(
        self,
        handler: Handler,
        address: str = DEFAULT_ADDRESS,
        allow_remote: bool = False,
        max_bytes: int = MAX_MESSAGE_BYTES,
        transport_limit_bytes: int | None = None,
    ) -> None:
        check_address(address, allow_remote)
        self._handler = handler
        self._max_bytes = int(max_bytes)
        self.transport_limit_bytes = int(transport_limit_bytes or TRANSPORT_FACTOR * self._max_bytes)
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, self.transport_limit_bytes)
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
        self.failures = 0  # transport failures of the server itself (logged; serving goes on)

    def serve_once(self, timeout_s: float) -> bool:
        """Answer at most one request, waiting up to ``timeout_s``; False when none arrived. Never raises for
        anything a peer sent."""
        try:
            if not self._sock.poll(int(timeout_s * 1000), zmq.POLLIN):
                return False
            frames = self._sock.recv_multipart(copy=True)
        except zmq.ZMQError as e:
            self._failed("receive", e)
            return False
        envelope, body = _split_envelope(frames)
        self.requests += 1
        reply = self._answer(body)
        try:
            self._sock.send_multipart([*envelope, reply], flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:  # the peer is gone or not reading: its reply is dropped, serving goes on
            self._failed("send", e)
        return True

    def serve(self, stop: threading.Event, poll_s: float = 0.05) -> None:
        """Serve until ``stop`` is set (checked every ``poll_s``)."""
        while not stop.is_set():
            try:
                self.serve_once(poll_s)
            # The robot side must outlive any bug in its own reply path: log it and keep answering.
            except Exception as e:
                self._failed("serve", e)

    def _failed(self, what: str, error: BaseException) -> None:
        self.failures += 1
        if self.failures <= 10 or self.failures % 1000 == 0:
            _log.error("bridge server: %s failed (%d so far): %s: %s", what, self.failures, type(error).__name__, error)

    def _answer(self, body: list[bytes]) -> bytes:
        """The reply to one request's frames (always bytes of a valid message)."""
        if len(body) != 1:
            what = "an empty request (no message frame)" if not body else f"a multipart request ({len(body)} frames)"
            return self._error(ERR_PROTOCOL, f"{what}; a request is exactly one ZeroMQ frame holding one message")
        data = body[0]
        if len(data) > self._max_bytes:  # before any decoding
            return self._error(ERR_PROTOCOL, f"request is {len(data)} bytes; the limit is {self._max_bytes}")
        try:
            msg = decode(data, self._max_bytes)
        except ProtocolError as e:
            return self._error(ERR_PROTOCOL, str(e))
        if msg.type not in REQUEST_TYPES:
            return self._error(ERR_UNSUPPORTED, f"'{msg.type}' is not a request; requests: {', '.join(REQUEST_TYPES)}")
        try:
            reply_type, fields = self._handler(msg)
            expected = REPLY_FOR[msg.type]
            if reply_type != expected:
                raise ProtocolError(f"the handler answered '{msg.type}' with '{reply_type}'; expected '{expected}'")
            return encode(reply_type, self._max_bytes, **fields)
        except Rejected as e:
            return self._error(ERR_REJECTED, str(e))
        # The robot side must answer every request and keep serving, whatever its handler did.
        except Exception as e:
            _log.exception("bridge handler failed on a '%s' request", msg.type)
            return self._error(ERR_INTERNAL, f"{type(e).__name__}: {e}")

    def _error(self, code: str, message: str) -> bytes:
        self.errors += 1
        if self.errors <= 20 or self.errors % 1000 == 0:
            _log.warning("bridge: replying error (%s) #%d: %s", code, self.errors, message[:300])
        return encode("error", code=code, message=message[:MAX_STR_LEN])

    def close(self) -> None:
        self._sock.close(0)


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """ROUTER frames -> (routing envelope, message frames). A REQ peer sends ``[identity, b"", message]``; a DEALER
    peer may leave out the empty delimiter, then the envelope is the identity alone."""
    for i in range(1, len(frames)):
        if frames[i] == b"":
            return frames[: i + 1], frames[i + 1 :]
    return frames[:1], frames[1:]


class BridgeClient:
    """REQ socket with a timeout on every request; after a timeout or a transport error the socket is rebuilt
    (lazy-pirate pattern), so one lost reply never wedges the next request.

    A request can be started with :meth:`send_request` and its reply collected later with :meth:`collect` (the
    control loop asks for the next observation just before it needs it, and collects an action's ``ack`` at its next
    request): one request is in flight at a time, and starting another first collects the pending reply."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout_s: float = 1.0,
        allow_remote: bool = False,
        max_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = check_address(address, allow_remote)
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < float("inf")):
            raise ConfigError(f"bridge timeout_s must be a positive finite number, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self._max_bytes = max_bytes
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._pending: tuple[str, float, bool] | None = None  # (what, sent at, check the reply type)
        self._connect()

    def _connect(self) -> None:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, TRANSPORT_FACTOR * self._max_bytes)
        sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.timeout_s * 1000)))
        sock.connect(self.address)
        self._sock = sock

    @property
    def pending(self) -> str | None:
        """The request whose reply has not been collected yet, if any."""
        return self._pending[0] if self._pending is not None else None

    def request(self, type_: str, **fields: Any) -> Message:
        """Send one schema-checked request and return its checked reply: an ``error`` reply raises
        :class:`RemoteError`, a reply of another type than the request calls for raises :class:`ProtocolError`."""
        self.send_request(type_, **fields)
        return self.collect()

    def send_request(self, type_: str, **fields: Any) -> None:
        """Start a request (a pending reply is collected first, raising what :meth:`collect` raises)."""
        self._send(encode(type_, self._max_bytes, **fields), type_, check_type=True)

    def request_raw(self, data: bytes, what: str = "raw") -> Message:
        """Send already-encoded bytes (any bytes: used to probe a server) and return the checked reply."""
        self._send(data, what, check_type=False)
        return self.collect()

    def _send(self, data: bytes, what: str, check_type: bool) -> None:
        if self._sock is None:
            raise BridgeError("the bridge client is closed")
        if self._pending is not None:
            self.collect()
        try:
            self._sock.send(data)
        except zmq.Again:
            self._reconnect()
            raise BridgeTimeout(f"could not send '{what}' to {self.address} within {self.timeout_s:.3g} s") from None
        except zmq.ZMQError as e:
            self._reconnect()
            raise BridgeError(f"could not send '{what}' to {self.address}: {e}") from None
        self._pending = (what, time.monotonic(), check_type)

    def collect(self) -> Message:
        """The reply to the pending request, waiting until its timeout (counted from when it was sent)."""
        if self._sock is None or self._pending is None:
            raise BridgeError("no request is waiting for a reply")
        what, sent, check_type = self._pending
        remaining = self.timeout_s - (time.monotonic() - sent)
        if remaining <= 0 or not self._sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
            self._pending = None
            self._reconnect()
            raise BridgeTimeout(
                f"no reply from {self.address} to '{what}' within {self.timeout_s:.3g} s; is the robot process running?"
            )
        frames = self._sock.recv_multipart()
        self._pending = None
        if len(frames) != 1:
            raise ProtocolError(f"the reply to '{what}' has {len(frames)} ZeroMQ frames; a reply is exactly one")
        reply = decode(frames[0], self._max_bytes)
        if reply.type == "error":
            raise RemoteError(reply["code"], reply["message"], request=what)
        expected = REPLY_FOR.get(what) if check_type else None
        if expected is not None and reply.type != expected:
            raise ProtocolError(f"the robot answered '{what}' with a '{reply.type}' message; expected '{expected}'")
        return reply

    def _reconnect(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
        self._connect()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._pending = None
