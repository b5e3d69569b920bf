"""``mpesa-b2c dead`` end to end: real dead letters (from the worker and from RabbitMQ's delivery limit),
listed with reasons, replayed (paid once, and a replay for a recorded payout answered as a duplicate),
dropped; and nothing lost when an operation is refused."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest

from tests.support.guard import TOKEN
from tests.support.pipeline import Harness, declare
from worker.amqp.connection import connect
from worker.amqp.consumer import MESSAGE_HEADER, REASON_HEADER
from worker.amqp.topology import queue_depth
from worker.cli.dead import REPLAYED_FROM_HEADER, DeadQueue
from worker.cli.main import build_parser
from worker.errors import DeadError
from worker.payouts.models import originator_conversation_id
from worker.settings import Settings

FULL_MSISDN = re.compile(r"(?<!\d)(?:\+?254|0)[17]\d{8}(?!\d)")


def cli(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["dead", *argv])
    code = int(args.func(settings, args))
    return code, capsys.readouterr().out


def listing(settings: Settings, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code, out = cli(settings, capsys, "list", "--json")
    assert code == 0
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def by_payout(rows: list[dict[str, Any]], payout_id: str | None) -> dict[str, Any]:
    [row] = [r for r in rows if r["payout_id"] == payout_id]
    return row


def broker_dead_letter(settings: Settings, body: bytes, message_id: str) -> None:
    """Let RabbitMQ itself dead-letter ``body``: a quorum queue whose delivery limit is reached."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp.url))
    channel = connection.channel()
    channel.confirm_delivery()
    source = settings.amqp.command_queue + ".limit"
    channel.queue_declare(
        source,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": 0,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": settings.amqp.dead_queue,
        },
    )
    channel.basic_publish(
        "", source, body, pika.BasicProperties(message_id=message_id, delivery_mode=2, timestamp=int(time.time()))
    )
    method, _, _ = channel.basic_get(source, auto_ack=False)
    assert method is not None
    channel.basic_nack(method.delivery_tag, requeue=True)
    deadline = time.monotonic() + 10
    while channel.queue_declare(source, passive=True).method.message_count and time.monotonic() < deadline:
        time.sleep(0.05)
    channel.queue_delete(source)
    connection.close()


def put_dead(settings: Settings, body: bytes, reason: str, message: str) -> None:
    """A copy of what the worker's consumer writes to the dead queue."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp.url))
    channel = connection.channel()
    channel.confirm_delivery()
    headers = {REASON_HEADER: reason, MESSAGE_HEADER: message, "x-delivery-count": 4}
    channel.basic_publish(
        "", settings.amqp.dead_queue, body, pika.BasicProperties(delivery_mode=2, headers=headers, timestamp=1)
    )
    connection.close()


def paid(h: Harness, payout_id: str) -> int:
    originator = originator_conversation_id(h.settings.mpesa.shortcode, h.settings.mpesa.org_name, payout_id)
    return h.paid_by_originator().get(originator, 0)


def completed(h: Harness, payout_id: str, *, duplicate: bool = False) -> int:
    return len([e for e in h.events.of("payout.completed", duplicate=duplicate) if e["payout_id"] == payout_id])


def test_dead_letters_listed_replayed_and_dropped(
    harness_factory: Callable[..., Harness], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    h = harness_factory(B2C_CALLBACK_TOKEN=TOKEN, B2C_AMOUNT_MAX="1000")
    settings = h.settings
    too_big = {"payout_id": "d-big", "msisdn": "0712000010", "amount": "5000.00", "metadata": {"row": 1}}
    h.publish([b"not json at all", json.dumps(too_big).encode()])
    h.events.wait_for(lambda e: len(e.of("payout.rejected")) >= 2, 20, "2 rejections")
    limit_command = {"payout_id": "d-limit", "msisdn": "0712000011", "amount": "300.00"}
    broker_dead_letter(settings, json.dumps(limit_command).encode(), "d-limit")
    deadline = time.monotonic() + 10
    while len(listing(settings, capsys)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)

    # list: a reason for every kind of dead letter, MSISDNs masked, stable ids.
    rows = listing(settings, capsys)
    assert len(rows) == 3
    assert by_payout(rows, None)["reason"] == "invalid_command"
    big = by_payout(rows, "d-big")
    assert big["reason"] == "invalid_command" and "1000" in big["message"]
    assert big["msisdn"] == "2547******10" and big["amount"] == "5000.00"
    limited = by_payout(rows, "d-limit")
    assert limited["reason"] == "broker:delivery_limit" and "B2C_DELIVERY_LIMIT" in limited["message"]
    assert sorted(r["id"] for r in listing(settings, capsys)) == sorted(r["id"] for r in rows), "ids are stable"
    code, out = cli(settings, capsys, "list")
    assert code == 0 and big["id"] in out and "broker:delivery_limit" in out
    assert not FULL_MSISDN.search(out)

    # show: headers and body, masked unless --raw.
    code, out = cli(settings, capsys, "show", big["id"], "--json")
    shown = json.loads(out)
    assert shown["headers"][REASON_HEADER] == "invalid_command" and "5000.00" in shown["body"]
    assert not FULL_MSISDN.search(out)
    code, out = cli(settings, capsys, "show", big["id"], "--raw")
    assert "0712000010" in out

    # A correction must keep the payout_id (it decides the OriginatorConversationID); refused, nothing lost.
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**too_big, "payout_id": "d-other", "amount": "500.00"}))
    with pytest.raises(DeadError, match="keep payout_id"):
        cli(settings, capsys, "replay", big["id"], "--body", str(wrong))
    assert len(listing(settings, capsys)) == 3

    # replay of the fixed command: paid once.
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({**too_big, "amount": "500.00"}))
    code, out = cli(settings, capsys, "replay", big["id"], "--body", str(fixed))
    assert code == 0 and f"replayed {big['id']}" in out
    h.events.wait_for(lambda e: completed(h, "d-big") == 1, 20, "d-big completed")

    # replay of the broker's dead letter, by id: paid once.
    code, out = cli(settings, capsys, "replay", limited["id"], "--json")
    assert code == 0 and [r["payout_id"] for r in json.loads(out)["replayed"]] == ["d-limit"]
    h.events.wait_for(lambda e: completed(h, "d-limit") == 1, 20, "d-limit completed")

    # The same command dead again and replayed: same payout_id, same OriginatorConversationID, a duplicate.
    put_dead(settings, fixed.read_bytes(), "invalid_command", "a stale copy")
    copy = by_payout(listing(settings, capsys), "d-big")
    code, _ = cli(settings, capsys, "replay", copy["id"])
    assert code == 0
    h.events.wait_for(lambda e: completed(h, "d-big", duplicate=True) == 1, 20, "duplicate answer for d-big")
    assert paid(h, "d-big") == 1 and paid(h, "d-limit") == 1
    assert completed(h, "d-big") == 1

    # unknown ids are reported, and the rest stays.
    code, _ = cli(settings, capsys, "replay", "000000000000")
    assert code == 1
    assert [r["payout_id"] for r in listing(settings, capsys)] == [None]

    # drop removes; --all needs --yes.
    [left] = listing(settings, capsys)
    with pytest.raises(DeadError, match="--yes"):
        cli(settings, capsys, "drop", "--all")
    code, out = cli(settings, capsys, "drop", left["id"])
    assert code == 0 and f"dropped {left['id']}" in out
    assert listing(settings, capsys) == []
    code, out = cli(settings, capsys, "list")
    assert "(none)" in out


@pytest.fixture
def queues_only(
    amqp_names: dict[str, str], ledger_env: dict[str, str], make_settings: Callable[..., Settings]
) -> Settings:
    """The topology and a ledger, no worker: the dead queue stays as the test leaves it."""
    settings = make_settings(**amqp_names, **ledger_env, B2C_CALLBACK_TOKEN=TOKEN)
    declare(settings)
    return settings


def test_peeking_hands_every_message_back(queues_only: Settings) -> None:
    settings = queues_only
    for index in range(3):
        put_dead(settings, f'{{"n": {index}}}'.encode(), "invalid_command", f"m{index}")

    peeked = DeadQueue(settings).peek(2)

    assert len(peeked) == 2
    assert {message.message for message in peeked} <= {"m0", "m1", "m2"}
    connection = connect(settings.amqp.url)
    deadline = time.monotonic() + 10
    while queue_depth(connection.channel(), settings.amqp.dead_queue) != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue_depth(connection.channel(), settings.amqp.dead_queue) == 3, "peeked messages back in the queue"
    connection.close()


def test_replay_marks_the_copy_and_refuses_a_missing_command_queue(
    queues_only: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = queues_only
    body = json.dumps({"payout_id": "d-mark", "msisdn": "0712000012", "amount": "100.00"}).encode()
    put_dead(settings, body, "invalid_command", "test")
    [row] = listing(settings, capsys)

    gone = dataclasses.replace(settings, amqp=dataclasses.replace(settings.amqp, command_queue="no.such.queue.x"))
    with pytest.raises(DeadError, match="does not exist"):
        DeadQueue(gone).replay({row["id"]})
    assert [r["id"] for r in listing(settings, capsys)] == [row["id"]], "nothing lost when the replay is refused"

    assert [m.id for m in DeadQueue(settings).replay({row["id"]})] == [row["id"]]
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp.url))
    channel = connection.channel()
    method, properties, replayed = channel.basic_get(settings.amqp.command_queue, auto_ack=True)
    connection.close()
    assert method is not None and replayed == body
    assert properties.message_id == "d-mark" and properties.headers[REPLAYED_FROM_HEADER] == row["id"]
    assert listing(settings, capsys) == []


def test_the_installed_command_runs(queues_only: Settings, tmp_path: Path) -> None:
    settings = queues_only
    put_dead(settings, b'{"payout_id": "d-cli", "msisdn": "0712000013", "amount": "1"}', "invalid_command", "x")
    env = {
        **os.environ,
        "B2C_DATA_DIR": str(tmp_path),
        "B2C_AMQP_URL": settings.amqp.url,
        "B2C_DEAD_QUEUE": settings.amqp.dead_queue,
        "B2C_COMMAND_QUEUE": settings.amqp.command_queue,
        "B2C_EVENTS_EXCHANGE": settings.amqp.events_exchange,
        "B2C_CALLBACK_TOKEN": TOKEN,
    }
    if settings.ledger.database_url:
        env["B2C_DATABASE_URL"] = settings.ledger.database_url
    else:
        env["B2C_SQLITE_PATH"] = str(settings.ledger.sqlite_path)

    def mpesa_b2c(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "worker.cli", "dead", *argv]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    run = mpesa_b2c("list", "--json")
    assert run.returncode == 0, run.stderr
    [row] = json.loads(run.stdout)
    assert row["payout_id"] == "d-cli" and row["msisdn"] == "2547******13"
    run = mpesa_b2c("list", "--quarantine")
    assert run.returncode == 0 and "(none)" in run.stdout, run.stderr
    run = mpesa_b2c("drop", "--all")
    assert run.returncode == 1 and "--yes" in run.stderr
