"""What M-PESA's response and result codes mean for a payout, as tables (PROTOCOL §3 and §4).

A code missing from the tables is UNKNOWN, never a failure: "we don't know" must not become "not paid".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ResponseOutcome(StrEnum):
    """What the synchronous answer says about whether M-PESA took the request."""

    ACCEPTED = "accepted"
    RETRY_LATER = "retry_later"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


class ResultOutcome(StrEnum):
    """What a result callback says about the money."""

    COMPLETED = "completed"
    FAILED = "failed"
    UNKNOWN = "unknown"
    DUPLICATE = "duplicate"
    NOT_PROCESSED = "not_processed"
    NOT_FOUND = "not_found"


class CodeCategory(StrEnum):
    """Codes that need the same operational reaction (fund the account, fix the credential...).

    ``funds``, ``credential`` and ``config`` open the circuit breaker; a failed payout's category is its
    ``reason``, so the values are stored and must not change.
    """

    FUNDS = "funds"
    CREDENTIAL = "credential"
    CONFIG = "config"
    LIMITS = "limits"
    PARTY = "party"
    EXPIRED = "expired"


@dataclass(frozen=True)
class _ResponseEntry:
    outcome: ResponseOutcome
    meaning: str
    category: CodeCategory | None = None


@dataclass(frozen=True)
class _ResultEntry:
    outcome: ResultOutcome
    meaning: str
    category: CodeCategory | None = None


def normalise_code(code: str) -> str:
    """``0``, ``00000000`` and ``000000000`` all occur for success; compare numbers, not spellings."""
    text = code.strip()
    if text.isascii() and text.isdigit():
        return str(int(text))
    return text


_FUNDS, _CREDENTIAL, _CONFIG = CodeCategory.FUNDS, CodeCategory.CREDENTIAL, CodeCategory.CONFIG

_A, _R, _X, _U = (
    ResponseOutcome.ACCEPTED,
    ResponseOutcome.RETRY_LATER,
    ResponseOutcome.REJECTED,
    ResponseOutcome.UNKNOWN,
)

RESPONSE_CODES: dict[str, _ResponseEntry] = {
    "0": _ResponseEntry(_A, "accepted for processing"),
    "100000000": _ResponseEntry(_A, "request cached, waiting for resending"),
    "100000001": _ResponseEntry(_R, "system overloaded"),
    "100000002": _ResponseEntry(_R, "throttling error"),
    "100000003": _ResponseEntry(_R, "licence limit exceeded"),
    "100000011": _ResponseEntry(_R, "request rate limit exceeded"),
    "26": _ResponseEntry(_R, "system too busy"),
    "100000004": _ResponseEntry(_U, "internal server error"),
    "100000005": _ResponseEntry(_X, "invalid input value"),
    "100000014": _ResponseEntry(_X, "missing mandatory parameter"),
    "23": _ResponseEntry(_X, "invalid or missing input, schema error"),
    "24": _ResponseEntry(_X, "invalid or missing input, schema error"),
    "25": _ResponseEntry(_X, "invalid or missing input, schema error"),
    "30": _ResponseEntry(_X, "invalid or missing input, schema error"),
    "100000006": _ResponseEntry(_X, "SP state abnormal", _CONFIG),
    "100000007": _ResponseEntry(_X, "authentication failed", _CREDENTIAL),
    "100000008": _ResponseEntry(_X, "service state abnormal", _CONFIG),
    "100000009": _ResponseEntry(_X, "API state abnormal", _CONFIG),
    "100000010": _ResponseEntry(_X, "insufficient permissions", _CONFIG),
    "100000012": _ResponseEntry(_X, "insufficient balance", _FUNDS),
    "100000013": _ResponseEntry(_X, "no route", _CONFIG),
}

_C, _F, _D, _N, _NF = (
    ResultOutcome.COMPLETED,
    ResultOutcome.FAILED,
    ResultOutcome.DUPLICATE,
    ResultOutcome.NOT_PROCESSED,
    ResultOutcome.NOT_FOUND,
)
_PARTY, _LIMITS = CodeCategory.PARTY, CodeCategory.LIMITS
_PARTY_MEANING = "unresolved or invalid party or account"
_CREDENTIAL_MEANING = "initiator credential, permission or configuration error"

RESULT_CODES: dict[str, _ResultEntry] = {
    "0": _ResultEntry(_C, "success"),
    "1": _ResultEntry(_F, "insufficient funds in the utility account", _FUNDS),
    "2": _ResultEntry(_F, "less than the minimum transaction value", _LIMITS),
    "3": _ResultEntry(_F, "more than the maximum transaction value", _LIMITS),
    "4": _ResultEntry(_F, "would exceed the customer's daily transfer limit", _LIMITS),
    "5": _ResultEntry(_F, "would take the organisation below its minimum balance", _FUNDS),
    "6": _ResultEntry(_F, _PARTY_MEANING, _PARTY),
    "7": _ResultEntry(_F, _PARTY_MEANING, _PARTY),
    "8": _ResultEntry(_F, "would exceed the customer's maximum balance", _LIMITS),
    "11": _ResultEntry(_F, _PARTY_MEANING, _PARTY),
    "12": _ResultEntry(_F, _PARTY_MEANING, _PARTY),
    "13": _ResultEntry(_F, _PARTY_MEANING, _PARTY),
    "14": _ResultEntry(_F, _PARTY_MEANING, _PARTY),
    "33": _ResultEntry(_F, _PARTY_MEANING, _PARTY),
    "34": _ResultEntry(_F, _PARTY_MEANING, _PARTY),
    "35": _ResultEntry(_F, _PARTY_MEANING, _PARTY),
    "36": _ResultEntry(_F, _PARTY_MEANING, _PARTY),
    "15": _ResultEntry(_D, "duplicate OriginatorConversationID"),
    "41": _ResultEntry(_D, "duplicate OriginatorConversationID"),
    "17": _ResultEntry(ResultOutcome.UNKNOWN, "internal failure"),
    "45": _ResultEntry(ResultOutcome.UNKNOWN, "internal failure"),
    "18": _ResultEntry(_F, "initiator credential check failure", _CREDENTIAL),
    "20": _ResultEntry(_F, _CREDENTIAL_MEANING, _CREDENTIAL),
    "21": _ResultEntry(_F, _CREDENTIAL_MEANING, _CREDENTIAL),
    "22": _ResultEntry(_F, _CREDENTIAL_MEANING, _CREDENTIAL),
    "28": _ResultEntry(_F, _CREDENTIAL_MEANING, _CREDENTIAL),
    "31": _ResultEntry(_F, _CREDENTIAL_MEANING, _CREDENTIAL),
    "32": _ResultEntry(_F, _CREDENTIAL_MEANING, _CREDENTIAL),
    "44": _ResultEntry(_F, _CREDENTIAL_MEANING, _CREDENTIAL),
    "48": _ResultEntry(_F, _CREDENTIAL_MEANING, _CREDENTIAL),
    "50": _ResultEntry(_F, _CREDENTIAL_MEANING, _CREDENTIAL),
    "19": _ResultEntry(_F, "request expired (stale Transaction/Timestamp)", CodeCategory.EXPIRED),
    "26": _ResultEntry(_N, "system too busy"),
    "49": _ResultEntry(_NF, "no transaction found"),
    # "Repeated failures lock the operator (8006): stop sending" (PROTOCOL §2). Not in the outcome table, so
    # the payout stays unknown; the category stops every further send.
    "8006": _ResultEntry(ResultOutcome.UNKNOWN, "initiator locked after repeated credential failures", _CREDENTIAL),
}


def classify_response_code(code: str) -> ResponseOutcome:
    """Map a ResponseCode to what the sender does next; unlisted codes are UNKNOWN."""
    entry = RESPONSE_CODES.get(normalise_code(code))
    return entry.outcome if entry else ResponseOutcome.UNKNOWN


def classify_result_code(code: str) -> ResultOutcome:
    """Map a ResultCode to the payout's fate; unlisted codes are UNKNOWN."""
    entry = RESULT_CODES.get(normalise_code(code))
    return entry.outcome if entry else ResultOutcome.UNKNOWN


def response_category(code: str) -> CodeCategory | None:
    """The account condition a refused request reports (``credential``, ``config``, ``funds``), if any."""
    entry = RESPONSE_CODES.get(normalise_code(code))
    return entry.category if entry else None


def result_category(code: str) -> CodeCategory | None:
    """Groups failures that need the same operational reaction (fund the account, fix the credential...)."""
    entry = RESULT_CODES.get(normalise_code(code))
    return entry.category if entry else None


def describe_response_code(code: str) -> str:
    entry = RESPONSE_CODES.get(normalise_code(code))
    return entry.meaning if entry else "unlisted response code"


def describe_result_code(code: str) -> str:
    entry = RESULT_CODES.get(normalise_code(code))
    return entry.meaning if entry else "unlisted result code"
