"""parse_command: what a payer may send, how it is normalised, and how refusals name the field."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from worker.errors import InvalidCommand
from worker.payouts.models import (
    MAX_COMMAND_BYTES,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    CommandId,
    PayoutCommand,
    canonical_json,
    extract_payout_id,
    format_amount,
    loads_json,
    normalise_msisdn,
    parse_command,
)


def body(**fields: Any) -> bytes:
    document: dict[str, Any] = {"payout_id": "inv-1", "msisdn": "0712345678", "amount": "100"}
    document.update(fields)
    return canonical_json({k: v for k, v in document.items() if v is not DROP})


DROP = object()


def refusal(raw: bytes, **limits: Decimal) -> InvalidCommand:
    with pytest.raises(InvalidCommand) as caught:
        parse_command(raw, **limits)
    return caught.value


def test_minimal_command_gets_defaults() -> None:
    command = parse_command(body())
    assert command == PayoutCommand(
        payout_id="inv-1",
        msisdn="254712345678",
        amount=Decimal("100.00"),
        command=CommandId.BUSINESS_PAYMENT,
        remarks="Payout",
        occasion=None,
        metadata={},
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0712345678", "254712345678"),
        ("0112345678", "254112345678"),
        ("+254712345678", "254712345678"),
        ("254712345678", "254712345678"),
        ("+254112345678", "254112345678"),
        ("254112345678", "254112345678"),
    ],
)
def test_msisdn_forms_normalise(raw: str, expected: str) -> None:
    assert normalise_msisdn(raw) == expected
    assert parse_command(body(msisdn=raw)).msisdn == expected


@pytest.mark.parametrize(
    "raw",
    [
        "0812345678",
        "071234567",
        "07123456789",
        "2547123456789",
        "255712345678",
        "+0712345678",
        "0712 345678",
        "0712345678\n",
        " 0712345678",
        "٠٧١٢٣٤٥٦٧٨",
        "254712345678x",
        "",
        254712345678,
        None,
    ],
)
def test_other_msisdns_are_refused_without_echoing_them(raw: Any) -> None:
    error = refusal(body(msisdn=raw))
    assert error.field == "msisdn"
    assert "345678" not in str(error)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'"100"', "100.00"),
        (b'"100.5"', "100.50"),
        (b'"100.55"', "100.55"),
        (b"100", "100.00"),
        (b"100.5", "100.50"),
        (b"100.000", "100.00"),
        (b"1e3", "1000.00"),
        (b"10", "10.00"),
        (b"250000", "250000.00"),
        (b'"250000.00"', "250000.00"),
        (b"0.1e3", "100.00"),
    ],
)
def test_amounts_are_exact(raw: bytes, expected: str) -> None:
    document = b'{"payout_id":"p","msisdn":"0712345678","amount":' + raw + b"}"
    command = parse_command(document)
    assert isinstance(command.amount, Decimal)
    assert format_amount(command.amount) == expected
    assert command.amount == Decimal(expected)


def test_float_like_amount_keeps_every_digit() -> None:
    # 1234.57 is not representable as a binary float; read as a float it would not equal Decimal("1234.57").
    command = parse_command(b'{"payout_id":"p","msisdn":"0712345678","amount":1234.57}')
    assert command.amount == Decimal("1234.57")


@pytest.mark.parametrize(
    "raw",
    [
        b'"100.555"',
        b"100.555",
        b"100.001",
        b'"1e3"',
        b'"+100"',
        b'"-100"',
        b'"0100"',
        b'" 100"',
        b'"100."',
        b'".5"',
        b'"100,00"',
        b'"NaN"',
        b'"Infinity"',
        b"true",
        b"null",
        b"[100]",
        b'{"value":100}',
        b"9.99",
        b"250000.01",
        b"-100",
        b"0",
        b"1e400",
        b"1e-400",
    ],
)
def test_bad_amounts_name_the_field(raw: bytes) -> None:
    error = refusal(b'{"payout_id":"p","msisdn":"0712345678","amount":' + raw + b"}")
    assert error.field == "amount"


def test_amount_limits_are_configurable_and_named() -> None:
    limits = {"amount_min": Decimal("50"), "amount_max": Decimal("70000")}
    assert parse_command(body(amount="50"), **limits).amount == Decimal("50")
    assert parse_command(body(amount="70000"), **limits).amount == Decimal("70000")
    for amount in ("49.99", "70000.01"):
        error = refusal(body(amount=amount), **limits)
        assert error.field == "amount"
        assert "50" in error.message
        assert "70000" in error.message
    assert "250000" in refusal(body(amount="250001")).message


def test_nan_and_infinity_literals_are_not_json() -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        error = refusal(b'{"payout_id":"p","msisdn":"0712345678","amount":' + literal + b"}")
        assert error.field == "$"


@pytest.mark.parametrize("name", ["payout_id", "msisdn", "amount"])
def test_missing_required_field_is_named(name: str) -> None:
    assert refusal(body(**{name: DROP})).field == name


def test_unknown_field_is_named() -> None:
    error = refusal(body(callback_url="http://example.invalid"))
    assert error.field == "callback_url"
    assert "unknown" in error.message


@pytest.mark.parametrize("payout_id", ["", "x" * 65, "has space", "a/b", "é", "a\n", 12, None, ["a"]])
def test_bad_payout_ids(payout_id: Any) -> None:
    assert refusal(body(payout_id=payout_id)).field == "payout_id"


def test_payout_id_edges() -> None:
    allowed = "Az09._:-" + "x" * 56
    assert parse_command(body(payout_id=allowed)).payout_id == allowed


@pytest.mark.parametrize("name", ["SalaryPayment", "PromotionPayment", "BusinessPayment"])
def test_command_ids(name: str) -> None:
    assert parse_command(body(command=name)).command == CommandId(name)


@pytest.mark.parametrize("name", ["businesspayment", "B2C", "", None, 1])
def test_bad_command_ids(name: Any) -> None:
    assert refusal(body(command=name)).field == "command"


def test_remarks_and_occasion() -> None:
    command = parse_command(body(remarks="Refund 42 — asante 🎉", occasion="x" * 100))
    assert command.remarks == "Refund 42 — asante 🎉"
    assert command.occasion == "x" * 100
    assert parse_command(body(occasion="")).occasion is None
    assert parse_command(body(occasion=None)).occasion is None


@pytest.mark.parametrize("name", ["remarks", "occasion"])
@pytest.mark.parametrize("value", ["x" * 101, "line\nbreak", "tab\there", "nul\x00", "\u2028", "\x85", 5, ["a"]])
def test_bad_texts(name: str, value: Any) -> None:
    assert refusal(body(**{name: value})).field == name


def test_empty_remarks_refused() -> None:
    assert refusal(body(remarks="")).field == "remarks"
    assert refusal(body(remarks=None)).field == "remarks"


def test_lone_surrogate_is_refused() -> None:
    raw = b'{"payout_id":"p","msisdn":"0712345678","amount":100,"remarks":"a\\ud800b"}'
    assert refusal(raw).field == "remarks"
    raw = b'{"payout_id":"p","msisdn":"0712345678","amount":100,"metadata":{"k":"\\udfff"}}'
    assert refusal(raw).field == "metadata"


def test_metadata_is_kept_exactly() -> None:
    metadata = {"order": 42, "rate": Decimal("1.50"), "tags": ["a", None, True], "nested": {"z": {}}}
    command = parse_command(body(metadata=metadata))
    assert canonical_json(command.metadata) == canonical_json(metadata)
    assert command.metadata["rate"] == Decimal("1.50")


@pytest.mark.parametrize("value", [[], "x", 1, None])
def test_metadata_must_be_an_object(value: Any) -> None:
    assert refusal(body(metadata=value)).field == "metadata"


def test_metadata_size_limit() -> None:
    overhead = len(canonical_json({"k": ""}))
    fits = {"k": "x" * (MAX_METADATA_BYTES - overhead)}
    assert len(canonical_json(fits)) == MAX_METADATA_BYTES
    assert parse_command(body(metadata=fits)).metadata == fits
    error = refusal(body(metadata={"k": "x" * (MAX_METADATA_BYTES - overhead + 1)}))
    assert error.field == "metadata"
    assert str(MAX_METADATA_BYTES) in error.message
    # The limit is on UTF-8 bytes, not characters.
    assert refusal(body(metadata={"k": "é" * (MAX_METADATA_BYTES // 2)})).field == "metadata"


def test_metadata_depth_limit() -> None:
    def nested(depth: int) -> dict[str, Any]:
        value: dict[str, Any] = {}
        for _ in range(depth - 1):
            value = {"a": value}
        return value

    assert parse_command(body(metadata=nested(MAX_METADATA_DEPTH))).metadata == nested(MAX_METADATA_DEPTH)
    assert refusal(body(metadata=nested(MAX_METADATA_DEPTH + 1))).field == "metadata"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'"text"',
        b"42",
        b"null",
        b"\xff\xfe{}",
        b"\xef\xbb\xbf{}",
        '{"payout_id":"é"}'.encode("utf-16"),
        b'{"payout_id":"a","payout_id":"b","msisdn":"0712345678","amount":100}',
        b"[" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"payout_id":"p","msisdn":"0712345678","amount":1' + b"0" * 5000 + b"}",
    ],
)
def test_body_errors_use_dollar(raw: bytes) -> None:
    error = refusal(raw)
    assert error.field in {"$", "amount"}
    if not raw.startswith(b'{"payout_id":"p"'):
        assert error.field == "$"


def test_oversized_body() -> None:
    raw = body(remarks="x", metadata={"pad": "y" * MAX_COMMAND_BYTES})
    error = refusal(raw)
    assert error.field == "$"
    assert str(MAX_COMMAND_BYTES) in error.message


def test_fingerprint_ignores_spelling_not_content() -> None:
    base = parse_command(body(amount=100, msisdn="0712345678", metadata={"b": 1, "a": 2}))
    same = parse_command(
        b'{"metadata":{"a":2,"b":1},"amount":"100.00","msisdn":"+254712345678","payout_id":"inv-1",'
        b'"command":"BusinessPayment","remarks":"Payout"}'
    )
    assert same.fingerprint() == base.fingerprint()
    assert len(base.fingerprint()) == 64
    int(base.fingerprint(), 16)
    for change in (
        {"payout_id": "inv-2"},
        {"msisdn": "0712345679"},
        {"amount": "100.01"},
        {"command": "SalaryPayment"},
        {"remarks": "Payout "},
        {"occasion": "x"},
        {"metadata": {"b": 1, "a": 3}},
        {"metadata": {"b": 1, "a": 2, "c": None}},
        {"metadata": {"b": 1, "a": "2"}},
    ):
        other = {"amount": 100, "metadata": {"b": 1, "a": 2}, **change}
        assert parse_command(body(**other)).fingerprint() != base.fingerprint(), change


def test_stored_form_round_trips(make_command: Callable[..., PayoutCommand]) -> None:
    command = parse_command(
        body(amount="2500.5", occasion="Bonus", metadata={"r": Decimal("0.10"), "n": [1, {"x": "é"}]})
    )
    stored = command.to_json()
    assert loads_json(stored)["amount"] == "2500.50"
    loaded = PayoutCommand.from_json(stored)
    assert loaded == command
    assert loaded.fingerprint() == command.fingerprint()
    assert parse_command(stored) == command


def test_from_json_ignores_todays_limits() -> None:
    stored = parse_command(body(amount="5"), amount_min=Decimal("1")).to_json()
    assert PayoutCommand.from_json(stored).amount == Decimal("5.00")
    with pytest.raises(InvalidCommand):
        parse_command(stored)
    with pytest.raises(InvalidCommand) as caught:
        PayoutCommand.from_json(b'{"payout_id":"p","msisdn":"0712345678","amount":"0"}')
    assert caught.value.field == "amount"


def test_extract_payout_id() -> None:
    assert extract_payout_id(body(amount="1")) == "inv-1"
    assert extract_payout_id(body(payout_id="bad id")) is None
    assert extract_payout_id(b"[1]") is None
    assert extract_payout_id(b"\xff") is None
