"""ThreadedConsumer.pause/resume: while paused nothing is taken, messages stay queued; resume takes them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.waiting import wait_until
from worker.amqp.connection import connect
from worker.amqp.consumer import Ack, Delivery, Disposition, ThreadedConsumer
from worker.amqp.topology import declare_topology, queue_depth
from worker.cli.publish import publish_commands
from worker.settings import Settings


@pytest.fixture
def queue(amqp_names: dict[str, str], make_settings: Callable[..., Settings]) -> Iterator[Settings]:
    settings = make_settings(**amqp_names)
    connection = connect(settings.amqp.url)
    declare_topology(connection.channel(), settings.amqp)
    connection.close()
    yield settings


def depth(settings: Settings) -> int:
    connection = connect(settings.amqp.url)
    try:
        return queue_depth(connection.channel(), settings.amqp.command_queue)
    finally:
        connection.close()


def test_paused_consumer_takes_nothing_until_resumed(queue: Settings) -> None:
    seen: list[bytes] = []
    lock = threading.Lock()

    def handler(delivery: Delivery) -> Disposition:
        with lock:
            seen.append(delivery.body)
        return Ack()

    consumer = ThreadedConsumer(queue.amqp.url, queue.amqp.command_queue, handler, concurrency=2, prefetch=4)
    consumer.pause("paused before it started")
    runner = threading.Thread(target=consumer.run, daemon=True)
    runner.start()
    try:
        publish_commands(queue.amqp.url, queue.amqp.command_queue, [b"a", b"b", b"c"])
        time.sleep(0.6)
        assert seen == [] and depth(queue) == 3 and consumer.paused

        consumer.resume()
        wait_until(lambda: len(seen) == 3, 10, "the three messages after resume")
        consumer.pause("breaker open")
        time.sleep(0.3)
        publish_commands(queue.amqp.url, queue.amqp.command_queue, [b"d", b"e"])
        time.sleep(0.6)
        assert len(seen) == 3 and depth(queue) == 2

        consumer.resume()
        wait_until(lambda: len(seen) == 5, 10, "the two messages after the second resume")
        assert sorted(seen) == [b"a", b"b", b"c", b"d", b"e"]
    finally:
        consumer.stop(timeout=10)
        runner.join(10)
