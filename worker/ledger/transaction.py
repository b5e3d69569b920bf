"""The ledger's one transaction helper, shared by every store (see :mod:`worker.ledger.engine` for the pool).

A write is a :class:`Work`: one transaction on one connection with one clock reading, plus what to do once
it commits (metrics that must not count a change that was rolled back). Stores never commit: they take the
``Work`` they are given, so a change that spans two table families (a payout row and its outbox event; a
result stored and applied) is one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker import metrics
from worker.ledger.engine import Database, Engine, Session
from worker.ledger.schema import migrate
from worker.payouts.models import FINAL_STATUSES, Payout, PayoutStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Work:
    """One write transaction: the session, its one ``now``, and what happens only once it commits."""

    session: Session[Any]
    now: datetime
    transitions: list[Payout] = field(default_factory=list)
    # Metric observations that need the state before a change; recorded only once the transaction commits.
    after_commit: list[Callable[[], None]] = field(default_factory=list)


class Transactions:
    """The pool and the clock: hands out write transactions (:class:`Work`) and read sessions."""

    def __init__(self, db: Database[Any], *, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    @classmethod
    def open(cls, engine: Engine[Any], *, clock: Callable[[], datetime] = utcnow) -> Transactions:
        """Connect and bring the schema up to date (safe when several processes do it at once)."""
        db: Database[Any] = Database(engine)
        try:
            with db.transaction() as session:
                migrate(session)
        except BaseException:
            db.close()
            raise
        return cls(db, clock=clock)

    @property
    def engine(self) -> Engine[Any]:
        return self.db.engine

    @contextmanager
    def write(self) -> Iterator[Work]:
        with self.db.transaction() as session:
            work = Work(session, self.clock())
            yield work
        _observe(work.transitions)
        for record in work.after_commit:
            record()

    @contextmanager
    def read(self) -> Iterator[Session[Any]]:
        with self.db.transaction(write=False) as session:
            yield session

    def close(self) -> None:
        self.db.close()


def _observe(transitions: list[Payout]) -> None:
    """Count committed transitions (only the ledger knows every one, e.g. the implied acceptance)."""
    for payout in transitions:
        metrics.PAYOUT_TRANSITIONS.labels(status=str(payout.status)).inc()
        if payout.status in FINAL_STATUSES:
            seconds = (payout.updated_at - payout.created_at).total_seconds()
            metrics.COMMAND_TO_FINAL_SECONDS.labels(status=str(payout.status)).observe(max(seconds, 0.0))
        if payout.status is PayoutStatus.FAILED:
            metrics.KES_FAILED.inc(float(payout.command.amount))
