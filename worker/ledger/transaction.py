"""The ledger's one transaction helper, shared by every store (see :mod:`worker.ledger.engine` for the pool).

A write is a :class:`Work`: one transaction on one connection with one clock reading, plus what to do once
it commits (metrics that must not count a change that was rolled back). Stores never commit: they take the
``Work`` they are given, so a change that spans two table families (a payout row and its outbox event; a
result stored and applied) is one transaction.

The clock reading is the database's (PostgreSQL's ``clock_timestamp()``; SQLite's own ``'now'``, the clock
of the one host the file lives on), never the process's: every ledger timestamp is stamped and compared on
one clock, so a worker whose host runs ahead cannot see a live send lease as run out, nor one running
behind stamp a lease that looks old to everyone else.
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

# The database's clock, to the microsecond on PostgreSQL and the millisecond on SQLite.
_NOW_SQL = {
    "postgresql": "SELECT clock_timestamp() AS now",
    "sqlite": "SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now') AS now",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def database_now(session: Session[Any]) -> datetime:
    """Now on the database's clock, the one every process sharing the ledger agrees on."""
    row = session.one(_NOW_SQL[session.engine.name])
    assert row is not None
    return session.engine.from_db_time(row["now"])


@dataclass
class Work:
    """One write transaction: the session, its one ``now``, and what happens only once it commits."""

    session: Session[Any]
    now: datetime
    transitions: list[Payout] = field(default_factory=list)
    # Metric observations that need the state before a change; recorded only once the transaction commits.
    after_commit: list[Callable[[], None]] = field(default_factory=list)


class Transactions:
    """The pool: hands out write transactions (:class:`Work`, stamped on the database's clock) and read
    sessions. ``clock`` is this process's own clock; nothing stored or compared with a stored time reads it
    (a test gives a process one that disagrees with the database's to show that)."""

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
            work = Work(session, database_now(session))
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
