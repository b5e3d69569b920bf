"""Post-send writes carry their claim (``send_attempts``); a stale one is kept, never lets a payout go back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY

from tests.support.commands import make_command
from tests.support.ledger import Database, ocid
from worker.ledger import Ledger
from worker.ledger.postgres import PostgresEngine
from worker.ledger.sqlite import SqliteEngine
from worker.payouts.models import PayoutStatus


def stale_count(answer: str, action: str) -> float:
    value = REGISTRY.get_sample_value("mpesa_b2c_stale_answers_total", {"answer": answer, "action": action})
    return value or 0.0


def claimed_twice(ledger: Ledger, new_payout: Callable[..., str]) -> str:
    """Sender A claimed attempt 1; its lease ran out and sender B claimed attempt 2 and is sending."""
    payout_id = new_payout()
    assert ledger.payouts.claim_send(payout_id, expected_attempts=0) is not None
    assert ledger.payouts.claim_send(payout_id, expected_attempts=1) is not None
    return payout_id


def test_a_stale_claims_refusal_silence_and_not_processed_are_kept_not_applied(
    ledger: Ledger, database: Database, new_payout: Callable[..., str]
) -> None:
    payout_id = claimed_twice(ledger, new_payout)
    before = stale_count("rejected", "kept")

    after = ledger.payouts.mark_rejected(
        payout_id, attempt=1, reason="mpesa_rejected", code="100000012", description="funds", message="m"
    )
    assert after.status is PayoutStatus.SENDING and after.send_attempts == 2
    assert ledger.payouts.mark_unknown(payout_id, attempt=1, reason="no_response", code=None, description="x") == after
    assert ledger.payouts.mark_not_sent(payout_id, attempt=1, code="100000002", description="throttled") == after
    assert ledger.lookups.resend_not_taken(payout_id, attempt=1, code="26", description="busy") == after

    assert stale_count("rejected", "kept") - before == 1
    rows = database.query("SELECT attempt, current_attempt, answer, action FROM stale_answers ORDER BY id")
    assert [(r["attempt"], r["current_attempt"], r["answer"], r["action"]) for r in rows] == [
        (1, 2, "rejected", "kept"),
        (1, 2, "unknown", "kept"),
        (1, 2, "not_processed", "kept"),
        (1, 2, "resend_not_taken", "kept"),
    ]
    assert database.query("SELECT routing_key FROM outbox") == []
    # B, the current claim, still writes: its refusal is the payout's.
    final = ledger.payouts.mark_rejected(
        payout_id, attempt=2, reason="mpesa_rejected", code="100000012", description="funds", message="m"
    )
    assert final.status is PayoutStatus.REJECTED


def test_a_stale_acceptance_is_applied_where_it_adds_and_kept_with_its_conversation_id(
    ledger: Ledger, database: Database, new_payout: Callable[..., str]
) -> None:
    payout_id = claimed_twice(ledger, new_payout)
    applied = ledger.payouts.mark_accepted(payout_id, attempt=1, conversation_id="AG_A", code="0", description="ok")
    assert applied.status is PayoutStatus.ACCEPTED and applied.conversation_id == "AG_A"
    assert applied.send_attempts == 2

    # B's own answer comes next: its acceptance and its silence leave A's acceptance as it is.
    again = ledger.payouts.mark_accepted(payout_id, attempt=2, conversation_id="AG_B", code="0", description="ok")
    assert again.conversation_id == "AG_A"
    assert ledger.payouts.mark_unknown(payout_id, attempt=2, reason="no_response", code=None, description="x") == again

    later = claimed_twice(ledger, new_payout)
    ledger.payouts.mark_accepted(later, attempt=2, conversation_id=None, code="0", description="ok")
    filled = ledger.payouts.mark_accepted(later, attempt=1, conversation_id="AG_only", code="0", description="ok")
    assert filled.status is PayoutStatus.ACCEPTED and filled.conversation_id == "AG_only"

    rows = database.query("SELECT payout_id, conversation_id, action FROM stale_answers ORDER BY id")
    assert [(r["payout_id"], r["conversation_id"], r["action"]) for r in rows] == [
        (payout_id, "AG_A", "applied"),
        (later, "AG_only", "applied"),
    ]


def test_a_stale_acceptance_of_a_payout_back_in_received_makes_it_accepted(
    ledger: Ledger, new_payout: Callable[..., str]
) -> None:
    """B's send was not processed and B deferred it; A's late acceptance proves M-PESA has the request."""
    payout_id = claimed_twice(ledger, new_payout)
    ledger.payouts.mark_not_sent(payout_id, attempt=2, code="100000002", description="throttled")
    accepted = ledger.payouts.mark_accepted(payout_id, attempt=1, conversation_id="AG_A", code="0", description="ok")
    assert accepted.status is PayoutStatus.ACCEPTED
    assert ledger.payouts.claim_send(payout_id, expected_attempts=2) is None, "nothing left to send"


def test_the_send_lease_is_stamped_and_measured_on_the_database_clock(
    database: Database, new_payout: Callable[..., str]
) -> None:
    """A host half an hour behind stamps the claim; one half an hour ahead must still see the lease live."""
    url, path = database.settings.database_url, database.settings.sqlite_path
    skew = timedelta(minutes=30)

    def opened(clock: Callable[[], datetime]) -> Ledger:
        return Ledger.open(PostgresEngine(url) if url else SqliteEngine(path), clock=clock)

    behind, ahead = opened(lambda: datetime.now(UTC) - skew), opened(lambda: datetime.now(UTC) + skew)
    try:
        command = make_command("lease-clock")
        behind.payouts.record(command, ocid(command.payout_id))
        claimed = behind.payouts.claim_send(command.payout_id, expected_attempts=0)
        assert claimed is not None
        assert abs((claimed.updated_at - datetime.now(UTC)).total_seconds()) < skew.total_seconds() / 2
        seen = ahead.payouts.since_change(command.payout_id)
        assert seen is not None and seen[1] < skew.total_seconds() / 2
        assert ahead.payouts.claim_send(command.payout_id, expected_attempts=1, lease_seconds=60.0) is None
        assert ahead.payouts.claim_send(command.payout_id, expected_attempts=1, lease_seconds=0.0) is not None
    finally:
        behind.close()
        ahead.close()
