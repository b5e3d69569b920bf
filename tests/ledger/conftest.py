"""Fixtures for the ledger tests: every test runs against both engines, on real databases.

SQLite lives in ``tmp_path``; PostgreSQL (127.0.0.1:5432, trust auth) gets the suite's fresh database per
test (``postgres_url``), dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.commands import make_command
from tests.support.ledger import Database, ocid
from worker.ledger import Ledger
from worker.settings import load_settings


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        env = {
            "B2C_DATA_DIR": str(tmp_path),
            "B2C_SQLITE_PATH": str(tmp_path / "nested" / "dir" / "ledger.db"),
        }
        yield Database("sqlite", load_settings(env).ledger)
        return
    url: str = request.getfixturevalue("postgres_url")
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
