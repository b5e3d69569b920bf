"""Fixtures for the lookup tests: a ledger on both engines, a fault proxy (the harness is shared)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from tests.support.fault_proxy import FaultProxy
from tests.support.pipeline import Harness
from tests.support.waiting import wait_until
from worker.ledger import Ledger, open_ledger
from worker.payouts.models import PayoutCommand, originator_conversation_id
from worker.settings import Settings

# Tight timings so every lookup happens within a test's few seconds.
FAST_LOOKUPS = {
    "B2C_LOOKUP_AFTER_SECONDS": "0.2",
    "B2C_LOOKUP_INTERVAL_SECONDS": "0.5",
    "B2C_LOOKUP_MAX_ATTEMPTS": "4",
    "B2C_LOOKUP_MAX_SECONDS": "30",
    "B2C_RESULT_TIMEOUT_SECONDS": "0.5",
    "B2C_READ_TIMEOUT": "1",
}


@pytest.fixture
def ledger(ledger_env: dict[str, str], make_settings: Callable[..., Settings]) -> Iterator[Ledger]:
    opened = open_ledger(make_settings(**ledger_env).ledger)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def proxies() -> Iterator[Callable[..., FaultProxy]]:
    made: list[FaultProxy] = []

    def make(swallow: Callable[[bytes], bool], *, hold: float = 3.0) -> FaultProxy:
        proxy = FaultProxy(swallow, hold=hold)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


WARMUP = "warmup"


def warmup_ocid(h: Harness) -> str:
    return originator_conversation_id(h.settings.mpesa.shortcode, h.settings.mpesa.org_name, WARMUP)


def prove_credential(h: Harness) -> None:
    """Make a status query the worker's first request, and wait until its answer proves the credential.

    After a process starts, worker.flow.breaker sends nothing but one "canary" request until a result proves the
    initiator credential; everything else is held back. These tests hold payment results back for 30 s, so a
    payment canary would stall every lookup for the canary's lease. The warm-up is an ``unknown`` payout the
    simulator never saw, put straight into the worker's ledger: its status query is the canary, its answer
    (49) the proof. The lookup runner then resends and pays it in the background; tests leave it out.
    """
    worker = h.stack.worker
    assert worker is not None
    ledger = worker.ledger
    command = PayoutCommand(payout_id=WARMUP, msisdn="254712999999", amount=Decimal("10.00"))
    ledger.payouts.record(command, warmup_ocid(h))
    warm = ledger.payouts.get(WARMUP)
    assert warm is not None
    ledger.payouts.claim_send(WARMUP, expected_attempts=warm.send_attempts)
    ledger.payouts.mark_unknown(WARMUP, reason="no_response", code=None, description="warm-up")
    wait_until(lambda: any(q.verdict for q in ledger.lookups.status_queries(WARMUP)), 15, "the warm-up status answer")
    wait_until(lambda: worker.flow.breaker.describe()["credential_proven"], 10, "the credential proven")
