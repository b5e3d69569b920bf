"""RabbitMQ restarted (``rabbitmqctl stop_app`` / ``start_app``) while a batch is in flight.

During the outage the worker keeps paying what it already holds and the receiver keeps storing results:
their events wait in the outbox. Afterwards the worker reconnects by itself (same process), the broker
redelivers what was never acked, and nothing is paid twice. This stops the broker shared by everything on
this machine for a few seconds, which is why it only runs with ``-m slow``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.support.commands import commands
from tests.support.crash import CrashRig, broker_stopped
from tests.support.waiting import wait_until
from worker.simulator import SimulatorOptions

BATCH = 150


@pytest.mark.slow
def test_rabbitmq_restarted_under_load(crash_rig: Callable[..., CrashRig], rabbitmq_url: str) -> None:
    rig = crash_rig(SimulatorOptions(latency=0.3, result_delay=1.5, threads=32))
    batch = commands("mq", BATCH)
    ids = [c["payout_id"] for c in batch]
    worker = rig.start_worker()
    rig.wait_consuming()
    rig.publish(batch)
    wait_until(lambda: rig.paid_count() >= 30, 30, "30 payments", rig.diagnostics)

    with broker_stopped(rabbitmq_url):
        paid_at_stop = rig.paid_count()
        time.sleep(3.0)  # in-flight sends finish and results arrive with no broker to publish to
        backlog_during = rig.ledger.outbox.backlog()
    assert paid_at_stop < BATCH, "the batch was over before the broker stopped"
    assert backlog_during > 0, "no event had to wait for the broker"

    rig.wait_all_completed(ids, timeout=90)
    assert worker.alive(), worker.tail()
    late = commands("mq-late", 10)  # taken by the same worker process, on its new connection
    rig.publish(late)
    everything = ids + [c["payout_id"] for c in late]
    rig.wait_all_completed(everything, timeout=30)
    rig.assert_paid_exactly_once(everything)
    wait_until(lambda: rig.ledger.outbox.backlog() == 0, 45, "an empty outbox", rig.diagnostics)
    wait_until(
        lambda: rig.events.ids("payout.accepted") >= set(everything), 45, "every payout.accepted", rig.diagnostics
    )
    assert not rig.events.of("payout.failed") and not rig.events.of("payout.rejected")
    assert "reconnecting" in worker.output(), worker.tail()
    assert worker.alive(), worker.tail()
