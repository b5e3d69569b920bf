"""The queues and exchange the package relies on: declaring them, checking them, counting what they hold.

Declaring is safe to repeat; a queue that exists with other arguments than configured is a TopologyError that
names the setting to change, because RabbitMQ never changes a queue's arguments in place.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from worker.errors import TopologyError
from worker.settings import AmqpSettings

NOT_FOUND = 404
_PRECONDITION_FAILED = 406
_SETTING_HINTS = {
    "x-delivery-limit": "x-delivery-limit (B2C_DELIVERY_LIMIT)",
    "x-queue-type": "queue type (x-queue-type, must be quorum)",
    "x-dead-letter-routing-key": "dead-letter routing key (B2C_DEAD_QUEUE)",
}


def _command_queue_arguments(amqp: AmqpSettings) -> dict[str, Any]:
    """A quorum queue that counts deliveries, so a message requeued forever ends on the dead queue."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": amqp.delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": amqp.dead_queue,
    }


# At-least-once dead-lettering for the command queue, set as a policy: RabbitMQ never changes an existing
# queue's arguments, but a policy applies to queues already there. It needs reject-publish overflow, else a
# quorum queue silently falls back to at-most-once.
COMMAND_QUEUE_POLICY: dict[str, str] = {"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"}
COMMAND_QUEUE_POLICY_NAME = "mpesa-b2c-commands"


def command_queue_policy_argv(amqp: AmqpSettings, *, name: str = COMMAND_QUEUE_POLICY_NAME) -> list[str]:
    """The ``rabbitmqctl set_policy`` command that gives the command queue (and only it) that policy."""
    pattern = "^" + re.escape(amqp.command_queue) + "$"
    definition = json.dumps(COMMAND_QUEUE_POLICY, separators=(",", ":"))
    return ["rabbitmqctl", "set_policy", "--apply-to", "queues", "--priority", "10", name, pattern, definition]


def delay_tier_label(seconds: float) -> str:
    """``5s``, ``120s``, ``200ms``: a delay tier's name in its queue name and metric label."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def delay_queue_name(command_queue: str, seconds: float) -> str:
    return f"{command_queue}.retry.{delay_tier_label(seconds)}"


def _delay_queue_arguments(amqp: AmqpSettings, seconds: float) -> dict[str, Any]:
    """A queue nobody consumes: each message expires after ``seconds`` and goes back to the command queue.

    Quorum with at-least-once dead-lettering (which needs reject-publish overflow): a message is removed
    from the delay queue only once the command queue has confirmed taking it back.
    """
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": round(seconds * 1000),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": amqp.command_queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def declare_delay_queues(channel: BlockingChannel, amqp: AmqpSettings, delays: Sequence[float]) -> None:
    """One delay queue per retry tier (B2C_RETRY_DELAYS), e.g. ``payouts.commands.retry.5s``."""
    for seconds in delays:
        name = delay_queue_name(amqp.command_queue, seconds)
        arguments = _delay_queue_arguments(amqp, seconds)
        _declare(functools.partial(channel.queue_declare, queue=name, durable=True, arguments=arguments), "queue", name)


def declare_topology(channel: BlockingChannel, amqp: AmqpSettings) -> None:
    """Declare the events exchange, the dead queue and the command queue; safe to repeat.

    The delay tiers are declared by the worker the first time it defers a command to one of them
    (:func:`declare_delay_queues`, from worker.flow.deferral).

    A mismatch closes the channel (AMQP rules), so after a TopologyError the caller needs a new channel.
    """
    _declare(
        lambda: channel.exchange_declare(exchange=amqp.events_exchange, exchange_type="topic", durable=True),
        "exchange",
        amqp.events_exchange,
    )
    _declare(
        lambda: channel.queue_declare(queue=amqp.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}),
        "queue",
        amqp.dead_queue,
    )
    _declare(
        lambda: channel.queue_declare(queue=amqp.command_queue, durable=True, arguments=_command_queue_arguments(amqp)),
        "queue",
        amqp.command_queue,
    )


def _declare(action: Callable[[], object], kind: str, name: str) -> None:
    try:
        action()
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == _PRECONDITION_FAILED:
            match = re.search(r"inequivalent arg '([^']+)'", exc.reply_text or "")
            arg = match.group(1) if match else "setting"
            setting = _SETTING_HINTS.get(arg, arg)
            raise TopologyError(
                f"{kind} {name!r} already exists with a different {setting} than configured "
                f"(broker said: {exc.reply_text}); delete the {kind} (after moving its messages) "
                "or change the settings to match"
            ) from None
        raise TopologyError(f"cannot declare {kind} {name!r}: {exc.reply_text}") from None


def queue_depth(channel: BlockingChannel, queue: str) -> int:
    """Messages ready in ``queue`` (not counting unacknowledged ones); TopologyError if it is missing."""
    try:
        ok = channel.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == NOT_FOUND:
            raise TopologyError(f"queue {queue!r} does not exist") from None
        raise TopologyError(f"cannot inspect queue {queue!r}: {exc.reply_text}") from None
    return int(ok.method.message_count)
