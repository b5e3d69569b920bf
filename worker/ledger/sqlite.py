"""The embedded SQLite engine: one file, WAL, writers serialised by ``BEGIN IMMEDIATE``.

``BEGIN IMMEDIATE`` takes the write lock when a write transaction starts rather than at its first write,
so two threads can never both read a payout's status and then both change it; the busy timeout makes
the second one wait instead of failing. WAL lets readers run beside the one writer, and
``synchronous=FULL`` makes a commit durable before ``claim_send`` returns and the payment is sent.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.ledger.engine import Engine, Row, Session

BUSY_TIMEOUT_SECONDS = 30.0
_WAL_RETRY_SECONDS = 0.01


class SqliteEngine(Engine[sqlite3.Connection]):
    name = "sqlite"
    serial_pk = "INTEGER PRIMARY KEY AUTOINCREMENT"
    timestamp_type = "TEXT"
    blob_type = "BLOB"
    numeric_type = "TEXT"
    for_update = ""
    skip_locked = ""
    begin_write = "BEGIN IMMEDIATE"
    driver_errors = (sqlite3.Error,)

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        path.parent.mkdir(parents=True, exist_ok=True)

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch a new file to WAL, waiting out other first openers as long as the busy timeout allows.

        Changing the journal mode does not go through the busy handler: a concurrent opener's lock makes it
        fail at once with "database is locked", so it is retried here. Once the file is WAL (it stays so),
        nothing is switched and nothing can be locked.
        """
        deadline = time.monotonic() + self.busy_timeout
        while True:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() == "wal":
                return
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(_WAL_RETRY_SECONDS)

    def execute(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> tuple[list[Row], int]:
        cursor = conn.execute(sql, tuple(params))
        try:
            if cursor.description is None:
                return [], cursor.rowcount
            names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
            return rows, cursor.rowcount
        finally:
            cursor.close()

    def is_usable(self, conn: sqlite3.Connection) -> bool:
        try:
            conn.total_changes  # noqa: B018 - raises ProgrammingError once the connection is closed
        except sqlite3.ProgrammingError:
            return False
        return True

    def in_transaction(self, conn: sqlite3.Connection) -> bool:
        return conn.in_transaction

    def close_connection(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def lock_schema(self, session: Session[sqlite3.Connection]) -> None:
        """Nothing to do: the migration runs in a ``BEGIN IMMEDIATE`` transaction, which is the lock."""

    def to_db_time(self, value: datetime) -> object:
        return value.astimezone(UTC).isoformat(timespec="microseconds")
