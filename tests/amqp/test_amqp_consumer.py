"""The threaded consumer against the real broker: concurrency, heartbeats, verdicts, drain, reconnects."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pika
import pytest
from prometheus_client import REGISTRY

from tests.support.broker import Broker, Starter, kill_connection
from tests.support.waiting import wait_until
from worker.amqp.consumer import (
    REASON_HEADER,
    Ack,
    DeadLetter,
    Delivery,
    Disposition,
    Requeue,
    ThreadedConsumer,
)
from worker.amqp.topology import declare_topology
from worker.errors import BrokerUnavailable
from worker.settings import AmqpSettings


class Recorder:
    """Wraps a handler to count calls and the peak of handlers running at once."""

    def __init__(self, handler: Callable[[Delivery], Disposition]) -> None:
        self._handler = handler
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.calls: list[Delivery] = []
        self.finished: list[Delivery] = []

    def __call__(self, delivery: Delivery) -> Disposition:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.calls.append(delivery)
        try:
            return self._handler(delivery)
        finally:
            with self._lock:
                self.running -= 1
                self.finished.append(delivery)


def _consumer(
    amqp_url: str, amqp_settings: AmqpSettings, handler: Callable[[Delivery], Disposition], **options: Any
) -> ThreadedConsumer:
    settings: dict[str, Any] = {
        "concurrency": 4,
        "prefetch": 8,
        "dead_queue": amqp_settings.dead_queue,
        "reconnect_delay": 0.2,
    }
    settings.update(options)
    return ThreadedConsumer(
        amqp_url,
        amqp_settings.command_queue,
        handler,
        on_connected=lambda channel: declare_topology(channel, amqp_settings),
        **settings,
    )


def _fill(broker: Broker, amqp_settings: AmqpSettings, count: int) -> None:
    declare_topology(broker.channel, amqp_settings)
    for index in range(count):
        broker.put(amqp_settings.command_queue, f'{{"n": {index}}}'.encode(), message_id=f"m{index}")


def _drained(broker: Broker, amqp_settings: AmqpSettings) -> Callable[[], bool]:
    return lambda: broker.depth(amqp_settings.command_queue) == 0


def test_handlers_run_concurrently(broker: Broker, amqp_url: str, amqp_settings: AmqpSettings, start: Starter) -> None:
    _fill(broker, amqp_settings, 40)

    def slow(_: Delivery) -> Disposition:
        time.sleep(0.5)
        return Ack()

    recorder = Recorder(slow)
    running = start(_consumer(amqp_url, amqp_settings, recorder, concurrency=8, prefetch=16))
    wait_until(lambda: len(recorder.finished) == 40, timeout=30, what="40 handled messages")
    running.stop()

    assert recorder.peak >= 6
    assert recorder.peak <= 8
    assert sorted(d.message_id or "" for d in recorder.calls) == sorted(f"m{n}" for n in range(40))
    assert broker.depth(amqp_settings.command_queue) == 0
    assert running.consumer.in_flight == 0


def test_heartbeats_survive_a_handler_slower_than_the_heartbeat(
    broker: Broker, amqp_url: str, amqp_settings: AmqpSettings, start: Starter
) -> None:
    _fill(broker, amqp_settings, 1)

    def very_slow(_: Delivery) -> Disposition:
        time.sleep(6)
        return Ack()

    recorder = Recorder(very_slow)
    running = start(_consumer(amqp_url, amqp_settings, recorder, heartbeat=2))
    wait_until(lambda: len(recorder.finished) == 1, timeout=15, what="the slow handler")
    running.stop()

    assert running.consumer.generation == 1, "the connection was lost during the slow handler"
    assert len(recorder.calls) == 1
    assert broker.depth(amqp_settings.command_queue) == 0


def test_dead_letter_keeps_the_raw_body_and_adds_the_reason(
    broker: Broker, amqp_url: str, amqp_settings: AmqpSettings, start: Starter
) -> None:
    declare_topology(broker.channel, amqp_settings)
    raw = b"\x00not json at all \xff"
    broker.channel.basic_publish(
        "",
        amqp_settings.command_queue,
        raw,
        pika.BasicProperties(delivery_mode=2, message_id="raw-1", headers={"x-origin": "test"}),
    )
    running = start(
        _consumer(amqp_url, amqp_settings, Recorder(lambda _: DeadLetter("invalid_json", "body is not JSON")))
    )
    wait_until(lambda: broker.depth(amqp_settings.dead_queue) == 1, what="the dead copy")
    running.stop()

    assert broker.depth(amqp_settings.command_queue) == 0
    [(_, properties, body)] = broker.get_all(amqp_settings.dead_queue)
    assert body == raw
    assert properties.message_id == "raw-1"
    assert properties.headers["x-origin"] == "test"
    assert properties.headers[REASON_HEADER] == "invalid_json"
    assert properties.headers["x-b2c-message"] == "body is not JSON"
    assert properties.headers["x-b2c-queue"] == amqp_settings.command_queue


def test_requeue_redelivers_with_a_delivery_count(
    broker: Broker, amqp_url: str, amqp_settings: AmqpSettings, start: Starter
) -> None:
    _fill(broker, amqp_settings, 1)

    def once_more(delivery: Delivery) -> Disposition:
        return Requeue() if delivery.delivery_count == 0 else Ack()

    recorder = Recorder(once_more)
    running = start(_consumer(amqp_url, amqp_settings, recorder))
    wait_until(lambda: len(recorder.finished) == 2, what="a redelivery")
    wait_until(_drained(broker, amqp_settings), what="the ack")
    running.stop()

    first, second = recorder.calls
    assert (first.delivery_count, first.redelivered) == (0, False)
    assert second.delivery_count == 1
    assert second.redelivered is True
    assert second.body == first.body
    assert broker.depth(amqp_settings.dead_queue) == 0


def test_poison_message_ends_on_the_dead_queue(
    broker: Broker, amqp_url: str, amqp_settings: AmqpSettings, start: Starter
) -> None:
    _fill(broker, amqp_settings, 2)

    def poison(delivery: Delivery) -> Disposition:
        if delivery.message_id == "m0":
            return Requeue()
        raise RuntimeError("handler bug")

    recorder = Recorder(poison)
    running = start(_consumer(amqp_url, amqp_settings, recorder))
    wait_until(lambda: broker.depth(amqp_settings.dead_queue) == 2, what="both messages dead-lettered")
    running.stop()

    assert broker.depth(amqp_settings.command_queue) == 0
    calls = Counter(d.message_id for d in recorder.calls)
    assert calls == {"m0": amqp_settings.delivery_limit + 1, "m1": amqp_settings.delivery_limit + 1}
    assert sorted(body for _, _, body in broker.get_all(amqp_settings.dead_queue)) == [
        b'{"n": 0}',
        b'{"n": 1}',
    ]


def test_stop_drains_running_handlers_and_returns_the_rest(
    broker: Broker, amqp_url: str, amqp_settings: AmqpSettings, start: Starter
) -> None:
    _fill(broker, amqp_settings, 6)
    release = threading.Event()

    def held(_: Delivery) -> Disposition:
        release.wait(10)
        time.sleep(0.3)
        return Ack()

    recorder = Recorder(held)
    running = start(_consumer(amqp_url, amqp_settings, recorder, concurrency=2, prefetch=6))
    wait_until(lambda: recorder.running == 2, what="two running handlers")
    wait_until(lambda: broker.depth(amqp_settings.command_queue) == 0, what="all six prefetched")
    wait_until(lambda: running.consumer.in_flight == 6, what="six deliveries held")
    assert REGISTRY.get_sample_value("mpesa_b2c_consumer_in_flight") == 6
    threading.Timer(0.3, release.set).start()
    running.stop()

    assert len(recorder.finished) == 2
    assert running.consumer.in_flight == 0
    assert REGISTRY.get_sample_value("mpesa_b2c_consumer_in_flight") == 0
    wait_until(lambda: broker.depth(amqp_settings.command_queue) == 4, what="the four unstarted requeued")
    handled = {d.message_id for d in recorder.finished}
    left = {properties.message_id for _, properties, _ in broker.get_all(amqp_settings.command_queue)}
    assert handled.isdisjoint(left)
    assert handled | left == {f"m{n}" for n in range(6)}


def test_reconnects_after_the_broker_drops_the_connection(
    broker: Broker, amqp_url: str, amqp_settings: AmqpSettings, names: Callable[[str], str], start: Starter
) -> None:
    _fill(broker, amqp_settings, 8)
    release = threading.Event()

    def held_until_released(_: Delivery) -> Disposition:
        release.wait(15)
        return Ack()

    recorder = Recorder(held_until_released)
    connection_name = names("consumer")
    running = start(_consumer(amqp_url, amqp_settings, recorder, name=connection_name, concurrency=4, prefetch=4))
    consumer = running.consumer
    wait_until(lambda: recorder.running == 4, what="four handlers held")
    held = {d.message_id for d in recorder.calls}
    kill_connection(connection_name)
    wait_until(lambda: consumer.generation == 2, what="the reconnect")
    wait_until(lambda: consumer.in_flight == 8, what="the held four redelivered on the new connection")
    release.set()
    wait_until(_drained(broker, amqp_settings), timeout=20, what="every message acked after the reconnect")
    wait_until(lambda: consumer.in_flight == 0, what="handlers done")
    running.stop()

    assert consumer.generation == 2, "acks for the old connection's tags reached the new channel"
    assert {d.message_id for d in recorder.finished} == {f"m{n}" for n in range(8)}
    calls = Counter(d.message_id for d in recorder.calls)
    assert len(held) == 4
    assert all(calls[message_id] == 2 for message_id in held), calls
    assert all(d.redelivered for d in recorder.calls[4:] if d.message_id in held)
    assert broker.depth(amqp_settings.dead_queue) == 0


def test_a_failing_dead_letter_publish_requeues_and_the_message_is_not_lost(
    broker: Broker, amqp_url: str, amqp_settings: AmqpSettings, names: Callable[[str], str], start: Starter
) -> None:
    _fill(broker, amqp_settings, 1)
    recorder = Recorder(lambda _: DeadLetter("invalid", "cannot be parsed"))
    running = start(_consumer(amqp_url, amqp_settings, recorder, dead_queue=names("no-such-dead-queue")))
    wait_until(lambda: broker.depth(amqp_settings.dead_queue) == 1, what="the broker's dead-lettering")
    running.stop()

    assert len(recorder.calls) == amqp_settings.delivery_limit + 1
    [(_, properties, body)] = broker.get_all(amqp_settings.dead_queue)
    assert body == b'{"n": 0}'
    assert REASON_HEADER not in (properties.headers or {})


def test_without_a_dead_queue_the_broker_dead_letters_at_once(
    broker: Broker, amqp_url: str, amqp_settings: AmqpSettings, start: Starter
) -> None:
    _fill(broker, amqp_settings, 1)
    recorder = Recorder(lambda _: DeadLetter("invalid", "cannot be parsed"))
    running = start(_consumer(amqp_url, amqp_settings, recorder, dead_queue=None))
    wait_until(lambda: broker.depth(amqp_settings.dead_queue) == 1, what="the broker's dead-lettering")
    running.stop()

    assert len(recorder.calls) == 1
    assert broker.depth(amqp_settings.command_queue) == 0


def test_handler_errors_are_logged_without_the_message(
    broker: Broker, amqp_url: str, amqp_settings: AmqpSettings, start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    declare_topology(broker.channel, amqp_settings)
    broker.put(amqp_settings.command_queue, b'{"msisdn": "254712345678"}', message_id="p-1")

    def leaky(delivery: Delivery) -> Disposition:
        raise ValueError(f"cannot pay {delivery.body.decode()}")

    recorder = Recorder(leaky)
    with caplog.at_level(logging.DEBUG, logger="worker.amqp"):
        running = start(_consumer(amqp_url, amqp_settings, recorder))
        wait_until(lambda: broker.depth(amqp_settings.dead_queue) == 1, what="the poison message dead")
        running.stop()

    assert "ValueError" in caplog.text
    assert "p-1" in caplog.text
    assert "254712345678" not in caplog.text


def test_consumer_recovers_when_its_queue_is_deleted(
    broker: Broker, amqp_url: str, amqp_settings: AmqpSettings, start: Starter
) -> None:
    _fill(broker, amqp_settings, 1)
    recorder = Recorder(lambda _: Ack())
    running = start(_consumer(amqp_url, amqp_settings, recorder))
    wait_until(lambda: len(recorder.finished) == 1, what="the first message")
    broker.channel.queue_delete(amqp_settings.command_queue)
    wait_until(lambda: running.consumer.generation == 2, what="the consumer to re-declare and resubscribe")
    broker.put(amqp_settings.command_queue, b"{}", message_id="after")
    wait_until(lambda: len(recorder.finished) == 2, what="a message on the re-declared queue")
    running.stop()

    assert recorder.finished[-1].message_id == "after"


def test_run_fails_fast_when_the_broker_is_unreachable(amqp_settings: AmqpSettings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    consumer = ThreadedConsumer(
        f"amqp://guest:pw-123@127.0.0.1:{port}/%2F", "q", lambda _: Ack(), concurrency=1, prefetch=1
    )
    with pytest.raises(BrokerUnavailable, match="connection refused") as caught:
        consumer.run()
    assert "pw-123" not in str(caught.value)


def test_stop_from_the_running_thread_only_asks(broker: Broker, amqp_url: str, amqp_settings: AmqpSettings) -> None:
    """A SIGTERM handler runs on run()'s own thread: stop() must return at once and run() end by itself."""
    _fill(broker, amqp_settings, 3)
    consumer: ThreadedConsumer

    def declare_then_stop(channel: Any) -> None:
        declare_topology(channel, amqp_settings)
        consumer.stop()

    consumer = ThreadedConsumer(
        amqp_url,
        amqp_settings.command_queue,
        lambda _: Ack(),
        concurrency=2,
        prefetch=2,
        on_connected=declare_then_stop,
    )
    consumer.run()

    assert consumer.in_flight == 0
    wait_until(lambda: broker.depth(amqp_settings.command_queue) == 3, what="unhandled messages left queued")
