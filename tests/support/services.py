"""The real services the integration tests use: RabbitMQ and PostgreSQL on loopback, unique names, cleanup.

A test that uses one is marked ``integration``. When the service does not answer, the test is skipped with
the reason on a developer's machine and fails under CI (``CI=true``), where a silent skip would hide it.
The same goes for external programs such as ``promtool`` (``require_program``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pika
import pika.exceptions
import psycopg
import pytest

from worker.amqp.topology import delay_queue_name
from worker.settings import load_settings

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVICE_FIXTURES = ("rabbitmq_url", "postgres_admin_url")
# Delay tiers a test's worker may have declared: the defaults and the short ones tests/flow configures.
DELAY_TIERS = (0.2, 0.5, *load_settings({}).flow.retry_delays)
HOW_TO_START = "start it (README, Testing; .ci/run starts both)"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer's machine, fail under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing service is a failure)")
    pytest.skip(reason)


def find_program(name: str) -> str | None:
    """On PATH or beside the running interpreter (the venv's bin/), so an unactivated venv works."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def require_program(name: str, install: str) -> str:
    path = find_program(name)
    if path is None:
        unavailable(f"{name} is not installed ({install})")
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses a service fixture, directly or through another fixture, is ``integration``."""
    for item in items:
        if any(name in SERVICE_FIXTURES for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    params = pika.URLParameters(RABBITMQ_URL)
    params.connection_attempts = 1
    params.socket_timeout = 5
    try:
        pika.BlockingConnection(params).close()
    except (pika.exceptions.AMQPError, OSError) as exc:
        unavailable(f"RabbitMQ is not reachable on 127.0.0.1:5672 ({exc!r}): {HOW_TO_START}")
    return RABBITMQ_URL


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    try:
        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc}): {HOW_TO_START}")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"b2c_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class QueueNames:
    """Unique queue and exchange names for one test; ``delete`` removes every one handed out."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.token = uuid.uuid4().hex[:10]
        self.issued: list[str] = []

    def __call__(self, kind: str) -> str:
        value = f"test.{self.token}.{kind}"
        self.issued.append(value)
        return value

    def delete(self) -> None:
        """Each name as a queue (with the delay tiers a worker may have made for it) and as an exchange.

        A failed delete closes the channel (a broker refuses some), so the channel is reopened after one.
        """
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            try:
                channel = connection.channel()
                for value in self.issued:
                    for queue in (value, *(delay_queue_name(value, seconds) for seconds in DELAY_TIERS)):
                        channel = channel if channel.is_open else connection.channel()
                        with contextlib.suppress(pika.exceptions.AMQPError):
                            channel.queue_delete(queue)
                    channel = channel if channel.is_open else connection.channel()
                    with contextlib.suppress(pika.exceptions.AMQPError):
                        channel.exchange_delete(value)
            finally:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()


@pytest.fixture
def queue_names(rabbitmq_url: str) -> Iterator[QueueNames]:
    """``queue_names("cmd")`` gives a unique queue/exchange name; every name handed out is deleted afterwards."""
    names = QueueNames(rabbitmq_url)
    yield names
    names.delete()


@pytest.fixture
def amqp_names(rabbitmq_url: str, queue_names: QueueNames) -> dict[str, str]:
    """The B2C_* settings of one test's broker names (commands, dead letters, events), deleted afterwards."""
    return {
        "B2C_AMQP_URL": rabbitmq_url,
        "B2C_COMMAND_QUEUE": queue_names("commands"),
        "B2C_DEAD_QUEUE": queue_names("dead"),
        "B2C_EVENTS_EXCHANGE": queue_names("events"),
    }


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def ledger_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The ledger backend under test: every pipeline test runs against both engines."""
    if request.param == "sqlite":
        return {"B2C_SQLITE_PATH": str(tmp_path / "ledger.sqlite3")}
    url: str = request.getfixturevalue("postgres_url")
    return {"B2C_DATABASE_URL": url}
