"""Item 7: with DEBUG logging, a fault run writes no secret and no full MSISDN to any log line.

The log set-up is the CLI's (see the ``debug_log`` fixture). This is a representative part of the fault
suite, two payouts per scenario in one stack plus a cold wrong-credential batch, so that it stays in the
default run (~6 s); the slow fault suite (test_fault_suite.py) makes the same check over the whole suite.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from tests.faults.conftest import FULL_MSISDN, SECRETS, assert_no_secrets
from tests.faults.fault_suite import ISOLATED, Batch, batches, run_group
from worker.cli.stack import LocalStack
from worker.settings import Settings
from worker.simulator.scenarios import Scenario


def keep_credentials(into: list[str]) -> Callable[[LocalStack], None]:
    """The SecurityCredential each stack's gateway computed (encrypted afresh per process: random padding)."""

    def keep(stack: LocalStack) -> None:
        assert stack.worker is not None
        into.append(stack.worker.gateway._initiator.security_credential)

    return keep


def test_debug_logs_of_a_fault_run_hold_no_secret_and_no_full_msisdn(
    make_settings: Callable[..., Settings], debug_log: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    credentials: list[str] = []
    shared = [b for b in batches(2) if b.scenario not in ISOLATED]
    shared.append(Batch("normal-07", "0712345678", 2))  # the local spelling, next to 254… and the magic ones
    rows = run_group(make_settings, shared, tag="sec", env=SECRETS, inspect=keep_credentials(credentials))
    rows += run_group(
        make_settings,
        [Batch(Scenario.WRONG_CREDENTIAL.value, "254700000010", 2)],
        tag="seccred",
        env=SECRETS,
        warm_up=False,
        inspect=keep_credentials(credentials),
    )
    assert all(row.double_paid == 0 and row.lost == 0 for row in rows), rows
    assert_no_secrets(debug_log.getvalue(), credentials)
    # Nothing bypasses logging either (a print, a library writing straight to the process's stdout/stderr).
    out, err = capfd.readouterr()
    stray = out + err
    for secret in [*SECRETS.values(), *credentials]:
        assert secret not in stray
    assert not FULL_MSISDN.search(stray), stray[:2000]
