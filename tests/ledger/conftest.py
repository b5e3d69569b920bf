"""Fixtures for the ledger tests: every test runs against both engines, on real databases.

SQLite lives in ``tmp_path``; PostgreSQL (127.0.0.1:5432, trust auth) gets a fresh schema per test,
selected through the connection's ``search_path`` and dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from ledger_helpers import Database, make_command, ocid

from tests.conftest import POSTGRES_ADMIN_URL
from worker.ledger import Ledger
from worker.settings import load_settings


@contextmanager
def _postgres_schema() -> Iterator[str]:
    schema = f"ledger_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        env = {
            "B2C_DATA_DIR": str(tmp_path),
            "B2C_SQLITE_PATH": str(tmp_path / "nested" / "dir" / "ledger.db"),
        }
        yield Database("sqlite", load_settings(env).ledger)
        return
    with _postgres_schema() as schema:
        url = f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}"
        env = {"B2C_DATA_DIR": str(tmp_path), "B2C_DATABASE_URL": url}
        yield Database("postgresql", load_settings(env).ledger)


@pytest.fixture
def ledger(database: Database) -> Iterator[Ledger]:
    opened = database.open()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def new_payout(ledger: Ledger) -> Callable[..., str]:
    """Record a fresh payout and return its id."""

    def create(**overrides: Any) -> str:
        command = make_command(**overrides)
        ledger.payouts.record(command, ocid(command.payout_id))
        return command.payout_id

    return create
