"""Opening the ledger: automatic schema creation, concurrent opens, reopening, closing."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.commands import make_command
from tests.support.ledger import Database, ocid
from worker.errors import LedgerError
from worker.ledger import Ledger, RecordOutcome, open_ledger
from worker.ledger.schema import LATEST_VERSION, MIGRATIONS
from worker.settings import load_settings

TABLES = {"payouts", "outbox", "results", "invalid_commands", "schema_version"}


def _tables(database: Database) -> set[str]:
    if database.kind == "sqlite":
        rows = database.query("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = database.query(
            "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    return {str(row["name"]) for row in rows}


def test_concurrent_opens_create_the_schema_once(database: Database) -> None:
    barrier = threading.Barrier(6)

    def open_at_once(_: int) -> Ledger:
        barrier.wait(timeout=30)
        return database.open()

    with ThreadPoolExecutor(max_workers=6) as pool:
        ledgers = list(pool.map(open_at_once, range(6)))
    try:
        assert _tables(database) >= TABLES
        applied = database.query("SELECT version FROM schema_version ORDER BY version")
        assert applied == [{"version": version} for version, _ in MIGRATIONS]
        assert applied[-1] == {"version": LATEST_VERSION}
        command = make_command()
        outcomes = {ledger.payouts.record(command, ocid(command.payout_id)).outcome for ledger in ledgers}
        assert outcomes == {RecordOutcome.NEW, RecordOutcome.DUPLICATE}
    finally:
        for ledger in ledgers:
            ledger.close()


def test_reopening_keeps_everything(database: Database) -> None:
    command = make_command()
    first = database.open()
    first.payouts.record(command, ocid(command.payout_id))
    first.payouts.claim_send(command.payout_id, expected_attempts=0)
    first.close()

    second = database.open()
    try:
        stored = second.payouts.get(command.payout_id)
        assert stored is not None and stored.send_attempts == 1
        assert len(database.query("SELECT version FROM schema_version")) == len(MIGRATIONS)
    finally:
        second.close()


def test_sqlite_file_is_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there" / "ledger.sqlite3"
    ledger = open_ledger(load_settings({"B2C_DATA_DIR": str(tmp_path), "B2C_SQLITE_PATH": str(path)}).ledger)
    try:
        assert path.is_file()
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            conn.close()
    finally:
        ledger.close()


def test_closed_ledger_refuses_work(database: Database) -> None:
    ledger = database.open()
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.payouts.get("anything")


def test_unreachable_postgres_is_a_ledger_error() -> None:
    settings = load_settings(
        {"B2C_DATA_DIR": "/nonexistent", "B2C_DATABASE_URL": "postgresql://postgres:secret@127.0.0.1:1/none"}
    ).ledger
    with pytest.raises(LedgerError, match="cannot connect") as failure:
        open_ledger(settings)
    assert "secret" not in str(failure.value)
