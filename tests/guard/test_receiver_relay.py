"""The receiver answers M-PESA once the result is stored, whatever the broker does; the relay publishes the
events from its own thread once the broker is back (both ledger engines)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pika
import pytest

from tests.support.guard import TOKEN, result_for
from tests.support.pipeline import declare
from tests.support.waiting import wait_until
from worker.amqp.publisher import ConfirmedPublisher
from worker.events.relay import OutboxRelay, Publisher
from worker.ledger import Ledger, open_ledger
from worker.payouts.models import CommandId, Payout, PayoutCommand, PayoutStatus, originator_conversation_id
from worker.receiver.endpoint import CallbackReceiver
from worker.settings import Settings


class UnreachableBroker:
    """A publisher factory whose connect hangs (a broker behind a black hole) until the broker is back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.back = threading.Event()
        self.waiting = threading.Event()

    def __call__(self) -> Publisher:
        self.waiting.set()
        self.back.wait()
        return ConfirmedPublisher(self.url, name="test-relay")


@pytest.fixture
def ledger(ledger_env: dict[str, str], make_settings: Callable[..., Settings]) -> Iterator[Ledger]:
    opened = open_ledger(make_settings(**ledger_env).ledger)
    try:
        yield opened
    finally:
        opened.close()


def accepted(ledger: Ledger, payout_id: str) -> Payout:
    command = PayoutCommand(
        payout_id=payout_id,
        msisdn="254712345678",
        amount=Decimal("1500.00"),
        command=CommandId.BUSINESS_PAYMENT,
        remarks="x",
        occasion=None,
        metadata={},
    )
    ledger.payouts.record(command, originator_conversation_id("600000", "mpesab2c", payout_id))
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    return ledger.payouts.mark_accepted(payout_id, conversation_id=f"AG_{payout_id}", code="0", description="ok")


def post(app: CallbackReceiver, body: bytes) -> dict[str, Any]:
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"] = status

    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": app.result_path,
        "CONTENT_TYPE": "text/xml",
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(body),
    }
    answer["body"] = b"".join(app(environ, start_response))
    return answer


def test_the_answer_does_not_wait_for_the_broker(
    ledger: Ledger, amqp_names: dict[str, str], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(**amqp_names, B2C_CALLBACK_TOKEN=TOKEN)
    declare(settings)
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp.url))
    channel = connection.channel()
    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(queue, settings.amqp.events_exchange, routing_key="payout.#")
    broker = UnreachableBroker(settings.amqp.url)
    relay = OutboxRelay(ledger.outbox, broker, settings.amqp.events_exchange)
    relay.start(interval=0.2)
    app = CallbackReceiver(settings, ledger.results, ledger.outbox, relay)
    payout = accepted(ledger, "p-relay")
    try:
        answered: dict[str, Any] = {}
        request = threading.Thread(target=lambda: answered.update(post(app, result_for(payout))), daemon=True)
        request.start()
        # The relay is stuck connecting; the request must be answered anyway. (The bound only keeps a
        # regression from hanging the suite: the old code never answered while the broker was away.)
        request.join(30)
        assert answered.get("status") == "200 OK", "the answer waited for the broker"
        assert b"00000000" in answered["body"]
        stored = ledger.payouts.get("p-relay")
        assert stored is not None and stored.status is PayoutStatus.COMPLETED
        wait_until(broker.waiting.is_set, 10, "the relay to try the broker")
        assert ledger.outbox.pending(payout_id="p-relay"), "the event waits in the outbox"

        broker.back.set()

        events: list[dict[str, Any]] = []

        def published() -> bool:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is not None:
                events.append(json.loads(body))
            return any(event["status"] == "completed" for event in events)

        wait_until(published, 20, "payout.completed published once the broker is back")
        assert [(event["payout_id"], event["status"]) for event in events] == [
            ("p-relay", "accepted"),
            ("p-relay", "completed"),
        ]
        wait_until(lambda: not ledger.outbox.pending(payout_id="p-relay"), 10, "the outbox emptied")
    finally:
        broker.back.set()
        relay.close()
        connection.close()
