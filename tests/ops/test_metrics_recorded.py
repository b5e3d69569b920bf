"""The ledger records the money and timing metrics when results are applied (a SQLite ledger, no broker).

KES failed, the callback lag (accepted -> result) and the time spent unknown are observed only after the
transaction commits, so a rolled-back change never counts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from worker.ledger import ApplyOutcome, Ledger, open_ledger
from worker.ledger.gauges import update_ledger_gauges
from worker.payouts.models import CommandId, PayoutCommand, PayoutStatus, originator_conversation_id
from worker.protocol.result import build_result_envelope, parse_result_envelope
from worker.settings import load_settings


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    settings = load_settings({"B2C_DATA_DIR": str(tmp_path), "B2C_SQLITE_PATH": str(sqlite_path(tmp_path))})
    opened = open_ledger(settings.ledger)
    yield opened
    opened.close()


def _payout(ledger: Ledger, payout_id: str, amount: str) -> str:
    command = PayoutCommand(
        payout_id=payout_id,
        msisdn="254712345678",
        amount=Decimal(amount),
        command=CommandId.BUSINESS_PAYMENT,
        remarks="Payout",
        occasion=None,
        metadata={},
    )
    originator = originator_conversation_id("600000", "mpesab2c", payout_id)
    ledger.payouts.record(command, originator)
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    return originator


def _result(ledger: Ledger, originator: str, code: str) -> ApplyOutcome:
    [payout] = [p for p in ledger.payouts.list_payouts() if p.originator_conversation_id == originator]
    # A success states the payout's own amount (a result that does not is quarantined, not applied).
    amount = f"{payout.command.amount:.2f}"
    raw = build_result_envelope(
        code=code,
        description=f"result code {code}",
        originator_conversation_id=originator,
        conversation_id="AG_20240501_0000abc",
        transaction_id="SE17ABCDEF" if code == "0" else None,
        parameters={"TransactionAmount": amount, "TransactionReceipt": "SE17ABCDEF"} if code == "0" else {},
    )
    return ledger.results.record(raw, parse_result_envelope(raw)).outcome


def test_failed_result_counts_the_kes_and_the_callback_lag(ledger: Ledger) -> None:
    failed_before = sample("mpesa_b2c_failed_kes_total")
    lags_before = sample("mpesa_b2c_callback_lag_seconds_count")
    originator = _payout(ledger, "p-metrics-failed", "1234.50")
    ledger.payouts.mark_accepted("p-metrics-failed", conversation_id="AG_20240501_0000abc", code="0", description="ok")

    assert _result(ledger, originator, "1") is ApplyOutcome.APPLIED

    assert sample("mpesa_b2c_failed_kes_total") - failed_before == pytest.approx(1234.50)
    assert sample("mpesa_b2c_callback_lag_seconds_count") - lags_before == 1
    # A repeat of the final result changes nothing, so it counts nothing.
    assert _result(ledger, originator, "1") is ApplyOutcome.DUPLICATE_FINAL
    assert sample("mpesa_b2c_failed_kes_total") - failed_before == pytest.approx(1234.50)
    assert sample("mpesa_b2c_callback_lag_seconds_count") - lags_before == 1


def test_completed_result_counts_no_failed_kes(ledger: Ledger) -> None:
    failed_before = sample("mpesa_b2c_failed_kes_total")
    originator = _payout(ledger, "p-metrics-completed", "99.00")
    ledger.payouts.mark_accepted(
        "p-metrics-completed", conversation_id="AG_20240501_0000abc", code="0", description="ok"
    )
    assert _result(ledger, originator, "0") is ApplyOutcome.APPLIED
    assert sample("mpesa_b2c_failed_kes_total") == failed_before


def test_leaving_unknown_observes_the_time_spent_unknown(ledger: Ledger) -> None:
    unknown_before = sample("mpesa_b2c_unknown_duration_seconds_count")
    lags_before = sample("mpesa_b2c_callback_lag_seconds_count")
    originator = _payout(ledger, "p-metrics-unknown", "10.00")
    ledger.payouts.mark_unknown("p-metrics-unknown", reason="no_response", code=None, description="read timeout")
    assert sample("mpesa_b2c_unknown_duration_seconds_count") == unknown_before

    assert _result(ledger, originator, "0") is ApplyOutcome.APPLIED

    payout = ledger.payouts.get("p-metrics-unknown")
    assert payout is not None and payout.status is PayoutStatus.COMPLETED
    assert sample("mpesa_b2c_unknown_duration_seconds_count") - unknown_before == 1
    # Never seen accepted: its acceptance time is not known, so no callback lag is made up for it.
    assert sample("mpesa_b2c_callback_lag_seconds_count") == lags_before


NON_FINAL = ("received", "sending", "accepted", "unknown")
OLDEST = "mpesa_b2c_oldest_nonfinal_age_seconds"


def _age(ledger_file: Path, payout_id: str, seconds: float) -> None:
    """Back-date the payout's last status change (the gauge reads the age from ``updated_at``)."""
    when = (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="microseconds")
    with sqlite3.connect(ledger_file) as conn:
        conn.execute("UPDATE payouts SET updated_at = ? WHERE payout_id = ?", (when, payout_id))


def test_every_non_final_status_has_its_oldest_age_from_the_first_scrape() -> None:
    """Issue #11 finding 6: an alert per status needs each series before anything is stuck."""
    for status in NON_FINAL:
        assert REGISTRY.get_sample_value(OLDEST, {"status": status}) is not None, status
    for status in ("completed", "failed", "rejected"):
        assert REGISTRY.get_sample_value(OLDEST, {"status": status}) is None, status


def test_the_oldest_age_is_kept_per_non_final_status(ledger: Ledger, tmp_path: Path) -> None:
    _payout(ledger, "p-age-sending", "10.00")
    _payout(ledger, "p-age-accepted", "10.00")
    ledger.payouts.mark_accepted("p-age-accepted", conversation_id="AG_1", code="0", description="ok")
    _payout(ledger, "p-age-accepted-new", "10.00")
    ledger.payouts.mark_accepted("p-age-accepted-new", conversation_id="AG_2", code="0", description="ok")
    _payout(ledger, "p-age-ahead", "10.00")
    ledger.payouts.mark_unknown("p-age-ahead", reason="no_response", code=None, description="read timeout")
    _age(sqlite_path(tmp_path), "p-age-sending", 600)
    _age(sqlite_path(tmp_path), "p-age-accepted", 2400)
    _age(sqlite_path(tmp_path), "p-age-accepted-new", 60)
    _age(sqlite_path(tmp_path), "p-age-ahead", -300)  # written by a replica whose clock is ahead

    update_ledger_gauges(ledger.payouts, ledger.outbox)

    ages = {status: sample(OLDEST, {"status": status}) for status in NON_FINAL}
    assert ages["received"] == 0.0, "none received"
    assert 600 <= ages["sending"] < 600 + 300
    assert 2400 <= ages["accepted"] < 2400 + 300, "the oldest of the accepted ones"
    assert ages["unknown"] == 0.0, "a clock ahead never makes an age negative"
    assert sample("mpesa_b2c_unknown_oldest_age_seconds") == 0.0
