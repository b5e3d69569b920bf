"""Pure parts of the guard: the tokened URLs, whom to believe about the source address, what matches."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from decimal import Decimal
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from worker.cli.dead import message_key
from worker.gateway import callback_urls
from worker.logs import ScrubFilter
from worker.payouts.matching import mismatches, msisdn_agrees
from worker.payouts.models import CommandId, Payout, PayoutCommand, PayoutStatus, originator_conversation_id
from worker.protocol.result import Result, build_result_envelope, parse_result_envelope
from worker.receiver.guard import ReceiverGuard, client_address, parse_address
from worker.settings import DEMO_CALLBACK_TOKEN, Settings, load_settings

TOKEN = "unit-token-abcdefghijklmnop"


def _settings(tmp_path: Path, **env: str) -> Settings:
    return load_settings({"B2C_DATA_DIR": str(tmp_path), "B2C_CALLBACK_TOKEN": TOKEN, **env})


# --- tokened URLs ------------------------------------------------------------------------------------------


def test_the_token_is_appended_to_both_callback_paths_and_the_gateway_sends_them(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        B2C_RESULT_URL="https://payer.example/mpesa/result/?x=1",
        B2C_QUEUE_TIMEOUT_URL="https://payer.example/mpesa/timeout",
    )
    assert callback_urls.result_url(settings) == f"https://payer.example/mpesa/result/{TOKEN}?x=1"
    assert callback_urls.queue_timeout_url(settings) == f"https://payer.example/mpesa/timeout/{TOKEN}"
    mpesa = callback_urls.gateway_mpesa(settings)
    assert mpesa.result_url == callback_urls.result_url(settings)
    assert mpesa.queue_timeout_url == callback_urls.queue_timeout_url(settings)
    assert settings.mpesa.result_url.endswith("/result/?x=1"), "the configured URL itself is not changed"
    guard = ReceiverGuard(settings)
    assert guard.result_path == f"/mpesa/result/{TOKEN}"
    assert guard.route(f"/mpesa/result/{TOKEN}") == "result"
    assert guard.route(f"/mpesa/timeout/{TOKEN}") == "queue_timeout"
    for guess in ("/mpesa/result", "/mpesa/result/", "/mpesa/result/wrong", f"/mpesa/result/{TOKEN}x"):
        assert guard.route(guess) == "token", guess
    assert guard.route("/elsewhere") is None


def test_a_logged_callback_url_never_shows_the_token(tmp_path: Path) -> None:
    url = callback_urls.result_url(_settings(tmp_path))
    record = logging.LogRecord("gateway", logging.INFO, __file__, 1, "sending with ResultURL %s", (url,), None)
    ScrubFilter().filter(record)
    assert TOKEN not in record.getMessage()
    assert "/mpesa/result/********" in record.getMessage()


def test_the_demo_token_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"B2C_DATA_DIR": str(tmp_path)})
    assert settings.receiver.callback_token.reveal() == DEMO_CALLBACK_TOKEN
    with caplog.at_level(logging.WARNING, logger="worker.receiver.guard"):
        ReceiverGuard(settings)
    assert any("demo default" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="worker.receiver.guard"):
        ReceiverGuard(_settings(tmp_path))
    assert not any("demo default" in r.getMessage() for r in caplog.records)


# --- source address ------------------------------------------------------------------------------------------

PROXIES = (ip_network("10.0.0.0/24"), ip_network("fd00::/64"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("196.201.214.10", None, "196.201.214.10"),
        ("196.201.214.10", "1.2.3.4", "196.201.214.10"),  # not from a proxy: the header is the client's word
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "196.201.214.10", "196.201.214.10"),
        ("10.0.0.5", "6.6.6.6, 196.201.214.10", "196.201.214.10"),  # left of it: written by the client
        ("10.0.0.5", "196.201.214.10, 10.0.0.7", "196.201.214.10"),  # a second proxy hop is skipped
        ("10.0.0.5", "196.201.214.10,10.0.0.7 , 10.0.0.9", "196.201.214.10"),
        ("10.0.0.5", "10.0.0.8, 10.0.0.7", "10.0.0.8"),  # all proxies: where it entered
        ("10.0.0.5", "196.201.214.10:5555", "196.201.214.10"),
        ("10.0.0.5", "[2001:db8::1]:443", "2001:db8::1"),
        ("fd00::3", "2001:db8::1", "2001:db8::1"),
        ("::ffff:10.0.0.5", "196.201.214.10", "196.201.214.10"),
        ("10.0.0.5", "196.201.214.10, not-an-ip", None),  # the right-most untrusted hop is unreadable
        ("garbage", None, None),
    ],
)
def test_client_address(peer: str, forwarded: str | None, client: str | None) -> None:
    found = client_address(peer, forwarded, PROXIES)
    assert found == (None if client is None else ip_address(client))


def test_parse_address_accepts_what_waitress_and_proxies_write() -> None:
    assert parse_address(" 1.2.3.4 ") == ip_address("1.2.3.4")
    assert parse_address('"[::1]:80"') == ip_address("::1")
    assert parse_address("fe80::1%eth0") == ip_address("fe80::1")
    assert parse_address("unknown") is None


def test_networks_decide_with_the_trusted_client_address(tmp_path: Path) -> None:
    guard = ReceiverGuard(
        _settings(tmp_path, B2C_CALLBACK_ALLOWED_NETWORKS="196.201.214.0/24", B2C_TRUSTED_PROXIES="10.0.0.0/24")
    )
    assert guard.source_allowed({"REMOTE_ADDR": "196.201.214.9"})
    assert not guard.source_allowed({"REMOTE_ADDR": "8.8.8.8"})
    assert not guard.source_allowed({"REMOTE_ADDR": "8.8.8.8", "HTTP_X_FORWARDED_FOR": "196.201.214.9"})
    assert guard.source_allowed({"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "196.201.214.9"})
    assert not guard.source_allowed({"REMOTE_ADDR": "10.0.0.2"}), "the proxy itself is not M-PESA"
    assert not guard.source_allowed({"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "196.201.214.9, 8.8.8.8"})
    open_guard = ReceiverGuard(_settings(tmp_path))
    assert open_guard.source_allowed({"REMOTE_ADDR": "8.8.8.8"})


# --- matching a result to its payout -------------------------------------------------------------------------


def _payout(conversation_id: str | None = "AG_1") -> Payout:
    command = PayoutCommand(
        payout_id="p-match",
        msisdn="254712345678",
        amount=Decimal("1500.00"),
        command=CommandId.BUSINESS_PAYMENT,
        remarks="x",
        occasion=None,
        metadata={},
    )
    now = datetime.now(UTC)
    return Payout(
        payout_id="p-match",
        command=command,
        fingerprint=command.fingerprint(),
        originator_conversation_id=originator_conversation_id("600000", "mpesab2c", "p-match"),
        status=PayoutStatus.ACCEPTED,
        conversation_id=conversation_id,
        send_attempts=1,
        response_code="0",
        response_desc="ok",
        result_code=None,
        result_desc=None,
        receipt=None,
        reason=None,
        created_at=now,
        updated_at=now,
        final_details=None,
    )


def _result(
    payout: Payout,
    *,
    code: str = "0",
    parameters: dict[str, str | None] | None = None,
    originator_conversation_id: str | None = None,
    conversation_id: str | None = None,
) -> Result:
    """A result for ``payout``; ``parameters`` override the faithful ones (None removes one)."""
    values: dict[str, str | None] = {
        "TransactionAmount": "1500.00",
        "ReceiverPartyPublicName": "254712345678 - Jane Doe",
        **(parameters or {}),
    }
    body = build_result_envelope(
        code=code,
        description="ok",
        originator_conversation_id=originator_conversation_id or payout.originator_conversation_id,
        conversation_id=conversation_id or payout.conversation_id,
        transaction_id="R1",
        parameters={k: v for k, v in values.items() if v is not None},
    )
    return parse_result_envelope(body)


def test_a_faithful_result_matches() -> None:
    payout = _payout()
    assert mismatches(payout, _result(payout)) == []
    assert mismatches(payout, _result(payout, parameters={"TransactionAmount": "1500"})) == []
    assert mismatches(payout, _result(payout, parameters={"TransactionAmount": "Ksh1,500.00"})) == []
    failed = _result(payout, code="2001", parameters={"TransactionAmount": None, "ReceiverPartyPublicName": None})
    assert mismatches(payout, failed) == [], "a failure carries no amount: not present is not a mismatch"
    unnamed = _result(payout, parameters={"ReceiverPartyPublicName": None})
    assert mismatches(payout, unnamed) == []
    overtaken = _payout(conversation_id=None)
    assert mismatches(overtaken, _result(overtaken, conversation_id="AG_other")) == []
    resent = dataclasses.replace(_payout(conversation_id="AG_resend"), send_attempts=2)
    assert mismatches(resent, _result(resent, conversation_id="AG_first_send")) == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"parameters": {"TransactionAmount": "1500.01"}}, "amount"),
        ({"parameters": {"Amount": "Ksh15000.00", "TransactionAmount": None}}, "amount"),
        ({"parameters": {"ReceiverPartyPublicName": "254799999999 - Jane Doe"}}, "msisdn"),
        ({"conversation_id": "AG_forged"}, "conversation_id"),
        ({"parameters": {"TransactionAmount": None}}, "amount"),
        ({"parameters": {"TransactionAmount": "fifteen hundred"}}, "amount"),
        ({"originator_conversation_id": "600000_mpesab2c_other"}, "originator_conversation_id"),
    ],
)
def test_a_result_that_says_something_else_does_not_match(changes: dict[str, Any], reason: str) -> None:
    payout = _payout()
    found = mismatches(payout, _result(payout, **changes))
    assert [m.reason for m in found] == [reason]
    assert "254712345678" not in found[0].detail and "254799999999" not in found[0].detail


@pytest.mark.parametrize(
    ("name", "agrees"),
    [
        ("254712345678 - Jane Doe", True),
        ("+254712345678 - Jane Doe", True),
        ("0712345678 - Jane Doe", True),
        ("2547*****678 - Jane Doe", True),
        ("07XXXXXX78 - Jane Doe", True),
        ("254712345679 - Jane Doe", False),
        ("0722345678 - Jane Doe", False),
        ("2547*****999 - Jane Doe", False),
        ("254712345678", True),
        ("Jane Doe", None),
        ("************ - Jane Doe", None),
        ("2547123 - Jane Doe", None),
        ("0712 345 678 - Jane Doe", None),
    ],
)
def test_msisdn_in_the_public_name(name: str, agrees: bool | None) -> None:
    assert msisdn_agrees(name, "254712345678") is agrees


# --- dead-letter ids -----------------------------------------------------------------------------------------


def test_dead_letter_ids_ignore_the_delivery_counter_only() -> None:
    base = message_key(b'{"a":1}', "p-1", 1700000000, {"x-b2c-reason": "invalid_command"})
    counted = message_key(b'{"a":1}', "p-1", 1700000000, {"x-b2c-reason": "invalid_command", "x-delivery-count": 3})
    assert base == counted and len(base) == 12
    assert message_key(b'{"a":2}', "p-1", 1700000000, {"x-b2c-reason": "invalid_command"}) != base
    assert message_key(b'{"a":1}', "p-1", 1700000001, {"x-b2c-reason": "invalid_command"}) != base
    assert message_key(b'{"a":1}', "p-1", 1700000000, {"x-b2c-reason": "other"}) != base
