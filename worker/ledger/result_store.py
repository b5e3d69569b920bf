"""The ``results`` and ``queue_timeouts`` tables: every callback body is kept, then applied to its payout.

A result is stored and applied in one transaction; if applying fails, its body is still stored (disposition
``error``). What a result or a status answer does to a payout is decided by :mod:`worker.payouts.policy`;
this module finds and locks the payout, asks, and writes the decision: payout row, outbox event, lookup
bookkeeping, quarantine entry and the result row, all in the caller's one transaction.
"""

from __future__ import annotations

import logging
from typing import Protocol

from worker import metrics
from worker.errors import B2CError, LedgerError, ProtocolError
from worker.ledger import outbox, quarantine
from worker.ledger.lookup_store import flag_in, lookup_soon, set_resend_due
from worker.ledger.lookups import FlagReason, LookupTrigger, QueueTimeoutApplied
from worker.ledger.model import ApplyOutcome, Disposition, QuarantineState, ResultApplied
from worker.ledger.payout_store import change, lock, lock_payout, lock_row
from worker.ledger.payout_store import load as load_payout
from worker.ledger.transaction import Transactions, Work
from worker.payouts import policy
from worker.payouts.matching import REASON_ORIGINATOR, REASON_UNKNOWN_PAYOUT, mismatches
from worker.payouts.models import Payout, PayoutStatus, UnknownReason, canonical_json, result_summary
from worker.payouts.policy import AnswerAction, ResultAction
from worker.protocol.codes import ResultOutcome
from worker.protocol.result import QueueTimeout, Result, parse_result_envelope
from worker.protocol.status import interpret_status_answer

log = logging.getLogger(__name__)

_NOTE_LENGTH = 1000
# What a matched result did, for the result row; HOLD is written by _hold_success itself.
_DISPOSITIONS = {
    ResultAction.FINALISE: Disposition.APPLIED,
    ResultAction.REPEAT: Disposition.DUPLICATE_FINAL,
    ResultAction.CONFLICT: Disposition.CONFLICT,
    ResultAction.TO_UNKNOWN: Disposition.NOT_FINAL,
    ResultAction.KEEP: Disposition.NOT_FINAL,
    ResultAction.LOOK_UP: Disposition.NOT_FINAL,
}


class ResultIntake(Protocol):
    """What the callback receiver needs."""

    def record(self, raw: bytes, result: Result, *, confirm_success: bool = False) -> ResultApplied: ...

    def record_queue_timeout(self, raw: bytes, notice: QueueTimeout) -> QueueTimeoutApplied: ...

    def record_unparsable(self, raw: bytes, detail: str) -> int: ...


def store_result(
    work: Work, raw: bytes, result: Result, *, disposition: Disposition, payout: Payout | None, applied: bool, note: str
) -> None:
    work.session.run(
        "INSERT INTO results (received_at, raw, originator_conversation_id, conversation_id,"
        " transaction_id, result_code, outcome, disposition, payout_id, applied, note)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        work.session.time(work.now),
        bytes(raw),
        result.originator_conversation_id,
        result.conversation_id,
        result.transaction_id,
        result.code,
        str(result.outcome),
        str(Disposition(disposition)),
        None if payout is None else payout.payout_id,
        applied,
        note[:_NOTE_LENGTH],
    )


class ResultStore:
    """Result callbacks and queue timeouts as the receiver hands them over; every method is one transaction."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def record(self, raw: bytes, result: Result, *, confirm_success: bool = False) -> ResultApplied:
        """Keep the callback body whatever happens, and apply it to its payout if it decides one.

        The first final status wins. A later result that agrees with it (completed with the same or no
        receipt; failed after failed or rejected) is DUPLICATE_FINAL, one that contradicts it is CONFLICT:
        both are stored, neither changes the payout or emits an event. If applying fails, the body is
        still stored (applied false, with the error in ``note``) and a LedgerError is raised.

        A result for one of our status queries is applied to the payout it looked up (STATUS_ANSWER). With
        ``confirm_success`` a success is stored but held (HELD) until a status query confirms it; a
        duplicate answer (15/41) has the payout looked up at once.
        """
        try:
            with self._tx.write() as work:
                return _apply_result(work, raw, result, confirm_success=confirm_success)
        except Exception as exc:
            try:
                with self._tx.write() as work:
                    store_result(
                        work,
                        raw,
                        result,
                        disposition=Disposition.ERROR,
                        payout=None,
                        applied=False,
                        note=f"not applied: {type(exc).__name__}: {exc}",
                    )
            except B2CError as storing:
                raise LedgerError(f"result neither applied ({exc}) nor stored ({storing})") from exc
            if isinstance(exc, B2CError):
                raise
            raise LedgerError(f"result stored but not applied: {type(exc).__name__}: {exc}") from exc

    def release_quarantined(self, quarantine_id: int, *, note: str) -> ResultApplied:
        """Apply a held result to its payout without the match check, after an operator confirmed it with
        M-PESA; the entry becomes ``released``, in the same transaction. LedgerError if not held or it
        matched no payout."""
        with self._tx.write() as work:
            entry = quarantine.lock_held(work.session, quarantine_id)
            if entry.payout_id is None:
                raise LedgerError(f"q:{quarantine_id} matched no payout: there is nothing to apply it to")
            applied = _apply_result(work, entry.raw, parse_result_envelope(entry.raw), verify=False)
            if applied.payout is None or applied.payout.payout_id != entry.payout_id:
                raise LedgerError(f"q:{quarantine_id} no longer finds payout {entry.payout_id!r}; not released")
            if applied.outcome in (ApplyOutcome.CONFLICT, ApplyOutcome.DUPLICATE_FINAL):
                raise LedgerError(
                    f"q:{quarantine_id}: payout {entry.payout_id!r} is already {applied.payout.status}; "
                    "nothing to release (drop the entry instead)"
                )
            note = f"{note} (released: {applied.outcome})"
            quarantine.resolve(work.session, work.now, quarantine_id, QuarantineState.RELEASED, note)
            return applied

    def record_queue_timeout(self, raw: bytes, notice: QueueTimeout) -> QueueTimeoutApplied:
        """Keep a ``notifyQueueTimeout`` with its raw body, and have its payout looked up right away.

        M-PESA says it let a cached request expire unprocessed; that is believed only once a status query
        confirms it. An ``accepted`` payout becomes ``unknown`` (reason ``queue_timeout``, event
        ``payout.unknown``); ``unknown``/``sending`` ones keep their status; all three are looked up now. For a
        final payout, one of our status queries, or no known payout, the notice is only kept.
        """
        with self._tx.write() as work:
            session = work.session
            originator = notice.originator_conversation_id
            payout: Payout | None = None
            changed = False
            query = None
            if originator:
                query = session.one(
                    "SELECT payout_id FROM status_queries WHERE query_originator_conversation_id = ?", originator
                )
            if query is not None:
                payout = lock_payout(work, str(query["payout_id"]))
                note = "a status query of ours expired in M-PESA's queue; the next lookup follows on schedule"
                session.run(
                    "UPDATE status_queries SET verdict = COALESCE(verdict, ?), note = COALESCE(note, ?)"
                    " WHERE query_originator_conversation_id = ?",
                    "queue_timeout",
                    "expired in M-PESA's queue",
                    originator,
                )
            else:
                if originator:
                    payout = lock(work, "originator_conversation_id", originator)
                if payout is None and notice.conversation_id:
                    payout = lock(work, "conversation_id", notice.conversation_id)
                if payout is None:
                    note = "no payout has this OriginatorConversationID or ConversationID"
                elif payout.status is PayoutStatus.ACCEPTED:
                    message = "M-PESA let the cached request expire; looking it up before anything else"
                    payout = change(
                        work, payout, PayoutStatus.UNKNOWN, reason=UnknownReason.QUEUE_TIMEOUT.value, message=message
                    )
                    outbox.emit_status(work, payout, message=message)
                    lookup_soon(work, payout.payout_id, LookupTrigger.QUEUE_TIMEOUT)
                    changed = True
                    note = "accepted payout now unknown (queue_timeout); looked up now"
                elif payout.status in (PayoutStatus.UNKNOWN, PayoutStatus.SENDING):
                    lookup_soon(work, payout.payout_id, LookupTrigger.QUEUE_TIMEOUT)
                    note = f"payout {payout.status}; looked up now"
                else:
                    note = f"payout already {payout.status}; kept, nothing changed"
            session.run(
                "INSERT INTO queue_timeouts (received_at, raw, originator_conversation_id, conversation_id,"
                " payout_id, note) VALUES (?, ?, ?, ?, ?, ?)",
                session.time(work.now),
                bytes(raw),
                originator,
                notice.conversation_id,
                None if payout is None else payout.payout_id,
                note,
            )
            work.after_commit.append(metrics.QUEUE_TIMEOUTS.inc)
            return QueueTimeoutApplied(payout, changed, note)

    def record_unparsable(self, raw: bytes, detail: str) -> int:
        """Keep a callback body that cannot be read as a result, in ``results`` and in the quarantine.

        It may still be a genuine result in a shape we do not know: once it is stored M-PESA can be answered
        "success", and a human reads it (``mpesa-b2c dead show q:ID``). Nothing is applied. Returns the
        quarantine id.
        """
        note = f"not a readable result: {detail}"
        with self._tx.write() as work:
            work.session.run(
                "INSERT INTO results (received_at, raw, disposition, applied, note) VALUES (?, ?, ?, ?, ?)",
                work.session.time(work.now),
                bytes(raw),
                str(Disposition.UNPARSABLE),
                False,
                note[:_NOTE_LENGTH],
            )
            return quarantine.insert(
                work.session, work.now, raw, None, payout_id=None, reason=quarantine.REASON_UNPARSABLE, detail=note
            )


def _apply_result(
    work: Work, raw: bytes, result: Result, *, verify: bool = True, confirm_success: bool = False
) -> ResultApplied:
    answered = _apply_status_answer(work, raw, result, verify=verify)
    if answered is not None:
        return answered
    payout: Payout | None = None
    if result.originator_conversation_id:
        payout = lock(work, "originator_conversation_id", result.originator_conversation_id)
    if payout is None and result.conversation_id:
        payout = lock(work, "conversation_id", result.conversation_id)
    if payout is None:
        note = "no payout has this OriginatorConversationID or ConversationID"
        quarantine.insert(
            work.session, work.now, raw, result, payout_id=None, reason=REASON_UNKNOWN_PAYOUT, detail=note
        )
        store_result(work, raw, result, disposition=Disposition.UNMATCHED, payout=None, applied=False, note=note)
        return ResultApplied(ApplyOutcome.UNMATCHED, None, REASON_UNKNOWN_PAYOUT)
    if verify and (found := mismatches(payout, result)):
        # Not what we sent: kept with its body for review, never applied (see worker.payouts.matching).
        reason = found[0].reason
        note = "quarantined: " + "; ".join(mismatch.detail for mismatch in found)
        quarantine.insert(work.session, work.now, raw, result, payout_id=payout.payout_id, reason=reason, detail=note)
        store_result(work, raw, result, disposition=Disposition.QUARANTINED, payout=payout, applied=False, note=note)
        return ResultApplied(ApplyOutcome.QUARANTINED, payout, reason)
    decision = policy.decide_result(payout, result, confirm_success=confirm_success)
    applied = False
    if decision.action is ResultAction.HOLD:
        return _hold_success(work, raw, result, payout)
    if decision.action is ResultAction.FINALISE:
        assert decision.target is not None
        payout = _finalise(work, payout, decision.target, result)
        applied = True
    elif decision.action is ResultAction.TO_UNKNOWN:
        payout = change(
            work,
            payout,
            PayoutStatus.UNKNOWN,
            conversation_id=payout.conversation_id or result.conversation_id,
            reason=UnknownReason.UNCLASSIFIED_RESULT,
            message=result.description,
        )
        outbox.emit_status(
            work,
            payout,
            message=result.description,
            result=result_summary(code=result.code, description=result.description),
        )
        applied = True
    elif decision.action is ResultAction.LOOK_UP:
        # 15/41: the id reached M-PESA before, and that first request decides. 26 on an accepted payout:
        # no other result follows. Either way only a lookup can tell what happened.
        not_processed = result.outcome is ResultOutcome.NOT_PROCESSED
        trigger = LookupTrigger.NOT_PROCESSED if not_processed else LookupTrigger.DUPLICATE
        lookup_soon(work, payout.payout_id, trigger)
    note = _flag_success_after_failure(work, payout, decision)
    disposition = _DISPOSITIONS[decision.action]
    store_result(work, raw, result, disposition=disposition, payout=payout, applied=applied, note=note)
    return ResultApplied(ApplyOutcome(disposition), payout, None)


def _flag_success_after_failure(work: Work, payout: Payout, decision: policy.ResultDecision) -> str:
    """Paid, says M-PESA, after the payer was told it was not: paying again under a new id pays twice, so a
    human must settle it. The result row's note (flagged or not)."""
    if (
        decision.action is ResultAction.CONFLICT
        and decision.target is PayoutStatus.COMPLETED
        and payout.status in (PayoutStatus.FAILED, PayoutStatus.REJECTED)
    ):
        return flag_in(work, payout, FlagReason.SUCCESS_AFTER_FAILURE, decision.note)[2]
    return decision.note


def _finalise(work: Work, payout: Payout, target: PayoutStatus, result: Result) -> Payout:
    conversation_id = payout.conversation_id or result.conversation_id
    if payout.status is PayoutStatus.ACCEPTED:
        # Callback lag: from M-PESA's acceptance to its result (undefined for a payout we never saw accepted).
        row = work.session.one("SELECT accepted_at FROM payouts WHERE payout_id = ?", payout.payout_id)
        if row is not None and row["accepted_at"] is not None:
            lag = max((work.now - work.session.engine.from_db_time(row["accepted_at"])).total_seconds(), 0.0)
            work.after_commit.append(lambda: metrics.CALLBACK_LAG_SECONDS.observe(lag))
    if payout.status is not PayoutStatus.ACCEPTED:
        # The result overtook the synchronous answer: the payer still gets accepted before final.
        payout = change(
            work,
            payout,
            PayoutStatus.ACCEPTED,
            implied=payout.status is PayoutStatus.RECEIVED,
            conversation_id=conversation_id,
            accepted_at=work.session.time(work.now),
        )
        outbox.emit_status(work, payout)
    details = result.details
    summary = result_summary(
        code=result.code,
        description=result.description,
        receipt=details.receipt,
        amount=details.amount,
        recipient_name=details.public_name,
        completed_at=details.completed_at,
        working_balance=details.working_balance,
        utility_balance=details.utility_balance,
        charges_balance=details.charges_balance,
        registered=details.recipient_registered,
    )
    payout = change(
        work,
        payout,
        target,
        conversation_id=conversation_id,
        result_code=result.code,
        result_desc=result.description,
        receipt=details.receipt,
        reason=policy.failure_reason(target, result.code),
        final_details=canonical_json(summary).decode("utf-8"),
        finalised_at=work.session.time(work.now),
    )
    outbox.emit_status(work, payout)
    return payout


def _apply_status_answer(work: Work, raw: bytes, result: Result, *, verify: bool) -> ResultApplied | None:
    """If ``result`` answers one of our status queries, apply it and return what it did; else None.

    An answer that does not match its payout is quarantined with its body, like a direct result, and the
    payout flagged for review (``verify`` off: an operator's release, after confirming it with M-PESA).
    """
    originator = result.originator_conversation_id
    if not originator:
        return None
    query = work.session.one(
        "SELECT payout_id, answered_at FROM status_queries WHERE query_originator_conversation_id = ?",
        originator,
    )
    if query is None:
        return None
    payout = load_payout(work.session.engine, lock_row(work, str(query["payout_id"])))
    answer = interpret_status_answer(result)
    held = _held_success(work, payout)
    decision = policy.decide_answer(payout, answer.verdict, answer.original, answer.target, held, verify=verify)
    payout, applied, note = _apply_answer(work, payout, decision, answer.verdict, answer.original)
    note = f"status answer ({answer.detail}): {note}"
    if query["answered_at"] is None:
        work.session.run(
            "UPDATE status_queries SET answered_at = ?, answer_code = ?, answer_desc = ?, transaction_status = ?,"
            " verdict = ?, note = ? WHERE query_originator_conversation_id = ?",
            work.session.time(work.now),
            result.code,
            result.description[:_NOTE_LENGTH],
            answer.transaction_status,
            str(answer.verdict),
            note[:_NOTE_LENGTH],
            originator,
        )
    verdict = str(answer.verdict)
    work.after_commit.append(lambda: metrics.STATUS_QUERY_ANSWERS.labels(verdict=verdict).inc())
    if decision.action is AnswerAction.MISMATCH:
        reason = decision.reason or REASON_ORIGINATOR
        quarantine.insert(work.session, work.now, raw, result, payout_id=payout.payout_id, reason=reason, detail=note)
        store_result(work, raw, result, disposition=Disposition.QUARANTINED, payout=payout, applied=False, note=note)
        return ResultApplied(ApplyOutcome.QUARANTINED, payout, reason)
    store_result(work, raw, result, disposition=Disposition.STATUS_QUERY, payout=payout, applied=applied, note=note)
    log.info("payout %s: %s", payout.payout_id, note)
    return ResultApplied(ApplyOutcome.STATUS_ANSWER, payout)


def _apply_answer(
    work: Work, payout: Payout, decision: policy.AnswerDecision, verdict: object, original: Result | None
) -> tuple[Payout, bool, str]:
    """Write one status-answer decision to the locked payout: (payout after, whether it changed, why)."""
    action = decision.action
    if action is AnswerAction.MISMATCH:
        log.error(
            "payout %s: a status answer does not match it (%s); quarantined, not applied",
            payout.payout_id,
            decision.note,
        )
        return flag_in(work, payout, FlagReason.ANSWER_MISMATCH, decision.note)
    if action is AnswerAction.CONTRADICTED:
        return flag_in(work, payout, FlagReason.CONFIRMATION_CONTRADICTED, decision.note)
    if action is AnswerAction.CONTRADICTS_FINAL:
        log.error(
            "payout %s is %s but a status answer says %s (%s); kept, not applied",
            payout.payout_id,
            payout.status,
            verdict,
            original.code if original is not None else "?",
        )
        work.after_commit.append(metrics.RESULTS_CONFLICTING.inc)
        return payout, False, decision.note
    if action is AnswerAction.COMPLETE:
        use = decision.use
        assert use is not None
        payout = _finalise(work, payout, PayoutStatus.COMPLETED, use)
        paid = float(use.details.amount if use.details.amount is not None else payout.command.amount)
        work.after_commit.append(lambda: metrics.KES_PAID.inc(paid))
        return payout, True, decision.note
    if action is AnswerAction.FAIL:
        assert decision.use is not None
        return _finalise(work, payout, PayoutStatus.FAILED, decision.use), True, decision.note
    if action is AnswerAction.EXPIRED_IN_CACHE:
        message = policy.EXPIRED_IN_CACHE_MESSAGE
        payout = change(work, payout, PayoutStatus.UNKNOWN, reason=UnknownReason.QUEUE_TIMEOUT.value, message=message)
        outbox.emit_status(work, payout, message=message)
        set_resend_due(work, payout.payout_id)
        return payout, True, decision.note
    if action is AnswerAction.RESEND:
        set_resend_due(work, payout.payout_id)
    return payout, False, decision.note


def _hold_success(work: Work, raw: bytes, result: Result, payout: Payout) -> ResultApplied:
    """B2C_CONFIRM_SUCCESS: keep a success result unapplied until a status query confirms it."""
    if payout.status is not PayoutStatus.ACCEPTED:
        payout = change(
            work,
            payout,
            PayoutStatus.ACCEPTED,
            implied=payout.status is PayoutStatus.RECEIVED,
            conversation_id=payout.conversation_id or result.conversation_id,
            accepted_at=work.session.time(work.now),
        )
        outbox.emit_status(work, payout)
    lookup_soon(work, payout.payout_id, LookupTrigger.CONFIRM_SUCCESS)
    note = "success held until a status query confirms it (B2C_CONFIRM_SUCCESS)"
    store_result(work, raw, result, disposition=Disposition.HELD, payout=payout, applied=False, note=note)
    return ResultApplied(ApplyOutcome.HELD, payout)


def _held_success(work: Work, payout: Payout) -> Result | None:
    row = work.session.one(
        "SELECT raw FROM results WHERE payout_id = ? AND disposition = ? ORDER BY id DESC LIMIT 1",
        payout.payout_id,
        str(Disposition.HELD),
    )
    if row is None:
        return None
    try:
        return parse_result_envelope(bytes(row["raw"]))
    except ProtocolError:
        return None
