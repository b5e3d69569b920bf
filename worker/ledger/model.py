"""What the ledger answers: the outcome types, result dispositions, quarantine entries and outbox rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from worker.payouts.models import Payout


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
    # The result answered one of our status queries (worker.ledger.result_store): applied to the looked-up
    # payout as far as it decides anything; never counted as a payment result itself.
    STATUS_ANSWER = "status_answer"
    # B2C_CONFIRM_SUCCESS: a success kept unapplied until a status query confirms it.
    HELD = "held"


class Disposition(StrEnum):
    """What became of a stored result, as written to ``results.disposition`` (the breaker reads it too).

    The first six are the :class:`ApplyOutcome` of the same name; a status answer is stored as
    ``status_query``; ``error``: applying failed, the body is kept; ``unparsable``: the body is not a
    result we can read (kept, and quarantined, so that M-PESA can be answered "success").
    """

    APPLIED = "applied"
    DUPLICATE_FINAL = "duplicate_final"
    CONFLICT = "conflict"
    UNMATCHED = "unmatched"
    NOT_FINAL = "not_final"
    QUARANTINED = "quarantined"
    HELD = "held"
    STATUS_QUERY = "status_query"
    ERROR = "error"
    UNPARSABLE = "unparsable"


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
