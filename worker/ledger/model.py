"""What the ledger answers: the outcome types, outbox rows, its errors and the ``Ledger`` interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from worker.errors import LedgerError
from worker.payouts import Payout, PayoutCommand, PayoutStatus
from worker.protocol.result import Result


class UnknownPayout(LedgerError):
    """A transition was asked for a payout id the ledger has never recorded."""

    def __init__(self, payout_id: str) -> None:
        super().__init__(f"no payout {payout_id!r} in the ledger")
        self.payout_id = payout_id


class TransitionRefused(LedgerError):
    """The payout's current status does not allow the asked-for change (the status machine says no)."""

    def __init__(self, payout_id: str, current: PayoutStatus, target: PayoutStatus) -> None:
        super().__init__(f"payout {payout_id!r} cannot go from {current} to {target}")
        self.payout_id = payout_id
        self.current = current
        self.target = target


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


@dataclass(frozen=True)
class ResultApplied:
    """What a result callback did; ``payout`` is the matched payout after the change (None if UNMATCHED)."""

    outcome: ApplyOutcome
    payout: Payout | None


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

    def record_result(self, raw: bytes, result: Result) -> ResultApplied:
        """Store the raw body always (also when applying fails), then apply it: see SqlLedger.record_result."""
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

    def mark_published(self, ids: Sequence[int]) -> None: ...

    def outbox_backlog(self) -> int: ...

    def get(self, payout_id: str) -> Payout | None: ...

    def find(
        self, originator_conversation_id: str | None = None, conversation_id: str | None = None
    ) -> Payout | None: ...

    def count_by_status(self) -> dict[str, int]: ...

    def list_payouts(self, status: PayoutStatus | None = None, limit: int = 100) -> list[Payout]: ...

    def close(self) -> None: ...
