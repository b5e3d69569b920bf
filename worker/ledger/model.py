"""What the ledger answers: the outcome types, outbox rows, its errors and the ``Ledger`` interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from worker.ledger.lookups import LookupState, LookupTask, QueueTimeoutApplied, StatusQuery
from worker.payouts.models import Payout, PayoutCommand, PayoutStatus
from worker.protocol.result import QueueTimeout, Result


class RecordOutcome(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Recorded:
    """``payout`` is the stored payout: the new one, or for DUPLICATE/CONFLICT the original, untouched."""

    outcome: RecordOutcome
    payout: Payout


class ApplyOutcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE_FINAL = "duplicate_final"
    CONFLICT = "conflict"
    UNMATCHED = "unmatched"
    NOT_FINAL = "not_final"
    QUARANTINED = "quarantined"
    # The result answered one of our status queries (worker.ledger.lookup_store): applied to the looked-up
    # payout as far as it decides anything; never counted as a payment result itself.
    STATUS_ANSWER = "status_answer"
    # B2C_CONFIRM_SUCCESS: a success kept unapplied until a status query confirms it.
    HELD = "held"


@dataclass(frozen=True)
class ResultApplied:
    """What a result callback did; ``payout`` is the matched payout after the change (None if UNMATCHED).

    ``quarantine_reason``: set when the result was also quarantined (QUARANTINED, or UNMATCHED with
    ``unknown_payout``), one of :data:`worker.payouts.matching.REASONS`.
    """

    outcome: ApplyOutcome
    payout: Payout | None
    quarantine_reason: str | None = None


class QuarantineState(StrEnum):
    HELD = "held"
    DROPPED = "dropped"
    RELEASED = "released"


@dataclass(frozen=True)
class QuarantinedResult:
    """A result kept aside unapplied (it did not match its payout, or matched none), with its raw body."""

    id: int
    received_at: datetime
    raw: bytes
    reason: str
    detail: str
    payout_id: str | None
    originator_conversation_id: str | None
    conversation_id: str | None
    result_code: str | None
    state: QuarantineState
    resolved_at: datetime | None
    resolution: str | None


@dataclass(frozen=True)
class OutboxEvent:
    """One stored event: ``body`` is the JSON event; consumers de-duplicate on ``event_id`` (also inside)."""

    id: int
    routing_key: str
    body: bytes
    event_id: str = ""
    payout_id: str | None = None


class Ledger(Protocol):
    """The durable record of every payout and the events derived from its transitions.

    Every method is one transaction. Every status change is a compare-and-set on the current status and
    stores its event in the outbox in the same transaction, so an event exists if and only if the change
    does. Safe to call from many threads; on PostgreSQL, from many processes.

    The ``mark_*`` methods raise UnknownPayout for an unknown id and TransitionRefused when the status
    machine forbids the change; on a payout already in the target status (or final; ``mark_not_sent``:
    not ``sending``) they return it unchanged and store no event, so repeating them is safe.
    """

    def record(
        self, command: PayoutCommand, originator_conversation_id: str, *, announce_duplicate: bool = True
    ) -> Recorded:
        """NEW (stored ``received``, no event), DUPLICATE (event with the current status, duplicate=true) or
        CONFLICT (``payout.rejected`` idempotency_conflict describing ``command``; the original untouched).
        Exactly one of any number of concurrent calls for one payout_id is NEW. LedgerError if the
        OriginatorConversationID belongs to another payout. ``announce_duplicate=False``: no DUPLICATE
        event (the caller answers with :meth:`note_duplicate` if the repeat is not its to finish)."""
        ...

    def note_duplicate(self, payout_id: str) -> Payout:
        """Store a duplicate=true event with the payout's current status (UnknownPayout if none)."""
        ...

    def record_invalid(self, raw: bytes, *, payout_id: str | None, reason: str, message: str) -> None: ...

    def begin_send(self, payout_id: str) -> Payout:
        """received/sending/unknown -> sending with send_attempts + 1, committed before the caller sends.
        From accepted or a final status the payout is returned unchanged: send only if the returned status
        is ``sending``. UnknownPayout if there is no such payout."""
        ...

    def claim_send(self, payout_id: str, *, expected_attempts: int) -> Payout | None:
        """begin_send for one of several racing deliveries: None unless send_attempts still equals
        ``expected_attempts`` and the payout is sendable; only a caller that gets a payout may send."""
        ...

    def mark_accepted(
        self, payout_id: str, *, conversation_id: str | None, code: str | None, description: str | None
    ) -> Payout: ...

    def mark_rejected(
        self, payout_id: str, *, reason: str, code: str | None, description: str | None, message: str
    ) -> Payout: ...

    def mark_unknown(
        self,
        payout_id: str,
        *,
        reason: str,
        code: str | None,
        description: str | None,
        message: str | None = None,
    ) -> Payout: ...

    def mark_not_sent(self, payout_id: str, *, code: str | None, description: str | None) -> Payout: ...

    def record_result(self, raw: bytes, result: Result, *, confirm_success: bool = False) -> ResultApplied:
        """Store the raw body always (also when applying fails), then apply it: see SqlLedger.record_result.
        A result answering one of our status queries is applied to the looked-up payout (STATUS_ANSWER);
        ``confirm_success`` holds a success unapplied until a status query confirms it (HELD)."""
        ...

    # Looking payouts up (worker.ledger.lookup_store.LookupStore has the details).

    def due_for_lookup(
        self, *, unknown_after: float, result_timeout: float, stuck_after: float, lease_seconds: float, limit: int = 50
    ) -> list[LookupTask]: ...

    def record_status_query(self, payout_id: str, *, trigger: str, retry_after: float) -> StatusQuery | None: ...

    def note_status_query_response(
        self, query_originator_conversation_id: str, *, outcome: str, code: str | None, description: str | None
    ) -> None: ...

    def claim_resend(self, payout_id: str, *, expected_attempts: int, retry_after: float) -> Payout | None: ...

    def resend_not_taken(
        self,
        payout_id: str,
        *,
        code: str | None,
        description: str | None,
        not_processed: bool = False,
        held: bool = False,
    ) -> Payout: ...

    def flag_for_review(self, payout_id: str, *, reason: str) -> bool: ...

    def rearm_lookup(self, payout_id: str) -> LookupState: ...

    def count_flagged(self) -> int: ...

    def list_flagged(self, limit: int = 100) -> list[LookupState]: ...

    def lookup_state(self, payout_id: str) -> LookupState | None: ...

    def find_status_query(self, query_originator_conversation_id: str) -> StatusQuery | None: ...

    def status_queries(self, payout_id: str) -> list[StatusQuery]: ...

    def record_queue_timeout(self, raw: bytes, notice: QueueTimeout) -> QueueTimeoutApplied: ...

    def list_quarantined(self, *, include_resolved: bool = False, limit: int = 100) -> list[QuarantinedResult]:
        """Quarantined results, oldest first; only those still ``held`` unless ``include_resolved``."""
        ...

    def get_quarantined(self, quarantine_id: int) -> QuarantinedResult | None: ...

    def drop_quarantined(self, quarantine_id: int, *, note: str) -> QuarantinedResult:
        """Mark a held entry ``dropped`` (reviewed, not applied; its body is kept). LedgerError if not held."""
        ...

    def release_quarantined(self, quarantine_id: int, *, note: str) -> ResultApplied:
        """Apply a held result to its payout without the match check, after an operator confirmed it with
        M-PESA; the entry becomes ``released``. LedgerError if not held or it matched no payout."""
        ...

    def outbox_pending(self, limit: int = 100, payout_id: str | None = None) -> list[OutboxEvent]: ...

    def claim_outbox(
        self,
        limit: int = 100,
        older_than_seconds: float = 0.0,
        lease_seconds: float = 60.0,
        payout_id: str | None = None,
    ) -> list[OutboxEvent]:
        """For several relays: lease unpublished events so two relays rarely publish the same row."""
        ...

    def release_outbox(self, ids: Sequence[int]) -> None: ...

    def mark_published(self, ids: Sequence[int]) -> None: ...

    def outbox_backlog(self) -> int: ...

    def get(self, payout_id: str) -> Payout | None: ...

    def find(
        self, originator_conversation_id: str | None = None, conversation_id: str | None = None
    ) -> Payout | None: ...

    def count_by_status(self) -> dict[str, int]: ...

    def list_payouts(self, status: PayoutStatus | None = None, limit: int = 100) -> list[Payout]: ...

    def close(self) -> None: ...
