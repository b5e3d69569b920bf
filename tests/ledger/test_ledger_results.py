"""Result callbacks: stored always, applied when they decide a payout, first final status wins."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.support.ledger import Database, events, make_result, ocid
from worker.errors import LedgerError, RearmRefused
from worker.ledger import ApplyOutcome, Ledger, LookupTrigger, result_store
from worker.ledger.lookups import FlagReason
from worker.payouts.models import PayoutStatus


def _accepted(ledger: Ledger, payout_id: str, conversation_id: str = "AG_20240501_0000abc") -> None:
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    ledger.payouts.mark_accepted(payout_id, conversation_id=conversation_id, code="0", description="Accepted")


def _stored_results(database: Database) -> list[dict[str, Any]]:
    rows = database.query(
        "SELECT raw, originator_conversation_id, conversation_id, result_code, outcome, disposition,"
        " payout_id, applied, note FROM results ORDER BY id"
    )
    for row in rows:
        row["raw"] = bytes(row["raw"])
        row["applied"] = bool(row["applied"])
    return rows


def test_completed_result_finalises_with_details(
    ledger: Ledger, database: Database, new_payout: Callable[..., str]
) -> None:
    payout_id = new_payout()
    _accepted(ledger, payout_id)
    raw, result = make_result(code="0", originator=ocid(payout_id))

    applied = ledger.results.record(raw, result)

    assert applied.outcome is ApplyOutcome.APPLIED
    payout = applied.payout
    assert payout is not None and payout.status is PayoutStatus.COMPLETED
    assert (payout.result_code, payout.receipt) == ("0", "SE17ABCDEF")
    assert payout.final_details is not None
    assert payout.final_details["amount"] == "1500.00"
    assert payout.final_details["receipt"] == "SE17ABCDEF"
    assert payout.final_details["recipient_name"] == "Jane Doe"
    assert payout.final_details["balances"] == {"working": "98500.00", "utility": "48500.00", "charges": "0.00"}
    assert payout.final_details["completed_at"] == "2024-05-01T09:30:11.000000Z"
    assert ledger.payouts.get(payout_id) == payout

    keys = [(key, event["status"]) for key, event in events(ledger, payout_id)]
    assert keys == [("payout.accepted", "accepted"), ("payout.completed", "completed")]
    completed = events(ledger, payout_id)[-1][1]
    assert completed["result"]["receipt"] == "SE17ABCDEF"
    assert "254712345678" not in completed["result"]["description"]

    [row] = _stored_results(database)
    assert row["raw"] == raw
    assert (row["payout_id"], row["applied"], row["disposition"], row["outcome"]) == (
        payout_id,
        True,
        "applied",
        "completed",
    )


def test_failed_result_records_the_category(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    _accepted(ledger, payout_id)
    raw, result = make_result(code="1", originator=ocid(payout_id), receipt=None)

    applied = ledger.results.record(raw, result)

    assert applied.payout is not None
    assert (applied.payout.status, applied.payout.reason, applied.payout.result_code) == (
        PayoutStatus.FAILED,
        "funds",
        "1",
    )
    key, event = events(ledger, payout_id)[-1]
    assert (key, event["reason"], event["result"]["code"]) == ("payout.failed", "funds", "1")


@pytest.mark.parametrize("before", ["sending", "unknown", "received"])
def test_result_before_acceptance_emits_accepted_then_final(
    ledger: Ledger, new_payout: Callable[..., str], before: str
) -> None:
    payout_id = new_payout()
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    if before == "unknown":
        ledger.payouts.mark_unknown(payout_id, reason="no_response", code=None, description=None)
    if before == "received":
        ledger.payouts.mark_not_sent(payout_id, code="26", description="busy")
    raw, result = make_result(code="0", originator=ocid(payout_id), conversation_id="AG_from_result")

    applied = ledger.results.record(raw, result)

    assert applied.outcome is ApplyOutcome.APPLIED
    assert applied.payout is not None and applied.payout.status is PayoutStatus.COMPLETED
    late = ledger.payouts.mark_accepted(payout_id, conversation_id="AG_late", code="0", description="Accepted")
    assert late == applied.payout
    statuses = [(key, event["status"], event["conversation_id"]) for key, event in events(ledger, payout_id)]
    expected_prefix = [("payout.unknown", "unknown", None)] if before == "unknown" else []
    assert statuses == [
        *expected_prefix,
        ("payout.accepted", "accepted", "AG_from_result"),
        ("payout.completed", "completed", "AG_from_result"),
    ]


def test_repeated_final_result_is_a_duplicate(
    ledger: Ledger, database: Database, new_payout: Callable[..., str]
) -> None:
    payout_id = new_payout()
    _accepted(ledger, payout_id)
    raw, result = make_result(code="0", originator=ocid(payout_id))
    first = ledger.results.record(raw, result)
    second = ledger.results.record(raw, result)

    assert second.outcome is ApplyOutcome.DUPLICATE_FINAL
    assert second.payout == first.payout
    assert len(events(ledger, payout_id)) == 2
    assert [row["disposition"] for row in _stored_results(database)] == ["applied", "duplicate_final"]


def test_contradicting_result_is_stored_not_applied(
    ledger: Ledger, database: Database, new_payout: Callable[..., str]
) -> None:
    payout_id = new_payout()
    _accepted(ledger, payout_id)
    ledger.results.record(*make_result(code="0", originator=ocid(payout_id)))
    failed_raw, failed = make_result(code="2", originator=ocid(payout_id), receipt=None)
    other_raw, other_receipt = make_result(code="0", originator=ocid(payout_id), receipt="SE17ZZZZZZ")

    assert ledger.results.record(failed_raw, failed).outcome is ApplyOutcome.CONFLICT
    conflict = ledger.results.record(other_raw, other_receipt)

    assert conflict.outcome is ApplyOutcome.CONFLICT
    assert conflict.payout is not None
    assert (conflict.payout.status, conflict.payout.receipt) == (PayoutStatus.COMPLETED, "SE17ABCDEF")
    assert [key for key, _ in events(ledger, payout_id)] == ["payout.accepted", "payout.completed"]
    rows = _stored_results(database)
    assert [(row["disposition"], row["applied"]) for row in rows] == [
        ("applied", True),
        ("conflict", False),
        ("conflict", False),
    ]
    assert rows[1]["raw"] == failed_raw and rows[2]["raw"] == other_raw


def test_completed_result_after_rejection_is_a_conflict(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    ledger.payouts.mark_rejected(payout_id, reason="mpesa_rejected", code="1", description="no", message="m")
    assert ledger.results.record(*make_result(code="0", originator=ocid(payout_id))).outcome is ApplyOutcome.CONFLICT
    failed = ledger.results.record(*make_result(code="1", originator=ocid(payout_id), receipt=None))
    assert failed.outcome is ApplyOutcome.DUPLICATE_FINAL
    stored = ledger.payouts.get(payout_id)
    assert stored is not None and stored.status is PayoutStatus.REJECTED


def test_a_success_after_failure_or_rejection_is_flagged_for_review(
    ledger: Ledger, new_payout: Callable[..., str]
) -> None:
    failed_id, rejected_id, completed_id = new_payout(), new_payout(), new_payout()
    _accepted(ledger, failed_id)
    ledger.results.record(*make_result(code="2", originator=ocid(failed_id), receipt=None))
    ledger.payouts.claim_send(rejected_id, expected_attempts=0)
    ledger.payouts.mark_rejected(rejected_id, reason="mpesa_rejected", code="1", description="no", message="m")
    _accepted(ledger, completed_id)
    ledger.results.record(*make_result(code="0", originator=ocid(completed_id)))
    assert ledger.lookups.list_flagged() == []

    for payout_id in (failed_id, rejected_id):
        outcome = ledger.results.record(*make_result(code="0", originator=ocid(payout_id)))
        assert outcome.outcome is ApplyOutcome.CONFLICT
    # Another receipt on a completed payout conflicts too, but nobody was told "not paid": counted, not flagged.
    other = ledger.results.record(*make_result(code="0", originator=ocid(completed_id), receipt="SE17ZZZZZZ"))
    assert other.outcome is ApplyOutcome.CONFLICT

    flagged = ledger.lookups.list_flagged()
    assert sorted(state.payout_id for state in flagged) == sorted([failed_id, rejected_id])
    assert {state.flag_reason for state in flagged} == {FlagReason.SUCCESS_AFTER_FAILURE.value}
    assert {state.status for state in flagged} == {"failed", "rejected"}, "the first final status still wins"
    with pytest.raises(RearmRefused, match="final, nothing to look up"):
        ledger.lookups.rearm_lookup(failed_id)
    state = ledger.lookups.clear_flag(failed_id)
    assert not state.flagged_for_review and [s.payout_id for s in ledger.lookups.list_flagged()] == [rejected_id]
    with pytest.raises(RearmRefused, match="not flagged"):
        ledger.lookups.clear_flag(failed_id)


def test_only_a_final_payout_can_have_its_flag_cleared(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    _accepted(ledger, payout_id)
    assert ledger.lookups.flag_for_review(payout_id, reason=FlagReason.MAX_ATTEMPTS)
    with pytest.raises(RearmRefused, match="not final: rearm it"):
        ledger.lookups.clear_flag(payout_id)
    assert [state.payout_id for state in ledger.lookups.list_flagged()] == [payout_id]


def test_unmatched_result_is_kept(ledger: Ledger, database: Database) -> None:
    raw, result = make_result(code="0", originator="600000_other_abc", conversation_id="AG_unknown")
    applied = ledger.results.record(raw, result)
    assert (applied.outcome, applied.payout) == (ApplyOutcome.UNMATCHED, None)
    [row] = _stored_results(database)
    assert (row["raw"], row["payout_id"], row["applied"], row["originator_conversation_id"]) == (
        raw,
        None,
        False,
        "600000_other_abc",
    )
    assert events(ledger) == []


def test_result_found_by_conversation_id(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    _accepted(ledger, payout_id, conversation_id="AG_known")
    applied = ledger.results.record(*make_result(code="0", originator=None, conversation_id="AG_known"))
    assert applied.outcome is ApplyOutcome.APPLIED
    assert applied.payout is not None and applied.payout.payout_id == payout_id


@pytest.mark.parametrize(("code", "status_after"), [("17", "unknown"), ("45", "unknown"), ("15", "accepted")])
def test_non_final_result_on_accepted_payout(
    ledger: Ledger, database: Database, new_payout: Callable[..., str], code: str, status_after: str
) -> None:
    payout_id = new_payout()
    _accepted(ledger, payout_id)
    applied = ledger.results.record(*make_result(code=code, originator=ocid(payout_id), receipt=None))

    assert applied.outcome is ApplyOutcome.NOT_FINAL
    assert applied.payout is not None and applied.payout.status == status_after
    keys = [(key, event["reason"]) for key, event in events(ledger, payout_id)]
    if status_after == "unknown":
        assert keys == [("payout.accepted", None), ("payout.unknown", "unclassified_result")]
        assert events(ledger, payout_id)[-1][1]["result"]["code"] == code
    else:
        assert keys == [("payout.accepted", None)]
    [row] = _stored_results(database)
    assert row["applied"] is (status_after == "unknown")

    completed = ledger.results.record(*make_result(code="0", originator=ocid(payout_id)))
    assert completed.payout is not None and completed.payout.status is PayoutStatus.COMPLETED


def test_not_processed_result_has_an_accepted_payout_looked_up_at_once(
    ledger: Ledger, database: Database, new_payout: Callable[..., str]
) -> None:
    """Issue #11 finding 6: no other result follows a 26, so waiting for one parked the payout."""
    payout_id = new_payout()
    _accepted(ledger, payout_id)
    applied = ledger.results.record(*make_result(code="26", originator=ocid(payout_id), receipt=None))
    assert applied.outcome is ApplyOutcome.NOT_FINAL
    assert applied.payout is not None and applied.payout.status is PayoutStatus.ACCEPTED
    [row] = _stored_results(database)
    assert not row["applied"] and "looked up now" in row["note"]
    tasks = ledger.lookups.due_for_lookup(
        unknown_after=3600.0, result_timeout=3600.0, stuck_after=3600.0, lease_seconds=0.0
    )
    assert [(task.payout.payout_id, task.trigger) for task in tasks] == [(payout_id, LookupTrigger.NOT_PROCESSED)]


@pytest.mark.parametrize("code", ["17", "15", "26", "49"])
def test_non_final_result_leaves_a_sending_payout_alone(
    ledger: Ledger, new_payout: Callable[..., str], code: str
) -> None:
    payout_id = new_payout()
    before = ledger.payouts.claim_send(payout_id, expected_attempts=0)
    applied = ledger.results.record(*make_result(code=code, originator=ocid(payout_id), receipt=None))
    assert applied.outcome is ApplyOutcome.NOT_FINAL
    assert applied.payout == before
    assert events(ledger) == []


def test_raw_result_is_kept_when_applying_fails(
    ledger: Ledger, database: Database, new_payout: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    payout_id = new_payout()
    _accepted(ledger, payout_id)

    def broken(**_: object) -> dict[str, object]:
        raise RuntimeError("summary exploded")

    monkeypatch.setattr(result_store, "result_summary", broken)
    raw, result = make_result(code="0", originator=ocid(payout_id))
    with pytest.raises(LedgerError, match="stored but not applied: RuntimeError: summary exploded"):
        ledger.results.record(raw, result)

    stored = ledger.payouts.get(payout_id)
    assert stored is not None and stored.status is PayoutStatus.ACCEPTED
    assert [key for key, _ in events(ledger, payout_id)] == ["payout.accepted"]
    [row] = _stored_results(database)
    assert (row["raw"], row["applied"], row["disposition"]) == (raw, False, "error")
    assert "summary exploded" in str(row["note"])


def test_result_amount_and_time_stay_exact(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout(amount="1234567.89")
    _accepted(ledger, payout_id)
    raw, result = make_result(code="0", originator=ocid(payout_id), amount="1234567.89")
    applied = ledger.results.record(raw, result)
    assert applied.payout is not None and applied.payout.final_details is not None
    assert Decimal(applied.payout.final_details["amount"]) == Decimal("1234567.89")
    assert applied.payout.updated_at <= datetime.now(UTC)


def test_a_result_that_cannot_be_stored_at_all_is_a_ledger_error(
    ledger: Ledger, database: Database, new_payout: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    payout_id = new_payout()
    _accepted(ledger, payout_id)

    def refuse(*_: object, **__: object) -> None:
        raise LedgerError("disk full")

    monkeypatch.setattr(result_store, "store_result", refuse)
    with pytest.raises(LedgerError, match=r"neither applied \(disk full\) nor stored \(disk full\)"):
        ledger.results.record(*make_result(code="0", originator=ocid(payout_id)))
    stored = ledger.payouts.get(payout_id)
    assert stored is not None and stored.status is PayoutStatus.ACCEPTED
    assert len(events(ledger, payout_id)) == 1
    assert _stored_results(database) == []
