"""The SOAP header's authentication values and the two timestamp formats the interface uses.

The header's ``spPassword`` is Safaricom's own construction (base64 of the *hex text* of a SHA-256 digest,
not of the raw digest), so it lives here next to the timestamps it is computed from.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import UTC, datetime, tzinfo

from worker.errors import ProtocolError

_HEADER_FORMAT = "%Y%m%d%H%M%S"
_ISO_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<time>\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<fraction>\d{1,9}))?(?P<zone>Z|[+-]\d{2}:?\d{2})?$"
)
_COMPACT_RE = re.compile(r"^\d{14}$")


def sp_password(sp_id: str, password: str, timestamp: str, *, uppercase: bool = True) -> str:
    """Safaricom's example decodes to uppercase hex; which case the gateway checks is unconfirmed."""
    hex_digest = hashlib.sha256(f"{sp_id}{password}{timestamp}".encode()).hexdigest()
    if uppercase:
        hex_digest = hex_digest.upper()
    return base64.b64encode(hex_digest.encode("ascii")).decode("ascii")


def verify_sp_password(candidate: str, sp_id: str, password: str, timestamp: str) -> bool:
    """A server accepts either hex case, since real clients send both."""
    given = candidate.strip().encode("utf-8")
    matches = [
        hmac.compare_digest(given, sp_password(sp_id, password, timestamp, uppercase=upper).encode("ascii"))
        for upper in (True, False)
    ]
    return any(matches)


def _as_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        # A naive clock reading could be Nairobi or UTC; guessing would shift the stamp by three hours.
        raise ValueError("timestamps need an aware datetime")
    return now.astimezone(UTC)


def header_timestamp(now: datetime, zone: tzinfo = UTC) -> str:
    """``yyyyMMddHHmmss``, in UTC as the header XSD documents unless told otherwise (B2C_HEADER_TIMEZONE)."""
    local = _as_utc(now).astimezone(zone)
    return f"{local.year:04d}{local:%m%d%H%M%S}"


def transaction_timestamp(now: datetime) -> str:
    """ISO 8601 UTC with fraction, the form of Safaricom's examples; the gateway rejects stale ones (19)."""
    return _as_utc(now).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_transaction_timestamp(value: str) -> datetime:
    """Accept every stamp seen on the wire: ISO with or without fraction/zone, or ``yyyyMMddHHmmss`` (UTC)."""
    text = value.strip()
    if _COMPACT_RE.match(text):
        try:
            return datetime.strptime(text, _HEADER_FORMAT).replace(tzinfo=UTC)
        except ValueError as exc:
            raise ProtocolError(f"invalid timestamp {text[:40]!r}") from exc
    match = _ISO_RE.match(text)
    if match is None:
        raise ProtocolError(f"invalid timestamp {text[:40]!r}")
    # .NET writes seven fractional digits; datetime holds six.
    fraction = (match["fraction"] or "0")[:6].ljust(6, "0")
    zone = match["zone"] or "Z"
    if zone == "Z":
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        parsed = datetime.fromisoformat(f"{match['date']}T{match['time']}.{fraction}{zone}")
    except ValueError as exc:
        raise ProtocolError(f"invalid timestamp {text[:40]!r}") from exc
    return parsed.astimezone(UTC)
