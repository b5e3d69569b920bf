"""Flow-control state in the ledger's database, shared by every worker replica and the operator's CLI.

Ledger migration 3 adds two tables: ``rate_limits`` (one GCRA row per shortcode) and ``gateway_state`` (the
circuit breaker of one shortcode); migration 5 adds ``credential_proofs`` (the credential a result proved, per
credential fingerprint) and ``salts`` (the random salt of those fingerprints). Every change is one short
write transaction that locks the row (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` locks the
whole file), so replicas sharing PostgreSQL, or processes sharing one SQLite file, see one consistent state.
Times in these tables are seconds since
the epoch on the database's clock (PostgreSQL's ``clock_timestamp()``; SQLite lives on one host, so the
local clock): replicas on hosts whose clocks disagree still space their sends by one clock.

The breaker also reads, never writes, two ledger tables: ``results`` (every result callback the receiver
stored) and ``payouts`` (when a payout was accepted): that is where the receiver process leaves what M-PESA
said, so no message between the receiver and the workers is needed.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from worker.errors import LedgerError
from worker.ledger.engine import Row, Session
from worker.ledger.model import Disposition
from worker.ledger.transaction import Transactions


class BreakerState(StrEnum):
    """``gateway_state.state``, stored: the values must not change."""

    OPEN = "open"
    CLOSED = "closed"


class BreakerReason(StrEnum):
    """Why the breaker is open (``gateway_state.reason``, the ``reason`` label of the circuit metrics)."""

    UNREACHABLE = "unreachable"
    FUNDS = "funds"
    CREDENTIAL = "credential"
    CONFIG = "config"


# Which condition wins when several hold at once: the one that needs the most from the operator.
_RANK = {BreakerReason.UNREACHABLE: 1, BreakerReason.FUNDS: 2, BreakerReason.CONFIG: 3, BreakerReason.CREDENTIAL: 4}


def already_open_for(row: BreakerRow, reason: BreakerReason) -> bool:
    """True when opening for ``reason`` would change nothing: open for it or for a graver one."""
    return row.open and _RANK[reason] <= (0 if row.reason is None else _RANK[row.reason])


# Results that matched nothing, or not what was sent, prove nothing about the account (a forged callback):
# those dispositions are left out.
_UNTRUSTED = ", ".join(
    f"'{d}'" for d in (Disposition.UNMATCHED, Disposition.QUARANTINED, Disposition.ERROR, Disposition.UNPARSABLE)
)
_RESULTS_AFTER = (
    "SELECT r.id AS id, r.originator_conversation_id AS ocid, r.result_code AS code,"  # noqa: S608 - enum values
    " r.received_at AS received_at, p.accepted_at AS accepted_at"
    " FROM results r LEFT JOIN payouts p ON p.originator_conversation_id = r.originator_conversation_id"
    f" WHERE r.id > ? AND r.disposition NOT IN ({_UNTRUSTED}) ORDER BY r.id LIMIT ?"
)
_LATEST_RESULT = (
    "SELECT id, originator_conversation_id AS ocid, result_code AS code, received_at FROM results"  # noqa: S608
    f" WHERE originator_conversation_id = ? AND disposition NOT IN ({_UNTRUSTED})"
    " ORDER BY id DESC LIMIT 1"
)
_DETAIL_LENGTH = 500


@dataclass(frozen=True)
class BreakerRow:
    """The breaker of one shortcode as stored; ``now`` is the database clock when it was read."""

    key: str
    open: bool
    reason: BreakerReason | None
    code: str | None
    detail: str | None
    opened_at: float | None
    opened_by: str | None
    closed_at: float
    closed_by: str | None
    next_probe_at: float | None
    probe_id: str | None
    probe_until: float | None
    failed_probes: int
    credential_epoch: int
    canary_id: str | None
    canary_owner: str | None
    canary_until: float | None
    now: float
    # The proof of the credential fingerprint the row was read for (``breaker(key, fingerprint=...)``).
    proof_epoch: int | None = None
    proven_at: float | None = None
    proven_by: str | None = None

    @property
    def credential_proven(self) -> bool:
        """A result proved this credential since the last credential condition (any replica's)."""
        return self.proof_epoch is not None and self.proof_epoch == self.credential_epoch

    @property
    def probe_running(self) -> bool:
        return self.probe_id is not None and (self.probe_until or 0.0) > self.now

    @property
    def canary_running(self) -> bool:
        return self.canary_id is not None and (self.canary_until or 0.0) > self.now


@dataclass(frozen=True)
class StoredResult:
    """One stored result callback; ``sent_at`` is when its payout was accepted (else when it arrived)."""

    id: int
    originator_conversation_id: str | None
    code: str | None
    sent_at: float


@dataclass(frozen=True)
class CredentialProof:
    """A credential proven by a result: when, and by which process (never the fingerprint itself)."""

    proven_at: float
    proven_by: str


@dataclass(frozen=True)
class Reservation:
    """A GCRA slot: send after ``wait`` seconds (None: no slot within the caller's limit, nothing reserved)."""

    wait: float | None
    rate: float


class FlowStore:
    """The two flow-control tables, on the ledger's own pool (``ledger.flow``; the ledger closes it)."""

    def __init__(self, tx: Transactions) -> None:
        self._db = tx.db
        self._postgres = tx.engine.name == "postgresql"

    def clock(self) -> float:
        """Now, in seconds since the epoch, on the clock every replica shares."""
        if not self._postgres:
            return time.time()
        with self._db.transaction(write=False) as session:
            return self._now(session)

    def _now(self, session: Session[Any]) -> float:
        if not self._postgres:
            return time.time()
        row = session.one("SELECT EXTRACT(EPOCH FROM clock_timestamp()) AS now")
        assert row is not None
        return float(row["now"])

    def _stamp(self, session: Session[Any]) -> object:
        return session.time(datetime.now(UTC))

    # ----------------------------------------------------------------------------------- rate limit

    def _rate_row(self, session: Session[Any], key: str, ceiling: float, now: float) -> Row:
        session.run(
            "INSERT INTO rate_limits (key, tat, rate, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            key,
            now,
            ceiling,
            self._stamp(session),
        )
        row = session.one("SELECT * FROM rate_limits WHERE key = ?" + session.engine.for_update, key)  # noqa: S608
        assert row is not None
        return row

    def reserve(self, key: str, *, ceiling: float, burst: int, max_wait: float) -> Reservation:
        """Reserve the next GCRA slot of ``key`` unless it is more than ``max_wait`` seconds away.

        GCRA keeps one number, the theoretical arrival time (TAT) of the next send. With the effective rate
        r (interval T = 1/r) and burst b, a send at time t conforms when t >= TAT - (b - 1) * T; reserving
        moves TAT to max(TAT, t) + T. A caller told to wait sleeps until its slot: the slot is its own, so
        waiting threads are served in order and the database is written once per send.
        """
        with self._db.transaction() as session:
            now = self._now(session)
            row = self._rate_row(session, key, ceiling, now)
            rate = min(float(row["rate"]), ceiling)
            interval = 1.0 / rate
            tat = max(float(row["tat"]), now)
            wait = max(0.0, tat - (burst - 1) * interval - now)
            if wait > max_wait:
                return Reservation(None, rate)
            session.run(
                "UPDATE rate_limits SET tat = ?, updated_at = ? WHERE key = ?",
                tat + interval,
                self._stamp(session),
                key,
            )
            return Reservation(wait, rate)

    def slow_down(self, key: str, *, ceiling: float, factor: float, floor: float, cooldown: float) -> float:
        """Multiply the effective rate by ``factor`` (not below ``floor``), at most once per ``cooldown``
        seconds, and keep the next send one new interval away; returns the effective rate."""
        with self._db.transaction() as session:
            now = self._now(session)
            row = self._rate_row(session, key, ceiling, now)
            rate = min(float(row["rate"]), ceiling)
            last = row["throttled_at"]
            if last is not None and now - float(last) < cooldown:
                return rate
            rate = max(floor, rate * factor)
            session.run(
                "UPDATE rate_limits SET rate = ?, throttled_at = ?, tat = ?, updated_at = ? WHERE key = ?",
                rate,
                now,
                max(float(row["tat"]), now + 1.0 / rate),
                self._stamp(session),
                key,
            )
            return rate

    def speed_up(self, key: str, *, ceiling: float, step: float) -> float:
        """Add ``step`` to the effective rate, up to ``ceiling``; returns the effective rate."""
        with self._db.transaction() as session:
            now = self._now(session)
            row = self._rate_row(session, key, ceiling, now)
            current = min(float(row["rate"]), ceiling)
            rate = min(ceiling, current + step)
            if rate != float(row["rate"]):
                session.run(
                    "UPDATE rate_limits SET rate = ?, updated_at = ? WHERE key = ?", rate, self._stamp(session), key
                )
            return rate

    def rate(self, key: str, *, ceiling: float) -> float:
        with self._db.transaction(write=False) as session:
            row = session.one("SELECT rate FROM rate_limits WHERE key = ?", key)
        return ceiling if row is None else min(float(row["rate"]), ceiling)

    # -------------------------------------------------------------------------------------- breaker

    def _breaker_row(self, session: Session[Any], key: str, *, lock: bool) -> Row:
        lock_clause = session.engine.for_update if lock else ""
        row = session.one("SELECT * FROM gateway_state WHERE key = ?" + lock_clause, key)  # noqa: S608
        if row is None:
            session.run(
                "INSERT INTO gateway_state (key, state, closed_at, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                key,
                str(BreakerState.CLOSED),
                self._now(session),
                self._stamp(session),
            )
            row = session.one("SELECT * FROM gateway_state WHERE key = ?" + session.engine.for_update, key)  # noqa: S608
        assert row is not None
        return row

    def _load(self, row: Row, now: float) -> BreakerRow:
        proof_epoch = row.get("proof_epoch")

        def number(name: str) -> float | None:
            value = row[name]
            return None if value is None else float(value)

        return BreakerRow(
            key=str(row["key"]),
            open=row["state"] == BreakerState.OPEN,
            reason=_reason(row),
            code=row["code"],
            detail=row["detail"],
            opened_at=number("opened_at"),
            opened_by=row["opened_by"],
            closed_at=float(row["closed_at"]),
            closed_by=row["closed_by"],
            next_probe_at=number("next_probe_at"),
            probe_id=row["probe_id"],
            probe_until=number("probe_until"),
            failed_probes=int(row["failed_probes"]),
            credential_epoch=int(row["credential_epoch"]),
            canary_id=row["canary_id"],
            canary_owner=row["canary_owner"],
            canary_until=number("canary_until"),
            now=now,
            proof_epoch=None if proof_epoch is None else int(proof_epoch),
            proven_at=number("proof_at") if "proof_at" in row else None,
            proven_by=row.get("proof_by"),
        )

    def _update(self, session: Session[Any], key: str, **columns: Any) -> None:
        columns["updated_at"] = self._stamp(session)
        assignments = ", ".join(f"{name} = ?" for name in columns)
        session.run(f"UPDATE gateway_state SET {assignments} WHERE key = ?", *columns.values(), key)  # noqa: S608

    def breaker(self, key: str, *, fingerprint: str | None = None) -> BreakerRow:
        """The breaker of ``key`` (created closed on first use); a read, except that first time.

        With ``fingerprint``, the row carries that credential's proof, read in the same statement: a proof is
        written after the opening its result caused, so whoever sees the proof sees that opening too.
        """
        with self._db.transaction(write=False) as session:
            now = self._now(session)
            row = session.one(
                "SELECT g.*, c.epoch AS proof_epoch, c.proven_at AS proof_at, c.proven_by AS proof_by"
                " FROM gateway_state g LEFT JOIN credential_proofs c ON c.key = g.key AND c.fingerprint = ?"
                " WHERE g.key = ?",
                fingerprint or "",
                key,
            )
            if row is not None:
                return self._load(row, now)
        with self._db.transaction() as session:
            now = self._now(session)
            return self._load(self._breaker_row(session, key, lock=False), now)

    def open_breaker(
        self,
        key: str,
        *,
        reason: BreakerReason,
        code: str | None,
        detail: str,
        by: str,
        next_probe_at: float | None,
    ) -> BreakerRow | None:
        """Open the breaker, or raise its reason to a graver one; None when nothing changed.

        A credential condition starts a new credential epoch: every process must prove its credential again
        (one canary send) before it sends freely.
        """
        with self._db.transaction() as session:
            now = self._now(session)
            row = self._load(self._breaker_row(session, key, lock=True), now)
            if already_open_for(row, reason):
                return None
            columns: dict[str, Any] = {
                "state": str(BreakerState.OPEN),
                "reason": str(reason),
                "code": code,
                "detail": detail[:_DETAIL_LENGTH],
                "next_probe_at": next_probe_at,
                "probe_id": None,
                "probe_until": None,
            }
            if not row.open:
                columns.update(opened_at=now, opened_by=by, failed_probes=0)
            if reason == BreakerReason.CREDENTIAL:
                columns.update(credential_epoch=row.credential_epoch + 1, canary_id=None, canary_until=None)
                session.run("DELETE FROM credential_proofs WHERE key = ?", key)
            self._update(session, key, **columns)
            return self._load(self._breaker_row(session, key, lock=False), now)

    def close_breaker(self, key: str, *, by: str, reason: BreakerReason | None = None) -> BreakerRow | None:
        """Close the breaker (only if open for ``reason``, when given); None when nothing changed."""
        with self._db.transaction() as session:
            now = self._now(session)
            row = self._load(self._breaker_row(session, key, lock=True), now)
            if not row.open or (reason is not None and row.reason != reason):
                return None
            self._update(
                session,
                key,
                state=str(BreakerState.CLOSED),
                closed_at=now,
                closed_by=by,
                next_probe_at=None,
                probe_id=None,
                probe_until=None,
                failed_probes=0,
            )
            return self._load(self._breaker_row(session, key, lock=False), now)

    def schedule_probe(self, key: str, *, after: float) -> None:
        with self._db.transaction() as session:
            now = self._now(session)
            self._breaker_row(session, key, lock=True)
            self._update(session, key, next_probe_at=now + after)

    def take_probe(self, key: str, probe_id: str, *, lease: float) -> bool:
        """Make ``probe_id`` the one send allowed while the breaker is open for funds, if a probe is due."""
        with self._db.transaction() as session:
            now = self._now(session)
            row = self._load(self._breaker_row(session, key, lock=True), now)
            if not row.open or row.reason != BreakerReason.FUNDS:
                return False
            if row.probe_id == probe_id and row.probe_running:
                return True
            if row.probe_running or (row.next_probe_at is not None and row.next_probe_at > now):
                return False
            self._update(session, key, probe_id=probe_id, probe_until=now + lease)
            return True

    def end_probe(self, key: str, probe_id: str, *, failed: bool, next_in: float) -> None:
        """The probe ``probe_id`` is over without closing the breaker; the next one is due in ``next_in`` s."""
        with self._db.transaction() as session:
            now = self._now(session)
            row = self._load(self._breaker_row(session, key, lock=True), now)
            if row.probe_id != probe_id:
                return
            self._update(
                session,
                key,
                probe_id=None,
                probe_until=None,
                next_probe_at=now + next_in,
                failed_probes=row.failed_probes + (1 if failed else 0),
            )

    def take_canary(self, key: str, canary_id: str, *, owner: str, lease: float) -> bool:
        """Make ``canary_id`` the one send of an unproven credential in flight, fleet-wide (never while open)."""
        with self._db.transaction() as session:
            now = self._now(session)
            row = self._load(self._breaker_row(session, key, lock=True), now)
            if row.open:
                return False
            if row.canary_id == canary_id and row.canary_running:
                return row.canary_owner == owner
            if row.canary_running:
                return False
            self._update(session, key, canary_id=canary_id, canary_owner=owner, canary_until=now + lease)
            return True

    def prove_credential(self, key: str, fingerprint: str, *, epoch: int, by: str) -> bool:
        """Record that a result proved the credential ``fingerprint`` in credential epoch ``epoch``.

        Refused (False) when a credential condition started a newer epoch meanwhile: that proof is stale.
        """
        with self._db.transaction() as session:
            now = self._now(session)
            row = self._load(self._breaker_row(session, key, lock=True), now)
            if row.credential_epoch != epoch:
                return False
            session.run(
                "INSERT INTO credential_proofs (key, fingerprint, epoch, proven_at, proven_by, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key, fingerprint) DO UPDATE SET epoch = excluded.epoch,"
                " proven_at = excluded.proven_at, proven_by = excluded.proven_by, updated_at = excluded.updated_at",
                key,
                fingerprint,
                epoch,
                now,
                by,
                self._stamp(session),
            )
            return True

    def credential_proofs(self, key: str) -> list[CredentialProof]:
        """The credentials proven since the last credential condition, oldest first (for operators)."""
        with self._db.transaction(write=False) as session:
            rows = session.all(
                "SELECT c.proven_at AS proven_at, c.proven_by AS proven_by FROM credential_proofs c"
                " JOIN gateway_state g ON g.key = c.key AND g.credential_epoch = c.epoch"
                " WHERE c.key = ? ORDER BY c.proven_at",
                key,
            )
        return [CredentialProof(float(row["proven_at"]), str(row["proven_by"])) for row in rows]

    def salt(self, name: str) -> bytes:
        """The deployment's random salt called ``name``, made by whichever process asks first."""
        with self._db.transaction() as session:
            session.run(
                "INSERT INTO salts (name, salt, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                name,
                secrets.token_hex(32),
                self._stamp(session),
            )
            row = session.one("SELECT salt FROM salts WHERE name = ?", name)
        assert row is not None
        return bytes.fromhex(str(row["salt"]))

    def release_canary(self, key: str, canary_id: str) -> None:
        with self._db.transaction() as session:
            row = self._breaker_row(session, key, lock=True)
            if row["canary_id"] == canary_id:
                self._update(session, key, canary_id=None, canary_owner=None, canary_until=None)

    # ------------------------------------------------------------------- what the receiver stored

    def results_after(self, after_id: int, limit: int = 500) -> list[StoredResult]:
        """Trusted result callbacks with an id above ``after_id``, oldest first."""
        with self._db.transaction(write=False) as session:
            rows = session.all(_RESULTS_AFTER, after_id, limit)
            engine = session.engine
            return [
                StoredResult(
                    id=int(row["id"]),
                    originator_conversation_id=row["ocid"],
                    code=row["code"],
                    sent_at=engine.from_db_time(row["accepted_at"] or row["received_at"]).timestamp(),
                )
                for row in rows
            ]

    def last_result_id(self) -> int:
        with self._db.transaction(write=False) as session:
            row = session.one("SELECT MAX(id) AS id FROM results")
        return 0 if row is None or row["id"] is None else int(row["id"])

    def latest_result(self, originator_conversation_id: str) -> StoredResult | None:
        """The newest trusted result for this OriginatorConversationID (a payout's or a status query's)."""
        with self._db.transaction(write=False) as session:
            row = session.one(_LATEST_RESULT, originator_conversation_id)
            if row is None:
                return None
            received = session.engine.from_db_time(row["received_at"]).timestamp()
        return StoredResult(int(row["id"]), row["ocid"], row["code"], received)

    def payout_status(self, originator_conversation_id: str) -> str | None:
        with self._db.transaction(write=False) as session:
            row = session.one(
                "SELECT status FROM payouts WHERE originator_conversation_id = ?", originator_conversation_id
            )
        return None if row is None else str(row["status"])


def _reason(row: Row) -> BreakerReason | None:
    """An unknown reason (written by another version) is an error, so callers hold instead of guessing."""
    value = row["reason"]
    if value is None:
        return None
    try:
        return BreakerReason(value)
    except ValueError:
        raise LedgerError(f"gateway_state for {row['key']!r} has an unknown breaker reason {value!r}") from None
