"""The fault table's process-kill rows: a batch through ``mpesa-b2c worker`` / ``callbacks`` processes, one of
them (or the gateway, or RabbitMQ) killed in the middle, measured like every other row.

The processes come from the crash tests' rig (``tests.crash.conftest``); the figures from
:func:`tests.faults.fault_suite.measure` (ledger statuses + the simulator's own record of payments). Every
rig of one test shares its queues and ledger database (the ``crash_rig`` fixture's), so a row stops its
processes before the next row starts; payout ids differ by row.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import requests

from tests.faults.fault_suite import FAST_ENV, Batch, Row, _settled, commands, measure
from tests.support.crash import CrashRig, broker_stopped
from tests.support.services import RABBITMQ_URL
from tests.support.waiting import wait_until
from worker.payouts.models import PayoutStatus
from worker.simulator import SimulatorOptions, start_simulator

COUNT = 30
# The gateway answers in 0.3 s and the worker sends four at a time (the batch takes about 3 s), so that a
# kill always finds sends in flight; each disruption checks that it did, or the row would prove nothing.
CONCURRENCY = "4"
OPTIONS = SimulatorOptions(latency=0.3, result_delay=0.3, callback_attempts=8, callback_backoff=0.5, threads=32)
WORKER_SIGKILL = "worker SIGKILL"
RECEIVER_SIGKILL = "receiver SIGKILL"
SIMULATOR_KILLED = "simulator killed"
RABBITMQ_RESTART = "RabbitMQ restart"


def _run(
    start: Callable[..., CrashRig],
    label: str,
    disrupt: Callable[[CrashRig, list[str]], None],
    *,
    env: dict[str, str],
    receiver_process: bool = False,
    timeout: float = 120.0,
) -> Row:
    rig = start(OPTIONS, receiver_process=receiver_process, **{**FAST_ENV, "B2C_CONCURRENCY": CONCURRENCY, **env})
    try:
        if receiver_process:
            rig.start_receiver()
        rig.start_worker()
        rig.wait_consuming()
        batch = Batch(label.split(" ", maxsplit=1)[0].lower(), None, COUNT)
        cmds = commands(batch, "kill")
        ids = [str(c["payout_id"]) for c in cmds]
        rig.publish(cmds)
        disrupt(rig, ids)
        wait_until(lambda: _settled(rig, ids, False), timeout, f"every payout of '{label}' final", rig.diagnostics)
        return measure(rig, batch, cmds, label)
    finally:
        for process in rig.processes:  # the next row's rig consumes the same queue
            with contextlib.suppress(Exception):
                process.stop()


def _paid(rig: CrashRig, count: int) -> None:
    wait_until(lambda: rig.paid_count() >= count, 30, f"{count} payments", rig.diagnostics)


def _unfinished(rig: CrashRig, ids: list[str]) -> dict[str, int]:
    counts = rig.status_counts(ids)
    for status in (PayoutStatus.COMPLETED, PayoutStatus.FAILED, PayoutStatus.REJECTED):
        counts.pop(status.value, None)
    assert counts, "the whole batch was final before the disruption: the row would prove nothing"
    return counts


def kill_worker(rig: CrashRig, ids: list[str]) -> None:
    _paid(rig, 8)
    rig.processes[-1].kill()
    at_kill = _unfinished(rig, ids)
    assert at_kill.get(PayoutStatus.SENDING.value, 0) >= 1, f"no send in flight at the kill: {at_kill}"
    rig.start_worker()


def kill_receiver(rig: CrashRig, ids: list[str]) -> None:
    def completed() -> int:
        return rig.status_counts(ids).get(PayoutStatus.COMPLETED.value, 0)

    wait_until(lambda: completed() >= 8, 30, "8 results recorded", rig.diagnostics)
    next(p for p in rig.processes if p.role == "callbacks").kill()
    _unfinished(rig, ids)
    time.sleep(2.0)  # results keep coming and are refused
    rig.start_receiver()


def kill_simulator(rig: CrashRig, ids: list[str]) -> None:
    """The gateway dies mid-batch (in-flight requests cut, pending results never sent) and comes back on
    the same port with its memory: the ids it has seen, its payments and balance, its key."""
    _paid(rig, 8)
    old = rig.simulator
    old.stop()
    _unfinished(rig, ids)
    time.sleep(2.0)  # sends, retries and status queries meet a closed port
    rig.simulator = start_simulator(
        rig.settings, host=old.host, port=old.port, options=OPTIONS, state=old.state, key=old.gateway.key
    )
    with contextlib.suppress(requests.RequestException):
        requests.get(f"{rig.simulator.base_url}/simulator/balance", timeout=2)


def restart_rabbitmq(rig: CrashRig, ids: list[str]) -> None:
    _paid(rig, 8)
    with broker_stopped(RABBITMQ_URL):  # started again and answering in its finally, whatever happens
        _unfinished(rig, ids)
        time.sleep(3.0)  # in-flight sends finish; their events wait in the outbox


def run_process_kills(start: Callable[..., CrashRig], env: dict[str, str]) -> list[Row]:
    """``start`` is the ``crash_rig`` fixture's; ``env`` extra B2C_* settings for every process."""
    return [
        _run(start, WORKER_SIGKILL, kill_worker, env=env),
        _run(start, RECEIVER_SIGKILL, kill_receiver, env=env, receiver_process=True),
        _run(start, SIMULATOR_KILLED, kill_simulator, env=env),
        _run(start, RABBITMQ_RESTART, restart_rabbitmq, env=env),
    ]
