"""Fixtures shared by the integration tests: real RabbitMQ and PostgreSQL on loopback, unique names, cleanup."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg
import pytest

from worker.amqp.topology import delay_queue_name
from worker.settings import LedgerSettings, Settings, load_settings

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    try:
        pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL + "?connection_attempts=1")).close()
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"RabbitMQ must run at {RABBITMQ_URL} for these tests: {exc}")
    return RABBITMQ_URL


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"b2c_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def amqp_names(rabbitmq_url: str) -> Iterator[dict[str, str]]:
    """Unique queue and exchange names for one test, deleted afterwards."""
    run = uuid.uuid4().hex[:10]
    names = {
        "B2C_AMQP_URL": rabbitmq_url,
        "B2C_COMMAND_QUEUE": f"test.{run}.commands",
        "B2C_DEAD_QUEUE": f"test.{run}.dead",
        "B2C_EVENTS_EXCHANGE": f"test.{run}.events",
    }
    yield names
    with contextlib.suppress(pika.exceptions.AMQPError):
        connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
        channel = connection.channel()
        # Delay tiers (worker.flow.deferral) exist only if the test deferred a command: deleting is a no-op otherwise.
        for seconds in load_settings({}).flow.retry_delays:
            channel.queue_delete(delay_queue_name(names["B2C_COMMAND_QUEUE"], seconds))
        channel.queue_delete(names["B2C_COMMAND_QUEUE"])
        channel.queue_delete(names["B2C_DEAD_QUEUE"])
        channel.exchange_delete(names["B2C_EVENTS_EXCHANGE"])
        connection.close()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The ledger backend under test: every pipeline test runs against both engines."""
    if request.param == "sqlite":
        return {"B2C_SQLITE_PATH": str(tmp_path / "ledger.sqlite3")}
    url: str = request.getfixturevalue("postgres_url")
    return {"B2C_DATABASE_URL": url}


def fast_settings_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a test's settings: isolated data dir and certificate, fast timeouts."""
    return {
        "B2C_DATA_DIR": str(tmp_path / "data"),
        "B2C_CERT_PATH": str(tmp_path / "data" / "sim-cert.pem"),
        "B2C_READ_TIMEOUT": "5",
        "B2C_CONNECT_TIMEOUT": "2",
        "B2C_RETRY_MAX_SECONDS": "3",
        "B2C_OUTBOX_INTERVAL": "0.5",
    }


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test (``fast_settings_env``), with overrides."""

    def build(**env: str) -> Settings:
        return load_settings({**fast_settings_env(tmp_path), **env})

    return build


def table_rows(ledger: LedgerSettings, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Read the ledger's tables directly (what was stored, whatever the ledger's API says); ``?`` placeholders."""
    if ledger.database_url is None:
        conn = sqlite3.connect(ledger.sqlite_path)
        try:
            cursor = conn.execute(sql, params)
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            conn.close()
    with psycopg.connect(ledger.database_url) as pg:
        cur = pg.execute(sql.replace("?", "%s"), params)
        names = [column.name for column in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
