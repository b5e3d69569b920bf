"""What M-PESA's answers do to a payout (worker.payouts.policy): pure decisions, no database."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from worker.payouts.models import Payout, PayoutStatus
from worker.payouts.policy import (
    AnswerAction,
    ResultAction,
    agrees,
    cached,
    decide_answer,
    decide_result,
    failure_reason,
    sendable,
)
from worker.protocol.result import Result, build_result_envelope, parse_result_envelope
from worker.protocol.status import StatusVerdict

MakePayout = Callable[..., Payout]


def _result(code: str, *, receipt: str | None = "SE17ABCDEF", amount: str = "1500.00") -> Result:
    parameters = {"TransactionAmount": amount}
    if receipt is not None:
        parameters["TransactionReceipt"] = receipt
    raw = build_result_envelope(
        code=code,
        description="test",
        originator_conversation_id="600000_mpesab2c_x",
        conversation_id="AG_20240501_0000abc",
        parameters=parameters,
    )
    return parse_result_envelope(raw)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (PayoutStatus.RECEIVED, True),
        (PayoutStatus.SENDING, True),
        (PayoutStatus.UNKNOWN, True),
        (PayoutStatus.ACCEPTED, False),
        (PayoutStatus.COMPLETED, False),
        (PayoutStatus.FAILED, False),
        (PayoutStatus.REJECTED, False),
    ],
)
def test_only_received_sending_and_unknown_are_sendable(
    make_payout: MakePayout, status: PayoutStatus, expected: bool
) -> None:
    assert sendable(make_payout(status=status)) is expected


def test_cached_is_the_normalised_cached_response_code() -> None:
    assert cached("100000000") and not cached("0") and not cached(None)


def test_failure_reason_only_for_failed_and_named_categories() -> None:
    assert failure_reason(PayoutStatus.FAILED, "1") == "funds"
    assert failure_reason(PayoutStatus.COMPLETED, "1") is None
    assert failure_reason(PayoutStatus.FAILED, "999999") is None


def test_a_final_result_agrees_only_about_the_same_money(make_payout: MakePayout) -> None:
    completed = make_payout(status=PayoutStatus.COMPLETED, receipt="SE17ABCDEF")
    assert agrees(completed, PayoutStatus.COMPLETED, _result("0"))
    assert agrees(completed, PayoutStatus.COMPLETED, _result("0", receipt=None))
    assert not agrees(completed, PayoutStatus.COMPLETED, _result("0", receipt="OTHER"))
    assert not agrees(completed, PayoutStatus.FAILED, _result("1"))
    assert agrees(make_payout(status=PayoutStatus.REJECTED), PayoutStatus.FAILED, _result("1"))
    assert not agrees(make_payout(status=PayoutStatus.FAILED), PayoutStatus.COMPLETED, _result("0"))


def test_the_first_final_result_wins(make_payout: MakePayout) -> None:
    accepted = make_payout()
    assert decide_result(accepted, _result("0"), confirm_success=False).action is ResultAction.FINALISE
    failed = decide_result(accepted, _result("1"), confirm_success=False)
    assert (failed.action, failed.target) == (ResultAction.FINALISE, PayoutStatus.FAILED)
    completed = make_payout(status=PayoutStatus.COMPLETED, receipt="SE17ABCDEF")
    assert decide_result(completed, _result("0"), confirm_success=False).action is ResultAction.REPEAT
    assert decide_result(completed, _result("1"), confirm_success=False).action is ResultAction.CONFLICT


def test_a_success_is_held_only_when_confirmation_is_asked_for(make_payout: MakePayout) -> None:
    accepted = make_payout()
    assert decide_result(accepted, _result("0"), confirm_success=True).action is ResultAction.HOLD
    assert decide_result(accepted, _result("1"), confirm_success=True).action is ResultAction.FINALISE


def test_unknown_and_duplicate_results_never_fail_a_payout(make_payout: MakePayout) -> None:
    assert decide_result(make_payout(), _result("17"), confirm_success=False).action is ResultAction.TO_UNKNOWN
    sending = make_payout(status=PayoutStatus.SENDING)
    assert decide_result(sending, _result("17"), confirm_success=False).action is ResultAction.KEEP
    assert decide_result(sending, _result("15"), confirm_success=False).action is ResultAction.LOOK_UP
    completed = make_payout(status=PayoutStatus.COMPLETED)
    assert decide_result(completed, _result("15"), confirm_success=False).action is ResultAction.KEEP


def test_an_answer_about_another_payment_or_amount_is_a_mismatch(make_payout: MakePayout) -> None:
    payout = make_payout()
    other = decide_answer(payout, StatusVerdict.COMPLETED, _result("0"), "someone_else", None)
    assert other.action is AnswerAction.MISMATCH
    amount = decide_answer(payout, StatusVerdict.COMPLETED, _result("0", amount="99.00"), None, None)
    assert amount.action is AnswerAction.MISMATCH and "99" in amount.note
    assert payout.command.amount == Decimal("1500.00")


def test_an_answer_completes_or_fails_only_an_open_payout(make_payout: MakePayout) -> None:
    original = _result("0")
    done = decide_answer(make_payout(status=PayoutStatus.UNKNOWN), StatusVerdict.COMPLETED, original, None, None)
    assert (done.action, done.use) == (AnswerAction.COMPLETE, original)
    failed = decide_answer(make_payout(), StatusVerdict.FAILED, _result("1"), None, None)
    assert failed.action is AnswerAction.FAIL
    final = make_payout(status=PayoutStatus.COMPLETED)
    assert decide_answer(final, StatusVerdict.COMPLETED, original, None, None).action is AnswerAction.ALREADY_FINAL
    contradicts = decide_answer(final, StatusVerdict.FAILED, _result("1"), None, None)
    assert contradicts.action is AnswerAction.CONTRADICTS_FINAL


def test_a_held_success_is_applied_only_when_the_answer_agrees(make_payout: MakePayout) -> None:
    payout, held = make_payout(), _result("0", receipt="HELD1")
    confirmed = decide_answer(payout, StatusVerdict.COMPLETED, _result("0", receipt="HELD1"), None, held)
    assert (confirmed.action, confirmed.use) == (AnswerAction.COMPLETE, held)
    other = decide_answer(payout, StatusVerdict.COMPLETED, _result("0", receipt="OTHER"), None, held)
    assert other.action is AnswerAction.CONTRADICTED
    assert decide_answer(payout, StatusVerdict.FAILED, _result("1"), None, held).action is AnswerAction.CONTRADICTED
    assert decide_answer(payout, StatusVerdict.NOT_FOUND, None, None, held).action is AnswerAction.KEEP


@pytest.mark.parametrize(
    ("status", "response_code", "expected"),
    [
        (PayoutStatus.ACCEPTED, "100000000", AnswerAction.EXPIRED_IN_CACHE),
        (PayoutStatus.ACCEPTED, "0", AnswerAction.KEEP),
        (PayoutStatus.UNKNOWN, None, AnswerAction.RESEND),
        (PayoutStatus.SENDING, None, AnswerAction.RESEND),
    ],
)
def test_not_found_means_a_resend_only_when_it_never_reached_the_core(
    make_payout: MakePayout, status: PayoutStatus, response_code: str | None, expected: AnswerAction
) -> None:
    payout = make_payout(status=status, response_code=response_code)
    assert decide_answer(payout, StatusVerdict.NOT_FOUND, None, None, None).action is expected


def test_an_undecided_answer_changes_nothing(make_payout: MakePayout) -> None:
    decision = decide_answer(make_payout(), StatusVerdict.UNDECIDED, None, None, None)
    assert decision.action is AnswerAction.KEEP


def test_a_not_processed_result_has_an_accepted_payout_looked_up(make_payout: MakePayout) -> None:
    """Issue #11 finding 6: 26 after acceptance means no other result comes; doing nothing parked it."""
    decision = decide_result(make_payout(), _result("26", receipt=None), confirm_success=False)
    assert decision.action is ResultAction.LOOK_UP
    sending = make_payout(status=PayoutStatus.SENDING)
    assert decide_result(sending, _result("26", receipt=None), confirm_success=False).action is ResultAction.KEEP


def _answer(amount: str | None = "1500.00", name: str | None = None) -> Result:
    parameters = {"TransactionStatus": "Completed", "ReceiptNo": "SE17ABCDEF", "ResultCode": "0"}
    if amount is not None:
        parameters["Amount"] = amount
    if name is not None:
        parameters["CreditPartyName"] = name
    raw = build_result_envelope(
        code="0", description="test", originator_conversation_id=None, conversation_id=None, parameters=parameters
    )
    return parse_result_envelope(raw)


@pytest.mark.parametrize("amount", [None, "", "about fifteen hundred"])
def test_an_answer_saying_paid_needs_a_readable_amount(make_payout: MakePayout, amount: str | None) -> None:
    """Issue #11 finding 7: a direct success needs its amount, so a status answer saying paid does too."""
    decision = decide_answer(make_payout(), StatusVerdict.COMPLETED, _answer(amount), None, None)
    assert (decision.action, decision.reason) == (AnswerAction.MISMATCH, "amount")


def test_an_answer_about_another_recipient_is_a_mismatch(make_payout: MakePayout) -> None:
    other = _answer(name="254799999999 - Someone Else")
    decision = decide_answer(make_payout(), StatusVerdict.COMPLETED, other, None, None)
    assert (decision.action, decision.reason) == (AnswerAction.MISMATCH, "msisdn")
    failed = decide_answer(make_payout(), StatusVerdict.FAILED, _result("1", amount="20.00"), None, None)
    assert (failed.action, failed.reason) == (AnswerAction.MISMATCH, "amount")


@pytest.mark.parametrize("name", [None, "254712345678 - Jane Doe", "2547******78 - Jane Doe", "Jane Doe"])
def test_an_absent_or_masked_recipient_is_tolerated_like_on_a_direct_result(
    make_payout: MakePayout, name: str | None
) -> None:
    original = _answer(name=name)
    decision = decide_answer(make_payout(), StatusVerdict.COMPLETED, original, None, None)
    assert (decision.action, decision.use) == (AnswerAction.COMPLETE, original)


def test_a_released_answer_is_not_matched_again(make_payout: MakePayout) -> None:
    original = _answer(amount=None)
    decision = decide_answer(make_payout(), StatusVerdict.COMPLETED, original, None, None, verify=False)
    assert (decision.action, decision.use) == (AnswerAction.COMPLETE, original)
