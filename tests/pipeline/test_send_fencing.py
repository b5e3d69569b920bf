"""A send that outlives its lease, a redelivery waiting on a send, and hosts whose clocks disagree.

The handler runs on real ledgers (both engines) with a gateway double whose every call blocks until the
test releases it, so the order of two senders' answers is the test's, not the machine's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support.commands import make_command
from tests.support.ledger import table_rows
from tests.support.settings import fast_settings_env
from tests.support.waiting import wait_until
from worker.amqp.consumer import Ack, Delivery, Disposition
from worker.gateway.g2 import AttemptReason, GatewayAnswer
from worker.ledger import Ledger
from worker.ledger.engine import Engine
from worker.ledger.postgres import PostgresEngine
from worker.ledger.sqlite import SqliteEngine
from worker.paying.handler import PayoutProcessor
from worker.payouts.models import PayoutStatus
from worker.protocol.codes import ResponseOutcome
from worker.protocol.response import SyncResponse
from worker.settings import Settings, load_settings


def accepted(conversation_id: str) -> GatewayAnswer:
    response = SyncResponse("0", "Accept the service request successfully.", conversation_id, None, None)
    return GatewayAnswer(ResponseOutcome.ACCEPTED, response, "accepted", 1)


def refused(code: str, outcome: ResponseOutcome) -> GatewayAnswer:
    return GatewayAnswer(outcome, SyncResponse(code, f"code {code}", None, None, None), f"code {code}", 1)


def timed_out() -> GatewayAnswer:
    return GatewayAnswer(ResponseOutcome.UNKNOWN, None, "read timeout", 1, reason=AttemptReason.READ_TIMEOUT)


@dataclass
class Call:
    originator_conversation_id: str
    release: threading.Event = field(default_factory=threading.Event)
    answer: GatewayAnswer | None = None


class HeldGateway:
    """Every ``pay`` blocks until the test answers it with :meth:`answer`."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def pay(
        self,
        *,
        originator_conversation_id: str,
        command_id: str,
        amount: Decimal,
        msisdn: str,
        remark: str,
        reference: Mapping[str, str],
    ) -> GatewayAnswer:
        call = Call(originator_conversation_id)
        with self._lock:
            self.calls.append(call)
        assert call.release.wait(30), "the test never answered this send"
        assert call.answer is not None
        return call.answer

    def answer(self, index: int, answer: GatewayAnswer) -> None:
        wait_until(lambda: len(self.calls) > index, what=f"send {index + 1} to reach the gateway")
        self.calls[index].answer = answer
        self.calls[index].release.set()


class NoRelay:
    def flush(self, payout_id: str | None = None, *, limit: int = 500) -> int:
        return 0


@dataclass
class Rig:
    settings: Settings
    engine: Callable[[], Engine[Any]]
    opened: list[Ledger] = field(default_factory=list)

    def ledger(self, clock: Callable[[], datetime] | None = None) -> Ledger:
        ledger = Ledger.open(self.engine()) if clock is None else Ledger.open(self.engine(), clock=clock)
        self.opened.append(ledger)
        return ledger

    def processor(self, ledger: Ledger, gateway: HeldGateway) -> PayoutProcessor:
        return PayoutProcessor(self.settings, ledger.payouts, ledger.lookups, gateway, NoRelay())

    def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return table_rows(self.settings.ledger, sql, *params)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    env = fast_settings_env(tmp_path)
    if request.param == "postgresql":
        env["B2C_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    settings = load_settings(env)
    url, path = settings.ledger.database_url, settings.ledger.sqlite_path

    def engine() -> Engine[Any]:
        return PostgresEngine(url) if url else SqliteEngine(path)

    built = Rig(settings, engine)
    yield built
    for ledger in built.opened:
        ledger.close()


def delivery(body: bytes, *, redelivered: bool) -> Delivery:
    return Delivery(
        body=body, headers={}, redelivered=redelivered, delivery_count=int(redelivered), message_id=None, routing_key=""
    )


class Running:
    """One ``handle`` call on its own thread, as the consumer's pool runs it."""

    def __init__(self, processor: PayoutProcessor, message: Delivery) -> None:
        self.disposition: Disposition | None = None
        self._thread = threading.Thread(target=self._run, args=(processor, message), daemon=True)
        self._thread.start()

    def _run(self, processor: PayoutProcessor, message: Delivery) -> None:
        self.disposition = processor.handle(message)

    def result(self) -> Disposition | None:
        self._thread.join(30)
        assert not self._thread.is_alive(), "handle() never returned"
        return self.disposition


def routing_keys(rig: Rig, payout_id: str) -> list[str]:
    return [
        str(row["routing_key"])
        for row in rig.rows("SELECT routing_key FROM outbox WHERE payout_id = ? ORDER BY id", payout_id)
    ]


def stale_sender(rig: Rig, gateway: HeldGateway, run: str) -> tuple[str, Running, Running]:
    """Sender A's send outlives its lease; the redelivered command makes B resend (same id) while A waits."""
    ledger = rig.ledger()
    command = make_command(f"{run}-1")
    body = command.to_json()
    first = Running(rig.processor(ledger, gateway), delivery(body, redelivered=False))
    wait_until(lambda: len(gateway.calls) == 1, what="A's send to reach the gateway")
    second = rig.processor(ledger, gateway)
    second.send_lease_seconds = 0.0  # A's lease is over: a slow read, a stall, a clock ahead
    resend = Running(second, delivery(body, redelivered=True))
    wait_until(lambda: len(gateway.calls) == 2, what="B's resend to reach the gateway")
    assert gateway.calls[0].originator_conversation_id == gateway.calls[1].originator_conversation_id
    return command.payout_id, first, resend


@pytest.mark.parametrize(
    ("late", "kept_as"),
    [
        (refused("100000012", ResponseOutcome.REJECTED), "rejected"),
        (refused("100000002", ResponseOutcome.RETRY_LATER), "not_processed"),
    ],
    ids=["rejected", "throttled"],
)
def test_a_stale_senders_late_answer_neither_rejects_nor_resets_the_payout(
    rig: Rig, late: GatewayAnswer, kept_as: str
) -> None:
    gateway = HeldGateway()
    payout_id, first, resend = stale_sender(rig, gateway, f"stale-{late.outcome}")
    ledger = rig.ledger()

    gateway.answer(0, late)  # A's answer arrives while B's resend is in flight
    assert isinstance(first.result(), Ack), "the payout is B's now: A has nothing to retry"
    during = ledger.payouts.get(payout_id)
    assert during is not None and during.status is PayoutStatus.SENDING and during.send_attempts == 2

    gateway.answer(1, accepted("AG_B"))
    assert isinstance(resend.result(), Ack)
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.ACCEPTED and payout.conversation_id == "AG_B"
    assert "payout.rejected" not in routing_keys(rig, payout_id)
    kept = rig.rows("SELECT attempt, current_attempt, answer, code FROM stale_answers WHERE payout_id = ?", payout_id)
    assert [(r["attempt"], r["current_attempt"], r["answer"], r["code"]) for r in kept] == [
        (1, 2, kept_as, late.response.code if late.response else None)
    ]


def test_a_stale_acceptance_is_applied_and_a_later_silence_does_not_undo_it(rig: Rig) -> None:
    """Same OriginatorConversationID: M-PESA took the payment once, whichever of the two sends carried it."""
    gateway = HeldGateway()
    payout_id, first, resend = stale_sender(rig, gateway, "stale-accepted")
    ledger = rig.ledger()

    gateway.answer(0, accepted("AG_A"))
    assert isinstance(first.result(), Ack)
    gateway.answer(1, timed_out())
    assert isinstance(resend.result(), Ack)
    payout = ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.ACCEPTED and payout.conversation_id == "AG_A"
    assert routing_keys(rig, payout_id) == ["payout.accepted"]


def test_a_waiter_claims_a_payout_the_send_it_waited_on_put_back_to_received(rig: Rig) -> None:
    """A's send ends "not processed" and A's requeue may die with its connection: the waiter must send."""
    gateway = HeldGateway()
    ledger = rig.ledger()
    command = make_command("waiter-1")
    body = command.to_json()
    first = Running(rig.processor(ledger, gateway), delivery(body, redelivered=False))
    wait_until(lambda: len(gateway.calls) == 1, what="A's send to reach the gateway")
    waiter = Running(rig.processor(ledger, gateway), delivery(body, redelivered=True))  # A's lease is live

    gateway.answer(0, refused("100000002", ResponseOutcome.RETRY_LATER))
    first.result()
    gateway.answer(1, accepted("AG_W"))
    assert isinstance(waiter.result(), Ack)
    payout = ledger.payouts.get(command.payout_id)
    assert payout is not None and payout.status is PayoutStatus.ACCEPTED and payout.conversation_id == "AG_W"
    assert {call.originator_conversation_id for call in gateway.calls} == {payout.originator_conversation_id}


def test_a_host_whose_clock_is_ahead_does_not_steal_a_live_send_lease(rig: Rig) -> None:
    """A's host runs half an hour behind, B's half an hour ahead; the lease is measured on the database's clock."""
    gateway = HeldGateway()
    skew = timedelta(minutes=30)
    behind = rig.ledger(clock=lambda: datetime.now(UTC) - skew)
    ahead = rig.ledger(clock=lambda: datetime.now(UTC) + skew)
    command = make_command("clock-1")
    body = command.to_json()
    first = Running(rig.processor(behind, gateway), delivery(body, redelivered=False))
    wait_until(lambda: len(gateway.calls) == 1, what="A's send to reach the gateway")
    polls = threading.Semaphore(0)
    watched = rig.processor(ahead, gateway)

    def counted(read: Callable[[str], Any]) -> Callable[[str], Any]:
        def poll(payout_id: str) -> Any:
            polls.release()
            return read(payout_id)

        return poll

    for name in ("get", "since_change"):  # how a waiter re-reads the payout it waits on
        setattr(watched._payouts, name, counted(getattr(watched._payouts, name)))
    waiter = Running(watched, delivery(body, redelivered=True))
    wait_until(lambda: len(gateway.calls) > 1 or polls.acquire(blocking=False), what="B to wait or to steal")

    gateway.answer(0, accepted("AG_A"))
    assert isinstance(first.result(), Ack)
    assert isinstance(waiter.result(), Ack)
    assert len(gateway.calls) == 1, "B resent under a live lease"
    payout = behind.payouts.get(command.payout_id)
    assert payout is not None and payout.status is PayoutStatus.ACCEPTED and payout.send_attempts == 1
