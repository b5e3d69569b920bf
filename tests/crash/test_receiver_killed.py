"""``mpesa-b2c callbacks`` killed with SIGKILL while results are arriving, then started again.

The simulator retries a callback that got no 2xx answer (``callback_attempts``, doubling ``callback_backoff``).
Real M-PESA may not (PROTOCOL.md §3: never rely on it): a result whose deliveries all fail leaves its payout
``accepted`` — never ``failed`` — until a status query looks it up (the lookup runner of issue 4). The second
test pins that down.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.support.commands import commands
from tests.support.crash import CrashRig
from tests.support.waiting import wait_until
from worker.payouts.models import PayoutStatus
from worker.simulator import SimulatorOptions

BATCH = 60


def failed_deliveries(rig: CrashRig) -> int:
    return sum(
        1
        for t in rig.transactions()
        for d in t["callback_deliveries"]
        if d["kind"] == "result" and not (d["status"] and 200 <= d["status"] < 300)
    )


@pytest.mark.slow
def test_receiver_killed_while_results_arrive_loses_none(crash_rig: Callable[..., CrashRig]) -> None:
    options = SimulatorOptions(latency=0.3, result_delay=0.5, callback_attempts=8, callback_backoff=0.5, threads=32)
    rig = crash_rig(options, receiver_process=True)
    batch = commands("rk", BATCH)
    ids = [c["payout_id"] for c in batch]

    first_receiver = rig.start_receiver()
    rig.start_worker()
    rig.wait_consuming()
    rig.publish(batch)

    def completed() -> int:
        return rig.status_counts(ids).get(PayoutStatus.COMPLETED.value, 0)

    wait_until(lambda: completed() >= 15, 30, "15 results recorded", rig.diagnostics)
    first_receiver.kill()
    at_kill = completed()
    assert at_kill < BATCH, "every result was in before the kill; the test proves nothing"
    time.sleep(2.0)  # results keep coming and fail: connection refused
    assert failed_deliveries(rig) > 0

    rig.start_receiver()
    rig.wait_all_completed(ids, timeout=60)
    rig.assert_paid_exactly_once(ids)
    wait_until(lambda: rig.ledger.outbox.backlog() == 0, 45, "an empty outbox", rig.diagnostics)
    assert not rig.events.of("payout.failed") and not rig.events.of("payout.unknown")
    for t in rig.transactions():  # every result was in the end delivered (answered 2xx) once or more
        assert any(d["status"] == 200 for d in t["callback_deliveries"] if d["kind"] == "result"), t


@pytest.mark.slow
def test_results_whose_deliveries_all_fail_leave_payouts_accepted_not_failed(
    crash_rig: Callable[..., CrashRig],
) -> None:
    options = SimulatorOptions(latency=0.05, result_delay=0.2, callback_attempts=2, callback_backoff=0.2)
    rig = crash_rig(options, receiver_process=True)
    receiver = rig.start_receiver()
    rig.start_worker()
    rig.wait_consuming()
    # A worker sends freely only after a result of its own proved the credential (worker.flow.breaker's canary).
    rig.publish(commands("warm", 1))
    rig.wait_all_completed(["warm-0000"], timeout=30)
    receiver.kill()

    batch = commands("lost", 5)
    ids = [c["payout_id"] for c in batch]
    originators = {rig.originator(i) for i in ids}
    rig.publish(batch)

    def abandoned() -> bool:
        lost = [t for t in rig.transactions() if t["originator_conversation_id"] in originators]
        return len(lost) == 5 and all(len(t["callback_deliveries"]) == 2 for t in lost)

    wait_until(abandoned, 30, "the simulator to give up on every result", rig.diagnostics)
    rig.start_receiver()
    time.sleep(1.5)  # nothing is redelivered on its own
    assert set(rig.statuses(ids).values()) == {PayoutStatus.ACCEPTED.value}
    assert rig.events.ids("payout.accepted") >= set(ids)
    assert not rig.events.of("payout.failed")
    assert not rig.events.ids("payout.completed") & set(ids)
    rig.assert_paid_exactly_once(["warm-0000", *ids])
