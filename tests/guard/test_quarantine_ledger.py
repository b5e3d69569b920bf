"""The quarantine in the ledger itself, on both engines: what is held, and what drop and release may do."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from tests.support.guard import result_for
from worker.errors import LedgerError
from worker.ledger import ApplyOutcome, Ledger, QuarantineState, open_ledger
from worker.payouts.models import CommandId, Payout, PayoutCommand, PayoutStatus, originator_conversation_id
from worker.protocol.result import parse_result_envelope
from worker.settings import Settings


@pytest.fixture
def ledger(ledger_env: dict[str, str], make_settings: Callable[..., Settings]) -> Iterator[Ledger]:
    opened = open_ledger(make_settings(**ledger_env).ledger)
    try:
        yield opened
    finally:
        opened.close()


def accepted(ledger: Ledger, payout_id: str, amount: str = "1500.00") -> Payout:
    command = PayoutCommand(
        payout_id=payout_id,
        msisdn="254712345678",
        amount=Decimal(amount),
        command=CommandId.BUSINESS_PAYMENT,
        remarks="x",
        occasion=None,
        metadata={},
    )
    ledger.payouts.record(command, originator_conversation_id("600000", "mpesab2c", payout_id))
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    return ledger.payouts.mark_accepted(payout_id, conversation_id=f"AG_{payout_id}", code="0", description="ok")


def record(ledger: Ledger, raw: bytes) -> ApplyOutcome:
    return ledger.results.record(raw, parse_result_envelope(raw)).outcome


def test_held_then_released_once(ledger: Ledger) -> None:
    payout = accepted(ledger, "p-release")
    before = len(ledger.outbox.pending(payout_id="p-release"))
    raw = result_for(payout, amount="1.00")
    applied = ledger.results.record(raw, parse_result_envelope(raw))
    assert (applied.outcome, applied.quarantine_reason) == (ApplyOutcome.QUARANTINED, "amount")
    assert applied.payout is not None and applied.payout.status is PayoutStatus.ACCEPTED
    assert len(ledger.outbox.pending(payout_id="p-release")) == before, "no event for a quarantined result"
    [entry] = ledger.quarantine.entries()

    released = ledger.results.release_quarantined(entry.id, note="checked on the portal")
    assert released.outcome is ApplyOutcome.APPLIED
    assert released.payout is not None and released.payout.status is PayoutStatus.COMPLETED
    assert len(ledger.outbox.pending(payout_id="p-release")) == before + 1
    stored = ledger.quarantine.get(entry.id)
    assert stored is not None and stored.state is QuarantineState.RELEASED
    assert stored.resolution is not None and "checked on the portal" in stored.resolution
    with pytest.raises(LedgerError, match="already released"):
        ledger.results.release_quarantined(entry.id, note="again")
    with pytest.raises(LedgerError, match="already released"):
        ledger.quarantine.drop(entry.id, note="again")


def test_no_release_onto_a_final_payout_or_without_one(ledger: Ledger) -> None:
    payout = accepted(ledger, "p-final")
    assert record(ledger, result_for(payout, receipt="SGRGENUINE")) is ApplyOutcome.APPLIED
    assert record(ledger, result_for(payout, amount="2.00")) is ApplyOutcome.QUARANTINED
    unknown = result_for(payout, originator="600000_mpesab2c_" + "e" * 32, conversation_id="AG_nobody")
    assert record(ledger, unknown) is ApplyOutcome.UNMATCHED
    mismatch, nobody = ledger.quarantine.entries()
    assert (mismatch.reason, nobody.reason) == ("amount", "unknown_payout")

    with pytest.raises(LedgerError, match="already completed"):
        ledger.results.release_quarantined(mismatch.id, note="x")
    with pytest.raises(LedgerError, match="matched no payout"):
        ledger.results.release_quarantined(nobody.id, note="x")
    assert [e.state for e in ledger.quarantine.entries()] == [QuarantineState.HELD, QuarantineState.HELD]
    final = ledger.payouts.get("p-final")
    assert final is not None and final.receipt == "SGRGENUINE"

    dropped = ledger.quarantine.drop(mismatch.id, note="forged")
    assert dropped.state is QuarantineState.DROPPED and dropped.resolved_at is not None
    assert [e.id for e in ledger.quarantine.entries()] == [nobody.id]
    assert {e.id for e in ledger.quarantine.entries(include_resolved=True)} == {mismatch.id, nobody.id}
    with pytest.raises(LedgerError, match="no quarantined result"):
        ledger.quarantine.drop(999_999, note="x")


def test_a_mismatch_wins_over_a_conflict_and_leaves_the_final_status(ledger: Ledger) -> None:
    payout = accepted(ledger, "p-conflict")
    assert record(ledger, result_for(payout, code="1")) is ApplyOutcome.APPLIED
    assert record(ledger, result_for(payout, amount="9.99")) is ApplyOutcome.QUARANTINED
    assert record(ledger, result_for(payout)) is ApplyOutcome.CONFLICT
    stored = ledger.payouts.get("p-conflict")
    assert stored is not None and stored.status is PayoutStatus.FAILED
