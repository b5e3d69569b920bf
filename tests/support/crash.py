"""Crash tests: ``mpesa-b2c worker`` and ``mpesa-b2c callbacks`` as real processes, killed with SIGKILL.

The simulator (and, unless a test kills it, the callback receiver) run inside the test process; the worker
runs as a child process with a B2C_* environment built the way ``make_settings`` builds settings. Events are
collected on a durable queue bound to the events exchange, so none is missed even across a broker restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pika
import pytest
import requests

from tests.support.pipeline import declare
from tests.support.settings import fast_settings_env
from tests.support.waiting import wait_until
from worker.cli.publish import publish_commands
from worker.ledger import Ledger, open_ledger
from worker.payouts.models import PayoutStatus, originator_conversation_id
from worker.receiver.service import ReceiverService
from worker.settings import Settings
from worker.simulator import RunningSimulator, SimulatorOptions, start_simulator

CLI = Path(sys.executable).with_name("mpesa-b2c")
FINAL = {PayoutStatus.COMPLETED.value, PayoutStatus.FAILED.value, PayoutStatus.REJECTED.value}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def broker_answers(url: str) -> bool:
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = 2
    try:
        pika.BlockingConnection(params).close()
    except (pika.exceptions.AMQPError, OSError):
        return False
    return True


@contextlib.contextmanager
def broker_stopped(url: str) -> Iterator[None]:
    """This machine's RabbitMQ application stopped for the with-block; started again and answering after it.

    The restart is in a finally block and runs whatever happened, so a failing test never leaves the broker
    down for everyone else sharing it.
    """
    try:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, timeout=60, capture_output=True)
        yield
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=False, timeout=120, capture_output=True)
        subprocess.run(["rabbitmqctl", "await_startup"], check=False, timeout=120, capture_output=True)
        wait_until(lambda: broker_answers(url), 60, "RabbitMQ to answer again")


class CliProcess:
    """One ``mpesa-b2c ROLE`` child process; its output goes to a log file kept for failure messages."""

    def __init__(self, role: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.role = role
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.process = subprocess.Popen(
            [str(CLI), role, *args], env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed, the broker connection just drops."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 40.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return f"--- {self.role} {self.log_path.name} ---\n" + "\n".join(self.output().splitlines()[-lines:])


class EventQueue:
    """A durable queue bound to the events exchange: it keeps every event through a broker restart."""

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.name = f"{exchange}.probe.{uuid.uuid4().hex[:6]}"
        self.events: list[tuple[str, dict[str, Any]]] = []
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.queue_declare(self.name, durable=True, arguments={"x-queue-type": "classic"})
        channel.queue_bind(self.name, exchange, routing_key="payout.#")
        connection.close()

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        """Everything that arrived so far; while the broker is away, what was read before."""
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            params = pika.URLParameters(self.url)
            params.connection_attempts = 1
            connection = pika.BlockingConnection(params)
            try:
                channel = connection.channel()
                while True:
                    method, _, body = channel.basic_get(self.name, auto_ack=True)
                    if method is None:
                        break
                    self.events.append((method.routing_key, json.loads(body)))
            finally:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()
        return self.events

    def of(self, routing_key: str, *, duplicate: bool = False) -> list[dict[str, Any]]:
        return [e for k, e in self.drain() if k == routing_key and bool(e.get("duplicate")) == duplicate]

    def ids(self, routing_key: str) -> set[str]:
        return {e["payout_id"] for e in self.of(routing_key)}

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for key, event in self.drain():
            label = key + (" (dup)" if event.get("duplicate") else "")
            found[label] = found.get(label, 0) + 1
        return found

    def delete(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            connection.channel().queue_delete(self.name)
            connection.close()


@dataclass
class CrashRig:
    """Simulator (+ receiver) in this process, CLI processes around them, and the ledger to look at."""

    env: dict[str, str]
    settings: Settings
    simulator: RunningSimulator
    receiver: ReceiverService | None
    receiver_port: int
    events: EventQueue
    ledger: Ledger
    logs: Path
    processes: list[CliProcess] = field(default_factory=list)

    def _spawn(self, role: str, args: list[str], extra: dict[str, str]) -> CliProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("B2C_")}
        env.update(self.env, PYTHONUNBUFFERED="1", **extra)
        count = sum(1 for p in self.processes if p.role == role)
        process = CliProcess(role, args, env, self.logs / f"{role}-{count + 1}.log")
        self.processes.append(process)
        return process

    def start_worker(self, **extra: str) -> CliProcess:
        return self._spawn("worker", ["--metrics-port", "0"], extra)

    @staticmethod
    def callback_env(port: int) -> dict[str, str]:
        """The ResultURL and QueueTimeoutURL of a receiver on ``port``, for a worker that should use it."""
        return {
            "B2C_RESULT_URL": f"http://127.0.0.1:{port}/mpesa/result",
            "B2C_QUEUE_TIMEOUT_URL": f"http://127.0.0.1:{port}/mpesa/queue-timeout",
        }

    def start_receiver(self, port: int | None = None) -> CliProcess:
        """The receiver as ``mpesa-b2c callbacks`` on the fixed port the ResultURL names (or ``port``);
        waits until it answers."""
        assert self.receiver is None, "this rig runs its receiver in-process"
        port = self.receiver_port if port is None else port
        process = self._spawn("callbacks", ["--port", str(port)], {})
        url = f"http://127.0.0.1:{port}/healthz"

        def healthy() -> bool:
            assert process.alive(), process.tail()
            with contextlib.suppress(requests.RequestException):
                return requests.get(url, timeout=1).status_code == 200
            return False

        wait_until(healthy, 20, "the callback receiver to answer", process.tail)
        return process

    def wait_consuming(self, timeout: float = 20.0) -> None:
        def consumers() -> int:
            connection = pika.BlockingConnection(pika.URLParameters(self.settings.amqp.url))
            try:
                queue = connection.channel().queue_declare(self.settings.amqp.command_queue, passive=True)
                return int(queue.method.consumer_count)
            finally:
                connection.close()

        wait_until(lambda: consumers() > 0, timeout, "a worker consuming the command queue", self.diagnostics)

    def publish(self, batch: list[dict[str, Any]]) -> None:
        bodies = [json.dumps(c).encode() for c in batch]
        publish_commands(self.settings.amqp.url, self.settings.amqp.command_queue, bodies)

    def originator(self, payout_id: str) -> str:
        return originator_conversation_id(self.settings.mpesa.shortcode, self.settings.mpesa.org_name, payout_id)

    def transactions(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.simulator.base_url}/simulator/transactions", timeout=5)
        response.raise_for_status()
        return [t for t in response.json() if t.get("command_id") != "TransactionStatusQuery"]

    def paid_by_originator(self) -> dict[str, int]:
        paid: dict[str, int] = {}
        for t in self.transactions():
            if t.get("paid"):
                paid[t["originator_conversation_id"]] = paid.get(t["originator_conversation_id"], 0) + 1
        return paid

    def paid_count(self) -> int:
        return sum(self.paid_by_originator().values())

    def statuses(self, ids: list[str]) -> dict[str, str]:
        found = {}
        for payout_id in ids:
            payout = self.ledger.payouts.get(payout_id)
            found[payout_id] = payout.status.value if payout else "absent"
        return found

    def status_counts(self, ids: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status in self.statuses(ids).values():
            counts[status] = counts.get(status, 0) + 1
        return counts

    def diagnostics(self) -> str:
        parts = [f"events: {self.events.counts()}"]
        parts += [p.tail() for p in self.processes if p.role == "worker"][-2:]
        return "\n".join(parts)

    def wait_all_completed(self, ids: list[str], timeout: float) -> None:
        """Every payout completed in the ledger and announced by a (non-duplicate) ``payout.completed``."""

        def done() -> bool:
            if set(self.statuses(ids).values()) != {PayoutStatus.COMPLETED.value}:
                return False
            return self.events.ids("payout.completed") >= set(ids)

        wait_until(
            done, timeout, f"{len(ids)} payouts completed", lambda: f"{self.status_counts(ids)}; {self.diagnostics()}"
        )

    def assert_paid_exactly_once(self, ids: list[str]) -> None:
        paid = self.paid_by_originator()
        expected = {self.originator(payout_id) for payout_id in ids}
        twice = {k: v for k, v in paid.items() if v != 1}
        assert not twice, f"paid more than once: {twice}"
        assert set(paid) == expected, f"unpaid: {sorted(expected - set(paid))}, unexpected: {set(paid) - expected}"

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.stop()
        if self.receiver is not None:
            self.receiver.stop()
        self.simulator.stop()
        self.events.delete()
        self.ledger.close()


@pytest.fixture
def crash_rig(
    amqp_names: dict[str, str],
    ledger_env: dict[str, str],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> Iterator[Callable[..., CrashRig]]:
    """``start(options, receiver_process=False, **env)``: simulator and (unless ``receiver_process``) receiver here.

    The CLI processes get make_settings' environment (``fast_settings_env``), so they and this process read
    the same settings; with ``receiver_process`` the test starts ``mpesa-b2c callbacks`` itself.
    """
    rigs: list[CrashRig] = []

    def start(options: SimulatorOptions, *, receiver_process: bool = False, **extra: str) -> CrashRig:
        env = {
            **fast_settings_env(tmp_path),
            "B2C_LOG_LEVEL": "INFO",
            **amqp_names,
            **ledger_env,
            **extra,
        }
        simulator = start_simulator(make_settings(**env), host="127.0.0.1", port=0, options=options)
        receiver: ReceiverService | None = None
        try:
            port = free_port()
            env["B2C_MPESA_URL"] = simulator.url
            env.update(CrashRig.callback_env(port))
            settings = make_settings(**env)
            declare(settings)
            events = EventQueue(settings.amqp.url, settings.amqp.events_exchange)
            if not receiver_process:
                receiver = ReceiverService(settings, host="127.0.0.1", port=port)
            ledger = open_ledger(settings.ledger)
        except BaseException:
            if receiver is not None:
                receiver.stop()
            simulator.stop()
            raise
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        rig = CrashRig(env, settings, simulator, receiver, port, events, ledger, logs)
        rigs.append(rig)
        return rig

    yield start
    for rig in rigs:
        rig.stop()
