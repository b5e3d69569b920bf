"""The fault table: every simulator scenario, then process kills (worker, receiver, simulator) and a RabbitMQ
restart; 0 double-paid, 0 lost, every payout final (or held / flagged).

The whole suite runs with the CLI's DEBUG logging (``debug_log``) and with distinctive secrets, and its log
is checked for secrets and full MSISDNs afterwards (item 7 over the whole suite).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import SECRETS, assert_no_secrets
from tests.faults.fault_suite import HOLDS, NEVER_ANSWERED, run_suite, write_table
from tests.faults.process_kills import run_process_kills
from tests.faults.test_secrets_in_logs import keep_credentials
from tests.support.crash import CrashRig
from worker.settings import Settings

TABLE = Path(__file__).with_name("fault-table.md")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("ledger_env", ["postgres"], indirect=True)  # the kill rows' ledger (crash_rig)
def test_every_scenario_pays_once_and_loses_nothing(
    make_settings: Callable[..., Settings], debug_log: io.StringIO, crash_rig: Callable[..., CrashRig]
) -> None:
    started = time.monotonic()
    credentials: list[str] = []
    rows = run_suite(make_settings, count=10, env=SECRETS, inspect=keep_credentials(credentials))
    rows += run_process_kills(crash_rig, SECRETS)
    text = write_table(rows, TABLE)
    print(f"\n{text}\nfault suite: {time.monotonic() - started:.1f} s")
    for row in rows:
        scenario = row.scenario.split(" ")[0]
        assert row.double_paid == 0, (row.scenario, row.notes)
        assert row.lost == 0, (row.scenario, row.notes)
        if scenario not in NEVER_ANSWERED:
            assert row.unknown_flagged == 0, row.scenario
        if scenario not in HOLDS:
            assert row.held == 0, row.scenario
        assert row.final + row.unknown_flagged + row.held == row.payouts, row
        assert row.paid_once == row.completed, row
    assert_no_secrets(debug_log.getvalue(), credentials)
