"""OriginatorConversationID derivation and MSISDN masking."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.payouts.models import originator_conversation_id
from worker.redact import mask_msisdn, mask_msisdns_in_text

payout_ids = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)


def test_originator_conversation_id_shape() -> None:
    value = originator_conversation_id("600000", "mpesab2c", "inv-42")
    digest = hashlib.sha256(b"inv-42").hexdigest()[:32]
    assert value == f"600000_mpesab2c_{digest}"
    assert re.fullmatch(r"600000_mpesab2c_[0-9a-f]{32}", value)


@settings(max_examples=200, deadline=None)
@given(first=payout_ids, second=payout_ids)
def test_deterministic_and_distinct(first: str, second: str) -> None:
    a = originator_conversation_id("600000", "mpesab2c", first)
    assert a == originator_conversation_id("600000", "mpesab2c", first)
    assert len(a) <= 128
    b = originator_conversation_id("600000", "mpesab2c", second)
    assert (a == b) == (first == second)


def test_shortcode_and_org_take_part() -> None:
    ids = {
        originator_conversation_id("600000", "mpesab2c", "p"),
        originator_conversation_id("600001", "mpesab2c", "p"),
        originator_conversation_id("600000", "other", "p"),
    }
    assert len(ids) == 3


def test_long_org_name_is_cut_to_128() -> None:
    value = originator_conversation_id("6000000", "o" * 200, "p")
    assert len(value) == 128
    assert value.startswith("6000000_ooo")
    assert value.endswith("_" + hashlib.sha256(b"p").hexdigest()[:32])
    with pytest.raises(ValueError):
        originator_conversation_id("6" * 100, "org", "p")


@pytest.mark.parametrize(
    ("msisdn", "masked"),
    [
        ("254712345678", "2547******78"),
        ("254112345699", "2541******99"),
        ("0712345678", "07******78"),
        ("+254712345678", "+2547******78"),
        ("12345", "***45"),
        ("123", "***"),
    ],
)
def test_mask_msisdn(msisdn: str, masked: str) -> None:
    assert mask_msisdn(msisdn) == masked


@settings(max_examples=200, deadline=None)
@given(middle=st.text(alphabet="0123456789", min_size=8, max_size=8), operator=st.sampled_from("17"))
def test_mask_never_shows_the_middle(middle: str, operator: str) -> None:
    number = f"254{operator}{middle}"
    masked = mask_msisdn(number)
    assert masked == f"254{operator}******{middle[-2:]}"
    assert len(masked) == len(number)


def test_mask_in_text() -> None:
    text = (
        "Salary to 254712345678 and +254112345678, backup 0712345678 / 0112345678; "
        "ref 1254712345678 and 2547123456789 are not numbers, 600000 is a shortcode."
    )
    assert mask_msisdns_in_text(text) == (
        "Salary to 2547******78 and +2541******78, backup 07******78 / 01******78; "
        "ref 1254712345678 and 2547123456789 are not numbers, 600000 is a shortcode."
    )
    assert mask_msisdns_in_text("254712345678 - Jane Doe") == "2547******78 - Jane Doe"
    assert mask_msisdns_in_text("") == ""


@settings(max_examples=200, deadline=None)
@given(
    before=st.text(max_size=20).filter(lambda t: not t[-1:].isdigit()),
    after=st.text(max_size=20).filter(lambda t: not t[:1].isdigit()),
    prefix=st.sampled_from(["254", "+254", "0"]),
    operator=st.sampled_from("17"),
    middle=st.text(alphabet="0123456789", min_size=8, max_size=8),
)
def test_no_number_survives_masking(before: str, after: str, prefix: str, operator: str, middle: str) -> None:
    masked = mask_msisdns_in_text(f"{before}{prefix}{operator}{middle}{after}")
    assert f"{operator}{middle}" not in masked
    assert f"{prefix}{operator}******{middle[-2:]}" in masked
