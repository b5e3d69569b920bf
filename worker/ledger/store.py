"""The ledger's one SQL implementation, shared by SQLite and PostgreSQL (see :mod:`worker.ledger.engine`).

Each public method is one transaction. A status change first reads the payout with a row lock (``FOR
UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already holds the database's write lock), asks
:func:`worker.payouts.models.can_transition`, and then updates the row only if status and attempt count are still
what it read (compare-and-set), inserting the event into ``outbox`` in the same transaction. So an event
exists exactly when its transition does, and a repeated call finds the new status and does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic

from worker import metrics
from worker.errors import B2CError, InvalidCommand, LedgerError, TransitionRefused, UnknownPayout
from worker.ledger import quarantine
from worker.ledger.engine import C, Database, Engine, Row, Session
from worker.ledger.lookup_store import LookupStore
from worker.ledger.lookups import LookupTrigger
from worker.ledger.model import (
    ApplyOutcome,
    OutboxEvent,
    QuarantineState,
    Recorded,
    RecordOutcome,
    ResultApplied,
)
from worker.ledger.schema import migrate
from worker.payouts.matching import REASON_UNKNOWN_PAYOUT, mismatches
from worker.payouts.models import (
    FINAL_STATUSES,
    FailureReason,
    Payout,
    PayoutCommand,
    PayoutStatus,
    RejectionReason,
    UnknownReason,
    build_event,
    can_transition,
    canonical_json,
    event_routing_key,
    loads_json,
    result_summary,
)
from worker.protocol.codes import ResultOutcome, result_category
from worker.protocol.result import Result, parse_result_envelope

# Columns a transition may set besides status/updated_at; the only names ever put into UPDATE text.
_UPDATABLE = frozenset(
    {
        "conversation_id",
        "send_attempts",
        "response_code",
        "response_desc",
        "result_code",
        "result_desc",
        "receipt",
        "reason",
        "message",
        "final_details",
        "accepted_at",
        "finalised_at",
    }
)
_LOOKUP_COLUMNS = frozenset({"payout_id", "originator_conversation_id", "conversation_id"})
_SENDABLE = frozenset({PayoutStatus.RECEIVED, PayoutStatus.SENDING, PayoutStatus.UNKNOWN})
_FAILURE_REASONS: frozenset[str] = frozenset(FailureReason)
_NOTE_LENGTH = 1000
_MARK_CHUNK = 500
_CLAIM_SQL = (
    "SELECT id, event_id, payout_id, routing_key, body FROM outbox WHERE published_at IS NULL"
    " AND created_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?){for_payout} ORDER BY id LIMIT ?"
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Work(Generic[C]):
    """One write transaction: row locks, compare-and-set updates and outbox inserts, sharing one clock."""

    session: Session[C]
    now: datetime
    transitions: list[Payout] = field(default_factory=list)
    # Metric observations that need the state before a change; recorded only once the transaction commits.
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    def load(self, row: Row) -> Payout:
        return _load(self.session.engine, row)

    def lock(self, column: str, value: str) -> Payout | None:
        """The payout whose ``column`` equals ``value``, locked until the transaction ends."""
        assert column in _LOOKUP_COLUMNS
        row = self.session.one(
            f"SELECT * FROM payouts WHERE {column} = ? ORDER BY created_at LIMIT 1"  # noqa: S608 - fixed names
            + self.session.engine.for_update,
            value,
        )
        return None if row is None else self.load(row)

    def lock_payout(self, payout_id: str) -> Payout:
        payout = self.lock("payout_id", payout_id)
        if payout is None:
            raise UnknownPayout(payout_id)
        return payout

    def change(self, payout: Payout, target: PayoutStatus, *, implied: bool = False, **columns: Any) -> Payout:
        """Move ``payout`` to ``target`` if it is still as read; ``reason``/``message`` reset unless given.

        ``implied`` skips the status machine for the one step M-PESA itself proves: a result for a payout
        we had put back to ``received`` shows that the request did reach it after all.
        """
        if target != payout.status and not implied and not can_transition(payout.status, target):
            raise TransitionRefused(payout.payout_id, payout.status, target)
        unexpected = set(columns) - _UPDATABLE
        if unexpected:
            raise ValueError(f"not updatable: {sorted(unexpected)}")
        values: dict[str, Any] = {"reason": None, "message": None, **columns}
        values["status"] = str(target)
        values["updated_at"] = self.session.time(self.now)
        assignments = ", ".join(f"{name} = ?" for name in values)
        row = self.session.one(
            f"UPDATE payouts SET {assignments}"  # noqa: S608 - names from _UPDATABLE, values bound
            " WHERE payout_id = ? AND status = ? AND send_attempts = ? RETURNING *",
            *values.values(),
            payout.payout_id,
            str(payout.status),
            payout.send_attempts,
        )
        if row is None:
            raise LedgerError(f"payout {payout.payout_id!r} changed under a held lock; transaction abandoned")
        changed = self.load(row)
        if target != payout.status:
            self.transitions.append(changed)
            if payout.status is PayoutStatus.UNKNOWN:
                spent = max((self.now - payout.updated_at).total_seconds(), 0.0)
                self.after_commit.append(lambda: metrics.UNKNOWN_SECONDS.observe(spent))
        return changed

    def emit(self, event: dict[str, Any]) -> None:
        self.session.run(
            "INSERT INTO outbox (event_id, payout_id, routing_key, body, created_at) VALUES (?, ?, ?, ?, ?)",
            event["event_id"],
            event["payout_id"],
            event_routing_key(event["status"]),
            canonical_json(event),
            self.session.time(self.now),
        )

    def emit_status(self, payout: Payout, **kwargs: Any) -> None:
        self.emit(build_event(payout, status=payout.status, now=self.now, **kwargs))

    def store_result(
        self, raw: bytes, result: Result, *, disposition: str, payout: Payout | None, applied: bool, note: str
    ) -> None:
        self.session.run(
            "INSERT INTO results (received_at, raw, originator_conversation_id, conversation_id,"
            " transaction_id, result_code, outcome, disposition, payout_id, applied, note)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self.session.time(self.now),
            bytes(raw),
            result.originator_conversation_id,
            result.conversation_id,
            result.transaction_id,
            result.code,
            str(result.outcome),
            disposition,
            None if payout is None else payout.payout_id,
            applied,
            note[:_NOTE_LENGTH],
        )


class SqlLedger(quarantine.QuarantineQueries, LookupStore, Generic[C]):
    """The :class:`~worker.ledger.Ledger` on any :class:`Engine`; build it with :meth:`open`."""

    def __init__(self, db: Database[C], *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._db = db
        self._clock = clock

    @classmethod
    def open(cls, engine: Engine[C], *, clock: Callable[[], datetime] = _utcnow) -> SqlLedger[C]:
        """Connect and bring the schema up to date (safe when several processes do it at once)."""
        db = Database(engine)
        try:
            with db.transaction() as session:
                migrate(session)
        except BaseException:
            db.close()
            raise
        return cls(db, clock=clock)

    @property
    def engine_name(self) -> str:
        return self._db.engine.name

    @contextmanager
    def _write(self) -> Iterator[_Work[C]]:
        with self._db.transaction() as session:
            work = _Work(session, self._clock())
            yield work
        _observe(work.transitions)
        for record in work.after_commit:
            record()

    # ------------------------------------------------------------------------------------ commands

    def record(
        self, command: PayoutCommand, originator_conversation_id: str, *, announce_duplicate: bool = True
    ) -> Recorded:
        """Store a new payout as ``received`` (no event), or answer a repeat of its payout_id.

        ``announce_duplicate=False`` leaves the DUPLICATE event to a later :meth:`note_duplicate`, for a
        caller that first checks whether the repeat is really an orphaned delivery it must finish.
        """
        fingerprint = command.fingerprint()
        with self._write() as work:
            now = work.session.time(work.now)
            row = work.session.one(
                "INSERT INTO payouts (payout_id, originator_conversation_id, fingerprint, command, amount,"
                " status, send_attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)"
                " ON CONFLICT DO NOTHING RETURNING *",
                command.payout_id,
                originator_conversation_id,
                fingerprint,
                command.to_json().decode("utf-8"),
                str(command.amount),
                str(PayoutStatus.RECEIVED),
                now,
                now,
            )
            if row is not None:
                payout = work.load(row)
                work.transitions.append(payout)
                return Recorded(RecordOutcome.NEW, payout)
            existing = work.lock("payout_id", command.payout_id)
            if existing is None:
                raise LedgerError(f"OriginatorConversationID {originator_conversation_id!r} belongs to another payout")
            if existing.fingerprint == fingerprint:
                if announce_duplicate:
                    work.emit_status(existing, duplicate=True)
                return Recorded(RecordOutcome.DUPLICATE, existing)
            work.emit(
                build_event(
                    None,
                    status=PayoutStatus.REJECTED,
                    reason=RejectionReason.IDEMPOTENCY_CONFLICT,
                    message=(
                        f"payout_id {command.payout_id} was already used for a different payout"
                        f" (status {existing.status})"
                    ),
                    command=command,
                    now=work.now,
                )
            )
            return Recorded(RecordOutcome.CONFLICT, existing)

    def record_invalid(self, raw: bytes, *, payout_id: str | None, reason: str, message: str) -> None:
        """Keep a refused command's body and tell the payer (``payout.rejected``) in one transaction."""
        with self._write() as work:
            event = build_event(
                None,
                status=PayoutStatus.REJECTED,
                reason=reason,
                message=message,
                payout_id=payout_id,
                now=work.now,
            )
            work.session.run(
                "INSERT INTO invalid_commands (received_at, raw, payout_id, reason, message) VALUES (?, ?, ?, ?, ?)",
                work.session.time(work.now),
                bytes(raw),
                event["payout_id"],
                reason,
                message,
            )
            work.emit(event)

    def note_duplicate(self, payout_id: str) -> Payout:
        """Answer a repeated command: store an event with the payout's current status, duplicate=true."""
        with self._write() as work:
            payout = work.lock_payout(payout_id)
            work.emit_status(payout, duplicate=True)
            return payout

    def begin_send(self, payout_id: str) -> Payout:
        """Durably mark the payout ``sending`` (one more attempt) before the caller sends it.

        From ``sending`` too: a redelivery after a crash mid-send does not know what the earlier send did,
        and resending with the same OriginatorConversationID is safe (M-PESA refuses a second payment).
        From ``accepted`` or a final status nothing changes and the payout is returned as it is: the caller
        must send only when the returned status is ``sending``.
        """
        with self._write() as work:
            payout = work.lock_payout(payout_id)
            if payout.status not in _SENDABLE:
                return payout
            return work.change(payout, PayoutStatus.SENDING, send_attempts=payout.send_attempts + 1)

    def claim_send(self, payout_id: str, *, expected_attempts: int) -> Payout | None:
        """Like begin_send, but only for the caller whose snapshot is current: None means another delivery
        claimed (or finished) the payout since ``expected_attempts`` was read, so this caller must not send."""
        with self._write() as work:
            payout = work.lock_payout(payout_id)
            if payout.status not in _SENDABLE or payout.send_attempts != expected_attempts:
                return None
            return work.change(payout, PayoutStatus.SENDING, send_attempts=payout.send_attempts + 1)

    def mark_accepted(
        self, payout_id: str, *, conversation_id: str | None, code: str | None, description: str | None
    ) -> Payout:
        """M-PESA took the request; a no-op (no second event) if already accepted or final."""
        with self._write() as work:
            payout = work.lock_payout(payout_id)
            if payout.status is PayoutStatus.ACCEPTED or payout.is_final:
                return payout
            payout = work.change(
                payout,
                PayoutStatus.ACCEPTED,
                conversation_id=conversation_id or payout.conversation_id,
                response_code=code,
                response_desc=description,
                accepted_at=work.session.time(work.now),
            )
            work.emit_status(payout)
            return payout

    def mark_rejected(
        self,
        payout_id: str,
        *,
        reason: str,
        code: str | None,
        description: str | None,
        message: str,
    ) -> Payout:
        """Final: nothing was or will be paid. A no-op if the payout is already final (first final wins)."""
        with self._write() as work:
            payout = work.lock_payout(payout_id)
            if payout.is_final:
                return payout
            payout = work.change(
                payout,
                PayoutStatus.REJECTED,
                response_code=code,
                response_desc=description,
                reason=reason,
                message=message,
                finalised_at=work.session.time(work.now),
            )
            work.emit_status(payout, message=message)
            return payout

    def mark_unknown(
        self,
        payout_id: str,
        *,
        reason: str,
        code: str | None,
        description: str | None,
        message: str | None = None,
    ) -> Payout:
        """We do not know whether it was paid; a no-op if already ``unknown`` or final."""
        with self._write() as work:
            payout = work.lock_payout(payout_id)
            if payout.status is PayoutStatus.UNKNOWN or payout.is_final:
                return payout
            payout = work.change(
                payout,
                PayoutStatus.UNKNOWN,
                response_code=code,
                response_desc=description,
                reason=reason,
                message=message,
            )
            work.emit_status(payout, message=message)
            return payout

    def mark_not_sent(self, payout_id: str, *, code: str | None, description: str | None) -> Payout:
        """``sending`` back to ``received``: M-PESA certainly did not process it (no event). Else a no-op."""
        with self._write() as work:
            payout = work.lock_payout(payout_id)
            if payout.status is not PayoutStatus.SENDING:
                return payout
            return work.change(
                payout,
                PayoutStatus.RECEIVED,
                response_code=code,
                response_desc=description,
            )

    # ------------------------------------------------------------------------------------- results

    def record_result(self, raw: bytes, result: Result, *, confirm_success: bool = False) -> ResultApplied:
        """Keep the callback body whatever happens, and apply it to its payout if it decides one.

        The first final status wins. A later result that agrees with it (completed with the same or no
        receipt; failed after failed or rejected) is DUPLICATE_FINAL, one that contradicts it is CONFLICT:
        both are stored, neither changes the payout or emits an event. If applying fails, the body is
        still stored (applied false, with the error in ``note``) and a LedgerError is raised.

        A result for one of our status queries is applied to the payout it looked up (STATUS_ANSWER, see
        LookupStore). With ``confirm_success`` a success is stored but held (HELD) until a status query
        confirms it; a duplicate answer (15/41) has the payout looked up at once.
        """
        try:
            with self._write() as work:
                return self._apply_result(work, raw, result, confirm_success=confirm_success)
        except Exception as exc:
            try:
                with self._write() as work:
                    work.store_result(
                        raw,
                        result,
                        disposition="error",
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
        """Apply a held result without the match check (an operator confirmed it); one transaction."""
        with self._write() as work:
            entry = quarantine.lock_held(work.session, quarantine_id)
            if entry.payout_id is None:
                raise LedgerError(f"q:{quarantine_id} matched no payout: there is nothing to apply it to")
            applied = self._apply_result(work, entry.raw, parse_result_envelope(entry.raw), verify=False)
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

    def _apply_result(  # noqa: C901 - money path: match, verify, then one branch per outcome, in one reviewed order
        self, work: _Work[C], raw: bytes, result: Result, *, verify: bool = True, confirm_success: bool = False
    ) -> ResultApplied:
        answered = self._apply_status_answer(work, raw, result)
        if answered is not None:
            return answered
        payout: Payout | None = None
        if result.originator_conversation_id:
            payout = work.lock("originator_conversation_id", result.originator_conversation_id)
        if payout is None and result.conversation_id:
            payout = work.lock("conversation_id", result.conversation_id)
        outcome = result.outcome
        applied = False
        quarantined: str | None = None
        if payout is None:
            disposition = ApplyOutcome.UNMATCHED
            note = "no payout has this OriginatorConversationID or ConversationID"
            quarantined = REASON_UNKNOWN_PAYOUT
            quarantine.insert(work.session, work.now, raw, result, payout_id=None, reason=quarantined, detail=note)
        elif verify and (found := mismatches(payout, result)):
            # Not what we sent: kept with its body for review, never applied (see worker.payouts.matching).
            disposition, quarantined = ApplyOutcome.QUARANTINED, found[0].reason
            note = "quarantined: " + "; ".join(mismatch.detail for mismatch in found)
            quarantine.insert(
                work.session, work.now, raw, result, payout_id=payout.payout_id, reason=quarantined, detail=note
            )
        elif outcome in (ResultOutcome.COMPLETED, ResultOutcome.FAILED):
            target = PayoutStatus.COMPLETED if outcome is ResultOutcome.COMPLETED else PayoutStatus.FAILED
            if not payout.is_final:
                if confirm_success and target is PayoutStatus.COMPLETED:
                    return self._hold_success(work, raw, result, payout)
                payout = self._finalise(work, payout, target, result)
                disposition, applied, note = ApplyOutcome.APPLIED, True, f"payout {target}"
            elif _agrees(payout, target, result):
                disposition = ApplyOutcome.DUPLICATE_FINAL
                note = f"repeats the final status {payout.status}"
            else:
                disposition = ApplyOutcome.CONFLICT
                note = f"says {target}, payout already {payout.status} (receipt {payout.receipt}); not applied"
        elif outcome is ResultOutcome.UNKNOWN and payout.status is PayoutStatus.ACCEPTED:
            payout = work.change(
                payout,
                PayoutStatus.UNKNOWN,
                conversation_id=payout.conversation_id or result.conversation_id,
                reason=UnknownReason.UNCLASSIFIED_RESULT,
                message=result.description,
            )
            work.emit_status(
                payout,
                message=result.description,
                result=result_summary(code=result.code, description=result.description),
            )
            disposition, applied, note = ApplyOutcome.NOT_FINAL, True, "accepted payout now unknown"
        else:
            disposition = ApplyOutcome.NOT_FINAL
            note = f"result outcome {outcome}: payout stays {payout.status}"
            if outcome is ResultOutcome.DUPLICATE and not payout.is_final:
                # The id reached M-PESA before (15/41): whatever that first request did decides; look it up.
                self._lookup_soon(work, payout.payout_id, LookupTrigger.DUPLICATE)
                note += "; looked up now"
        work.store_result(raw, result, disposition=disposition, payout=payout, applied=applied, note=note)
        return ResultApplied(disposition, payout, quarantined)

    def _finalise(self, work: _Work[C], payout: Payout, target: PayoutStatus, result: Result) -> Payout:
        conversation_id = payout.conversation_id or result.conversation_id
        if payout.status is PayoutStatus.ACCEPTED:
            # Callback lag: from M-PESA's acceptance to its result (undefined for a payout we never saw accepted).
            row = work.session.one("SELECT accepted_at FROM payouts WHERE payout_id = ?", payout.payout_id)
            if row is not None and row["accepted_at"] is not None:
                lag = max((work.now - work.session.engine.from_db_time(row["accepted_at"])).total_seconds(), 0.0)
                work.after_commit.append(lambda: metrics.CALLBACK_LAG_SECONDS.observe(lag))
        if payout.status is not PayoutStatus.ACCEPTED:
            # The result overtook the synchronous answer: the payer still gets accepted before final.
            payout = work.change(
                payout,
                PayoutStatus.ACCEPTED,
                implied=payout.status is PayoutStatus.RECEIVED,
                conversation_id=conversation_id,
                accepted_at=work.session.time(work.now),
            )
            work.emit_status(payout)
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
        category = result_category(result.code) if target is PayoutStatus.FAILED else None
        payout = work.change(
            payout,
            target,
            conversation_id=conversation_id,
            result_code=result.code,
            result_desc=result.description,
            receipt=details.receipt,
            reason=category if category in _FAILURE_REASONS else None,
            final_details=canonical_json(summary).decode("utf-8"),
            finalised_at=work.session.time(work.now),
        )
        work.emit_status(payout)
        return payout

    # -------------------------------------------------------------------------------------- outbox

    def outbox_pending(self, limit: int = 100, payout_id: str | None = None) -> list[OutboxEvent]:
        """Unpublished events, oldest first (of one payout, or all); does not look at relay leases."""
        where = "published_at IS NULL" + ("" if payout_id is None else " AND payout_id = ?")
        params: list[Any] = [] if payout_id is None else [payout_id]
        with self._db.transaction(write=False) as session:
            rows = session.all(
                f"SELECT id, event_id, payout_id, routing_key, body FROM outbox WHERE {where}"  # noqa: S608
                " ORDER BY id LIMIT ?",
                *params,
                limit,
            )
        return [_outbox_event(row) for row in rows]

    def claim_outbox(
        self,
        limit: int = 100,
        older_than_seconds: float = 0.0,
        lease_seconds: float = 60.0,
        payout_id: str | None = None,
    ) -> list[OutboxEvent]:
        """Lease unpublished events at least ``older_than_seconds`` old to this relay for ``lease_seconds``.

        For several relays (replicas) sharing one database: a leased row is not handed to another relay
        until its lease runs out, and PostgreSQL's ``SKIP LOCKED`` keeps two relays from waiting on each
        other. The age threshold leaves fresh events to the request path that wrote them. Delivery stays
        at least once: a relay that dies after publishing but before ``mark_published`` leaves the row to
        be published again when the lease ends, so consumers de-duplicate by ``event_id``.
        """
        now = self._clock()
        with self._db.transaction() as session:
            for_payout = "" if payout_id is None else " AND payout_id = ?"
            rows = session.all(
                _CLAIM_SQL.format(for_payout=for_payout) + session.engine.skip_locked,
                session.time(now - timedelta(seconds=older_than_seconds)),
                session.time(now),
                *([] if payout_id is None else [payout_id]),
                limit,
            )
            ids = [int(row["id"]) for row in rows]
            if ids:
                session.run(
                    f"UPDATE outbox SET claimed_until = ? WHERE id IN ({_marks(len(ids))})",  # noqa: S608
                    session.time(now + timedelta(seconds=lease_seconds)),
                    *ids,
                )
        return [_outbox_event(row) for row in rows]

    def release_outbox(self, ids: Sequence[int]) -> None:
        """Give claimed rows back at once (their publish failed), instead of waiting out the lease."""
        if not ids:
            return
        with self._db.transaction() as session:
            for start in range(0, len(ids), _MARK_CHUNK):
                chunk = [int(value) for value in ids[start : start + _MARK_CHUNK]]
                session.run(
                    "UPDATE outbox SET claimed_until = NULL WHERE published_at IS NULL"  # noqa: S608 - placeholders
                    f" AND id IN ({_marks(len(chunk))})",
                    *chunk,
                )

    def mark_published(self, ids: Sequence[int]) -> None:
        """The broker confirmed these events; a repeated or unknown id is ignored."""
        if not ids:
            return
        now = self._clock()
        with self._db.transaction() as session:
            for start in range(0, len(ids), _MARK_CHUNK):
                chunk = [int(value) for value in ids[start : start + _MARK_CHUNK]]
                session.run(
                    "UPDATE outbox SET published_at = ? WHERE published_at IS NULL"  # noqa: S608 - placeholders
                    f" AND id IN ({_marks(len(chunk))})",
                    session.time(now),
                    *chunk,
                )

    def outbox_backlog(self) -> int:
        with self._db.transaction(write=False) as session:
            row = session.one("SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL")
        return 0 if row is None else int(row["n"])

    # ------------------------------------------------------------------------------------- queries

    def get(self, payout_id: str) -> Payout | None:
        return self._find_one("payout_id", payout_id)

    def find(self, originator_conversation_id: str | None = None, conversation_id: str | None = None) -> Payout | None:
        """By OriginatorConversationID first, then by M-PESA's ConversationID."""
        payout = None
        if originator_conversation_id:
            payout = self._find_one("originator_conversation_id", originator_conversation_id)
        if payout is None and conversation_id:
            payout = self._find_one("conversation_id", conversation_id)
        return payout

    def count_by_status(self) -> dict[str, int]:
        """Every status, zeros included (a gauge per status must not vanish when it drops to none)."""
        with self._db.transaction(write=False) as session:
            rows = session.all("SELECT status, COUNT(*) AS n FROM payouts GROUP BY status")
        counts = {str(status): 0 for status in PayoutStatus}
        counts.update({str(row["status"]): int(row["n"]) for row in rows})
        return counts

    def list_payouts(self, status: PayoutStatus | None = None, limit: int = 100) -> list[Payout]:
        """Least recently changed first: the payouts waiting longest (what a reconciliation sweep wants)."""
        where = "" if status is None else " WHERE status = ?"
        params: list[Any] = [] if status is None else [str(PayoutStatus(status))]
        with self._db.transaction(write=False) as session:
            rows = session.all(
                f"SELECT * FROM payouts{where} ORDER BY updated_at, payout_id LIMIT ?",  # noqa: S608
                *params,
                limit,
            )
            return [_load(session.engine, row) for row in rows]

    def close(self) -> None:
        self._db.close()

    def _find_one(self, column: str, value: str) -> Payout | None:
        assert column in _LOOKUP_COLUMNS
        with self._db.transaction(write=False) as session:
            row = session.one(
                f"SELECT * FROM payouts WHERE {column} = ? ORDER BY created_at LIMIT 1",  # noqa: S608
                value,
            )
            return None if row is None else _load(session.engine, row)


def _load(engine: Engine[Any], row: Row) -> Payout:
    try:
        command = PayoutCommand.from_json(str(row["command"]).encode("utf-8"))
    except InvalidCommand as exc:
        raise LedgerError(f"the stored command of payout {row['payout_id']!r} is unreadable: {exc}") from exc
    final = row["final_details"]
    return Payout(
        payout_id=row["payout_id"],
        command=command,
        fingerprint=row["fingerprint"],
        originator_conversation_id=row["originator_conversation_id"],
        status=PayoutStatus(row["status"]),
        conversation_id=row["conversation_id"],
        send_attempts=int(row["send_attempts"]),
        response_code=row["response_code"],
        response_desc=row["response_desc"],
        result_code=row["result_code"],
        result_desc=row["result_desc"],
        receipt=row["receipt"],
        reason=row["reason"],
        created_at=engine.from_db_time(row["created_at"]),
        updated_at=engine.from_db_time(row["updated_at"]),
        final_details=None if final is None else loads_json(str(final)),
    )


def _agrees(payout: Payout, target: PayoutStatus, result: Result) -> bool:
    """Whether a final result says the same about the money as the payout's final status already does."""
    if target is PayoutStatus.COMPLETED:
        receipt = result.details.receipt
        return payout.status is PayoutStatus.COMPLETED and (
            payout.receipt is None or receipt is None or payout.receipt == receipt
        )
    return payout.status in (PayoutStatus.FAILED, PayoutStatus.REJECTED)


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _outbox_event(row: Row) -> OutboxEvent:
    return OutboxEvent(
        id=int(row["id"]),
        routing_key=str(row["routing_key"]),
        body=bytes(row["body"]),
        event_id=str(row["event_id"]),
        payout_id=row["payout_id"],
    )


def _observe(transitions: list[Payout]) -> None:
    """Count committed transitions (only the ledger knows every one, e.g. the implied acceptance)."""
    for payout in transitions:
        metrics.PAYOUT_TRANSITIONS.labels(status=str(payout.status)).inc()
        if payout.status in FINAL_STATUSES:
            seconds = (payout.updated_at - payout.created_at).total_seconds()
            metrics.COMMAND_TO_FINAL_SECONDS.labels(status=str(payout.status)).observe(max(seconds, 0.0))
        if payout.status is PayoutStatus.FAILED:
            metrics.KES_FAILED.inc(float(payout.command.amount))
