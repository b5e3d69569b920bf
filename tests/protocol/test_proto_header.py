from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import ProtocolError
from worker.protocol.header import (
    header_timestamp,
    parse_transaction_timestamp,
    sp_password,
    transaction_timestamp,
    verify_sp_password,
)
from worker.settings import load_settings

NAIROBI = timezone(timedelta(hours=3))


def test_sp_password_matches_an_independently_computed_vector() -> None:
    # printf '600000Safaricom999!*!20240131103000' | sha256sum | tr a-f A-F | base64
    expected_upper = "OTAzMkJENjQ5OTQzQ0IwMzUyQUNFMjI3RjU0N0I1NDU1Nzk1N0NGRTBCQzAzQ0U1RDVERkQ3RUQ4RTQxOUY3RQ=="
    expected_lower = "OTAzMmJkNjQ5OTQzY2IwMzUyYWNlMjI3ZjU0N2I1NDU1Nzk1N2NmZTBiYzAzY2U1ZDVkZmQ3ZWQ4ZTQxOWY3ZQ=="
    assert sp_password("600000", "Safaricom999!*!", "20240131103000") == expected_upper
    assert sp_password("600000", "Safaricom999!*!", "20240131103000", uppercase=False) == expected_lower


@given(st.text(max_size=20), st.text(max_size=40), st.text(max_size=20), st.booleans())
def test_sp_password_is_base64_of_the_hex_text_of_sha256(
    sp_id: str, password: str, timestamp: str, uppercase: bool
) -> None:
    value = sp_password(sp_id, password, timestamp, uppercase=uppercase)
    decoded = base64.b64decode(value, validate=True).decode("ascii")
    digest = hashlib.sha256((sp_id + password + timestamp).encode("utf-8")).hexdigest()
    assert len(decoded) == 64
    assert decoded == (digest.upper() if uppercase else digest)
    assert base64.b64decode(value) != hashlib.sha256((sp_id + password + timestamp).encode()).digest()


def test_safaricom_example_has_the_shape_we_produce(g2_data: Path) -> None:
    # The SP password of the v1.5 trace is unknown, so only the construction's shape can be compared.
    text = (g2_data / "samples" / "g2_v15_09_queryTransaction_request_and_response.xml").read_text()
    match = re.search(r"<v2:spPassword>([^<]+)</v2:spPassword>", text)
    assert match is not None
    example = base64.b64decode(match.group(1), validate=True).decode("ascii")
    assert re.fullmatch(r"[0-9A-F]{64}", example)
    ours = base64.b64decode(sp_password("151515", "unknown", "20140730093620")).decode("ascii")
    assert re.fullmatch(r"[0-9A-F]{64}", ours)
    assert len(match.group(1)) == len(sp_password("151515", "unknown", "20140730093620"))


def test_verify_accepts_either_case_and_nothing_else() -> None:
    args = ("600000", "secret", "20240131103000")
    assert verify_sp_password(sp_password(*args), *args)
    assert verify_sp_password(sp_password(*args, uppercase=False), *args)
    assert verify_sp_password(f"  {sp_password(*args)}\n", *args)
    assert not verify_sp_password(sp_password("600000", "wrong", "20240131103000"), *args)
    assert not verify_sp_password(sp_password("600000", "secret", "20240131103001"), *args)
    assert not verify_sp_password("", *args)
    assert not verify_sp_password("é", *args)


def test_header_timestamp_is_utc_compact() -> None:
    assert header_timestamp(datetime(2024, 1, 31, 13, 30, 0, tzinfo=NAIROBI)) == "20240131103000"
    assert header_timestamp(datetime(2024, 1, 31, 10, 30, 0, tzinfo=UTC)) == "20240131103000"


def test_header_timestamp_in_nairobi_time_when_configured() -> None:
    moment = datetime(2024, 1, 31, 22, 30, 0, tzinfo=UTC)
    assert header_timestamp(moment, load_settings({"B2C_HEADER_TIMEZONE": "nairobi"}).mpesa.header_timezone) == (
        "20240201013000"
    )
    assert header_timestamp(moment, load_settings({}).mpesa.header_timezone) == "20240131223000"


def test_timestamps_refuse_naive_datetimes() -> None:
    with pytest.raises(ValueError):
        header_timestamp(datetime(2024, 1, 31, 10, 30))
    with pytest.raises(ValueError):
        transaction_timestamp(datetime(2024, 1, 31, 10, 30))


def test_transaction_timestamp_is_iso_utc_with_fraction() -> None:
    now = datetime(2014, 9, 27, 15, 53, 19, 52, tzinfo=NAIROBI)
    assert transaction_timestamp(now) == "2014-09-27T12:53:19.000052Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2014-09-27T12:53:19.0000521Z", datetime(2014, 9, 27, 12, 53, 19, 52, tzinfo=UTC)),
        ("2013-07-29T18:50:41.2109675Z", datetime(2013, 7, 29, 18, 50, 41, 210967, tzinfo=UTC)),
        ("2019-03-18T17:22:09.651011Z", datetime(2019, 3, 18, 17, 22, 9, 651011, tzinfo=UTC)),
        ("2019-03-18T17:22:09Z", datetime(2019, 3, 18, 17, 22, 9, tzinfo=UTC)),
        ("2019-03-18T17:22:09", datetime(2019, 3, 18, 17, 22, 9, tzinfo=UTC)),
        ("2019-03-18T20:22:09.5+03:00", datetime(2019, 3, 18, 17, 22, 9, 500000, tzinfo=UTC)),
        ("2019-03-18T20:22:09+0300", datetime(2019, 3, 18, 17, 22, 9, tzinfo=UTC)),
        (" 20140730093620 ", datetime(2014, 7, 30, 9, 36, 20, tzinfo=UTC)),
    ],
)
def test_parse_transaction_timestamp_accepts_wire_forms(text: str, expected: datetime) -> None:
    parsed = parse_transaction_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["", "yesterday", "2014-13-27T12:53:19Z", "20141327093620", "2014-09-27", "T12:00:00"])
def test_parse_transaction_timestamp_rejects_garbage(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_transaction_timestamp(text)


@given(st.datetimes(timezones=st.just(UTC)))
def test_transaction_timestamp_round_trips(now: datetime) -> None:
    assert parse_transaction_timestamp(transaction_timestamp(now)) == now


@given(st.datetimes(timezones=st.just(UTC)))
def test_header_timestamp_round_trips_to_the_second(now: datetime) -> None:
    assert parse_transaction_timestamp(header_timestamp(now)) == now.replace(microsecond=0)
