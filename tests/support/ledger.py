"""Helpers for the ledger tests: builders for results, the outbox reader, a side door into the tables."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

import psycopg
from jsonschema import Draft202012Validator, FormatChecker

from worker.ledger import Ledger, open_ledger
from worker.payouts.models import COMMAND_REFUSED_KEY, originator_conversation_id
from worker.protocol.result import Result, build_result_envelope, parse_result_envelope
from worker.resources import schema_path
from worker.settings import LedgerSettings

SHORTCODE = "600000"
ORG = "mpesab2c"

_EVENT_VALIDATOR = Draft202012Validator(
    json.loads(schema_path("payout-event.schema.json").read_text()), format_checker=FormatChecker()
)
_REFUSAL_VALIDATOR = Draft202012Validator(
    json.loads(schema_path("command-refused.schema.json").read_text()), format_checker=FormatChecker()
)


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


@dataclass
class Database:
    """Where one test's ledger lives, with a side door for looking at its tables directly."""

    kind: str
    settings: LedgerSettings

    def open(self) -> Ledger:
        return open_ledger(self.settings)

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return table_rows(self.settings, sql, *params)

    def execute(self, sql: str, *params: Any) -> None:
        """Change the tables behind the ledger's back (e.g. a row as an older version wrote it); ``?`` placeholders."""
        if self.settings.database_url is None:
            conn = sqlite3.connect(self.settings.sqlite_path)
            try:
                with conn:
                    conn.execute(sql, params)
            finally:
                conn.close()
            return
        with psycopg.connect(self.settings.database_url) as pg:
            pg.execute(sql.replace("?", "%s"), params)


def ocid(payout_id: str) -> str:
    return originator_conversation_id(SHORTCODE, ORG, payout_id)


def result_body(
    *,
    code: str,
    originator: str | None,
    conversation_id: str | None = "AG_20240501_0000abc",
    receipt: str | None = "SE17ABCDEF",
    amount: str = "1500.00",
) -> bytes:
    parameters = {
        "TransactionAmount": amount,
        "TransactionCompletedDateTime": "01.05.2024 12:30:11",
        "ReceiverPartyPublicName": "254712345678 - Jane Doe",
        "B2CWorkingAccountAvailableFunds": "98500.00",
        "B2CUtilityAccountAvailableFunds": "48500.00",
        "B2CChargesPaidAccountAvailableFunds": "0.00",
        "B2CRecipientIsRegisteredCustomer": "Y",
    }
    if receipt is not None:
        parameters["TransactionReceipt"] = receipt
    return build_result_envelope(
        code=code,
        description=f"result code {code} for 254712345678",
        originator_conversation_id=originator,
        conversation_id=conversation_id,
        transaction_id=receipt,
        parameters=parameters,
    )


def make_result(**kwargs: Any) -> tuple[bytes, Result]:
    """A real callback body and what the real parser makes of it."""
    raw = result_body(**kwargs)
    return raw, parse_result_envelope(raw)


def events(ledger: Ledger, payout_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The pending outbox as (routing key, event), each event checked against its published schema."""
    found = []
    for row in ledger.outbox.pending(limit=1000, payout_id=payout_id):
        event = json.loads(row.body)
        validator = _REFUSAL_VALIDATOR if row.routing_key == COMMAND_REFUSED_KEY else _EVENT_VALIDATOR
        errors = sorted(str(error.message) for error in validator.iter_errors(event))
        assert not errors, (event, errors)
        assert event["event_id"] == row.event_id
        found.append((row.routing_key, event))
    return found
