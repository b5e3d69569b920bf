"""The durable ledger: the source of truth of every payout's status, with a transactional outbox.

A payout is recorded before anything is sent, every status change is a compare-and-set that stores its
event in the same transaction, and every result callback body is kept. The relay publishes the outbox at
least once (consumers de-duplicate by ``event_id``). Two engines, one SQL implementation: SQLite (embedded
default) and PostgreSQL (several replicas may share it).

One store per table family, all over one pool and one transaction helper
(:mod:`worker.ledger.transaction`); a :class:`Ledger` holds them. Callers take the narrow protocol next
to the store they use (e.g. :class:`~worker.ledger.outbox.EventOutbox`), not the whole ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from worker.ledger.engine import Engine
from worker.ledger.flow_state import FlowStore
from worker.ledger.lookup_store import LookupStore
from worker.ledger.lookups import (
    FlagReason,
    LookupAction,
    LookupState,
    LookupTask,
    LookupTrigger,
    QueryResponse,
    QueueTimeoutApplied,
    StatusQuery,
    status_query_id,
)
from worker.ledger.model import (
    ApplyOutcome,
    Disposition,
    OutboxEvent,
    QuarantinedResult,
    QuarantineState,
    Recorded,
    RecordOutcome,
    ResultApplied,
)
from worker.ledger.outbox import OutboxStore
from worker.ledger.payout_store import PayoutStore
from worker.ledger.postgres import PostgresEngine
from worker.ledger.quarantine import QuarantineStore
from worker.ledger.result_store import ResultStore
from worker.ledger.sqlite import SqliteEngine
from worker.ledger.transaction import Transactions, utcnow
from worker.settings import LedgerSettings

__all__ = [
    "ApplyOutcome",
    "Disposition",
    "FlagReason",
    "Ledger",
    "LookupAction",
    "LookupState",
    "LookupTask",
    "LookupTrigger",
    "OutboxEvent",
    "QuarantineState",
    "QuarantinedResult",
    "QueryResponse",
    "QueueTimeoutApplied",
    "RecordOutcome",
    "Recorded",
    "ResultApplied",
    "StatusQuery",
    "open_ledger",
    "status_query_id",
]


class Ledger:
    """The stores of one database, sharing its pool; safe to use from many threads (on PostgreSQL, from
    many processes). Each store's public methods are one transaction each."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx
        self.payouts = PayoutStore(tx)
        self.results = ResultStore(tx)
        self.lookups = LookupStore(tx)
        self.outbox = OutboxStore(tx)
        self.quarantine = QuarantineStore(tx)
        self.flow = FlowStore(tx)

    @classmethod
    def open(cls, engine: Engine[Any], *, clock: Callable[[], datetime] = utcnow) -> Ledger:
        """Connect and bring the schema up to date (safe when several processes do it at once)."""
        return cls(Transactions.open(engine, clock=clock))

    def close(self) -> None:
        self._tx.close()


def open_ledger(settings: LedgerSettings) -> Ledger:
    """PostgreSQL when ``database_url`` is set, else SQLite at ``sqlite_path``; the schema is made ready."""
    if settings.database_url:
        return Ledger.open(PostgresEngine(settings.database_url))
    return Ledger.open(SqliteEngine(settings.sqlite_path))
