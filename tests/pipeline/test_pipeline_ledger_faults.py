"""The ledger failing under the worker: it backs off instead of spinning, and no payout is stranded."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import commands
from tests.support.pipeline import Harness
from worker.amqp.consumer import Delivery
from worker.errors import LedgerError
from worker.paying.service import WorkerService
from worker.payouts.models import PayoutStatus, originator_conversation_id, parse_command
from worker.simulator import SimulatorOptions

FAST_LOOKUPS = {
    "B2C_LOOKUP_AFTER_SECONDS": "0.2",
    "B2C_LOOKUP_INTERVAL_SECONDS": "0.5",
    "B2C_LOOKUP_MAX_ATTEMPTS": "6",
    "B2C_RESULT_TIMEOUT_SECONDS": "2",
    "B2C_RETRY_DELAYS": "0.5,1",
}


def _worker(h: Harness) -> WorkerService:
    assert h.stack.worker is not None
    return h.stack.worker


def _recorded_sending(h: Harness, run: str) -> tuple[str, str, bytes]:
    """A payout recorded and marked ``sending`` by a worker that then vanished (no send running)."""
    worker, settings = _worker(h), h.settings
    body = json.dumps(commands.command(run, 1)).encode()
    parsed = parse_command(body, amount_min=settings.mpesa.amount_min, amount_max=settings.mpesa.amount_max)
    ocid = originator_conversation_id(settings.mpesa.shortcode, settings.mpesa.org_name, parsed.payout_id)
    worker.ledger.payouts.record(parsed, ocid)
    assert worker.ledger.payouts.claim_send(parsed.payout_id, expected_attempts=0) is not None
    return parsed.payout_id, ocid, body


def _delivery(body: bytes, *, redelivered: bool) -> Delivery:
    return Delivery(body=body, headers={}, redelivered=redelivered, delivery_count=0, message_id=None, routing_key="")


def test_a_replayed_command_resumes_an_orphaned_send(harness_factory: Callable[..., Harness]) -> None:
    """A replay (``dead replay``, a payer's republish, a copy parked after a ledger error) is not redelivered,
    but past the send lease no send of the payout is running: it resumes it, under the same id, like a
    redelivery would. Answered as a duplicate it would stay ``sending`` with no message left to finish it."""
    h = harness_factory(SimulatorOptions(result_delay=0.05))
    worker = _worker(h)
    _, ocid, body = _recorded_sending(h, "replay")
    worker.processor.send_lease_seconds = 0.0
    worker.processor.handle(_delivery(body, redelivered=False))
    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 1, 30, "the orphan paid")
    assert h.paid_by_originator() == {ocid: 1}
    assert {p["originator_conversation_id"] for p in h.payments()} == {ocid}


def test_a_replay_during_a_running_send_is_a_duplicate_and_waits_for_nothing(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(SimulatorOptions(result_delay=0.05))
    worker = _worker(h)
    payout_id, _, body = _recorded_sending(h, "inflight")
    worker.processor.send_lease_seconds = 3600.0
    worker.processor.handle(_delivery(body, redelivered=False))
    payout = worker.ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.SENDING and payout.send_attempts == 1
    assert h.payments() == [], "a send that may still be running was doubled"


def test_a_ledger_error_after_the_send_leaves_a_payout_the_lookup_runner_settles(
    harness_factory: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """M-PESA took the request, then the ledger failed to record it: the payout stays ``sending``, and no
    queue message may ever come back for it (here: none). The lookup runner finds it past the send lease
    (whatever its lookup count) and settles it with a status query: paid once, never resent under a new id."""
    h = harness_factory(SimulatorOptions(result_delay=600.0, query_result_delay=0.05), **FAST_LOOKUPS)
    worker = _worker(h)
    worker.lookups.stuck_after = 0.5
    payments = worker.ledger.payouts
    real = payments.mark_accepted
    failed: list[str] = []

    def mark_accepted(payout_id: str, **kwargs: Any) -> Any:
        if not failed:
            failed.append(payout_id)
            raise LedgerError("postgresql ledger: the connection was reset")
        return real(payout_id, **kwargs)

    monkeypatch.setattr(payments, "mark_accepted", mark_accepted)
    body = json.dumps(commands.command("lost", 1)).encode()
    with contextlib.suppress(LedgerError):  # its disposition goes nowhere: no broker message comes back
        worker.processor.handle(_delivery(body, redelivered=False))
    assert failed == ["lost-0001"]
    ocid = originator_conversation_id(h.settings.mpesa.shortcode, h.settings.mpesa.org_name, "lost-0001")
    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 1, 45, "the payout settled by a lookup")
    assert h.paid_by_originator() == {ocid: 1}
    assert worker.ledger.lookups.status_queries("lost-0001"), "settled by a status query"
