"""The outbox: every event, stored in the transaction of the change it describes, until the relay publishes it.

Events are written only through :func:`emit` inside a :class:`~worker.ledger.transaction.Work`, so an event
exists exactly when its transition does. The relay publishes at least once; consumers de-duplicate by
``event_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

from worker.ledger.engine import Row
from worker.ledger.model import OutboxEvent
from worker.ledger.transaction import Transactions, Work
from worker.payouts.models import COMMAND_REFUSED_KEY, Payout, build_event, canonical_json, event_routing_key

_MARK_CHUNK = 500
_CLAIM_SQL = (
    "SELECT id, event_id, payout_id, routing_key, body FROM outbox WHERE published_at IS NULL"
    " AND created_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?){for_payout} ORDER BY id LIMIT ?"
)


class OutboxBacklog(Protocol):
    """What health checks and gauges read."""

    def backlog(self) -> int: ...


class EventOutbox(OutboxBacklog, Protocol):
    """What the outbox relay needs."""

    def claim(
        self,
        limit: int = 100,
        older_than_seconds: float = 0.0,
        lease_seconds: float = 60.0,
        payout_id: str | None = None,
    ) -> list[OutboxEvent]: ...

    def release(self, ids: Sequence[int]) -> None: ...

    def mark_published(self, ids: Sequence[int]) -> None: ...


def emit(work: Work, event: dict[str, Any]) -> None:
    _store(work, event, event_routing_key(event["status"]))


def emit_refusal(work: Work, refusal: dict[str, Any]) -> None:
    """A :func:`~worker.payouts.models.build_refusal` event: routed apart from the payout's own events."""
    _store(work, refusal, COMMAND_REFUSED_KEY)


def _store(work: Work, event: dict[str, Any], routing_key: str) -> None:
    work.session.run(
        "INSERT INTO outbox (event_id, payout_id, routing_key, body, created_at) VALUES (?, ?, ?, ?, ?)",
        event["event_id"],
        event["payout_id"],
        routing_key,
        canonical_json(event),
        work.session.time(work.now),
    )


def emit_status(work: Work, payout: Payout, **kwargs: Any) -> None:
    emit(work, build_event(payout, status=payout.status, now=work.now, **kwargs))


class OutboxStore:
    """The ``outbox`` table as the relay sees it; every method is one transaction."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def pending(self, limit: int = 100, payout_id: str | None = None) -> list[OutboxEvent]:
        """Unpublished events, oldest first (of one payout, or all); does not look at relay leases."""
        where = "published_at IS NULL" + ("" if payout_id is None else " AND payout_id = ?")
        params: list[Any] = [] if payout_id is None else [payout_id]
        with self._tx.read() as session:
            rows = session.all(
                f"SELECT id, event_id, payout_id, routing_key, body FROM outbox WHERE {where}"  # noqa: S608
                " ORDER BY id LIMIT ?",
                *params,
                limit,
            )
        return [_outbox_event(row) for row in rows]

    def claim(
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
        with self._tx.write() as work:
            session, now = work.session, work.now
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

    def release(self, ids: Sequence[int]) -> None:
        """Give claimed rows back at once (their publish failed), instead of waiting out the lease."""
        if not ids:
            return
        with self._tx.write() as work:
            _update_unpublished(work, "claimed_until = NULL", (), ids)

    def mark_published(self, ids: Sequence[int]) -> None:
        """The broker confirmed these events; a repeated or unknown id is ignored."""
        if not ids:
            return
        with self._tx.write() as work:
            _update_unpublished(work, "published_at = ?", (work.session.time(work.now),), ids)

    def backlog(self) -> int:
        with self._tx.read() as session:
            row = session.one("SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL")
        return 0 if row is None else int(row["n"])


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


def _update_unpublished(work: Work, assignment: str, values: tuple[object, ...], ids: Sequence[int]) -> None:
    """``UPDATE outbox SET <assignment>`` on the still unpublished rows among ``ids``, in bounded chunks."""
    for start in range(0, len(ids), _MARK_CHUNK):
        chunk = [int(value) for value in ids[start : start + _MARK_CHUNK]]
        work.session.run(
            f"UPDATE outbox SET {assignment} WHERE published_at IS NULL"  # noqa: S608 - fixed text, placeholders
            f" AND id IN ({_marks(len(chunk))})",
            *values,
            *chunk,
        )
