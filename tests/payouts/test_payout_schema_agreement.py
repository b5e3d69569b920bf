"""The command schema and parse_command must agree, and untrusted bytes must never crash the parser."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from worker.errors import InvalidCommand
from worker.payouts.models import (
    COMMAND_FIELDS,
    DEFAULT_AMOUNT_MAX,
    DEFAULT_AMOUNT_MIN,
    PayoutCommand,
    canonical_json,
    loads_json,
    parse_command,
)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

digits = st.text(alphabet="0123456789", min_size=8, max_size=8)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6).map(Decimal)
    | st.decimals(min_value=-(10**9), max_value=10**9, allow_nan=False, places=3)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)

payout_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True) | st.text(max_size=70) | json_scalars

msisdns = (
    st.builds(lambda p, o, d: p + o + d, st.sampled_from(["0", "254", "+254"]), st.sampled_from("17"), digits)
    | st.builds(
        lambda p, o, d, tail: p + o + d + tail,
        st.sampled_from(["0", "254", "+254", "00254", "+0", "255", "", "+"]),
        st.sampled_from("1278 "),
        st.text(alphabet="0123456789", min_size=6, max_size=10),
        st.sampled_from(["", "\n", " ", "x", "0"]),
    )
    | json_scalars
)

cents = st.integers(min_value=-(10**8), max_value=10**9)
amount_numbers = st.builds(lambda c, e: Decimal(c).scaleb(-e), cents, st.integers(0, 4)) | st.sampled_from(
    [
        Decimal(v)
        for v in (
            "10",
            "9.99",
            "10.00",
            "250000",
            "250000.00",
            "250000.01",
            "250000.001",
            "1E+3",
            "1E+5",
            "2.5E+5",
            "2.50001E+5",
            "0.1E+2",
            "10.000",
            "10.001",
            "-0",
            "1E+20",
        )
    ]
)
amount_strings = (
    amount_numbers.map(str)
    | st.from_regex(r"[+-]?0?[0-9]{1,7}(\.[0-9]{0,3})?", fullmatch=True)
    | st.sampled_from(["250000.0", "250000.00", "250000.1", "249999.99", "09.5", "10.", "1e3", " 10", "10\n"])
)
amounts = amount_numbers | amount_strings | json_scalars

printable = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=110)
texts = printable | st.text(max_size=110) | st.sampled_from(["", "x" * 100, "x" * 101, "a\n", "\u2028"]) | json_scalars

commands = st.sampled_from(["BusinessPayment", "SalaryPayment", "PromotionPayment"]) | st.text(max_size=16)
metadata = st.dictionaries(st.text(max_size=6), json_values, max_size=4) | json_values

extra_names = st.text(min_size=1, max_size=12).filter(lambda n: n not in COMMAND_FIELDS)


valid_fields: dict[str, st.SearchStrategy[Any]] = {
    "payout_id": st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
    "msisdn": st.builds(
        lambda p, o, d: p + o + d, st.sampled_from(["0", "254", "+254"]), st.sampled_from("17"), digits
    ),
    # Whole cents from 10.00 to 250000.00, as numbers (sometimes in exponent form, e.g. 1E+3) or strings.
    "amount": st.builds(
        lambda cents, compact: Decimal(cents).scaleb(-2).normalize() if compact else Decimal(cents).scaleb(-2),
        st.integers(1000, 25_000_000),
        st.booleans(),
    )
    | st.integers(1000, 25_000_000).map(lambda cents: str(Decimal(cents).scaleb(-2)))
    | st.integers(10, 250_000).map(str),
    "command": st.sampled_from(["BusinessPayment", "SalaryPayment", "PromotionPayment"]),
    "remarks": st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=100),
    "occasion": st.none() | st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=100),
    "metadata": st.dictionaries(st.text(max_size=6), json_values, max_size=4),
}
any_fields: dict[str, st.SearchStrategy[Any]] = {
    "payout_id": payout_ids,
    "msisdn": msisdns,
    "amount": amounts,
    "command": commands,
    "remarks": texts,
    "occasion": texts,
    "metadata": metadata,
}
REQUIRED = ("payout_id", "msisdn", "amount")
coin = st.sampled_from([False] * 7 + [True])


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly-valid commands with, per field, a small chance of anything at all (often invalid)."""
    document: dict[str, Any] = {}
    for name in sorted(COMMAND_FIELDS):
        present = name in REQUIRED or draw(st.booleans())
        if name in REQUIRED and draw(coin) and draw(coin):
            present = False
        if present:
            document[name] = draw(any_fields[name] if draw(coin) else valid_fields[name])
    if draw(coin):
        document.update(draw(st.dictionaries(extra_names, json_scalars, min_size=1, max_size=2)))
    return document


valid_documents = st.fixed_dictionaries(
    {name: valid_fields[name] for name in REQUIRED},
    optional={name: valid_fields[name] for name in sorted(COMMAND_FIELDS) if name not in REQUIRED},
)


def schema_accepts(validator: Draft202012Validator, raw: bytes) -> bool:
    return bool(validator.is_valid(loads_json(raw)))


def parser_accepts(raw: bytes, document: dict[str, Any]) -> bool:
    try:
        parse_command(raw)
    except InvalidCommand as error:
        assert error.field in set(document) | {"payout_id", "msisdn", "amount"}, error
        return False
    return True


@SETTINGS
@given(document=documents())
@example(document={"payout_id": "p", "msisdn": "0712345678\n", "amount": 100})
@example(document={"payout_id": "p\n", "msisdn": "0712345678", "amount": 100})
@example(document={"payout_id": "p", "msisdn": "0712345678", "amount": "10\n"})
@example(document={"payout_id": "p", "msisdn": "0712345678", "amount": 100, "remarks": "x\n"})
@example(document={"payout_id": "p", "msisdn": "0712345678", "amount": Decimal("250000.001")})
@example(document={"payout_id": "p", "msisdn": "0712345678", "amount": Decimal("10.000")})
@example(document={"payout_id": "p", "msisdn": "0712345678", "amount": True})
def test_schema_and_parser_agree(command_validator: Draft202012Validator, document: dict[str, Any]) -> None:
    raw = canonical_json(document)
    assert parser_accepts(raw, document) == schema_accepts(command_validator, raw), raw


@SETTINGS
@given(document=valid_documents)
def test_valid_commands_are_accepted_by_both(command_validator: Draft202012Validator, document: dict[str, Any]) -> None:
    raw = canonical_json(document)
    assert schema_accepts(command_validator, raw)
    command = parse_command(raw)
    assert DEFAULT_AMOUNT_MIN <= command.amount <= DEFAULT_AMOUNT_MAX
    assert command.amount.as_tuple().exponent == -2
    stored = command.to_json()
    assert schema_accepts(command_validator, stored)
    assert PayoutCommand.from_json(stored) == command
    assert parse_command(stored).fingerprint() == command.fingerprint()


def test_the_schema_range_is_the_default_range(command_validator: Draft202012Validator) -> None:
    number = command_validator.schema["properties"]["amount"]["anyOf"][0]
    assert number["minimum"] == DEFAULT_AMOUNT_MIN
    assert number["maximum"] == DEFAULT_AMOUNT_MAX


def test_schema_example_is_a_valid_command(command_validator: Draft202012Validator) -> None:
    for example_document in command_validator.schema["examples"]:
        raw = canonical_json(example_document)
        assert schema_accepts(command_validator, raw)
        assert parse_command(raw).payout_id == example_document["payout_id"]


def only_invalid_command(raw: bytes) -> None:
    try:
        command = parse_command(raw)
    except InvalidCommand as error:
        assert isinstance(error.field, str)
        assert error.message
        return
    assert isinstance(command, PayoutCommand)
    assert command.to_json()


@settings(max_examples=600, deadline=None)
@given(raw=st.binary(max_size=300))
@example(raw=b"\x00")
@example(raw=b'{"amount":1e999999999}')
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    only_invalid_command(raw)


@settings(max_examples=400, deadline=None)
@given(value=json_values | st.dictionaries(st.sampled_from(sorted(COMMAND_FIELDS)), json_values))
def test_arbitrary_json_never_crashes(value: Any) -> None:
    only_invalid_command(canonical_json(value))


@settings(max_examples=300, deadline=None)
@given(document=valid_documents, data=st.data())
def test_mutated_bodies_never_crash(document: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(canonical_json(document))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    only_invalid_command(bytes(raw))
