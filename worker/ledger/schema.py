"""The ledger's tables, created and migrated automatically on open.

Migrations are numbered and only ever appended. They run in one write transaction that first takes the
engine's schema lock (an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so any number of
processes may open the same ledger at once: the first creates the tables, the rest find them there.

Amounts are NUMERIC (PostgreSQL) or TEXT (SQLite), never floating point; timestamps are TIMESTAMPTZ or
fixed-width ISO 8601 UTC text, which sorts and compares correctly as text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.ledger.engine import Session

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """
            CREATE TABLE IF NOT EXISTS payouts (
                payout_id TEXT PRIMARY KEY,
                originator_conversation_id TEXT NOT NULL UNIQUE,
                fingerprint TEXT NOT NULL,
                command TEXT NOT NULL,
                amount {numeric} NOT NULL,
                status TEXT NOT NULL,
                conversation_id TEXT,
                send_attempts INTEGER NOT NULL DEFAULT 0,
                response_code TEXT,
                response_desc TEXT,
                result_code TEXT,
                result_desc TEXT,
                receipt TEXT,
                reason TEXT,
                message TEXT,
                final_details TEXT,
                created_at {ts} NOT NULL,
                updated_at {ts} NOT NULL,
                accepted_at {ts},
                finalised_at {ts}
            )
            """,
            "CREATE INDEX IF NOT EXISTS payouts_conversation_id ON payouts (conversation_id)",
            "CREATE INDEX IF NOT EXISTS payouts_status_updated ON payouts (status, updated_at)",
            """
            CREATE TABLE IF NOT EXISTS outbox (
                id {serial_pk},
                event_id TEXT NOT NULL UNIQUE,
                payout_id TEXT,
                routing_key TEXT NOT NULL,
                body {blob} NOT NULL,
                created_at {ts} NOT NULL,
                claimed_until {ts},
                published_at {ts}
            )
            """,
            "CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL",
            "CREATE INDEX IF NOT EXISTS outbox_payout ON outbox (payout_id, id) WHERE published_at IS NULL",
            """
            CREATE TABLE IF NOT EXISTS results (
                id {serial_pk},
                received_at {ts} NOT NULL,
                raw {blob} NOT NULL,
                originator_conversation_id TEXT,
                conversation_id TEXT,
                transaction_id TEXT,
                result_code TEXT,
                outcome TEXT,
                disposition TEXT NOT NULL,
                payout_id TEXT,
                applied BOOLEAN NOT NULL,
                note TEXT
            )
            """,
            "CREATE INDEX IF NOT EXISTS results_payout ON results (payout_id)",
            "CREATE INDEX IF NOT EXISTS results_originator ON results (originator_conversation_id)",
            """
            CREATE TABLE IF NOT EXISTS invalid_commands (
                id {serial_pk},
                received_at {ts} NOT NULL,
                raw {blob} NOT NULL,
                payout_id TEXT,
                reason TEXT NOT NULL,
                message TEXT NOT NULL
            )
            """,
        ),
    ),
    (
        2,
        (
            # Looking payouts up (worker.ledger.lookup_store): bookkeeping on the payout, every status query
            # recorded before it is sent, every notifyQueueTimeout kept with its raw body.
            "ALTER TABLE payouts ADD COLUMN lookup_attempts INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE payouts ADD COLUMN lookup_started_at {ts}",
            "ALTER TABLE payouts ADD COLUMN next_lookup_at {ts}",
            "ALTER TABLE payouts ADD COLUMN lookup_trigger TEXT",
            "ALTER TABLE payouts ADD COLUMN resend_due BOOLEAN NOT NULL DEFAULT FALSE",
            "ALTER TABLE payouts ADD COLUMN flagged_at {ts}",
            "ALTER TABLE payouts ADD COLUMN flag_reason TEXT",
            "CREATE INDEX IF NOT EXISTS payouts_lookup ON payouts (status, next_lookup_at)",
            """
            CREATE TABLE IF NOT EXISTS status_queries (
                query_originator_conversation_id TEXT PRIMARY KEY,
                payout_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                reason TEXT NOT NULL,
                sent_at {ts} NOT NULL,
                response_outcome TEXT,
                response_code TEXT,
                response_desc TEXT,
                answered_at {ts},
                answer_code TEXT,
                answer_desc TEXT,
                transaction_status TEXT,
                verdict TEXT,
                note TEXT,
                UNIQUE (payout_id, attempt)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS queue_timeouts (
                id {serial_pk},
                received_at {ts} NOT NULL,
                raw {blob} NOT NULL,
                originator_conversation_id TEXT,
                conversation_id TEXT,
                payout_id TEXT,
                note TEXT NOT NULL
            )
            """,
            "CREATE INDEX IF NOT EXISTS queue_timeouts_payout ON queue_timeouts (payout_id)",
        ),
    ),
    (
        3,
        (
            # Flow control shared by every worker replica (worker.ledger.flow_state): one GCRA row per shortcode
            # (times are seconds since the epoch on the database's clock) and the circuit breaker's state.
            """
            CREATE TABLE IF NOT EXISTS rate_limits (
                key TEXT PRIMARY KEY,
                tat DOUBLE PRECISION NOT NULL,
                rate DOUBLE PRECISION NOT NULL,
                throttled_at DOUBLE PRECISION,
                updated_at {ts} NOT NULL
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS gateway_state (
                key TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                reason TEXT,
                code TEXT,
                detail TEXT,
                opened_at DOUBLE PRECISION,
                opened_by TEXT,
                closed_at DOUBLE PRECISION NOT NULL,
                closed_by TEXT,
                next_probe_at DOUBLE PRECISION,
                probe_id TEXT,
                probe_until DOUBLE PRECISION,
                failed_probes INTEGER NOT NULL DEFAULT 0,
                credential_epoch INTEGER NOT NULL DEFAULT 0,
                canary_id TEXT,
                canary_owner TEXT,
                canary_until DOUBLE PRECISION,
                updated_at {ts} NOT NULL
            )
            """,
        ),
    ),
    (
        4,
        (
            # Results that did not match their payout (or matched none), kept aside unapplied for review.
            """
            CREATE TABLE IF NOT EXISTS quarantine (
                id {serial_pk},
                received_at {ts} NOT NULL,
                raw {blob} NOT NULL,
                reason TEXT NOT NULL,
                detail TEXT NOT NULL,
                payout_id TEXT,
                originator_conversation_id TEXT,
                conversation_id TEXT,
                result_code TEXT,
                state TEXT NOT NULL,
                resolved_at {ts},
                resolution TEXT
            )
            """,
            "CREATE INDEX IF NOT EXISTS quarantine_state ON quarantine (state, id)",
        ),
    ),
    (
        5,
        (
            # Answers to a send that came back after the payout was claimed again (worker.ledger.payout_store):
            # kept with the claim they were made under, applied only where they cannot do harm.
            """
            CREATE TABLE IF NOT EXISTS stale_answers (
                id {serial_pk},
                received_at {ts} NOT NULL,
                payout_id TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                current_attempt INTEGER NOT NULL,
                current_status TEXT NOT NULL,
                answer TEXT NOT NULL,
                code TEXT,
                description TEXT,
                conversation_id TEXT,
                action TEXT NOT NULL
            )
            """,
            "CREATE INDEX IF NOT EXISTS stale_answers_payout ON stale_answers (payout_id, id)",
        ),
    ),
    (
        6,
        (
            # The credential proven by a result, shared by every replica whose credential has the same
            # fingerprint (worker.ledger.flow_state): valid while ``epoch`` is the breaker's credential epoch.
            """
            CREATE TABLE IF NOT EXISTS credential_proofs (
                key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                epoch INTEGER NOT NULL,
                proven_at DOUBLE PRECISION NOT NULL,
                proven_by TEXT NOT NULL,
                updated_at {ts} NOT NULL,
                PRIMARY KEY (key, fingerprint)
            )
            """,
            # Random per-deployment salts, made on first use (the credential fingerprint's).
            """
            CREATE TABLE IF NOT EXISTS salts (
                name TEXT PRIMARY KEY,
                salt TEXT NOT NULL,
                created_at {ts} NOT NULL
            )
            """,
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1][0]


def migrate(session: Session[Any]) -> int:
    """Bring the schema up to date inside the caller's write transaction; return the version reached."""
    session.engine.lock_schema(session)
    session.run(
        session.engine.ddl(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at {ts} NOT NULL)"
        )
    )
    row = session.one("SELECT MAX(version) AS version FROM schema_version")
    current = int(row["version"]) if row and row["version"] is not None else 0
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        for statement in statements:
            session.run(session.engine.ddl(statement))
        session.run(
            "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
            version,
            session.time(datetime.now(UTC)),
        )
        current = version
    return current
