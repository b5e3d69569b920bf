"""Recording commands and every status change the worker makes, with the events each one stores."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, timedelta
from decimal import Decimal

import pytest

from tests.support.commands import make_command
from tests.support.ledger import Database, events, ocid
from worker.errors import LedgerError, TransitionRefused, UnknownPayout
from worker.ledger import Ledger, RecordOutcome
from worker.payouts.models import PayoutStatus


def test_record_stores_a_received_payout_without_an_event(ledger: Ledger) -> None:
    command = make_command(amount="12345678901234567.89", metadata={"order": 7, "nested": {"a": [1, "b"]}})
    recorded = ledger.payouts.record(command, ocid(command.payout_id))

    assert recorded.outcome is RecordOutcome.NEW
    payout = recorded.payout
    assert payout.status is PayoutStatus.RECEIVED
    assert payout.send_attempts == 0
    assert payout.command == command
    assert payout.command.amount == Decimal("12345678901234567.89")
    assert payout.fingerprint == command.fingerprint()
    assert payout.originator_conversation_id == ocid(command.payout_id)
    assert payout.created_at.tzinfo is not None and payout.created_at.utcoffset() == timedelta(0)
    assert abs(payout.created_at - payout.updated_at) < timedelta(seconds=1)
    assert ledger.payouts.get(command.payout_id) == payout
    assert events(ledger) == []
    assert ledger.outbox.backlog() == 0


def test_repeated_command_is_a_duplicate_with_the_current_status(ledger: Ledger) -> None:
    command = make_command()
    ledger.payouts.record(command, ocid(command.payout_id))
    again = ledger.payouts.record(make_command(command.payout_id), ocid(command.payout_id))
    ledger.payouts.note_duplicate(command.payout_id)  # what the worker answers a DUPLICATE with

    assert again.outcome is RecordOutcome.DUPLICATE
    assert again.payout.status is PayoutStatus.RECEIVED
    [(key, event)] = events(ledger)
    assert key == "payout.accepted"
    assert event["duplicate"] is True
    assert event["status"] == "received"
    assert event["payout_id"] == command.payout_id

    ledger.payouts.claim_send(command.payout_id, expected_attempts=0)
    ledger.payouts.mark_rejected(
        command.payout_id, reason="mpesa_rejected", code="SVC0001", description="no", message="refused"
    )
    third = ledger.payouts.record(command, ocid(command.payout_id))
    ledger.payouts.note_duplicate(command.payout_id)
    assert third.outcome is RecordOutcome.DUPLICATE
    key, event = events(ledger)[-1]
    assert (key, event["status"], event["duplicate"], event["reason"]) == (
        "payout.rejected",
        "rejected",
        True,
        "mpesa_rejected",
    )


def test_same_payout_id_with_other_content_is_a_conflict_leaving_the_original(ledger: Ledger) -> None:
    original = make_command(amount="100.00")
    ledger.payouts.record(original, ocid(original.payout_id))
    other = make_command(original.payout_id, amount="200.00", metadata={"order": 43})

    conflict = ledger.payouts.record(other, ocid(original.payout_id))

    assert conflict.outcome is RecordOutcome.CONFLICT
    assert conflict.payout.command == original
    stored = ledger.payouts.get(original.payout_id)
    assert stored is not None and stored.command == original and stored.status is PayoutStatus.RECEIVED
    [(key, event)] = events(ledger)
    assert key == "command.refused"
    assert event["reason"] == "idempotency_conflict"
    assert event["payout_id"] == original.payout_id
    assert event["recorded_status"] == "received"
    assert event["refused_command"]["amount"] == "200.00"
    assert event["refused_command"]["metadata"] == {"order": 43}
    assert "status" not in event and "duplicate" not in event


def test_originator_id_of_another_payout_is_refused(ledger: Ledger) -> None:
    first = make_command()
    ledger.payouts.record(first, ocid(first.payout_id))
    with pytest.raises(LedgerError, match="belongs to another payout"):
        ledger.payouts.record(make_command(), ocid(first.payout_id))
    assert sum(ledger.payouts.count_by_status().values()) == 1


def test_happy_path_events_and_idempotent_acceptance(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()

    sending = ledger.payouts.claim_send(payout_id, expected_attempts=0)
    assert sending is not None
    assert (sending.status, sending.send_attempts) == (PayoutStatus.SENDING, 1)
    assert events(ledger) == []

    accepted = ledger.payouts.mark_accepted(payout_id, conversation_id="AG_1", code="0", description="Accepted")
    assert accepted.status is PayoutStatus.ACCEPTED
    assert (accepted.conversation_id, accepted.response_code, accepted.response_desc) == ("AG_1", "0", "Accepted")
    again = ledger.payouts.mark_accepted(payout_id, conversation_id="AG_2", code="0", description="Accepted")
    assert again == accepted

    [(key, event)] = events(ledger)
    assert key == "payout.accepted"
    assert event["status"] == "accepted"
    assert event["conversation_id"] == "AG_1"
    assert event["response"] == {"code": "0", "description": "Accepted"}
    assert event["msisdn_masked"] == "2547******78"


def test_claim_send_from_every_sendable_status(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    first = ledger.payouts.claim_send(payout_id, expected_attempts=0)
    assert first is not None and first.send_attempts == 1
    redelivered = ledger.payouts.claim_send(payout_id, expected_attempts=1)
    assert redelivered is not None and (redelivered.status, redelivered.send_attempts) == (PayoutStatus.SENDING, 2)

    ledger.payouts.mark_unknown(payout_id, reason="no_response", code=None, description=None)
    retried = ledger.payouts.claim_send(payout_id, expected_attempts=2)
    assert retried is not None and (retried.status, retried.send_attempts) == (PayoutStatus.SENDING, 3)

    accepted = ledger.payouts.mark_accepted(payout_id, conversation_id="AG", code="0", description="ok")
    assert ledger.payouts.claim_send(payout_id, expected_attempts=3) is None
    assert ledger.payouts.get(payout_id) == accepted

    final_id = new_payout()
    ledger.payouts.claim_send(final_id, expected_attempts=0)
    rejected = ledger.payouts.mark_rejected(final_id, reason="mpesa_rejected", code="1", description="x", message="m")
    assert ledger.payouts.claim_send(final_id, expected_attempts=1) is None
    assert ledger.payouts.get(final_id) == rejected


def test_rejection_is_final(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    rejected = ledger.payouts.mark_rejected(
        payout_id, reason="mpesa_rejected", code="SVC0002", description="Invalid input", message="bad msisdn"
    )
    assert rejected.status is PayoutStatus.REJECTED
    assert rejected.reason == "mpesa_rejected"

    assert ledger.payouts.mark_accepted(payout_id, conversation_id="AG", code="0", description="ok") == rejected
    assert ledger.payouts.mark_unknown(payout_id, reason="no_response", code=None, description=None) == rejected
    assert (
        ledger.payouts.mark_rejected(payout_id, reason="mpesa_rejected", code="1", description="d", message="m")
        == rejected
    )
    assert ledger.payouts.mark_not_sent(payout_id, code="26", description="busy") == rejected

    [(key, event)] = events(ledger)
    assert key == "payout.rejected"
    assert (event["reason"], event["message"]) == ("mpesa_rejected", "bad msisdn")
    assert event["response"] == {"code": "SVC0002", "description": "Invalid input"}


def test_unknown_then_resend_then_accepted(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    unknown = ledger.payouts.mark_unknown(payout_id, reason="no_response", code=None, description=None)
    assert (unknown.status, unknown.reason) == (PayoutStatus.UNKNOWN, "no_response")
    assert ledger.payouts.mark_unknown(payout_id, reason="no_response", code=None, description=None) == unknown

    ledger.payouts.claim_send(payout_id, expected_attempts=1)
    accepted = ledger.payouts.mark_accepted(payout_id, conversation_id="AG", code="0", description="ok")
    assert accepted.reason is None

    assert [(key, event["status"], event["reason"]) for key, event in events(ledger)] == [
        ("payout.unknown", "unknown", "no_response"),
        ("payout.accepted", "accepted", None),
    ]


def test_unknown_directly_to_accepted(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    ledger.payouts.mark_unknown(payout_id, reason="unrecognised_response", code="999", description="??")
    accepted = ledger.payouts.mark_accepted(payout_id, conversation_id="AG", code="0", description="ok")
    assert accepted.status is PayoutStatus.ACCEPTED
    assert [key for key, _ in events(ledger)] == ["payout.unknown", "payout.accepted"]


def test_not_sent_goes_back_to_received_without_event(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    back = ledger.payouts.mark_not_sent(payout_id, code="26", description="System busy")
    assert (back.status, back.send_attempts, back.response_code) == (PayoutStatus.RECEIVED, 1, "26")
    assert ledger.payouts.mark_not_sent(payout_id, code="26", description="again") == back
    again = ledger.payouts.claim_send(payout_id, expected_attempts=1)
    assert again is not None and again.send_attempts == 2
    assert events(ledger) == []


def test_refused_and_unknown_transitions(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    with pytest.raises(TransitionRefused) as refused:
        ledger.payouts.mark_accepted(payout_id, conversation_id="AG", code="0", description="ok")
    assert (refused.value.current, refused.value.target) == (PayoutStatus.RECEIVED, PayoutStatus.ACCEPTED)
    with pytest.raises(TransitionRefused):
        ledger.payouts.mark_unknown(payout_id, reason="no_response", code=None, description=None)

    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    ledger.payouts.mark_accepted(payout_id, conversation_id="AG", code="0", description="ok")
    with pytest.raises(TransitionRefused):
        ledger.payouts.mark_rejected(payout_id, reason="mpesa_rejected", code="1", description="d", message="m")
    stored = ledger.payouts.get(payout_id)
    assert stored is not None and stored.status is PayoutStatus.ACCEPTED
    assert len(events(ledger)) == 1

    calls: list[Callable[[], object]] = [
        lambda: ledger.payouts.claim_send("nope", expected_attempts=0),
        lambda: ledger.payouts.mark_accepted("nope", conversation_id=None, code="0", description=None),
        lambda: ledger.payouts.mark_not_sent("nope", code=None, description=None),
    ]
    for call in calls:
        with pytest.raises(UnknownPayout):
            call()


def test_an_invalid_reason_changes_nothing(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    with pytest.raises(ValueError, match="reason"):
        ledger.payouts.mark_rejected(payout_id, reason="because", code=None, description=None, message="m")
    stored = ledger.payouts.get(payout_id)
    assert stored is not None and stored.status is PayoutStatus.SENDING
    assert events(ledger) == []


def test_record_invalid_keeps_the_raw_command(ledger: Ledger, database: Database) -> None:
    ledger.payouts.record_invalid(b"{not json", payout_id=None, reason="invalid_command", message="$: not JSON")
    ledger.payouts.record_invalid(b'{"payout_id": "p-9"}', payout_id="p-9", reason="invalid_command", message="msisdn")

    rows = database.query("SELECT raw, payout_id, reason, message FROM invalid_commands ORDER BY id")
    assert [(bytes(row["raw"]), row["payout_id"]) for row in rows] == [
        (b"{not json", None),
        (b'{"payout_id": "p-9"}', "p-9"),
    ]
    assert [(key, event["payout_id"], event["reason"], event["message"]) for key, event in events(ledger)] == [
        ("payout.rejected", None, "invalid_command", "$: not JSON"),
        ("payout.rejected", "p-9", "invalid_command", "msisdn"),
    ]


def test_an_invalid_command_for_a_recorded_payout_is_refused_not_rejected(
    ledger: Ledger, database: Database, new_payout: Callable[..., str]
) -> None:
    payout_id = new_payout()
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    accepted = ledger.payouts.mark_accepted(payout_id, conversation_id="AG", code="0", description="ok")
    before = events(ledger)

    raw = b'{"payout_id": "%s", "msisdn": "12345"}' % payout_id.encode()
    recorded = ledger.payouts.record_invalid(raw, payout_id=payout_id, reason="invalid_command", message="msisdn")

    assert recorded == accepted and ledger.payouts.get(payout_id) == accepted
    [(key, event)] = events(ledger)[len(before) :]
    assert key == "command.refused"
    assert (event["payout_id"], event["reason"], event["recorded_status"]) == (payout_id, "invalid_command", "accepted")
    assert event["refused_command"] is None and "status" not in event
    rows = database.query("SELECT raw, payout_id FROM invalid_commands")
    assert [(bytes(row["raw"]), row["payout_id"]) for row in rows] == [(raw, payout_id)]


def test_a_row_fingerprinted_by_the_older_rule_still_knows_its_repeats(ledger: Ledger, database: Database) -> None:
    command = make_command(metadata={"n": Decimal("1.0")})
    ledger.payouts.record(command, ocid(command.payout_id))
    database.execute("UPDATE payouts SET fingerprint = ? WHERE payout_id = ?", "as-spelt-before", command.payout_id)

    again = ledger.payouts.record(
        make_command(command.payout_id, metadata={"n": Decimal("1")}), ocid(command.payout_id)
    )

    assert again.outcome is RecordOutcome.DUPLICATE
    assert events(ledger) == []


def test_queries(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    first, second, third = new_payout(), new_payout(), new_payout()
    ledger.payouts.claim_send(second, expected_attempts=0)
    ledger.payouts.mark_accepted(second, conversation_id="AG_second", code="0", description="ok")
    ledger.payouts.claim_send(third, expected_attempts=0)

    counts = ledger.payouts.count_by_status()
    assert counts == {
        "received": 1,
        "sending": 1,
        "accepted": 1,
        "rejected": 0,
        "unknown": 0,
        "completed": 0,
        "failed": 0,
    }
    assert [p.payout_id for p in ledger.payouts.list_payouts()] == [first, second, third]
    assert [p.payout_id for p in ledger.payouts.list_payouts(PayoutStatus.ACCEPTED)] == [second]
    assert len(ledger.payouts.list_payouts(limit=2)) == 2

    by_id = ledger.payouts.get(second)
    assert by_id is not None and (by_id.originator_conversation_id, by_id.conversation_id) == (
        ocid(second),
        "AG_second",
    )
    assert ledger.payouts.get("nope") is None
    assert all(p.updated_at.tzinfo == UTC for p in ledger.payouts.list_payouts())


def test_duplicate_event_left_to_the_caller(ledger: Ledger) -> None:
    command = make_command()
    ledger.payouts.record(command, ocid(command.payout_id))
    quiet = ledger.payouts.record(command, ocid(command.payout_id))
    assert quiet.outcome is RecordOutcome.DUPLICATE
    assert events(ledger) == []

    ledger.payouts.claim_send(command.payout_id, expected_attempts=0)
    noted = ledger.payouts.note_duplicate(command.payout_id)
    assert noted.status is PayoutStatus.SENDING
    [(key, event)] = events(ledger)
    assert (key, event["status"], event["duplicate"]) == ("payout.accepted", "sending", True)
    with pytest.raises(UnknownPayout):
        ledger.payouts.note_duplicate("nope")


def test_claim_send_is_won_by_exactly_one_snapshot(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    won = ledger.payouts.claim_send(payout_id, expected_attempts=0)
    assert won is not None and (won.status, won.send_attempts) == (PayoutStatus.SENDING, 1)
    assert ledger.payouts.claim_send(payout_id, expected_attempts=0) is None
    again = ledger.payouts.claim_send(payout_id, expected_attempts=1)
    assert again is not None and again.send_attempts == 2
    ledger.payouts.mark_accepted(payout_id, conversation_id="AG_1", code="0", description="ok")
    assert ledger.payouts.claim_send(payout_id, expected_attempts=2) is None


def test_concurrent_claims_from_one_snapshot_let_one_sender_through(
    ledger: Ledger, new_payout: Callable[..., str]
) -> None:
    payout_id = new_payout()
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda _: ledger.payouts.claim_send(payout_id, expected_attempts=0), range(8)))
    assert sum(claim is not None for claim in claims) == 1
    stored = ledger.payouts.get(payout_id)
    assert stored is not None and stored.send_attempts == 1
