"""What M-PESA's answers do to a payout: pure decisions over the models, applied by the ledger's SQL.

Kept apart from the SQL so the money rules can be read (and tested) on their own: the first final status
wins; a result that contradicts it changes nothing; "we don't know" is never turned into failed; a status
answer decides only what it clearly says; a success held for confirmation is applied only when a status
query agrees with it. The ledger locks the payout, asks here, and writes what the decision says in the same
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from worker.payouts.matching import REASON_ORIGINATOR, answer_mismatches
from worker.payouts.models import FailureReason, Payout, PayoutStatus
from worker.protocol.codes import ResultOutcome, normalise_code, result_category
from worker.protocol.result import Result
from worker.protocol.status import StatusVerdict

# M-PESA's synchronous answer for a request it only cached; a later "not found" means it never ran.
CACHED_RESPONSE_CODE = "100000000"
SENDABLE = frozenset({PayoutStatus.RECEIVED, PayoutStatus.SENDING, PayoutStatus.UNKNOWN})
_FAILURE_REASONS = frozenset(reason.value for reason in FailureReason)


def sendable(payout: Payout) -> bool:
    """Whether a send may be claimed: also from ``sending`` (a crash mid-send) and ``unknown`` (resending
    under the same OriginatorConversationID cannot pay twice); never from ``accepted`` or a final status."""
    return payout.status in SENDABLE


class SendAnswer(StrEnum):
    """What the end of one send said, as kept about a send whose claim is no longer the payout's latest."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    NOT_PROCESSED = "not_processed"
    RESEND_NOT_TAKEN = "resend_not_taken"


class StaleAction(StrEnum):
    """What a stale sender's answer did: applied (an acceptance, see :func:`stale_answer`) or only kept."""

    APPLIED = "applied"
    KEPT = "kept"


def stale(payout: Payout, attempt: int) -> bool:
    """Whether the payout was claimed again since the claim ``attempt`` (its ``send_attempts`` then): that
    claim's sender no longer owns the payout, whatever its send's answer says."""
    return payout.send_attempts != attempt


# Where an acceptance adds what the ledger lacks: no answer yet, or none that says M-PESA has the request.
_ACCEPTABLE_WHEN_STALE = frozenset({PayoutStatus.RECEIVED, PayoutStatus.SENDING, PayoutStatus.UNKNOWN})


def stale_answer(payout: Payout, answer: SendAnswer, conversation_id: str | None = None) -> StaleAction:
    """A stale sender's answer changes the payout only when it is an acceptance that adds to it.

    Every send of a payout carries its one OriginatorConversationID, so an acceptance says M-PESA has that
    payment whichever send carried it; M-PESA refuses to pay it twice. Applying it is safe where the payout
    is still in doubt (``received``, ``sending``, ``unknown``), or ``accepted`` without a ConversationID.
    A refusal, silence or "not processed" describes only the stale send: the newer claim may be paid, so it
    never makes the payout ``rejected``, ``unknown`` or ``received``.
    """
    if answer is not SendAnswer.ACCEPTED:
        return StaleAction.KEPT
    if payout.status in _ACCEPTABLE_WHEN_STALE:
        return StaleAction.APPLIED
    missing = payout.status is PayoutStatus.ACCEPTED and payout.conversation_id is None
    return StaleAction.APPLIED if missing and conversation_id else StaleAction.KEPT


def lease_running(payout: Payout, now: datetime, lease_seconds: float) -> bool:
    """Whether a ``sending`` payout's send may still be running; ``now`` must be on the clock that stamped
    ``updated_at`` (the database's), or a host whose clock runs ahead would take a live send for dead."""
    return payout.status is PayoutStatus.SENDING and (now - payout.updated_at).total_seconds() < lease_seconds


def cached(code: str | None) -> bool:
    return code is not None and normalise_code(code) == CACHED_RESPONSE_CODE


def failure_reason(target: PayoutStatus, code: str) -> str | None:
    """The payout's ``reason`` for a final result: the failure category, when the code has one we name."""
    category = result_category(code) if target is PayoutStatus.FAILED else None
    return category if category is not None and category.value in _FAILURE_REASONS else None


def agrees(payout: Payout, target: PayoutStatus, result: Result) -> bool:
    """Whether a final result says the same about the money as the payout's final status already does."""
    if target is PayoutStatus.COMPLETED:
        receipt = result.details.receipt
        return payout.status is PayoutStatus.COMPLETED and (
            payout.receipt is None or receipt is None or payout.receipt == receipt
        )
    return payout.status in (PayoutStatus.FAILED, PayoutStatus.REJECTED)


class ResultAction(StrEnum):
    """What a matched result callback does to its payout."""

    FINALISE = "finalise"
    HOLD = "hold"
    REPEAT = "repeat"
    CONFLICT = "conflict"
    TO_UNKNOWN = "to_unknown"
    KEEP = "keep"
    LOOK_UP = "look_up"


@dataclass(frozen=True)
class ResultDecision:
    action: ResultAction
    note: str
    target: PayoutStatus | None = None


def decide_result(payout: Payout, result: Result, *, confirm_success: bool) -> ResultDecision:
    """The first final status wins; a later final result only repeats it or conflicts with it.

    ``confirm_success`` (B2C_CONFIRM_SUCCESS) holds a success unapplied until a status query confirms it.
    An unclassified result makes an ``accepted`` payout ``unknown``, never failed. A duplicate answer
    (15/41) means the id reached M-PESA before: the payout is looked up, since that first request decides.
    A not-processed result (26) on an ``accepted`` payout is looked up too: no other result will come for
    it, and left alone it would wait for the result timeout with nothing in the ledger saying why.
    """
    outcome = result.outcome
    if outcome in (ResultOutcome.COMPLETED, ResultOutcome.FAILED):
        target = PayoutStatus.COMPLETED if outcome is ResultOutcome.COMPLETED else PayoutStatus.FAILED
        if not payout.is_final:
            if confirm_success and target is PayoutStatus.COMPLETED:
                return ResultDecision(ResultAction.HOLD, "", target)
            return ResultDecision(ResultAction.FINALISE, f"payout {target}", target)
        if agrees(payout, target, result):
            return ResultDecision(ResultAction.REPEAT, f"repeats the final status {payout.status}", target)
        return ResultDecision(
            ResultAction.CONFLICT,
            f"says {target}, payout already {payout.status} (receipt {payout.receipt}); not applied",
            target,
        )
    if outcome is ResultOutcome.UNKNOWN and payout.status is PayoutStatus.ACCEPTED:
        return ResultDecision(ResultAction.TO_UNKNOWN, "accepted payout now unknown", PayoutStatus.UNKNOWN)
    note = f"result outcome {outcome}: payout stays {payout.status}"
    if outcome is ResultOutcome.DUPLICATE and not payout.is_final:
        return ResultDecision(ResultAction.LOOK_UP, note + "; looked up now")
    if outcome is ResultOutcome.NOT_PROCESSED and payout.status is PayoutStatus.ACCEPTED:
        return ResultDecision(ResultAction.LOOK_UP, note + "; looked up now")
    return ResultDecision(ResultAction.KEEP, note)


class AnswerAction(StrEnum):
    """What an answer to one of our status queries does to the payout it looked up."""

    MISMATCH = "mismatch"
    CONTRADICTED = "contradicted"
    ALREADY_FINAL = "already_final"
    CONTRADICTS_FINAL = "contradicts_final"
    COMPLETE = "complete"
    FAIL = "fail"
    EXPIRED_IN_CACHE = "expired_in_cache"
    RESEND = "resend"
    KEEP = "keep"


@dataclass(frozen=True)
class AnswerDecision:
    """``note`` says why; for MISMATCH/CONTRADICTED it is the detail of the review flag. ``use`` is the
    result to finalise with (COMPLETE: the held success if there is one; FAIL: the original). ``reason``
    (MISMATCH only) is the first failed check of :mod:`worker.payouts.matching`, the quarantine reason."""

    action: AnswerAction
    note: str
    use: Result | None = None
    reason: str | None = None


EXPIRED_IN_CACHE_MESSAGE = "M-PESA cached the request and has no record of executing it; resending with the same id"


def decide_answer(  # noqa: C901 - money path: one branch per verdict, guards first, in one reviewed order
    payout: Payout,
    verdict: StatusVerdict,
    original: Result | None,
    target: str | None,
    held: Result | None,
    *,
    verify: bool = True,
) -> AnswerDecision:
    """Decide only what the answer clearly says: completed (with an amount that agrees) or failed finally.

    ``original`` is the original payment as the answer describes it, ``target`` the OriginatorConversationID
    it describes, ``held`` a success kept for confirmation. The answer is matched against the payout like a
    direct result (:func:`worker.payouts.matching.answer_mismatches`), unless ``verify`` is off (an operator
    releases it after confirming it with M-PESA). "Not found" for an ``unknown``/``sending`` payout,
    or an ``accepted`` one M-PESA only cached, means it never reached the core: a resend under the same id
    is due. "Not found" for anything else changes nothing: it may not be visible yet.
    """
    if verify and target and target != payout.originator_conversation_id:
        return AnswerDecision(
            AnswerAction.MISMATCH,
            f"describes OriginatorConversationID {target!r}, not the payout's",
            reason=REASON_ORIGINATOR,
        )
    if verify and verdict in (StatusVerdict.COMPLETED, StatusVerdict.FAILED):
        assert original is not None
        found = answer_mismatches(payout, original, paid=verdict is StatusVerdict.COMPLETED)
        if found:
            note = "; ".join(mismatch.detail for mismatch in found)
            return AnswerDecision(AnswerAction.MISMATCH, note, reason=found[0].reason)
    if payout.is_final:
        return _final(payout, verdict)
    if verdict is StatusVerdict.COMPLETED:
        assert original is not None
        if held is None:
            return AnswerDecision(AnswerAction.COMPLETE, "payout completed", original)
        theirs, ours = held.details.receipt, original.details.receipt
        if theirs and ours and theirs != ours:
            return AnswerDecision(AnswerAction.CONTRADICTED, f"held receipt {theirs}, M-PESA has {ours}")
        return AnswerDecision(AnswerAction.COMPLETE, "confirmed held success: completed", held)
    if verdict is StatusVerdict.FAILED:
        assert original is not None
        if held is not None:
            return AnswerDecision(AnswerAction.CONTRADICTED, f"success held, M-PESA says {original.code}")
        return AnswerDecision(AnswerAction.FAIL, f"payout failed ({original.code})", original)
    if verdict is StatusVerdict.NOT_FOUND:
        return _not_found(payout, held=held is not None)
    return AnswerDecision(AnswerAction.KEEP, f"payout stays {payout.status}; looked up again on schedule")


def _final(payout: Payout, verdict: StatusVerdict) -> AnswerDecision:
    says_paid = verdict is StatusVerdict.COMPLETED
    if verdict in (StatusVerdict.COMPLETED, StatusVerdict.FAILED) and says_paid != (
        payout.status is PayoutStatus.COMPLETED
    ):
        return AnswerDecision(
            AnswerAction.CONTRADICTS_FINAL, f"contradicts the final status {payout.status}; not applied"
        )
    return AnswerDecision(AnswerAction.ALREADY_FINAL, f"payout already {payout.status}")


def _not_found(payout: Payout, *, held: bool) -> AnswerDecision:
    if held:
        return AnswerDecision(AnswerAction.KEEP, "success held but M-PESA finds no such payment (yet); looked up again")
    if payout.status is PayoutStatus.ACCEPTED and cached(payout.response_code):
        return AnswerDecision(
            AnswerAction.EXPIRED_IN_CACHE, "cached and never executed: now unknown, resend with the same id due"
        )
    if payout.status in (PayoutStatus.UNKNOWN, PayoutStatus.SENDING):
        return AnswerDecision(
            AnswerAction.RESEND, "never reached M-PESA: resend with the same OriginatorConversationID due"
        )
    return AnswerDecision(
        AnswerAction.KEEP, f"payout {payout.status} but not found (not visible yet?); looked up again"
    )
