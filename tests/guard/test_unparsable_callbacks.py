"""A callback on the secret path that cannot be parsed: kept in the quarantine with its body before M-PESA is
answered, answered as stored, and listed by ``mpesa-b2c dead list --quarantine`` (both ledger engines)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from tests.support.guard import TOKEN, Receiver, count
from worker.cli.main import build_parser
from worker.errors import LedgerError
from worker.ledger import open_ledger
from worker.ledger.quarantine import REASON_UNPARSABLE
from worker.protocol.response import parse_response_envelope

TRUNCATED = b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><res:Resu'
TIMEOUT_GARBAGE = b"<not-a-queue-timeout/>"


def quarantined() -> float:
    return REGISTRY.get_sample_value("mpesa_b2c_results_quarantined_total", {"reason": REASON_UNPARSABLE}) or 0.0


def test_an_unparsable_result_is_kept_before_the_answer(
    receiver_factory: Callable[..., Receiver], ledger_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    receiver = receiver_factory(B2C_CALLBACK_TOKEN=TOKEN, **ledger_env)
    before = quarantined()

    answer = receiver.post(receiver.service.app.result_path, TRUNCATED)
    assert answer.status_code == 200, "stored, so answered like any stored result"
    response = parse_response_envelope(answer.content)
    assert (response.code, response.description) == ("00000000", "success")
    timeout_answer = receiver.post(receiver.service.app.queue_timeout_path, TIMEOUT_GARBAGE)
    assert timeout_answer.status_code == 200 and b"00000000" in timeout_answer.content

    assert quarantined() - before == 2
    assert count(receiver.settings.ledger, "results") == 2
    ledger = open_ledger(receiver.settings.ledger)
    try:
        entries = ledger.quarantine.entries()
    finally:
        ledger.close()
    assert [(e.reason, e.raw, e.payout_id) for e in entries] == [
        (REASON_UNPARSABLE, TRUNCATED, None),
        (REASON_UNPARSABLE, TIMEOUT_GARBAGE, None),
    ]
    assert entries[0].detail.startswith("not a readable result: result:")
    assert entries[1].detail.startswith("not a readable result: queue timeout:")

    args = build_parser().parse_args(["dead", "list", "--quarantine", "--json"])
    assert args.func(receiver.settings, args) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["reason"] for row in listed] == [REASON_UNPARSABLE, REASON_UNPARSABLE]
    release = build_parser().parse_args(["dead", "release", f"q:{entries[0].id}", "--yes"])
    with pytest.raises(LedgerError, match="matched no payout"):
        release.func(receiver.settings, release)
