"""Helpers for the flow-control tests (delay tiers, circuit breaker, rate limit) on the real pipeline.

Short tiers (0.2 s, 0.5 s) and two gateway attempts per round keep each scenario to a few seconds. The delay
queues a worker declares are deleted with the test's queue names (``tests.support.services``).
"""

from __future__ import annotations

import contextlib
from datetime import datetime

import requests

from tests.support.pipeline import Harness
from worker.amqp.connection import connect
from worker.amqp.topology import delay_queue_name, queue_depth
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


def queued(settings: Settings) -> int:
    """Messages ready in the command queue and its delay tiers (none of them sent, none of them failed)."""
    connection = connect(settings.amqp.url, name="flow-test")
    total = 0
    try:
        names = [settings.amqp.command_queue] + [
            delay_queue_name(settings.amqp.command_queue, s) for s in settings.flow.retry_delays
        ]
        for name in names:
            with contextlib.suppress(TopologyError):  # a tier is declared when first used
                total += queue_depth(connection.channel(), name)
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


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
