"""The worker: command -> ledger -> gateway -> events, one delivery at a time on a pool thread.

Money safety rests on three rules this module keeps:
- the payout is in the ledger, and marked ``sending``, before the gateway is called;
- only a ``received`` payout is sent from here: one already ``sending`` (its worker died mid-send) has an
  unknown fate, so it is left to the reconciler, which looks it up before resending it with the same
  OriginatorConversationID;
- the delivery is acked only after the ledger transition's events were confirmed by the broker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Protocol

from worker import metrics
from worker.amqp import Ack, DeadLetter, Delivery, Disposition, Requeue
from worker.deferral import Deferrer, GiveUp, Hold
from worker.errors import B2CError, InvalidCommand, ProtocolError
from worker.flow import FlowControl
from worker.gateway import REASON_UNPARSABLE, GatewayAnswer
from worker.ledger import Ledger, RecordOutcome
from worker.payouts import (
    Payout,
    PayoutStatus,
    RejectionReason,
    UnknownReason,
    extract_payout_id,
    originator_conversation_id,
    parse_command,
)
from worker.protocol.codes import ResponseOutcome
from worker.redact import mask_msisdn
from worker.settings import MpesaSettings, Settings

log = logging.getLogger(__name__)


class PaymentGateway(Protocol):
    def pay(
        self,
        *,
        originator_conversation_id: str,
        command_id: str,
        amount: Decimal,
        msisdn: str,
        remark: str,
        reference: Mapping[str, str],
    ) -> GatewayAnswer: ...


class EventRelay(Protocol):
    def flush(self, payout_id: str | None = None, *, limit: int = 500) -> int: ...


def send_lease_seconds(mpesa: MpesaSettings, flow_wait: float = 0.0) -> float:
    """How long one send can take, flow-control wait, connect, read and the whole retry budget included: a
    ``sending`` payout older than this has no send running any more."""
    return flow_wait + mpesa.connect_timeout + mpesa.read_timeout + mpesa.retry_max_seconds + 5.0


class PayoutProcessor:
    """Handles one command delivery; safe to call from many threads at once."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        gateway: PaymentGateway,
        relay: EventRelay,
        *,
        flow: FlowControl | None = None,
        deferrer: Deferrer | None = None,
    ) -> None:
        self._mpesa = settings.mpesa
        # Flow control (worker.flow, worker.deferral): without them, "not processed" is a plain requeue.
        self._flow = flow
        self._deferrer = deferrer
        self._delivery_limit = settings.amqp.delivery_limit
        self._ledger = ledger
        self._gateway = gateway
        self._relay = relay
        self.send_lease_seconds = send_lease_seconds(self._mpesa, flow.max_wait_seconds if flow is not None else 0.0)

    def handle(self, delivery: Delivery) -> Disposition:
        metrics.COMMANDS_RECEIVED.inc()
        try:
            command = parse_command(delivery.body, amount_min=self._mpesa.amount_min, amount_max=self._mpesa.amount_max)
        except InvalidCommand as exc:
            return self._reject_invalid(delivery, exc)

        originator = originator_conversation_id(self._mpesa.shortcode, self._mpesa.org_name, command.payout_id)
        recorded = self._ledger.record(command, originator, announce_duplicate=False)
        payout = recorded.payout
        if recorded.outcome is RecordOutcome.CONFLICT:
            metrics.COMMANDS_REJECTED.labels(reason=RejectionReason.IDEMPOTENCY_CONFLICT.value).inc()
            log.info("payout %s: same payout_id, different content; refused, original untouched", payout.payout_id)
            return self._publish_then_ack(payout.payout_id)
        if payout.status is PayoutStatus.RECEIVED and self._flow is not None and self._deferrer is not None:
            held = self._flow.admit()
            if held is not None:  # the circuit breaker is open: not even claimed, back to the queue
                return self._deferrer.carry_out(delivery, Hold(held))
        claimed = (
            self._ledger.claim_send(payout.payout_id, expected_attempts=payout.send_attempts)
            if payout.status is PayoutStatus.RECEIVED
            else None
        )
        if claimed is None and delivery.redelivered and payout.status is PayoutStatus.SENDING:
            # Ours again after a connection or worker was lost mid-send: not a duplicate from the payer. The
            # send may still be running; if its worker died, the reconciler looks it up once the lease ends.
            log.info("payout %s: redelivered while sending; left to its sender or the reconciler", payout.payout_id)
            return self._publish_then_ack(payout.payout_id)
        if claimed is None:
            # Already past ``received`` (sent, being sent, final), or a concurrent delivery claimed it first.
            metrics.COMMANDS_DUPLICATE.inc()
            self._ledger.note_duplicate(payout.payout_id)
            return self._publish_then_ack(payout.payout_id)
        return self._send(claimed, delivery)

    def _send(self, payout: Payout, delivery: Delivery) -> Disposition:
        command = payout.command
        reference = {"Occasion": command.occasion} if command.occasion else {}
        log.info(
            "payout %s: sending %s KES %s to %s (attempt %d)",
            payout.payout_id,
            command.command.value,
            command.amount,
            mask_msisdn(command.msisdn),
            payout.send_attempts,
        )
        try:
            answer = self._gateway.pay(
                originator_conversation_id=payout.originator_conversation_id,
                command_id=command.command.value,
                amount=command.amount,
                msisdn=command.msisdn,
                remark=command.remarks,
                reference=reference,
            )
        except ProtocolError as exc:
            # The request could not even be built, so nothing was sent: a command M-PESA cannot take.
            metrics.COMMANDS_REJECTED.labels(reason=RejectionReason.INVALID_COMMAND.value).inc()
            self._ledger.mark_rejected(
                payout.payout_id,
                reason=RejectionReason.INVALID_COMMAND.value,
                code=None,
                description=None,
                message=f"the request for M-PESA could not be built: {exc}",
            )
            return self._publish_then_ack(payout.payout_id)
        response = answer.response
        code = response.code if response else None
        description = response.description if response else answer.detail
        if answer.outcome is ResponseOutcome.ACCEPTED:
            assert response is not None
            self._ledger.mark_accepted(
                payout.payout_id,
                conversation_id=response.conversation_id,
                code=response.code,
                description=response.description,
            )
        elif answer.outcome is ResponseOutcome.REJECTED:
            assert response is not None
            metrics.COMMANDS_REJECTED.labels(reason=RejectionReason.MPESA_REJECTED.value).inc()
            self._ledger.mark_rejected(
                payout.payout_id,
                reason=RejectionReason.MPESA_REJECTED.value,
                code=response.code,
                description=response.description,
                message=f"M-PESA refused the request with ResponseCode {response.code}: {response.description}",
            )
        elif answer.outcome is ResponseOutcome.UNKNOWN:
            answered = response is not None or answer.reason == REASON_UNPARSABLE
            reason = UnknownReason.UNRECOGNISED_RESPONSE if answered else UnknownReason.NO_RESPONSE
            log.warning(
                "payout %s: outcome unknown (%s); it stays unknown until looked up",
                payout.payout_id,
                answer.detail,
            )
            self._ledger.mark_unknown(payout.payout_id, reason=reason.value, code=code, description=description)
        else:
            return self._not_processed(payout, delivery, answer, code, description)
        return self._publish_then_ack(payout.payout_id)

    def _not_processed(
        self, payout: Payout, delivery: Delivery, answer: GatewayAnswer, code: str | None, description: str | None
    ) -> Disposition:
        """M-PESA certainly did not process it (busy, throttled, unreachable, held back here): nothing was paid.

        With a deferrer the command waits in a delay queue (worker.deferral) and the thread moves on; the
        payout goes back to ``received`` before the copy is published, so the copy always finds it there.
        """
        if self._deferrer is not None:
            plan = self._deferrer.plan(delivery, answer)
            if not isinstance(plan, GiveUp):
                self._ledger.mark_not_sent(payout.payout_id, code=code, description=description)
                log.info("payout %s: not processed (%s); %s", payout.payout_id, code or answer.reason, plan)
                return self._deferrer.carry_out(delivery, plan)
            message = plan.message
        elif delivery.delivery_count < self._delivery_limit:  # quorum queues allow limit + 1 deliveries
            self._ledger.mark_not_sent(payout.payout_id, code=code, description=description)
            log.info("payout %s: not processed by M-PESA (%s); requeued", payout.payout_id, code or description)
            return Requeue()
        else:
            message = f"M-PESA did not process the request on {self._delivery_limit} deliveries; nothing was paid"
        metrics.COMMANDS_REJECTED.labels(reason=RejectionReason.DELIVERY_LIMIT.value).inc()
        self._ledger.mark_rejected(
            payout.payout_id,
            reason=RejectionReason.DELIVERY_LIMIT.value,
            code=code,
            description=description,
            message=message,
        )
        return self._publish_then_ack(payout.payout_id)

    def _reject_invalid(self, delivery: Delivery, exc: InvalidCommand) -> Disposition:
        metrics.COMMANDS_REJECTED.labels(reason=RejectionReason.INVALID_COMMAND.value).inc()
        payout_id = extract_payout_id(delivery.body)
        log.info("invalid command (payout_id %s): %s", payout_id or "unknown", exc)
        self._ledger.record_invalid(
            delivery.body, payout_id=payout_id, reason=RejectionReason.INVALID_COMMAND.value, message=str(exc)
        )
        try:
            self._relay.flush(payout_id)
        except B2CError as error:
            log.warning("rejection event stays in the outbox for now: %s", error)
            return Requeue()
        metrics.DEAD_LETTERS.labels(reason=RejectionReason.INVALID_COMMAND.value).inc()
        return DeadLetter(RejectionReason.INVALID_COMMAND.value, str(exc))

    def _publish_then_ack(self, payout_id: str) -> Disposition:
        try:
            self._relay.flush(payout_id)
        except B2CError as exc:
            # The ledger has it; the relay publishes it later. Not acking makes the broker redeliver.
            log.warning("payout %s: events stay in the outbox for now: %s", payout_id, exc)
            return Requeue()
        return Ack()
