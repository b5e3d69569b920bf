"""What the answer to a ``TransactionStatusQuery`` says about the payment it looked up (PROTOCOL §5).

The answer arrives as an ordinary result callback for the *query's own* OriginatorConversationID. Its own
ResultCode says whether the query worked (0) or found nothing (49); its result parameters describe the
original payment: on Daraja ``TransactionStatus`` (``Completed``...), ``ReceiptNo``, ``Amount``,
``FinalisedTime``, ``CreditPartyName``, ``OriginatorConversationID``, ``ConversationID``, and (as the
simulator and some G2 traces send) the original ``ResultCode``/``ResultDesc``. G2's exact parameter names
are unconfirmed, so the reading is lenient about names and strict about meaning: only an answer that
clearly says "paid" or names a final failure code decides anything; everything else is UNDECIDED, never a
failure ("we don't know" must not become "not paid").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from worker.protocol.codes import ResultOutcome, classify_result_code
from worker.protocol.result import Result, details_from

_COMPLETED_WORDS = frozenset({"completed", "complete", "success", "successful"})
_RECEIPT_KEYS = ("receiptno", "transactionreceipt", "receiptnumber")


class StatusVerdict(StrEnum):
    """What a status answer decides about the looked-up payment."""

    COMPLETED = "completed"
    FAILED = "failed"
    NOT_FOUND = "not_found"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class StatusAnswer:
    """``original`` is the looked-up payment's outcome as a :class:`Result` (COMPLETED and FAILED only),
    ready to be applied like a result callback; ``target`` is the OriginatorConversationID the answer says
    it describes (None when it does not say)."""

    verdict: StatusVerdict
    original: Result | None
    transaction_status: str | None
    target: str | None
    detail: str


def _parameter(parameters: Mapping[str, str], *keys: str) -> str | None:
    normalised = {re.sub(r"[\s_]", "", key).lower(): value.strip() for key, value in parameters.items()}
    for key in keys:
        value = normalised.get(key.lower())
        if value:
            return value
    return None


def _undecided(status: str | None, target: str | None, detail: str) -> StatusAnswer:
    return StatusAnswer(StatusVerdict.UNDECIDED, None, status, target, detail)


def interpret_status_answer(answer: Result) -> StatusAnswer:
    """Read a status query's result; never raises (an answer it cannot read is UNDECIDED)."""
    parameters = answer.parameters
    status = _parameter(parameters, "TransactionStatus", "Status")
    target = _parameter(parameters, "OriginatorConversationID")
    own = answer.outcome
    if own is ResultOutcome.NOT_FOUND:
        return StatusAnswer(StatusVerdict.NOT_FOUND, None, status, target, f"{answer.code}: no such transaction")
    if own is not ResultOutcome.COMPLETED:
        return _undecided(status, target, f"the query itself ended {answer.code} ({own})")

    code = _parameter(parameters, "ResultCode")
    description = _parameter(parameters, "ResultDesc")
    word = (status or "").lower()
    if code is not None:
        outcome = classify_result_code(code)
        if outcome is ResultOutcome.COMPLETED and word and word not in _COMPLETED_WORDS:
            return _undecided(status, target, f"status {status!r} contradicts result code {code}")
        if outcome is ResultOutcome.FAILED and word in _COMPLETED_WORDS:
            return _undecided(status, target, f"status {status!r} contradicts result code {code}")
        if outcome not in (ResultOutcome.COMPLETED, ResultOutcome.FAILED):
            return _undecided(status, target, f"the payment's result code {code} is not final ({outcome})")
    elif word in _COMPLETED_WORDS:
        code, outcome = "0", ResultOutcome.COMPLETED
    else:
        return _undecided(status, target, f"status {status!r} without a result code decides nothing")

    verdict = StatusVerdict.COMPLETED if outcome is ResultOutcome.COMPLETED else StatusVerdict.FAILED
    receipt = _parameter(parameters, *_RECEIPT_KEYS)
    readable = dict(parameters)
    if verdict is StatusVerdict.FAILED:
        # A failed payment has no receipt, whatever id the answer shows for it.
        receipt = None
        readable = {k: v for k, v in parameters.items() if re.sub(r"[\s_]", "", k).lower() not in _RECEIPT_KEYS}
    original = Result(
        result_type=answer.result_type,
        code=code,
        description=description or f"{status or verdict} (confirmed by TransactionStatusQuery)",
        originator_conversation_id=target,
        conversation_id=_parameter(parameters, "ConversationID"),
        transaction_id=receipt,
        parameters=dict(parameters),
        reference={},
        details=details_from(readable, transaction_id=receipt, code=code),
    )
    return StatusAnswer(verdict, original, status, target, f"{status or 'no status'}, result code {code}")
