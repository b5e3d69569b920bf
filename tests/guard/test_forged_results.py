"""Forged and mismatched results through the whole stack (simulator, worker, receiver; both ledger engines):
quarantined with their bodies, counted, answered, never applied; then reviewed with ``mpesa-b2c dead``."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from decimal import Decimal

import pytest
import requests
from prometheus_client import REGISTRY

from tests.support.guard import TOKEN, XML, count, result_for, snapshot
from tests.support.ledger import table_rows
from tests.support.pipeline import Harness
from tests.support.waiting import wait_until
from worker.cli.main import build_parser
from worker.ledger import ApplyOutcome, Ledger, QuarantineState
from worker.payouts.models import Payout, PayoutStatus, originator_conversation_id
from worker.simulator import SimulatorOptions

RESULT_DROPPED = "254700000006"  # the simulator pays and answers 0, but never sends the result
FULL_MSISDN = re.compile(r"(?<!\d)2547\d{8}(?!\d)")


def quarantined(reason: str) -> float:
    return REGISTRY.get_sample_value("mpesa_b2c_results_quarantined_total", {"reason": reason}) or 0.0


def start(harness_factory: Callable[..., Harness]) -> Harness:
    """The stack, after one ordinary payout: the worker's first send must come back with a result (it proves
    the credential, see worker.flow.breaker) before payouts whose results never come can be sent."""
    h = harness_factory(SimulatorOptions(result_delay=0.05), B2C_CALLBACK_TOKEN=TOKEN)
    h.publish([{"payout_id": "p-warm-up", "msisdn": "0712000001", "amount": "100.00"}])
    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 1, 20, "the warm-up payout completed")
    return h


def accepted_payout(h: Harness, payout_id: str, amount: str = "1500.00") -> Payout:
    """A payout M-PESA accepted (and paid) whose result never comes: the window a forger aims at."""
    h.publish([{"payout_id": payout_id, "msisdn": RESULT_DROPPED, "amount": amount}])
    h.events.wait_for(
        lambda e: any(x["payout_id"] == payout_id for x in e.of("payout.accepted")), 20, f"{payout_id} accepted"
    )
    payout = h.stack.receiver.ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.ACCEPTED and payout.conversation_id
    return payout


def post(h: Harness, body: bytes) -> requests.Response:
    url = f"http://127.0.0.1:{h.stack.receiver.port}{h.stack.receiver.app.result_path}"
    return requests.post(url, data=body, headers=XML, timeout=10)


def paid_once(h: Harness, payout_id: str) -> bool:
    originator = originator_conversation_id(h.settings.mpesa.shortcode, h.settings.mpesa.org_name, payout_id)
    return h.paid_by_originator().get(originator) == 1


def events_of(h: Harness, payout_id: str) -> list[str]:
    return [key for key, event in h.events.snapshot() if event.get("payout_id") == payout_id]


def cli(settings: object, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["dead", *argv])
    code = int(args.func(settings, args))
    return code, capsys.readouterr().out


def test_the_worker_sends_the_tokened_result_url(harness_factory: Callable[..., Harness]) -> None:
    h = start(harness_factory)
    # The simulator records the delivery once the receiver's answer is back, just after the event went out.
    wait_until(lambda: bool(h.payments()[0]["callback_deliveries"]), 5, "the simulator's delivery record")
    [payment] = h.payments()
    [delivery] = payment["callback_deliveries"]
    assert delivery["url"].endswith(f"/mpesa/result/{TOKEN}") and delivery["status"] == 200


def test_forged_success_with_a_wrong_amount_changes_nothing(harness_factory: Callable[..., Harness]) -> None:
    h = start(harness_factory)
    ledger: Ledger = h.stack.receiver.ledger
    payout = accepted_payout(h, "p-forged")
    before, seen = snapshot(ledger), events_of(h, "p-forged")
    counted = quarantined("amount")

    forged = result_for(payout, amount="150000.00")
    answer = post(h, forged)

    assert answer.status_code == 200 and b"00000000" in answer.content, "stored, so answered success"
    assert snapshot(ledger) == before
    assert ledger.outbox.pending(payout_id="p-forged") == []
    time.sleep(0.5)
    assert events_of(h, "p-forged") == seen == ["payout.accepted"]
    [entry] = ledger.quarantine.entries()
    assert (entry.reason, entry.payout_id, entry.state) == ("amount", "p-forged", QuarantineState.HELD)
    assert entry.raw == forged and "150000" in entry.detail
    rows = table_rows(h.settings.ledger, "SELECT disposition, applied FROM results WHERE payout_id = 'p-forged'")
    assert [(r["disposition"], bool(r["applied"])) for r in rows] == [("quarantined", False)]
    assert quarantined("amount") - counted == 1

    # The quarantine does not block the genuine result.
    assert post(h, result_for(payout, receipt="SGR7GENUINE1")).status_code == 200
    h.events.wait_for(lambda e: "payout.completed" in events_of(h, "p-forged"), 10, "completed")
    stored = ledger.payouts.get("p-forged")
    assert stored is not None and stored.status is PayoutStatus.COMPLETED and stored.receipt == "SGR7GENUINE1"
    assert paid_once(h, "p-forged")


@pytest.mark.parametrize(
    ("forgery", "reason"),
    [
        ({"msisdn": "254799999999"}, "msisdn"),
        ({"conversation_id": "AG_20990101_forged"}, "conversation_id"),
    ],
)
def test_other_mismatches_are_quarantined_too(
    harness_factory: Callable[..., Harness], forgery: dict[str, str], reason: str
) -> None:
    h = start(harness_factory)
    ledger: Ledger = h.stack.receiver.ledger
    payout = accepted_payout(h, f"p-{reason}")
    before = snapshot(ledger)
    assert post(h, result_for(payout, **forgery)).status_code == 200
    assert snapshot(ledger) == before
    assert [e.reason for e in ledger.quarantine.entries()] == [reason]


def test_an_unknown_id_is_kept_unmatched_and_quarantined(harness_factory: Callable[..., Harness]) -> None:
    h = start(harness_factory)
    ledger: Ledger = h.stack.receiver.ledger
    payout = accepted_payout(h, "p-known")
    unmatched_before = REGISTRY.get_sample_value("mpesa_b2c_results_unmatched_total") or 0.0
    counted = quarantined("unknown_payout")
    before = snapshot(ledger)

    body = result_for(payout, originator="600000_mpesab2c_" + "f" * 32, conversation_id="AG_20990101_nobody")
    assert post(h, body).status_code == 200

    assert snapshot(ledger) == before
    rows = table_rows(h.settings.ledger, "SELECT disposition, payout_id FROM results WHERE disposition <> 'applied'")
    assert rows == [{"disposition": "unmatched", "payout_id": None}]
    [entry] = ledger.quarantine.entries()
    assert entry.reason == "unknown_payout" and entry.payout_id is None and entry.raw == body
    assert (REGISTRY.get_sample_value("mpesa_b2c_results_unmatched_total") or 0.0) - unmatched_before == 1
    assert quarantined("unknown_payout") - counted == 1


def test_quarantine_list_show_drop_release(
    harness_factory: Callable[..., Harness], capsys: pytest.CaptureFixture[str]
) -> None:
    h = start(harness_factory)
    ledger: Ledger = h.stack.receiver.ledger
    first = accepted_payout(h, "p-q1")
    second = accepted_payout(h, "p-q2", amount="250.00")
    assert post(h, result_for(first, amount="9999.00")).status_code == 200
    assert post(h, result_for(second, amount="25.00", receipt="SGR7RELEASE")).status_code == 200
    q1, q2 = (f"q:{e.id}" for e in ledger.quarantine.entries())

    code, out = cli(h.settings, capsys, "list", "--quarantine")
    assert code == 0 and q1 in out and q2 in out and "amount" in out and "p-q1" in out
    assert not FULL_MSISDN.search(out)
    code, out = cli(h.settings, capsys, "list", "--quarantine", "--json")
    listed = json.loads(out)
    summary = [(row["id"], row["reason"], row["state"]) for row in listed]
    assert summary == [(q1, "amount", "held"), (q2, "amount", "held")]

    code, out = cli(h.settings, capsys, "show", q1)
    assert code == 0 and "ResultMsg" in out and "9999.00" in out
    assert not FULL_MSISDN.search(out), "the public name's number is masked"
    code, out = cli(h.settings, capsys, "show", q1, "--raw")
    assert first.command.msisdn in out

    with pytest.raises(Exception, match="never replayed"):
        cli(h.settings, capsys, "replay", q1)

    code, out = cli(h.settings, capsys, "drop", q1, "--note", "forged: wrong amount")
    assert code == 0 and f"dropped {q1}" in out
    entry = ledger.quarantine.get(int(q1[2:]))
    assert entry is not None and entry.state is QuarantineState.DROPPED and entry.resolution == "forged: wrong amount"
    assert [f"q:{e.id}" for e in ledger.quarantine.entries()] == [q2]
    assert len(ledger.quarantine.entries(include_resolved=True)) == 2
    with pytest.raises(Exception, match="already dropped"):
        cli(h.settings, capsys, "drop", q1)

    # Release needs --yes; then the result is applied to its payout as it is.
    with pytest.raises(Exception, match="--yes"):
        cli(h.settings, capsys, "release", q2)
    assert ledger.payouts.get("p-q2").status is PayoutStatus.ACCEPTED  # type: ignore[union-attr]
    code, out = cli(h.settings, capsys, "release", q2, "--yes", "--json")
    released = json.loads(out)
    assert released["outcome"] == ApplyOutcome.APPLIED and released["status"] == "completed"
    h.events.wait_for(lambda e: "payout.completed" in events_of(h, "p-q2"), 10, "released result's event")
    stored = ledger.payouts.get("p-q2")
    assert stored is not None and stored.receipt == "SGR7RELEASE"
    assert ledger.quarantine.entries() == []
    assert count(h.settings.ledger, "quarantine") == 2
    assert Decimal(stored.command.amount) == Decimal("250.00")
