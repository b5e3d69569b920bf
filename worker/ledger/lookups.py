"""What the ledger answers about looking payouts up: lookup tasks, status queries, queue timeouts.

A payout whose fate is in doubt (``unknown``; ``accepted`` without a result for too long; a cached request
M-PESA let expire; a duplicate or not-processed result; a success held for confirmation) is *looked up*: a
``TransactionStatusQuery`` under a new id of its own, or, once M-PESA says it has no such payment, a resend
under the payout's **same** OriginatorConversationID. The ledger keeps the bookkeeping (attempts, when the
next lookup is due, whether a resend is due, the review flag) and every query it was asked to send, before
it is sent. Types only; the SQL is in :mod:`worker.ledger.lookup_store` and :mod:`worker.ledger.result_store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from worker.payouts.models import MAX_ORIGINATOR_CONVERSATION_ID_LENGTH, Payout


class LookupTrigger(StrEnum):
    """Why a payout is looked up; bounded, the ``trigger`` label of ``mpesa_b2c_lookups_total``."""

    UNKNOWN = "unknown"
    MISSING_RESULT = "missing_result"
    QUEUE_TIMEOUT = "queue_timeout"
    DUPLICATE = "duplicate"
    # A not-processed result (26) for an accepted payout: M-PESA will send no other result for it.
    NOT_PROCESSED = "not_processed"
    CONFIRM_SUCCESS = "confirm_success"
    MANUAL = "manual"


class LookupAction(StrEnum):
    QUERY = "query"
    RESEND = "resend"


class QueryResponse(StrEnum):
    """The gateway's synchronous answer to a status query, as kept on its row."""

    ACCEPTED = "accepted"
    RETRY_LATER = "retry_later"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    NOT_SENT = "not_sent"
    # Flow control kept it back: nothing was sent, so the attempt is given back to the payout.
    HELD_BACK = "held_back"


class FlagReason(StrEnum):
    """Why automatic resolution gave up and a human must look (the payout's status is never changed)."""

    MAX_ATTEMPTS = "max_attempts"
    MAX_SECONDS = "max_seconds"
    ANSWER_MISMATCH = "answer_mismatch"
    CONFIRMATION_CONTRADICTED = "confirmation_contradicted"
    # A success result on a payout already failed or rejected: the payer was told "not paid", M-PESA says paid.
    # The payout is final, so it stays listed (list_flagged) until a human has settled it (`mpesa-b2c lookups clear`).
    SUCCESS_AFTER_FAILURE = "success_after_failure"


@dataclass(frozen=True)
class LookupTask:
    """A payout due for a lookup, claimed by one lookup runner for ``lease_seconds``.

    ``attempts`` counts the lookups (queries and resends) already made since the payout was (re)armed,
    ``started_at`` is when the first of them was made (None before any), and ``elapsed`` the seconds since
    then on the database's clock, which every replica shares (a host whose clock is off flags nothing early).
    """

    payout: Payout
    attempts: int
    started_at: datetime | None
    trigger: LookupTrigger
    action: LookupAction
    elapsed: float | None = None


@dataclass(frozen=True)
class StatusQuery:
    """One TransactionStatusQuery as recorded before it was sent, with its answers so far."""

    query_originator_conversation_id: str
    payout_id: str
    attempt: int
    trigger: str
    sent_at: datetime
    response_outcome: str | None = None
    response_code: str | None = None
    response_desc: str | None = None
    answered_at: datetime | None = None
    answer_code: str | None = None
    answer_desc: str | None = None
    transaction_status: str | None = None
    verdict: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class LookupState:
    """The lookup bookkeeping of one payout; ``flagged_at`` set means flagged for review."""

    payout_id: str
    status: str
    lookup_attempts: int
    lookup_started_at: datetime | None
    next_lookup_at: datetime | None
    lookup_trigger: str | None
    resend_due: bool
    flagged_at: datetime | None
    flag_reason: str | None

    @property
    def flagged_for_review(self) -> bool:
        return self.flagged_at is not None


@dataclass(frozen=True)
class QueueTimeoutApplied:
    """What a stored ``notifyQueueTimeout`` did; ``payout`` is its payout after the change (None if none)."""

    payout: Payout | None
    changed: bool
    note: str


def status_query_id(originator_conversation_id: str, number: int) -> str:
    """The OriginatorConversationID of a payout's ``number``-th status query: ``<payout id>_Q<number>``.

    Deterministic and never equal to any payout's id (those end in 32 hex digits); cut from the left part
    so the whole stays within M-PESA's 128 characters.
    """
    if number < 1:
        raise ValueError("status queries are numbered from 1")
    suffix = f"_Q{number}"
    return originator_conversation_id[: MAX_ORIGINATOR_CONVERSATION_ID_LENGTH - len(suffix)] + suffix
