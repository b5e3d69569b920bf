"""The confirmed publisher, the returned-body filter, and the publish/events commands, against the real broker."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from tests.support.broker import Broker, kill_connection
from worker.amqp.publisher import ConfirmedPublisher
from worker.amqp.topology import declare_topology
from worker.cli.publish import publish_commands
from worker.errors import PublishError, PublishFailure, TopologyError
from worker.events.follow import follow_events
from worker.logs import PIKA_RETURNS_LOGGER, NoReturnedBodies
from worker.settings import AmqpSettings


@pytest.fixture
def bound(broker: Broker, names: Callable[[str], str]) -> tuple[str, str]:
    exchange, queue = names("events"), names("events-tap")
    broker.channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    broker.channel.queue_declare(queue, durable=True)
    broker.channel.queue_bind(queue, exchange, routing_key="payout.#")
    return exchange, queue


def test_publish_is_persistent_json_with_id_and_headers(broker: Broker, amqp_url: str, bound: tuple[str, str]) -> None:
    exchange, queue = bound
    with ConfirmedPublisher(amqp_url) as publisher:
        publisher.publish(exchange, "payout.completed", b'{"a": 1}', message_id="evt-1", headers={"x-k": "v"})

    [(method, properties, body)] = broker.get_all(queue)
    assert body == b'{"a": 1}'
    assert method.routing_key == "payout.completed"
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert properties.message_id == "evt-1"
    assert properties.headers == {"x-k": "v"}


def test_publish_from_many_threads(broker: Broker, amqp_url: str, bound: tuple[str, str]) -> None:
    exchange, queue = bound
    failures: list[BaseException] = []
    with ConfirmedPublisher(amqp_url) as publisher:

        def publish_many(worker: int) -> None:
            try:
                for index in range(25):
                    publisher.publish(exchange, "payout.accepted", f"{worker}-{index}".encode())
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=publish_many, args=(worker,)) for worker in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert failures == []
    bodies = {body for _, _, body in broker.get_all(queue)}
    assert bodies == {f"{w}-{i}".encode() for w in range(8) for i in range(25)}


def test_unroutable_message_raises_without_logging_its_body(
    amqp_url: str, bound: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    exchange, _ = bound
    with caplog.at_level(logging.DEBUG), ConfirmedPublisher(amqp_url) as publisher:
        with pytest.raises(PublishError, match="unroutable"):
            publisher.publish(exchange, "nobody.listens", b'{"msisdn": "254712345678"}')
        publisher.publish(exchange, "payout.failed", b"{}")
    assert "nobody.listens" in caplog.text
    assert "254712345678" not in caplog.text


def test_a_new_publisher_hides_returned_bodies_even_without_logging_set_up(
    amqp_url: str, bound: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    pika_logger = logging.getLogger(PIKA_RETURNS_LOGGER)
    for installed in [f for f in pika_logger.filters if isinstance(f, NoReturnedBodies)]:
        pika_logger.removeFilter(installed)
    exchange, _ = bound
    with caplog.at_level(logging.DEBUG), ConfirmedPublisher(amqp_url) as publisher, ConfirmedPublisher(amqp_url):
        assert len([f for f in pika_logger.filters if isinstance(f, NoReturnedBodies)]) == 1
        with pytest.raises(PublishError, match="unroutable"):
            publisher.publish(exchange, "nobody.listens", b'{"msisdn": "254712345678"}')
    assert "Published message was returned (body omitted)" in caplog.text
    assert "254712345678" not in caplog.text


def test_importing_sets_up_no_logging_and_setup_logging_hides_returned_bodies() -> None:
    probe = (
        "import logging, worker.amqp.consumer, worker.amqp.publisher, worker.cli.main\n"
        "from worker.logs import PIKA_RETURNS_LOGGER, NoReturnedBodies, setup_logging\n"
        "pika_logger = logging.getLogger(PIKA_RETURNS_LOGGER)\n"
        "def count(): return sum(isinstance(f, NoReturnedBodies) for f in pika_logger.filters)\n"
        "before = count()\n"
        "setup_logging('INFO')\n"
        "setup_logging('INFO')\n"
        "print(before, count())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["0", "1"]


def test_missing_exchange_raises_and_the_publisher_recovers(
    broker: Broker, amqp_url: str, bound: tuple[str, str], names: Callable[[str], str]
) -> None:
    exchange, queue = bound
    with ConfirmedPublisher(amqp_url) as publisher:
        with pytest.raises(PublishError, match="NOT_FOUND"):
            publisher.publish(names("no-such-exchange"), "payout.failed", b"{}")
        publisher.publish(exchange, "payout.failed", b"after")
    assert [body for _, _, body in broker.get_all(queue)] == [b"after"]


def test_publisher_reconnects_after_its_connection_is_killed(
    broker: Broker, amqp_url: str, bound: tuple[str, str], names: Callable[[str], str]
) -> None:
    exchange, queue = bound
    connection_name = names("publisher")
    with ConfirmedPublisher(amqp_url, name=connection_name) as publisher:
        publisher.publish(exchange, "payout.accepted", b"before")
        kill_connection(connection_name)
        publisher.publish(exchange, "payout.accepted", b"after")
    assert [body for _, _, body in broker.get_all(queue)] == [b"before", b"after"]


def test_publishing_to_a_missing_queue_is_unroutable(amqp_url: str, names: Callable[[str], str]) -> None:
    queue = names("no-such-queue")
    with ConfirmedPublisher(amqp_url) as publisher, pytest.raises(PublishError, match="does not exist") as caught:
        publisher.publish_to_queue(queue, b"{}")
    assert caught.value.failure == PublishFailure.UNROUTABLE
    assert repr(queue) in str(caught.value)


def test_without_reconnect_a_lost_connection_fails_the_publish_once(
    broker: Broker, amqp_url: str, names: Callable[[str], str]
) -> None:
    queue, connection_name = names("no-reconnect"), names("publisher")
    broker.channel.queue_declare(queue, durable=True)
    # A long heartbeat keeps the keep-alive thread from noticing the kill before the publish does.
    with ConfirmedPublisher(amqp_url, name=connection_name, heartbeat=600, reconnect=False) as publisher:
        publisher.publish_to_queue(queue, b"before")
        kill_connection(connection_name)
        with pytest.raises(PublishError, match="cannot publish") as caught:
            publisher.publish_to_queue(queue, b"lost")
        assert caught.value.failure == PublishFailure.CONNECTION
        publisher.publish_to_queue(queue, b"after")
    assert [body for _, _, body in broker.get_all(queue)] == [b"before", b"after"]


def test_publish_commands_refuses_a_missing_queue(amqp_url: str, amqp_settings: AmqpSettings) -> None:
    with pytest.raises(TopologyError, match="start the worker first") as caught:
        publish_commands(amqp_url, amqp_settings.command_queue, [b"{}"])
    assert "--declare" in str(caught.value)


def test_publish_commands_with_declare(broker: Broker, amqp_url: str, amqp_settings: AmqpSettings) -> None:
    bodies = [json.dumps({"payout_id": f"p-{n}", "amount": "10"}).encode() for n in range(3)] + [b"not json"]

    count = publish_commands(amqp_url, amqp_settings.command_queue, bodies, declare=amqp_settings)

    assert count == 4
    got = broker.get_all(amqp_settings.command_queue)
    assert [body for _, _, body in got] == bodies
    assert [properties.message_id for _, properties, _ in got] == ["p-0", "p-1", "p-2", None]
    assert all(properties.delivery_mode == 2 for _, properties, _ in got)


def test_follow_events_delivers_matching_events_until_told_to_stop(
    broker: Broker, amqp_url: str, amqp_settings: AmqpSettings
) -> None:
    declare_topology(broker.channel, amqp_settings)
    seen: list[tuple[str, bytes]] = []

    def on_event(routing_key: str, body: bytes) -> bool:
        seen.append((routing_key, body))
        return len(seen) < 2

    follower = threading.Thread(
        target=follow_events, args=(amqp_url, amqp_settings.events_exchange, on_event), kwargs={"timeout": 20}
    )
    follower.start()
    with ConfirmedPublisher(amqp_url) as publisher:
        while True:  # mandatory publishing fails until the follower's queue is bound
            try:
                publisher.publish(amqp_settings.events_exchange, "payout.accepted", b"first")
                break
            except PublishError:
                if not follower.is_alive():
                    break
        with pytest.raises(PublishError):
            publisher.publish(amqp_settings.events_exchange, "other.thing", b"ignored")
        publisher.publish(amqp_settings.events_exchange, "payout.completed", b"second")
    follower.join(timeout=20)

    assert not follower.is_alive()
    assert seen == [("payout.accepted", b"first"), ("payout.completed", b"second")]


def test_follow_events_ends_at_its_timeout(amqp_url: str, broker: Broker, amqp_settings: AmqpSettings) -> None:
    declare_topology(broker.channel, amqp_settings)
    follow_events(amqp_url, amqp_settings.events_exchange, lambda _key, _body: True, timeout=0.5)


def test_follow_events_refuses_a_missing_exchange(amqp_url: str, names: Callable[[str], str]) -> None:
    with pytest.raises(TopologyError, match="does not exist"):
        follow_events(amqp_url, names("no-exchange"), lambda _key, _body: True, timeout=1)
