"""Flow control under test: delay tiers, circuit breaker and rate limit, on the real pipeline (harness_factory).

Short tiers (0.2 s, 0.5 s) and two gateway attempts per round keep each scenario to a few seconds. The delay
queues a worker declares are deleted after each test (the shared ``amqp_names`` fixture knows only the
command, dead and event names).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pika
import pytest
import requests

from tests.pipeline.conftest import Harness, harness_factory
from worker import amqp
from worker.errors import TopologyError
from worker.ledger import open_ledger
from worker.ledger.flow_state import BreakerRow
from worker.settings import Settings

FAST = {
    "B2C_RETRY_DELAYS": "0.2,0.5",
    "B2C_RETRY_ATTEMPTS": "2",
    "B2C_RETRY_MAX_SECONDS": "2",
    "B2C_BREAKER_PROBE_SECONDS": "0.5",
}
CLEANED_DELAYS = (0.2, 0.5, 5.0, 30.0, 120.0, 600.0)

__all__ = ["harness_factory"]


@pytest.fixture(autouse=True)
def _delete_delay_queues(request: pytest.FixtureRequest) -> Iterator[None]:
    """Torn down after the harness has stopped its worker, before ``amqp_names`` deletes the command queue."""
    if "amqp_names" not in request.fixturenames:
        yield
        return
    names: dict[str, str] = request.getfixturevalue("amqp_names")
    yield
    with contextlib.suppress(pika.exceptions.AMQPError):
        connection = pika.BlockingConnection(pika.URLParameters(names["B2C_AMQP_URL"]))
        channel = connection.channel()
        for seconds in CLEANED_DELAYS:
            channel.queue_delete(amqp.delay_queue_name(names["B2C_COMMAND_QUEUE"], seconds))
        connection.close()


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, detail: Callable[[], Any] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {detail()}" if detail else ""))


def queued(settings: Settings) -> int:
    """Messages ready in the command queue and its delay tiers (none of them sent, none of them failed)."""
    connection = amqp.connect(settings.amqp.url, name="flow-test")
    total = 0
    try:
        names = [settings.amqp.command_queue] + [
            amqp.delay_queue_name(settings.amqp.command_queue, s) for s in settings.flow.retry_delays
        ]
        for name in names:
            with contextlib.suppress(TopologyError):  # a tier is declared when first used
                total += amqp.queue_depth(connection.channel(), name)
        return total
    finally:
        connection.close()


def breaker(settings: Settings) -> BreakerRow:
    ledger = open_ledger(settings.ledger)
    try:
        return ledger.flow.breaker(settings.mpesa.shortcode)
    finally:
        ledger.close()


class Sim:
    """The simulator's control endpoints."""

    def __init__(self, harness: Harness) -> None:
        self.base = harness.stack.simulator.base_url

    def balance(self, utility: str | None) -> None:
        body = {} if utility is None else {"utility": utility}
        requests.post(f"{self.base}/simulator/balance", json=body, timeout=5).raise_for_status()

    def fault(self, scenario: str | None) -> None:
        if scenario is None:
            requests.delete(f"{self.base}/simulator/faults", timeout=5).raise_for_status()
        else:
            requests.post(f"{self.base}/simulator/faults", json={"scenario": scenario}, timeout=5).raise_for_status()


def command(run: str, n: int, msisdn: str | None = None, amount: str | None = None) -> dict[str, Any]:
    return {
        "payout_id": f"{run}-{n:04d}",
        "msisdn": msisdn or f"0712{n:06d}",
        "amount": amount or f"{100 + n}.00",
    }


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
