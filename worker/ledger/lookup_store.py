"""The ledger's SQL for looking payouts up: the lookup bookkeeping on each payout row and its status queries.

Rules kept here (the README's "When things go wrong" says the same for operators):

- A lookup is recorded before it is made: a status query's row (with its own, new OriginatorConversationID,
  ``<payout id>_Q<n>``) and the attempt count are committed before the query is sent; a resend first moves
  the payout to ``sending`` (send_attempts + 1), exactly like a first send.
- A status answer decides only what it clearly says (decided in :mod:`worker.payouts.policy`, written by
  :mod:`worker.ledger.result_store`): the original payment completed (with its receipt and
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
from datetime import datetime, timedelta
from typing import Any, Protocol

from worker.errors import RearmRefused
from worker.ledger import outbox
from worker.ledger.engine import Row
from worker.ledger.lookups import (
    FlagReason,
    LookupAction,
    LookupState,
    LookupTask,
    LookupTrigger,
    QueryResponse,
    StatusQuery,
    status_query_id,
)
from worker.ledger.payout_store import change, fenced, load, lock_payout, lock_row
from worker.ledger.transaction import Transactions, Work
from worker.payouts.models import FINAL_STATUSES, Payout, PayoutStatus, UnknownReason
from worker.payouts.policy import SendAnswer

log = logging.getLogger(__name__)

_NOTE_LENGTH = 1000
_UNKNOWN = str(PayoutStatus.UNKNOWN)
_ACCEPTED = str(PayoutStatus.ACCEPTED)
_SENDING = str(PayoutStatus.SENDING)
_FINAL = tuple(sorted(str(status) for status in FINAL_STATUSES))
_REARM_REFUSED = {
    str(PayoutStatus.RECEIVED): "not sent yet; the worker sends it from the command queue, nothing to look up",
    _SENDING: "a send of it may still be running or was cut off; the lookup runner takes it up when the send"
    " lease has passed, unless it is flagged: then check it with M-PESA by its OriginatorConversationID",
}
_DUE_SQL = (
    "SELECT * FROM payouts WHERE flagged_at IS NULL AND (next_lookup_at IS NULL OR next_lookup_at <= ?) AND ("
    " (status IN (?, ?) AND next_lookup_at IS NOT NULL)"
    " OR (status = ? AND updated_at <= ?)"
    " OR (status = ? AND accepted_at <= ?)"
    " OR (status = ? AND lookup_attempts > 0 AND updated_at <= ?)"
    " OR (status = ? AND lookup_attempts = 0 AND updated_at <= ?)"
    ") ORDER BY COALESCE(next_lookup_at, updated_at), payout_id LIMIT ?"
)


class Resends(Protocol):
    """What the command handler needs when the resend after an interrupted send was not taken."""

    def resend_not_taken(
        self,
        payout_id: str,
        *,
        attempt: int,
        code: str | None,
        description: str | None,
        not_processed: bool = False,
        held: bool = False,
    ) -> Payout: ...


class LookupQueue(Resends, Protocol):
    """What the lookup runner needs: claim due payouts, record each lookup before it is made, flag."""

    def due_for_lookup(
        self, *, unknown_after: float, result_timeout: float, stuck_after: float, lease_seconds: float, limit: int = 50
    ) -> list[LookupTask]: ...

    def count_flagged(self) -> int: ...

    def flag_for_review(self, payout_id: str, *, reason: FlagReason) -> bool: ...

    def record_status_query(
        self, payout_id: str, *, trigger: LookupTrigger, retry_after: float
    ) -> StatusQuery | None: ...

    def note_status_query_response(
        self,
        query_originator_conversation_id: str,
        *,
        outcome: QueryResponse,
        code: str | None,
        description: str | None,
    ) -> None: ...

    def claim_resend(self, payout_id: str, *, expected_attempts: int, retry_after: float) -> Payout | None: ...


class LookupStore:
    """Lookup bookkeeping on the payout rows, and the ``status_queries`` table; every public method is one
    transaction."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    # ---------------------------------------------------------------------------- the lookup runner

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
        of ours (a lookup runner that died mid-resend; no queue message will ever finish it); ``sending`` for
        twice ``stuck_after`` after a worker's send (it died, or its ledger failed after the send, and no
        queue message may ever come back for it). The second lease is the consumer's: a redelivery resumes
        its own orphan first, and the lookup runner's first step is a status query, not a resend, so a send
        is never doubled and never made under a new OriginatorConversationID. Every threshold is on the
        ledger's clock, the one that stamped ``updated_at``. Flagged payouts are never due. Claiming moves
        ``next_lookup_at`` past the lease, so concurrent lookup runners (several workers on one PostgreSQL
        ledger; ``SKIP LOCKED``) do not pick the same payout.
        """
        with self._tx.write() as work:
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
                _SENDING,
                before(2 * stuck_after),
                limit,
            )
            tasks = []
            for row in rows:
                session.run(
                    "UPDATE payouts SET next_lookup_at = ? WHERE payout_id = ?",
                    session.time(now + timedelta(seconds=lease_seconds)),
                    row["payout_id"],
                )
                tasks.append(_task(work, row))
            return tasks

    def record_status_query(self, payout_id: str, *, trigger: LookupTrigger, retry_after: float) -> StatusQuery | None:
        """Allocate and store the payout's next status query before it is sent; count the attempt and set
        the next lookup ``retry_after`` seconds on. None (nothing stored) if the payout no longer needs one:
        final, ``received``, or flagged."""
        with self._tx.write() as work:
            row = lock_row(work, payout_id)
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
            _count_attempt(work, payout_id, retry_after, resend_due=bool(row["resend_due"]))
            return query

    def note_status_query_response(
        self,
        query_originator_conversation_id: str,
        *,
        outcome: QueryResponse,
        code: str | None,
        description: str | None,
    ) -> None:
        """Keep the gateway's synchronous answer to a status query (accepted, rejected, unknown, not_sent, or
        ``held_back``: flow control kept it back, nothing was sent, so the attempt is given back to the payout)."""
        with self._tx.write() as work:
            work.session.run(
                "UPDATE status_queries SET response_outcome = ?, response_code = ?, response_desc = ?"
                " WHERE query_originator_conversation_id = ?",
                str(outcome),
                code,
                None if description is None else description[:_NOTE_LENGTH],
                query_originator_conversation_id,
            )
            if outcome == QueryResponse.HELD_BACK:
                row = work.session.one(
                    "SELECT payout_id FROM status_queries WHERE query_originator_conversation_id = ?",
                    query_originator_conversation_id,
                )
                if row is not None:
                    refund_attempt(work, str(row["payout_id"]))

    def claim_resend(self, payout_id: str, *, expected_attempts: int, retry_after: float) -> Payout | None:
        """For a payout M-PESA has no record of (status answer 49): move it to ``sending`` (send_attempts +
        1) and count the lookup attempt, committed before the resend with the same OriginatorConversationID.
        None unless a resend is due, the payout is ``unknown`` (or ``sending`` after a resend of ours that
        died), not flagged, and its send_attempts still equal ``expected_attempts``."""
        with self._tx.write() as work:
            row = lock_row(work, payout_id)
            payout = load(work.session.engine, row)
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
            payout = change(
                work, payout, PayoutStatus.SENDING, send_attempts=payout.send_attempts + 1, reason=payout.reason
            )
            _count_attempt(work, payout_id, retry_after, resend_due=False)
            return payout

    def resend_not_taken(
        self,
        payout_id: str,
        *,
        attempt: int | None = None,
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
        due. ``held`` (flow control kept it back, nothing sent): the attempt is also given back. ``attempt``
        fences it like the payout store's post-send writes: a stale claim's answer is only kept."""
        with self._tx.write() as work:
            payout = lock_payout(work, payout_id)
            if fenced(work, payout, attempt, SendAnswer.RESEND_NOT_TAKEN, code=code, description=description):
                return payout
            if payout.status is not PayoutStatus.SENDING:
                return payout
            announced = payout.reason in set(UnknownReason)
            reason = payout.reason if announced else UnknownReason.NO_RESPONSE.value
            payout = change(
                work, payout, PayoutStatus.UNKNOWN, reason=reason, response_code=code, response_desc=description
            )
            if not announced:  # a worker's interrupted first send: the payer has not heard "unknown" yet
                outbox.emit_status(work, payout, message="the send was interrupted and the resend was not taken")
            if not_processed or held:
                set_resend_due(work, payout_id)
            if held:
                refund_attempt(work, payout_id)
            return payout

    def flag_for_review(self, payout_id: str, *, reason: FlagReason) -> bool:
        """Stop looking the payout up and flag it for a human; its status is not touched. True if newly
        flagged (False: already flagged). UnknownPayout if there is no such payout."""
        with self._tx.write() as work:
            lock_row(work, payout_id)
            changed = work.session.run(
                "UPDATE payouts SET flagged_at = ?, flag_reason = ? WHERE payout_id = ? AND flagged_at IS NULL",
                work.session.time(work.now),
                str(reason),
                payout_id,
            )
            return changed > 0

    def rearm_lookup(self, payout_id: str) -> LookupState:
        """An operator's fresh start: unflag, reset the attempt count and time budget, look up now. A resend
        due from an earlier "no record" answer is cleared: that answer may be old, so a query comes first.

        Only for ``unknown`` and ``accepted`` (RearmRefused otherwise, nothing changed): the reset count would
        take a stuck resend (``sending``) out of every lookup, and the other statuses have nothing to look up.
        """
        with self._tx.write() as work:
            status = lock_row(work, payout_id)["status"]
            if status not in (_UNKNOWN, _ACCEPTED):
                raise RearmRefused(payout_id, status, _REARM_REFUSED.get(status, "final, nothing to look up"))
            work.session.run(
                "UPDATE payouts SET flagged_at = NULL, flag_reason = NULL, lookup_attempts = 0, resend_due = ?,"
                " lookup_started_at = NULL, next_lookup_at = ?, lookup_trigger = ? WHERE payout_id = ?",
                False,
                work.session.time(work.now),
                str(LookupTrigger.MANUAL),
                payout_id,
            )
            return _state(work.session.engine, lock_row(work, payout_id))

    def clear_flag(self, payout_id: str) -> LookupState:
        """A human reviewed a flagged *final* payout (e.g. a success that came after its failure): unflag it.

        Only for final payouts (RearmRefused otherwise): a non-final one unflagged without a fresh lookup
        budget would wait with nobody looking at it; ``rearm_lookup`` is for those.
        """
        with self._tx.write() as work:
            row = lock_row(work, payout_id)
            status = row["status"]
            if status not in _FINAL:
                raise RearmRefused(payout_id, status, "not final: rearm it, so the lookup runner takes it up again")
            if row["flagged_at"] is None:
                raise RearmRefused(payout_id, status, "not flagged, nothing to clear")
            work.session.run("UPDATE payouts SET flagged_at = NULL, flag_reason = NULL WHERE payout_id = ?", payout_id)
            return _state(work.session.engine, lock_row(work, payout_id))

    def count_flagged(self) -> int:
        """Payouts flagged for review that are still not final (what the alert gauge shows)."""
        with self._tx.read() as session:
            row = session.one(
                "SELECT COUNT(*) AS n FROM payouts WHERE flagged_at IS NOT NULL AND status NOT IN (?, ?, ?)",
                *_FINAL,
            )
        return 0 if row is None else int(row["n"])

    def list_flagged(self, limit: int = 100) -> list[LookupState]:
        """Flagged payouts that are still not final, and final ones a later success contradicted (those stay
        flagged until a human clears them, ``clear_flag``), longest flagged first."""
        with self._tx.read() as session:
            rows = session.all(
                "SELECT * FROM payouts WHERE flagged_at IS NOT NULL"
                " AND (status NOT IN (?, ?, ?) OR flag_reason = ?) ORDER BY flagged_at, payout_id LIMIT ?",
                *_FINAL,
                str(FlagReason.SUCCESS_AFTER_FAILURE),
                limit,
            )
            return [_state(session.engine, row) for row in rows]

    def lookup_state(self, payout_id: str) -> LookupState | None:
        with self._tx.read() as session:
            row = session.one("SELECT * FROM payouts WHERE payout_id = ?", payout_id)
            return None if row is None else _state(session.engine, row)

    def status_queries(self, payout_id: str) -> list[StatusQuery]:
        """Every status query made for the payout, in order."""
        with self._tx.read() as session:
            rows = session.all("SELECT * FROM status_queries WHERE payout_id = ? ORDER BY attempt", payout_id)
            return [_status_query(session.engine, row) for row in rows]


def lookup_soon(work: Work, payout_id: str, trigger: LookupTrigger) -> None:
    """Have the payout looked up on the lookup runner's next pass (it stays flagged if it is)."""
    work.session.run(
        "UPDATE payouts SET next_lookup_at = ?, lookup_trigger = ? WHERE payout_id = ?",
        work.session.time(work.now),
        str(trigger),
        payout_id,
    )


def flag_in(work: Work, payout: Payout, reason: FlagReason, detail: str) -> tuple[Payout, bool, str]:
    work.session.run(
        "UPDATE payouts SET flagged_at = COALESCE(flagged_at, ?), flag_reason = COALESCE(flag_reason, ?)"
        " WHERE payout_id = ?",
        work.session.time(work.now),
        str(reason),
        payout.payout_id,
    )
    log.warning("payout %s: flagged for review (%s: %s)", payout.payout_id, reason, detail)
    return payout, False, f"not applied, flagged for review ({reason}: {detail})"


def refund_attempt(work: Work, payout_id: str) -> None:
    """A lookup that was never sent does not count against the payout's budget."""
    work.session.run(
        "UPDATE payouts SET lookup_attempts = CASE WHEN lookup_attempts > 0 THEN lookup_attempts - 1 ELSE 0 END,"
        " lookup_started_at = CASE WHEN lookup_attempts <= 1 THEN NULL ELSE lookup_started_at END"
        " WHERE payout_id = ?",
        payout_id,
    )


def set_resend_due(work: Work, payout_id: str) -> None:
    work.session.run("UPDATE payouts SET resend_due = ? WHERE payout_id = ?", True, payout_id)


def _count_attempt(work: Work, payout_id: str, retry_after: float, *, resend_due: bool) -> None:
    work.session.run(
        "UPDATE payouts SET lookup_attempts = lookup_attempts + 1,"
        " lookup_started_at = COALESCE(lookup_started_at, ?), next_lookup_at = ?, lookup_trigger = NULL,"
        " resend_due = ? WHERE payout_id = ?",
        work.session.time(work.now),
        work.session.time(work.now + timedelta(seconds=retry_after)),
        resend_due,
        payout_id,
    )


def _task(work: Work, row: Row) -> LookupTask:
    payout = load(work.session.engine, row)
    engine = work.session.engine
    # A trigger this version does not know (a newer one's) only labels the lookup: fall back, never fail.
    known = {str(trigger) for trigger in LookupTrigger}
    if row["lookup_trigger"] in known:
        trigger = LookupTrigger(row["lookup_trigger"])
    elif payout.status is PayoutStatus.ACCEPTED:
        trigger = LookupTrigger.MISSING_RESULT
    else:
        trigger = LookupTrigger.UNKNOWN
    resend = bool(row["resend_due"]) and payout.status in (PayoutStatus.UNKNOWN, PayoutStatus.SENDING)
    started = None if row["lookup_started_at"] is None else engine.from_db_time(row["lookup_started_at"])
    return LookupTask(
        payout=payout,
        attempts=int(row["lookup_attempts"]),
        started_at=started,
        trigger=trigger,
        action=LookupAction.RESEND if resend else LookupAction.QUERY,
        elapsed=None if started is None else (work.now - started).total_seconds(),
    )


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
