"""The circuit breaker's decisions against a real ledger (both engines), without a broker or a gateway.

Results are stored the way the receiver stores them (``ledger.results.record``); the breaker reads them from
the database, as a worker in another process would.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest

from worker.flow.breaker import CircuitBreaker
from worker.gateway.g2 import AttemptReason, HoldReason
from worker.ledger import Ledger, open_ledger
from worker.ledger.flow_state import BreakerReason, FlowStore
from worker.payouts.models import CommandId, PayoutCommand, originator_conversation_id
from worker.protocol.codes import ResponseOutcome
from worker.protocol.result import build_result_envelope, parse_result_envelope
from worker.settings import Settings

KEY = "600000"
PAY = "BusinessPayment"


@dataclass
class Rig:
    ledger: Ledger
    store: FlowStore
    make: Callable[..., CircuitBreaker]

    def payout(self, payout_id: str, amount: str = "150.00") -> str:
        command = PayoutCommand(
            payout_id=payout_id,
            msisdn="254712345678",
            amount=Decimal(amount),
            command=CommandId.BUSINESS_PAYMENT,
            remarks="Payout",
            occasion=None,
            metadata={},
        )
        ocid = originator_conversation_id(KEY, "mpesab2c", payout_id)
        self.ledger.payouts.record(command, ocid)
        self.ledger.payouts.claim_send(payout_id, expected_attempts=0)
        self.ledger.payouts.mark_accepted(payout_id, conversation_id=f"AG_{payout_id}", code="0", description="ok")
        return ocid

    def result(self, ocid: str, code: str, amount: str = "150.00") -> None:
        raw = build_result_envelope(
            code=code,
            description=f"result {code}",
            originator_conversation_id=ocid,
            conversation_id=None,
            transaction_id="SE1234ABCD" if code == "0" else None,
            parameters={"TransactionAmount": amount, "TransactionReceipt": "SE1234ABCD"} if code == "0" else None,
        )
        self.ledger.results.record(raw, parse_result_envelope(raw))


@pytest.fixture
def rig(ledger_env: dict[str, str], make_settings: Callable[..., Settings]) -> Iterator[Rig]:
    settings = make_settings(**ledger_env)
    ledger = open_ledger(settings.ledger)
    store = ledger.flow

    def make(**overrides: object) -> CircuitBreaker:
        options: dict[str, object] = {
            "threshold": 3,
            "probe_seconds": 0.2,
            "gateway_url": "http://127.0.0.1:9/mminterface/request",
            "connect_timeout": 0.5,
            "canary_lease": 30.0,
            "canary_wait": 0.3,
        }
        options.update(overrides)
        return CircuitBreaker(store, KEY, **options)  # type: ignore[arg-type]

    yield Rig(ledger, store, make)
    ledger.close()


def test_one_request_proves_the_credential_before_the_others_go(rig: Rig) -> None:
    breaker = rig.make()
    first, second = rig.payout("c-1"), rig.payout("c-2")
    assert breaker.gate(PAY, first) is None, "the canary goes"
    assert breaker.gate(PAY, second) == HoldReason.CREDENTIAL_UNPROVEN, "the others wait for its result (bounded)"
    rig.result(first, "0")
    assert breaker.gate(PAY, second) is None
    assert breaker.describe()["credential_proven"] is True
    assert rig.make().gate(PAY, rig.payout("c-3")) is None, "another process proves its own (lease free again)"


def test_a_credential_failure_of_the_canary_opens_the_breaker_for_everyone(rig: Rig) -> None:
    breaker, other_process = rig.make(), rig.make()
    first = rig.payout("k-1")
    assert breaker.gate(PAY, first) is None
    assert other_process.gate(PAY, rig.payout("k-2")) == HoldReason.CREDENTIAL_UNPROVEN, "one canary fleet-wide"
    rig.result(first, "18")
    assert breaker.gate(PAY, rig.payout("k-3")) == HoldReason.BREAKER_OPEN
    assert other_process.gate(PAY, rig.payout("k-4")) == HoldReason.BREAKER_OPEN
    assert other_process.gate("TransactionStatusQuery", "query-1") == HoldReason.BREAKER_OPEN, "queries carry it too"
    row = rig.store.breaker(KEY)
    assert row.open and (row.reason, row.code) == ("credential", "18")
    time.sleep(0.5)  # several probe intervals: no probe exists for a credential condition
    assert not breaker.tick().accepting and rig.store.breaker(KEY).open


def test_a_canary_that_finds_the_account_empty_opens_the_breaker_before_the_others_go(rig: Rig) -> None:
    """ResultCode 1 proves the credential and says the account is empty: the waiting requests must not go."""
    breaker = rig.make()
    canary, waiting = rig.payout("e-1"), rig.payout("e-2")
    assert breaker.gate(PAY, canary) is None
    rig.result(canary, "1")
    assert breaker.gate(PAY, waiting) == HoldReason.BREAKER_OPEN
    row = rig.store.breaker(KEY)
    assert row.open and (row.reason, row.code) == ("funds", "1")
    assert breaker.describe()["credential_proven"] is True


def test_funds_results_open_it_but_not_those_of_payouts_sent_before_it_last_closed(rig: Rig) -> None:
    breaker = rig.make()
    canary = rig.payout("f-0")
    breaker.gate(PAY, canary)
    rig.result(canary, "0")
    old = rig.payout("f-1")  # accepted now, while the breaker is closed
    rig.store.open_breaker(KEY, reason=BreakerReason.UNREACHABLE, code=None, detail="test", by="t", next_probe_at=None)
    rig.store.close_breaker(KEY, by="test")
    rig.result(old, "1")  # a late result of a payout sent before the close: stale news
    assert breaker.tick().accepting and not rig.store.breaker(KEY).open
    time.sleep(0.01)
    fresh = rig.payout("f-2")
    rig.result(fresh, "1")
    decision = breaker.tick()
    assert not decision.accepting or "probe is due" in decision.why
    row = rig.store.breaker(KEY)
    assert row.open and (row.reason, row.code) == ("funds", "1")


def test_a_funds_probe_is_the_one_send_and_its_success_closes_the_breaker(rig: Rig) -> None:
    breaker = rig.make()
    rig.store.open_breaker(
        KEY, reason=BreakerReason.FUNDS, code="1", detail="test", by="t", next_probe_at=rig.store.clock()
    )
    assert breaker.tick().accepting, "a probe is due: take a command"
    probe, other = rig.payout("p-1"), rig.payout("p-2")
    assert breaker.gate(PAY, probe) is None
    assert breaker.gate(PAY, other) == HoldReason.BREAKER_OPEN
    assert breaker.gate("TransactionStatusQuery", "query-1") == HoldReason.BREAKER_OPEN, (
        "not before the credential is proven"
    )
    assert not breaker.tick().accepting, "probe in flight: take nothing"
    rig.result(probe, "1")  # still no money (and the credential works)
    assert not breaker.tick().accepting
    assert breaker.gate("TransactionStatusQuery", "query-2") is None, "lookups move no money: they go on"
    row = rig.store.breaker(KEY)
    assert row.open and row.probe_id is None and row.failed_probes == 1
    time.sleep(0.25)
    assert breaker.tick().accepting
    second = rig.payout("p-3")
    assert breaker.gate(PAY, second) is None
    rig.result(second, "0")
    assert breaker.tick().accepting and not rig.store.breaker(KEY).open


def test_consecutive_connection_failures_open_it_and_a_tcp_probe_closes_it(rig: Rig) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    breaker = rig.make(gateway_url=f"http://127.0.0.1:{port}/mminterface/request")
    for n in range(2):
        breaker.record(PAY, f"u-{n}", ResponseOutcome.RETRY_LATER, AttemptReason.CONNECTION_REFUSED, None)
    breaker.record(PAY, "u-x", ResponseOutcome.ACCEPTED, AttemptReason.RESPONSE_CODE, "0")  # an answer resets the count
    for n in range(2):
        breaker.record(PAY, f"u-{n}", ResponseOutcome.RETRY_LATER, AttemptReason.CONNECTION_REFUSED, None)
    assert not rig.store.breaker(KEY).open
    breaker.record(PAY, "u-3", ResponseOutcome.RETRY_LATER, AttemptReason.CONNECTION_REFUSED, None)
    assert rig.store.breaker(KEY).reason == "unreachable"
    time.sleep(0.25)
    assert not breaker.tick().accepting, "nothing listens yet: still unreachable"
    listener.listen()
    try:
        time.sleep(0.25)
        assert breaker.tick().accepting and not rig.store.breaker(KEY).open
    finally:
        listener.close()


def test_sync_authentication_failure_opens_it_at_once(rig: Rig) -> None:
    breaker = rig.make()
    breaker.record(PAY, "a-1", ResponseOutcome.REJECTED, AttemptReason.RESPONSE_CODE, "100000007")
    row = rig.store.breaker(KEY)
    assert row.open and (row.reason, row.code) == ("credential", "100000007")
    assert breaker.describe()["action"].startswith("fix or unlock the credential")
