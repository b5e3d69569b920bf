"""Reading a TransactionStatusQuery's answer: only a clear "paid" or a final failure code decides anything."""

from __future__ import annotations

import pytest

from worker.ledger import status_query_id
from worker.payouts.models import originator_conversation_id
from worker.protocol.result import build_result_envelope, parse_result_envelope
from worker.protocol.status import StatusAnswer, StatusVerdict, interpret_status_answer

TARGET = originator_conversation_id("600000", "mpesab2c", "p-1")


def answer(code: str = "0", **parameters: str) -> StatusVerdict:
    return read(code, **parameters).verdict


def read(code: str = "0", **parameters: str) -> StatusAnswer:
    raw = build_result_envelope(
        code=code,
        description="The service request is processed successfully." if code == "0" else "No transaction found.",
        originator_conversation_id=status_query_id(TARGET, 1),
        conversation_id="AG_20240501_000012345",
        transaction_id="SE10000000",
        parameters=parameters,
    )
    return interpret_status_answer(parse_result_envelope(raw))


def simulator_style(status: str, result_code: str, **extra: str) -> dict[str, str]:
    """The parameters the simulator (worker/simulator/engine.py ``_query_result``) sends."""
    return {
        "TransactionStatus": status,
        "ReceiptNo": "SE17ABCDEF",
        "Amount": "1500.00",
        "DebitPartyName": "600000 - mpesab2c",
        "CreditPartyName": "254712345678 - Jane Doe",
        "InitiatedTime": "20240501123000",
        "FinalisedTime": "20240501123011",
        "OriginatorConversationID": TARGET,
        "ConversationID": "AG_20240501_0000abc",
        "ResultCode": result_code,
        "ResultDesc": "whatever M-PESA said",
        **extra,
    }


def test_completed_answer_carries_the_original_payment() -> None:
    found = read("0", **simulator_style("Completed", "0"))
    assert found.verdict is StatusVerdict.COMPLETED
    assert found.target == TARGET
    original = found.original
    assert original is not None and original.code == "0"
    assert original.details.receipt == "SE17ABCDEF"
    assert str(original.details.amount) == "1500.00"
    assert original.details.public_name == "Jane Doe"
    assert original.details.completed_at is not None
    assert original.conversation_id == "AG_20240501_0000abc"


def test_failed_answer_needs_a_final_failure_code() -> None:
    found = read("0", **simulator_style("Failed", "1"))
    assert found.verdict is StatusVerdict.FAILED
    assert found.original is not None and found.original.code == "1"
    assert found.original.details.receipt is None, "a failed payment has no receipt"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("Failed", "15"),  # the duplicate attempt, not the payment: decides nothing
        ("Failed", "17"),  # internal failure: unknown
        ("Completed", "1"),  # contradiction
        ("Failed", "0"),  # contradiction
        ("Pending", ""),  # no code, not completed
        ("", ""),
    ],
)
def test_anything_unclear_is_undecided(status: str, code: str) -> None:
    assert answer("0", **simulator_style(status, code)) is StatusVerdict.UNDECIDED


def test_completed_without_a_code_is_completed() -> None:
    params = simulator_style("Completed", "")
    assert answer("0", **params) is StatusVerdict.COMPLETED


def test_no_such_transaction_and_failed_queries() -> None:
    assert answer("49") is StatusVerdict.NOT_FOUND
    assert answer("18") is StatusVerdict.UNDECIDED  # the query's own credential failed: says nothing
    assert answer("17") is StatusVerdict.UNDECIDED
    assert answer("15") is StatusVerdict.UNDECIDED


def test_status_query_ids_are_new_deterministic_and_short_enough() -> None:
    assert status_query_id(TARGET, 1) == TARGET + "_Q1"
    assert status_query_id(TARGET, 12) == TARGET + "_Q12"
    long_id = "6" * 6 + "_" + "x" * 121
    assert len(long_id) == 128
    made = status_query_id(long_id, 3)
    assert len(made) == 128 and made.endswith("_Q3") and made != long_id
    with pytest.raises(ValueError):
        status_query_id(TARGET, 0)
