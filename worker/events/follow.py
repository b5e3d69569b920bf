"""Following payout events as a payer would: ``mpesa-b2c events``, the demo and the end-to-end tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence

import pika.exceptions

from worker.amqp.connection import close_quietly, connect
from worker.amqp.topology import NOT_FOUND
from worker.errors import BrokerUnavailable, TopologyError
from worker.payouts.models import EVENT_BINDINGS
from worker.settings import redact_url


def follow_events(
    url: str,
    exchange: str,
    on_event: Callable[[str, bytes], bool],
    *,
    binding: str | Sequence[str] = EVENT_BINDINGS,
    timeout: float | None = None,
    on_ready: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Call ``on_event(routing_key, body)`` for each event until it returns False, ``timeout`` passes or
    ``stop`` is set. ``binding`` is one routing-key pattern or several; by default every payout event and
    every refused command.

    A private server-named queue is bound for the duration, so following never steals events from others;
    ``on_ready`` is called once it is bound: from then on no event is missed.
    """
    safe = redact_url(url)
    connection = connect(url, name="mpesa-b2c-events")
    try:
        channel = connection.channel()
        try:
            channel.exchange_declare(exchange=exchange, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_FOUND:
                raise TopologyError(f"exchange {exchange!r} does not exist on {safe}: start the worker first") from None
            raise
        ok = channel.queue_declare(queue="", exclusive=True, auto_delete=True)
        private = ok.method.queue
        for pattern in (binding,) if isinstance(binding, str) else binding:
            channel.queue_bind(queue=private, exchange=exchange, routing_key=pattern)
        if on_ready is not None:
            on_ready()
        deadline = None if timeout is None else time.monotonic() + timeout
        for method, _, body in channel.consume(private, auto_ack=True, inactivity_timeout=0.1):
            if method is not None and not on_event(str(method.routing_key), bytes(body)):
                break
            if (deadline is not None and time.monotonic() >= deadline) or (stop is not None and stop.is_set()):
                break
        with contextlib.suppress(pika.exceptions.AMQPError):
            channel.cancel()
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailable(f"lost RabbitMQ at {safe} while following events: {exc}") from None
    finally:
        close_quietly(connection)
