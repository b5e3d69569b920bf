"""The durable ledger: the source of truth of every payout's status, with a transactional outbox.

A payout is recorded before anything is sent, every status change is a compare-and-set that stores its
event in the same transaction, and every result callback body is kept. The relay publishes the outbox at
least once (consumers de-duplicate by ``event_id``). Two engines, one SQL implementation: SQLite (embedded
default) and PostgreSQL (several replicas may share it).
"""

from __future__ import annotations

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
from worker.ledger.model import (
    ApplyOutcome,
    Ledger,
    OutboxEvent,
    QuarantinedResult,
    QuarantineState,
    Recorded,
    RecordOutcome,
    ResultApplied,
)
from worker.ledger.postgres import PostgresEngine
from worker.ledger.sqlite import SqliteEngine
from worker.ledger.store import SqlLedger
from worker.settings import LedgerSettings

__all__ = [
    "ApplyOutcome",
    "FlagReason",
    "Ledger",
    "LookupAction",
    "LookupState",
    "LookupTask",
    "LookupTrigger",
    "OutboxEvent",
    "QuarantineState",
    "QuarantinedResult",
    "QueueTimeoutApplied",
    "RecordOutcome",
    "Recorded",
    "ResultApplied",
    "SqlLedger",
    "StatusQuery",
    "open_ledger",
    "status_query_id",
]


def open_ledger(settings: LedgerSettings) -> Ledger:
    """PostgreSQL when ``database_url`` is set, else SQLite at ``sqlite_path``; the schema is made ready."""
    if settings.database_url:
        return SqlLedger.open(PostgresEngine(settings.database_url))
    return SqlLedger.open(SqliteEngine(settings.sqlite_path))
