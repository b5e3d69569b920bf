"""Opening connections to RabbitMQ, and the pace of re-opening them.

A connection attempt fails fast (one attempt, short timeouts) so that each caller's own retry policy stays in
charge, and every error names the broker's URL without its password.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pika
import pika.exceptions

from worker.errors import BrokerUnavailable
from worker.settings import redact_url


def connect(url: str, *, heartbeat: int = 30, name: str = "mpesa-b2c") -> pika.BlockingConnection:
    """Open one connection, failing fast so that the caller's own retry policy stays in charge."""
    safe = redact_url(url)
    try:
        params = pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {safe}: invalid URL ({exc})") from None
    params.heartbeat = heartbeat
    params.connection_attempts = 1
    params.retry_delay = 0
    params.socket_timeout = 5.0
    params.stack_timeout = 10.0
    params.blocked_connection_timeout = 30.0
    params.client_properties = {"connection_name": name}
    try:
        return pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {safe}: {_describe_connect_error(exc)}") from None


def _describe_connect_error(exc: BaseException) -> str:
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError):
        return "authentication failed (check the user and password)"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return "access to the virtual host denied (does it exist, may this user use it?)"
    cause: BaseException = exc
    for _ in range(5):
        inner = getattr(cause, "exception", None)
        if isinstance(inner, BaseException):
            cause = inner
        elif cause.args and isinstance(cause.args[0], BaseException):
            cause = cause.args[0]
        else:
            break
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return "host name not resolved"
    if isinstance(cause, TimeoutError):
        return "timed out"
    return str(cause) or type(cause).__name__


def close_quietly(connection: Any) -> None:
    """Close a connection that may already be broken: closing is cleanup, never a new failure."""
    if connection is None:
        return
    with contextlib.suppress(pika.exceptions.AMQPError, OSError, AssertionError):
        if connection.is_open:
            connection.close()


class Backoff:
    """Delays between reconnects: doubling up to ``most``, and back to ``first`` after a connection that lasted.

    A connection that stayed up longer than the longest delay counts as healthy, so one blip after hours of
    work is retried quickly, while a broker that keeps dropping us is not hammered.
    """

    def __init__(self, first: float, most: float) -> None:
        self._first = first
        self._most = most
        self._next = first

    def after(self, lasted: float) -> float:
        """The delay before the next attempt, given how long the lost connection lasted."""
        if lasted > self._most:
            self._next = self._first
        delay = self._next
        self._next = min(delay * 2, self._most)
        return delay
