"""The circuit breaker on the real pipeline: funds run out, a wrong credential, the gateway gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY

from tests.support.commands import command
from tests.support.flow import FAST, Sim, breaker, epoch, queued
from tests.support.pipeline import Harness
from tests.support.waiting import wait_until
from worker.amqp.consumer import Ack, Delivery
from worker.ledger import open_ledger
from worker.ledger.flow_state import BreakerReason
from worker.paying.service import WorkerService
from worker.payouts.models import PayoutStatus, originator_conversation_id, parse_command
from worker.simulator import SimulatorOptions, start_simulator

CLI = Path(sys.executable).with_name("mpesa-b2c")


def healthz(worker: WorkerService | None) -> tuple[str, dict[str, Any]]:
    assert worker is not None, "the harness runs a worker"
    answer: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"] = status

    body = b"".join(worker._app({"PATH_INFO": "/healthz"}, start_response))
    return answer["status"], json.loads(body)


def circuit_open(reason: str) -> float:
    return REGISTRY.get_sample_value("mpesa_b2c_circuit_open", {"reason": reason}) or 0.0


def settled(h: Harness) -> int:
    return len(h.events.of("payout.completed")) + len(h.events.of("payout.failed"))


def test_balance_run_down_mid_batch_leaves_the_rest_queued_then_pays_everyone_once(
    harness_factory: Callable[..., Harness],
) -> None:
    h = harness_factory(
        SimulatorOptions(result_delay=0.05), **{**FAST, "B2C_CONCURRENCY": "2", "B2C_BREAKER_PROBE_SECONDS": "2.5"}
    )
    sim = Sim(h)
    sim.balance("450.00")  # enough for four of the payouts below (100.00, 101.00, ...)
    h.publish([command("fund", n) for n in range(20)])

    wait_until(lambda: breaker(h.settings).open, 20, "the breaker to open on ResultCode 1")
    row = breaker(h.settings)
    assert (row.reason, row.code) == ("funds", "1")
    assert row.opened_at is not None
    # Payouts in flight when the first ResultCode 1 arrived were decided by M-PESA: they fail, nothing paid.
    wait_until(lambda: h.stack.worker is not None and h.stack.worker.consumer.paused, 5, "the consumer to pause")
    wait_until(lambda: queued(h.settings) + settled(h) == 20, 10, "every payout settled or back in the queue")
    time.sleep(0.5)
    payments = h.payments()
    late = [p for p in payments if epoch(p["received_at"]) > row.opened_at + 0.3]
    assert late == [], "a payment was sent while the breaker was open"
    failed = h.events.of("payout.failed")
    assert failed, "the payout that hit ResultCode 1 failed"
    assert {f["result"]["code"] for f in failed} == {"1"} and {f["reason"] for f in failed} == {"funds"}
    assert len(failed) < 20 - 4 and queued(h.settings) > 0, "the rest of the batch stays queued, not failed"
    assert h.stack.worker is not None
    status, health = healthz(h.stack.worker)
    assert status == "200 OK", "an open breaker is reported, not a failed process"
    assert health["consuming"] is False
    assert health["breaker"]["state"] == "open" and health["breaker"]["reason"] == "funds"
    assert "fund the B2C utility account" in health["breaker"]["action"]
    assert circuit_open("funds") == 1 and circuit_open("credential") == 0

    sim.balance(None)  # topped up: the next probe (one real payout) is paid and the breaker closes
    wait_until(lambda: settled(h) == 20, 40, "every payout settled", lambda: h.events.snapshot()[-3:])
    assert not breaker(h.settings).open
    wait_until(lambda: circuit_open("funds") == 0 and healthz(h.stack.worker)[1]["consuming"], 5, "resumed")
    assert len(h.events.of("payout.failed")) == len(failed), "no payout failed after the breaker opened"
    paid = h.paid_by_originator()
    assert len(paid) == 20 - len(failed) and set(paid.values()) == {1}
    assert queued(h.settings) == 0


def test_wrong_credential_costs_one_request_then_nothing_is_sent_until_an_operator_closes(
    harness_factory: Callable[..., Harness], ledger_env: dict[str, str]
) -> None:
    h = harness_factory(SimulatorOptions(result_delay=0.05), **{**FAST, "B2C_CONCURRENCY": "4"})
    sim = Sim(h)
    sim.fault("wrong_credential")  # every payment request fails with ResultCode 18
    h.publish([command("cred", n) for n in range(8)])

    h.events.wait_for(lambda e: len(e.of("payout.failed")) == 1, 20, "the credential failure")
    wait_until(lambda: breaker(h.settings).open, 5, "the breaker to open")
    row = breaker(h.settings)
    assert (row.reason, row.code) == ("credential", "18")
    wait_until(
        lambda: queued(h.settings) == 7,
        15,
        "the other seven back in the queue",
        lambda: (queued(h.settings), h.events.of("payout.failed"), len(h.payments())),
    )
    time.sleep(3 * float(FAST["B2C_BREAKER_PROBE_SECONDS"]))  # several probe intervals: no probe for this
    assert len(h.payments()) == 1, "a second request with a bad credential was sent"
    assert h.events.of("payout.failed")[0]["reason"] == "credential"
    assert queued(h.settings) == 7

    sim.fault(None)  # the operator fixed the credential ...
    env = {k: v for k, v in os.environ.items() if not k.startswith("B2C_")}
    env.update(ledger_env, B2C_DATA_DIR=str(h.settings.data_dir), B2C_SHORTCODE=h.settings.mpesa.shortcode)
    closed = subprocess.run(
        [str(CLI), "breaker", "close", "--reason", "credential"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert closed.returncode == 0, closed.stderr
    assert "closed" in closed.stdout and '"state": "closed"' in closed.stdout  # ... and closed the breaker

    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 7, 30, "the other seven paid")
    paid = h.paid_by_originator()
    assert len(paid) == 7 and set(paid.values()) == {1}
    assert len(h.payments()) == 8, "one failed request and seven payments, nothing resent"


def _private_key(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def test_unreachable_gateway_opens_the_breaker_and_the_commands_wait_for_it(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # The restarted simulator must keep its key, or the worker's SecurityCredential would no longer decrypt.
    key = _private_key(tmp_path / "sim-key.pem")
    options = SimulatorOptions(result_delay=0.05)
    h = harness_factory(
        options, **{**FAST, "B2C_SIM_PRIVATE_KEY": str(key), "B2C_BREAKER_THRESHOLD": "2", "B2C_CONNECT_TIMEOUT": "1"}
    )
    port = h.stack.simulator.port
    h.stack.simulator.stop()
    h.publish([command("down", n) for n in range(6)])

    wait_until(lambda: breaker(h.settings).open, 20, "the breaker to open")
    assert breaker(h.settings).reason == "unreachable"
    wait_until(lambda: queued(h.settings) == 6, 10, "all six waiting in the queues")
    assert h.stack.worker is not None and h.stack.worker.consumer.paused
    assert h.events.snapshot() == [], "nothing failed, nothing was rejected: nothing happened"

    restarted = start_simulator(h.settings, port=port, options=options)
    try:
        h.events.wait_for(lambda e: len(e.of("payout.completed")) == 6, 30, "all six paid once the gateway is back")
        assert not breaker(h.settings).open
        assert not h.stack.worker.consumer.paused
        paid = h.paid_by_originator()
        assert len(paid) == 6 and set(paid.values()) == {1}
    finally:
        restarted.stop()


def _worker(h: Harness) -> WorkerService:
    assert h.stack.worker is not None
    return h.stack.worker


def _interrupted_send(h: Harness, run: str) -> tuple[str, str, Delivery]:
    """A payout its worker marked ``sending`` before dying, its send lease over, and the command redelivered."""
    worker, settings = _worker(h), h.settings
    body = json.dumps(command(run, 1)).encode()
    parsed = parse_command(body, amount_min=settings.mpesa.amount_min, amount_max=settings.mpesa.amount_max)
    ocid = originator_conversation_id(settings.mpesa.shortcode, settings.mpesa.org_name, parsed.payout_id)
    worker.ledger.payouts.record(parsed, ocid)
    assert worker.ledger.payouts.claim_send(parsed.payout_id, expected_attempts=0) is not None  # then the worker died
    worker.processor.send_lease_seconds = 0.0
    redelivered = Delivery(body=body, headers={}, redelivered=True, delivery_count=1, message_id=None, routing_key="")
    return parsed.payout_id, ocid, redelivered


def test_an_orphaned_send_redelivered_while_the_breaker_is_open_sends_nothing_then_is_paid_once(
    harness_factory: Callable[..., Harness],
) -> None:
    """A worker died after marking a payout ``sending``; its command comes back while the circuit is open.

    The resend goes through the same gate as every request: nothing reaches the gateway while the breaker is
    open. Being held says nothing about what the dead worker's send did, so the payout becomes ``unknown``
    (never ``received`` or ``rejected``), and once the breaker closes the lookup runner pays it once, under its
    original id.
    """
    h = harness_factory(SimulatorOptions(result_delay=0.05), **{**FAST, "B2C_LOOKUP_AFTER_SECONDS": "0.5"})
    worker, settings = _worker(h), h.settings
    payout_id, ocid, redelivered = _interrupted_send(h, "orphan")

    ledger = open_ledger(settings.ledger)
    store = ledger.flow
    try:
        opened = store.open_breaker(
            settings.mpesa.shortcode,
            reason=BreakerReason.CREDENTIAL,
            code="18",
            detail="test",
            by="test",
            next_probe_at=None,
        )
        assert opened is not None and opened.open
        assert isinstance(worker.processor.handle(redelivered), Ack)
        assert h.payments() == [], "a request was sent while the breaker was open"
        payout = worker.ledger.payouts.get(payout_id)
        assert payout is not None and payout.originator_conversation_id == ocid
        assert payout.status is PayoutStatus.UNKNOWN, "a held resend of an interrupted send is not 'not sent'"
        assert not h.events.of("payout.failed") and not h.events.of("payout.rejected")

        assert store.close_breaker(settings.mpesa.shortcode, by="test") is not None
    finally:
        ledger.close()
    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 1, 30, "the orphan paid once the breaker closed")
    assert h.paid_by_originator() == {ocid: 1}


def test_a_busy_answer_to_the_resend_of_an_interrupted_send_leaves_it_unknown(
    harness_factory: Callable[..., Harness],
) -> None:
    """'Busy' says the resend was not processed, not that the dead worker's first send was not: the payout
    becomes ``unknown`` (not ``received``, not a delivery-limit rejection) and the lookup runner finishes it."""
    h = harness_factory(SimulatorOptions(result_delay=0.05), **{**FAST, "B2C_LOOKUP_AFTER_SECONDS": "0.5"})
    worker = _worker(h)
    payout_id, ocid, redelivered = _interrupted_send(h, "busy-orphan")

    Sim(h).fault("throttled")  # the resend is answered 'throttled' / 'busy'
    assert isinstance(worker.processor.handle(redelivered), Ack)
    payout = worker.ledger.payouts.get(payout_id)
    assert payout is not None and payout.status is PayoutStatus.UNKNOWN
    Sim(h).fault(None)

    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 1, 30, "the orphan paid by a lookup resend")
    assert h.paid_by_originator() == {ocid: 1}
    assert not h.events.of("payout.failed") and not h.events.of("payout.rejected")
