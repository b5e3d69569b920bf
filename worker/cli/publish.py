"""``mpesa-b2c publish`` and ``mpesa-b2c events``: put payout commands on the queue, watch the events come back.

``events pending`` reads the ledger's outbox instead of the broker: the events stored with their status change
and not yet confirmed by RabbitMQ (during a broker outage, say), which a worker or receiver publishes later.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pika.exceptions

from worker.amqp.connection import close_quietly, connect
from worker.amqp.publisher import ConfirmedPublisher
from worker.amqp.topology import NOT_FOUND, declare_topology
from worker.cli.output import table
from worker.errors import B2CError, PublishError, PublishFailure, TopologyError
from worker.events.follow import follow_events
from worker.ledger import OutboxEvent, open_ledger
from worker.payouts.models import EVENT_BINDINGS
from worker.redact import mask_msisdns_in_json
from worker.settings import AmqpSettings, Settings, redact_url


def _payout_id(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = payload.get("payout_id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) and value else None


def _require_queue(url: str, queue: str, declare: AmqpSettings | None) -> None:
    """A missing queue means the worker never ran: publishing into the void would lose the commands."""
    safe = redact_url(url)
    connection = connect(url, name="mpesa-b2c-publish")
    try:
        channel = connection.channel()
        if declare is not None:
            declare_topology(channel, declare)
        try:
            channel.queue_declare(queue=queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == NOT_FOUND:
                raise TopologyError(
                    f"queue {queue!r} does not exist on {safe}: start the worker first "
                    "(it declares the topology) or pass --declare"
                ) from None
            raise
    except pika.exceptions.AMQPError as exc:
        raise PublishError(
            f"publishing to {queue!r} on {safe} failed after 0 confirmed message(s): {exc}", PublishFailure.CONNECTION
        ) from None
    finally:
        close_quietly(connection)


def publish_commands(url: str, queue: str, bodies: Iterable[bytes], *, declare: AmqpSettings | None = None) -> int:
    """Publish payout commands to ``queue`` with confirms; returns how many the broker confirmed.

    Declares nothing unless ``declare`` carries the topology. The publisher does not reconnect: a lost
    connection stops the run and says how many commands were confirmed before it.
    """
    _require_queue(url, queue, declare)
    safe = redact_url(url)
    count = 0
    with ConfirmedPublisher(url, name="mpesa-b2c-publish", reconnect=False) as publisher:
        for body in bodies:
            try:
                publisher.publish_to_queue(queue, body, message_id=_payout_id(body))
            except PublishError as exc:
                if exc.failure == PublishFailure.UNROUTABLE:
                    message = f"message {count + 1} was unroutable: queue {queue!r} disappeared"
                elif exc.failure == PublishFailure.NACKED:
                    message = f"the broker refused (nack) message {count + 1} for queue {queue!r}"
                else:
                    message = f"publishing to {queue!r} on {safe} failed after {count} confirmed message(s): {exc}"
                raise PublishError(message, exc.failure) from None
            count += 1
    return count


def _command_bodies(args: argparse.Namespace) -> Iterator[bytes]:
    if args.file is None:
        if args.command is None:
            raise B2CError("give a command as JSON text, or --file FILE (JSON Lines; - for standard input)")
        yield args.command.encode("utf-8")
        return
    stream = sys.stdin.buffer if args.file == "-" else Path(args.file).open("rb")  # noqa: SIM115
    with stream:
        for line in stream:
            if line.strip():
                yield line.strip()


def cmd_publish(settings: Settings, args: argparse.Namespace) -> int:
    count = publish_commands(
        settings.amqp.url,
        settings.amqp.command_queue,
        _command_bodies(args),
        declare=settings.amqp if args.declare else None,
    )
    print(f"published {count} command(s) to {settings.amqp.command_queue!r}")
    return 0


def cmd_events(settings: Settings, args: argparse.Namespace) -> int:
    seen = 0

    def show(routing_key: str, body: bytes) -> bool:
        nonlocal seen
        seen += 1
        if args.json:
            print(body.decode("utf-8", "replace"), flush=True)
        else:
            event = json.loads(body)
            extra = event.get("reason") or (event.get("result") or {}).get("receipt") or ""
            flag = " (duplicate)" if event.get("duplicate") else ""
            print(f"{routing_key:18} {event.get('payout_id')}{flag} {extra}".rstrip(), flush=True)
        return args.count is None or seen < args.count

    binding = args.binding or EVENT_BINDINGS
    follow_events(settings.amqp.url, settings.amqp.events_exchange, show, binding=binding, timeout=args.timeout)
    return 0


def pending_summary(event: OutboxEvent) -> dict[str, Any]:
    """An outbox row as ``events pending`` shows it; the payer's metadata may hold a phone number, so masked."""
    body = mask_msisdns_in_json(json.loads(event.body))
    return {
        "id": event.id,
        "event_id": event.event_id,
        "payout_id": event.payout_id,
        "routing_key": event.routing_key,
        "occurred_at": body.get("occurred_at"),
        "reason": body.get("reason"),
        "event": body,
    }


def cmd_events_pending(settings: Settings, args: argparse.Namespace) -> int:
    ledger = open_ledger(settings.ledger)
    try:
        events = ledger.outbox.pending(limit=args.limit)
        total = ledger.outbox.backlog()
    finally:
        ledger.close()
    rows = [pending_summary(event) for event in events]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table(rows, ["id", "occurred_at", "routing_key", "payout_id", "reason"])
    shown = f"{len(rows)} shown (--limit)" if total > len(rows) else "all shown"
    print(f"{total} event(s) stored and not yet published; {shown}")
    return 0


def add_publish_parsers(sub: Any) -> None:
    """The ``publish`` and ``events`` roles, for :func:`worker.cli.main.build_parser`."""
    p = sub.add_parser("publish", help="publish payout command(s) to the command queue")
    p.add_argument("command", nargs="?", help="one command as JSON text")
    p.add_argument("--file", help="a JSON Lines file of commands (- for standard input)")
    p.add_argument("--declare", action="store_true", help="declare the queues first (normally the worker does)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "events",
        help="print payout events as they arrive (or, with pending, those not yet published)",
        description="Print payout events (and refused commands) as they arrive on the events exchange; "
        "`events pending` lists "
        "the ones still in the ledger's outbox.",
    )
    p.add_argument(
        "--binding",
        action="append",
        help="routing-key pattern, repeatable (default: payout.# and command.#, the refused commands)",
    )
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="print each event's full JSON")
    p.set_defaults(func=cmd_events)
    actions = p.add_subparsers(dest="action", metavar="{pending}")
    help_text = "events stored in the ledger's outbox and not yet published to RabbitMQ, oldest first"
    p = actions.add_parser("pending", help=help_text, description=help_text)
    p.add_argument("--limit", type=int, default=100, help="show at most this many (default 100)")
    p.add_argument("--json", action="store_true", help="machine-readable output (the events' JSON, masked)")
    p.set_defaults(func=cmd_events_pending)
