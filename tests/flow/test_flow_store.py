"""The shared flow-control state on both ledger engines: GCRA slots, adaptive rate, breaker, probe and canary."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from worker.errors import LedgerError
from worker.ledger import open_ledger
from worker.ledger.flow_state import BreakerReason, FlowStore
from worker.settings import Settings

KEY = "600000"


@pytest.fixture
def store(ledger_env: dict[str, str], make_settings: Callable[..., Settings]) -> Iterator[FlowStore]:
    opened = open_ledger(make_settings(**ledger_env).ledger)
    yield opened.flow
    opened.close()


def _slots(store: FlowStore, count: int, *, burst: int) -> list[tuple[float, float, float]]:
    """(wait, clock before, clock after) per reservation: the slot is ``wait`` after a moment in between."""
    slots = []
    for _ in range(count):
        before = store.clock()
        wait = store.reserve(KEY, ceiling=10, burst=burst, max_wait=5).wait
        assert wait is not None
        slots.append((wait, before, store.clock()))
    return slots


def _slot_offset_possible(slots: list[tuple[float, float, float]], n: int, offset: float) -> bool:
    """Whether slot ``n`` can lie ``offset`` seconds after the first reservation's moment, however long the
    reservations took on a busy machine (each moment is only known to lie between its two clock reads)."""
    wait, before, after = slots[n]
    _, first_before, first_after = slots[0]
    return before + wait - first_after - 0.005 <= offset <= after + wait - first_before + 0.005


def test_gcra_spaces_slots_by_the_interval(store: FlowStore) -> None:
    slots = _slots(store, 5, burst=1)
    assert slots[0][0] == pytest.approx(0.0, abs=0.02)
    for n in range(5):
        assert _slot_offset_possible(slots, n, 0.1 * n), (n, slots)


def test_gcra_allows_the_burst_then_spaces(store: FlowStore) -> None:
    slots = _slots(store, 5, burst=3)
    assert [wait for wait, _, _ in slots[:3]] == pytest.approx([0.0, 0.0, 0.0], abs=0.02)
    assert _slot_offset_possible(slots, 3, 0.1), slots
    assert _slot_offset_possible(slots, 4, 0.2), slots


def test_a_slot_too_far_away_is_not_reserved(store: FlowStore) -> None:
    assert store.reserve(KEY, ceiling=1, burst=1, max_wait=0.5).wait == pytest.approx(0.0, abs=0.02)
    refused = store.reserve(KEY, ceiling=1, burst=1, max_wait=0.5)
    assert refused.wait is None and refused.rate == 1
    # The refusal reserved nothing: a caller willing to wait gets the very next slot, not a later one.
    assert store.reserve(KEY, ceiling=1, burst=1, max_wait=5).wait == pytest.approx(1.0, abs=0.05)


def test_throttling_halves_the_rate_once_per_cooldown_and_success_recovers_it(store: FlowStore) -> None:
    assert store.slow_down(KEY, ceiling=10, factor=0.5, floor=0.5, cooldown=60) == 5
    assert store.slow_down(KEY, ceiling=10, factor=0.5, floor=0.5, cooldown=60) == 5, "one event, one halving"
    assert store.reserve(KEY, ceiling=10, burst=1, max_wait=5).wait == pytest.approx(0.2, abs=0.03)
    assert store.rate(KEY, ceiling=10) == 5
    for expected in (5.5, 6.0, 6.5):
        assert store.speed_up(KEY, ceiling=10, step=0.5) == pytest.approx(expected)
    for _ in range(20):
        store.speed_up(KEY, ceiling=10, step=0.5)
    assert store.rate(KEY, ceiling=10) == 10
    assert store.slow_down(KEY, ceiling=10, factor=0.5, floor=8, cooldown=0) == 8, "never below the floor"


def test_breaker_opens_escalates_and_closes(store: FlowStore) -> None:
    assert not store.breaker(KEY).open
    opened = store.open_breaker(
        KEY, reason=BreakerReason.UNREACHABLE, code=None, detail="5 failures", by="w1", next_probe_at=None
    )
    assert opened is not None and opened.open and opened.reason == "unreachable" and opened.opened_by == "w1"
    assert (
        store.open_breaker(
            KEY, reason=BreakerReason.UNREACHABLE, code=None, detail="again", by="w2", next_probe_at=None
        )
        is None
    )
    funds = store.open_breaker(
        KEY, reason=BreakerReason.FUNDS, code="1", detail="result 1", by="w2", next_probe_at=None
    )
    assert funds is not None and funds.reason == "funds" and funds.opened_at == opened.opened_at
    assert (
        store.open_breaker(KEY, reason=BreakerReason.UNREACHABLE, code=None, detail="x", by="w1", next_probe_at=None)
        is None
    )
    epoch = funds.credential_epoch
    credential = store.open_breaker(
        KEY, reason=BreakerReason.CREDENTIAL, code="18", detail="r18", by="w1", next_probe_at=None
    )
    assert credential is not None and credential.credential_epoch == epoch + 1
    assert store.close_breaker(KEY, by="operator", reason=BreakerReason.FUNDS) is None, (
        "closes only for the reason it is open"
    )
    closed = store.close_breaker(KEY, by="operator")
    assert closed is not None and not closed.open and closed.closed_by == "operator"
    assert closed.closed_at >= (opened.opened_at or 0)
    assert store.close_breaker(KEY, by="operator") is None


def test_one_funds_probe_at_a_time_and_only_when_due(store: FlowStore) -> None:
    assert not store.take_probe(KEY, "p1", lease=30), "no probe while closed"
    store.open_breaker(KEY, reason=BreakerReason.FUNDS, code="1", detail="", by="w", next_probe_at=store.clock() + 60)
    assert not store.take_probe(KEY, "p1", lease=30), "not due yet"
    store.schedule_probe(KEY, after=0)
    assert store.take_probe(KEY, "p1", lease=30)
    assert store.take_probe(KEY, "p1", lease=30), "the probe itself may retry"
    assert not store.take_probe(KEY, "p2", lease=30), "one probe at a time"
    store.end_probe(KEY, "p1", failed=True, next_in=0)
    row = store.breaker(KEY)
    assert row.probe_id is None and row.failed_probes == 1
    assert store.take_probe(KEY, "p2", lease=30)


def test_one_canary_fleet_wide_until_released_or_expired(store: FlowStore) -> None:
    assert store.take_canary(KEY, "c1", owner="w1", lease=30)
    assert store.take_canary(KEY, "c1", owner="w1", lease=30)
    assert not store.take_canary(KEY, "c2", owner="w1", lease=30)
    assert not store.take_canary(KEY, "c2", owner="w2", lease=30)
    store.release_canary(KEY, "c2")
    assert store.breaker(KEY).canary_id == "c1", "only the holder's id releases it"
    store.release_canary(KEY, "c1")
    store.open_breaker(KEY, reason=BreakerReason.CREDENTIAL, code="18", detail="", by="w1", next_probe_at=None)
    assert not store.take_canary(KEY, "c2", owner="w2", lease=30), "nothing is sent while the breaker is open"
    store.close_breaker(KEY, by="operator")
    assert store.take_canary(KEY, "c2", owner="w2", lease=0.05)
    time.sleep(0.1)
    assert store.take_canary(KEY, "c3", owner="w1", lease=30), "an expired lease is free"


def test_an_unknown_breaker_reason_is_an_error_not_a_guess(store: FlowStore) -> None:
    """A row written by another version must make the breaker hold (safe_tick pauses on LedgerError)."""
    store.open_breaker(KEY, reason=BreakerReason.FUNDS, code="1", detail="r1", by="w1", next_probe_at=None)
    with store._db.transaction(write=True) as session:
        session.run("UPDATE gateway_state SET reason = ? WHERE key = ?", "from_a_newer_version", KEY)
    with pytest.raises(LedgerError, match="unknown breaker reason 'from_a_newer_version'"):
        store.breaker(KEY)
