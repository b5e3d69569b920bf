"""The pipeline under test: simulator, receiver and worker on loopback, and an event collector."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
import requests

from worker.amqp.connection import connect
from worker.amqp.topology import declare_topology
from worker.cli.publish import publish_commands
from worker.cli.stack import LocalStack, start_local_stack
from worker.events.follow import follow_events
from worker.settings import Settings
from worker.simulator import SimulatorOptions


class EventLog:
    """Collects every event published on the exchange, from before the first command is sent."""

    def __init__(self, url: str, exchange: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, exchange), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "event collector did not bind its queue"

    def _run(self, url: str, exchange: str) -> None:
        follow_events(url, exchange, self._keep, on_ready=self._ready.set, stop=self._stop)

    def _keep(self, routing_key: str, body: bytes) -> bool:
        with self._lock:
            self.events.append((routing_key, json.loads(body)))
        return not self._stop.is_set()

    def snapshot(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self.events)

    def of(self, routing_key: str, *, duplicate: bool | None = None) -> list[dict[str, Any]]:
        return [
            e
            for k, e in self.snapshot()
            if k == routing_key and (duplicate is None or bool(e.get("duplicate")) == duplicate)
        ]

    def wait_for(self, predicate: Callable[[EventLog], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.1)
        counts: dict[str, int] = {}
        for key, event in self.snapshot():
            label = key + (" (dup)" if event.get("duplicate") else "")
            counts[label] = counts.get(label, 0) + 1
        raise AssertionError(f"timed out waiting for {what}; events so far: {counts}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Harness:
    def __init__(self, stack: LocalStack, events: EventLog) -> None:
        self.stack = stack
        self.settings: Settings = stack.settings
        self.events = events

    def publish(self, commands: list[dict[str, Any]] | list[bytes]) -> None:
        bodies = [c if isinstance(c, bytes) else json.dumps(c).encode() for c in commands]
        publish_commands(self.settings.amqp.url, self.settings.amqp.command_queue, bodies)

    def transactions(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.stack.simulator.base_url}/simulator/transactions", timeout=5)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def payments(self) -> list[dict[str, Any]]:
        return [t for t in self.transactions() if t.get("command_id") != "TransactionStatusQuery"]

    def paid_by_originator(self) -> dict[str, int]:
        paid: dict[str, int] = {}
        for t in self.payments():
            if t.get("paid"):
                paid[t["originator_conversation_id"]] = paid.get(t["originator_conversation_id"], 0) + 1
        return paid

    def dead_letters(self) -> list[tuple[dict[str, Any], bytes]]:
        connection = pika.BlockingConnection(pika.URLParameters(self.settings.amqp.url))
        channel = connection.channel()
        found = []
        while True:
            method, properties, body = channel.basic_get(self.settings.amqp.dead_queue, auto_ack=False)
            if method is None:
                break
            found.append((dict(properties.headers or {}), body))
        connection.close()  # unacked: they go back to the queue
        return found


def declare(settings: Settings) -> None:
    connection = connect(settings.amqp.url)
    declare_topology(connection.channel(), settings.amqp)
    connection.close()


@pytest.fixture
def harness_factory(
    amqp_names: dict[str, str], ledger_env: dict[str, str], make_settings: Callable[..., Settings]
) -> Iterator[Callable[..., Harness]]:
    started: list[tuple[LocalStack, EventLog]] = []

    def start(
        options: SimulatorOptions | None = None, *, gateway_url: Callable[[str], str] | None = None, **env: str
    ) -> Harness:
        """``gateway_url``: see start_local_stack (a fault proxy between worker and simulator)."""
        settings = make_settings(**amqp_names, **ledger_env, **env)
        declare(settings)
        events = EventLog(settings.amqp.url, settings.amqp.events_exchange)
        stack = start_local_stack(
            settings, simulator_options=options or SimulatorOptions(result_delay=0.05), gateway_url=gateway_url
        )
        started.append((stack, events))
        return Harness(stack, events)

    yield start
    for stack, events in started:
        stack.stop()
        events.close()
