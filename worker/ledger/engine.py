"""The seam between the one SQL implementation of the ledger and the two databases it runs on.

Everything that differs between SQLite and PostgreSQL lives in an :class:`Engine`: how to connect, the
placeholder style, a few DDL words, row locking and the statement that opens a write transaction. The
ledger's queries are written once, with ``?`` placeholders, against :class:`Session`.

Connections are pooled (:class:`Database`): a thread borrows one for the length of a transaction and gives
it back, so the worker's threads never share a connection, and a connection that broke is thrown away
instead of being handed to the next caller.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from worker.errors import LedgerError

C = TypeVar("C")

Row = dict[str, Any]


class Engine(ABC, Generic[C]):
    """One database's dialect and connection factory; stateless apart from its configuration."""

    name: str
    serial_pk: str
    timestamp_type: str
    blob_type: str
    numeric_type: str
    for_update: str
    skip_locked: str
    begin_write: str
    driver_errors: tuple[type[Exception], ...]

    @abstractmethod
    def connect(self) -> C: ...

    @abstractmethod
    def execute(self, conn: C, sql: str, params: Sequence[Any]) -> tuple[list[Row], int]:
        """Run one statement; return its rows (empty when it returns none) and its row count."""

    @abstractmethod
    def is_usable(self, conn: C) -> bool: ...

    @abstractmethod
    def in_transaction(self, conn: C) -> bool: ...

    @abstractmethod
    def close_connection(self, conn: C) -> None: ...

    @abstractmethod
    def lock_schema(self, session: Session[C]) -> None:
        """Serialise schema creation between processes; called first inside the migration transaction."""

    def to_db_time(self, value: datetime) -> object:
        return value.astimezone(UTC)

    def from_db_time(self, value: object) -> datetime:
        if isinstance(value, datetime):
            return value.astimezone(UTC)
        if isinstance(value, str):
            return datetime.fromisoformat(value).astimezone(UTC)
        raise LedgerError(f"unexpected timestamp value of type {type(value).__name__}")

    def ddl(self, template: str) -> str:
        return template.format(
            serial_pk=self.serial_pk,
            ts=self.timestamp_type,
            blob=self.blob_type,
            numeric=self.numeric_type,
        )


class Session(Generic[C]):
    """One connection inside one transaction, with the three ways the ledger runs a statement."""

    def __init__(self, engine: Engine[C], conn: C) -> None:
        self.engine = engine
        self._conn = conn

    def all(self, sql: str, *params: Any) -> list[Row]:
        return self.engine.execute(self._conn, sql, params)[0]

    def one(self, sql: str, *params: Any) -> Row | None:
        rows = self.engine.execute(self._conn, sql, params)[0]
        return rows[0] if rows else None

    def run(self, sql: str, *params: Any) -> int:
        return self.engine.execute(self._conn, sql, params)[1]

    def time(self, value: datetime) -> object:
        return self.engine.to_db_time(value)


class Database(Generic[C]):
    """A small thread-safe connection pool that hands out whole transactions."""

    def __init__(self, engine: Engine[C], *, max_idle: int = 32) -> None:
        self.engine = engine
        self._max_idle = max_idle
        self._idle: list[C] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Session[C]]:
        """Commit when the block ends, roll back when it raises; driver errors become LedgerError."""
        conn = self._acquire()
        healthy = True
        try:
            self.engine.execute(conn, self.engine.begin_write if write else "BEGIN", ())
            yield Session(self.engine, conn)
            self.engine.execute(conn, "COMMIT", ())
        except BaseException as exc:
            healthy = self._rollback(conn)
            if isinstance(exc, self.engine.driver_errors):
                raise LedgerError(f"{self.engine.name} ledger: {exc}") from exc
            raise
        finally:
            self._release(conn, healthy=healthy)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self.engine.close_connection(conn)

    def _acquire(self) -> C:
        with self._lock:
            if self._closed:
                raise LedgerError("the ledger is closed")
            while self._idle:
                conn = self._idle.pop()
                if self.engine.is_usable(conn):
                    return conn
                self.engine.close_connection(conn)
        try:
            return self.engine.connect()
        except self.engine.driver_errors as exc:
            raise LedgerError(f"{self.engine.name} ledger: cannot connect: {exc}") from exc

    def _release(self, conn: C, *, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        self.engine.close_connection(conn)

    def _rollback(self, conn: C) -> bool:
        """Leave the connection outside any transaction; False when it cannot be trusted any more."""
        try:
            if self.engine.in_transaction(conn):
                self.engine.execute(conn, "ROLLBACK", ())
        except self.engine.driver_errors:
            return False
        return self.engine.is_usable(conn)
