"""The ledger side of looking payouts up, on both engines: what is due, what a status answer does."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict, Unpack, cast

import pytest

from tests.support.commands import make_command
from tests.support.ledger import Database, make_result, ocid, result_body
from worker.errors import RearmRefused, UnknownPayout
from worker.ledger import (
    ApplyOutcome,
    FlagReason,
    Ledger,
    LookupAction,
    LookupTask,
    LookupTrigger,
    QueryResponse,
)
from worker.paying.lookups import LookupRunner
from worker.payouts.models import PayoutStatus
from worker.protocol.result import QueueTimeout, build_result_envelope, parse_result_envelope
from worker.settings import Settings, load_settings


class Due(TypedDict):
    unknown_after: float
    result_timeout: float
    stuck_after: float
    lease_seconds: float


class DueOverrides(TypedDict, total=False):
    unknown_after: float
    result_timeout: float
    stuck_after: float
    lease_seconds: float


DUE: Due = {"unknown_after": 0.0, "result_timeout": 0.0, "stuck_after": 0.0, "lease_seconds": 0.0}


def keys(ledger: Ledger, payout_id: str) -> list[str]:
    return [row.routing_key for row in ledger.outbox.pending(limit=1000, payout_id=payout_id)]


def bodies(ledger: Ledger, payout_id: str) -> list[dict[str, Any]]:
    return [json.loads(row.body) for row in ledger.outbox.pending(limit=1000, payout_id=payout_id)]


def unknown_payout(ledger: Ledger, **overrides: Any) -> str:
    command = make_command(**overrides)
    ledger.payouts.record(command, ocid(command.payout_id))
    ledger.payouts.claim_send(command.payout_id, expected_attempts=0)
    ledger.payouts.mark_unknown(command.payout_id, reason="no_response", code=None, description="read timeout")
    return command.payout_id


def accepted_payout(ledger: Ledger, code: str = "0") -> str:
    command = make_command()
    ledger.payouts.record(command, ocid(command.payout_id))
    ledger.payouts.claim_send(command.payout_id, expected_attempts=0)
    ledger.payouts.mark_accepted(command.payout_id, conversation_id=None, code=code, description="taken")
    return command.payout_id


def due(ledger: Ledger, **overrides: Unpack[DueOverrides]) -> dict[str, LookupTask]:
    times: Due = {**DUE, **overrides}
    return {task.payout.payout_id: task for task in ledger.lookups.due_for_lookup(**times)}


def status_answer(query_id: str, code: str = "0", **parameters: str) -> tuple[bytes, Any]:
    raw = build_result_envelope(
        code=code,
        description="answer",
        originator_conversation_id=query_id,
        conversation_id="AG_20240501_0000query",
        transaction_id="SQ00000001",
        parameters=parameters,
    )
    return raw, parse_result_envelope(raw)


def completed_params(payout_id: str, receipt: str = "SE17ABCDEF", amount: str = "1500.00") -> dict[str, str]:
    return {
        "TransactionStatus": "Completed",
        "ReceiptNo": receipt,
        "Amount": amount,
        "FinalisedTime": "20240501123011",
        "CreditPartyName": "254712345678 - Jane Doe",
        "OriginatorConversationID": ocid(payout_id),
        "ResultCode": "0",
        "ResultDesc": "The service request is processed successfully.",
    }


def query(ledger: Ledger, payout_id: str, trigger: LookupTrigger = LookupTrigger.UNKNOWN) -> str:
    made = ledger.lookups.record_status_query(payout_id, trigger=trigger, retry_after=0.0)
    assert made is not None
    return made.query_originator_conversation_id


def test_unknown_is_due_after_the_delay_and_claimed_once(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    assert payout_id not in due(ledger, unknown_after=60.0)
    claimed = due(ledger, lease_seconds=30.0)
    task = claimed[payout_id]
    assert (task.trigger, task.action, task.attempts, task.started_at) == (
        LookupTrigger.UNKNOWN,
        LookupAction.QUERY,
        0,
        None,
    )
    assert payout_id not in due(ledger), "a claimed payout is leased to its lookup runner"


def test_accepted_without_result_is_due_after_the_result_timeout(ledger: Ledger) -> None:
    payout_id = accepted_payout(ledger)
    assert payout_id not in due(ledger, result_timeout=60.0)
    assert due(ledger)[payout_id].trigger is LookupTrigger.MISSING_RESULT


def test_the_query_is_recorded_before_sending_and_counted(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    first = ledger.lookups.record_status_query(payout_id, trigger=LookupTrigger.UNKNOWN, retry_after=60.0)
    assert first is not None and first.query_originator_conversation_id == ocid(payout_id) + "_Q1"
    assert ledger.lookups.status_queries(payout_id) == [first]
    assert payout_id not in due(ledger), "the next lookup waits for the interval"
    second = ledger.lookups.record_status_query(payout_id, trigger=LookupTrigger.UNKNOWN, retry_after=0.0)
    assert second is not None and second.attempt == 2
    ledger.lookups.note_status_query_response(
        second.query_originator_conversation_id, outcome=QueryResponse.ACCEPTED, code="0", description="ok"
    )
    assert [q.response_outcome for q in ledger.lookups.status_queries(payout_id)] == [None, "accepted"]
    state = ledger.lookups.lookup_state(payout_id)
    assert state is not None and state.lookup_attempts == 2 and state.lookup_started_at is not None
    assert due(ledger)[payout_id].attempts == 2


def test_completed_answer_completes_an_unknown_payout(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    query_id = query(ledger, payout_id)
    applied = ledger.results.record(*status_answer(query_id, **completed_params(payout_id)))
    assert applied.outcome is ApplyOutcome.STATUS_ANSWER
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.COMPLETED and payout.receipt == "SE17ABCDEF"
    assert keys(ledger, payout_id) == ["payout.unknown", "payout.accepted", "payout.completed"]
    completed = bodies(ledger, payout_id)[-1]
    assert completed["result"]["receipt"] == "SE17ABCDEF" and completed["result"]["amount"] == "1500.00"
    [answered] = [q for q in ledger.lookups.status_queries(payout_id) if q.query_originator_conversation_id == query_id]
    assert answered.verdict == "completed" and answered.answer_code == "0"
    assert payout_id not in due(ledger)
    # The payment's own result, arriving late, agrees: nothing changes.
    late = ledger.results.record(*make_result(code="0", originator=ocid(payout_id), conversation_id=None))
    assert late.outcome is ApplyOutcome.DUPLICATE_FINAL


def test_failed_answer_fails_with_the_original_code(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    params = {"TransactionStatus": "Failed", "ResultCode": "1", "ReceiptNo": "SE1FAILED0"}
    ledger.results.record(*status_answer(query(ledger, payout_id), **params))
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.FAILED
    assert payout.reason == "funds" and payout.receipt is None and payout.result_code == "1"


def test_undecided_answer_changes_nothing(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    params = {"TransactionStatus": "Failed", "ResultCode": "17"}
    ledger.results.record(*status_answer(query(ledger, payout_id), **params))
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.UNKNOWN
    assert keys(ledger, payout_id) == ["payout.unknown"]
    assert due(ledger)[payout_id].action is LookupAction.QUERY


def test_not_found_for_an_unknown_payout_makes_a_same_id_resend_due(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    ledger.results.record(*status_answer(query(ledger, payout_id), code="49"))
    task = due(ledger)[payout_id]
    assert task.action is LookupAction.RESEND and task.attempts == 1
    assert ledger.lookups.claim_resend(payout_id, expected_attempts=0, retry_after=0.0) is None, "stale snapshot"
    claimed = ledger.lookups.claim_resend(payout_id, expected_attempts=1, retry_after=0.0)
    assert claimed is not None and claimed.status is PayoutStatus.SENDING and claimed.send_attempts == 2
    assert claimed.originator_conversation_id == ocid(payout_id)
    assert ledger.lookups.claim_resend(payout_id, expected_attempts=2, retry_after=0.0) is None, "one resend per answer"
    # Not taken (busy, refused, no answer): back to unknown with its reason, no second unknown event.
    back = ledger.lookups.resend_not_taken(payout_id, code="100000002", description="throttled")
    assert back.status is PayoutStatus.UNKNOWN and back.reason == "no_response"
    assert keys(ledger, payout_id) == ["payout.unknown"]
    task = due(ledger)[payout_id]
    assert task.action is LookupAction.QUERY and task.attempts == 2


def test_not_found_for_a_cached_payout_means_never_executed(ledger: Ledger) -> None:
    payout_id = accepted_payout(ledger, code="100000000")
    ledger.results.record(*status_answer(query(ledger, payout_id, LookupTrigger.MISSING_RESULT), code="49"))
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.UNKNOWN and payout.reason == "queue_timeout"
    assert due(ledger)[payout_id].action is LookupAction.RESEND


def test_not_found_for_an_accepted_payout_only_looks_again(ledger: Ledger) -> None:
    payout_id = accepted_payout(ledger, code="0")
    ledger.results.record(*status_answer(query(ledger, payout_id, LookupTrigger.MISSING_RESULT), code="49"))
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.ACCEPTED
    assert due(ledger)[payout_id].action is LookupAction.QUERY, "M-PESA took it: never resent"


def test_an_answer_about_another_payment_is_not_applied(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    other = make_command().payout_id
    params = {**completed_params(payout_id), "OriginatorConversationID": ocid(other)}
    ledger.results.record(*status_answer(query(ledger, payout_id), **params))
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.UNKNOWN
    state = ledger.lookups.lookup_state(payout_id)
    assert state is not None and state.flag_reason == FlagReason.ANSWER_MISMATCH.value
    wrong_amount = unknown_payout(ledger)
    params = completed_params(wrong_amount, amount="15000.00")
    ledger.results.record(*status_answer(query(ledger, wrong_amount), **params))
    payout = ledger.payouts.get(wrong_amount)
    assert payout is not None and payout.status is PayoutStatus.UNKNOWN


def test_an_answer_contradicting_a_final_status_changes_nothing(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    query_id = query(ledger, payout_id)
    ledger.results.record(*make_result(code="1", originator=ocid(payout_id)))
    applied = ledger.results.record(*status_answer(query_id, **completed_params(payout_id)))
    assert applied.outcome is ApplyOutcome.STATUS_ANSWER
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.FAILED
    [answered] = [q for q in ledger.lookups.status_queries(payout_id) if q.query_originator_conversation_id == query_id]
    assert "contradicts" in (answered.note or "")


def test_queue_timeout_is_kept_and_looked_up_at_once(ledger: Ledger) -> None:
    payout_id = accepted_payout(ledger, code="100000000")
    notice = QueueTimeout(originator_conversation_id=ocid(payout_id), conversation_id=None)
    stored = ledger.results.record_queue_timeout(b"<raw notice/>", notice)
    assert stored.changed and stored.payout is not None
    assert stored.payout.status is PayoutStatus.UNKNOWN and stored.payout.reason == "queue_timeout"
    task = due(ledger, unknown_after=3600.0, result_timeout=3600.0)[payout_id]
    assert task.trigger is LookupTrigger.QUEUE_TIMEOUT and task.action is LookupAction.QUERY
    assert keys(ledger, payout_id) == ["payout.accepted", "payout.unknown"]
    unknown_event = bodies(ledger, payout_id)[-1]
    assert unknown_event["reason"] == "queue_timeout"
    nobody = ledger.results.record_queue_timeout(
        b"<other/>", QueueTimeout(originator_conversation_id="nope", conversation_id=None)
    )
    assert nobody.payout is None and not nobody.changed


def test_duplicate_answer_has_the_payout_looked_up_at_once(ledger: Ledger) -> None:
    payout_id = accepted_payout(ledger)
    applied = ledger.results.record(*make_result(code="15", originator=ocid(payout_id)))
    assert applied.outcome is ApplyOutcome.NOT_FINAL
    task = due(ledger, unknown_after=3600.0, result_timeout=3600.0)[payout_id]
    assert task.trigger is LookupTrigger.DUPLICATE


def test_confirm_success_holds_the_success_until_a_query_confirms_it(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    raw = result_body(code="0", originator=ocid(payout_id), receipt="SE17ABCDEF")
    held = ledger.results.record(raw, parse_result_envelope(raw), confirm_success=True)
    assert held.outcome is ApplyOutcome.HELD
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.ACCEPTED
    assert "payout.completed" not in keys(ledger, payout_id)
    task = due(ledger, unknown_after=3600.0, result_timeout=3600.0)[payout_id]
    assert task.trigger is LookupTrigger.CONFIRM_SUCCESS
    ledger.results.record(
        *status_answer(query(ledger, payout_id, LookupTrigger.CONFIRM_SUCCESS), **completed_params(payout_id))
    )
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.COMPLETED and payout.receipt == "SE17ABCDEF"
    completed = bodies(ledger, payout_id)[-1]
    assert completed["status"] == "completed"
    assert completed["result"]["balances"]["utility"] == "48500.00", "the held callback's details are kept"


def test_without_confirm_success_a_success_completes_at_once(ledger: Ledger) -> None:
    payout_id = accepted_payout(ledger)
    applied = ledger.results.record(*make_result(code="0", originator=ocid(payout_id)), confirm_success=False)
    assert applied.outcome is ApplyOutcome.APPLIED
    assert keys(ledger, payout_id)[-1] == "payout.completed"
    assert ledger.lookups.status_queries(payout_id) == []


def test_a_held_success_m_pesa_contradicts_is_flagged_not_completed(ledger: Ledger) -> None:
    payout_id = accepted_payout(ledger)
    raw = result_body(code="0", originator=ocid(payout_id), receipt="SE17ABCDEF")
    ledger.results.record(raw, parse_result_envelope(raw), confirm_success=True)
    failed = {"TransactionStatus": "Failed", "ResultCode": "1"}
    ledger.results.record(*status_answer(query(ledger, payout_id, LookupTrigger.CONFIRM_SUCCESS), **failed))
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.ACCEPTED
    state = ledger.lookups.lookup_state(payout_id)
    assert state is not None and state.flag_reason == FlagReason.CONFIRMATION_CONTRADICTED.value
    assert ledger.lookups.count_flagged() == 1


def test_flagged_payouts_rest_until_rearmed(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger, amount=str(Decimal("250.00")))
    assert ledger.lookups.flag_for_review(payout_id, reason=FlagReason.MAX_ATTEMPTS) is True
    assert ledger.lookups.flag_for_review(payout_id, reason=FlagReason.MAX_ATTEMPTS) is False
    assert payout_id not in due(ledger)
    assert ledger.lookups.count_flagged() == 1
    assert [state.payout_id for state in ledger.lookups.list_flagged()] == [payout_id]
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.UNKNOWN, "a flag never changes the status"
    state = ledger.lookups.rearm_lookup(payout_id)
    assert not state.flagged_for_review and state.lookup_attempts == 0
    assert due(ledger)[payout_id].trigger is LookupTrigger.MANUAL
    assert ledger.lookups.count_flagged() == 0


def stuck_resend(ledger: Ledger) -> str:
    """A payout ``sending`` after a resend of ours whose process died: only its lookup count makes it due."""
    payout_id = unknown_payout(ledger)
    ledger.results.record(*status_answer(query(ledger, payout_id), code="49"))
    assert ledger.lookups.claim_resend(payout_id, expected_attempts=1, retry_after=0.0) is not None
    return payout_id


def completed_payout(ledger: Ledger) -> str:
    payout_id = unknown_payout(ledger)
    ledger.results.record(*make_result(code="0", originator=ocid(payout_id)))
    return payout_id


@pytest.mark.parametrize(
    ("make", "status"), [(stuck_resend, PayoutStatus.SENDING), (completed_payout, PayoutStatus.COMPLETED)]
)
def test_rearm_refuses_a_payout_it_cannot_hand_back(ledger: Ledger, make: Any, status: PayoutStatus) -> None:
    """Rearming resets the lookup count, and for a stuck resend that count is what keeps it due: rearmed, it
    would drop out of every lookup and off the review gauge. A final payout has nothing to look up."""
    payout_id = make(ledger)
    ledger.lookups.flag_for_review(payout_id, reason=FlagReason.MAX_ATTEMPTS)
    before = ledger.lookups.lookup_state(payout_id)
    with pytest.raises(RearmRefused, match=str(status)):
        ledger.lookups.rearm_lookup(payout_id)
    assert ledger.lookups.lookup_state(payout_id) == before, "nothing changed"
    with pytest.raises(UnknownPayout):
        ledger.lookups.rearm_lookup("nobody")


def test_a_final_payout_is_not_counted_as_flagged(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    ledger.lookups.flag_for_review(payout_id, reason=FlagReason.MAX_ATTEMPTS)
    ledger.results.record(*make_result(code="0", originator=ocid(payout_id)))
    assert ledger.lookups.count_flagged() == 0


@pytest.mark.parametrize("status", ["received", "completed"])
def test_nothing_to_look_up(ledger: Ledger, status: str) -> None:
    command = make_command()
    ledger.payouts.record(command, ocid(command.payout_id))
    if status == "completed":
        ledger.payouts.claim_send(command.payout_id, expected_attempts=0)
        ledger.results.record(*make_result(code="0", originator=ocid(command.payout_id)))
    time.sleep(0.01)
    assert command.payout_id not in due(ledger)
    assert ledger.lookups.record_status_query(command.payout_id, trigger=LookupTrigger.MANUAL, retry_after=0.0) is None


def test_a_lookup_flow_control_held_back_is_not_counted(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    held = ledger.lookups.record_status_query(payout_id, trigger=LookupTrigger.UNKNOWN, retry_after=0.0)
    assert held is not None
    ledger.lookups.note_status_query_response(
        held.query_originator_conversation_id,
        outcome=QueryResponse.HELD_BACK,
        code=None,
        description="credential_unproven",
    )
    state = ledger.lookups.lookup_state(payout_id)
    assert state is not None and state.lookup_attempts == 0 and state.lookup_started_at is None
    again = ledger.lookups.record_status_query(payout_id, trigger=LookupTrigger.UNKNOWN, retry_after=0.0)
    assert again is not None and again.attempt == 2, "a query id is never reused, sent or not"


def test_a_resend_m_pesa_did_not_process_stays_due(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    ledger.results.record(*status_answer(query(ledger, payout_id), code="49"))
    assert ledger.lookups.claim_resend(payout_id, expected_attempts=1, retry_after=0.0) is not None
    ledger.lookups.resend_not_taken(payout_id, code="26", description="busy", not_processed=True)
    assert due(ledger)[payout_id].action is LookupAction.RESEND
    assert ledger.lookups.claim_resend(payout_id, expected_attempts=2, retry_after=0.0) is not None
    ledger.lookups.resend_not_taken(payout_id, code=None, description="held", not_processed=True, held=True)
    task = due(ledger)[payout_id]
    assert task.action is LookupAction.RESEND and task.attempts == 2, "the held resend was given back"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"Amount": ""}, "amount"),
        ({"CreditPartyName": "254799999999 - Someone Else"}, "msisdn"),
    ],
)
def test_an_answer_saying_paid_is_matched_like_a_direct_result(
    ledger: Ledger, changes: dict[str, str], reason: str
) -> None:
    """Issue #11 finding 7: quarantined with its body and the payout flagged, never completed."""
    payout_id = accepted_payout(ledger)
    params = {**completed_params(payout_id), **changes}
    applied = ledger.results.record(*status_answer(query(ledger, payout_id, LookupTrigger.MISSING_RESULT), **params))
    assert (applied.outcome, applied.quarantine_reason) == (ApplyOutcome.QUARANTINED, reason)
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.ACCEPTED
    assert keys(ledger, payout_id) == ["payout.accepted"]
    state = ledger.lookups.lookup_state(payout_id)
    assert state is not None and state.flag_reason == FlagReason.ANSWER_MISMATCH.value
    assert ledger.lookups.count_flagged() == 1
    [entry] = ledger.quarantine.entries()
    assert (entry.payout_id, entry.reason) == (payout_id, reason)

    # An operator who confirmed it with M-PESA releases it: applied without the match check.
    released = ledger.results.release_quarantined(entry.id, note="confirmed with M-PESA")
    assert released.payout is not None and released.payout.status is PayoutStatus.COMPLETED
    assert ledger.quarantine.entries() == []
    assert ledger.lookups.count_flagged() == 0


def test_a_task_says_how_long_its_lookups_have_run_on_the_database_clock(ledger: Ledger) -> None:
    payout_id = unknown_payout(ledger)
    assert due(ledger)[payout_id].elapsed is None, "no lookup made yet"
    query(ledger, payout_id)
    task = due(ledger)[payout_id]
    assert task.started_at is not None and task.elapsed is not None
    assert 0.0 <= task.elapsed < 60.0


def test_the_time_budget_is_judged_by_elapsed_time_not_by_this_host_clock(ledger: Ledger) -> None:
    """A task whose lookups started 10 s ago (database clock) is in budget whatever this host's clock says
    about ``started_at``; one past the budget is flagged."""
    settings = load_settings({"B2C_LOOKUP_MAX_SECONDS": "3600"})
    runner = LookupRunner(settings, ledger.lookups, ledger.payouts, cast(Any, None), cast(Any, None))
    payout = ledger.payouts.get(unknown_payout(ledger))
    assert payout is not None
    hours_ago = datetime.now(UTC) - timedelta(hours=5)
    fresh = LookupTask(payout, 1, hours_ago, LookupTrigger.UNKNOWN, LookupAction.QUERY, elapsed=10.0)
    spent = LookupTask(payout, 1, datetime.now(UTC), LookupTrigger.UNKNOWN, LookupAction.QUERY, elapsed=3600.0)
    assert runner._exhausted(fresh) is None
    assert runner._exhausted(spent) is FlagReason.MAX_SECONDS


def test_a_trigger_written_by_a_newer_version_does_not_stop_the_lookup(
    ledger_env: dict[str, str], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(**ledger_env).ledger
    database = Database("sqlite" if settings.database_url is None else "postgres", settings)
    ledger = database.open()
    try:
        payout_id = unknown_payout(ledger)
        database.execute("UPDATE payouts SET lookup_trigger = ? WHERE payout_id = ?", "from_a_newer_version", payout_id)
        assert due(ledger)[payout_id].trigger is LookupTrigger.UNKNOWN
    finally:
        ledger.close()


def test_a_workers_orphaned_send_is_due_after_the_consumers_lease_whatever_its_lookup_count(ledger: Ledger) -> None:
    """``sending`` after a worker's send (lookup count 0): it died, or the ledger failed after the send, and
    no queue message may come back for it. The consumer's own resume gets one lease first; then the lookup
    runner owns it, and its first step is a status query (same payout, no resend under any id)."""
    command = make_command()
    ledger.payouts.record(command, ocid(command.payout_id))
    assert ledger.payouts.claim_send(command.payout_id, expected_attempts=0) is not None
    assert command.payout_id not in due(ledger, stuck_after=60.0), "the consumer's lease comes first"
    time.sleep(0.05)
    task = due(ledger, stuck_after=0.01)[command.payout_id]
    assert (task.action, task.attempts, task.payout.status) == (LookupAction.QUERY, 0, PayoutStatus.SENDING)
