"""``mpesa-b2c dead``: look at, replay and drop dead-lettered commands, and review quarantined results.

Dead letters live in ``B2C_DEAD_QUEUE``. The worker puts a command there with ``x-b2c-reason`` /
``x-b2c-message`` headers (e.g. ``invalid_command``); RabbitMQ puts one there by itself, with an ``x-death``
header, when the command queue's delivery limit is reached. A message is addressed by a 12-hex-digit id, a
hash of its body, message id, publish timestamp and headers (minus the broker's delivery counter), so it stays
the same however often the queue is read.

Nothing is lost on the way: messages are taken unacknowledged, the chosen ones are acted on, and each is
acknowledged only after its action is complete (a replay only once the broker confirmed the republished
copy); every other message is handed back. A crash in between leaves a message in the dead queue (and
maybe its copy in the command queue, which the worker answers as a duplicate): never neither.

A replay republishes the original body to the command queue. The payout keeps its OriginatorConversationID,
because that is derived from the payout_id, so a replayed command for a payout already recorded is answered
as a duplicate and never paid twice. ``--body`` replays a corrected command instead, which must keep the
payout_id.

Quarantined results (``q:ID``) are in the ledger. They are never replayed: ``drop`` marks one reviewed and
``release`` applies it to its payout without the match check, for after an operator has confirmed the
result with M-PESA (portal or status query). MSISDNs are masked in everything printed unless ``--raw``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika.exceptions

from worker.amqp.connection import connect
from worker.amqp.consumer import DELIVERY_COUNT_HEADER, MESSAGE_HEADER, REASON_HEADER, SOURCE_QUEUE_HEADER
from worker.amqp.publisher import ConfirmedPublisher
from worker.amqp.topology import queue_depth
from worker.cli.output import emit, opened_ledger, short, table
from worker.errors import BrokerUnavailable, DeadError, PublishError, PublishFailure
from worker.events.relay import OutboxRelay
from worker.ledger import QuarantinedResult
from worker.payouts.models import extract_payout_id, normalise_msisdn
from worker.redact import mask_msisdn, mask_msisdns_in_json, mask_msisdns_in_text
from worker.settings import Settings, redact_url

REPLAYED_FROM_HEADER = "x-b2c-replayed-from"
QUARANTINE_PREFIX = "q:"
DEFAULT_SCAN = 10_000
_VOLATILE_HEADERS = frozenset({DELIVERY_COUNT_HEADER})


# --- dead letters -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadMessage:
    """One dead-lettered command as read from the queue (``body`` and ``headers`` exactly as stored)."""

    id: str
    body: bytes
    headers: dict[str, Any]
    message_id: str | None
    timestamp: int | None
    reason: str
    message: str
    source_queue: str | None
    dead_at: datetime | None

    @property
    def payout_id(self) -> str | None:
        return extract_payout_id(self.body)

    def summary(self) -> dict[str, Any]:
        """What ``list`` shows: no full MSISDN, no body."""
        command = _json_object(self.body)
        msisdn = command.get("msisdn") if command else None
        amount = command.get("amount") if command else None
        return {
            "id": self.id,
            "dead_at": self.dead_at.isoformat() if self.dead_at else None,
            "reason": self.reason,
            "message": mask_msisdns_in_text(self.message),
            "payout_id": self.payout_id,
            "msisdn": _masked(msisdn) if isinstance(msisdn, str) else None,
            "amount": str(amount) if isinstance(amount, str | int | float) else None,
            "source_queue": self.source_queue,
            "message_id": self.message_id,
            "bytes": len(self.body),
        }

    def details(self, *, raw: bool) -> dict[str, Any]:
        text = self.body.decode("utf-8", "replace")
        headers = {key: _plain(value) for key, value in sorted(self.headers.items())}
        if not raw:
            text = mask_msisdns_in_text(text)
            headers = mask_msisdns_in_json(headers)
        return {**self.summary(), "headers": headers, "body": text}


def _masked(msisdn: str) -> str:
    """In the one spelling the ledger uses (``2547******78``) when it is a Kenyan number at all."""
    try:
        return mask_msisdn(normalise_msisdn(msisdn))
    except ValueError:
        return mask_msisdn(msisdn)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _plain(value: Any) -> Any:
    """Header values as JSON-able data (pika gives bytes, datetimes, nested tables)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def message_key(body: bytes, message_id: str | None, timestamp: int | None, headers: dict[str, Any]) -> str:
    """The message's id: stable across reads (the broker's delivery counter is left out)."""
    stable = {k: _plain(v) for k, v in headers.items() if k not in _VOLATILE_HEADERS}
    material = json.dumps(
        {"m": message_id, "t": timestamp, "h": stable, "b": hashlib.sha256(body).hexdigest()}, sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def _reason(headers: dict[str, Any]) -> tuple[str, str, str | None, datetime | None]:
    """(reason, message, source queue, when) from the worker's headers or the broker's x-death."""
    if REASON_HEADER in headers:
        return (
            str(_plain(headers[REASON_HEADER])),
            str(_plain(headers.get(MESSAGE_HEADER, ""))),
            _text(headers.get(SOURCE_QUEUE_HEADER)),
            None,
        )
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        why = _text(death.get("reason")) or "unknown"
        queue = _text(death.get("queue"))
        count = death.get("count")
        when = death.get("time")
        explain = {
            "delivery_limit": "delivered more than B2C_DELIVERY_LIMIT times without being settled",
            "rejected": "rejected without requeue",
            "expired": "expired (message TTL)",
            "maxlen": "dropped by a queue length limit",
        }.get(why, why)
        message = f"dead-lettered by RabbitMQ from {queue!r}: {explain} ({count} time(s))"
        return f"broker:{why}", message, queue, when.replace(tzinfo=UTC) if isinstance(when, datetime) else None
    return "unknown", "no reason header (put into the dead queue by hand?)", None, None


def _text(value: Any) -> str | None:
    plain = _plain(value)
    return None if plain is None else str(plain)


def _dead_message(properties: Any, body: bytes) -> DeadMessage:
    headers: dict[str, Any] = dict(properties.headers or {})
    timestamp = properties.timestamp if isinstance(properties.timestamp, int) else None
    reason, message, source, when = _reason(headers)
    if when is None and timestamp is not None:
        when = datetime.fromtimestamp(timestamp, UTC)
    return DeadMessage(
        id=message_key(bytes(body), properties.message_id, timestamp, headers),
        body=bytes(body),
        headers=headers,
        message_id=properties.message_id,
        timestamp=timestamp,
        reason=reason,
        message=message,
        source_queue=source,
        dead_at=when,
    )


class DeadQueue:
    """Operations on ``B2C_DEAD_QUEUE``; each opens its own connection and hands back what it did not take."""

    def __init__(self, settings: Settings, *, scan_limit: int = DEFAULT_SCAN) -> None:
        self._url = settings.amqp.url
        self._queue = settings.amqp.dead_queue
        self._command_queue = settings.amqp.command_queue
        self._scan_limit = scan_limit

    def peek(self, limit: int | None = None) -> list[DeadMessage]:
        with self._session() as (channel, _):
            return [message for _, message in self._take(channel, limit or self._scan_limit)]

    def find(self, message_id: str) -> DeadMessage | None:
        with self._session() as (channel, _):
            return next((m for _, m in self._take(channel, self._scan_limit) if m.id == message_id), None)

    def replay(self, ids: set[str] | None, *, body: bytes | None = None) -> list[DeadMessage]:
        """Republish the chosen messages (all if ``ids`` is None) to the command queue, then ack them."""
        if body is not None and (ids is None or len(ids) != 1):
            raise DeadError("--body replays exactly one message: give its id")
        with (
            self._session() as (channel, connection),
            ConfirmedPublisher(self._url, name="mpesa-b2c-dead", reconnect=False) as publisher,
        ):
            self._require_command_queue(connection.channel())
            done: list[DeadMessage] = []
            for tag, message in self._take(channel, self._scan_limit):
                if ids is not None and message.id not in ids:
                    continue
                payload = message.body if body is None else _corrected(message, body)
                try:
                    self._republish(publisher, message, payload)
                except DeadError as exc:
                    raise DeadError(f"{exc} (replayed {len(done)} before it; the rest stay dead)") from None
                channel.basic_ack(tag)
                done.append(message)
            return done

    def drop(self, ids: set[str] | None) -> list[DeadMessage]:
        """Acknowledge (delete) the chosen messages, all if ``ids`` is None."""
        with self._session() as (channel, _):
            done: list[DeadMessage] = []
            for tag, message in self._take(channel, self._scan_limit):
                if ids is None or message.id in ids:
                    channel.basic_ack(tag)
                    done.append(message)
            return done

    @contextlib.contextmanager
    def _session(self) -> Iterator[tuple[Any, Any]]:
        safe = redact_url(self._url)
        connection = connect(self._url, name="mpesa-b2c-dead")
        try:
            channel = connection.channel()
            queue_depth(channel, self._queue)
            try:
                yield channel, connection
            finally:
                # Everything taken and not acknowledged goes back to the dead queue.
                with contextlib.suppress(pika.exceptions.AMQPError):
                    if channel.is_open:
                        channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        except pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"lost RabbitMQ at {safe} while working on {self._queue!r}: {exc}") from None
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                if connection.is_open:
                    connection.close()

    def _take(self, channel: Any, limit: int) -> Iterator[tuple[int, DeadMessage]]:
        """Take up to ``limit`` messages unacknowledged (they stay invisible to others until settled)."""
        taken = 0
        while taken < limit:
            method, properties, body = channel.basic_get(self._queue, auto_ack=False)
            if method is None:
                return
            taken += 1
            yield int(method.delivery_tag), _dead_message(properties, body)

    def _require_command_queue(self, channel: Any) -> None:
        try:
            channel.queue_declare(queue=self._command_queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise DeadError(f"command queue {self._command_queue!r} does not exist: {exc.reply_text}") from None

    def _republish(self, publisher: ConfirmedPublisher, message: DeadMessage, body: bytes) -> None:
        """Confirmed before the caller acks the dead copy; a lost broker is BrokerUnavailable, as for the reads."""
        try:
            publisher.publish_to_queue(
                self._command_queue,
                body,
                message_id=extract_payout_id(body) or message.message_id,
                headers={REPLAYED_FROM_HEADER: message.id},
            )
        except PublishError as exc:
            if exc.failure in (PublishFailure.UNROUTABLE, PublishFailure.NACKED):
                raise DeadError(f"the broker did not take the replay of {message.id}: {exc}; it stays dead") from None
            raise BrokerUnavailable(
                f"lost RabbitMQ at {redact_url(self._url)} while working on {self._queue!r}: {exc}"
            ) from None


def _corrected(message: DeadMessage, body: bytes) -> bytes:
    """A corrected command must be a JSON object for the same payout (so the same OriginatorConversationID)."""
    if _json_object(body) is None:
        raise DeadError("the corrected command is not a JSON object")
    original, corrected = message.payout_id, extract_payout_id(body)
    if corrected is None:
        raise DeadError("the corrected command has no valid payout_id")
    if original is not None and corrected != original:
        raise DeadError(f"the corrected command must keep payout_id {original!r} (it decides the payout's identity)")
    return body


# --- quarantine -------------------------------------------------------------------------------------------


def quarantine_summary(entry: QuarantinedResult) -> dict[str, Any]:
    return {
        "id": f"{QUARANTINE_PREFIX}{entry.id}",
        "received_at": entry.received_at.isoformat(),
        "reason": entry.reason,
        "state": str(entry.state),
        "payout_id": entry.payout_id,
        "originator_conversation_id": entry.originator_conversation_id,
        "conversation_id": entry.conversation_id,
        "result_code": entry.result_code,
        "detail": mask_msisdns_in_text(entry.detail),
        "resolved_at": entry.resolved_at.isoformat() if entry.resolved_at else None,
        "resolution": None if entry.resolution is None else mask_msisdns_in_text(entry.resolution),
    }


def quarantine_details(entry: QuarantinedResult, *, raw: bool) -> dict[str, Any]:
    body = entry.raw.decode("utf-8", "replace")
    return {**quarantine_summary(entry), "body": body if raw else mask_msisdns_in_text(body)}


def quarantine_id(text: str) -> int | None:
    if not text.startswith(QUARANTINE_PREFIX):
        return None
    try:
        return int(text[len(QUARANTINE_PREFIX) :])
    except ValueError:
        raise DeadError(f"{text!r} is not a quarantine id (q:NUMBER)") from None


# --- the command line ---------------------------------------------------------------------------------------


def add_dead_parser(sub: Any) -> None:
    """The ``dead`` role and its actions, for :func:`worker.cli.main.build_parser`."""
    parser = sub.add_parser("dead", help="list, show, replay or drop dead letters; review quarantined results")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument(
            "--limit", type=int, default=DEFAULT_SCAN, help=f"read at most this many (default {DEFAULT_SCAN})"
        )
        return p

    p = common(actions.add_parser("list", help="dead letters with their reasons (or --quarantine)"))
    p.add_argument("--quarantine", action="store_true", help="list quarantined results instead")
    p.add_argument("--resolved", action="store_true", help="with --quarantine: also dropped and released ones")
    p.set_defaults(func=cmd_list)

    p = common(actions.add_parser("show", help="one dead letter (ID) or quarantined result (q:ID) in full"))
    p.add_argument("id")
    p.add_argument("--raw", action="store_true", help="do not mask phone numbers")
    p.set_defaults(func=cmd_show)

    p = common(actions.add_parser("replay", help="republish dead letters to the command queue"))
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="replay every dead letter")
    p.add_argument("--body", type=Path, help="replay one dead letter with this corrected command (same payout_id)")
    p.set_defaults(func=cmd_replay)

    p = common(actions.add_parser("drop", help="delete dead letters, or mark quarantined results (q:ID) reviewed"))
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="every dead letter (with --quarantine: every held result)")
    p.add_argument("--quarantine", action="store_true", help="with --all: the quarantine instead of the queue")
    p.add_argument("--yes", action="store_true", help="confirm --all")
    p.add_argument("--note", default="dropped by an operator", help="why (kept with a quarantined result)")
    p.set_defaults(func=cmd_drop)

    p = common(actions.add_parser("release", help="apply a quarantined result after confirming it with M-PESA"))
    p.add_argument("id", metavar="q:ID")
    p.add_argument("--yes", action="store_true", help="confirm: the result was checked with M-PESA")
    p.add_argument("--note", default="released by an operator", help="why (kept with the entry)")
    p.set_defaults(func=cmd_release)


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    if args.quarantine:
        with opened_ledger(settings) as ledger:
            entries = ledger.quarantine.entries(include_resolved=args.resolved, limit=args.limit)
        rows = [quarantine_summary(e) for e in entries]
        emit(
            args,
            rows,
            lambda: table(
                [{**r, "detail": short(r["detail"])} for r in rows],
                ["id", "received_at", "state", "reason", "payout_id", "result_code", "detail"],
            ),
        )
        return 0
    rows = [m.summary() for m in DeadQueue(settings).peek(args.limit)]
    emit(
        args,
        rows,
        lambda: table(
            [{**r, "message": short(r["message"])} for r in rows],
            ["id", "dead_at", "reason", "payout_id", "msisdn", "amount", "message"],
        ),
    )
    return 0


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    number = quarantine_id(args.id)
    if number is not None:
        with opened_ledger(settings) as ledger:
            entry = ledger.quarantine.get(number)
        if entry is None:
            raise DeadError(f"no quarantined result {args.id}")
        value = quarantine_details(entry, raw=args.raw)
    else:
        message = DeadQueue(settings, scan_limit=args.limit).find(args.id)
        if message is None:
            raise DeadError(f"no dead letter with id {args.id} in {settings.amqp.dead_queue!r}")
        value = message.details(raw=args.raw)

    def human() -> None:
        for key, item in value.items():
            if key not in ("body", "headers"):
                print(f"{key + ':':28} {'-' if item is None else item}")
        if "headers" in value:
            print("headers:")
            print(json.dumps(value["headers"], indent=2, default=str))
        print("body:")
        print(value["body"])

    emit(args, value, human)
    return 0


def _dead_ids(args: argparse.Namespace, verb: str) -> set[str] | None:
    if args.all and args.ids:
        raise DeadError(f"{verb}: give ids or --all, not both")
    if not args.all and not args.ids:
        raise DeadError(f"{verb}: give at least one id, or --all")
    return None if args.all else set(args.ids)


def _report(args: argparse.Namespace, verb: str, done: list[DeadMessage], wanted: set[str] | None) -> int:
    missing = sorted((wanted or set()) - {m.id for m in done})
    value = {verb: [m.summary() for m in done], "not_found": missing}

    def human() -> None:
        for message in done:
            print(f"{verb} {message.id} (payout {message.payout_id or '-'}, {message.reason})")
        print(f"{len(done)} message(s) {verb}")
        for item in missing:
            print(f"not found: {item}", file=sys.stderr)

    emit(args, value, human)
    return 1 if missing else 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    if any(quarantine_id(i) is not None for i in args.ids):
        raise DeadError("quarantined results are never replayed: review them, then `dead release q:ID --yes`")
    wanted = _dead_ids(args, "replay")
    body = args.body.read_bytes().strip() if args.body else None
    done = DeadQueue(settings, scan_limit=args.limit).replay(wanted, body=body)
    return _report(args, "replayed", done, wanted)


def cmd_drop(settings: Settings, args: argparse.Namespace) -> int:
    if args.all and not args.yes:
        raise DeadError("drop --all deletes for good: add --yes to confirm")
    numbers = [n for n in (quarantine_id(i) for i in args.ids) if n is not None]
    if args.quarantine or numbers:
        if args.quarantine and not args.all:
            raise DeadError("--quarantine goes with --all; drop single entries by their q:ID")
        if len(numbers) != len(args.ids):
            raise DeadError("give either dead-letter ids or q:IDs, not both")
        with opened_ledger(settings) as ledger:
            if args.all:
                numbers = [e.id for e in ledger.quarantine.entries(limit=args.limit)]
            dropped = [quarantine_summary(ledger.quarantine.drop(n, note=args.note)) for n in numbers]

        def human() -> None:
            for row in dropped:
                print(f"dropped {row['id']} (payout {row['payout_id'] or '-'}, {row['reason']}); body kept")
            print(f"{len(dropped)} quarantined result(s) dropped")

        emit(args, {"dropped": dropped}, human)
        return 0
    wanted = _dead_ids(args, "drop")
    done = DeadQueue(settings, scan_limit=args.limit).drop(wanted)
    return _report(args, "dropped", done, wanted)


def cmd_release(settings: Settings, args: argparse.Namespace) -> int:
    number = quarantine_id(args.id)
    if number is None:
        raise DeadError("release takes a quarantined result's id (q:ID)")
    if not args.yes:
        raise DeadError(
            "release applies this result to its payout without the match check: confirm the result with M-PESA "
            "first (portal or status query), then add --yes"
        )
    with opened_ledger(settings) as ledger:
        applied = ledger.results.release_quarantined(number, note=args.note)
        payout = applied.payout
        published = True
        if payout is not None:
            url = settings.amqp.url
            relay = OutboxRelay(
                ledger.outbox,
                lambda: ConfirmedPublisher(url, name="mpesa-b2c-dead"),
                settings.amqp.events_exchange,
            )
            try:
                published = relay.try_flush(payout.payout_id)
            finally:
                relay.close()
    value = {
        "released": args.id,
        "outcome": str(applied.outcome),
        "payout_id": payout.payout_id if payout else None,
        "status": str(payout.status) if payout else None,
        "events_published": published,
    }

    def human() -> None:
        status = payout.status if payout else "-"
        print(f"released {args.id}: {applied.outcome}; payout {value['payout_id']} is now {status}")
        if not published:
            print("its events stay in the outbox until a worker or receiver publishes them", file=sys.stderr)

    emit(args, value, human)
    return 0
