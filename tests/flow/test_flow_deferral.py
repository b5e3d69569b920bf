"""Throttled past the gateway client's quick retries: the command waits in delay queues, not in a thread."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import REGISTRY

from tests.support.commands import command
from tests.support.flow import FAST, queued
from tests.support.pipeline import Harness
from tests.support.waiting import wait_until
from worker.payouts.models import originator_conversation_id
from worker.simulator import SimulatorOptions

THROTTLED = "254700000004"
# Exactly two attempts per round, however slow the machine: the attempt count, not the time budget, decides.
ROUNDS = {**FAST, "B2C_RETRY_MAX_SECONDS": "30"}


def deferrals(tier: str) -> float:
    return REGISTRY.get_sample_value("mpesa_b2c_deferrals_total", {"tier": tier}) or 0.0


def test_throttled_payout_is_deferred_through_both_tiers_then_paid_once(
    harness_factory: Callable[..., Harness],
) -> None:
    # Two attempts per round: rounds 1 and 2 are all refused (throttling / busy), round 3 is accepted.
    before = (deferrals("200ms"), deferrals("500ms"))
    h = harness_factory(SimulatorOptions(result_delay=0.05, throttle_tries=5), **ROUNDS)
    h.publish([command("thr", 1, msisdn=THROTTLED)])

    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 1, 30, "completion after the delay tiers")

    requests = h.payments()
    expected = originator_conversation_id(h.settings.mpesa.shortcode, h.settings.mpesa.org_name, "thr-0001")
    assert [p["response_code"] for p in requests] == ["100000002", "26", "100000002", "26", "100000002", "0"]
    assert {p["originator_conversation_id"] for p in requests} == {expected}
    assert h.paid_by_originator() == {expected: 1}
    assert (deferrals("200ms") - before[0], deferrals("500ms") - before[1]) == (1, 1)
    keys = [k for k, e in h.events.snapshot() if not e.get("duplicate")]
    assert keys == ["payout.accepted", "payout.completed"], "a deferral is not an event: nothing happened"
    assert queued(h.settings) == 0


def test_throttled_beyond_the_last_tier_is_rejected_with_nothing_paid(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(SimulatorOptions(result_delay=0.05, throttle_tries=1000), **ROUNDS)
    h.publish([command("gone", 1, msisdn=THROTTLED), command("gone", 2)])

    h.events.wait_for(lambda e: len(e.of("payout.rejected")) == 1, 30, "the rejection after the last tier")
    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 1, 30, "the other payout, not held up")

    rejected = h.events.of("payout.rejected")[0]
    assert rejected["payout_id"] == "gone-0001"
    assert rejected["reason"] == "delivery_limit"
    assert "nothing was paid" in rejected["message"] and "2 deferral(s)" in rejected["message"]
    throttled = [p for p in h.payments() if p["msisdn"] == THROTTLED]
    assert len(throttled) == 6, "three rounds of two attempts: first try, after 0.2 s, after 0.5 s"
    assert not any(p["paid"] for p in throttled)
    wait_until(lambda: queued(h.settings) == 0, 5, "empty queues")
