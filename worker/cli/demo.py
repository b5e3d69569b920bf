"""``mpesa-b2c demo``: the whole pipeline on one machine, against the local RabbitMQ.

It starts the simulator, the callback receiver and a worker in this process, on free loopback ports, with a
throw-away ledger and queue names of its own (so it never touches a real deployment's queues), publishes a
handful of payouts — a duplicate, an invalid one and one that M-PESA fails among them — and prints every
event. Exit 0 once every payout reached a final status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pika

from worker.amqp.connection import connect
from worker.cli.publish import publish_commands
from worker.cli.stack import start_local_stack
from worker.errors import B2CError
from worker.events.follow import follow_events
from worker.settings import Settings
from worker.simulator import SimulatorOptions

FINAL_KEYS = ("payout.completed", "payout.failed", "payout.rejected")


def demo_commands(run: str) -> list[tuple[str, bytes]]:
    """(label, body) pairs: five good payouts, a duplicate, an invalid command and one M-PESA fails."""
    good = [
        ("pay", {"payout_id": f"{run}-1", "msisdn": "0712345678", "amount": "1500.00", "remarks": "Salary"}),
        (
            "pay",
            {"payout_id": f"{run}-2", "msisdn": "+254722000111", "amount": 250, "command": "SalaryPayment"},
        ),
        ("pay", {"payout_id": f"{run}-3", "msisdn": "254110000222", "amount": "99.50", "occasion": "Bonus"}),
        (
            "pay",
            {"payout_id": f"{run}-4", "msisdn": "0733000333", "amount": "10000", "metadata": {"batch": 7}},
        ),
        (
            "pay",
            {
                "payout_id": f"{run}-5",
                "msisdn": "0700000112",
                "amount": "42.00",
                "command": "PromotionPayment",
            },
        ),
    ]
    items = [(label, json.dumps(body).encode()) for label, body in good]
    items.append(("duplicate of #1", items[0][1]))
    items.append(
        (
            "invalid msisdn",
            json.dumps({"payout_id": f"{run}-bad", "msisdn": "12345", "amount": "100"}).encode(),
        )
    )
    items.append(
        (
            "fails: no funds",
            json.dumps({"payout_id": f"{run}-6", "msisdn": "254700000009", "amount": "500"}).encode(),
        )
    )
    return items


def _free_settings(settings: Settings, run: str, data_dir: Path) -> Settings:
    amqp_settings = dataclasses.replace(
        settings.amqp,
        command_queue=f"demo.{run}.commands",
        events_exchange=f"demo.{run}.events",
        dead_queue=f"demo.{run}.dead",
    )
    mpesa = dataclasses.replace(settings.mpesa, cert_path=data_dir / "simulator-cert.pem", read_timeout=10.0)
    ledger = dataclasses.replace(settings.ledger, database_url=None, sqlite_path=data_dir / "ledger.sqlite3")
    simulator = dataclasses.replace(settings.simulator, private_key_path=None)
    return dataclasses.replace(
        settings, amqp=amqp_settings, mpesa=mpesa, ledger=ledger, simulator=simulator, data_dir=data_dir
    )


def _wait_for_exchange(url: str, exchange: str, deadline: float) -> None:
    while True:
        connection = connect(url, name="mpesa-b2c-demo")
        try:
            connection.channel().exchange_declare(exchange=exchange, passive=True)
            return
        except pika.exceptions.ChannelClosedByBroker:
            if time.monotonic() > deadline:
                raise B2CError(f"the worker did not declare {exchange!r} in time") from None
            time.sleep(0.2)
        finally:
            with contextlib.suppress(Exception):
                connection.close()


def _cleanup(settings: Settings) -> None:
    with contextlib.suppress(B2CError, pika.exceptions.AMQPError):
        connection = connect(settings.amqp.url, name="mpesa-b2c-demo")
        channel = connection.channel()
        for queue in (settings.amqp.command_queue, settings.amqp.dead_queue):
            channel.queue_delete(queue=queue)
        channel.exchange_delete(exchange=settings.amqp.events_exchange)
        connection.close()


def run_demo(base: Settings, *, timeout: float = 60.0, out: object = print) -> int:
    say = out if callable(out) else print
    connect(base.amqp.url, name="mpesa-b2c-demo").close()  # fail fast, naming the URL, if no broker
    run = uuid.uuid4().hex[:8]
    logging.getLogger().setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="mpesa-b2c-demo-") as tmp:
        settings = _free_settings(base, run, Path(tmp))
        stack = start_local_stack(settings, simulator_options=SimulatorOptions(result_delay=0.5))
        settings = stack.settings
        say(f"simulator  {settings.mpesa.url}")
        say(f"receiver   {settings.mpesa.result_url}")
        say(f"worker     consuming {settings.amqp.command_queue!r}, events on {settings.amqp.events_exchange!r}")
        try:
            return _drive(settings, run, timeout, say)
        finally:
            stack.stop()
            _cleanup(settings)


def _drive(settings: Settings, run: str, timeout: float, say: object) -> int:  # noqa: C901 - the demo's one script; its event callback shares its state
    show = say if callable(say) else print
    deadline = time.monotonic() + timeout
    _wait_for_exchange(settings.amqp.url, settings.amqp.events_exchange, deadline)
    commands = demo_commands(run)
    expected_final = {f"{run}-{n}" for n in range(1, 7)} | {f"{run}-bad"}
    final: dict[str, str] = {}
    duplicates = 0
    done = threading.Event()
    # ResultCode 1 opens the funds circuit breaker, as it would in production, and holds every payout not yet
    # sent: the payout that finds the account empty goes last, once the others are final.
    *first, last = commands
    first_final = {f"{run}-{n}" for n in range(1, 6)} | {f"{run}-bad"}
    others_done = threading.Event()

    def on_event(routing_key: str, body: bytes) -> bool:
        nonlocal duplicates
        event = json.loads(body)
        payout_id = event.get("payout_id")
        detail = event.get("reason") or ""
        result = event.get("result") or {}
        if result:
            detail = f"ResultCode {result.get('code')} {result.get('receipt') or result.get('description') or ''}"
        if event.get("duplicate"):
            duplicates += 1
            detail = f"duplicate (current status {event.get('status')})"
        show(f"  {routing_key:18} {payout_id:22} {detail}".rstrip())
        if routing_key in FINAL_KEYS and not event.get("duplicate") and payout_id in expected_final:
            final[payout_id] = routing_key
        if first_final <= set(final):
            others_done.set()
        if set(final) == expected_final and duplicates >= 1:
            done.set()
            return False
        return time.monotonic() < deadline

    bound = threading.Event()
    follower = threading.Thread(
        target=follow_events,
        args=(settings.amqp.url, settings.amqp.events_exchange, on_event),
        kwargs={"timeout": max(1.0, deadline - time.monotonic()), "on_ready": bound.set},
        daemon=True,
    )
    follower.start()
    if not bound.wait(max(1.0, deadline - time.monotonic())):  # bound before the first event can exist
        show("demo FAILED: could not follow the events exchange")
        return 1
    show("publishing:")
    for label, body in first:
        show(f"  {label:18} {body.decode()}")
    publish_commands(settings.amqp.url, settings.amqp.command_queue, [body for _, body in first])
    show("events:")
    if others_done.wait(max(0.0, deadline - time.monotonic())):
        show(f"publishing, once the others are final:\n  {last[0]:18} {last[1].decode()}")
        publish_commands(settings.amqp.url, settings.amqp.command_queue, [last[1]])
        done.wait(max(0.0, deadline - time.monotonic()))
    follower.join(5)
    missing = sorted(expected_final - set(final))
    if missing or duplicates < 1:
        show(f"demo FAILED: no final status for {missing or 'none'}; duplicate answers seen: {duplicates}")
        return 1
    show(f"demo OK: {len(final)} payouts final, the duplicate answered from the ledger, nobody paid twice")
    return 0
