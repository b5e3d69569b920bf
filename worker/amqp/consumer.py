"""The threaded consumer: one thread owns the connection, a pool of handler threads does the work.

pika connections are not thread-safe, so the consumer keeps its connection on one thread and lets the
handler threads hand their verdicts back through ``add_callback_threadsafe``. A delivery tag is only valid
on the connection it came from; after a reconnect, verdicts for older deliveries are dropped and the broker
redelivers those messages, so handlers must be idempotent (the ledger makes them so).

Message bodies never reach a log: they carry phone numbers. For the same reason a failing handler is
logged with its exception type and stack, not the exception's text, which may quote the message.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from worker import metrics
from worker.amqp.connection import Backoff, close_quietly, connect
from worker.amqp.publisher import ConfirmedPublisher
from worker.amqp.topology import NOT_FOUND
from worker.errors import B2CError, BrokerUnavailable, TopologyError
from worker.settings import redact_url

log = logging.getLogger(__name__)

REASON_HEADER = "x-b2c-reason"
MESSAGE_HEADER = "x-b2c-message"
SOURCE_QUEUE_HEADER = "x-b2c-queue"
DELIVERY_COUNT_HEADER = "x-delivery-count"


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
        backoff = Backoff(self._reconnect_delay, self._max_reconnect_delay)
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
                    delay = backoff.after(time.monotonic() - started)
                    log.warning(
                        "consumer of %r lost RabbitMQ at %s (%s); reconnecting in %.1fs",
                        self._queue,
                        self._safe_url,
                        exc,
                        delay,
                    )
                    self._stopping.wait(delay)
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
            close_quietly(connection)

    def _consume(self, connection: Any, channel: Any, generation: int) -> str:
        try:
            tag: str = channel.basic_consume(
                self._queue,
                on_message_callback=functools.partial(self._on_message, (connection, generation)),
            )
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_FOUND:
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
            self._dead_publisher().publish_to_queue(
                self._dead_queue, delivery.body, message_id=delivery.message_id, headers=headers
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
