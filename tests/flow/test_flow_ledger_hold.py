"""The flow-control tick and a failing ledger: the safe side (pause), whichever part of the tick failed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.waiting import wait_until
from worker.errors import LedgerError
from worker.flow.control import FlowControl
from worker.ledger import Ledger, open_ledger
from worker.settings import Settings


def _flow(make_settings: Callable[..., Settings], tmp_path: Path, holds: list[str]) -> tuple[FlowControl, Ledger]:
    settings = make_settings(B2C_SQLITE_PATH=str(tmp_path / "flow.sqlite3"), B2C_RATE_LIMIT="5")
    ledger = open_ledger(settings.ledger)
    return FlowControl(settings, ledger.flow, on_hold=holds.append), ledger


def test_a_failing_rate_limit_refresh_pauses_instead_of_raising(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow, ledger = _flow(make_settings, tmp_path, [])
    try:
        assert flow.tick().accepting

        def refused(*_: object, **__: object) -> float:
            raise LedgerError("postgresql ledger: connection refused")

        monkeypatch.setattr(ledger.flow, "rate", refused)
        decision = flow.tick()
        assert not decision.accepting and "rate limit" in decision.why
    finally:
        ledger.close()


def test_a_ledger_error_pauses_at_once_and_the_tick_holds_then_resumes(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    holds: list[str] = []
    flow, ledger = _flow(make_settings, tmp_path, holds)
    try:
        flow.ledger_failed("LedgerError")
        assert holds and holds[0].startswith("ledger unavailable")
        assert not flow.tick().accepting, "a hold after a ledger error"
        wait_until(lambda: flow.tick().accepting, 10, "the tick to resume once the hold is over")
    finally:
        ledger.close()
