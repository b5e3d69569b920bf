"""A loopback stand-in for the G2 gateway with exact fault control (a test double, not a simulator).

Each POST consumes the next scripted behaviour (the last one repeats). The server records every request's
raw bytes and HTTP headers, so tests can assert on what really went over the wire.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from worker.protocol.inbound import parse_request_envelope
from worker.protocol.response import build_response_envelope

Behaviour = Callable[["_Handler", bytes], None]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


def respond(code: str, description: str = "", *, status: int = 200, conversation_id: str | None = None) -> Behaviour:
    """Answer like the gateway: a ResponseMsg echoing the request's OriginatorConversationID."""

    def behave(handler: _Handler, body: bytes) -> None:
        originator = parse_request_envelope(body).request.originator_conversation_id
        answer = build_response_envelope(
            code,
            description or f"code {code}",
            conversation_id=conversation_id,
            originator_conversation_id=originator,
            service_status="0",
        )
        handler.reply(status, answer)

    return behave


def raw(status: int, body: bytes, content_type: str = "text/xml; charset=utf-8") -> Behaviour:
    def behave(handler: _Handler, _: bytes) -> None:
        handler.reply(status, body, content_type)

    return behave


def hang(seconds: float) -> Behaviour:
    """Read the request, then say nothing (the client's read timeout fires)."""

    def behave(handler: _Handler, _: bytes) -> None:
        handler.server.stopping.wait(seconds)
        handler.close_connection = True

    return behave


def reset() -> Behaviour:
    """Read the request, then abort the connection with a TCP RST."""

    def behave(handler: _Handler, _: bytes) -> None:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
        handler.close_connection = True

    return behave


def drop() -> Behaviour:
    """Read the request, then close the connection cleanly without a response."""

    def behave(handler: _Handler, _: bytes) -> None:
        handler.connection.shutdown(socket.SHUT_RDWR)
        handler.close_connection = True

    return behave


class _Handler(BaseHTTPRequestHandler):
    server: FakeGateway

    def setup(self) -> None:
        # Behind TLS the handshake runs here, in the handler's thread, so a refused client cannot stall
        # the accept loop.
        do_handshake = getattr(self.request, "do_handshake", None)
        if do_handshake is not None:
            self.request.settimeout(5)
            do_handshake()
        super().setup()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.record(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.server.next_behaviour()(self, body)

    def reply(self, status: int, body: bytes, content_type: str = "text/xml; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeGateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._script: list[Behaviour] = [respond("0", "Accept the service request successfully.")]
        self.received: list[Received] = []

    @property
    def url(self) -> str:
        scheme = "https" if hasattr(self.socket, "context") else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}/mminterface/request"

    def script(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._script = list(behaviours)

    def next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._script.pop(0) if len(self._script) > 1 else self._script[0]

    def record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


SP_PASSWORD = "sp-Secret-4711"
INITIATOR_PASSWORD = "initiator-Secret-0815"


@dataclass(frozen=True)
class KeyPair:
    private_key: rsa.RSAPrivateKey
    cert_path: Path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
