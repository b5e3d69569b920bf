"""Fixtures for the receiver-guard and dead-letter tests: the pipeline harness (reused), a receiver on its own,
builders for result bodies, and a side door into the ledger's tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import requests

from tests.support.ledger import table_rows
from tests.support.pipeline import declare
from worker.ledger import Ledger
from worker.payouts.models import Payout
from worker.protocol.result import build_result_envelope
from worker.receiver.service import ReceiverService
from worker.settings import LedgerSettings, Settings

TOKEN = "guard-test-token-0123456789abcdef"
XML = {"Content-Type": "text/xml; charset=utf-8"}


def count(ledger: LedgerSettings, table: str) -> int:
    return int(table_rows(ledger, f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])


def result_for(
    payout: Payout,
    *,
    code: str = "0",
    amount: Decimal | str | None = None,
    msisdn: str | None = None,
    originator: str | None = None,
    conversation_id: str | None = None,
    receipt: str = "SGR7FORGED1",
) -> bytes:
    """A success result for ``payout`` as M-PESA would send it, with any field overridden (a forgery)."""
    parameters = {
        "TransactionAmount": str(amount if amount is not None else payout.command.amount),
        "TransactionReceipt": receipt,
        "ReceiverPartyPublicName": f"{msisdn or payout.command.msisdn} - Jane Doe",
        "TransactionCompletedDateTime": "01.05.2024 12:30:11",
        "B2CUtilityAccountAvailableFunds": "48500.00",
    }
    return build_result_envelope(
        code=code,
        description="The service request is processed successfully.",
        originator_conversation_id=originator or payout.originator_conversation_id,
        conversation_id=conversation_id or payout.conversation_id,
        transaction_id=receipt,
        parameters=parameters if code == "0" else {},
    )


def snapshot(ledger: Ledger) -> dict[str, tuple[Any, ...]]:
    """Every payout's observable state, to compare before/after."""
    return {
        p.payout_id: (p.status, p.updated_at, p.receipt, p.result_code, p.conversation_id, p.send_attempts)
        for p in ledger.payouts.list_payouts(limit=10_000)
    }


@dataclass
class Receiver:
    """A callback receiver on its own (no worker, no simulator) on a free loopback port."""

    service: ReceiverService
    settings: Settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    @property
    def result_url(self) -> str:
        return self.url + self.service.app.result_path

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
        return requests.post(self.url + path, data=body, headers=headers or XML, timeout=10)


@pytest.fixture
def receiver_factory(
    amqp_names: dict[str, str], make_settings: Callable[..., Settings], tmp_path: Any
) -> Iterator[Callable[..., Receiver]]:
    started: list[ReceiverService] = []

    def start(**env: str) -> Receiver:
        values = {"B2C_SQLITE_PATH": str(tmp_path / f"receiver{len(started)}.sqlite3"), "B2C_CALLBACK_TOKEN": TOKEN}
        values.update(env)
        settings = make_settings(**amqp_names, **values)
        declare(settings)
        service = ReceiverService(settings, host="127.0.0.1", port=0, threads=4)
        started.append(service)
        return Receiver(service, settings)

    yield start
    for service in started:
        service.stop()
