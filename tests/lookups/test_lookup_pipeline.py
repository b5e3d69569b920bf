"""Resolving unknowns and finding lost results end to end: worker, receiver, simulator, both ledger engines.

The simulator holds every *payment* result back for 30 s (past each test), while status query answers come
at once: whatever settles these payouts is a lookup, not the payment's own callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY

from tests.lookups.conftest import FAST_LOOKUPS, prove_credential, warmup_ocid
from tests.support.commands import command_body
from tests.support.fault_proxy import FaultProxy, all_of, first_payments_of, is_status_query
from tests.support.pipeline import Harness
from tests.support.waiting import wait_until
from worker.payouts.models import originator_conversation_id
from worker.simulator import SimulatorOptions

# Payment results never arrive during a test; status answers and queue timeouts do, quickly.
LOOKUPS_ONLY = SimulatorOptions(result_delay=30.0, query_result_delay=0.05, queue_timeout_delay=0.1, slow_seconds=2.0)


def command(payout_id: str, msisdn: str) -> dict[str, Any]:
    return command_body(payout_id, msisdn, "150.00")


def ocid(h: Harness, payout_id: str) -> str:
    return originator_conversation_id(h.settings.mpesa.shortcode, h.settings.mpesa.org_name, payout_id)


def history(h: Harness, payout_id: str) -> list[str]:
    return [key for key, event in h.events.snapshot() if event["payout_id"] == payout_id and not event["duplicate"]]


def payments(h: Harness) -> list[dict[str, Any]]:
    """The simulator's payment requests, without the warm-up payout's (see prove_credential)."""
    return [p for p in h.payments() if p["originator_conversation_id"] != warmup_ocid(h)]


def paid(h: Harness) -> dict[str, int]:
    return {k: n for k, n in h.paid_by_originator().items() if k != warmup_ocid(h)}


def final(h: Harness, payout_id: str) -> dict[str, Any] | None:
    for key, event in h.events.snapshot():
        if event["payout_id"] == payout_id and key in ("payout.completed", "payout.failed"):
            return event
    return None


def test_transport_faults_and_a_lost_result_are_resolved_by_lookup(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(LOOKUPS_ONLY, **FAST_LOOKUPS)
    prove_credential(h)
    unknown_ones = {
        "slow": "254700000001",
        "http500": "254700000002",
        "reset": "254700000003",
        "malformed": "254700000011",
    }
    batch = [command(pid, msisdn) for pid, msisdn in unknown_ones.items()]
    batch.append(command("dropped", "254700000006"))
    h.publish(batch)
    everyone = [str(c["payout_id"]) for c in batch]
    h.events.wait_for(lambda e: all(final(h, pid) for pid in everyone), 30, "every payout final")

    for pid in unknown_ones:
        assert history(h, pid) == ["payout.unknown", "payout.accepted", "payout.completed"], pid
    assert history(h, "dropped") == ["payout.accepted", "payout.completed"]
    for pid in everyone:
        event = final(h, pid)
        assert event is not None and event["status"] == "completed" and event["result"]["receipt"], pid
        queries = h.stack.worker.ledger.lookups.status_queries(pid) if h.stack.worker else []
        assert [q.verdict for q in queries if q.verdict] == ["completed"], (pid, queries)
        assert queries[0].query_originator_conversation_id == ocid(h, pid) + "_Q1"
    assert paid(h) == {ocid(h, pid): 1 for pid in everyone}, "each paid exactly once"
    assert len(payments(h)) == len(everyone), "nothing was resent: every payment was found"
    receipts = {t["originator_conversation_id"]: t["receipt"] for t in payments(h)}
    for pid in everyone:
        event = final(h, pid)
        assert event is not None and event["result"]["receipt"] == receipts[ocid(h, pid)]


def test_cached_request_that_timed_out_is_resent_with_the_same_id(harness_factory: Callable[..., Harness]) -> None:
    h = harness_factory(LOOKUPS_ONLY, **FAST_LOOKUPS)
    prove_credential(h)
    before = REGISTRY.get_sample_value("mpesa_b2c_queue_timeouts_total") or 0.0
    h.publish([command("cached", "254700000005")])
    h.events.wait_for(lambda e: final(h, "cached") is not None, 30, "the cached payout final")

    assert history(h, "cached") == ["payout.accepted", "payout.unknown", "payout.accepted", "payout.completed"]
    unknown = [e for e in h.events.of("payout.unknown") if e["payout_id"] == "cached"]
    assert unknown[0]["reason"] == "queue_timeout"
    sent = payments(h)
    assert [p["originator_conversation_id"] for p in sent] == [ocid(h, "cached")] * 2, "same id, never a new one"
    assert [p["response_code"] for p in sent] == ["100000000", "0"]
    assert paid(h) == {ocid(h, "cached"): 1}
    assert h.stack.worker is not None
    verdicts = [q.verdict for q in h.stack.worker.ledger.lookups.status_queries("cached")]
    assert verdicts[0] == "not_found" and verdicts[-1] == "completed"
    assert (REGISTRY.get_sample_value("mpesa_b2c_queue_timeouts_total") or 0.0) == before + 1


def test_a_lost_request_is_found_missing_and_resent_once(
    proxies: Callable[..., FaultProxy], harness_factory: Callable[..., Harness]
) -> None:
    proxy = proxies(first_payments_of(originator_conversation_id("600000", "mpesab2c", "lost")))
    h = harness_factory(LOOKUPS_ONLY, gateway_url=proxy.attach, **FAST_LOOKUPS)
    prove_credential(h)
    h.publish([command("lost", "254712000001")])
    h.events.wait_for(lambda e: final(h, "lost") is not None, 30, "the lost payout final")

    assert history(h, "lost")[:2] == ["payout.unknown", "payout.accepted"]
    assert history(h, "lost")[-1] == "payout.completed"
    assert len(proxy.swallowed) == 1 and not is_status_query(proxy.swallowed[0])
    sent = payments(h)
    assert len(sent) == 1 and sent[0]["originator_conversation_id"] == ocid(h, "lost")
    assert paid(h) == {ocid(h, "lost"): 1}
    assert h.stack.worker is not None
    assert h.stack.worker.ledger.lookups.status_queries("lost")[0].verdict == "not_found"
    payout = h.stack.worker.ledger.payouts.get("lost")
    assert payout is not None and payout.send_attempts == 2


def test_an_unknown_nobody_can_resolve_is_flagged_and_never_failed(
    proxies: Callable[..., FaultProxy], harness_factory: Callable[..., Harness]
) -> None:
    proxy = proxies(all_of(originator_conversation_id("600000", "mpesab2c", "void")), hold=1.5)
    env = {**FAST_LOOKUPS, "B2C_LOOKUP_MAX_ATTEMPTS": "3"}
    h = harness_factory(LOOKUPS_ONLY, gateway_url=proxy.attach, **env)
    prove_credential(h)
    h.publish([command("void", "254712000002")])
    worker = h.stack.worker
    assert worker is not None
    wait_until(lambda: worker.ledger.lookups.count_flagged() == 1, 30, "the payout flagged for review")

    state = worker.ledger.lookups.lookup_state("void")
    assert state is not None and state.flag_reason == "max_attempts" and state.lookup_attempts == 3
    payout = worker.ledger.payouts.get("void")
    assert payout is not None and payout.status.value == "unknown", "never failed by a timer"
    assert len(worker.ledger.lookups.status_queries("void")) == 3
    assert all(is_status_query(body) for body in proxy.swallowed[1:]) and len(proxy.swallowed) == 4
    wait_until(lambda: REGISTRY.get_sample_value("mpesa_b2c_payouts_flagged_for_review") == 1.0, 5, "the review gauge")
    assert "payout.failed" not in history(h, "void") and history(h, "void") == ["payout.unknown"]
    assert payments(h) == []


def test_confirm_success_publishes_completed_only_after_a_status_query(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(
        SimulatorOptions(result_delay=0.05),
        B2C_CONFIRM_SUCCESS="true",
        **{**FAST_LOOKUPS, "B2C_RESULT_TIMEOUT_SECONDS": "60"},
    )
    h.publish([command("confirmed", "254712000003")])
    h.events.wait_for(lambda e: final(h, "confirmed") is not None, 30, "completion")
    assert history(h, "confirmed") == ["payout.accepted", "payout.completed"]
    assert h.stack.worker is not None
    queries = h.stack.worker.ledger.lookups.status_queries("confirmed")
    assert [q.trigger for q in queries] == ["confirm_success"] and queries[0].verdict == "completed"
    completed = final(h, "confirmed")
    assert completed is not None and completed["result"]["balances"]["utility"] is not None
    assert paid(h) == {ocid(h, "confirmed"): 1}
