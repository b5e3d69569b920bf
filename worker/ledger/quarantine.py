"""The quarantine: results kept aside unapplied, for people to review (``mpesa-b2c dead list --quarantine``).

An entry is written in the same transaction as the result's row in ``results`` (disposition
``quarantined``, ``unmatched`` or ``unparsable``), so a quarantined result is as durable as an applied one and
M-PESA can be answered "success". Entries are never deleted: review only moves them from ``held`` to ``dropped`` (looked
at, not applied) or ``released`` (applied after an operator confirmed the result with M-PESA).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.errors import LedgerError
from worker.ledger.engine import Row, Session
from worker.ledger.model import QuarantinedResult, QuarantineState
from worker.ledger.transaction import Transactions
from worker.protocol.result import Result

# A callback body that could not be read as a result at all (the other reasons are worker.payouts.matching's).
REASON_UNPARSABLE = "unparsable"
_DETAIL_LENGTH = 1000
_COLUMNS = (
    "id, received_at, raw, reason, detail, payout_id, originator_conversation_id, conversation_id,"
    " result_code, state, resolved_at, resolution"
)


def insert(
    session: Session[Any],
    now: datetime,
    raw: bytes,
    result: Result | None,
    *,
    payout_id: str | None,
    reason: str,
    detail: str,
) -> int:
    """The new entry's id; ``result`` None: the body could not be parsed, so only it and why are known."""
    row = session.one(
        "INSERT INTO quarantine (received_at, raw, reason, detail, payout_id, originator_conversation_id,"
        " conversation_id, result_code, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        session.time(now),
        bytes(raw),
        reason,
        detail[:_DETAIL_LENGTH],
        payout_id,
        None if result is None else result.originator_conversation_id,
        None if result is None else result.conversation_id,
        None if result is None else result.code,
        str(QuarantineState.HELD),
    )
    assert row is not None
    return int(row["id"])


def load(session: Session[Any], row: Row) -> QuarantinedResult:
    resolved = row["resolved_at"]
    return QuarantinedResult(
        id=int(row["id"]),
        received_at=session.engine.from_db_time(row["received_at"]),
        raw=bytes(row["raw"]),
        reason=str(row["reason"]),
        detail=str(row["detail"]),
        payout_id=row["payout_id"],
        originator_conversation_id=row["originator_conversation_id"],
        conversation_id=row["conversation_id"],
        result_code=row["result_code"],
        state=QuarantineState(row["state"]),
        resolved_at=None if resolved is None else session.engine.from_db_time(resolved),
        resolution=row["resolution"],
    )


def lock_held(session: Session[Any], quarantine_id: int) -> QuarantinedResult:
    """The entry, locked for this transaction; LedgerError unless it exists and is still ``held``."""
    row = session.one(
        f"SELECT {_COLUMNS} FROM quarantine WHERE id = ?" + session.engine.for_update,  # noqa: S608
        int(quarantine_id),
    )
    if row is None:
        raise LedgerError(f"no quarantined result q:{quarantine_id}")
    entry = load(session, row)
    if entry.state is not QuarantineState.HELD:
        raise LedgerError(f"quarantined result q:{quarantine_id} is already {entry.state}")
    return entry


def resolve(session: Session[Any], now: datetime, quarantine_id: int, state: QuarantineState, note: str) -> None:
    session.run(
        "UPDATE quarantine SET state = ?, resolved_at = ?, resolution = ? WHERE id = ? AND state = ?",
        str(state),
        session.time(now),
        note[:_DETAIL_LENGTH],
        int(quarantine_id),
        str(QuarantineState.HELD),
    )


class QuarantineStore:
    """The read and drop side of the quarantine (``mpesa-b2c dead``); releasing applies a result, so it is
    :meth:`worker.ledger.result_store.ResultStore.release_quarantined`."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def entries(self, *, include_resolved: bool = False, limit: int = 100) -> list[QuarantinedResult]:
        """Quarantined results, oldest first; only those still ``held`` unless ``include_resolved``."""
        where = "" if include_resolved else " WHERE state = ?"
        params: list[Any] = [] if include_resolved else [str(QuarantineState.HELD)]
        with self._tx.read() as session:
            rows = session.all(
                f"SELECT {_COLUMNS} FROM quarantine{where} ORDER BY id LIMIT ?",  # noqa: S608
                *params,
                limit,
            )
            return [load(session, row) for row in rows]

    def get(self, quarantine_id: int) -> QuarantinedResult | None:
        with self._tx.read() as session:
            row = session.one(f"SELECT {_COLUMNS} FROM quarantine WHERE id = ?", int(quarantine_id))  # noqa: S608
            return None if row is None else load(session, row)

    def drop(self, quarantine_id: int, *, note: str) -> QuarantinedResult:
        """Mark a held entry ``dropped`` (reviewed, not applied; its body is kept). LedgerError if not held."""
        with self._tx.write() as work:
            lock_held(work.session, quarantine_id)
            resolve(work.session, datetime.now(UTC), quarantine_id, QuarantineState.DROPPED, note)
            row = work.session.one(f"SELECT {_COLUMNS} FROM quarantine WHERE id = ?", int(quarantine_id))  # noqa: S608
            assert row is not None
            return load(work.session, row)
