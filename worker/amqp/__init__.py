"""RabbitMQ plumbing: topology, a confirmed publisher, a threaded consumer, and small CLI helpers.

pika connections are not thread-safe, so every connection here has exactly one owner at a time: the
publisher guards its connection with a lock, the consumer keeps its connection on one thread and lets the
handler threads hand their verdicts back through ``add_callback_threadsafe``. A delivery tag is only valid
on the connection it came from; after a reconnect, verdicts for older deliveries are dropped and the broker
redelivers those messages, so handlers must be idempotent (the ledger makes them so).

Message bodies never reach a log: they carry phone numbers. For the same reason a failing handler is
logged with its exception type and stack, not the exception's text, which may quote the message.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from worker import metrics
from worker.errors import B2CError, BrokerUnavailable, PublishError, TopologyError
from worker.settings import AmqpSettings, redact_url

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
PERSISTENT = 2
REASON_HEADER = "x-b2c-reason"
MESSAGE_HEADER = "x-b2c-message"
SOURCE_QUEUE_HEADER = "x-b2c-queue"
DELIVERY_COUNT_HEADER = "x-delivery-count"

_NOT_FOUND = 404
_PRECONDITION_FAILED = 406
_SETTING_HINTS = {
    "x-delivery-limit": "x-delivery-limit (B2C_DELIVERY_LIMIT)",
    "x-queue-type": "queue type (x-queue-type, must be quorum)",
    "x-dead-letter-routing-key": "dead-letter routing key (B2C_DEAD_QUEUE)",
}


class _NoReturnedBodies(logging.Filter):
    """pika logs the first 255 bytes of every returned (unroutable) message; keep only its routing."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Published message was returned"):
            args = record.args if isinstance(record.args, tuple) else ()
            record.msg = "Published message was returned (body omitted): method=%r"
            record.args = (args[2] if len(args) > 2 else None,)
        return True


logging.getLogger("pika.adapters.blocking_connection").addFilter(_NoReturnedBodies())


# --- connecting --------------------------------------------------------------------------------------------


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


def _close_quietly(connection: Any) -> None:
    if connection is None:
        return
    with contextlib.suppress(pika.exceptions.AMQPError, OSError, AssertionError):
        if connection.is_open:
            connection.close()


# --- topology ----------------------------------------------------------------------------------------------


def command_queue_arguments(amqp: AmqpSettings) -> dict[str, Any]:
    """A quorum queue that counts deliveries, so a message requeued forever ends on the dead queue."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": amqp.delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": amqp.dead_queue,
    }


def delay_tier_label(seconds: float) -> str:
    """``5s``, ``120s``, ``200ms``: a delay tier's name in its queue name and metric label."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def delay_queue_name(command_queue: str, seconds: float) -> str:
    return f"{command_queue}.retry.{delay_tier_label(seconds)}"


def delay_queue_arguments(amqp: AmqpSettings, seconds: float) -> dict[str, Any]:
    """A queue nobody consumes: each message expires after ``seconds`` and goes back to the command queue.

    Quorum with at-least-once dead-lettering (which needs reject-publish overflow): a message is removed
    from the delay queue only once the command queue has confirmed taking it back.
    """
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": round(seconds * 1000),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": amqp.command_queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def declare_delay_queues(channel: BlockingChannel, amqp: AmqpSettings, delays: Sequence[float]) -> None:
    """One delay queue per retry tier (B2C_RETRY_DELAYS), e.g. ``payouts.commands.retry.5s``."""
    for seconds in delays:
        name = delay_queue_name(amqp.command_queue, seconds)
        arguments = delay_queue_arguments(amqp, seconds)
        _declare(functools.partial(channel.queue_declare, queue=name, durable=True, arguments=arguments), "queue", name)


def declare_topology(channel: BlockingChannel, amqp: AmqpSettings) -> None:
    """Declare the events exchange, the dead queue and the command queue; safe to repeat.

    The delay tiers are declared by the worker the first time it defers a command to one of them
    (:func:`declare_delay_queues`, from worker.flow.deferral).

    A mismatch closes the channel (AMQP rules), so after a TopologyError the caller needs a new channel.
    """
    _declare(
        lambda: channel.exchange_declare(exchange=amqp.events_exchange, exchange_type="topic", durable=True),
        "exchange",
        amqp.events_exchange,
    )
    _declare(
        lambda: channel.queue_declare(queue=amqp.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}),
        "queue",
        amqp.dead_queue,
    )
    _declare(
        lambda: channel.queue_declare(queue=amqp.command_queue, durable=True, arguments=command_queue_arguments(amqp)),
        "queue",
        amqp.command_queue,
    )


def _declare(action: Callable[[], object], kind: str, name: str) -> None:
    try:
        action()
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _PRECONDITION_FAILED:
            match = re.search(r"inequivalent arg '([^']+)'", exc.reply_text or "")
            arg = match.group(1) if match else "setting"
            setting = _SETTING_HINTS.get(arg, arg)
            raise TopologyError(
                f"{kind} {name!r} already exists with a different {setting} than configured "
                f"(broker said: {exc.reply_text}); delete the {kind} (after moving its messages) "
                "or change the settings to match"
            ) from None
        raise TopologyError(f"cannot declare {kind} {name!r}: {exc.reply_text}") from None


def queue_depth(channel: BlockingChannel, queue: str) -> int:
    """Messages ready in ``queue`` (not counting unacknowledged ones); TopologyError if it is missing."""
    try:
        ok = channel.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _NOT_FOUND:
            raise TopologyError(f"queue {queue!r} does not exist") from None
        raise TopologyError(f"cannot inspect queue {queue!r}: {exc.reply_text}") from None
    return int(ok.method.message_count)


# --- publishing --------------------------------------------------------------------------------------------


def _properties(message_id: str | None, headers: Mapping[str, Any] | None) -> Any:
    return pika.BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=PERSISTENT,
        message_id=message_id,
        headers=dict(headers) if headers else None,
        timestamp=int(time.time()),
    )


def _target(exchange: str, routing_key: str) -> str:
    return f"exchange {exchange or '(default)'!r} with routing key {routing_key!r}"


class ConfirmedPublisher:
    """Publishes one message at a time and returns only once the broker has taken responsibility for it.

    One lock serialises publishers; a keep-alive thread services heartbeats between publishes so an idle
    publisher is not dropped by the broker. A lost connection is re-opened once per publish, which can
    duplicate a message whose confirm was lost: consumers deduplicate by message or event id.
    """

    def __init__(self, url: str, *, name: str = "mpesa-b2c-publisher", heartbeat: int = 30) -> None:
        self._url = url
        self._safe_url = redact_url(url)
        self._name = name
        self._heartbeat = heartbeat
        self._lock = threading.Lock()
        self._connection: Any = None
        self._channel: Any = None
        self._closed = threading.Event()
        self._keepalive = threading.Thread(target=self._keep_alive, name=f"{name}-keepalive", daemon=True)
        self._keepalive.start()

    def __enter__(self) -> ConfirmedPublisher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        properties = _properties(message_id, headers)
        target = _target(exchange, routing_key)
        with self._lock:
            if self._closed.is_set():
                raise PublishError("the publisher is closed")
            for attempt in (1, 2):
                try:
                    channel = self._ensure_channel()
                    channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
                    return
                except pika.exceptions.UnroutableError:
                    raise PublishError(f"unroutable: no queue is bound for {target}") from None
                except pika.exceptions.NackError:
                    raise PublishError(f"the broker refused (nack) the message for {target}") from None
                except pika.exceptions.ChannelClosedByBroker as exc:
                    self._channel = None
                    raise PublishError(f"the broker refused {target}: {exc.reply_text}") from None
                except (pika.exceptions.AMQPError, BrokerUnavailable, OSError) as exc:
                    self._drop()
                    if attempt == 2:
                        raise PublishError(f"cannot publish to {target} on {self._safe_url}: {exc}") from None
                    log.warning("publisher connection to %s failed (%s); reconnecting", self._safe_url, exc)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._drop()
        if self._keepalive is not threading.current_thread():
            self._keepalive.join(timeout=5)

    def _ensure_channel(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self._drop()
            self._connection = connect(self._url, heartbeat=self._heartbeat, name=self._name)
        if self._channel is None or not self._channel.is_open:
            channel = self._connection.channel()
            channel.confirm_delivery()
            self._channel = channel
        return self._channel

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        _close_quietly(connection)

    def _keep_alive(self) -> None:
        interval = max(0.5, self._heartbeat / 3)
        while not self._closed.wait(interval):
            if not self._lock.acquire(blocking=False):
                continue
            try:
                if self._connection is not None and self._connection.is_open:
                    self._connection.process_data_events(time_limit=0)
            except (pika.exceptions.AMQPError, OSError) as exc:
                log.info("idle publisher connection to %s lost (%s); will reconnect on demand", self._safe_url, exc)
                self._drop()
            finally:
                self._lock.release()


# --- consuming ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One message as the handler sees it; ``delivery_count`` is quorum's count of earlier deliveries."""

    body: bytes
    headers: dict[str, Any]
    redelivered: bool
    delivery_count: int
    message_id: str | None
    routing_key: str


@dataclass(frozen=True)
class Ack:
    """Done with the message: remove it from the queue."""


@dataclass(frozen=True)
class Requeue:
    """Try again later; the queue's delivery limit eventually moves a message that never succeeds aside."""


@dataclass(frozen=True)
class DeadLetter:
    """Move the message to the dead queue with a reason, keeping its raw body and headers for review."""

    reason: str
    message: str


Disposition: TypeAlias = Ack | Requeue | DeadLetter
_Verdict = Literal["ack", "requeue", "reject"]


def _to_delivery(method: Any, properties: Any, body: bytes) -> Delivery:
    headers: dict[str, Any] = dict(properties.headers or {})
    count = headers.get(DELIVERY_COUNT_HEADER, 0)
    return Delivery(
        body=bytes(body),
        headers=headers,
        redelivered=bool(method.redelivered),
        delivery_count=count if isinstance(count, int) else 0,
        message_id=properties.message_id,
        routing_key=str(method.routing_key),
    )


class ThreadedConsumer:
    """Consumes one queue with a pool of handler threads while one thread keeps the connection alive.

    ``run()`` owns the connection (pika's threaded-consumer pattern): it services I/O and heartbeats,
    hands each delivery to the pool, and applies the handlers' verdicts that come back through
    ``add_callback_threadsafe``. A lost connection is re-opened with backoff; deliveries of the lost
    connection are left to the broker to redeliver (tracked by a connection generation). The first
    connection must succeed: a worker that cannot reach its broker at start fails loudly instead.
    """

    def __init__(
        self,
        url: str,
        queue: str,
        handler: Callable[[Delivery], Disposition],
        *,
        concurrency: int,
        prefetch: int,
        on_connected: Callable[[BlockingChannel], None] | None = None,
        dead_queue: str | None = None,
        heartbeat: int = 30,
        name: str = "mpesa-b2c-consumer",
        drain_timeout: float = 30.0,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 15.0,
    ) -> None:
        if concurrency < 1 or prefetch < 1:
            raise ValueError("concurrency and prefetch must be at least 1")
        self._url = url
        self._safe_url = redact_url(url)
        self._queue = queue
        self._handler = handler
        self._concurrency = concurrency
        self._prefetch = prefetch
        self._on_connected = on_connected
        self._dead_queue = dead_queue
        self._heartbeat = heartbeat
        self._name = name
        self._drain_timeout = drain_timeout
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay

        self._lock = threading.RLock()  # stop() may run in a signal handler on the thread holding it
        self._generation = 0
        self._in_flight = 0
        self._unsettled = 0
        self._queued: dict[Future[None], tuple[int, int]] = {}
        self._connection: Any = None
        self._runner: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._publisher: ConfirmedPublisher | None = None
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._connected_once = False
        self._drain_deadline: float | None = None
        self._paused = threading.Event()
        self._pause_reason = ""

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def pause(self, reason: str = "") -> None:
        """Take no new deliveries until :meth:`resume`: the broker consumer is cancelled, so messages stay
        in the queue; deliveries already taken are still handled.
        Safe from any thread, and across reconnects."""
        with self._lock:
            if self._paused.is_set():
                return
            self._paused.set()
            self._pause_reason = reason
            connection = self._connection
        metrics.CONSUMER_PAUSED.set(1)
        self._wake(connection)

    def resume(self) -> None:
        with self._lock:
            if not self._paused.is_set():
                return
            self._paused.clear()
            connection = self._connection
        metrics.CONSUMER_PAUSED.set(0)
        self._wake(connection)

    @staticmethod
    def _wake(connection: Any) -> None:
        if connection is not None:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.add_callback_threadsafe(lambda: None)

    @property
    def generation(self) -> int:
        """How many connections this consumer has opened; grows by one on every reconnect."""
        with self._lock:
            return self._generation

    def run(self) -> None:
        with self._lock:
            if self._runner is not None:
                raise RuntimeError("this consumer is already running")
            self._runner = threading.current_thread()
        self._finished.clear()
        self._executor = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix=f"{self._name}")
        delay = self._reconnect_delay
        try:
            while not self._stopping.is_set():
                started = time.monotonic()
                try:
                    self._session()
                except (pika.exceptions.AMQPError, BrokerUnavailable, OSError) as exc:
                    if not self._connected_once:
                        if isinstance(exc, BrokerUnavailable):
                            raise
                        raise BrokerUnavailable(f"RabbitMQ at {self._safe_url} failed: {exc}") from None
                    self._cancel_queued()
                    if time.monotonic() - started > self._max_reconnect_delay:
                        delay = self._reconnect_delay
                    log.warning(
                        "consumer of %r lost RabbitMQ at %s (%s); reconnecting in %.1fs",
                        self._queue,
                        self._safe_url,
                        exc,
                        delay,
                    )
                    self._stopping.wait(delay)
                    delay = min(delay * 2, self._max_reconnect_delay)
        finally:
            self._shutdown()

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking deliveries, let running handlers finish and settle, then close.

        Called from ``run()``'s own thread (a signal handler), it only asks; from any other thread it
        also waits for ``run()`` to return.
        """
        with self._lock:
            if self._drain_deadline is None:
                self._drain_deadline = time.monotonic() + self._drain_timeout
            connection, runner = self._connection, self._runner
        self._stopping.set()
        if connection is not None:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.add_callback_threadsafe(lambda: None)
        if runner is None or runner is threading.current_thread():
            return
        self._finished.wait(self._drain_timeout + 10 if timeout is None else timeout)

    # -- connection thread --

    def _session(self) -> None:
        connection = connect(self._url, heartbeat=self._heartbeat, name=self._name)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self._prefetch)
            if self._on_connected is not None:
                self._on_connected(channel)
            with self._lock:
                self._generation += 1
                self._unsettled = 0
                self._connection = connection
                generation = self._generation
            consumer_tag = None if self.paused else self._consume(connection, channel, generation)
            self._connected_once = True
            log.info(
                "%s %r on %s (connection %d, concurrency %d, prefetch %d)",
                "paused, not consuming" if consumer_tag is None else "consuming",
                self._queue,
                self._safe_url,
                generation,
                self._concurrency,
                self._prefetch,
            )
            while not self._stopping.is_set():
                connection.process_data_events(time_limit=0.5)
                consumer_tag = self._follow_pause(connection, channel, generation, consumer_tag)
                if consumer_tag is not None and not channel.consumer_tags:
                    raise pika.exceptions.ConsumerCancelled(f"the broker cancelled the consumer of {self._queue!r}")
            self._drain(connection, channel, consumer_tag, generation)
        finally:
            with self._lock:
                if self._connection is connection:
                    self._connection = None
            _close_quietly(connection)

    def _consume(self, connection: Any, channel: Any, generation: int) -> str:
        try:
            tag: str = channel.basic_consume(
                self._queue,
                on_message_callback=functools.partial(self._on_message, (connection, generation)),
            )
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == _NOT_FOUND:
                raise TopologyError(
                    f"queue {self._queue!r} does not exist on {self._safe_url}: declare the topology"
                ) from None
            raise
        return tag

    def _follow_pause(self, connection: Any, channel: Any, generation: int, consumer_tag: str | None) -> str | None:
        """Cancel or restart the broker consumer when :meth:`pause` / :meth:`resume` asked for it."""
        if self.paused:
            if consumer_tag is not None:
                channel.basic_cancel(consumer_tag)
                log.warning("stopped taking messages from %r: %s", self._queue, self._pause_reason or "paused")
            return None
        if consumer_tag is None:
            consumer_tag = self._consume(connection, channel, generation)
            log.info("taking messages from %r again", self._queue)
        return consumer_tag

    def _on_message(self, session: tuple[Any, int], channel: Any, method: Any, properties: Any, body: bytes) -> None:
        connection, generation = session
        tag = method.delivery_tag
        if self._stopping.is_set() or self._executor is None:
            channel.basic_nack(tag, requeue=True)
            return
        delivery = _to_delivery(method, properties, body)
        with self._lock:
            self._in_flight += 1
        metrics.IN_FLIGHT.inc()
        future = self._executor.submit(self._handle, connection, channel, generation, tag, delivery)
        with self._lock:
            self._queued[future] = (generation, tag)
        future.add_done_callback(self._forget)

    def _cancel_queued(self) -> None:
        """Drop deliveries of a lost connection that no handler has started: the broker redelivers them,
        and running them now would only repeat the work (their acks would be dropped as stale)."""
        with self._lock:
            queued = list(self._queued)
        for future in queued:
            if future.cancel():
                with self._lock:
                    self._in_flight -= 1
                metrics.IN_FLIGHT.dec()

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._queued.pop(future, None)

    def _apply(self, channel: Any, generation: int, tag: int, verdict: _Verdict) -> None:
        with self._lock:
            current = generation == self._generation
            if current:
                self._unsettled -= 1
        if not current or not channel.is_open:
            return
        if verdict == "ack":
            channel.basic_ack(tag)
        elif verdict == "requeue":
            channel.basic_nack(tag, requeue=True)
        else:
            channel.basic_reject(tag, requeue=False)

    def _drain(self, connection: Any, channel: Any, consumer_tag: str | None, generation: int) -> None:
        if consumer_tag is not None:
            with contextlib.suppress(pika.exceptions.AMQPChannelError):
                channel.basic_cancel(consumer_tag)
        with self._lock:
            queued = list(self._queued.items())
        for future, (future_generation, tag) in queued:
            if future.cancel():
                with self._lock:
                    self._in_flight -= 1
                metrics.IN_FLIGHT.dec()
                if future_generation == generation:
                    channel.basic_nack(tag, requeue=True)
        deadline = self._deadline()
        while time.monotonic() < deadline:
            with self._lock:
                if self._in_flight == 0 and self._unsettled <= 0:
                    break
            connection.process_data_events(time_limit=0.1)
        else:
            log.warning(
                "%d handler(s) still running after %.0fs; their messages will be redelivered",
                self.in_flight,
                self._drain_timeout,
            )

    def _deadline(self) -> float:
        with self._lock:
            return self._drain_deadline or time.monotonic() + self._drain_timeout

    def _shutdown(self) -> None:
        deadline = self._deadline()
        while self.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            publisher, self._publisher = self._publisher, None
            self._runner = None
        if publisher is not None:
            publisher.close()
        self._finished.set()

    # -- handler threads --

    def _handle(self, connection: Any, channel: Any, generation: int, tag: int, delivery: Delivery) -> None:
        try:
            verdict = self._verdict(delivery)
            self._settle(connection, channel, generation, tag, verdict)
        finally:
            with self._lock:
                self._in_flight -= 1
            metrics.IN_FLIGHT.dec()

    def _verdict(self, delivery: Delivery) -> _Verdict:
        try:
            disposition: object = self._handler(delivery)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not stop the consumer
            log.error(
                "handler raised %s for message_id=%s from %r; requeueing\n%s",
                type(exc).__name__,
                delivery.message_id,
                self._queue,
                "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
            )
            return "requeue"
        match disposition:
            case Ack():
                return "ack"
            case Requeue():
                return "requeue"
            case DeadLetter():
                return self._dead_letter(delivery, disposition)
        log.error("handler returned %s, not a Disposition; requeueing", type(disposition).__name__)
        return "requeue"

    def _dead_letter(self, delivery: Delivery, verdict: DeadLetter) -> _Verdict:
        if self._dead_queue is None:
            log.warning(
                "dead-lettering message_id=%s (%s) through the dead-letter exchange of %r",
                delivery.message_id,
                verdict.reason,
                self._queue,
            )
            return "reject"
        headers = dict(delivery.headers)
        headers[REASON_HEADER] = verdict.reason
        headers[MESSAGE_HEADER] = verdict.message
        headers[SOURCE_QUEUE_HEADER] = self._queue
        try:
            self._dead_publisher().publish(
                "", self._dead_queue, delivery.body, message_id=delivery.message_id, headers=headers
            )
        except B2CError as exc:
            log.error("cannot dead-letter message_id=%s (%s); requeueing instead", delivery.message_id, exc)
            return "requeue"
        log.warning("dead-lettered message_id=%s to %r: %s", delivery.message_id, self._dead_queue, verdict.reason)
        return "ack"

    def _dead_publisher(self) -> ConfirmedPublisher:
        with self._lock:
            if self._publisher is None:
                self._publisher = ConfirmedPublisher(self._url, name=f"{self._name}-dead", heartbeat=self._heartbeat)
            return self._publisher

    def _settle(self, connection: Any, channel: Any, generation: int, tag: int, verdict: _Verdict) -> None:
        with self._lock:
            current = generation == self._generation and connection is self._connection
            if current:
                self._unsettled += 1
        if not current:
            log.info("dropping the %s of a delivery from a closed connection; the broker redelivers it", verdict)
            return
        try:
            connection.add_callback_threadsafe(functools.partial(self._apply, channel, generation, tag, verdict))
        except (pika.exceptions.AMQPError, OSError):
            with self._lock:
                if generation == self._generation:
                    self._unsettled -= 1
            log.info("connection closed before the %s was sent; the broker redelivers the message", verdict)


# --- command-line helpers ----------------------------------------------------------------------------------


def _payout_id(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = payload.get("payout_id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) and value else None


def publish_commands(url: str, queue: str, bodies: Iterable[bytes], *, declare: AmqpSettings | None = None) -> int:
    """Publish payout commands to ``queue`` with confirms; returns how many the broker confirmed.

    Declares nothing unless ``declare`` carries the topology: a missing queue means the worker never ran,
    and publishing into the void would lose the commands.
    """
    safe = redact_url(url)
    connection = connect(url, name="mpesa-b2c-publish")
    count = 0
    try:
        channel = connection.channel()
        if declare is not None:
            declare_topology(channel, declare)
        try:
            channel.queue_declare(queue=queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == _NOT_FOUND:
                raise TopologyError(
                    f"queue {queue!r} does not exist on {safe}: start the worker first "
                    "(it declares the topology) or pass --declare"
                ) from None
            raise
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", queue, body, _properties(_payout_id(body), None), mandatory=True)
            count += 1
        return count
    except pika.exceptions.UnroutableError:
        raise PublishError(f"message {count + 1} was unroutable: queue {queue!r} disappeared") from None
    except pika.exceptions.NackError:
        raise PublishError(f"the broker refused (nack) message {count + 1} for queue {queue!r}") from None
    except pika.exceptions.AMQPError as exc:
        raise PublishError(
            f"publishing to {queue!r} on {safe} failed after {count} confirmed message(s): {exc}"
        ) from None
    finally:
        _close_quietly(connection)


def follow_events(
    url: str,
    exchange: str,
    on_event: Callable[[str, bytes], bool],
    *,
    binding: str = "payout.#",
    timeout: float | None = None,
    on_ready: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Call ``on_event(routing_key, body)`` for each event until it returns False, ``timeout`` passes or
    ``stop`` is set.

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
            if exc.reply_code == _NOT_FOUND:
                raise TopologyError(f"exchange {exchange!r} does not exist on {safe}: start the worker first") from None
            raise
        ok = channel.queue_declare(queue="", exclusive=True, auto_delete=True)
        private = ok.method.queue
        channel.queue_bind(queue=private, exchange=exchange, routing_key=binding)
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
        _close_quietly(connection)


def dead_letters(url: str, dead_queue: str, limit: int = 20) -> list[Delivery]:
    """Peek at up to ``limit`` dead messages without removing them (they are requeued afterwards).

    Quorum queues of RabbitMQ 3.x requeue returned messages at the tail, so peeking can reorder them.
    """
    safe = redact_url(url)
    connection = connect(url, name="mpesa-b2c-dead")
    try:
        channel = connection.channel()
        queue_depth(channel, dead_queue)
        found: list[Delivery] = []
        while len(found) < limit:
            method, properties, body = channel.basic_get(dead_queue, auto_ack=False)
            if method is None:
                break
            found.append(_to_delivery(method, properties, body))
        if found:
            channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        return found
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailable(f"lost RabbitMQ at {safe} while reading {dead_queue!r}: {exc}") from None
    finally:
        _close_quietly(connection)
