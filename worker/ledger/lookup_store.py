"""The ledger's SQL for looking payouts up, mixed into :class:`~worker.ledger.store.SqlLedger`.

Rules kept here (the README's "Resolving unknowns" section says the same for operators):

- A lookup is recorded before it is made: a status query's row (with its own, new OriginatorConversationID,
  ``<payout id>_Q<n>``) and the attempt count are committed before the query is sent; a resend first moves
  the payout to ``sending`` (send_attempts + 1), exactly like a first send.
- A status answer decides only what it clearly says: the original payment completed (with its receipt and
  amount, which must agree with the payout) or failed with a final failure code. "Not found" (49) for an
  ``unknown`` payout, or for one M-PESA had only *cached* (100000000), means the request never reached the
  core: the payout gets a resend with the same OriginatorConversationID (M-PESA refuses a second payment
  under it, result 15, so this cannot pay twice). "Not found" for a payout M-PESA accepted (0) changes
  nothing: it may not be visible yet; it is looked up again.
- Nothing here ever turns a payout ``failed`` because time passed: a payout whose lookups run out is flagged
  for review (``flagged_at``) and keeps its status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from worker import metrics
from worker.errors import ProtocolError, UnknownPayout
from worker.ledger.engine import Database, Row
from worker.ledger.lookups import (
    FlagReason,
    LookupAction,
    LookupState,
    LookupTask,
    LookupTrigger,
    QueueTimeoutApplied,
    StatusQuery,
    status_query_id,
)
from worker.ledger.model import ApplyOutcome, ResultApplied
from worker.payouts.models import FINAL_STATUSES, Payout, PayoutStatus, UnknownReason
from worker.protocol.codes import normalise_code
from worker.protocol.result import QueueTimeout, Result, parse_result_envelope
from worker.protocol.status import StatusVerdict, interpret_status_answer

if TYPE_CHECKING:
    from worker.ledger.store import _Work

log = logging.getLogger(__name__)

CACHED_RESPONSE_CODE = "100000000"
HELD = "held"
HELD_BACK = "held_back"
STATUS_ANSWER = "status_query"
_NOTE_LENGTH = 1000
_UNKNOWN = str(PayoutStatus.UNKNOWN)
_ACCEPTED = str(PayoutStatus.ACCEPTED)
_SENDING = str(PayoutStatus.SENDING)
_FINAL = tuple(sorted(str(status) for status in FINAL_STATUSES))
_DUE_SQL = (
    "SELECT * FROM payouts WHERE flagged_at IS NULL AND (next_lookup_at IS NULL OR next_lookup_at <= ?) AND ("
    " (status IN (?, ?) AND next_lookup_at IS NOT NULL)"
    " OR (status = ? AND updated_at <= ?)"
    " OR (status = ? AND accepted_at <= ?)"
    " OR (status = ? AND lookup_attempts > 0 AND updated_at <= ?)"
    ") ORDER BY COALESCE(next_lookup_at, updated_at), payout_id LIMIT ?"
)


def _cached(code: str | None) -> bool:
    return code is not None and normalise_code(code) == CACHED_RESPONSE_CODE


class LookupStore:
    """Lookup bookkeeping, status queries and queue timeouts; every public method is one transaction."""

    if TYPE_CHECKING:
        _db: Database[Any]
        _clock: Callable[[], datetime]

        def _write(self) -> AbstractContextManager[_Work[Any]]: ...

        def _finalise(self, work: _Work[Any], payout: Payout, target: PayoutStatus, result: Result) -> Payout: ...

    # ------------------------------------------------------------------------------ the reconciler

    def due_for_lookup(
        self,
        *,
        unknown_after: float,
        result_timeout: float,
        stuck_after: float,
        lease_seconds: float,
        limit: int = 50,
    ) -> list[LookupTask]:
        """Claim the payouts that need a lookup now, oldest first, for ``lease_seconds``.

        Due: any payout with a lookup scheduled for now or earlier (after an earlier lookup, a queue timeout,
        a duplicate answer, a held success); ``unknown`` for ``unknown_after`` seconds; ``accepted`` for
        ``result_timeout`` seconds without a result; ``sending`` for ``stuck_after`` seconds after a resend
        of ours (a reconciler that died mid-resend; no queue message will ever finish it). Flagged payouts
        are never due. Claiming moves ``next_lookup_at`` past the lease, so concurrent reconcilers (several
        workers on one PostgreSQL ledger; ``SKIP LOCKED``) do not pick the same payout.
        """
        with self._write() as work:
            session, now = work.session, work.now

            def before(seconds: float) -> object:
                return session.time(now - timedelta(seconds=seconds))

            rows = session.all(
                _DUE_SQL + session.engine.skip_locked,
                session.time(now),
                _UNKNOWN,
                _ACCEPTED,
                _UNKNOWN,
                before(unknown_after),
                _ACCEPTED,
                before(result_timeout),
                _SENDING,
                before(stuck_after),
                limit,
            )
            tasks = []
            for row in rows:
                session.run(
                    "UPDATE payouts SET next_lookup_at = ? WHERE payout_id = ?",
                    session.time(now + timedelta(seconds=lease_seconds)),
                    row["payout_id"],
                )
                tasks.append(self._task(work, row))
            return tasks

    def record_status_query(self, payout_id: str, *, trigger: str, retry_after: float) -> StatusQuery | None:
        """Allocate and store the payout's next status query before it is sent; count the attempt and set
        the next lookup ``retry_after`` seconds on. None (nothing stored) if the payout no longer needs one:
        final, ``received``, or flagged."""
        with self._write() as work:
            row = self._lock_row(work, payout_id)
            if row["status"] not in (_UNKNOWN, _ACCEPTED, _SENDING) or row["flagged_at"] is not None:
                return None
            last = work.session.one("SELECT MAX(attempt) AS n FROM status_queries WHERE payout_id = ?", payout_id)
            number = 1 + (int(last["n"]) if last and last["n"] is not None else 0)
            query = StatusQuery(
                query_originator_conversation_id=status_query_id(row["originator_conversation_id"], number),
                payout_id=payout_id,
                attempt=number,
                trigger=str(trigger),
                sent_at=work.now,
            )
            work.session.run(
                "INSERT INTO status_queries (query_originator_conversation_id, payout_id, attempt, reason, sent_at)"
                " VALUES (?, ?, ?, ?, ?)",
                query.query_originator_conversation_id,
                payout_id,
                number,
                query.trigger,
                work.session.time(work.now),
            )
            self._count_attempt(work, payout_id, retry_after, resend_due=bool(row["resend_due"]))
            return query

    def note_status_query_response(
        self, query_originator_conversation_id: str, *, outcome: str, code: str | None, description: str | None
    ) -> None:
        """Keep the gateway's synchronous answer to a status query (accepted, rejected, unknown, not_sent, or
        ``held_back``: flow control kept it back, nothing was sent, so the attempt is given back to the payout)."""
        with self._write() as work:
            work.session.run(
                "UPDATE status_queries SET response_outcome = ?, response_code = ?, response_desc = ?"
                " WHERE query_originator_conversation_id = ?",
                outcome,
                code,
                None if description is None else description[:_NOTE_LENGTH],
                query_originator_conversation_id,
            )
            if outcome == HELD_BACK:
                row = work.session.one(
                    "SELECT payout_id FROM status_queries WHERE query_originator_conversation_id = ?",
                    query_originator_conversation_id,
                )
                if row is not None:
                    self._refund_attempt(work, str(row["payout_id"]))

    def claim_resend(self, payout_id: str, *, expected_attempts: int, retry_after: float) -> Payout | None:
        """For a payout M-PESA has no record of (status answer 49): move it to ``sending`` (send_attempts +
        1) and count the lookup attempt, committed before the resend with the same OriginatorConversationID.
        None unless a resend is due, the payout is ``unknown`` (or ``sending`` after a resend of ours that
        died), not flagged, and its send_attempts still equal ``expected_attempts``."""
        with self._write() as work:
            row = self._lock_row(work, payout_id)
            payout = work.load(row)
            sendable = payout.status is PayoutStatus.UNKNOWN or (
                payout.status is PayoutStatus.SENDING and int(row["lookup_attempts"]) > 0
            )
            if (
                not sendable
                or not row["resend_due"]
                or row["flagged_at"] is not None
                or payout.send_attempts != expected_attempts
            ):
                return None
            payout = work.change(
                payout, PayoutStatus.SENDING, send_attempts=payout.send_attempts + 1, reason=payout.reason
            )
            self._count_attempt(work, payout_id, retry_after, resend_due=False)
            return payout

    def resend_not_taken(
        self,
        payout_id: str,
        *,
        code: str | None,
        description: str | None,
        not_processed: bool = False,
        held: bool = False,
    ) -> Payout:
        """A resend of ours was not accepted (not processed, refused, or no answer): ``sending`` back to
        ``unknown`` with its earlier reason; a new event only if the payer has not had ``payout.unknown`` yet
        (the first send was a worker's, interrupted).
        Refused or not, the first send's fate is still unknown, so nothing here is ever final.

        ``not_processed`` (M-PESA certainly did not process it: busy, throttled, not sent): the resend stays
        due. ``held`` (flow control kept it back, nothing sent): the attempt is also given back."""
        with self._write() as work:
            payout = work.lock_payout(payout_id)
            if payout.status is not PayoutStatus.SENDING:
                return payout
            announced = payout.reason in set(UnknownReason)
            reason = payout.reason if announced else UnknownReason.NO_RESPONSE.value
            payout = work.change(
                payout, PayoutStatus.UNKNOWN, reason=reason, response_code=code, response_desc=description
            )
            if not announced:  # a worker's interrupted first send: the payer has not heard "unknown" yet
                work.emit_status(payout, message="the send was interrupted and the resend was not taken")
            if not_processed or held:
                self._set_resend_due(work, payout_id)
            if held:
                self._refund_attempt(work, payout_id)
            return payout

    def flag_for_review(self, payout_id: str, *, reason: str) -> bool:
        """Stop looking the payout up and flag it for a human; its status is not touched. True if newly
        flagged (False: already flagged). UnknownPayout if there is no such payout."""
        with self._write() as work:
            self._lock_row(work, payout_id)
            changed = work.session.run(
                "UPDATE payouts SET flagged_at = ?, flag_reason = ? WHERE payout_id = ? AND flagged_at IS NULL",
                work.session.time(work.now),
                str(reason),
                payout_id,
            )
            return changed > 0

    def rearm_lookup(self, payout_id: str) -> LookupState:
        """An operator's fresh start: unflag, reset the attempt count and time budget, look up now. A resend
        due from an earlier "no record" answer is cleared: that answer may be old, so a query comes first."""
        with self._write() as work:
            self._lock_row(work, payout_id)
            work.session.run(
                "UPDATE payouts SET flagged_at = NULL, flag_reason = NULL, lookup_attempts = 0, resend_due = ?,"
                " lookup_started_at = NULL, next_lookup_at = ?, lookup_trigger = ? WHERE payout_id = ?",
                False,
                work.session.time(work.now),
                str(LookupTrigger.MANUAL),
                payout_id,
            )
            return self._state(work.session.engine, self._lock_row(work, payout_id))

    def count_flagged(self) -> int:
        """Payouts flagged for review that are still not final (what the alert gauge shows)."""
        with self._db.transaction(write=False) as session:
            row = session.one(
                "SELECT COUNT(*) AS n FROM payouts WHERE flagged_at IS NOT NULL AND status NOT IN (?, ?, ?)",
                *_FINAL,
            )
        return 0 if row is None else int(row["n"])

    def list_flagged(self, limit: int = 100) -> list[LookupState]:
        """Flagged payouts that are still not final, longest flagged first."""
        with self._db.transaction(write=False) as session:
            rows = session.all(
                "SELECT * FROM payouts WHERE flagged_at IS NOT NULL"
                " AND status NOT IN (?, ?, ?) ORDER BY flagged_at, payout_id LIMIT ?",
                *_FINAL,
                limit,
            )
            return [self._state(session.engine, row) for row in rows]

    def lookup_state(self, payout_id: str) -> LookupState | None:
        with self._db.transaction(write=False) as session:
            row = session.one("SELECT * FROM payouts WHERE payout_id = ?", payout_id)
            return None if row is None else self._state(session.engine, row)

    def find_status_query(self, query_originator_conversation_id: str) -> StatusQuery | None:
        with self._db.transaction(write=False) as session:
            row = session.one(
                "SELECT * FROM status_queries WHERE query_originator_conversation_id = ?",
                query_originator_conversation_id,
            )
            return None if row is None else _status_query(session.engine, row)

    def status_queries(self, payout_id: str) -> list[StatusQuery]:
        """Every status query made for the payout, in order."""
        with self._db.transaction(write=False) as session:
            rows = session.all("SELECT * FROM status_queries WHERE payout_id = ? ORDER BY attempt", payout_id)
            return [_status_query(session.engine, row) for row in rows]

    # ----------------------------------------------------------------------------- queue timeouts

    def record_queue_timeout(self, raw: bytes, notice: QueueTimeout) -> QueueTimeoutApplied:
        """Keep a ``notifyQueueTimeout`` with its raw body, and have its payout looked up right away.

        M-PESA says it let a cached request expire unprocessed; that is believed only once a status query
        confirms it. An ``accepted`` payout becomes ``unknown`` (reason ``queue_timeout``, event
        ``payout.unknown``); ``unknown``/``sending`` ones keep their status; all three are looked up now. For a
        final payout, one of our status queries, or no known payout, the notice is only kept.
        """
        with self._write() as work:
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
                payout = work.lock_payout(str(query["payout_id"]))
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
                    payout = work.lock("originator_conversation_id", originator)
                if payout is None and notice.conversation_id:
                    payout = work.lock("conversation_id", notice.conversation_id)
                if payout is None:
                    note = "no payout has this OriginatorConversationID or ConversationID"
                elif payout.status is PayoutStatus.ACCEPTED:
                    message = "M-PESA let the cached request expire; looking it up before anything else"
                    payout = work.change(
                        payout, PayoutStatus.UNKNOWN, reason=UnknownReason.QUEUE_TIMEOUT.value, message=message
                    )
                    work.emit_status(payout, message=message)
                    self._lookup_soon(work, payout.payout_id, LookupTrigger.QUEUE_TIMEOUT)
                    changed = True
                    note = "accepted payout now unknown (queue_timeout); looked up now"
                elif payout.status in (PayoutStatus.UNKNOWN, PayoutStatus.SENDING):
                    self._lookup_soon(work, payout.payout_id, LookupTrigger.QUEUE_TIMEOUT)
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

    # ------------------------------------------------- hooks inside SqlLedger.record_result's transaction

    def _apply_status_answer(self, work: _Work[Any], raw: bytes, result: Result) -> ResultApplied | None:
        """If ``result`` answers one of our status queries, apply it and return what it did; else None."""
        originator = result.originator_conversation_id
        if not originator:
            return None
        query = work.session.one(
            "SELECT payout_id, answered_at FROM status_queries WHERE query_originator_conversation_id = ?",
            originator,
        )
        if query is None:
            return None
        row = self._lock_row(work, str(query["payout_id"]))
        payout = work.load(row)
        answer = interpret_status_answer(result)
        payout, applied, note = self._decide(work, payout, answer.verdict, answer.original, answer.target)
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
        work.store_result(raw, result, disposition=STATUS_ANSWER, payout=payout, applied=applied, note=note)
        verdict = str(answer.verdict)
        work.after_commit.append(lambda: metrics.STATUS_QUERY_ANSWERS.labels(verdict=verdict).inc())
        log.info("payout %s: %s", payout.payout_id, note)
        return ResultApplied(ApplyOutcome.STATUS_ANSWER, payout)

    def _decide(  # noqa: C901 - money path: one branch per verdict, guards first, in one reviewed order
        self,
        work: _Work[Any],
        payout: Payout,
        verdict: StatusVerdict,
        original: Result | None,
        target: str | None,
    ) -> tuple[Payout, bool, str]:
        """Apply one status verdict to the locked payout: (payout after, whether it changed, why)."""
        if target and target != payout.originator_conversation_id:
            return self._mismatch(work, payout, f"describes OriginatorConversationID {target!r}, not the payout's")
        if verdict in (StatusVerdict.COMPLETED, StatusVerdict.FAILED):
            assert original is not None
            amount = original.details.amount
            if verdict is StatusVerdict.COMPLETED and amount is not None and amount != payout.command.amount:
                return self._mismatch(work, payout, f"amount {amount}, payout is for {payout.command.amount}")
        if payout.is_final:
            return payout, False, self._final_note(work, payout, verdict, original)
        held = self._held_success(work, payout)
        if verdict is StatusVerdict.COMPLETED:
            assert original is not None
            use = original
            if held is not None:
                theirs, ours = held.details.receipt, original.details.receipt
                if theirs and ours and theirs != ours:
                    return self._flag_in(
                        work, payout, FlagReason.CONFIRMATION_CONTRADICTED, f"held receipt {theirs}, M-PESA has {ours}"
                    )
                use = held
            payout = self._finalise(work, payout, PayoutStatus.COMPLETED, use)
            paid = float(use.details.amount if use.details.amount is not None else payout.command.amount)
            work.after_commit.append(lambda: metrics.KES_PAID.inc(paid))
            return payout, True, "confirmed held success: completed" if held is not None else "payout completed"
        if verdict is StatusVerdict.FAILED:
            assert original is not None
            if held is not None:
                return self._flag_in(
                    work, payout, FlagReason.CONFIRMATION_CONTRADICTED, f"success held, M-PESA says {original.code}"
                )
            payout = self._finalise(work, payout, PayoutStatus.FAILED, original)
            return payout, True, f"payout failed ({original.code})"
        if verdict is StatusVerdict.NOT_FOUND:
            return self._not_found(work, payout, held is not None)
        return payout, False, f"payout stays {payout.status}; looked up again on schedule"

    def _not_found(self, work: _Work[Any], payout: Payout, held: bool) -> tuple[Payout, bool, str]:
        if held:
            return payout, False, "success held but M-PESA finds no such payment (yet); looked up again"
        if payout.status is PayoutStatus.ACCEPTED and _cached(payout.response_code):
            message = "M-PESA cached the request and has no record of executing it; resending with the same id"
            payout = work.change(
                payout, PayoutStatus.UNKNOWN, reason=UnknownReason.QUEUE_TIMEOUT.value, message=message
            )
            work.emit_status(payout, message=message)
            self._set_resend_due(work, payout.payout_id)
            return payout, True, "cached and never executed: now unknown, resend with the same id due"
        if payout.status in (PayoutStatus.UNKNOWN, PayoutStatus.SENDING):
            self._set_resend_due(work, payout.payout_id)
            return payout, False, "never reached M-PESA: resend with the same OriginatorConversationID due"
        return payout, False, f"payout {payout.status} but not found (not visible yet?); looked up again"

    def _hold_success(self, work: _Work[Any], raw: bytes, result: Result, payout: Payout) -> ResultApplied:
        """B2C_CONFIRM_SUCCESS: keep a success result unapplied until a status query confirms it."""
        if payout.status is not PayoutStatus.ACCEPTED:
            payout = work.change(
                payout,
                PayoutStatus.ACCEPTED,
                implied=payout.status is PayoutStatus.RECEIVED,
                conversation_id=payout.conversation_id or result.conversation_id,
                accepted_at=work.session.time(work.now),
            )
            work.emit_status(payout)
        self._lookup_soon(work, payout.payout_id, LookupTrigger.CONFIRM_SUCCESS)
        note = "success held until a status query confirms it (B2C_CONFIRM_SUCCESS)"
        work.store_result(raw, result, disposition=HELD, payout=payout, applied=False, note=note)
        return ResultApplied(ApplyOutcome.HELD, payout)

    def _lookup_soon(self, work: _Work[Any], payout_id: str, trigger: LookupTrigger) -> None:
        """Have the payout looked up on the reconciler's next pass (it stays flagged if it is)."""
        work.session.run(
            "UPDATE payouts SET next_lookup_at = ?, lookup_trigger = ? WHERE payout_id = ?",
            work.session.time(work.now),
            str(trigger),
            payout_id,
        )

    # ------------------------------------------------------------------------------------ helpers

    def _held_success(self, work: _Work[Any], payout: Payout) -> Result | None:
        row = work.session.one(
            "SELECT raw FROM results WHERE payout_id = ? AND disposition = ? ORDER BY id DESC LIMIT 1",
            payout.payout_id,
            HELD,
        )
        if row is None:
            return None
        try:
            return parse_result_envelope(bytes(row["raw"]))
        except ProtocolError:
            return None

    def _mismatch(self, work: _Work[Any], payout: Payout, detail: str) -> tuple[Payout, bool, str]:
        work.after_commit.append(metrics.RESULTS_CONFLICTING.inc)
        log.error("payout %s: a status answer does not match it (%s); not applied", payout.payout_id, detail)
        return self._flag_in(work, payout, FlagReason.ANSWER_MISMATCH, detail)

    def _flag_in(self, work: _Work[Any], payout: Payout, reason: FlagReason, detail: str) -> tuple[Payout, bool, str]:
        work.session.run(
            "UPDATE payouts SET flagged_at = COALESCE(flagged_at, ?), flag_reason = COALESCE(flag_reason, ?)"
            " WHERE payout_id = ?",
            work.session.time(work.now),
            str(reason),
            payout.payout_id,
        )
        log.warning("payout %s: flagged for review (%s: %s)", payout.payout_id, reason, detail)
        return payout, False, f"not applied, flagged for review ({reason}: {detail})"

    def _final_note(self, work: _Work[Any], payout: Payout, verdict: StatusVerdict, original: Result | None) -> str:
        says_paid = verdict is StatusVerdict.COMPLETED
        if verdict in (StatusVerdict.COMPLETED, StatusVerdict.FAILED) and says_paid != (
            payout.status is PayoutStatus.COMPLETED
        ):
            code = original.code if original is not None else "?"
            log.error(
                "payout %s is %s but a status answer says %s (%s); kept, not applied",
                payout.payout_id,
                payout.status,
                verdict,
                code,
            )
            work.after_commit.append(metrics.RESULTS_CONFLICTING.inc)
            return f"contradicts the final status {payout.status}; not applied"
        return f"payout already {payout.status}"

    def _refund_attempt(self, work: _Work[Any], payout_id: str) -> None:
        """A lookup that was never sent does not count against the payout's budget."""
        work.session.run(
            "UPDATE payouts SET lookup_attempts = CASE WHEN lookup_attempts > 0 THEN lookup_attempts - 1 ELSE 0 END,"
            " lookup_started_at = CASE WHEN lookup_attempts <= 1 THEN NULL ELSE lookup_started_at END"
            " WHERE payout_id = ?",
            payout_id,
        )

    def _set_resend_due(self, work: _Work[Any], payout_id: str) -> None:
        work.session.run("UPDATE payouts SET resend_due = ? WHERE payout_id = ?", True, payout_id)

    def _count_attempt(self, work: _Work[Any], payout_id: str, retry_after: float, *, resend_due: bool) -> None:
        work.session.run(
            "UPDATE payouts SET lookup_attempts = lookup_attempts + 1,"
            " lookup_started_at = COALESCE(lookup_started_at, ?), next_lookup_at = ?, lookup_trigger = NULL,"
            " resend_due = ? WHERE payout_id = ?",
            work.session.time(work.now),
            work.session.time(work.now + timedelta(seconds=retry_after)),
            resend_due,
            payout_id,
        )

    @staticmethod
    def _lock_row(work: _Work[Any], payout_id: str) -> Row:
        row = work.session.one(
            "SELECT * FROM payouts WHERE payout_id = ?" + work.session.engine.for_update,  # noqa: S608 - fixed text
            payout_id,
        )
        if row is None:
            raise UnknownPayout(payout_id)
        return row

    @staticmethod
    def _task(work: _Work[Any], row: Row) -> LookupTask:
        payout = work.load(row)
        engine = work.session.engine
        if row["lookup_trigger"]:
            trigger = LookupTrigger(row["lookup_trigger"])
        elif payout.status is PayoutStatus.ACCEPTED:
            trigger = LookupTrigger.MISSING_RESULT
        else:
            trigger = LookupTrigger.UNKNOWN
        resend = bool(row["resend_due"]) and payout.status in (PayoutStatus.UNKNOWN, PayoutStatus.SENDING)
        started = row["lookup_started_at"]
        return LookupTask(
            payout=payout,
            attempts=int(row["lookup_attempts"]),
            started_at=None if started is None else engine.from_db_time(started),
            trigger=trigger,
            action=LookupAction.RESEND if resend else LookupAction.QUERY,
        )

    @staticmethod
    def _state(engine: Any, row: Row) -> LookupState:
        def moment(value: object) -> datetime | None:
            return None if value is None else engine.from_db_time(value)

        return LookupState(
            payout_id=row["payout_id"],
            status=row["status"],
            lookup_attempts=int(row["lookup_attempts"]),
            lookup_started_at=moment(row["lookup_started_at"]),
            next_lookup_at=moment(row["next_lookup_at"]),
            lookup_trigger=row["lookup_trigger"],
            resend_due=bool(row["resend_due"]),
            flagged_at=moment(row["flagged_at"]),
            flag_reason=row["flag_reason"],
        )


def _status_query(engine: Any, row: Row) -> StatusQuery:
    answered = row["answered_at"]
    return StatusQuery(
        query_originator_conversation_id=row["query_originator_conversation_id"],
        payout_id=row["payout_id"],
        attempt=int(row["attempt"]),
        trigger=row["reason"],
        sent_at=engine.from_db_time(row["sent_at"]),
        response_outcome=row["response_outcome"],
        response_code=row["response_code"],
        response_desc=row["response_desc"],
        answered_at=None if answered is None else engine.from_db_time(answered),
        answer_code=row["answer_code"],
        answer_desc=row["answer_desc"],
        transaction_status=row["transaction_status"],
        verdict=row["verdict"],
        note=row["note"],
    )
