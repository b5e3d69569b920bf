"""Throughput of one ``mpesa-b2c worker`` process against a gateway that answers in 300 ms.

Two phases in one run, on the same broker, ledger, simulator and receiver:

- concurrent: a worker process with DEFAULT settings (concurrency 16, prefetch 32) pays ``--payouts`` (200);
- serial: the same worker with ``B2C_CONCURRENCY=1`` and ``B2C_PREFETCH=1``, one payout at a time, pays
  ``--baseline-payouts`` (40 by default, to keep the run short).

Since the two phases pay different numbers of payouts, they are compared by throughput (payouts per
second), measured from the moment the batch is published to the last ``payout.completed`` event; the time
to the last ``payout.accepted`` event is reported too. The run exits 1 when the ratio is below
``--min-ratio`` (8), 2 when a phase did not finish or something paid twice.

The simulator runs in this process with 64 request threads: it stands in for M-PESA, which serves many
callers at once, and its default of 8 threads would otherwise be the bottleneck instead of the worker.
The callback receiver runs in this process too; the worker is a separate process, as in production.

    python bench/throughput.py                       # SQLite ledger (the default), local RabbitMQ
    python bench/throughput.py --database-url postgresql://postgres@127.0.0.1:5432/b2c_bench
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pika
import requests

from worker.amqp.connection import connect
from worker.amqp.topology import declare_topology, delay_queue_name
from worker.cli.publish import publish_commands
from worker.events.follow import follow_events
from worker.payouts.models import originator_conversation_id
from worker.receiver.service import ReceiverService
from worker.settings import Settings, load_settings
from worker.simulator import RunningSimulator, SimulatorOptions, start_simulator

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
CLI = Path(sys.executable).with_name("mpesa-b2c")


@dataclass(frozen=True)
class Phase:
    label: str
    payouts: int
    worker_env: dict[str, str]
    accepted_seconds: float
    completed_seconds: float
    worker_cpu_seconds: float | None = None

    @property
    def accepted_per_second(self) -> float:
        return self.payouts / self.accepted_seconds

    @property
    def completed_per_second(self) -> float:
        return self.payouts / self.completed_seconds


@dataclass(frozen=True)
class BenchResult:
    concurrent: Phase
    serial: Phase
    latency: float
    result_delay: float
    warmup: int = 0

    @property
    def ratio(self) -> float:
        """Completed payouts per second, concurrent over serial: the number the gate is on."""
        return self.concurrent.completed_per_second / self.serial.completed_per_second

    @property
    def accepted_ratio(self) -> float:
        return self.concurrent.accepted_per_second / self.serial.accepted_per_second

    def report(self) -> str:
        lines = [
            f"simulator latency {self.latency:.3f}s, result delay {self.result_delay:.3f}s; "
            f"{self.warmup} untimed warm-up payout(s) per phase; worker CPU is for the timed batch",
            f"{'phase':<12} {'worker settings':<34} {'payouts':>7} {'to last accepted':>17} "
            f"{'to last completed':>18} {'completed/s':>11} {'worker CPU':>10}",
        ]
        for phase in (self.concurrent, self.serial):
            settings = " ".join(f"{k}={v}" for k, v in phase.worker_env.items()) or "defaults"
            cpu = "n/a" if phase.worker_cpu_seconds is None else f"{phase.worker_cpu_seconds:.2f}s"
            lines.append(
                f"{phase.label:<12} {settings:<34} {phase.payouts:>7} "
                f"{phase.accepted_seconds:>8.2f}s ({phase.accepted_per_second:5.1f}/s) "
                f"{phase.completed_seconds:>8.2f}s {phase.completed_per_second:>11.2f} {cpu:>10}"
            )
        lines.append(f"ratio (completed/s): {self.ratio:.1f}x; ratio (accepted/s): {self.accepted_ratio:.1f}x")
        return "\n".join(lines)


class BenchError(Exception):
    """A phase did not finish, or the simulator's record shows a payout paid other than once."""


class _Events:
    """Every event on the exchange with the monotonic time it arrived here."""

    def __init__(self, url: str, exchange: str) -> None:
        self._lock = threading.Lock()
        self._seen: list[tuple[float, str, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, exchange), name="bench-events", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise BenchError("the event collector could not bind its queue")

    def _run(self, url: str, exchange: str) -> None:
        follow_events(url, exchange, self._keep, on_ready=self._ready.set, stop=self._stop)

    def _keep(self, routing_key: str, body: bytes) -> bool:
        with self._lock:
            self._seen.append((time.monotonic(), routing_key, json.loads(body)))
        return not self._stop.is_set()

    def last(self, routing_key: str, ids: set[str]) -> tuple[int, float]:
        """How many of ``ids`` have a first (non-duplicate) ``routing_key`` event, and when the last arrived."""
        first: dict[str, float] = {}
        with self._lock:
            for at, key, event in self._seen:
                if key == routing_key and not event.get("duplicate") and event.get("payout_id") in ids:
                    first.setdefault(event["payout_id"], at)
        return len(first), max(first.values(), default=0.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class _Worker:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._log: IO[bytes] = log_path.open("ab")
        self.log_path = log_path
        self.process = subprocess.Popen(
            [str(CLI), "worker", "--metrics-port", "0"], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def cpu_seconds(self) -> float | None:
        """User + system CPU the worker used so far (Linux /proc), start-up included."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])


def _consumers(settings: Settings) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp.url))
    try:
        return int(connection.channel().queue_declare(settings.amqp.command_queue, passive=True).method.consumer_count)
    finally:
        connection.close()


def _paid_by_originator(simulator: RunningSimulator) -> dict[str, int]:
    response = requests.get(f"{simulator.base_url}/simulator/transactions", timeout=10)
    response.raise_for_status()
    paid: dict[str, int] = {}
    for t in response.json():
        if t.get("command_id") != "TransactionStatusQuery" and t.get("paid"):
            paid[t["originator_conversation_id"]] = paid.get(t["originator_conversation_id"], 0) + 1
    return paid


class _Bench:
    def __init__(self, env: dict[str, str], settings: Settings, simulator: RunningSimulator, workdir: Path):
        self.env = env
        self.settings = settings
        self.simulator = simulator
        self.workdir = workdir
        self.events = _Events(settings.amqp.url, settings.amqp.events_exchange)

    def phase(self, label: str, payouts: int, worker_env: dict[str, str], warmup: int, timeout: float) -> Phase:
        env = {k: v for k, v in os.environ.items() if not k.startswith("B2C_")}
        env.update(self.env, **worker_env)
        worker = _Worker(env, self.workdir / f"worker-{label}.log")
        try:
            deadline = time.monotonic() + 30
            while _consumers(self.settings) == 0:
                if worker.process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"the {label} worker did not start consuming:\n{worker.tail()}")
                time.sleep(0.05)
            if warmup:
                self._pay(f"{label}-warmup", warmup, worker, timeout)
            cpu_before = worker.cpu_seconds()
            ids, started = self._pay(label, payouts, worker, timeout)
            cpu_after = worker.cpu_seconds()
            accepted, last_accepted = self.events.last("payout.accepted", ids)
            _, last_completed = self.events.last("payout.completed", ids)
            if accepted < payouts:
                raise BenchError(f"{label}: only {accepted}/{payouts} payout.accepted events")
        finally:
            worker.stop()
        self._check_paid_once(label, ids)
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        return Phase(label, payouts, worker_env, last_accepted - started, last_completed - started, cpu)

    def _pay(self, label: str, payouts: int, worker: _Worker, timeout: float) -> tuple[set[str], float]:
        """Publish ``payouts`` commands and wait for all their ``payout.completed``; (ids, publish time)."""
        run = uuid.uuid4().hex[:6]
        batch = [
            {"payout_id": f"{label}-{run}-{n:04d}", "msisdn": f"0712{n:06d}", "amount": f"{100 + n}.00"}
            for n in range(payouts)
        ]
        ids = {c["payout_id"] for c in batch}
        bodies = [json.dumps(c).encode() for c in batch]
        started = time.monotonic()
        publish_commands(self.settings.amqp.url, self.settings.amqp.command_queue, bodies)
        deadline = started + timeout
        while self.events.last("payout.completed", ids)[0] < payouts:
            if time.monotonic() > deadline or worker.process.poll() is not None:
                done = self.events.last("payout.completed", ids)[0]
                raise BenchError(f"{label}: {done}/{payouts} completed after {timeout:.0f}s\n{worker.tail()}")
            time.sleep(0.02)
        return ids, started

    def _check_paid_once(self, label: str, ids: set[str]) -> None:
        mpesa = self.settings.mpesa
        expected = {originator_conversation_id(mpesa.shortcode, mpesa.org_name, i) for i in ids}
        paid = {k: v for k, v in _paid_by_originator(self.simulator).items() if k in expected}
        if set(paid) != expected or set(paid.values()) != {1}:
            twice = sum(1 for v in paid.values() if v > 1)
            raise BenchError(f"{label}: {len(expected - set(paid))} unpaid, {twice} paid more than once")

    def close(self) -> None:
        self.events.close()


def _delete_topology(url: str, names: dict[str, str]) -> None:
    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        for seconds in load_settings({}).flow.retry_delays:  # delay tiers, if the worker deferred a command
            channel.queue_delete(delay_queue_name(names["B2C_COMMAND_QUEUE"], seconds))
        channel.queue_delete(names["B2C_COMMAND_QUEUE"])
        channel.queue_delete(names["B2C_DEAD_QUEUE"])
        channel.exchange_delete(names["B2C_EVENTS_EXCHANGE"])
        connection.close()


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mpesa-b2c-bench-") as tmp:
        yield Path(tmp)


def run_benchmark(
    *,
    payouts: int = 200,
    baseline_payouts: int = 40,
    latency: float = 0.3,
    result_delay: float = 1.0,
    amqp_url: str = DEFAULT_AMQP_URL,
    database_url: str | None = None,
    workdir: Path | None = None,
    warmup: int = 1,
    timeout: float = 120.0,
) -> BenchResult:
    """Run both phases and return their timings; raises BenchError when a phase fails or pays wrongly.

    Only wiring is set for the worker (broker URL and unique queue names, ledger location, the simulator's
    URL, the receiver's ResultURL); everything else is the worker's default, except in the serial phase.
    Each phase's worker first pays ``warmup`` payouts that are not timed: process start-up, connections and
    the worker's credential canary (one request whose result must come back before others are sent).
    """
    run = uuid.uuid4().hex[:8]
    names = {
        "B2C_COMMAND_QUEUE": f"bench.{run}.commands",
        "B2C_DEAD_QUEUE": f"bench.{run}.dead",
        "B2C_EVENTS_EXCHANGE": f"bench.{run}.events",
    }
    with _workdir(workdir) as work:
        env = {"B2C_AMQP_URL": amqp_url, "B2C_DATA_DIR": str(work / "data"), **names}
        if database_url:
            env["B2C_DATABASE_URL"] = database_url
        options = SimulatorOptions(latency=latency, result_delay=result_delay, threads=64, callback_threads=8)
        settings = load_settings(env)
        simulator = start_simulator(settings, host="127.0.0.1", port=0, options=options)
        receiver: ReceiverService | None = None
        bench: _Bench | None = None
        try:
            settings = dataclasses.replace(settings, mpesa=dataclasses.replace(settings.mpesa, url=simulator.url))
            receiver = ReceiverService(settings, host="127.0.0.1", port=0)
            env["B2C_MPESA_URL"] = simulator.url
            env["B2C_RESULT_URL"] = f"http://127.0.0.1:{receiver.port}/mpesa/result"
            env["B2C_QUEUE_TIMEOUT_URL"] = f"http://127.0.0.1:{receiver.port}/mpesa/queue-timeout"
            settings = load_settings(env)
            connection = connect(settings.amqp.url)
            declare_topology(connection.channel(), settings.amqp)
            connection.close()
            bench = _Bench(env, settings, simulator, work)
            concurrent = bench.phase("concurrent", payouts, {}, warmup, timeout)
            serial_env = {"B2C_CONCURRENCY": "1", "B2C_PREFETCH": "1"}
            serial = bench.phase("serial", baseline_payouts, serial_env, warmup, timeout)
        finally:
            if bench is not None:
                bench.close()
            if receiver is not None:
                receiver.stop()
            simulator.stop()
            _delete_topology(amqp_url, names)
    return BenchResult(concurrent, serial, latency, result_delay, warmup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payouts", type=int, default=200, help="payouts for the default worker (200)")
    parser.add_argument("--baseline-payouts", type=int, default=40, help="payouts for the serial worker (40)")
    parser.add_argument("--latency", type=float, default=0.3, help="simulator answer time in seconds (0.3)")
    parser.add_argument(
        "--result-delay", type=float, default=1.0, help="simulator result callback delay (1.0, its default)"
    )
    parser.add_argument("--amqp-url", default=os.environ.get("B2C_AMQP_URL", DEFAULT_AMQP_URL))
    parser.add_argument("--database-url", help="PostgreSQL ledger (default: SQLite in a temporary directory)")
    parser.add_argument("--min-ratio", type=float, default=8.0, help="exit 1 below this ratio (8)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed payouts per phase before the batch (1)")
    parser.add_argument("--workdir", type=Path, help="keep data and worker logs here instead of a temporary dir")
    args = parser.parse_args(argv)
    try:
        result = run_benchmark(
            payouts=args.payouts,
            baseline_payouts=args.baseline_payouts,
            latency=args.latency,
            result_delay=args.result_delay,
            amqp_url=args.amqp_url,
            database_url=args.database_url,
            workdir=args.workdir,
            warmup=args.warmup,
        )
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    print(result.report())
    if result.ratio < args.min_ratio:
        print(f"FAIL: {result.ratio:.1f}x is below {args.min_ratio:g}x", file=sys.stderr)
        return 1
    print(f"OK: {result.ratio:.1f}x >= {args.min_ratio:g}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
