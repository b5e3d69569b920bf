"""The ``payouts`` table: a payout is recorded before anything is sent, and every change is a compare-and-set.

A status change first reads the payout with a row lock (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN
IMMEDIATE`` already holds the database's write lock), asks :func:`worker.payouts.models.can_transition`, and
then updates the row only if status and attempt count are still what it read (compare-and-set), inserting
the event into ``outbox`` in the same transaction. So an event exists exactly when its transition does, and
a repeated call finds the new status and does nothing. The row functions here take the caller's
:class:`~worker.ledger.transaction.Work`, so other stores change payouts inside their own transaction.

Every write that stores how a send ended is fenced by the claim the send was made under: ``attempt`` is the
payout's ``send_attempts`` as that claim left it. A send can outlive its lease (a slow read, a stall, a busy
database) and the payout be claimed again and resent, same OriginatorConversationID, by another delivery;
the stale sender's answer then describes only its own send. It is kept in ``stale_answers``, logged and
counted (``mpesa_b2c_stale_answers_total``), and changes the payout only when it is an acceptance that adds
to it (:func:`worker.payouts.policy.stale_answer`): never ``rejected``, ``unknown`` or back to ``received``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from worker import metrics
from worker.errors import InvalidCommand, LedgerError, TransitionRefused, UnknownPayout
from worker.ledger import outbox
from worker.ledger.engine import Engine, Row
from worker.ledger.model import Recorded, RecordOutcome
from worker.ledger.transaction import Transactions, Work, database_now
from worker.payouts import policy
from worker.payouts.models import (
    Payout,
    PayoutCommand,
    PayoutStatus,
    RefusalReason,
    build_event,
    build_refusal,
    can_transition,
    loads_json,
)
from worker.payouts.policy import SendAnswer, StaleAction

log = logging.getLogger(__name__)
_NOTE_LENGTH = 1000

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


class Payments(Protocol):
    """What the command handler needs: record a command, claim its send, and store the gateway's answer."""

    def record(self, command: PayoutCommand, originator_conversation_id: str) -> Recorded: ...

    def note_duplicate(self, payout_id: str) -> Payout: ...

    def record_invalid(self, raw: bytes, *, payout_id: str | None, reason: str, message: str) -> Payout | None: ...

    def claim_send(
        self, payout_id: str, *, expected_attempts: int, lease_seconds: float | None = None
    ) -> Payout | None: ...

    def get(self, payout_id: str) -> Payout | None: ...

    def since_change(self, payout_id: str) -> tuple[Payout, float] | None: ...

    def mark_accepted(
        self, payout_id: str, *, attempt: int, conversation_id: str | None, code: str | None, description: str | None
    ) -> Payout: ...

    def mark_rejected(
        self, payout_id: str, *, attempt: int, reason: str, code: str | None, description: str | None, message: str
    ) -> Payout: ...

    def mark_unknown(
        self,
        payout_id: str,
        *,
        attempt: int,
        reason: str,
        code: str | None,
        description: str | None,
        message: str | None = None,
    ) -> Payout: ...

    def mark_not_sent(self, payout_id: str, *, attempt: int, code: str | None, description: str | None) -> Payout: ...


class Acceptance(Protocol):
    """What the lookup runner needs after a resend M-PESA took."""

    def mark_accepted(
        self, payout_id: str, *, attempt: int, conversation_id: str | None, code: str | None, description: str | None
    ) -> Payout: ...


class PayoutCensus(Protocol):
    """What the gauges read."""

    def count_by_status(self) -> dict[str, int]: ...

    def list_payouts(self, status: PayoutStatus | None = None, limit: int = 100) -> list[Payout]: ...


def load(engine: Engine[Any], row: Row) -> Payout:
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


def lock(work: Work, column: str, value: str) -> Payout | None:
    """The payout whose ``column`` equals ``value``, locked until the transaction ends."""
    assert column in _LOOKUP_COLUMNS
    row = work.session.one(
        f"SELECT * FROM payouts WHERE {column} = ? ORDER BY created_at LIMIT 1"  # noqa: S608 - fixed names
        + work.session.engine.for_update,
        value,
    )
    return None if row is None else load(work.session.engine, row)


def lock_payout(work: Work, payout_id: str) -> Payout:
    payout = lock(work, "payout_id", payout_id)
    if payout is None:
        raise UnknownPayout(payout_id)
    return payout


def lock_row(work: Work, payout_id: str) -> Row:
    """The whole row (lookup bookkeeping included), locked until the transaction ends."""
    row = work.session.one(
        "SELECT * FROM payouts WHERE payout_id = ?" + work.session.engine.for_update,  # noqa: S608 - fixed text
        payout_id,
    )
    if row is None:
        raise UnknownPayout(payout_id)
    return row


def change(work: Work, payout: Payout, target: PayoutStatus, *, implied: bool = False, **columns: Any) -> Payout:
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
    values["updated_at"] = work.session.time(work.now)
    assignments = ", ".join(f"{name} = ?" for name in values)
    row = work.session.one(
        f"UPDATE payouts SET {assignments}"  # noqa: S608 - names from _UPDATABLE, values bound
        " WHERE payout_id = ? AND status = ? AND send_attempts = ? RETURNING *",
        *values.values(),
        payout.payout_id,
        str(payout.status),
        payout.send_attempts,
    )
    if row is None:
        raise LedgerError(f"payout {payout.payout_id!r} changed under a held lock; transaction abandoned")
    changed = load(work.session.engine, row)
    if target != payout.status:
        work.transitions.append(changed)
        if payout.status is PayoutStatus.UNKNOWN:
            spent = max((work.now - payout.updated_at).total_seconds(), 0.0)
            work.after_commit.append(lambda: metrics.UNKNOWN_SECONDS.observe(spent))
    return changed


def keep_stale(
    work: Work,
    payout: Payout,
    attempt: int,
    answer: SendAnswer,
    action: StaleAction,
    *,
    code: str | None,
    description: str | None,
    conversation_id: str | None = None,
) -> None:
    """Store, log and count the answer of a send whose claim ``attempt`` is no longer the payout's latest."""
    work.session.run(
        "INSERT INTO stale_answers (received_at, payout_id, attempt, current_attempt, current_status, answer,"
        " code, description, conversation_id, action) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        work.session.time(work.now),
        payout.payout_id,
        attempt,
        payout.send_attempts,
        str(payout.status),
        str(answer),
        code,
        None if description is None else description[:_NOTE_LENGTH],
        conversation_id,
        str(action),
    )
    log.warning(
        "payout %s: the answer to send attempt %d (%s, code %s) came after attempt %d claimed it (now %s); %s",
        payout.payout_id,
        attempt,
        answer,
        code,
        payout.send_attempts,
        payout.status,
        "applied" if action is StaleAction.APPLIED else "kept, not applied",
    )
    work.after_commit.append(lambda: metrics.STALE_ANSWERS.labels(answer=str(answer), action=str(action)).inc())


def fenced(
    work: Work,
    payout: Payout,
    attempt: int | None,
    answer: SendAnswer,
    *,
    code: str | None,
    description: str | None,
) -> bool:
    """True, with the answer kept, when ``attempt``'s claim is stale and the answer must not be applied."""
    if attempt is None or not policy.stale(payout, attempt):
        return False
    keep_stale(work, payout, attempt, answer, StaleAction.KEPT, code=code, description=description)
    return True


class PayoutStore:
    """Commands and the gateway's synchronous answers; every public method is one transaction.

    The ``mark_*`` methods raise UnknownPayout for an unknown id and TransitionRefused when the status
    machine forbids the change; on a payout already in the target status (or final; ``mark_not_sent``:
    not ``sending``) they return it unchanged and store no event, so repeating them is safe. Their
    ``attempt`` is the fencing token of the send they describe (see the module's docstring); the worker
    always passes it, and only a caller that holds no claim (a test, a tool) may leave it out.
    """

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def record(self, command: PayoutCommand, originator_conversation_id: str) -> Recorded:
        """Store a new payout as ``received`` (no event), or answer a repeat of its payout_id.

        NEW: stored. DUPLICATE: the stored payout, untouched and with no event yet: the caller answers with
        :meth:`note_duplicate` unless the repeat is an orphaned delivery it must finish. CONFLICT: a
        ``command.refused`` idempotency_conflict describing ``command``, the original untouched (never a
        ``payout.rejected``: that payout may be accepted or paid). Exactly one of any number of concurrent
        calls for one payout_id is NEW. LedgerError if the OriginatorConversationID belongs to another payout.
        """
        fingerprint = command.fingerprint()
        with self._tx.write() as work:
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
                payout = load(work.session.engine, row)
                work.transitions.append(payout)
                return Recorded(RecordOutcome.NEW, payout)
            existing = lock(work, "payout_id", command.payout_id)
            if existing is None:
                raise LedgerError(f"OriginatorConversationID {originator_conversation_id!r} belongs to another payout")
            # Today's fingerprint of the stored command, not the stored column: a row fingerprinted by an
            # older rule (metadata numbers as spelt) still recognises its repeats.
            if existing.command.fingerprint() == fingerprint:
                return Recorded(RecordOutcome.DUPLICATE, existing)
            outbox.emit_refusal(
                work,
                build_refusal(
                    existing,
                    reason=RefusalReason.IDEMPOTENCY_CONFLICT,
                    message=(
                        f"payout_id {command.payout_id} is recorded for a different payout; this command was"
                        " refused and that payout is untouched"
                    ),
                    command=command,
                    now=work.now,
                ),
            )
            return Recorded(RecordOutcome.CONFLICT, existing)

    def record_invalid(self, raw: bytes, *, payout_id: str | None, reason: str, message: str) -> Payout | None:
        """Keep an invalid command's body and tell the payer, in one transaction.

        If a payout is recorded under ``payout_id`` (returned), the command is refused on
        ``command.refused`` and that payout is untouched: ``payout.rejected`` would tell a payer keyed by
        payout_id that a payout which may be paid was not. Otherwise nothing was ever paid under that id and
        the answer is ``payout.rejected`` (None).
        """
        with self._tx.write() as work:
            recorded = None if payout_id is None else lock(work, "payout_id", payout_id)
            if recorded is None:
                event = build_event(
                    None,
                    status=PayoutStatus.REJECTED,
                    reason=reason,
                    message=message,
                    payout_id=payout_id,
                    now=work.now,
                )
                outbox.emit(work, event)
            else:
                event = build_refusal(recorded, reason=RefusalReason(reason), message=message, now=work.now)
                outbox.emit_refusal(work, event)
            work.session.run(
                "INSERT INTO invalid_commands (received_at, raw, payout_id, reason, message) VALUES (?, ?, ?, ?, ?)",
                work.session.time(work.now),
                bytes(raw),
                event["payout_id"],
                reason,
                message,
            )
            return recorded

    def note_duplicate(self, payout_id: str) -> Payout:
        """Answer a repeated command: store an event with the payout's current status, duplicate=true."""
        with self._tx.write() as work:
            payout = lock_payout(work, payout_id)
            outbox.emit_status(work, payout, duplicate=True)
            return payout

    def claim_send(
        self, payout_id: str, *, expected_attempts: int, lease_seconds: float | None = None
    ) -> Payout | None:
        """Durably mark the payout ``sending`` (one more attempt), committed before the caller sends it.

        Only for the caller whose snapshot is current: None means another delivery claimed (or finished)
        the payout since ``expected_attempts`` was read, or it is not sendable (``accepted`` or final), so
        this caller must not send. From ``sending`` too: a redelivery after a crash mid-send does not know
        what the earlier send did, and resending with the same OriginatorConversationID is safe (M-PESA
        refuses a second payment). With ``lease_seconds``, a ``sending`` payout is claimed only once its
        send lease has run out, measured on the database's clock (the clock that stamped it).
        """
        with self._tx.write() as work:
            payout = lock_payout(work, payout_id)
            if not policy.sendable(payout) or payout.send_attempts != expected_attempts:
                return None
            if lease_seconds is not None and policy.lease_running(payout, work.now, lease_seconds):
                return None
            return change(work, payout, PayoutStatus.SENDING, send_attempts=payout.send_attempts + 1)

    def mark_accepted(
        self,
        payout_id: str,
        *,
        attempt: int | None = None,
        conversation_id: str | None,
        code: str | None,
        description: str | None,
    ) -> Payout:
        """M-PESA took the request; a no-op (no second event) if already accepted or final.

        A stale sender's acceptance is kept and applied where it adds to the payout (the same
        OriginatorConversationID is paid at most once, whichever send carried it): a payout still in doubt
        becomes ``accepted`` (from ``received`` too: the acceptance proves the request reached M-PESA), an
        ``accepted`` one without a ConversationID gets this one.
        """
        with self._tx.write() as work:
            payout = lock_payout(work, payout_id)
            implied = False
            if attempt is not None and policy.stale(payout, attempt):
                action = policy.stale_answer(payout, SendAnswer.ACCEPTED, conversation_id)
                keep_stale(
                    work,
                    payout,
                    attempt,
                    SendAnswer.ACCEPTED,
                    action,
                    code=code,
                    description=description,
                    conversation_id=conversation_id,
                )
                if action is StaleAction.KEPT:
                    return payout
                if payout.status is PayoutStatus.ACCEPTED:
                    return change(work, payout, PayoutStatus.ACCEPTED, conversation_id=conversation_id)
                implied = payout.status is PayoutStatus.RECEIVED
            if payout.status is PayoutStatus.ACCEPTED or payout.is_final:
                return payout
            payout = change(
                work,
                payout,
                PayoutStatus.ACCEPTED,
                implied=implied,
                conversation_id=conversation_id or payout.conversation_id,
                response_code=code,
                response_desc=description,
                accepted_at=work.session.time(work.now),
            )
            outbox.emit_status(work, payout)
            return payout

    def mark_rejected(
        self,
        payout_id: str,
        *,
        attempt: int | None = None,
        reason: str,
        code: str | None,
        description: str | None,
        message: str,
    ) -> Payout:
        """Final: nothing was or will be paid. A no-op if the payout is already final (first final wins), and
        for a stale claim: a newer send may be paid."""
        with self._tx.write() as work:
            payout = lock_payout(work, payout_id)
            if fenced(work, payout, attempt, SendAnswer.REJECTED, code=code, description=description):
                return payout
            if payout.is_final:
                return payout
            payout = change(
                work,
                payout,
                PayoutStatus.REJECTED,
                response_code=code,
                response_desc=description,
                reason=reason,
                message=message,
                finalised_at=work.session.time(work.now),
            )
            outbox.emit_status(work, payout, message=message)
            return payout

    def mark_unknown(
        self,
        payout_id: str,
        *,
        attempt: int | None = None,
        reason: str,
        code: str | None,
        description: str | None,
        message: str | None = None,
    ) -> Payout:
        """We do not know whether it was paid; a no-op if already ``unknown``, ``accepted`` (an acceptance of
        the same OriginatorConversationID, by an earlier send, says more than this send's silence) or final,
        and for a stale claim."""
        with self._tx.write() as work:
            payout = lock_payout(work, payout_id)
            if fenced(work, payout, attempt, SendAnswer.UNKNOWN, code=code, description=description):
                return payout
            if payout.status in (PayoutStatus.UNKNOWN, PayoutStatus.ACCEPTED) or payout.is_final:
                return payout
            payout = change(
                work,
                payout,
                PayoutStatus.UNKNOWN,
                response_code=code,
                response_desc=description,
                reason=reason,
                message=message,
            )
            outbox.emit_status(work, payout, message=message)
            return payout

    def mark_not_sent(
        self, payout_id: str, *, attempt: int | None = None, code: str | None, description: str | None
    ) -> Payout:
        """``sending`` back to ``received``: M-PESA certainly did not process it (no event). Else a no-op, and
        for a stale claim: the newer claim's send is under way, the payout is its sender's."""
        with self._tx.write() as work:
            payout = lock_payout(work, payout_id)
            if fenced(work, payout, attempt, SendAnswer.NOT_PROCESSED, code=code, description=description):
                return payout
            if payout.status is not PayoutStatus.SENDING:
                return payout
            return change(
                work,
                payout,
                PayoutStatus.RECEIVED,
                response_code=code,
                response_desc=description,
            )

    def get(self, payout_id: str) -> Payout | None:
        return self._find_one("payout_id", payout_id)

    def since_change(self, payout_id: str) -> tuple[Payout, float] | None:
        """The payout and the seconds since it last changed, on the database's clock (the one that stamped
        ``updated_at``): how long a send lease has run, whichever host asks."""
        with self._tx.read() as session:
            row = session.one("SELECT * FROM payouts WHERE payout_id = ?", payout_id)
            if row is None:
                return None
            now = database_now(session)
            payout = load(session.engine, row)
            return payout, (now - payout.updated_at).total_seconds()

    def count_by_status(self) -> dict[str, int]:
        """Every status, zeros included (a gauge per status must not vanish when it drops to none)."""
        with self._tx.read() as session:
            rows = session.all("SELECT status, COUNT(*) AS n FROM payouts GROUP BY status")
        counts = {str(status): 0 for status in PayoutStatus}
        counts.update({str(row["status"]): int(row["n"]) for row in rows})
        return counts

    def list_payouts(self, status: PayoutStatus | None = None, limit: int = 100) -> list[Payout]:
        """Least recently changed first: the payouts waiting longest (what a lookup sweep wants)."""
        where = "" if status is None else " WHERE status = ?"
        params: list[Any] = [] if status is None else [str(PayoutStatus(status))]
        with self._tx.read() as session:
            rows = session.all(
                f"SELECT * FROM payouts{where} ORDER BY updated_at, payout_id LIMIT ?",  # noqa: S608
                *params,
                limit,
            )
            return [load(session.engine, row) for row in rows]

    def _find_one(self, column: str, value: str) -> Payout | None:
        assert column in _LOOKUP_COLUMNS
        with self._tx.read() as session:
            row = session.one(
                f"SELECT * FROM payouts WHERE {column} = ? ORDER BY created_at LIMIT 1",  # noqa: S608
                value,
            )
            return None if row is None else load(session.engine, row)
