"""Every code of PROTOCOL §3 and §4, written out here independently of the implementation's tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.protocol.codes import (
    ResponseOutcome,
    ResultOutcome,
    classify_response_code,
    classify_result_code,
    describe_response_code,
    describe_result_code,
    result_category,
)

A, R, X, U = (
    ResponseOutcome.ACCEPTED,
    ResponseOutcome.RETRY_LATER,
    ResponseOutcome.REJECTED,
    ResponseOutcome.UNKNOWN,
)
RESPONSE_TABLE = [
    ("0", A),
    ("000000000", A),
    ("00000000", A),
    (" 0 ", A),
    ("100000000", A),
    ("100000001", R),
    ("100000002", R),
    ("100000003", R),
    ("100000011", R),
    ("26", R),
    ("100000004", U),
    ("100000005", X),
    ("100000014", X),
    ("23", X),
    ("24", X),
    ("25", X),
    ("30", X),
    ("100000006", X),
    ("100000007", X),
    ("100000008", X),
    ("100000009", X),
    ("100000010", X),
    ("100000012", X),
    ("100000013", X),
]

C, F, D, N, NF, UR = (
    ResultOutcome.COMPLETED,
    ResultOutcome.FAILED,
    ResultOutcome.DUPLICATE,
    ResultOutcome.NOT_PROCESSED,
    ResultOutcome.NOT_FOUND,
    ResultOutcome.UNKNOWN,
)
RESULT_TABLE = [
    ("0", C, None),
    ("00000000", C, None),
    ("1", F, "funds"),
    ("2", F, "limits"),
    ("3", F, "limits"),
    ("4", F, "limits"),
    ("5", F, "funds"),
    *[(code, F, "party") for code in ("6", "7", "11", "12", "13", "14", "33", "34", "35", "36")],
    ("8", F, "limits"),
    ("15", D, None),
    ("41", D, None),
    ("17", UR, None),
    ("45", UR, None),
    *[(code, F, "credential") for code in ("18", "20", "21", "22", "28", "31", "32", "44", "48", "50")],
    ("19", F, "expired"),
    ("26", N, None),
    ("49", NF, None),
]


@pytest.mark.parametrize(("code", "outcome"), RESPONSE_TABLE)
def test_response_codes(code: str, outcome: ResponseOutcome) -> None:
    assert classify_response_code(code) is outcome
    assert describe_response_code(code) != "unlisted response code"


@pytest.mark.parametrize("code", ["", "ResponseCode0", "100000015", "99", "1", "-0", "0x0", "\u0660"])
def test_unlisted_response_codes_are_unknown(code: str) -> None:
    assert classify_response_code(code) is ResponseOutcome.UNKNOWN
    assert describe_response_code(code) == "unlisted response code"


@pytest.mark.parametrize(("code", "outcome", "category"), RESULT_TABLE)
def test_result_codes(code: str, outcome: ResultOutcome, category: str | None) -> None:
    assert classify_result_code(code) is outcome
    assert result_category(code) == category
    assert describe_result_code(code) != "unlisted result code"


@pytest.mark.parametrize("code", ["", "9", "10", "16", "27", "51", "2001", "SFC_IC0003", "abc"])
def test_unlisted_result_codes_are_unknown(code: str) -> None:
    assert classify_result_code(code) is ResultOutcome.UNKNOWN
    assert result_category(code) is None
    assert describe_result_code(code) == "unlisted result code"


def test_every_listed_result_code_between_0_and_50_is_covered() -> None:
    listed = {int(code) for code, _, _ in RESULT_TABLE}
    for code in range(51):
        expected_unknown = code not in listed or code in (17, 45)
        assert (classify_result_code(str(code)) is ResultOutcome.UNKNOWN) is expected_unknown, code


@given(st.text(max_size=30))
def test_classifiers_are_total(code: str) -> None:
    assert classify_response_code(code) in ResponseOutcome
    assert classify_result_code(code) in ResultOutcome
    assert isinstance(describe_response_code(code), str)
    assert isinstance(describe_result_code(code), str)
