"""The worker: command -> ledger -> gateway -> events, one delivery at a time on a pool thread.

Money safety rests on three rules this module keeps:
- the payout is in the ledger, and marked ``sending``, before the gateway is called;
- every (re)send of a payout uses the OriginatorConversationID stored with it, so M-PESA refuses a second
  payment (result 15) even when we resend after a crash;
- what an interrupted send did is unknown: a resend of it that M-PESA does not take leaves the payout
  ``unknown`` for the lookups, never ``rejected`` or back in the queue as if nothing had been sent;
- every write after a send carries the claim it was made under (``send_attempts``, a fencing token): a send
  that outlived its lease, the payout claimed again since, cannot reject it or put it back (ledger's word);
- the send lease is measured on the database's clock, so hosts whose clocks disagree agree on it;
- a redelivery never acks a payout left ``received``: it claims it and sends (same id), or requeues;
- the delivery is acked only after the ledger transition's events were confirmed by the broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from worker import metrics
from worker.amqp.consumer import Ack, DeadLetter, Delivery, Disposition, Requeue
from worker.errors import B2CError, InvalidCommand, LedgerError, ProtocolError
from worker.flow.control import FlowControl
from worker.flow.deferral import Deferrer, GiveUp, Hold
from worker.gateway.g2 import AttemptReason, GatewayAnswer
from worker.ledger import RecordOutcome
from worker.ledger.lookup_store import Resends
from worker.ledger.payout_store import Payments
from worker.payouts.models import (
    Payout,
    PayoutCommand,
    PayoutStatus,
    RefusalReason,
    RejectionReason,
    UnknownReason,
    extract_payout_id,
    originator_conversation_id,
    parse_command,
    parse_repeat,
)
from worker.protocol.codes import ResponseOutcome
from worker.redact import mask_msisdn
from worker.settings import MpesaSettings, Settings

log = logging.getLogger(__name__)

# The x-b2c-reason (and dead-letter metric label) of a command the ledger kept failing on.
LEDGER_ERROR = "ledger_error"


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


@dataclass(frozen=True)
class _Claim:
    payout: Payout
    claimed: bool
    resend: bool = False  # of an interrupted send, whose fate is unknown
    requeue: bool = False  # still ``sending`` under a live lease after a whole lease of waiting


def pay_payout(gateway: PaymentGateway, payout: Payout) -> GatewayAnswer:
    """One payment request for a recorded payout, always under its own OriginatorConversationID: the send
    and every resend (the consumer's after an interrupted send, the lookup runner's after "no record")."""
    command = payout.command
    return gateway.pay(
        originator_conversation_id=payout.originator_conversation_id,
        command_id=command.command.value,
        amount=command.amount,
        msisdn=command.msisdn,
        remark=command.remarks,
        reference={"Occasion": command.occasion} if command.occasion else {},
    )


class PayoutProcessor:
    """Handles one command delivery; safe to call from many threads at once."""

    def __init__(
        self,
        settings: Settings,
        payouts: Payments,
        resends: Resends,
        gateway: PaymentGateway,
        relay: EventRelay,
        *,
        flow: FlowControl | None = None,
        deferrer: Deferrer | None = None,
    ) -> None:
        self._mpesa = settings.mpesa
        # Flow control (worker.flow.control, worker.flow.deferral): without them, "not processed" is a plain requeue.
        self._flow = flow
        self._deferrer = deferrer
        self._delivery_limit = settings.amqp.delivery_limit
        self._payouts = payouts
        self._resends = resends
        self._gateway = gateway
        self._relay = relay
        self.send_lease_seconds = send_lease_seconds(self._mpesa, flow.max_wait_seconds if flow is not None else 0.0)

    def handle(self, delivery: Delivery) -> Disposition:
        try:
            return self._process(delivery)
        except LedgerError as exc:
            return self._ledger_failed(delivery, exc)

    def _ledger_failed(self, delivery: Delivery, exc: LedgerError) -> Disposition:
        """The ledger failed somewhere in the handling: never an immediate requeue, which a fast-failing
        database spins to the delivery limit in a fraction of a second (the broker then dead-letters the
        command, uncounted, and a payout may stay ``received`` or ``sending``). The consumer pauses and the
        command waits in a delay tier; whatever the payout became is in the ledger, and the copy (or the
        lookup runner, for a payout left ``sending``) finishes it."""
        log.warning("message_id=%s: the ledger failed (%s); backing off", delivery.message_id, exc)
        if self._flow is not None:
            self._flow.ledger_failed(type(exc).__name__)
        if self._deferrer is None:
            return Requeue()
        backed_off = self._deferrer.back_off(delivery)
        if backed_off is not None:
            return backed_off
        metrics.DEAD_LETTERS.labels(reason=LEDGER_ERROR).inc()
        return DeadLetter(LEDGER_ERROR, f"the ledger failed on every try, the last time with: {exc}")

    def _process(self, delivery: Delivery) -> Disposition:
        metrics.COMMANDS_RECEIVED.inc()
        try:
            command = self._validate(delivery.body)
        except InvalidCommand as exc:
            return self._reject_invalid(delivery, exc)

        originator = originator_conversation_id(self._mpesa.shortcode, self._mpesa.org_name, command.payout_id)
        recorded = self._payouts.record(command, originator)
        payout = recorded.payout
        if recorded.outcome is RecordOutcome.CONFLICT:
            metrics.COMMANDS_REFUSED.labels(reason=RefusalReason.IDEMPOTENCY_CONFLICT.value).inc()
            log.info(
                "payout %s: same payout_id, different content; command refused, payout (%s) untouched",
                payout.payout_id,
                payout.status,
            )
            return self._publish_then_ack(payout.payout_id)
        if payout.status is PayoutStatus.RECEIVED and self._flow is not None and self._deferrer is not None:
            held = self._flow.admit()
            if held is not None:  # the circuit breaker is open: not even claimed, back to the queue
                return self._deferrer.carry_out(delivery, Hold(held))
        claim = self._claim(payout) if recorded.outcome is RecordOutcome.NEW else self._resume(payout, delivery)
        if claim.requeue:
            return Requeue()
        if not claim.claimed:
            # Already sent or final, or a concurrent delivery took it between record and claim (it owns the send).
            metrics.COMMANDS_DUPLICATE.inc()
            self._payouts.note_duplicate(payout.payout_id)
            return self._publish_then_ack(payout.payout_id)
        return self._send(claim.payout, delivery, resend=claim.resend)

    def _validate(self, body: bytes) -> PayoutCommand:
        """The payout_id is looked up first: a recorded payout's stored command is authoritative, so a
        redelivery or replay of it is that payout (duplicate or resume) even if today's amount limits would
        refuse it. Only a payout_id not recorded is judged by today's rules."""
        payout_id = extract_payout_id(body)
        if payout_id is not None and self._payouts.get(payout_id) is not None:
            return parse_repeat(body)
        return parse_command(body, amount_min=self._mpesa.amount_min, amount_max=self._mpesa.amount_max)

    def _claim(self, payout: Payout) -> _Claim:
        after = self._payouts.claim_send(payout.payout_id, expected_attempts=payout.send_attempts)
        return _Claim(payout, claimed=False) if after is None else _Claim(after, claimed=True)

    def _resume(self, payout: Payout, delivery: Delivery) -> _Claim:  # noqa: C901 - money path: one branch per state, in one reviewed order
        """A command we already recorded: finish it if its earlier handling died, else answer as duplicate.

        ``sending``: either another thread/process is sending right now, or one died mid-send. Past the send
        lease (on the database's clock) no send is running: any delivery (a redelivery, a replay, a copy
        parked after a ledger error) resumes it. A redelivery, likely the orphan of a dead worker, waits
        (bounded) for the lease; others do not hold a thread. The resend passes the circuit breaker like every
        request (the gateway's flow observer). A send it waits on may end "not processed" and put the payout
        back to ``received``, and that sender's requeue may be lost with its connection (this delivery may be
        the very message): so a ``received`` payout is claimed and sent here, never acked as a duplicate.
        """
        deadline = time.monotonic() + self.send_lease_seconds
        current, age = payout, None
        while True:
            if current.status is PayoutStatus.RECEIVED:
                claim = self._claim(current)
                if claim.claimed:
                    return claim
            elif current.status is not PayoutStatus.SENDING:
                return _Claim(current, claimed=False)
            elif age is not None and age >= self.send_lease_seconds:
                claimed = self._payouts.claim_send(
                    current.payout_id, expected_attempts=current.send_attempts, lease_seconds=self.send_lease_seconds
                )
                if claimed is not None:
                    log.warning(
                        "payout %s: resending with the same OriginatorConversationID after an interrupted send",
                        current.payout_id,
                    )
                    return _Claim(claimed, claimed=True, resend=True)
            elif age is not None and not delivery.redelivered:
                return _Claim(current, claimed=False)  # a live send: answered as a duplicate at once
            elif age is not None and time.monotonic() > deadline:
                log.warning("payout %s: still sending under a live lease after waiting; requeued", current.payout_id)
                return _Claim(current, claimed=False, requeue=True)
            elif age is not None:
                time.sleep(min(0.5, max(self.send_lease_seconds - age, 0.05)))
            seen = self._payouts.since_change(current.payout_id)
            if seen is None:
                return _Claim(current, claimed=False)
            current, age = seen

    def _send(self, payout: Payout, delivery: Delivery, *, resend: bool = False) -> Disposition:
        command = payout.command
        log.info(
            "payout %s: sending %s KES %s to %s (attempt %d)",
            payout.payout_id,
            command.command.value,
            command.amount,
            mask_msisdn(command.msisdn),
            payout.send_attempts,
        )
        try:
            answer = pay_payout(self._gateway, payout)
        except ProtocolError as exc:
            if resend:  # the interrupted send was built from the same command: its fate is still open
                return self._resend_not_taken(payout, None, None, f"the resend could not be built: {exc}")
            # The request could not even be built, so nothing was sent: a command M-PESA cannot take.
            self._reject(
                payout,
                RejectionReason.INVALID_COMMAND,
                code=None,
                description=None,
                message=f"the request for M-PESA could not be built: {exc}",
            )
            return self._publish_then_ack(payout.payout_id)
        response = answer.response
        code = response.code if response else None
        description = response.description if response else answer.detail
        if resend and answer.outcome in (ResponseOutcome.REJECTED, ResponseOutcome.RETRY_LATER):
            return self._resend_not_taken(payout, answer, code, description)
        if answer.outcome is ResponseOutcome.ACCEPTED:
            assert response is not None
            self._payouts.mark_accepted(
                payout.payout_id,
                attempt=payout.send_attempts,
                conversation_id=response.conversation_id,
                code=response.code,
                description=response.description,
            )
        elif answer.outcome is ResponseOutcome.REJECTED:
            assert response is not None
            self._reject(
                payout,
                RejectionReason.MPESA_REJECTED,
                code=response.code,
                description=response.description,
                message=f"M-PESA refused the request with ResponseCode {response.code}: {response.description}",
            )
        elif answer.outcome is ResponseOutcome.UNKNOWN:
            answered = response is not None or answer.reason == AttemptReason.UNPARSABLE
            reason = UnknownReason.UNRECOGNISED_RESPONSE if answered else UnknownReason.NO_RESPONSE
            log.warning(
                "payout %s: outcome unknown (%s); it stays unknown until looked up",
                payout.payout_id,
                answer.detail,
            )
            self._payouts.mark_unknown(
                payout.payout_id, attempt=payout.send_attempts, reason=reason.value, code=code, description=description
            )
        else:
            return self._not_processed(payout, delivery, answer, code, description)
        return self._publish_then_ack(payout.payout_id)

    def _resend_not_taken(
        self, payout: Payout, answer: GatewayAnswer | None, code: str | None, description: str | None
    ) -> Disposition:
        """M-PESA did not take the resend of an interrupted send (refused, busy, or held back here).

        That says nothing about the first send, which may have been paid: the payout becomes ``unknown`` and
        the lookup runner looks it up (or resends again, same id, when M-PESA has no record of it). Never
        ``rejected``, and never back in the queue as if nothing had been sent.
        """
        log.warning(
            "payout %s: the resend after an interrupted send was not taken (%s); unknown until looked up",
            payout.payout_id,
            code or description,
        )
        retry_later = answer is not None and answer.outcome is ResponseOutcome.RETRY_LATER
        self._resends.resend_not_taken(
            payout.payout_id,
            attempt=payout.send_attempts,
            code=code,
            description=description,
            not_processed=retry_later,
            held=answer is not None and answer.held,
        )
        return self._publish_then_ack(payout.payout_id)

    def _not_processed(
        self, payout: Payout, delivery: Delivery, answer: GatewayAnswer, code: str | None, description: str | None
    ) -> Disposition:
        """M-PESA certainly did not process it (busy, throttled, unreachable, held back here): nothing was paid.

        With a deferrer the command waits in a delay queue (worker.flow.deferral) and the thread moves on; the
        payout goes back to ``received`` before the copy is published, so the copy always finds it there. If
        it was not ours to put back (claimed again since, or answered meanwhile), its current owner finishes
        it: the delivery is acked, not retried.
        """
        if self._deferrer is not None:
            plan = self._deferrer.plan(delivery, answer)
            if not isinstance(plan, GiveUp):
                if not self._put_back(payout, code, description):
                    return self._publish_then_ack(payout.payout_id)
                log.info("payout %s: not processed (%s); %s", payout.payout_id, code or answer.reason, plan)
                return self._deferrer.carry_out(delivery, plan)
            message = plan.message
        elif delivery.delivery_count < self._delivery_limit:  # quorum queues allow limit + 1 deliveries
            if not self._put_back(payout, code, description):
                return self._publish_then_ack(payout.payout_id)
            log.info("payout %s: not processed by M-PESA (%s); requeued", payout.payout_id, code or description)
            return Requeue()
        else:
            message = f"M-PESA did not process the request on {self._delivery_limit} deliveries; nothing was paid"
        self._reject(payout, RejectionReason.DELIVERY_LIMIT, code=code, description=description, message=message)
        return self._publish_then_ack(payout.payout_id)

    def _put_back(self, payout: Payout, code: str | None, description: str | None) -> bool:
        """``sending`` back to ``received`` under this claim; False when the payout is no longer this claim's."""
        after = self._payouts.mark_not_sent(
            payout.payout_id, attempt=payout.send_attempts, code=code, description=description
        )
        return after.status is PayoutStatus.RECEIVED and after.send_attempts == payout.send_attempts

    def _reject(
        self, payout: Payout, reason: RejectionReason, *, code: str | None, description: str | None, message: str
    ) -> None:
        """Reject under this claim; counted only if it did (a stale claim's refusal is kept, not applied)."""
        after = self._payouts.mark_rejected(
            payout.payout_id,
            attempt=payout.send_attempts,
            reason=reason.value,
            code=code,
            description=description,
            message=message,
        )
        if after.status is PayoutStatus.REJECTED and after.send_attempts == payout.send_attempts:
            metrics.COMMANDS_REJECTED.labels(reason=reason.value).inc()

    def _reject_invalid(self, delivery: Delivery, exc: InvalidCommand) -> Disposition:
        """``payout.rejected`` if nothing is recorded under its payout_id, else ``command.refused`` (the
        ledger decides, in the transaction that keeps the body); dead-lettered either way."""
        payout_id = extract_payout_id(delivery.body)
        log.info("invalid command (payout_id %s): %s", payout_id or "unknown", exc)
        recorded = self._payouts.record_invalid(
            delivery.body, payout_id=payout_id, reason=RejectionReason.INVALID_COMMAND.value, message=str(exc)
        )
        if recorded is None:
            metrics.COMMANDS_REJECTED.labels(reason=RejectionReason.INVALID_COMMAND.value).inc()
        else:
            metrics.COMMANDS_REFUSED.labels(reason=RefusalReason.INVALID_COMMAND.value).inc()
            log.info("payout %s: invalid command refused, payout (%s) untouched", recorded.payout_id, recorded.status)
        try:
            self._relay.flush(payout_id)
        except LedgerError:
            raise
        except B2CError as error:
            log.warning("rejection event stays in the outbox for now: %s", error)
            return Requeue()
        metrics.DEAD_LETTERS.labels(reason=RejectionReason.INVALID_COMMAND.value).inc()
        return DeadLetter(RejectionReason.INVALID_COMMAND.value, str(exc))

    def _publish_then_ack(self, payout_id: str) -> Disposition:
        try:
            self._relay.flush(payout_id)
        except LedgerError:
            raise  # backed off in handle: an immediate requeue would spin while the ledger fails
        except B2CError as exc:
            # The ledger has it; the relay publishes it later. Not acking makes the broker redeliver.
            log.warning("payout %s: events stay in the outbox for now: %s", payout_id, exc)
            return Requeue()
        return Ack()
