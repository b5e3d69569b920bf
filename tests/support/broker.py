"""Helpers for the RabbitMQ tests: an arranging channel, a consumer on its thread, a broker-side cut."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from typing import Any, TypeAlias

import pika

from worker.amqp.consumer import ThreadedConsumer


def kill_connection(connection_name: str) -> None:
    """Close a client connection from the broker side, as a RabbitMQ restart or a network cut would."""
    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    marker = f'{{"connection_name","{connection_name}"}}'
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if marker in line]
    assert pids, f"no connection named {connection_name!r}"
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "close_connection", pid, "killed by test"],
            capture_output=True,
            check=True,
            timeout=30,
        )


class Broker:
    """A confirmed channel for arranging and inspecting; reopened on demand after a channel error."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self._channel: Any = None

    @property
    def channel(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            self._channel = self.connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue=queue, passive=True).method.message_count)

    def get_all(self, queue: str) -> list[tuple[Any, Any, bytes]]:
        found: list[tuple[Any, Any, bytes]] = []
        while True:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return found
            found.append((method, properties, body))

    def put(self, queue: str, body: bytes, message_id: str | None = None) -> None:
        self.channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, message_id=message_id))


class Running:
    """A consumer running on its own thread, as the worker runs it."""

    def __init__(self, consumer: ThreadedConsumer) -> None:
        self.consumer = consumer
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.consumer.stop(timeout=15)
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "consumer did not stop"
        assert self.error is None, f"consumer failed: {self.error!r}"


Starter: TypeAlias = Callable[[ThreadedConsumer], Running]
