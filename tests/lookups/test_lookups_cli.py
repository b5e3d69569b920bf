"""``mpesa-b2c lookups`` and ``mpesa-b2c events pending`` on both ledger engines: what a human sees of the
payouts automatic lookups gave up on, handing one back, and the events a broker outage left in the outbox."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.commands import make_command
from tests.support.ledger import make_result
from worker.cli.main import build_parser
from worker.errors import RearmRefused, UnknownPayout
from worker.ledger import FlagReason, Ledger, LookupTrigger, QueryResponse, open_ledger
from worker.payouts.models import originator_conversation_id
from worker.settings import Settings

FULL_MSISDN = re.compile(r"(?<!\d)(?:\+?254|0)[17]\d{8}(?!\d)")
MSISDN = "254712345678"


@pytest.fixture
def settings(ledger_env: dict[str, str], make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**ledger_env)


@pytest.fixture
def ledger(settings: Settings) -> Iterator[Ledger]:
    opened = open_ledger(settings.ledger)
    try:
        yield opened
    finally:
        opened.close()


def cli(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(list(argv))
    code = int(args.func(settings, args))
    out = capsys.readouterr().out
    assert not FULL_MSISDN.search(out), out
    return code, out


def as_json(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out = cli(settings, capsys, *argv, "--json")
    assert code == 0
    return json.loads(out)


def unknown_payout(ledger: Ledger, settings: Settings, payout_id: str, **fields: Any) -> str:
    ocid = originator_conversation_id(settings.mpesa.shortcode, settings.mpesa.org_name, payout_id)
    ledger.payouts.record(make_command(payout_id, msisdn=MSISDN, **fields), ocid)
    ledger.payouts.claim_send(payout_id, expected_attempts=0)
    ledger.payouts.mark_unknown(payout_id, reason="no_response", code=None, description=f"timeout for {MSISDN}")
    return ocid


def test_flagged_payouts_are_listed_shown_and_handed_back(
    settings: Settings, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown_payout(ledger, settings, "l-flagged")
    unknown_payout(ledger, settings, "l-quiet")
    query = ledger.lookups.record_status_query("l-flagged", trigger=LookupTrigger.UNKNOWN, retry_after=60.0)
    assert query is not None
    ledger.lookups.note_status_query_response(
        query.query_originator_conversation_id,
        outcome=QueryResponse.ACCEPTED,
        code="0",
        description=f"query for 0712345678 ({MSISDN}) accepted",
    )
    ledger.lookups.flag_for_review("l-flagged", reason=FlagReason.MAX_ATTEMPTS)

    # flagged: the one a human must look at, not the one still being looked up.
    [row] = as_json(settings, capsys, "lookups", "flagged")
    assert row["payout_id"] == "l-flagged" and row["status"] == "unknown" and row["flag_reason"] == "max_attempts"
    assert row["lookup_attempts"] == 1
    code, out = cli(settings, capsys, "lookups", "flagged")
    assert code == 0 and "l-flagged" in out and "max_attempts" in out and "l-quiet" not in out

    # show: status, lookup state, every status query; phone numbers masked, also in M-PESA's text.
    shown = as_json(settings, capsys, "lookups", "show", "l-flagged")
    assert shown["payout"]["status"] == "unknown" and shown["payout"]["msisdn"] == "2547******78"
    assert shown["lookup"]["flagged_for_review"] is True
    [made] = shown["status_queries"]
    assert made["query_originator_conversation_id"] == query.query_originator_conversation_id
    assert made["response_outcome"] == "accepted" and "07******78" in made["response_desc"]
    code, out = cli(settings, capsys, "lookups", "show", "l-flagged")
    assert code == 0 and "status queries:" in out and "max_attempts" in out and "accepted" in out

    # rearm: unflagged, a fresh budget, due for a status query now; and it says so.
    code, out = cli(settings, capsys, "lookups", "rearm", "l-flagged")
    assert code == 0 and "handed back" in out and "max_attempts" in out
    assert as_json(settings, capsys, "lookups", "flagged") == []
    [task] = [
        t
        for t in ledger.lookups.due_for_lookup(
            unknown_after=3600, result_timeout=3600, stuck_after=3600, lease_seconds=0
        )
        if t.payout.payout_id == "l-flagged"
    ]
    assert task.trigger is LookupTrigger.MANUAL and task.attempts == 0
    code, out = cli(settings, capsys, "lookups", "flagged")
    assert "(none)" in out


def test_an_unknown_id_and_a_final_payout_are_refused(
    settings: Settings, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    ocid = unknown_payout(ledger, settings, "l-final")
    ledger.lookups.flag_for_review("l-final", reason=FlagReason.MAX_ATTEMPTS)
    ledger.results.record(*make_result(code="0", originator=ocid))
    with pytest.raises(UnknownPayout, match="nobody"):
        cli(settings, capsys, "lookups", "show", "nobody")
    with pytest.raises(UnknownPayout, match="nobody"):
        cli(settings, capsys, "lookups", "rearm", "nobody")
    with pytest.raises(RearmRefused, match="completed"):
        cli(settings, capsys, "lookups", "rearm", "l-final")
    assert as_json(settings, capsys, "lookups", "show", "l-final")["lookup"]["flag_reason"] == "max_attempts"


def test_a_final_payout_a_human_reviewed_is_cleared_and_a_live_one_is_not(
    settings: Settings, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    ocid = unknown_payout(ledger, settings, "l-paid")
    ledger.lookups.flag_for_review("l-paid", reason=FlagReason.MAX_ATTEMPTS)
    ledger.results.record(*make_result(code="0", originator=ocid))
    unknown_payout(ledger, settings, "l-live")
    ledger.lookups.flag_for_review("l-live", reason=FlagReason.MAX_ATTEMPTS)
    with pytest.raises(RearmRefused, match="not final"):
        cli(settings, capsys, "lookups", "clear", "l-live")
    code, out = cli(settings, capsys, "lookups", "clear", "l-paid")
    assert code == 0 and "l-paid (completed): its review flag (max_attempts) cleared" in out
    assert as_json(settings, capsys, "lookups", "show", "l-paid")["lookup"]["flag_reason"] is None
    live = ledger.lookups.lookup_state("l-live")
    assert live is not None and live.flagged_for_review


def test_pending_events_are_the_outbox_not_yet_published(
    settings: Settings, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    # The payer's metadata may hold a phone number, as text or as a JSON number.
    unknown_payout(ledger, settings, "l-outbox", metadata={"contact": "call 0712345678", "phone": 254712345678})
    pending = as_json(settings, capsys, "events", "pending")
    assert [row["routing_key"] for row in pending] == ["payout.unknown"]
    assert pending[0]["payout_id"] == "l-outbox"
    assert pending[0]["event"]["metadata"] == {"contact": "call 07******78", "phone": "2547******78"}
    unknown_payout(ledger, settings, "l-outbox-2")
    code, out = cli(settings, capsys, "events", "pending", "--limit", "1")
    assert code == 0 and "l-outbox" in out and "l-outbox-2" not in out
    assert "2 event(s) stored and not yet published; 1 shown" in out

    ledger.outbox.mark_published([event.id for event in ledger.outbox.pending()])
    assert as_json(settings, capsys, "events", "pending") == []
    code, out = cli(settings, capsys, "events", "pending")
    assert "0 event(s) stored and not yet published" in out


def test_the_installed_commands_run(settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    unknown_payout(ledger, settings, "l-cli")
    ledger.lookups.flag_for_review("l-cli", reason=FlagReason.MAX_SECONDS)
    env = {**os.environ, "B2C_DATA_DIR": str(tmp_path)}
    if settings.ledger.database_url:
        env["B2C_DATABASE_URL"] = settings.ledger.database_url
    else:
        env["B2C_SQLITE_PATH"] = str(settings.ledger.sqlite_path)

    def mpesa_b2c(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "worker.cli", *argv]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    run = mpesa_b2c("lookups", "flagged", "--json")
    assert run.returncode == 0, run.stderr
    assert [row["flag_reason"] for row in json.loads(run.stdout)] == ["max_seconds"]
    run = mpesa_b2c("lookups", "show", "no-such-payout")
    assert run.returncode == 1 and "no payout 'no-such-payout' in the ledger" in run.stderr
    run = mpesa_b2c("events", "pending")
    assert run.returncode == 0 and "payout.unknown" in run.stdout, run.stderr
    run = mpesa_b2c("lookups", "rearm", "l-cli")
    assert run.returncode == 0 and "handed back" in run.stdout, run.stderr
    assert not FULL_MSISDN.search(run.stdout + run.stderr)
    run = mpesa_b2c("lookups", "rearm", "l-cli")
    assert run.returncode == 0 and "it was not flagged" in run.stdout, run.stderr
