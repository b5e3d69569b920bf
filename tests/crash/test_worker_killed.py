"""``mpesa-b2c worker`` killed with SIGKILL in the middle of a batch, twice, while sends are in flight.

The simulator answers in 300 ms and the worker runs with its default concurrency (16), so at any moment about
sixteen payouts are ``sending``: recorded, claimed, their request on the wire or inside the gateway. A new
worker process must finish every payout, and the simulator's own record must show each paid exactly once.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.commands import commands
from tests.support.crash import CrashRig, free_port
from tests.support.waiting import wait_until
from worker.payouts.models import PayoutStatus
from worker.simulator import SimulatorOptions

BATCH = 60


@pytest.mark.slow
def test_worker_killed_twice_mid_batch_pays_each_exactly_once(crash_rig: Callable[..., CrashRig]) -> None:
    rig = crash_rig(SimulatorOptions(latency=0.3, result_delay=0.5, threads=32))
    batch = commands("wk", BATCH)
    ids = [c["payout_id"] for c in batch]

    first = rig.start_worker()
    rig.wait_consuming()
    rig.publish(batch)
    wait_until(lambda: rig.paid_count() >= 20, 30, "20 payments by the first worker", rig.diagnostics)
    first.kill()
    after_first = rig.status_counts(ids)
    # The kill must have hit sends in flight, or the test proves less than it claims.
    assert after_first.get(PayoutStatus.SENDING.value, 0) >= 1, after_first

    second = rig.start_worker()
    wait_until(lambda: rig.paid_count() >= 40, 60, "40 payments", rig.diagnostics)
    second.kill()
    after_second = rig.status_counts(ids)
    assert after_second.get(PayoutStatus.SENDING.value, 0) >= 1, after_second

    third = rig.start_worker()
    rig.wait_all_completed(ids, timeout=90)
    rig.assert_paid_exactly_once(ids)
    # An event a killed worker had leased from the outbox waits for the lease to run out (relay.LEASE_SECONDS).
    wait_until(lambda: rig.events.ids("payout.accepted") >= set(ids), 45, "every payout.accepted", rig.diagnostics)
    assert not rig.events.of("payout.failed") and not rig.events.of("payout.rejected")
    assert third.alive(), third.tail()


@pytest.mark.slow
def test_resend_of_a_paid_payout_is_answered_15_and_the_payout_still_completes(
    crash_rig: Callable[..., CrashRig],
) -> None:
    """The nastiest kill: the gateway took (and paid) a request, the worker died before the answer, and the
    result cannot be delivered yet. After the send lease (here 1 + 0.5 + 0.5 + 5 = 7 s) the next worker
    resends with the same OriginatorConversationID; M-PESA refuses a second payment (result 15, not an
    outcome) and the payout must still end completed: through the original result once its receiver is
    back, or through the status query the worker's lookup runner sends for a duplicate answer (which is what
    happens today: the original result names the first request's ConversationID while the ledger holds the
    resend's, so the receiver quarantines it instead of applying it).

    The second worker is told a second receiver's ResultURL, so that its own results (its credential
    canary's, the 15s, the status queries') get through while the first receiver, where the original
    results go, is still down.
    """
    options = SimulatorOptions(latency=0.3, result_delay=0.3, callback_attempts=8, callback_backoff=0.5, threads=32)
    fast_lease = {"B2C_READ_TIMEOUT": "1", "B2C_CONNECT_TIMEOUT": "0.5", "B2C_RETRY_MAX_SECONDS": "0.5"}
    rig = crash_rig(options, receiver_process=True, **fast_lease)
    receiver = rig.start_receiver()
    first = rig.start_worker()
    rig.wait_consuming()
    rig.publish(commands("warm", 1))  # proves this worker's credential (worker.flow.breaker's canary)
    rig.wait_all_completed(["warm-0000"], timeout=30)
    receiver.kill()  # from here on, the first worker's results are paid for but cannot be delivered

    batch = commands("re", 24)
    ids = [c["payout_id"] for c in batch]
    rig.publish(batch)
    wait_until(lambda: rig.paid_count() >= 9, 30, "8 payments of the batch", rig.diagnostics)
    first.kill()
    at_kill = rig.status_counts(ids)
    assert at_kill.get(PayoutStatus.SENDING.value, 0) >= 1, at_kill

    other_port = free_port()
    rig.start_receiver(other_port)
    rig.start_worker(**CrashRig.callback_env(other_port))

    def resent() -> bool:
        seen: dict[str, int] = {}
        for t in rig.transactions():
            seen[t["originator_conversation_id"]] = seen.get(t["originator_conversation_id"], 0) + 1
        return any(n > 1 for n in seen.values())

    wait_until(resent, 40, "a resend of a payout the gateway already paid", rig.diagnostics)
    rig.start_receiver()  # the original results get through on the simulator's next retry
    rig.wait_all_completed(ids, timeout=90)
    rig.assert_paid_exactly_once(["warm-0000", *ids])
    duplicates = [t for t in rig.transactions() if t["result_code"] == "15"]
    assert duplicates and all(not t["paid"] for t in duplicates)
    assert not rig.events.of("payout.failed") and not rig.events.of("payout.rejected")
