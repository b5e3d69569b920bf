"""The idempotency fingerprint: numbers in ``metadata`` compare by value, everything else exactly.

A payer's JSON library may re-serialise ``{"n": 1}`` as ``{"n": 1.0}``; were that a different payout, the
repeat of a paid command would be refused as a conflict. Metadata never changes what is paid (amount,
number, command, remarks and occasion are compared as they were), so treating equal numbers as equal
cannot merge two payouts that pay differently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker.payouts.models import canonical_json, parse_command

Draw = Callable[[st.SearchStrategy[Any]], Any]
SETTINGS = settings(max_examples=300, deadline=None)

numbers = st.decimals(allow_nan=False, allow_infinity=False) | st.integers(-(10**30), 10**30).map(Decimal)
leaves = st.none() | st.booleans() | st.text(max_size=6) | numbers
trees = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
metadatas = st.dictionaries(st.text(max_size=4), trees, max_size=4)


def spell_number(number: Decimal, draw: Draw) -> str:
    """Another JSON spelling of the same value: trailing zeros, an exponent, a signed zero."""
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    padding = draw(st.integers(0, 3))
    digits, exponent = (*digits, *(0,) * padding), exponent - padding
    style = draw(st.sampled_from(["decimal", "exponent", "shifted"]))
    minus = "-" if sign or (not any(digits) and draw(st.booleans())) else ""
    coefficient = str(int("".join(map(str, digits))))
    if style == "decimal":
        return minus + str(Decimal((0, digits, exponent)))
    if style == "exponent":
        return f"{minus}{coefficient}E{exponent}"
    shift = draw(st.integers(0, len(coefficient) - 1))
    head, tail = coefficient[: len(coefficient) - shift], coefficient[len(coefficient) - shift :]
    return f"{minus}{head}{'.' + tail if tail else ''}e{exponent + shift:+d}"


def spell(value: Any, draw: Draw) -> str:
    if isinstance(value, Decimal):
        return spell_number(value, draw)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {spell(v, draw)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(spell(v, draw) for v in value) + "]"
    return json.dumps(value)


def command_with(metadata_text: str) -> bytes:
    return (
        b'{"payout_id": "fp-1", "msisdn": "0712345678", "amount": "100", "metadata": ' + metadata_text.encode() + b"}"
    )


@SETTINGS
@given(metadata=metadatas, data=st.data())
def test_numbers_spelt_differently_fingerprint_the_same(metadata: dict[str, Any], data: st.DataObject) -> None:
    canonical = parse_command(command_with(canonical_json(metadata).decode()))
    respelt = parse_command(command_with(spell(metadata, data.draw)))
    assert respelt.fingerprint() == canonical.fingerprint()


@SETTINGS
@given(first=numbers, second=numbers)
@example(first=Decimal("1"), second=Decimal("1.0"))
@example(first=Decimal("-0"), second=Decimal("0E+5"))
def test_numbers_fingerprint_the_same_exactly_when_they_are_equal(first: Decimal, second: Decimal) -> None:
    one = parse_command(command_with(canonical_json({"n": first}).decode()))
    other = parse_command(command_with(canonical_json({"n": second}).decode()))
    assert (one.fingerprint() == other.fingerprint()) == (first == second)


@SETTINGS
@given(metadata=metadatas)
def test_the_metadata_itself_is_kept_as_spelt(metadata: dict[str, Any]) -> None:
    command = parse_command(command_with(canonical_json(metadata).decode()))
    assert canonical_json(command.metadata) == canonical_json(metadata)


def test_other_values_compare_exactly() -> None:
    base = parse_command(command_with('{"n": 1, "s": "x", "l": [1, 2], "b": true}')).fingerprint()
    for other in (
        '{"n": "1", "s": "x", "l": [1, 2], "b": true}',
        '{"n": 1, "s": "X", "l": [1, 2], "b": true}',
        '{"n": 1, "s": "x", "l": [2, 1], "b": true}',
        '{"n": 1, "s": "x", "l": [1, 2], "b": 1}',
        '{"n": 1, "s": "x", "l": [1, 2], "b": true, "c": null}',
        '{"n": 1.0000000000000000000000000000001, "s": "x", "l": [1, 2], "b": true}',
    ):
        assert parse_command(command_with(other)).fingerprint() != base, other


def test_huge_exponents_are_compared_without_expanding_them() -> None:
    one = parse_command(command_with('{"n": 1E+999999999}'))
    same = parse_command(command_with('{"n": 10.0E+999999998}'))
    assert one.fingerprint() == same.fingerprint()
    assert one.fingerprint() != parse_command(command_with('{"n": 1E+999999998}')).fingerprint()
