"""The rate limit holds across worker replicas: the gateway never sees more than N requests in any second.

Three ``mpesa-b2c worker`` processes on one SQLite file (and, with ``-m slow``, on PostgreSQL), and three
in-process replicas on PostgreSQL, all with B2C_RATE_LIMIT=5.

Stated tolerance: with ``B2C_RATE_BURST=1`` the limiter hands out slots exactly 1/N apart, but a slot is a
time to start the request; scheduling jitter between the slot and the request reaching the simulator can
squeeze one extra request into a one-second window, so a window may hold N + 1 (the burst, 1), never more.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.commands import command
from tests.support.flow import FAST, epoch
from tests.support.pipeline import Harness
from tests.support.waiting import wait_until
from worker.paying.service import WorkerService

CLI = Path(sys.executable).with_name("mpesa-b2c")
RATE = 5
TOLERANCE = 1  # = B2C_RATE_BURST


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))


def assert_limited(h: Harness, count: int) -> None:
    times = [epoch(p["received_at"]) for p in h.payments()]
    assert len(times) == count
    assert busiest_second(times) <= RATE + TOLERANCE, sorted(times)
    assert max(times) - min(times) >= (count - RATE - TOLERANCE) / RATE, "not paced at all"


@pytest.fixture
def replicas() -> Iterator[list[WorkerService]]:
    started: list[WorkerService] = []
    yield started
    for worker in started:
        worker.stop(timeout=30)


@pytest.mark.parametrize("ledger_env", ["postgres"], indirect=True)  # the replicas' usual set-up
def test_three_replicas_share_one_rate_limit(
    harness_factory: Callable[..., Harness], replicas: list[WorkerService]
) -> None:
    h = harness_factory(**FAST, B2C_RATE_LIMIT=str(RATE), B2C_RATE_BURST=str(TOLERANCE), B2C_CONCURRENCY="4")
    for _ in range(2):  # two more workers on the same queue and ledger: three replicas with one limit
        worker = WorkerService(h.stack.settings, metrics_port=None)
        worker.start_in_thread()
        replicas.append(worker)
    h.publish([command("rate", n) for n in range(20)])

    h.events.wait_for(lambda e: len(e.of("payout.completed")) == 20, 60, "20 payouts at 5 a second")
    assert_limited(h, 20)
    assert set(h.paid_by_originator().values()) == {1}


@pytest.mark.parametrize(
    "ledger_env", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)], indirect=True
)  # processes on one host share one SQLite file; the PostgreSQL variant (10 s more) runs with -m slow
def test_three_worker_processes_share_one_rate_limit(harness_factory: Callable[..., Harness], tmp_path: Path) -> None:
    h = harness_factory(**FAST)
    assert h.stack.worker is not None
    h.stack.worker.stop(timeout=30)  # only the three processes below consume
    settings = h.stack.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("B2C_")}
    env.update(
        B2C_AMQP_URL=settings.amqp.url,
        B2C_COMMAND_QUEUE=settings.amqp.command_queue,
        B2C_DEAD_QUEUE=settings.amqp.dead_queue,
        B2C_EVENTS_EXCHANGE=settings.amqp.events_exchange,
        B2C_DATA_DIR=str(settings.data_dir),
        B2C_CERT_PATH=str(settings.mpesa.cert_path),
        B2C_MPESA_URL=settings.mpesa.url,
        B2C_RESULT_URL=settings.mpesa.result_url,
        B2C_QUEUE_TIMEOUT_URL=settings.mpesa.queue_timeout_url,
        B2C_RATE_LIMIT=str(RATE),
        B2C_RATE_BURST=str(TOLERANCE),
        B2C_CONCURRENCY="4",
        B2C_PREFETCH="4",
        **FAST,
    )
    if settings.ledger.database_url:
        env["B2C_DATABASE_URL"] = settings.ledger.database_url
    else:
        env["B2C_SQLITE_PATH"] = str(settings.ledger.sqlite_path)
    logs = [tmp_path / f"worker-{n}.log" for n in range(3)]
    processes = []
    try:
        for path in logs:
            with path.open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [str(CLI), "worker", "--metrics-port", "0"], env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                )
        wait_until(lambda: all("consuming" in p.read_text() for p in logs), 30, "three consuming workers")
        h.publish([command("procs", n) for n in range(25)])
        wait_until(
            lambda: len(h.events.of("payout.completed")) == 25,
            90,
            "25 payouts at 5 a second from three processes",
            lambda: logs[0].read_text()[-2000:],
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(40)
    assert_limited(h, 25)
    assert set(h.paid_by_originator().values()) == {1}
    assert all(": sending " in path.read_text() for path in logs), "each process paid some of the batch"
