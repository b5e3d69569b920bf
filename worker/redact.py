"""Masking of phone numbers, shared by events and logs: a full MSISDN never leaves the ledger."""

from __future__ import annotations

import re
from typing import Any

_MSISDN_IN_TEXT = re.compile(r"(?<![0-9])(\+?254|0)([17])([0-9]{6})([0-9]{2})(?![0-9])")


def mask_msisdn(msisdn: str) -> str:
    """Keep country and operator prefix and the last two digits (``2547******78``) so support can still
    tell numbers apart; anything unrecognised is masked but for its last two characters."""
    match = _MSISDN_IN_TEXT.fullmatch(msisdn)
    if match is not None:
        return _mask_match(match)
    if len(msisdn) <= 4:
        return "*" * len(msisdn)
    return "*" * (len(msisdn) - 2) + msisdn[-2:]


def mask_msisdns_in_text(text: str) -> str:
    """Mask every Kenyan mobile number (``254…``, ``+254…``, ``07…``, ``01…``) inside free text, e.g. an
    M-PESA result description or a log line."""
    return _MSISDN_IN_TEXT.sub(_mask_match, text)


def mask_msisdns_in_json(value: Any) -> Any:
    """Phone numbers masked in parsed JSON: masking its text would turn a number like 254712345678 into
    invalid JSON, so strings, keys and integers are masked one by one (a masked integer becomes a string)."""
    if isinstance(value, str):
        return mask_msisdns_in_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        masked = mask_msisdns_in_text(str(value))
        return value if masked == str(value) else masked
    if isinstance(value, dict):
        return {mask_msisdns_in_text(str(key)): mask_msisdns_in_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_msisdns_in_json(item) for item in value]
    return value


def _mask_match(match: re.Match[str]) -> str:
    prefix, operator, middle, last = match.groups()
    return f"{prefix}{operator}{'*' * len(middle)}{last}"
