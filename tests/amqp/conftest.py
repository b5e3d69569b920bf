"""Fixtures for tests against the real RabbitMQ on loopback: unique names per test, deleted afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pika
import pytest

from tests.support.broker import Broker, Running, Starter
from tests.support.services import QueueNames
from worker.amqp.consumer import ThreadedConsumer
from worker.settings import AmqpSettings, load_settings


@pytest.fixture
def amqp_url(rabbitmq_url: str) -> str:
    return rabbitmq_url


@pytest.fixture
def broker(rabbitmq_url: str) -> Iterator[Broker]:
    """A confirmed channel for arranging and inspecting; reopened on demand after a channel error."""
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        yield Broker(connection)
    finally:
        with contextlib.suppress(Exception):
            connection.close()


@pytest.fixture
def names(queue_names: QueueNames) -> QueueNames:
    """``names("cmd")``: these tests' short name for the suite's ``queue_names``."""
    return queue_names


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
