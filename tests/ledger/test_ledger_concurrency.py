"""Many threads (and several Ledger objects, as separate processes would be) on the same payouts."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tests.support.commands import make_command
from tests.support.ledger import Database, events, make_result, ocid
from worker.ledger import Ledger, RecordOutcome
from worker.payouts.models import PayoutStatus

THREADS = 16
T = TypeVar("T")


def _all_at_once(count: int, task: Callable[[int], T]) -> list[T]:
    """Run ``task(i)`` on ``count`` threads released together by a barrier."""
    barrier = threading.Barrier(count)

    def run(index: int) -> T:
        barrier.wait(timeout=30)
        return task(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_concurrent_record_of_one_payout_is_new_exactly_once(ledger: Ledger) -> None:
    command = make_command()

    def answer(_: int) -> RecordOutcome:
        # What the worker does with a repeated command: record it, then answer the duplicate.
        recorded = ledger.payouts.record(command, ocid(command.payout_id))
        if recorded.outcome is RecordOutcome.DUPLICATE:
            ledger.payouts.note_duplicate(command.payout_id)
        return recorded.outcome

    outcomes = _all_at_once(THREADS, answer)

    assert Counter(outcomes) == {RecordOutcome.NEW: 1, RecordOutcome.DUPLICATE: THREADS - 1}
    duplicates = events(ledger)
    assert len(duplicates) == THREADS - 1
    assert all(event["duplicate"] and event["status"] == "received" for _, event in duplicates)


def test_two_ledgers_record_the_same_payouts(database: Database) -> None:
    first, second = database.open(), database.open()
    try:
        commands = [make_command() for _ in range(20)]

        def record_all(index: int) -> list[RecordOutcome]:
            ledger = first if index % 2 else second
            order = commands if index % 4 < 2 else list(reversed(commands))
            return [ledger.payouts.record(command, ocid(command.payout_id)).outcome for command in order]

        results = _all_at_once(8, record_all)
        tally = Counter(outcome for outcomes in results for outcome in outcomes)
        assert tally == {RecordOutcome.NEW: 20, RecordOutcome.DUPLICATE: 20 * 7}
        assert first.payouts.count_by_status()["received"] == 20
    finally:
        first.close()
        second.close()


def test_concurrent_record_with_different_content_is_one_new_and_conflicts(ledger: Ledger) -> None:
    payout_id = "p-contested"
    commands = [make_command(payout_id, amount=f"{100 + index}.00") for index in range(THREADS)]
    outcomes = _all_at_once(THREADS, lambda index: ledger.payouts.record(commands[index], ocid(payout_id)).outcome)

    assert Counter(outcomes) == {RecordOutcome.NEW: 1, RecordOutcome.CONFLICT: THREADS - 1}
    stored = ledger.payouts.get(payout_id)
    assert stored is not None and stored.command in commands
    assert [event["reason"] for _, event in events(ledger)] == ["idempotency_conflict"] * (THREADS - 1)


def test_no_send_attempt_is_lost(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()

    def send(_: int) -> None:
        # What racing deliveries do: claim from a fresh snapshot until their claim is the current one.
        while True:
            current = ledger.payouts.get(payout_id)
            assert current is not None
            if ledger.payouts.claim_send(payout_id, expected_attempts=current.send_attempts) is not None:
                return

    _all_at_once(THREADS, send)
    stored = ledger.payouts.get(payout_id)
    assert stored is not None and (stored.status, stored.send_attempts) == (PayoutStatus.SENDING, THREADS)


def test_concurrent_acceptance_yields_one_event(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    payout_id = new_payout()
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    _all_at_once(
        THREADS,
        lambda index: ledger.payouts.mark_accepted(
            payout_id, conversation_id=f"AG_{index}", code="0", description="ok"
        ),
    )
    [(key, _)] = events(ledger)
    assert key == "payout.accepted"


def test_result_racing_the_acceptance(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    """Whichever wins, every payout tells the payer accepted once, then completed once."""
    ids = [new_payout() for _ in range(12)]
    for payout_id in ids:
        ledger.payouts.claim_send(payout_id, expected_attempts=0)

    def race(index: int) -> None:
        payout_id = ids[index // 2]
        if index % 2:
            ledger.payouts.mark_accepted(payout_id, conversation_id="AG_20240501_0000abc", code="0", description="ok")
        else:
            ledger.results.record(*make_result(code="0", originator=ocid(payout_id)))

    _all_at_once(len(ids) * 2, race)
    for payout_id in ids:
        stored = ledger.payouts.get(payout_id)
        assert stored is not None and stored.status is PayoutStatus.COMPLETED
        assert [key for key, _ in events(ledger, payout_id)] == ["payout.accepted", "payout.completed"]


def test_many_threads_many_payouts(ledger: Ledger) -> None:
    """A worker's mixed load: every payout ends completed with exactly its two events."""

    def flow(index: int) -> str:
        command = make_command()
        ledger.payouts.record(command, ocid(command.payout_id))
        ledger.payouts.claim_send(command.payout_id, expected_attempts=0)
        ledger.payouts.mark_accepted(command.payout_id, conversation_id=f"AG_{index}", code="0", description="ok")
        ledger.results.record(*make_result(code="0", originator=ocid(command.payout_id), conversation_id=f"AG_{index}"))
        return command.payout_id

    ids = _all_at_once(THREADS, flow)
    assert ledger.payouts.count_by_status()["completed"] == THREADS
    assert ledger.outbox.backlog() == 2 * THREADS
    assert Counter(event["payout_id"] for _, event in events(ledger)) == dict.fromkeys(ids, 2)
