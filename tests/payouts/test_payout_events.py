"""Events: built from the ledger's row, valid against the shipped schema, routed by status."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from worker.payouts.models import (
    FINAL_STATUSES,
    ROUTING_KEYS,
    FailureReason,
    Payout,
    PayoutCommand,
    PayoutStatus,
    RefusalReason,
    RejectionReason,
    UnknownReason,
    build_event,
    build_refusal,
    canonical_json,
    event_routing_key,
    loads_json,
    result_summary,
)

S = PayoutStatus
NOW = datetime(2024, 5, 1, 9, 31, 5, 250000, tzinfo=UTC)
MakeCommand = Callable[..., PayoutCommand]
MakePayout = Callable[..., Payout]


def assert_valid(validator: Draft202012Validator, event: dict[str, Any]) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(event)]
    assert not errors, errors
    # The wire form (what the outbox stores) must be just as valid and carry the metadata exactly.
    wire = loads_json(canonical_json(event))
    assert validator.is_valid(wire)
    assert canonical_json(wire) == canonical_json(event)


def completed_result() -> dict[str, Any]:
    return result_summary(
        code="0",
        description="The service request is processed successfully.",
        receipt="SE17ABCDEF",
        amount=Decimal("1500"),
        recipient_name="254712345678 - Jane Doe",
        completed_at=datetime(2024, 5, 1, 12, 30, 11, tzinfo=timezone(timedelta(hours=3))),
        working_balance=Decimal("98500.5"),
        utility_balance=Decimal("48500"),
        charges_balance=Decimal("0"),
        registered=True,
    )


@pytest.mark.parametrize(
    ("status", "key"),
    [
        (S.ACCEPTED, "payout.accepted"),
        (S.REJECTED, "payout.rejected"),
        (S.UNKNOWN, "payout.unknown"),
        (S.COMPLETED, "payout.completed"),
        (S.FAILED, "payout.failed"),
        (S.RECEIVED, "payout.accepted"),
        (S.SENDING, "payout.accepted"),
    ],
)
def test_routing_keys(status: PayoutStatus, key: str) -> None:
    assert event_routing_key(status) == key
    assert event_routing_key(status.value) == key


def test_only_five_routing_keys() -> None:
    assert {event_routing_key(s) for s in S} == ROUTING_KEYS
    assert len(ROUTING_KEYS) == 5


def test_completed_event(event_validator: Draft202012Validator, make_payout: MakePayout) -> None:
    payout = make_payout(status=S.COMPLETED, final_details=completed_result(), receipt="SE17ABCDEF")
    event = build_event(payout, status=S.COMPLETED, now=NOW)
    assert_valid(event_validator, event)
    assert uuid.UUID(event["event_id"]).version == 4
    assert event["payout_id"] == "inv-42"
    assert event["status"] == "completed"
    assert event["duplicate"] is False
    assert event["occurred_at"] == "2024-05-01T09:31:05.250000Z"
    assert event["created_at"] == "2024-05-01T09:30:00.000000Z"
    assert event["originator_conversation_id"] == payout.originator_conversation_id
    assert event["conversation_id"] == "AG_20240501_0000abc"
    assert event["amount"] == "1500.00"
    assert event["command"] == "BusinessPayment"
    assert event["msisdn_masked"] == "2547******78"
    assert event["response"] == {"code": "0", "description": "Accept the service request successfully."}
    result = event["result"]
    assert result["receipt"] == "SE17ABCDEF"
    assert result["amount"] == "1500.00"
    assert result["recipient_name"] == "2547******78 - Jane Doe"
    assert result["completed_at"] == "2024-05-01T09:30:11.000000Z"
    assert result["balances"] == {"working": "98500.50", "utility": "48500.00", "charges": "0.00"}
    assert result["registered"] is True
    assert event["metadata"] == {"order": Decimal("42")}
    assert "254712345678" not in canonical_json(event).decode()


def test_events_are_unique(make_payout: MakePayout) -> None:
    payout = make_payout()
    ids = {build_event(payout, status=S.ACCEPTED)["event_id"] for _ in range(50)}
    assert len(ids) == 50


def test_default_now_is_current_utc(make_payout: MakePayout) -> None:
    before = datetime.now(UTC)
    event = build_event(make_payout(), status=S.ACCEPTED)
    occurred = datetime.fromisoformat(event["occurred_at"])
    assert before <= occurred <= datetime.now(UTC)


def test_naive_now_is_refused(make_payout: MakePayout) -> None:
    with pytest.raises(ValueError):
        build_event(make_payout(), status=S.ACCEPTED, now=datetime(2024, 5, 1))


def test_invalid_command_event(event_validator: Draft202012Validator) -> None:
    event = build_event(
        None,
        status=S.REJECTED,
        reason=RejectionReason.INVALID_COMMAND,
        message="msisdn: not a Kenyan mobile number; got 0712345678",
        payout_id="inv-7",
        now=NOW,
    )
    assert_valid(event_validator, event)
    assert event["payout_id"] == "inv-7"
    assert event["reason"] == "invalid_command"
    assert event["message"] == "msisdn: not a Kenyan mobile number; got 07******78"
    assert event["amount"] is None
    assert event["metadata"] == {}
    assert event_routing_key(event["status"]) == "payout.rejected"


def test_unusable_payout_id_becomes_null(event_validator: Draft202012Validator) -> None:
    for bad in ("has space", "x" * 65, ""):
        event = build_event(None, status=S.REJECTED, reason="invalid_command", payout_id=bad, now=NOW)
        assert event["payout_id"] is None
        assert_valid(event_validator, event)


def test_a_refusal_describes_the_refused_command_and_never_a_payout_status(
    refusal_validator: Draft202012Validator,
    event_validator: Draft202012Validator,
    make_command: MakeCommand,
    make_payout: MakePayout,
) -> None:
    recorded = make_payout(status=S.COMPLETED, final_details=completed_result(), receipt="SE17ABCDEF")
    refused = make_command(amount=Decimal("2000.00"), metadata={"order": 43})
    event = build_refusal(
        recorded,
        reason=RefusalReason.IDEMPOTENCY_CONFLICT,
        message="payout_id inv-42 is recorded for a different payout; 0712345678",
        command=refused,
        now=NOW,
    )
    assert_valid(refusal_validator, event)
    assert not event_validator.is_valid(event), "a refusal must not pass for a payout event"
    assert "status" not in event and "duplicate" not in event
    assert (event["kind"], event["payout_id"], event["recorded_status"]) == ("command.refused", "inv-42", "completed")
    assert event["refused_command"] == {
        "amount": "2000.00",
        "command": "BusinessPayment",
        "msisdn_masked": "2547******78",
        "metadata": {"order": 43},
    }
    assert event["message"].endswith("07******78")


@pytest.mark.parametrize("status", list(S))
def test_a_refusal_is_valid_whatever_the_recorded_status(
    refusal_validator: Draft202012Validator, make_command: MakeCommand, make_payout: MakePayout, status: PayoutStatus
) -> None:
    recorded = make_payout(status=status)
    for reason, command in (
        (RefusalReason.IDEMPOTENCY_CONFLICT, make_command()),
        (RefusalReason.INVALID_COMMAND, None),
    ):
        event = build_refusal(recorded, reason=reason, message="m" * 600, command=command, now=NOW)
        assert_valid(refusal_validator, event)
        assert event["recorded_status"] == status.value and len(event["message"]) == 500
    with pytest.raises(ValueError):
        build_refusal(recorded, reason="mpesa_rejected", message="m", now=NOW)
    with pytest.raises(ValueError):
        build_refusal(recorded, reason=RefusalReason.IDEMPOTENCY_CONFLICT, message="m", now=NOW)


def test_a_conflict_is_no_longer_a_rejection_reason() -> None:
    with pytest.raises(ValueError):
        build_event(None, status=S.REJECTED, reason="idempotency_conflict", payout_id="inv-42", now=NOW)


def test_refusal_schema_examples_are_valid(refusal_validator: Draft202012Validator) -> None:
    examples = refusal_validator.schema["examples"]
    assert {example["reason"] for example in examples} == set(RefusalReason)
    for example in examples:
        assert_valid(refusal_validator, example)


@pytest.mark.parametrize("status", list(S))
def test_duplicate_answers_report_the_current_status(
    event_validator: Draft202012Validator, make_payout: MakePayout, status: PayoutStatus
) -> None:
    reason = {S.REJECTED: "mpesa_rejected", S.UNKNOWN: "no_response"}.get(status)
    payout = make_payout(status=status, reason=reason)
    event = build_event(payout, status=status, duplicate=True, now=NOW)
    assert_valid(event_validator, event)
    assert event["duplicate"] is True
    assert event["status"] == status.value
    assert event["reason"] == reason
    expected_key = "payout.accepted" if status in (S.RECEIVED, S.SENDING) else f"payout.{status.value}"
    assert event_routing_key(status) == expected_key


@pytest.mark.parametrize("status", [S.RECEIVED, S.SENDING])
def test_in_flight_statuses_only_as_duplicates(
    event_validator: Draft202012Validator, make_payout: MakePayout, status: PayoutStatus
) -> None:
    with pytest.raises(ValueError):
        build_event(make_payout(status=status), status=status)
    forged = build_event(make_payout(status=status), status=status, duplicate=True, now=NOW)
    forged["duplicate"] = False
    assert not event_validator.is_valid(forged)


def test_reasons_belong_to_their_status(event_validator: Draft202012Validator, make_payout: MakePayout) -> None:
    payout = make_payout()
    for status, vocabulary in (
        (S.REJECTED, RejectionReason),
        (S.UNKNOWN, UnknownReason),
        (S.FAILED, FailureReason),
    ):
        for reason in vocabulary:
            assert_valid(event_validator, build_event(payout, status=status, reason=reason, now=NOW))
        with pytest.raises(ValueError):
            build_event(payout, status=status, reason="made_up")
    for status in (S.ACCEPTED, S.COMPLETED):
        with pytest.raises(ValueError):
            build_event(payout, status=status, reason="no_response")
    with pytest.raises(ValueError):
        build_event(payout, status=S.REJECTED, reason="no_response")
    with pytest.raises(ValueError):
        build_event(payout, status=S.REJECTED)


def test_schema_rejects_mismatched_reason(event_validator: Draft202012Validator, make_payout: MakePayout) -> None:
    event = build_event(make_payout(), status=S.UNKNOWN, reason="no_response", now=NOW)
    assert event_validator.is_valid(event)
    for status, reason in ((S.UNKNOWN, "mpesa_rejected"), (S.REJECTED, None), (S.ACCEPTED, "no_response")):
        assert not event_validator.is_valid({**event, "status": status.value, "reason": reason})


def test_stale_reason_is_not_carried_to_another_status(make_payout: MakePayout) -> None:
    # A payout once unknown (reason no_response) that was later accepted must not report that reason.
    payout = make_payout(status=S.ACCEPTED, reason="no_response")
    assert build_event(payout, status=S.ACCEPTED)["reason"] is None


def test_unknown_event_with_reason_from_the_row(event_validator: Draft202012Validator, make_payout: MakePayout) -> None:
    payout = make_payout(status=S.UNKNOWN, reason="no_response", conversation_id=None, response_code=None)
    event = build_event(payout, status=S.UNKNOWN, message="read timeout after 30 s", now=NOW)
    assert_valid(event_validator, event)
    assert event["reason"] == "no_response"
    assert event["response"] is None
    assert event["conversation_id"] is None


def test_failed_event_from_result_codes(event_validator: Draft202012Validator, make_payout: MakePayout) -> None:
    payout = make_payout(
        status=S.FAILED,
        result_code="2001",
        result_desc="The initiator information is invalid for 254712345678.",
    )
    event = build_event(payout, status=S.FAILED, reason=FailureReason.CREDENTIAL, now=NOW)
    assert_valid(event_validator, event)
    assert event["result"]["code"] == "2001"
    assert event["result"]["description"] == "The initiator information is invalid for 2547******78."
    assert event["result"]["receipt"] is None


def test_result_argument_accepts_raw_values(event_validator: Draft202012Validator, make_payout: MakePayout) -> None:
    raw = {
        "code": "0",
        "description": "ok",
        "receipt": "R1",
        "amount": "10.5",
        "completed_at": "2024-05-01T12:00:00+03:00",
        "balances": {"utility": Decimal("7")},
        "registered": False,
    }
    event = build_event(make_payout(status=S.COMPLETED), status=S.COMPLETED, result=raw, now=NOW)
    assert_valid(event_validator, event)
    assert event["result"]["amount"] == "10.50"
    assert event["result"]["completed_at"] == "2024-05-01T09:00:00.000000Z"
    assert event["result"]["balances"] == {"working": None, "utility": "7.00", "charges": None}


def test_long_message_is_cut(event_validator: Draft202012Validator, make_payout: MakePayout) -> None:
    event = build_event(make_payout(), status=S.UNKNOWN, reason="no_response", message="x" * 2000, now=NOW)
    assert len(event["message"]) == 500
    assert_valid(event_validator, event)


def test_mismatched_payout_id_is_a_bug(make_payout: MakePayout) -> None:
    with pytest.raises(ValueError):
        build_event(make_payout(), status=S.ACCEPTED, payout_id="someone-else")


def test_schema_examples_are_valid(event_validator: Draft202012Validator) -> None:
    examples = event_validator.schema["examples"]
    assert examples
    for example in examples:
        assert_valid(event_validator, example)
        assert event_routing_key(example["status"]) in ROUTING_KEYS


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000).map(Decimal)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
metadata = st.dictionaries(
    st.text(max_size=5),
    st.recursive(
        json_leaf,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=6,
    ),
    max_size=4,
)
money = st.none() | st.decimals(min_value=-(10**9), max_value=10**9, places=2)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=3))]),
)
texts = st.none() | st.text(max_size=40)
results = st.none() | st.builds(
    result_summary,
    code=st.text(min_size=1, max_size=10),
    description=texts,
    receipt=texts,
    amount=money,
    recipient_name=texts,
    completed_at=st.none() | moments,
    working_balance=money,
    utility_balance=money,
    charges_balance=money,
    registered=st.none() | st.booleans(),
)
reasons_for = {
    S.REJECTED: st.sampled_from(list(RejectionReason)),
    S.UNKNOWN: st.none() | st.sampled_from(list(UnknownReason)),
    S.FAILED: st.none() | st.sampled_from(list(FailureReason)),
}


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from(list(S)),
    duplicate=st.booleans(),
    data=st.data(),
)
def test_built_events_always_match_the_schema(
    event_validator: Draft202012Validator,
    make_command: MakeCommand,
    make_payout: MakePayout,
    status: PayoutStatus,
    duplicate: bool,
    data: st.DataObject,
) -> None:
    if status in (S.RECEIVED, S.SENDING):
        duplicate = True
    command = make_command(
        payout_id=data.draw(st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)),
        msisdn=data.draw(st.from_regex(r"254[17][0-9]{8}", fullmatch=True)),
        amount=data.draw(st.decimals(min_value=10, max_value=250000, places=2)),
        metadata=data.draw(metadata),
    )
    payout = make_payout(
        command,
        status=status,
        conversation_id=data.draw(texts),
        response_code=data.draw(st.none() | st.text(max_size=9)),
        response_desc=data.draw(texts),
        created_at=data.draw(moments),
        final_details=data.draw(results),
    )
    reason = data.draw(reasons_for.get(status, st.none()))
    without_row = status is S.REJECTED and data.draw(st.booleans())
    event = build_event(
        None if without_row else payout,
        status=status,
        duplicate=duplicate,
        reason=reason,
        message=data.draw(texts),
        command=command if without_row else None,
        now=data.draw(moments),
    )
    assert_valid(event_validator, event)
    assert event["metadata"] is command.metadata
    if status in FINAL_STATUSES or status in (S.ACCEPTED, S.UNKNOWN):
        assert event_routing_key(status) == f"payout.{status.value}"
