"""The payout status machine: the explicit table, and that final statuses never move."""

from __future__ import annotations

import itertools

import pytest

from worker.payouts.models import FINAL_STATUSES, PayoutStatus, can_transition

S = PayoutStatus
ALLOWED = {
    (S.RECEIVED, S.SENDING),
    (S.SENDING, S.ACCEPTED),
    (S.SENDING, S.REJECTED),
    (S.SENDING, S.UNKNOWN),
    (S.SENDING, S.RECEIVED),
    (S.SENDING, S.COMPLETED),
    (S.SENDING, S.FAILED),
    (S.UNKNOWN, S.SENDING),
    (S.UNKNOWN, S.ACCEPTED),
    (S.UNKNOWN, S.COMPLETED),
    (S.UNKNOWN, S.FAILED),
    (S.ACCEPTED, S.COMPLETED),
    (S.ACCEPTED, S.FAILED),
    (S.ACCEPTED, S.UNKNOWN),
}


def test_statuses_and_final_set() -> None:
    assert [s.value for s in S] == [
        "received",
        "sending",
        "accepted",
        "rejected",
        "unknown",
        "completed",
        "failed",
    ]
    assert {S.REJECTED, S.COMPLETED, S.FAILED} == FINAL_STATUSES


@pytest.mark.parametrize(("old", "new"), list(itertools.product(S, S)))
def test_every_pair_follows_the_table(old: PayoutStatus, new: PayoutStatus) -> None:
    assert can_transition(old, new) == ((old, new) in ALLOWED)
    assert can_transition(old.value, new.value) == ((old, new) in ALLOWED)


@pytest.mark.parametrize("final", sorted(FINAL_STATUSES))
def test_final_statuses_never_change(final: PayoutStatus) -> None:
    assert not any(can_transition(final, other) for other in S)


def test_unknown_is_never_turned_into_a_rejection() -> None:
    # An unknown payout may have been paid; only M-PESA's result may finalise it.
    assert not can_transition(S.UNKNOWN, S.REJECTED)
    assert not can_transition(S.ACCEPTED, S.REJECTED)
    assert not can_transition(S.RECEIVED, S.ACCEPTED)


def test_every_status_can_reach_a_final_one() -> None:
    for start in S:
        seen, frontier = {start}, [start]
        while frontier:
            current = frontier.pop()
            for nxt in S:
                if can_transition(current, nxt) and nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen & FINAL_STATUSES, start


def test_unrecognised_status_is_an_error() -> None:
    with pytest.raises(ValueError):
        can_transition("paid", "completed")
