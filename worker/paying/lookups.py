"""Lookups: every payout whose fate is in doubt is looked up until M-PESA says what became of it; never guessed.

Run by the worker process on a background thread (``WorkerService``), it takes the payouts the ledger says
are due for a lookup (:meth:`~worker.ledger.lookup_store.LookupStore.due_for_lookup`) and for each one either

- sends a ``TransactionStatusQuery`` under a **new** id of the query's own (``<payout id>_Q<n>``), recorded
  in the ledger before it is sent; the answer comes back through the callback receiver, which applies it
  (completed, failed with a final code, or "not found"); or
- when a status answer said M-PESA has **no such payment** (49) for a payout whose send may never have
  arrived (``unknown``, or only cached with 100000000), resends the payment with the payout's **same**
  OriginatorConversationID. M-PESA refuses a second payment under one id (result 15), so the resend cannot
  pay twice: either it pays (the first never arrived) or its duplicate answer proves the first did, and
  the payout is looked up again. A resend under a new id is never made.

Bounded by ``B2C_LOOKUP_INTERVAL_SECONDS`` between lookups, ``B2C_LOOKUP_MAX_ATTEMPTS`` lookups and
``B2C_LOOKUP_MAX_SECONDS`` from the first one. A payout still in doubt then keeps its status (``unknown``
stays ``unknown``), is flagged for review, counted in ``mpesa_b2c_payouts_flagged_for_review`` and logged
at WARNING. No timer here ever makes a payout ``failed``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from worker import metrics
from worker.errors import B2CError
from worker.gateway.g2 import NOT_SENT_REASONS, GatewayAnswer
from worker.ledger import FlagReason, LookupAction, LookupTask, QueryResponse
from worker.ledger.lookup_store import LookupQueue
from worker.ledger.payout_store import Acceptance
from worker.paying.handler import EventRelay, PaymentGateway, pay_payout
from worker.paying.handler import send_lease_seconds as send_lease
from worker.protocol.codes import ResponseOutcome
from worker.redact import mask_msisdn
from worker.settings import Settings

log = logging.getLogger(__name__)

# How often the lookup runner looks for due work at most: a queue timeout or a duplicate answer is looked up
# within this, whatever the (much longer) interval between two lookups of one payout.
MAX_TICK_SECONDS = 1.0
BATCH = 50
QUERY_REMARK = "Status query"


class LookupGateway(PaymentGateway, Protocol):
    """The worker's gateway, which also answers status queries."""

    def query_status(
        self,
        *,
        originator_conversation_id: str,
        target_originator_conversation_id: str | None = None,
        receipt: str | None = None,
        remark: str = "",
    ) -> GatewayAnswer: ...


@dataclass(frozen=True)
class Pass:
    """What one lookup pass did."""

    queried: int = 0
    resent: int = 0
    flagged: int = 0
    skipped: int = 0
    errors: int = 0
    held: int = 0


class LookupRunner:
    """One per worker process; several workers on one PostgreSQL ledger share the work (claims are leased)."""

    def __init__(
        self,
        settings: Settings,
        lookups: LookupQueue,
        payouts: Acceptance,
        gateway: LookupGateway,
        relay: EventRelay,
        *,
        send_lease_seconds: float | None = None,
    ) -> None:
        self._settings = settings.lookup
        self._lookups = lookups
        self._payouts = payouts
        self._gateway = gateway
        self._relay = relay
        # A payout still ``sending`` after the lease of the consumer's sends has no send running any more.
        self.stuck_after = send_lease_seconds if send_lease_seconds is not None else send_lease(settings.mpesa)

    @property
    def tick_seconds(self) -> float:
        """How often :meth:`tick` should run."""
        return min(self._settings.interval, MAX_TICK_SECONDS)

    def tick(self) -> None:
        """One pass for the background loop: never raises, so the loop never dies of a bug or an outage."""
        try:
            self.run_once()
        except Exception:  # lookups must keep running; the error is logged
            log.exception("lookup pass failed; trying again in %.1f s", self.tick_seconds)

    def run_once(self) -> Pass:
        """Claim the payouts due for a lookup and look each one up (or flag it); update the review gauge."""
        lookup = self._settings
        tasks = self._lookups.due_for_lookup(
            unknown_after=lookup.unknown_after,
            result_timeout=lookup.result_timeout,
            stuck_after=self.stuck_after,
            lease_seconds=lookup.interval,
            limit=BATCH,
        )
        counts = {"queried": 0, "resent": 0, "flagged": 0, "skipped": 0, "errors": 0, "held": 0}
        for task in tasks:
            try:
                done = self._handle(task)
            except B2CError as exc:
                counts["errors"] += 1
                log.warning("payout %s: lookup failed, tried again later: %s", task.payout.payout_id, exc)
                continue
            counts[done] += 1
            if done == "held":
                # Flow control holds every request of this process (breaker open, credential not proven yet):
                # the rest of the batch waits for its lease to run out instead of each waiting at the gate.
                log.info("lookups held back by flow control; %d claimed payout(s) wait for the next pass", len(tasks))
                break
        metrics.PAYOUTS_FLAGGED.set(self._lookups.count_flagged())
        return Pass(**counts)

    def _handle(self, task: LookupTask) -> str:
        reason = self._exhausted(task)
        if reason is not None:
            return self._flag(task, reason)
        if task.action is LookupAction.RESEND:
            return self._resend(task)
        return self._query(task)

    def _exhausted(self, task: LookupTask) -> FlagReason | None:
        if task.attempts >= self._settings.max_attempts:
            return FlagReason.MAX_ATTEMPTS
        if task.elapsed is not None and task.elapsed >= self._settings.max_seconds:
            return FlagReason.MAX_SECONDS
        return None

    def _flag(self, task: LookupTask, reason: FlagReason) -> str:
        payout = task.payout
        if self._lookups.flag_for_review(payout.payout_id, reason=reason):
            log.warning(
                "payout %s still %s after %d lookup(s) (%s); flagged for review. It is NOT failed: check it"
                " with M-PESA (OriginatorConversationID %s) before doing anything with it",
                payout.payout_id,
                payout.status,
                task.attempts,
                reason.value,
                payout.originator_conversation_id,
            )
        return "flagged"

    def _query(self, task: LookupTask) -> str:
        payout = task.payout
        query = self._lookups.record_status_query(
            payout.payout_id, trigger=task.trigger, retry_after=self._settings.interval
        )
        if query is None:
            return "skipped"
        metrics.LOOKUPS.labels(trigger=task.trigger.value, action=LookupAction.QUERY.value).inc()
        qid = query.query_originator_conversation_id
        try:
            answer = self._gateway.query_status(
                originator_conversation_id=qid,
                target_originator_conversation_id=payout.originator_conversation_id,
                remark=QUERY_REMARK,
            )
        except B2CError as exc:
            self._lookups.note_status_query_response(
                qid, outcome=QueryResponse.NOT_SENT, code=None, description=str(exc)
            )
            metrics.STATUS_QUERIES.labels(outcome=QueryResponse.NOT_SENT.value).inc()
            raise
        if answer.held:
            outcome = QueryResponse.HELD_BACK
        elif answer.reason in NOT_SENT_REASONS:
            outcome = QueryResponse.NOT_SENT
        else:
            outcome = QueryResponse(answer.outcome.value)
        response = answer.response
        self._lookups.note_status_query_response(
            qid,
            outcome=outcome,
            code=response.code if response else None,
            description=response.description if response else answer.detail,
        )
        metrics.STATUS_QUERIES.labels(outcome=outcome.value).inc()
        log.info(
            "payout %s (%s, %s): status query %s sent, attempt %d: %s",
            payout.payout_id,
            payout.status,
            task.trigger.value,
            qid,
            task.attempts + 1,
            outcome,
        )
        return "held" if answer.held else "queried"

    def _resend(self, task: LookupTask) -> str:
        payout = self._lookups.claim_resend(
            task.payout.payout_id, expected_attempts=task.payout.send_attempts, retry_after=self._settings.interval
        )
        if payout is None:
            return "skipped"
        metrics.LOOKUPS.labels(trigger=task.trigger.value, action=LookupAction.RESEND.value).inc()
        command = payout.command
        log.warning(
            "payout %s: M-PESA has no record of it; resending KES %s to %s with the SAME OriginatorConversationID"
            " %s (attempt %d)",
            payout.payout_id,
            command.amount,
            mask_msisdn(command.msisdn),
            payout.originator_conversation_id,
            payout.send_attempts,
        )
        try:
            answer = pay_payout(self._gateway, payout)
        except B2CError as exc:
            self._lookups.resend_not_taken(
                payout.payout_id, attempt=payout.send_attempts, code=None, description=f"resend not sent: {exc}"
            )
            raise
        response = answer.response
        if answer.outcome is ResponseOutcome.ACCEPTED and response is not None:
            self._payouts.mark_accepted(
                payout.payout_id,
                attempt=payout.send_attempts,
                conversation_id=response.conversation_id,
                code=response.code,
                description=response.description,
            )
        else:
            # Not processed, refused or no answer: the first send's fate is as unknown as before. Only when
            # M-PESA certainly did not process the resend (busy, throttled, held back) is it still due.
            self._lookups.resend_not_taken(
                payout.payout_id,
                attempt=payout.send_attempts,
                code=response.code if response else None,
                description=response.description if response else answer.detail,
                not_processed=answer.outcome is ResponseOutcome.RETRY_LATER,
                held=answer.held,
            )
        try:
            self._relay.flush(payout.payout_id)
        except B2CError as exc:
            log.warning("payout %s: events stay in the outbox for now: %s", payout.payout_id, exc)
        return "held" if answer.held else "resent"
