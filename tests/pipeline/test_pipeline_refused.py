"""A command refused because of a payout already recorded under its payout_id never reads as that payout's status.

Every variant here used to publish ``payout.rejected`` under the payout_id of a payout that was accepted or
paid: a payer keyed by payout_id would read "not paid" and might pay again under a new id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.support.pipeline import Harness

COMMAND_REFUSED_KEY = "command.refused"

RESULT_DROPPED = "254700000006"  # the simulator pays and answers 0, but never sends the result


def body(payout_id: str, **extra: Any) -> dict[str, Any]:
    return {"payout_id": payout_id, "msisdn": "0712000042", "amount": "1000.00", **extra}


def of_payout(h: Harness, routing_key: str, payout_id: str, *, duplicate: bool | None = None) -> list[dict[str, Any]]:
    return [e for e in h.events.of(routing_key, duplicate=duplicate) if e["payout_id"] == payout_id]


def test_a_conflict_on_an_accepted_payout_is_refused_not_rejected(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory()
    h.publish([body("r-acc", msisdn=RESULT_DROPPED)])
    h.events.wait_for(lambda e: len(of_payout(h, "payout.accepted", "r-acc")) == 1, 30, "the acceptance")

    h.publish([body("r-acc", msisdn=RESULT_DROPPED, amount="2000.00")])
    h.events.wait_for(lambda e: len(e.of(COMMAND_REFUSED_KEY)) == 1, 30, "the refusal")

    [refusal] = h.events.of(COMMAND_REFUSED_KEY)
    assert refusal["payout_id"] == "r-acc"
    assert refusal["reason"] == "idempotency_conflict"
    assert refusal["recorded_status"] == "accepted"
    assert "status" not in refusal, "a refusal must not read as the payout's status"
    assert refusal["refused_command"]["amount"] == "2000.00"
    assert h.events.of("payout.rejected") == []
    assert len(h.payments()) == 1


def test_a_paid_payout_redelivered_after_the_maximum_was_lowered_is_a_duplicate(
    harness_factory: Callable[..., Harness],
) -> None:
    first = harness_factory()
    command = body("r-max", amount="5000.00")
    first.publish([command])
    first.events.wait_for(lambda e: len(of_payout(first, "payout.completed", "r-max")) == 1, 30, "the payment")
    first.stack.stop()

    # The same ledger and queues, now with B2C_AMOUNT_MAX below the amount already paid.
    h = harness_factory(B2C_AMOUNT_MAX="1000")
    h.publish([command])
    h.events.wait_for(
        lambda e: len(of_payout(h, "payout.completed", "r-max", duplicate=True)) == 1, 30, "the duplicate answer"
    )
    assert h.events.of("payout.rejected") == []
    assert h.events.of(COMMAND_REFUSED_KEY) == []
    assert h.dead_letters() == []
    assert h.payments() == [], "the stored command is answered from the ledger, never sent again"


def test_metadata_numbers_spelt_differently_are_the_same_payout(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory()
    text = '{"payout_id": "r-num", "msisdn": "0712000042", "amount": "1000.00", "metadata": {"n": %s}}'
    h.publish([(text % "1").encode()])
    h.events.wait_for(lambda e: len(of_payout(h, "payout.completed", "r-num")) == 1, 30, "the payment")

    h.publish([(text % "1.0").encode(), (text % "10E-1").encode()])
    h.events.wait_for(
        lambda e: len(of_payout(h, "payout.completed", "r-num", duplicate=True)) == 2, 30, "two duplicate answers"
    )
    assert h.events.of("payout.rejected") == []
    assert h.events.of(COMMAND_REFUSED_KEY) == []
    assert len(h.payments()) == 1
    assert {e["metadata"]["n"] for e in of_payout(h, "payout.completed", "r-num")} == {1}


def test_an_invalid_command_for_a_recorded_payout_is_refused_and_dead_lettered(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory()
    h.publish([body("r-inv")])
    h.events.wait_for(lambda e: len(of_payout(h, "payout.completed", "r-inv")) == 1, 30, "the payment")

    invalid = json.dumps(body("r-inv", msisdn="12345")).encode()
    h.publish([invalid, json.dumps(body("r-new", msisdn="12345")).encode()])
    h.events.wait_for(lambda e: len(e.of(COMMAND_REFUSED_KEY)) == 1, 30, "the refusal")
    h.events.wait_for(lambda e: len(e.of("payout.rejected")) == 1, 30, "the rejection of the unrecorded one")

    [refusal] = h.events.of(COMMAND_REFUSED_KEY)
    assert (refusal["payout_id"], refusal["reason"], refusal["recorded_status"]) == (
        "r-inv",
        "invalid_command",
        "completed",
    )
    assert "msisdn" in refusal["message"] and refusal["refused_command"] is None
    [rejection] = h.events.of("payout.rejected")
    assert (rejection["payout_id"], rejection["reason"]) == ("r-new", "invalid_command")
    dead = sorted(b for _, b in h.dead_letters())
    assert len(dead) == 2 and invalid in dead
    assert len(h.payments()) == 1
