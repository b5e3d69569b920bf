"""What the simulated gateway remembers: balances, every request it saw, ids it has processed, active faults.

One lock guards everything, so that a payment's balance check, debit and de-duplication are one step even
with many request threads.
"""

from __future__ import annotations

import secrets
import string
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from hashlib import sha256
from typing import Any

from worker.simulator.result_sender import Attempt
from worker.simulator.scenarios import Scenario

NAIROBI = timezone(timedelta(hours=3), "EAT")
WORKING_FUNDS = Decimal("0.00")
CHARGES_FUNDS = Decimal("100000.00")

_FIRST = ("John", "Mary", "Peter", "Grace", "David", "Faith", "James", "Esther", "Brian", "Mercy", "Ann")
_LAST = ("Kamau", "Wanjiru", "Otieno", "Achieng", "Mwangi", "Njeri", "Kiprop", "Chebet", "Mutua", "Wambui")
_ALNUM = string.ascii_uppercase + string.digits


@dataclass
class SimTransaction:
    """One request as the gateway saw it; mutable until its result is decided, read under the state lock."""

    received_at: datetime
    command_id: str | None = None
    originator_conversation_id: str | None = None
    conversation_id: str | None = None
    amount: Decimal | None = None
    msisdn: str | None = None
    http_status: int | None = None
    response_code: str | None = None
    result_code: str | None = None
    result_desc: str | None = None
    scenario: Scenario = Scenario.NORMAL
    paid: bool = False
    transaction_id: str | None = None
    public_name: str | None = None
    completed_at: datetime | None = None
    deliveries: list[Attempt] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "received_at": self.received_at.isoformat(),
            "command_id": self.command_id,
            "originator_conversation_id": self.originator_conversation_id,
            "conversation_id": self.conversation_id,
            "amount": None if self.amount is None else f"{self.amount:.2f}",
            "msisdn": self.msisdn,
            "http_status": self.http_status,
            "response_code": self.response_code,
            "result_code": self.result_code,
            "result_desc": self.result_desc,
            "scenario": self.scenario.value,
            "paid": self.paid,
            "receipt": self.transaction_id if self.paid else None,
            "transaction_id": self.transaction_id,
            "callback_deliveries": [attempt.to_json() for attempt in self.deliveries],
        }


def public_name(msisdn: str) -> str:
    """``2547XXXXXXXX - First Last``: a stable made-up name per number."""
    digest = sha256(msisdn.encode()).digest()
    return f"{msisdn} - {_FIRST[digest[0] % len(_FIRST)]} {_LAST[digest[1] % len(_LAST)]}"


def nairobi(moment: datetime) -> datetime:
    return moment.astimezone(NAIROBI)


def b2c_charge(amount: Decimal) -> Decimal:
    """A simple stand-in tariff debited from the charges-paid account."""
    for ceiling, fee in ((Decimal(100), "0.00"), (Decimal(1500), "5.00"), (Decimal(5000), "9.00")):
        if amount <= ceiling:
            return Decimal(fee)
    return Decimal("13.00")


class SimulatorState:
    def __init__(self, initial_balance: Decimal) -> None:
        self.lock = threading.RLock()
        self._initial = initial_balance
        self._counter = 0
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.utility = self._initial
            self.charges = CHARGES_FUNDS
            self.transactions: list[SimTransaction] = []
            self.seen: set[str] = set()
            self.tries: dict[str, int] = {}
            self.cached_once: set[str] = set()
            self.by_originator: dict[str, SimTransaction] = {}
            self.by_transaction_id: dict[str, SimTransaction] = {}
            self.by_conversation: dict[str, SimTransaction] = {}
            self.issued_ids: set[str] = set()
            self.fault: Scenario | None = None
            self.fault_remaining: int | None = None

    def restore_balance(self) -> None:
        with self.lock:
            self.utility = self._initial

    def add(self, transaction: SimTransaction) -> None:
        with self.lock:
            self.transactions.append(transaction)

    def set_fault(self, scenario: Scenario | None, count: int | None) -> None:
        with self.lock:
            self.fault = scenario
            self.fault_remaining = count if scenario is not None else None

    def take_fault(self) -> Scenario | None:
        """The global fault for one more payment request, counting it down."""
        with self.lock:
            scenario = self.fault
            if scenario is not None and self.fault_remaining is not None:
                self.fault_remaining -= 1
                if self.fault_remaining <= 0:
                    self.fault = None
                    self.fault_remaining = None
            return scenario

    def bump_tries(self, originator_conversation_id: str) -> int:
        with self.lock:
            count = self.tries.get(originator_conversation_id, 0) + 1
            self.tries[originator_conversation_id] = count
            return count

    def first_cache(self, originator_conversation_id: str) -> bool:
        with self.lock:
            if originator_conversation_id in self.cached_once:
                return False
            self.cached_once.add(originator_conversation_id)
            return True

    def claim(self, originator_conversation_id: str) -> bool:
        """Mark the id as processed; False when the gateway has processed it before (a duplicate)."""
        with self.lock:
            if originator_conversation_id in self.seen:
                return False
            self.seen.add(originator_conversation_id)
            return True

    def index(self, transaction: SimTransaction) -> None:
        """Make a processed transaction findable by TransactionStatusQuery."""
        with self.lock:
            if transaction.originator_conversation_id:
                self.by_originator[transaction.originator_conversation_id] = transaction
            if transaction.transaction_id:
                self.by_transaction_id[transaction.transaction_id] = transaction
            if transaction.conversation_id:
                self.by_conversation[transaction.conversation_id] = transaction

    def lookup(self, key: str, value: str) -> SimTransaction | None:
        with self.lock:
            table = {
                "originatorconversationid": self.by_originator,
                "receiptnumber": self.by_transaction_id,
                "transactionid": self.by_transaction_id,
                "conversationid": self.by_conversation,
            }[key.lower()]
            return table.get(value)

    def conversation_id(self, now: datetime) -> str:
        """``AG_20261128_00004e7b6a3c2f1d9e8b``: date, then 20 hex digits (a counter and random bits)."""
        with self.lock:
            self._counter = (self._counter + 1) % 0x10000
            counter = self._counter
        return f"AG_{nairobi(now):%Y%m%d}_{counter:04x}{secrets.token_hex(8)}"

    def transaction_id(self, now: datetime) -> str:
        """A receipt like ``SKR4XQ9Z1A``: year, month and day letters, then seven random characters."""
        local = nairobi(now)
        prefix = (
            chr(ord("A") + (local.year - 2006) % 26)
            + chr(ord("A") + local.month - 1)
            + "123456789ABCDEFGHIJKLMNOPQRSTUV"[local.day - 1]
        )
        with self.lock:
            while True:
                candidate = prefix + "".join(secrets.choice(_ALNUM) for _ in range(7))
                if candidate not in self.issued_ids:
                    self.issued_ids.add(candidate)
                    return candidate

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return [transaction.to_json() for transaction in self.transactions]


def utc_now() -> datetime:
    return datetime.now(UTC)
