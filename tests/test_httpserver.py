"""The shared WSGI server helper stops cleanly: its loop thread ends, and never trips over a closed socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from worker.httpserver import start_server


def _hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@pytest.fixture
def thread_errors() -> Iterator[list[BaseException | None]]:
    errors: list[BaseException | None] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    yield errors
    threading.excepthook = previous


def _server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "test-http-http"]


def test_stop_ends_the_loop_thread_with_an_idle_keep_alive_connection_open(
    thread_errors: list[BaseException | None],
) -> None:
    server = start_server(_hello, "127.0.0.1", 0, threads=1, name="test-http")
    client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\nok"):
            answer += client.recv(1024)
        assert answer.startswith(b"HTTP/1.1 200")  # the connection stays open (HTTP/1.1)
        server.stop(timeout=5)
        assert _server_threads() == []
        assert client.recv(1024) == b"", "the server did not close the client's connection"
    finally:
        client.close()
    assert thread_errors == []


def test_many_starts_and_stops_leave_no_thread_and_no_error(thread_errors: list[BaseException | None]) -> None:
    for _ in range(30):
        server = start_server(_hello, "127.0.0.1", 0, threads=1, name="test-http")
        server.stop(timeout=5)
    assert _server_threads() == []
    assert thread_errors == []
