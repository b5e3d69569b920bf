"""Fixtures for tests against the real RabbitMQ on loopback: unique names per test, deleted afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import pika
import pika.exceptions
import pytest
from amqp_helpers import Broker, Running, Starter

from worker.amqp.consumer import ThreadedConsumer
from worker.settings import AmqpSettings, load_settings

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture
def amqp_url() -> str:
    return AMQP_URL


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A confirmed channel for arranging and inspecting; reopened on demand after a channel error."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        yield Broker(connection)
    finally:
        with contextlib.suppress(Exception):
            connection.close()


@pytest.fixture
def names(broker: Broker) -> Iterator[Callable[[str], str]]:
    """``names("cmd")`` gives a unique queue/exchange name; every name handed out is deleted afterwards."""
    token = uuid.uuid4().hex[:10]
    issued: list[str] = []

    def name(kind: str) -> str:
        value = f"test.{token}.{kind}"
        issued.append(value)
        return value

    yield name
    for value in issued:
        with contextlib.suppress(pika.exceptions.AMQPError):
            broker.channel.queue_delete(value)
        with contextlib.suppress(pika.exceptions.AMQPError):
            broker.channel.exchange_delete(value)


@pytest.fixture
def amqp_settings(names: Callable[[str], str]) -> AmqpSettings:
    return load_settings(
        {
            "B2C_COMMAND_QUEUE": names("commands"),
            "B2C_EVENTS_EXCHANGE": names("events"),
            "B2C_DEAD_QUEUE": names("dead"),
            "B2C_DELIVERY_LIMIT": "2",
        }
    ).amqp


@pytest.fixture
def start() -> Iterator[Starter]:
    started: list[Running] = []

    def run(consumer: ThreadedConsumer) -> Running:
        running = Running(consumer)
        running.thread.start()
        started.append(running)
        return running

    yield run
    for running in started:
        running.consumer.stop(timeout=15)
        running.thread.join(timeout=15)
