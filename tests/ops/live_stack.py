"""The whole stack as separate processes on loopback, scraped by a real Prometheus with the project's job names.

Each component runs as its own process (``python -m worker.cli simulator|callbacks|worker``), as in production,
so every Prometheus job sees only its own registry. Debian's ``prometheus`` (``apt-get install prometheus``)
scrapes them every second under the job names of ``ops/prometheus.yml`` and the chart's ServiceMonitor, and
loads the shipped alert rules. RabbitMQ and the ledger's database are the caller's (the tests' loopback ones).

Used by ``test_dashboards_e2e.py``, and run as a script to make the README's picture of the overview dashboard
from real traffic (``ops/render_dashboard.py`` needs ``pip install matplotlib``)::

    .venv/bin/python tests/ops/live_stack.py --minutes 4 --render docs/overview-dashboard.png

This module imports only the standard library, ``requests`` and ``worker``, so it works as a script too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pika
import requests

from worker.cli.publish import publish_commands
from worker.errors import B2CError
from worker.ledger import Ledger, open_ledger
from worker.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "helm" / "mpesa-b2c" / "alerts" / "mpesa-b2c.rules.yml"
JOBS = {"simulator": "mpesa-b2c-simulator", "callbacks": "mpesa-b2c-callbacks", "worker": "mpesa-b2c-worker"}
LOOPBACK = "127.0.0.1"

# Recipients that pick an outcome in the simulator (worker/simulator/scenarios.py).
PAID = ("254708374149", "254722000111", "254733000333", "254110000222")
INSUFFICIENT_FUNDS = "254700000009"  # accepted, then failed with ResultCode 1
# (Not 254700000010, credential failure: it opens the circuit breaker until an operator closes it.)
OVER_LIMIT = Decimal("150000")  # failed with ResultCode 3 by a simulator started with SIMULATOR_LIMITS
SIMULATOR_LIMITS = {"B2C_AMOUNT_MAX": "100000"}  # the simulator's own transaction limit, below the worker's
# The picture's traffic: smaller payouts, a lower simulator limit, and enough money for the whole run.
TRAFFIC_LIMIT = Decimal("10000")
TRAFFIC_SIMULATOR = {"B2C_AMOUNT_MAX": str(TRAFFIC_LIMIT), "B2C_SIM_BALANCE": "12000000"}
HTTP_500 = "254700000002"  # unknown (HTTP 500), then settled by its result
THROTTLED = "254700000004"  # refused "not processed" twice: retried with the same id, then accepted
RESULT_TWICE = "254700000007"  # the same result arrives twice


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``check()`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


@dataclass
class Component:
    role: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def job(self) -> str:
        return JOBS[self.role]

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the worker drains its in-flight payouts), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class LiveStack:
    """Simulator, result receiver and worker, each a process on a free loopback port.

    ``env`` holds the broker and ledger settings (``B2C_AMQP_URL``, queue names, ``B2C_DATABASE_URL`` or
    ``B2C_SQLITE_PATH``); the stack adds the ports, the URLs between the components and short timeouts.
    """

    workdir: Path
    env: Mapping[str, str]
    result_delay: float = 0.3
    simulator_args: tuple[str, ...] = ()
    role_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # per role, over ``env``
    components: dict[str, Component] = field(default_factory=dict)

    def settings_env(self) -> dict[str, str]:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        ports = {role: free_port() for role in JOBS}
        receiver = f"http://{LOOPBACK}:{ports['callbacks']}"
        env = {
            "B2C_DATA_DIR": str(data),
            "B2C_CERT_PATH": str(data / "simulator-cert.pem"),
            "B2C_MPESA_URL": f"http://{LOOPBACK}:{ports['simulator']}/mminterface/request",
            "B2C_RESULT_URL": f"{receiver}/mpesa/result",
            "B2C_QUEUE_TIMEOUT_URL": f"{receiver}/mpesa/queue-timeout",
            "B2C_READ_TIMEOUT": "5",
            "B2C_CONNECT_TIMEOUT": "2",
            "B2C_RETRY_MAX_SECONDS": "5",
            "B2C_OUTBOX_INTERVAL": "0.5",
            **self.env,
        }
        self._ports = ports
        return env

    def start(self) -> None:
        """Simulator first (it writes the certificate the worker encrypts with), then receiver, then worker."""
        self.process_env = self.settings_env()
        self.settings: Settings = load_settings(self.process_env)
        ports = self._ports
        delay = ["--result-delay", str(self.result_delay)]
        self._spawn("simulator", ["--port", str(ports["simulator"]), *delay, *self.simulator_args])
        self._await("simulator", f"http://{LOOPBACK}:{ports['simulator']}/healthz")
        wait_until(self.settings.mpesa.cert_path.exists, 15, "the simulator's certificate")
        self._spawn("callbacks", ["--port", str(ports["callbacks"])])
        self._spawn("worker", ["--metrics-port", str(ports["worker"])])
        self._await("callbacks", f"http://{LOOPBACK}:{ports['callbacks']}/healthz")
        self._await("worker", f"http://{LOOPBACK}:{ports['worker']}/healthz")
        wait_until(self._bind_observer, 30, "the worker to declare the events exchange", interval=0.5)

    @property
    def observer_queue(self) -> str:
        return f"{self.settings.amqp.command_queue}.observer"

    def _bind_observer(self) -> bool:
        """A queue bound to the events exchange, as a downstream consumer would have: events are published
        with the mandatory flag, so without one they stay in the outbox (and invalid commands are requeued)."""
        connection = pika.BlockingConnection(pika.URLParameters(self.settings.amqp.url))
        try:
            channel = connection.channel()
            channel.queue_declare(self.observer_queue, durable=True, arguments={"x-max-length": 10000})
            channel.queue_bind(self.observer_queue, self.settings.amqp.events_exchange, routing_key="#")
        except pika.exceptions.ChannelClosedByBroker:
            return False  # the exchange is not there yet
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()
        return True

    def delete_observer(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection = pika.BlockingConnection(pika.URLParameters(self.settings.amqp.url))
            connection.channel().queue_delete(self.observer_queue)
            connection.close()

    def _spawn(self, role: str, args: list[str]) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("B2C_")}
        env.update(self.process_env)
        env.update(self.role_env.get(role, {}))
        log = self.workdir / f"{role}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", role, "--host", LOOPBACK, *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        port = int(args[args.index("--metrics-port" if role == "worker" else "--port") + 1])
        self.components[role] = Component(role, port, process, log)

    def _await(self, role: str, url: str) -> None:
        component = self.components[role]

        def up() -> bool:
            if component.process.poll() is not None:
                raise RuntimeError(f"{role} exited with {component.process.returncode}:\n{component.tail()}")
            return _answers(url)

        wait_until(up, 30, f"{role} at {url}")

    def targets(self) -> dict[str, str]:
        return {component.job: component.address for component in self.components.values()}

    def publish(self, bodies: list[bytes]) -> None:
        publish_commands(self.settings.amqp.url, self.settings.amqp.command_queue, bodies, declare=self.settings.amqp)

    def open_ledger(self) -> Ledger:
        return open_ledger(self.settings.ledger)

    def logs(self) -> str:
        return "\n".join(f"--- {c.role} ---\n{c.tail()}" for c in self.components.values())

    def stop(self) -> None:
        for role in ("worker", "callbacks", "simulator"):
            if role in self.components:
                self.components[role].stop()
        if hasattr(self, "settings"):
            self.delete_observer()

    def __enter__(self) -> LiveStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Prometheus:
    """Debian's ``prometheus`` on a free loopback port, scraping ``targets`` every second, with the rules."""

    workdir: Path
    targets: Mapping[str, str]
    binary: str = "prometheus"
    scrape_seconds: int = 1
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def config(self) -> dict[str, Any]:
        interval = f"{self.scrape_seconds}s"
        return {
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [address]}]} for job, address in self.targets.items()
            ],
        }

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2))  # JSON is YAML
        self.port = free_port()
        log = self.workdir / "prometheus.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{self.port}",
                    "--storage.tsdb.retention.time=1d",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{log.read_text(errors='replace')[-3000:]}")
            return _answers(f"{self.url}/-/ready")

        wait_until(ready, 30, "prometheus to be ready")

    def api(self, path: str, **params: Any) -> Any:
        answer = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = answer.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result if isinstance(result, list) else [{"metric": {}, "value": result}]

    def targets_up(self) -> dict[str, str]:
        return {t["labels"]["job"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> Prometheus:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _command(payout_id: str, msisdn: str, amount: Decimal | str, command: str = "BusinessPayment") -> bytes:
    body = {"payout_id": payout_id, "msisdn": msisdn, "amount": str(amount), "command": command, "remarks": "ops"}
    return json.dumps(body).encode()


def every_outcome(prefix: str) -> tuple[list[bytes], list[str]]:
    """Commands that exercise every outcome once: (bodies to publish, payout ids that must end final).

    Completed by each command type, failed (no funds, which opens the circuit breaker until a probe payout
    goes through; over the limit), rejected as invalid (and dead-lettered),
    a duplicate, an idempotency conflict, unknown then settled by its result, retried after throttling, and a
    result delivered twice.
    """
    ok = [
        _command(f"{prefix}-ok1", PAID[0], "1500.00"),
        _command(f"{prefix}-ok2", PAID[1], "250", "SalaryPayment"),
        _command(f"{prefix}-ok3", PAID[2], "99.50", "PromotionPayment"),
    ]
    others = [
        _command(f"{prefix}-nofunds", INSUFFICIENT_FUNDS, "500"),
        _command(f"{prefix}-overlimit", PAID[3], OVER_LIMIT),
        json.dumps({"payout_id": f"{prefix}-invalid", "msisdn": "12345", "amount": "100"}).encode(),
        _command(f"{prefix}-unknown", HTTP_500, "320"),
        _command(f"{prefix}-throttled", THROTTLED, "640"),
        _command(f"{prefix}-twice", RESULT_TWICE, "80"),
    ]
    repeats = [ok[0], _command(f"{prefix}-ok2", PAID[1], "251", "SalaryPayment")]  # duplicate; conflict
    ids = [json.loads(body)["payout_id"] for body in ok + others if b'"12345"' not in body]  # invalid: no payout
    return ok + others + repeats, ids


def wait_final(ledger: Ledger, payout_ids: list[str], timeout: float) -> None:
    def pending() -> list[str]:
        left = []
        for payout_id in payout_ids:
            payout = ledger.payouts.get(payout_id)
            if payout is None or not payout.is_final:
                left.append(f"{payout_id}: {payout.status if payout else 'not recorded'}")
        return left

    try:
        wait_until(lambda: not pending(), timeout, "every payout to reach a final status", interval=0.3)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}: {pending()}") from None


def traffic(stack: LiveStack, seconds: float, prefix: str) -> None:
    """Payouts for ``seconds``: mostly paid, some failed, a few unknown, retried or invalid; uneven pace.

    Failures are over the simulator's limit: an insufficient-funds result would open the circuit breaker and
    hold the queue for a probe interval each time (which is right for a real empty account)."""
    rng = random.Random(7)
    started = time.monotonic()
    batch = 0
    while time.monotonic() - started < seconds:
        batch += 1
        minute = (time.monotonic() - started) / 60
        size = rng.randint(4, 10) + int(6 * abs(((minute * 1.7) % 2) - 1))
        if batch % 12 == 6:
            size = 200  # a burst: the queue backs up for a while
        bodies = []
        for n in range(size):
            payout_id = f"{prefix}-{batch}-{n}"
            roll = rng.random()
            amount = Decimal(rng.randrange(200, 10000)) / 2  # KES 100 to 5,000
            if roll < 0.88:
                command = rng.choice(("BusinessPayment", "SalaryPayment", "PromotionPayment"))
                bodies.append(_command(payout_id, rng.choice(PAID), amount, command))
            elif roll < 0.93:
                bodies.append(_command(payout_id, rng.choice(PAID), TRAFFIC_LIMIT + amount))
            elif roll < 0.96:
                bodies.append(_command(payout_id, HTTP_500, amount))
            elif roll < 0.99:
                bodies.append(_command(payout_id, THROTTLED, amount))
            else:
                bodies.append(json.dumps({"payout_id": payout_id, "msisdn": "12345", "amount": "100"}).encode())
        _publish_patiently(stack, bodies)
        time.sleep(rng.uniform(2.0, 6.0))


def _publish_patiently(stack: LiveStack, bodies: list[bytes], patience: float = 120.0) -> None:
    """Publish, waiting out a broker restart (the components reconnect by themselves)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            stack.publish(bodies)
            return
        except B2CError as exc:
            if time.monotonic() > deadline:
                raise
            print(f"publish failed, retrying: {exc}", file=sys.stderr)
            time.sleep(2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the stack with traffic and render the overview dashboard.")
    parser.add_argument("--minutes", type=float, default=4.0, help="how long to send traffic (default 4)")
    parser.add_argument("--render", type=Path, default=REPO / "docs" / "overview-dashboard.png")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--database-url", help="a PostgreSQL ledger (default: SQLite in a temporary directory)")
    parser.add_argument("--rate-interval", default="30s", help="the value of $__rate_interval (default 30s)")
    args = parser.parse_args(argv)
    prometheus_binary = shutil.which("prometheus")
    if prometheus_binary is None:
        parser.error("prometheus is not installed (apt-get install prometheus)")
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="mpesa-b2c-live-") as tmp:
        workdir = Path(tmp)
        env = {
            "B2C_AMQP_URL": args.amqp_url,
            "B2C_COMMAND_QUEUE": f"live.{run}.commands",
            "B2C_DEAD_QUEUE": f"live.{run}.dead",
            "B2C_EVENTS_EXCHANGE": f"live.{run}.events",
        }
        if args.database_url:
            env["B2C_DATABASE_URL"] = args.database_url
        else:
            env["B2C_SQLITE_PATH"] = str(workdir / "ledger.sqlite3")
        env.update({"B2C_CONCURRENCY": "4", "B2C_PREFETCH": "8"})  # a small worker, so bursts queue up
        stack = LiveStack(
            workdir / "stack",
            env,
            result_delay=2.0,
            simulator_args=("--latency", "0.15"),
            role_env={"simulator": TRAFFIC_SIMULATOR},
        )
        try:
            with stack, Prometheus(workdir / "prometheus", stack.targets(), binary=prometheus_binary) as prometheus:
                started = time.time()
                traffic(stack, args.minutes * 60, f"live-{run}")
                ended = time.time() + 5  # the last results
                time.sleep(12)  # ... and a refresh of the ledger gauges
                render = [
                    sys.executable,
                    str(REPO / "ops" / "render_dashboard.py"),
                    "--prometheus",
                    prometheus.url,
                    "--start",
                    str(started),
                    "--end",
                    str(ended),
                    "--rate-interval",
                    args.rate_interval,
                    "--out",
                    str(args.render),
                ]
                subprocess.run(render, check=True)
        finally:
            if hasattr(stack, "settings"):
                with contextlib.suppress(Exception):
                    _delete_queues(stack)
    print(f"wrote {args.render}")
    return 0


def _delete_queues(stack: LiveStack) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(stack.settings.amqp.url))
    channel = connection.channel()
    channel.queue_delete(stack.settings.amqp.command_queue)
    channel.queue_delete(stack.settings.amqp.dead_queue)
    channel.exchange_delete(stack.settings.amqp.events_exchange)
    connection.close()


if __name__ == "__main__":
    sys.exit(main())
