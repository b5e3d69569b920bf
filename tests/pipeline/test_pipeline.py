"""The disbursement pipeline end to end: real RabbitMQ, the simulator, both ledger engines."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.support import commands
from tests.support.pipeline import Harness
from worker.payouts.models import originator_conversation_id
from worker.simulator import SimulatorOptions


def command(n: int, run: str = "p", **extra: Any) -> dict[str, Any]:
    """The support factory's ``n``-th command of ``run``, with 50 cents and its row number as metadata."""
    fields: dict[str, Any] = {"amount": f"{100 + n}.50", "metadata": {"row": n}, **extra}
    return commands.command(run, n, **fields)


def test_hundred_payouts_then_the_same_hundred_again(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory()
    batch = [command(n) for n in range(100)]
    h.publish(batch)
    h.events.wait_for(lambda e: len(e.of("payout.completed")) >= 100, 120, "100 completed events")
    accepted = h.events.of("payout.accepted", duplicate=False)
    completed = h.events.of("payout.completed", duplicate=False)
    assert sorted(e["payout_id"] for e in accepted) == sorted(c["payout_id"] for c in batch)
    assert sorted(e["payout_id"] for e in completed) == sorted(c["payout_id"] for c in batch)
    paid = h.paid_by_originator()
    assert len(paid) == 100 and set(paid.values()) == {1}
    assert len(h.payments()) == 100

    first = completed[0]
    assert first["result"]["code"] == "0" and first["result"]["receipt"]
    assert first["metadata"]["row"] == int(first["payout_id"].split("-")[1])

    h.publish(batch)
    h.events.wait_for(
        lambda e: len([x for _, x in e.snapshot() if x.get("duplicate")]) >= 100, 60, "100 duplicate answers"
    )
    duplicates = [x for _, x in h.events.snapshot() if x.get("duplicate")]
    assert {d["status"] for d in duplicates} == {"completed"}
    assert len(h.payments()) == 100, "a duplicate command reached M-PESA"


def test_invalid_commands_are_rejected_and_dead_lettered(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory()
    bad = [
        b"not json at all",
        json.dumps({"payout_id": "bad-1", "msisdn": "12345", "amount": "100"}).encode(),
        json.dumps({"payout_id": "bad-2", "msisdn": "0712345678", "amount": "5"}).encode(),
        json.dumps({"payout_id": "bad-3", "msisdn": "0712345678", "amount": "100", "colour": "red"}).encode(),
    ]
    h.publish(bad)
    h.events.wait_for(lambda e: len(e.of("payout.rejected")) >= 4, 30, "4 rejections")
    rejected = h.events.of("payout.rejected")
    assert {e["reason"] for e in rejected} == {"invalid_command"}
    assert {e["payout_id"] for e in rejected} == {None, "bad-1", "bad-2", "bad-3"}
    by_id = {e["payout_id"]: e["message"] for e in rejected}
    assert "msisdn" in by_id["bad-1"] and "amount" in by_id["bad-2"] and "colour" in by_id["bad-3"]
    dead = h.dead_letters()
    assert sorted(body for _, body in dead) == sorted(bad)
    assert all(headers.get("x-b2c-reason") == "invalid_command" for headers, _ in dead)
    assert h.payments() == []


def test_same_id_different_content_is_a_conflict(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory()
    h.publish([command(1, run="c")])
    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 1, 30, "the first payout")
    h.publish([command(1, run="c", amount="999.00")])
    h.events.wait_for(lambda e: len(e.of("command.refused")) == 1, 30, "the conflict")
    conflict = h.events.of("command.refused")[0]
    assert conflict["reason"] == "idempotency_conflict" and conflict["payout_id"] == "c-0001"
    assert conflict["recorded_status"] == "completed" and h.events.of("payout.rejected") == []
    assert len(h.payments()) == 1
    assert h.events.of("payout.completed")[0]["amount"] == "101.50"


def test_result_before_response_still_ends_completed(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory()
    h.publish([command(1, run="early", msisdn="254700000008")])
    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 1, 30, "completion")
    keys = [k for k, e in h.events.snapshot() if not e.get("duplicate")]
    assert keys == ["payout.accepted", "payout.completed"]
    assert len(h.paid_by_originator()) == 1


def test_failed_result_is_reported_failed(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory()
    h.publish([command(1, run="nofunds", msisdn="254700000009")])
    h.events.wait_for(lambda e: len(e.of("payout.failed")) == 1, 30, "failure")
    failed = h.events.of("payout.failed")[0]
    assert failed["result"]["code"] == "1" and failed["reason"] == "funds"
    assert h.paid_by_originator() == {}


def test_http_500_after_payment_is_unknown_then_the_result_settles_it(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(SimulatorOptions(result_delay=1.0))
    h.publish([command(1, run="five", msisdn="254700000002")])
    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 1, 30, "completion")
    keys = [k for k, e in h.events.snapshot() if not e.get("duplicate")]
    assert keys[0] == "payout.unknown" and keys[-1] == "payout.completed"
    assert "payout.failed" not in keys
    assert len(h.payments()) == 1, "an unknown outcome must not be retried blindly"


def test_throttled_request_is_retried_with_the_same_id(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory()
    h.publish([command(1, run="thr", msisdn="254700000004")])
    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 1, 30, "completion")
    payments = h.payments()
    assert len(payments) >= 2
    expected = originator_conversation_id(h.settings.mpesa.shortcode, h.settings.mpesa.org_name, "thr-0001")
    assert {p["originator_conversation_id"] for p in payments} == {expected}
    assert sum(1 for p in payments if p["paid"]) == 1
