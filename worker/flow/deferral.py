"""Retry later without blocking: a command M-PESA did not process waits in a RabbitMQ delay queue, not a thread.

Each tier of ``B2C_RETRY_DELAYS`` is a durable queue nobody consumes (``<command queue>.retry.<delay>``, see
:func:`worker.amqp.topology.declare_delay_queues`; declared the first time a process uses it, so a worker that never
defers creates none): a message expires there after the tier's delay and is dead-lettered back to the
command queue. The worker publishes a copy of the command to the tier (with
publisher confirms) and only then acks the delivery, so the command is always in exactly one queue (at
worst, after a crash between the two, in two: the ledger makes the second delivery a duplicate).

Three ways back, all with nothing sent and nothing paid:

- **defer** (counted): M-PESA answered busy, throttled or overloaded even after the gateway client's own
  quick retries. The copy goes to the next tier and carries ``x-b2c-deferrals``; after the last tier the
  payout is rejected (``delivery_limit``, nothing was paid, certain) instead of being retried forever.
- **park** (not counted): the request was held back here (no rate-limit slot in time, credential not yet
  proven) or the gateway could not be reached: back after the first tier's delay. A gateway outage is the
  circuit breaker's business, so it never uses up a payout's tiers.
- **hold** (not counted): the circuit breaker is open: straight back to the command queue, whose consumer
  is cancelled until the breaker closes.

And one way back for a command whose handling the **ledger** failed (:meth:`Deferrer.back_off`): the copy
waits in the tiers in turn (first, second, ... last, last) and carries ``x-b2c-ledger-errors``, so a fast-failing
database never spins a delivery to the queue's delivery limit. After ``LEDGER_RETRIES`` the caller
dead-letters it, counted and alerted: what the payout became is in the ledger, not in the message.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from worker import metrics
from worker.amqp.connection import connect
from worker.amqp.consumer import Ack, Delivery, Disposition, Requeue
from worker.amqp.publisher import ConfirmedPublisher
from worker.amqp.topology import declare_delay_queues, delay_queue_name, delay_tier_label
from worker.errors import B2CError
from worker.gateway.g2 import NOT_SENT_REASONS, GatewayAnswer, HoldReason
from worker.settings import AmqpSettings

log = logging.getLogger(__name__)

DEFERRALS_HEADER = "x-b2c-deferrals"
HELD_HEADER = "x-b2c-held"
LEDGER_ERRORS_HEADER = "x-b2c-ledger-errors"
LEDGER_HOLD = "ledger_unavailable"  # the COMMANDS_HELD label of a command put back after a ledger error
LEDGER_RETRIES = 12
# Broker bookkeeping of the delivery being replaced; the copy is a new message.
_BROKER_HEADERS = ("x-delivery-count", "x-death", "x-first-death-", "x-last-death-")


@dataclass(frozen=True)
class Hold:
    """Back to the command queue now, not counted (the breaker keeps the consumer away meanwhile)."""

    reason: HoldReason


@dataclass(frozen=True)
class Park:
    """Back after the first tier's delay, not counted."""

    reason: HoldReason


@dataclass(frozen=True)
class Defer:
    """To tier ``tier`` (0-based), counted: the copy carries ``deferrals``."""

    tier: int
    deferrals: int


@dataclass(frozen=True)
class GiveUp:
    """Every tier used: reject the payout (nothing was paid)."""

    deferrals: int
    message: str


Plan = Hold | Park | Defer | GiveUp


def deferrals_of(delivery: Delivery) -> int:
    return _count(delivery, DEFERRALS_HEADER)


def ledger_errors_of(delivery: Delivery) -> int:
    return _count(delivery, LEDGER_ERRORS_HEADER)


def _count(delivery: Delivery, header: str) -> int:
    value = delivery.headers.get(header, 0)
    return value if isinstance(value, int) and value >= 0 else 0


class Deferrer:
    """Decides and carries out "try again later" for command deliveries; thread-safe."""

    def __init__(
        self,
        amqp: AmqpSettings,
        delays: Sequence[float],
        publisher_factory: Callable[[], ConfirmedPublisher],
    ) -> None:
        if not delays:
            raise ValueError("at least one retry delay is needed")
        self._amqp = amqp
        self._queue = amqp.command_queue
        self.delays = tuple(delays)
        self.tiers = tuple(delay_queue_name(amqp.command_queue, seconds) for seconds in self.delays)
        self.labels = tuple(delay_tier_label(seconds) for seconds in self.delays)
        self._factory = publisher_factory
        self._publisher: ConfirmedPublisher | None = None
        self._declared: set[str] = set()
        self._lock = threading.Lock()

    def plan(self, delivery: Delivery, answer: GatewayAnswer) -> Plan:
        """What to do with a command whose request ended RETRY_LATER (M-PESA did not process it)."""
        if answer.held:
            held = cast(HoldReason, answer.reason)  # a held answer's reason is the observer's
            return Hold(held) if held == HoldReason.BREAKER_OPEN else Park(held)
        if answer.reason in NOT_SENT_REASONS:
            return Park(HoldReason.UNREACHABLE)
        done = deferrals_of(delivery)
        if done < len(self.delays):
            return Defer(done, done + 1)
        said = f"{answer.response.code} {answer.response.description}" if answer.response else answer.detail
        waited = " + ".join(self.labels)
        return GiveUp(
            done,
            f"M-PESA did not process the request ({said}): tried {done + 1} times, {done} deferral(s) apart"
            f" ({waited}), each time with quick retries; nothing was paid",
        )

    def carry_out(self, delivery: Delivery, plan: Hold | Park | Defer) -> Disposition:
        """Publish the copy (confirmed), then ack; if the broker does not take the copy, requeue instead."""
        headers = _copy_headers(delivery.headers)
        if isinstance(plan, Defer):
            queue, label = self.tiers[plan.tier], self.labels[plan.tier]
            headers[DEFERRALS_HEADER] = plan.deferrals
        elif isinstance(plan, Park):
            queue, label = self.tiers[0], plan.reason
            headers[HELD_HEADER] = str(plan.reason)
        else:
            queue, label = self._queue, plan.reason
            headers[HELD_HEADER] = str(plan.reason)
        try:
            if queue != self._queue:
                self._declare(self.tiers.index(queue))
            self._publish(queue, delivery, headers)
        except B2CError as exc:
            log.warning("could not put message_id=%s on %r (%s); requeueing it", delivery.message_id, queue, exc)
            return Requeue()
        if isinstance(plan, Defer):
            metrics.DEFERRALS.labels(tier=label).inc()
        else:
            metrics.COMMANDS_HELD.labels(reason=label).inc()
        return Ack()

    def back_off(self, delivery: Delivery) -> Disposition | None:
        """After a ledger error: the copy to the next tier (confirmed), then ack; Requeue if the broker does
        not take it; None once ``LEDGER_RETRIES`` copies were made (the caller dead-letters it)."""
        done = ledger_errors_of(delivery)
        if done >= LEDGER_RETRIES:
            return None
        tier = min(done, len(self.tiers) - 1)
        queue = self.tiers[tier]
        headers = _copy_headers(delivery.headers)
        headers[LEDGER_ERRORS_HEADER] = done + 1
        try:
            self._declare(tier)
            self._publish(queue, delivery, headers)
        except B2CError as exc:
            log.warning("could not put message_id=%s on %r (%s); requeueing it", delivery.message_id, queue, exc)
            return Requeue()
        metrics.COMMANDS_HELD.labels(reason=LEDGER_HOLD).inc()
        return Ack()

    def close(self) -> None:
        with self._lock:
            publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()

    def _declare(self, tier: int) -> None:
        """Declare the tier's queue once per process (idempotent on the broker; a mismatch is a TopologyError)."""
        name = self.tiers[tier]
        with self._lock:
            if name in self._declared:
                return
        connection = connect(self._amqp.url, name="mpesa-b2c-topology")
        try:
            declare_delay_queues(connection.channel(), self._amqp, [self.delays[tier]])
        finally:
            with contextlib.suppress(Exception):
                connection.close()
        with self._lock:
            self._declared.add(name)

    def _publish(self, queue: str, delivery: Delivery, headers: dict[str, Any]) -> None:
        with self._lock:
            if self._publisher is None:
                self._publisher = self._factory()
            publisher = self._publisher
        publisher.publish_to_queue(queue, delivery.body, message_id=delivery.message_id, headers=headers)


def _copy_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in headers.items() if not key.startswith(_BROKER_HEADERS)}
