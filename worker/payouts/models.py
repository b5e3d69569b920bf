"""Payout commands and events: the worker's contract with the payer, and the payout status machine.

A command is untrusted input from the queue, so :func:`parse_command` is the single gate: it accepts exactly
what ``schemas/payout-command.schema.json`` accepts (a property test keeps the two in step) and names the
offending field in :class:`~worker.errors.InvalidCommand`. A few limits only the parser can enforce (JSON
Schema cannot express them): the body size, duplicate keys, lone surrogates, and the serialized size and
nesting depth of ``metadata``.

Amounts are exact decimals end to end: JSON numbers are read as :class:`~decimal.Decimal`, never ``float``.
Because ``metadata`` may hold such numbers, everything this module produces is serialized with
:func:`canonical_json` (the standard ``json.dumps`` cannot write a ``Decimal``).

Events are derived from the ledger (:func:`build_event`) and routed by :func:`event_routing_key` to one of
five keys: ``payout.accepted``, ``payout.rejected``, ``payout.unknown``, ``payout.completed``,
``payout.failed``. A command refused because a payout is already recorded under its payout_id (it conflicts
with that payout, or is invalid) is not news about that payout, which may be accepted or paid: it is a
:func:`build_refusal` on ``command.refused``, with no ``status`` a payer could read as the payout's.

A repeated command (same ``payout_id``, same content) is answered with an event carrying
``"duplicate": true`` and the payout's *current* status. A payout that is still ``received`` or ``sending``
has had no answer from M-PESA yet; for a payer both mean what ``payout.accepted`` means: "we have it, it
will be paid at most once, wait for completed/failed, nothing to do". So those two statuses route to
``payout.accepted`` (the event's ``status`` field stays precise). Not ``payout.unknown``: that one says the
money may have moved and is being looked up, a false alarm for a payout that simply has not been answered yet.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Context, Decimal
from enum import StrEnum
from typing import Any

from worker.errors import InvalidCommand
from worker.redact import mask_msisdn, mask_msisdns_in_text

DEFAULT_AMOUNT_MIN = Decimal("10")
DEFAULT_AMOUNT_MAX = Decimal("250000")
DEFAULT_REMARKS = "Payout"
MAX_COMMAND_BYTES = 64 * 1024
MAX_TEXT_LENGTH = 100
MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 16
MAX_EVENT_MESSAGE_LENGTH = 500
MAX_ORIGINATOR_CONVERSATION_ID_LENGTH = 128

_CENT = Decimal("0.01")
_WIDE = Context(prec=100)
_PAYOUT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_MSISDN = re.compile(r"(?:\+?254|0)([17][0-9]{8})")
_AMOUNT_TEXT = re.compile(r"(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{1,2})?")
# "Printable" here means: safe in the XML request and a single line; no C0/C1 controls, no line or
# paragraph separators, no non-characters. Lone surrogates are refused separately (not valid UTF-8).
_NOT_PRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufffe\uffff\ud800-\udfff]")

COMMAND_FIELDS = frozenset({"payout_id", "msisdn", "amount", "command", "remarks", "occasion", "metadata"})
_REQUIRED_FIELDS = ("payout_id", "msisdn", "amount")


class PayoutStatus(StrEnum):
    RECEIVED = "received"
    SENDING = "sending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    COMPLETED = "completed"
    FAILED = "failed"


FINAL_STATUSES: frozenset[PayoutStatus] = frozenset(
    {PayoutStatus.REJECTED, PayoutStatus.COMPLETED, PayoutStatus.FAILED}
)

# ``sending -> received`` is the "certainly not processed, try again later" path; ``sending -> completed``
# and ``unknown -> completed`` happen when the result callback overtakes the synchronous answer.
_TRANSITIONS: Mapping[PayoutStatus, frozenset[PayoutStatus]] = {
    PayoutStatus.RECEIVED: frozenset({PayoutStatus.SENDING}),
    PayoutStatus.SENDING: frozenset(
        {
            PayoutStatus.ACCEPTED,
            PayoutStatus.REJECTED,
            PayoutStatus.UNKNOWN,
            PayoutStatus.RECEIVED,
            PayoutStatus.COMPLETED,
            PayoutStatus.FAILED,
        }
    ),
    PayoutStatus.UNKNOWN: frozenset(
        {PayoutStatus.SENDING, PayoutStatus.ACCEPTED, PayoutStatus.COMPLETED, PayoutStatus.FAILED}
    ),
    PayoutStatus.ACCEPTED: frozenset({PayoutStatus.COMPLETED, PayoutStatus.FAILED, PayoutStatus.UNKNOWN}),
    PayoutStatus.REJECTED: frozenset(),
    PayoutStatus.COMPLETED: frozenset(),
    PayoutStatus.FAILED: frozenset(),
}


def can_transition(old: PayoutStatus | str, new: PayoutStatus | str) -> bool:
    """Whether the ledger may move a payout from ``old`` to ``new``; staying put is not a transition."""
    return PayoutStatus(new) in _TRANSITIONS[PayoutStatus(old)]


class CommandId(StrEnum):
    BUSINESS_PAYMENT = "BusinessPayment"
    SALARY_PAYMENT = "SalaryPayment"
    PROMOTION_PAYMENT = "PromotionPayment"


class RejectionReason(StrEnum):
    """Why a payout was rejected (nothing was or will be paid under its payout_id); a closed set so payers can
    branch on it (add members, never rename). ``idempotency_conflict`` moved to :class:`RefusalReason`: it
    says nothing about the payout recorded under that id."""

    INVALID_COMMAND = "invalid_command"
    MPESA_REJECTED = "mpesa_rejected"
    DELIVERY_LIMIT = "delivery_limit"


class RefusalReason(StrEnum):
    """Why a command was refused while a payout is recorded under its payout_id; that payout is untouched."""

    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    INVALID_COMMAND = "invalid_command"


class UnknownReason(StrEnum):
    """Why the outcome is in doubt (the payout may or may not have been paid; it will be looked up)."""

    NO_RESPONSE = "no_response"
    UNRECOGNISED_RESPONSE = "unrecognised_response"
    UNCLASSIFIED_RESULT = "unclassified_result"
    QUEUE_TIMEOUT = "queue_timeout"
    DUPLICATE_REQUEST = "duplicate_request"


class FailureReason(StrEnum):
    """The family of a failed result code (``result_category`` in worker.protocol.codes)."""

    FUNDS = "funds"
    LIMITS = "limits"
    PARTY = "party"
    CREDENTIAL = "credential"
    EXPIRED = "expired"


_REASONS_BY_STATUS: Mapping[PayoutStatus, frozenset[str]] = {
    PayoutStatus.REJECTED: frozenset(RejectionReason),
    PayoutStatus.UNKNOWN: frozenset(UnknownReason),
    PayoutStatus.FAILED: frozenset(FailureReason),
}


# --------------------------------------------------------------------------------------------- JSON


def canonical_json(value: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys, writing ``Decimal`` exactly; the one serializer for commands and
    events, so fingerprints and stored bodies are byte-stable. Raises ValueError/TypeError for what JSON
    cannot carry (NaN, non-string keys, lone surrogates, other types)."""
    parts: list[str] = []
    _encode(value, parts, 0)
    return "".join(parts).encode("utf-8")


def _encode(value: Any, out: list[str], depth: int) -> None:  # noqa: C901 - one branch per JSON type of the canonical encoding
    if depth > 64:
        raise ValueError("nested too deeply")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        out.append(str(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a JSON number")
        out.append(repr(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for index, key in enumerate(sorted(value)):
            if not isinstance(key, str):
                raise TypeError(f"object key {key!r} is not a string")
            if index:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _encode(value[key], out, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out, depth + 1)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")


def loads_json(body: bytes | str) -> Any:
    """Parse JSON the way this package does everywhere: every number becomes an exact ``Decimal``, NaN and
    Infinity are refused, duplicate object keys are refused. Raises ValueError (incl. UnicodeDecodeError)."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    return json.loads(
        text,
        parse_float=Decimal,
        parse_int=Decimal,
        parse_constant=_refuse_constant,
        object_pairs_hook=_unique_keys,
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


# ------------------------------------------------------------------------------------------ MSISDNs


def normalise_msisdn(raw: str) -> str:
    """``07…``/``01…``/``+254…``/``254…`` to ``2547XXXXXXXX``/``2541XXXXXXXX``; ValueError otherwise (the
    message never repeats the number)."""
    match = _MSISDN.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        raise ValueError("not a Kenyan mobile number (07XXXXXXXX, 01XXXXXXXX, 2547XXXXXXXX or +2547XXXXXXXX)")
    return "254" + match.group(1)


# ----------------------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class PayoutCommand:
    """A validated payout request; ``msisdn`` is normalised and ``amount`` has exactly two decimals."""

    payout_id: str
    msisdn: str
    amount: Decimal
    command: CommandId = CommandId.BUSINESS_PAYMENT
    remarks: str = DEFAULT_REMARKS
    occasion: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    def content(self) -> dict[str, Any]:
        """The command as a JSON object that is itself a valid command (and what ``to_json`` stores)."""
        return {
            "payout_id": self.payout_id,
            "msisdn": self.msisdn,
            "amount": format_amount(self.amount),
            "command": str(self.command),
            "remarks": self.remarks,
            "occasion": self.occasion,
            "metadata": self.metadata,
        }

    def fingerprint(self) -> str:
        """SHA-256 hex of the canonical content: equal for the same payout however the payer spelt the
        number or the amount (``100`` and ``"100.00"``) or a number in the metadata (``1`` and ``1.0``: a
        payer's JSON library may re-serialise it, and a conflict would refuse a true repeat), different if
        any field or any metadata value differs."""
        content = {**self.content(), "metadata": same_numbers(self.metadata)}
        return hashlib.sha256(canonical_json(content)).hexdigest()

    def to_json(self) -> bytes:
        return canonical_json(self.content())

    @classmethod
    def from_json(cls, body: bytes) -> PayoutCommand:
        """Load a command stored by ``to_json``. The amount limits are not applied again: they guarded the
        command when it arrived and may have changed since. Raises InvalidCommand if the body is corrupt."""
        return _parse(body, None, None)


def same_numbers(value: Any) -> Any:
    """``value`` with every number replaced by one spelling of its value (``1``, ``1.0``, ``10E-1`` and
    ``-0.0E3``/``0`` alike), without expanding exponents (``1E+999999`` stays short). Other JSON values are
    kept as they are: strings, keys, booleans and null compare exactly, arrays in order."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return _one_spelling(Decimal(value))
    if isinstance(value, float):
        return _one_spelling(Decimal(repr(value))) if math.isfinite(value) else value
    if isinstance(value, Decimal):
        return _one_spelling(value)
    if isinstance(value, Mapping):
        return {key: same_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [same_numbers(item) for item in value]
    return value


def _one_spelling(number: Decimal) -> Decimal:
    if not number.is_finite():
        return number  # canonical_json refuses it
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    if not any(digits):
        return Decimal(0)
    kept = len(digits)
    while digits[kept - 1] == 0:
        kept -= 1
    return Decimal((int(number.is_signed()), digits[:kept], exponent + len(digits) - kept))


def format_amount(amount: Decimal) -> str:
    """Two decimals, no exponent (``"1500.00"``): the form used in storage, events and the request."""
    return f"{amount.quantize(_CENT, context=_WIDE):f}"


def parse_command(
    body: bytes, *, amount_min: Decimal = DEFAULT_AMOUNT_MIN, amount_max: Decimal = DEFAULT_AMOUNT_MAX
) -> PayoutCommand:
    """Validate an untrusted command body; raises only InvalidCommand (field ``$`` for the body itself)."""
    return _parse(body, amount_min, amount_max)


def parse_repeat(body: bytes) -> PayoutCommand:
    """Validate an untrusted command whose payout_id is already recorded, by the rules that do not change.

    The recorded command is authoritative: it passed the amount limits when it arrived, and a repeat of it
    (a redelivery, a replay) is answered as that payout even if the limits were narrowed since. Whether the
    repeat is the same payout is the fingerprint's business. Raises only InvalidCommand.
    """
    return _parse(body, None, None)


def extract_payout_id(body: bytes) -> str | None:
    """Best-effort ``payout_id`` of a command that failed validation, so its rejection event can still be
    correlated by the payer; None unless the body is a JSON object with a well-formed ``payout_id``."""
    try:
        document = _load_body(body)
    except InvalidCommand:
        return None
    candidate = document.get("payout_id")
    return candidate if valid_payout_id(candidate) else None


def valid_payout_id(value: Any) -> bool:
    return isinstance(value, str) and _PAYOUT_ID.fullmatch(value) is not None


def _load_body(body: bytes) -> dict[str, Any]:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise InvalidCommand("$", "the command must be a UTF-8 JSON object")
    if len(body) > MAX_COMMAND_BYTES:
        raise InvalidCommand("$", f"the command is larger than {MAX_COMMAND_BYTES} bytes")
    try:
        document = loads_json(bytes(body))
    except UnicodeDecodeError:
        raise InvalidCommand("$", "the command is not UTF-8") from None
    except (ValueError, RecursionError, ArithmeticError) as exc:
        raise InvalidCommand("$", f"the command is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(document, dict):
        raise InvalidCommand("$", "the command must be a JSON object")
    return document


def _parse(body: bytes, amount_min: Decimal | None, amount_max: Decimal | None) -> PayoutCommand:
    document = _load_body(body)
    for name in document:
        if name not in COMMAND_FIELDS:
            raise InvalidCommand(name[:100], f"unknown field {name[:100]!r}")
    for name in _REQUIRED_FIELDS:
        if name not in document:
            raise InvalidCommand(name, "is required")

    payout_id = document["payout_id"]
    if not valid_payout_id(payout_id):
        raise InvalidCommand("payout_id", "must be 1 to 64 characters of A-Z a-z 0-9 . _ : -")

    try:
        msisdn = normalise_msisdn(document["msisdn"])
    except ValueError as exc:
        raise InvalidCommand("msisdn", str(exc)) from None

    amount = _parse_amount(document["amount"], amount_min, amount_max)

    command_name = document.get("command", CommandId.BUSINESS_PAYMENT.value)
    if not isinstance(command_name, str) or command_name not in CommandId._value2member_map_:
        raise InvalidCommand("command", f"must be one of {', '.join(CommandId)}")

    remarks = document.get("remarks", DEFAULT_REMARKS)
    _check_text("remarks", remarks, minimum=1)
    occasion = document.get("occasion")
    if occasion is not None:
        _check_text("occasion", occasion, minimum=0)

    metadata = document.get("metadata", {})
    _check_metadata(metadata)

    return PayoutCommand(
        payout_id=payout_id,
        msisdn=msisdn,
        amount=amount,
        command=CommandId(command_name),
        remarks=remarks,
        occasion=occasion or None,
        metadata=metadata,
    )


def _parse_amount(value: Any, minimum: Decimal | None, maximum: Decimal | None) -> Decimal:
    if isinstance(value, str):
        if _AMOUNT_TEXT.fullmatch(value) is None:
            raise InvalidCommand("amount", 'a string amount must look like "1500" or "1500.50"')
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    else:
        raise InvalidCommand("amount", "must be a number or a numeric string")
    if not amount.is_finite():
        raise InvalidCommand("amount", "must be a finite number")
    if minimum is not None and maximum is not None:
        if not minimum <= amount <= maximum:
            raise InvalidCommand("amount", f"must be between {minimum} and {maximum} KES")
    elif amount <= 0 or amount.adjusted() > 20:
        raise InvalidCommand("amount", "must be a positive amount")
    if not _at_most_two_decimals(amount):
        raise InvalidCommand("amount", "must have at most 2 decimal places")
    return amount.quantize(_CENT, context=_WIDE)


def _at_most_two_decimals(amount: Decimal) -> bool:
    # Exact, context-free: digits beyond the second decimal must all be zero (so 100.000 is 100.00).
    _, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)
    extra = -exponent - 2
    return extra <= 0 or all(digit == 0 for digit in digits[-extra:])


def _check_text(name: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, str):
        raise InvalidCommand(name, "must be a string")
    if not minimum <= len(value) <= MAX_TEXT_LENGTH:
        raise InvalidCommand(name, f"must be {minimum} to {MAX_TEXT_LENGTH} characters")
    if _NOT_PRINTABLE.search(value):
        raise InvalidCommand(name, "must not contain control characters or line breaks")


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise InvalidCommand("metadata", "must be a JSON object")
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise InvalidCommand("metadata", f"must not be nested deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    try:
        size = len(canonical_json(metadata))
    except ValueError:
        raise InvalidCommand("metadata", "must be valid UTF-8 JSON") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidCommand("metadata", f"must be at most {MAX_METADATA_BYTES} bytes serialized")


# ------------------------------------------------------------------------------ ids and the ledger row


def originator_conversation_id(shortcode: str, org_name: str, payout_id: str) -> str:
    """M-PESA's idempotency key, derived from the payout alone so every resend reuses it (PROTOCOL §5).
    An over-long org name is cut so the id stays within 128 characters."""
    digest = hashlib.sha256(payout_id.encode("utf-8")).hexdigest()[:32]
    room = MAX_ORIGINATOR_CONVERSATION_ID_LENGTH - len(shortcode) - len(digest) - 2
    if room < 1:
        raise ValueError("the shortcode is too long for an OriginatorConversationID")
    return f"{shortcode}_{org_name[:room]}_{digest}"


@dataclass(frozen=True)
class Payout:
    """The ledger's view of one payout (one row); ``final_details`` is the event ``result`` object."""

    payout_id: str
    command: PayoutCommand
    fingerprint: str
    originator_conversation_id: str
    status: PayoutStatus
    conversation_id: str | None
    send_attempts: int
    response_code: str | None
    response_desc: str | None
    result_code: str | None
    result_desc: str | None
    receipt: str | None
    reason: str | None
    created_at: datetime
    updated_at: datetime
    final_details: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


# ------------------------------------------------------------------------------------------- events

_ROUTING_KEYS: Mapping[PayoutStatus, str] = {
    PayoutStatus.RECEIVED: "payout.accepted",
    PayoutStatus.SENDING: "payout.accepted",
    PayoutStatus.ACCEPTED: "payout.accepted",
    PayoutStatus.REJECTED: "payout.rejected",
    PayoutStatus.UNKNOWN: "payout.unknown",
    PayoutStatus.COMPLETED: "payout.completed",
    PayoutStatus.FAILED: "payout.failed",
}
ROUTING_KEYS: frozenset[str] = frozenset(_ROUTING_KEYS.values())
COMMAND_REFUSED_KEY = "command.refused"
# What a payer binds to hear everything: the payouts' own events, and refusals of commands.
EVENT_BINDINGS: tuple[str, ...] = ("payout.#", "command.#")


def event_routing_key(status: PayoutStatus | str) -> str:
    """One of the five ``payout.*`` keys; not-yet-answered statuses go to ``payout.accepted`` (module doc)."""
    return _ROUTING_KEYS[PayoutStatus(status)]


def isoformat_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` (``2024-05-01T09:30:00.000000Z``); naive datetimes are a bug."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a naive datetime has no defined instant")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def result_summary(
    *,
    code: str,
    description: str | None,
    receipt: str | None = None,
    amount: Decimal | None = None,
    recipient_name: str | None = None,
    completed_at: datetime | None = None,
    working_balance: Decimal | None = None,
    utility_balance: Decimal | None = None,
    charges_balance: Decimal | None = None,
    registered: bool | None = None,
) -> dict[str, Any]:
    """The event's ``result`` object (JSON-ready; what the ledger keeps as ``Payout.final_details``).
    Descriptions and the recipient name are masked: M-PESA puts the full MSISDN into them."""
    return {
        "code": code,
        "description": _masked(description),
        "receipt": receipt,
        "amount": None if amount is None else format_amount(amount),
        "recipient_name": _masked(recipient_name),
        "completed_at": None if completed_at is None else isoformat_utc(completed_at),
        "balances": {
            "working": None if working_balance is None else format_amount(working_balance),
            "utility": None if utility_balance is None else format_amount(utility_balance),
            "charges": None if charges_balance is None else format_amount(charges_balance),
        },
        "registered": registered,
    }


def _masked(text: str | None) -> str | None:
    return None if text is None else mask_msisdns_in_text(text)


def _normalise_result(result: Mapping[str, Any]) -> dict[str, Any]:
    balances = result.get("balances") or {}

    def money(value: Any) -> Decimal | None:
        return None if value is None else Decimal(value)

    def moment(value: Any) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        return datetime.fromisoformat(str(value))

    return result_summary(
        code=str(result["code"]),
        description=result.get("description"),
        receipt=result.get("receipt"),
        amount=money(result.get("amount")),
        recipient_name=result.get("recipient_name"),
        completed_at=moment(result.get("completed_at")),
        working_balance=money(balances.get("working")),
        utility_balance=money(balances.get("utility")),
        charges_balance=money(balances.get("charges")),
        registered=result.get("registered"),
    )


def build_event(  # noqa: C901 - checks an event against its closed vocabulary before it exists
    payout: Payout | None,
    *,
    status: PayoutStatus,
    duplicate: bool = False,
    reason: str | None = None,
    message: str | None = None,
    payout_id: str | None = None,
    result: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    command: PayoutCommand | None = None,
) -> dict[str, Any]:
    """An event valid against ``schemas/payout-event.schema.json``; serialize it with canonical_json.

    ``payout`` is None when there is no ledger row to describe: an invalid command for a payout_id nothing
    is recorded under (pass ``payout_id`` if :func:`extract_payout_id` found one, or the ``command``). A
    command refused because of a recorded payout is :func:`build_refusal`'s, never this. ``result`` defaults to
    ``payout.final_details``. A reason that does not belong to the status raises ValueError: reasons are a
    closed vocabulary payers branch on.
    """
    status = PayoutStatus(status)
    if not duplicate and status in (PayoutStatus.RECEIVED, PayoutStatus.SENDING):
        raise ValueError(f"only a duplicate answer can report status {status}")
    subject = payout.command if payout is not None else command
    if payout is not None:
        if payout_id is not None and payout_id != payout.payout_id:
            raise ValueError("payout_id does not match the payout")
        payout_id = payout.payout_id
    elif payout_id is None and subject is not None:
        payout_id = subject.payout_id
    if payout_id is not None and not valid_payout_id(payout_id):
        payout_id = None

    allowed = _REASONS_BY_STATUS.get(status, frozenset())
    if reason is None and payout is not None and payout.status == status and payout.reason in allowed:
        reason = payout.reason
    if reason is not None and reason not in allowed:
        raise ValueError(f"reason {reason!r} is not one of {sorted(allowed)} for status {status}")
    if reason is None and status is PayoutStatus.REJECTED:
        raise ValueError("a rejection needs a reason")

    if result is None and payout is not None:
        result = payout.final_details
        if result is None and payout.result_code is not None:
            result = {"code": payout.result_code, "description": payout.result_desc}
    response = None
    if payout is not None and payout.response_code is not None:
        response = {"code": payout.response_code, "description": _masked(payout.response_desc)}

    return {
        "event_id": str(uuid.uuid4()),
        "payout_id": payout_id,
        "status": str(status),
        "duplicate": duplicate,
        "occurred_at": isoformat_utc(now if now is not None else datetime.now(UTC)),
        "created_at": None if payout is None else isoformat_utc(payout.created_at),
        "originator_conversation_id": None if payout is None else payout.originator_conversation_id,
        "conversation_id": None if payout is None else payout.conversation_id,
        "amount": None if subject is None else format_amount(subject.amount),
        "command": None if subject is None else str(subject.command),
        "msisdn_masked": None if subject is None else mask_msisdn(subject.msisdn),
        "reason": None if reason is None else str(reason),
        "message": None if message is None else (_masked(message) or "")[:MAX_EVENT_MESSAGE_LENGTH],
        "response": response,
        "result": None if result is None else _normalise_result(result),
        "metadata": {} if subject is None else subject.metadata,
    }


def build_refusal(
    recorded: Payout,
    *,
    reason: RefusalReason | str,
    message: str,
    command: PayoutCommand | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A ``command.refused`` event (``schemas/command-refused.schema.json``): a command was refused because
    ``recorded`` exists under its payout_id; that payout is untouched and keeps its own events.

    It has no ``status``: a payer that keys events by payout_id must not read a refusal as the payout's
    fate (a conflicting command for a paid payout is not "not paid"). ``recorded_status`` is for
    information only. ``command`` is the refused command when it was readable (None for an invalid one).
    """
    reason = RefusalReason(reason)
    if reason is RefusalReason.IDEMPOTENCY_CONFLICT and command is None:
        raise ValueError("a conflict is described by the refused command")
    refused = None
    if command is not None:
        refused = {
            "amount": format_amount(command.amount),
            "command": str(command.command),
            "msisdn_masked": mask_msisdn(command.msisdn),
            "metadata": command.metadata,
        }
    return {
        "event_id": str(uuid.uuid4()),
        "kind": COMMAND_REFUSED_KEY,
        "payout_id": recorded.payout_id,
        "reason": str(reason),
        "message": (_masked(message) or "")[:MAX_EVENT_MESSAGE_LENGTH],
        "occurred_at": isoformat_utc(now if now is not None else datetime.now(UTC)),
        "recorded_status": str(recorded.status),
        "refused_command": refused,
    }
