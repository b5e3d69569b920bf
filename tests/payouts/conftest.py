"""Fixtures for the payout model tests: the shipped JSON schemas, loaded the way the worker reads JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.support import commands
from worker.payouts.models import (
    Payout,
    PayoutCommand,
    PayoutStatus,
    originator_conversation_id,
)
from worker.resources import schema_path


def load_validator(name: str) -> Draft202012Validator:
    # Fractions are read as Decimal (instances too, via loads_json), so multipleOf 0.01 is checked exactly,
    # as the parser does; integers stay int because the metaschema wants integer lengths.
    schema = json.loads(schema_path(name).read_bytes(), parse_float=Decimal)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture(scope="session")
def command_validator() -> Draft202012Validator:
    return load_validator("payout-command.schema.json")


@pytest.fixture(scope="session")
def event_validator() -> Draft202012Validator:
    return load_validator("payout-event.schema.json")


@pytest.fixture(scope="session")
def refusal_validator() -> Draft202012Validator:
    return load_validator("command-refused.schema.json")


CREATED = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)


def _make_command(**changes: Any) -> PayoutCommand:
    # A fixed id, and metadata as the worker reads JSON (fractions and all as Decimal).
    fields: dict[str, Any] = {"payout_id": "inv-42", "metadata": {"order": Decimal("42")}, **changes}
    return commands.make_command(**fields)


def _make_payout(command: PayoutCommand | None = None, **changes: Any) -> Payout:
    command = command or _make_command()
    fields: dict[str, Any] = {
        "payout_id": command.payout_id,
        "command": command,
        "fingerprint": command.fingerprint(),
        "originator_conversation_id": originator_conversation_id("600000", "mpesab2c", command.payout_id),
        "status": PayoutStatus.ACCEPTED,
        "conversation_id": "AG_20240501_0000abc",
        "send_attempts": 1,
        "response_code": "0",
        "response_desc": "Accept the service request successfully.",
        "result_code": None,
        "result_desc": None,
        "receipt": None,
        "reason": None,
        "created_at": CREATED,
        "updated_at": CREATED + timedelta(seconds=2),
        "final_details": None,
    }
    fields.update(changes)
    return Payout(**fields)


@pytest.fixture(scope="session")
def make_command() -> Callable[..., PayoutCommand]:
    """A valid command; keyword arguments override fields."""
    return _make_command


@pytest.fixture(scope="session")
def make_payout() -> Callable[..., Payout]:
    """A ledger row (accepted by default) for a command; keyword arguments override fields."""
    return _make_payout
