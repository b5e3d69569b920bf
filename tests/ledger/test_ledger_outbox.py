"""The transactional outbox: pending order, publishing marks, the backlog and relay leases."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from tests.support.ledger import Database
from worker.ledger import Ledger


def _make_events(ledger: Ledger, new_payout: Callable[..., str], count: int) -> list[str]:
    """``count`` payouts with one ``payout.accepted`` event each, in creation order."""
    ids = []
    for _ in range(count):
        payout_id = new_payout()
        ledger.payouts.claim_send(payout_id, expected_attempts=0)
        ledger.payouts.mark_accepted(payout_id, conversation_id=f"AG_{payout_id}", code="0", description="ok")
        ids.append(payout_id)
    return ids


def test_pending_oldest_first_and_per_payout(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    ids = _make_events(ledger, new_payout, 5)

    pending = ledger.outbox.pending()
    assert [event.payout_id for event in pending] == ids
    assert [json.loads(event.body)["payout_id"] for event in pending] == ids
    assert [event.id for event in pending] == sorted(event.id for event in pending)
    assert all(event.routing_key == "payout.accepted" for event in pending)
    assert [event.payout_id for event in ledger.outbox.pending(limit=2)] == ids[:2]
    [only] = ledger.outbox.pending(payout_id=ids[3])
    assert only.payout_id == ids[3]
    assert ledger.outbox.pending(payout_id="nobody") == []


def test_mark_published_and_backlog(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    _make_events(ledger, new_payout, 4)
    assert ledger.outbox.backlog() == 4
    first, second, *rest = ledger.outbox.pending()

    ledger.outbox.mark_published([first.id, second.id])
    ledger.outbox.mark_published([first.id, 987654321])
    ledger.outbox.mark_published([])

    assert ledger.outbox.backlog() == 2
    assert ledger.outbox.pending() == rest


def test_published_at_is_kept_from_the_first_confirm(
    ledger: Ledger, database: Database, new_payout: Callable[..., str]
) -> None:
    _make_events(ledger, new_payout, 1)
    [event] = ledger.outbox.pending()
    ledger.outbox.mark_published([event.id])
    [first] = database.query("SELECT published_at FROM outbox WHERE id = ?", event.id)
    ledger.outbox.mark_published([event.id])
    [second] = database.query("SELECT published_at FROM outbox WHERE id = ?", event.id)
    assert first["published_at"] is not None and first == second


def test_claims_are_leased(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    _make_events(ledger, new_payout, 5)

    assert ledger.outbox.claim(older_than_seconds=3600) == []
    first = ledger.outbox.claim(limit=3)
    second = ledger.outbox.claim(limit=3)
    assert len(first) == 3 and len(second) == 2
    assert {event.id for event in first}.isdisjoint(event.id for event in second)
    assert ledger.outbox.claim() == []

    ledger.outbox.mark_published([event.id for event in first])
    expired = ledger.outbox.claim(lease_seconds=0)
    assert expired == []
    assert ledger.outbox.backlog() == 2


def test_expired_lease_is_claimed_again_but_never_a_published_row(
    ledger: Ledger, new_payout: Callable[..., str]
) -> None:
    _make_events(ledger, new_payout, 2)
    first = ledger.outbox.claim(lease_seconds=0)
    assert len(first) == 2
    ledger.outbox.mark_published([first[0].id])
    again = ledger.outbox.claim(lease_seconds=60)
    assert [event.id for event in again] == [first[1].id]


def test_concurrent_relays_claim_each_event_once(
    ledger: Ledger, database: Database, new_payout: Callable[..., str]
) -> None:
    _make_events(ledger, new_payout, 40)
    relays = [database.open() for _ in range(4)]
    claimed: list[list[int]] = [[] for _ in relays]
    start = threading.Barrier(len(relays))

    def relay(index: int) -> None:
        start.wait()
        while batch := relays[index].outbox.claim(limit=3):
            claimed[index].extend(event.id for event in batch)
            relays[index].outbox.mark_published([event.id for event in batch])

    threads = [threading.Thread(target=relay, args=(index,)) for index in range(len(relays))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for opened in relays:
        opened.close()

    everything = [event_id for ids in claimed for event_id in ids]
    assert len(everything) == 40
    assert len(set(everything)) == 40
    assert ledger.outbox.backlog() == 0


def test_released_claims_are_claimable_again_at_once(ledger: Ledger, new_payout: Callable[..., str]) -> None:
    ids = _make_events(ledger, new_payout, 3)
    claimed = ledger.outbox.claim(lease_seconds=60)
    assert len(claimed) == 3 and ledger.outbox.claim() == []
    ledger.outbox.mark_published([claimed[0].id])
    ledger.outbox.release([event.id for event in claimed])
    again = ledger.outbox.claim(payout_id=ids[1])
    assert [event.payout_id for event in again] == [ids[1]]
    assert [event.payout_id for event in ledger.outbox.claim()] == [ids[2]]
