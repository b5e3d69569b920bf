"""Fault scenarios: what the simulator does differently, chosen per payout by MSISDN or globally.

The table is data so that the README, the ``--help`` text and the tests all read the same list. Every magic
number sits inside 254700000000-254700000099; any other recipient is paid normally.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scenario(StrEnum):
    NORMAL = "normal"
    SLOW_RESPONSE = "slow_response"
    HTTP_500 = "http_500"
    CONNECTION_RESET = "connection_reset"
    THROTTLED = "throttled"
    CACHED = "cached"
    RESULT_DROPPED = "result_dropped"
    RESULT_TWICE = "result_twice"
    RESULT_BEFORE_RESPONSE = "result_before_response"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    WRONG_CREDENTIAL = "wrong_credential"
    MALFORMED_RESPONSE = "malformed_response"
    UNREGISTERED_RECIPIENT = "unregistered_recipient"
    DIALECT_UPPERCASE_ROOT = "dialect_uppercase_root"
    DIALECT_NO_NAMESPACE = "dialect_no_namespace"
    DIALECT_OTHER_NAMESPACE = "dialect_other_namespace"
    DIALECT_ID_CASING = "dialect_id_casing"
    DIALECT_COMPLETED_WORD = "dialect_completed_word"
    DIALECT_OLD_PARAMETERS = "dialect_old_parameters"
    DIALECT_NO_DECLARATION = "dialect_no_declaration"
    DIALECT_LEADING_WHITESPACE = "dialect_leading_whitespace"
    DIALECT_TRACE_2014 = "dialect_trace_2014"


@dataclass(frozen=True)
class ScenarioInfo:
    scenario: Scenario
    msisdn: str | None
    description: str


SCENARIOS: tuple[ScenarioInfo, ...] = (
    ScenarioInfo(
        Scenario.NORMAL,
        None,
        "Paid normally: ResponseCode 0, then a ResultCode 0 result after the result delay.",
    ),
    ScenarioInfo(
        Scenario.SLOW_RESPONSE,
        "254700000001",
        "The payment goes through and its result is sent, but the HTTP answer is held for `--slow-seconds` "
        "(default: the configured read timeout + 5 s), past the client's timeout.",
    ),
    ScenarioInfo(
        Scenario.HTTP_500,
        "254700000002",
        "The payment is taken, then the request is answered HTTP 500 with a SOAP Fault; the result still follows.",
    ),
    ScenarioInfo(
        Scenario.CONNECTION_RESET,
        "254700000003",
        "The payment is taken, then the connection is reset (TCP RST, no HTTP answer at all); the result "
        "still follows.",
    ),
    ScenarioInfo(
        Scenario.THROTTLED,
        "254700000004",
        "The first `--throttle-tries` requests with an OriginatorConversationID are refused, alternately "
        "with ResponseCode 100000002 (throttling) and 26 (system busy), nothing processed; the next one "
        "is accepted.",
    ),
    ScenarioInfo(
        Scenario.CACHED,
        "254700000005",
        "The first request with an OriginatorConversationID is answered 100000000 (cached) and never "
        "executed; a notifyQueueTimeout is POSTed to its QueueTimeoutURL reference item instead. A resend "
        "with the same id is processed normally.",
    ),
    ScenarioInfo(Scenario.RESULT_DROPPED, "254700000006", "Paid and answered 0, but the result is never sent."),
    ScenarioInfo(Scenario.RESULT_TWICE, "254700000007", "Paid once; the identical result is POSTed twice."),
    ScenarioInfo(
        Scenario.RESULT_BEFORE_RESPONSE,
        "254700000008",
        "Paid; the result is delivered to the ResultURL before the HTTP response is written.",
    ),
    ScenarioInfo(
        Scenario.INSUFFICIENT_FUNDS,
        "254700000009",
        "Accepted, then failed with ResultCode 1 (insufficient funds in the utility account); nothing paid.",
    ),
    ScenarioInfo(
        Scenario.WRONG_CREDENTIAL,
        "254700000010",
        "Accepted, then failed with ResultCode 18 (initiator credential check failure), whatever was sent.",
    ),
    ScenarioInfo(
        Scenario.MALFORMED_RESPONSE,
        "254700000011",
        "The payment is taken, then the request is answered HTTP 200 with a truncated, unparsable SOAP body; "
        "the result still follows.",
    ),
    ScenarioInfo(
        Scenario.UNREGISTERED_RECIPIENT,
        "254700000012",
        "Paid normally, but the result says B2CRecipientIsRegisteredCustomer N.",
    ),
    ScenarioInfo(
        Scenario.DIALECT_UPPERCASE_ROOT,
        "254700000020",
        "Paid; the result document's root is `Result` (capitalised) in the result namespace.",
    ),
    ScenarioInfo(Scenario.DIALECT_NO_NAMESPACE, "254700000021", "Paid; the result document's root has no namespace."),
    ScenarioInfo(
        Scenario.DIALECT_OTHER_NAMESPACE,
        "254700000022",
        "Paid; the result document is in the request namespace instead of the result namespace.",
    ),
    ScenarioInfo(
        Scenario.DIALECT_ID_CASING,
        "254700000023",
        "Paid; the result spells `ConversationId` and `TransactionId`.",
    ),
    ScenarioInfo(
        Scenario.DIALECT_COMPLETED_WORD,
        "254700000024",
        "Paid; the result's ResultType is the word `Completed`.",
    ),
    ScenarioInfo(
        Scenario.DIALECT_OLD_PARAMETERS,
        "254700000025",
        "Paid; the result uses the pre-2015 `Parameter` elements with Key/Value in the request namespace and "
        "the old keys (`Amount` = `Ksh200.00`, `Transaction Datetime`, `Working/Utility Account Available "
        "Funds`); the receipt is only in TransactionID.",
    ),
    ScenarioInfo(
        Scenario.DIALECT_NO_DECLARATION,
        "254700000026",
        "Paid; the CDATA document has no XML declaration.",
    ),
    ScenarioInfo(
        Scenario.DIALECT_LEADING_WHITESPACE,
        "254700000027",
        "Paid; the CDATA text starts with a newline and spaces before the XML declaration.",
    ),
    ScenarioInfo(
        Scenario.DIALECT_TRACE_2014,
        "254700000028",
        "Paid; the result copies the recorded 2014 trace: `s:` envelope, unprefixed ResultMsg, `Result` root "
        "with `xmlns:i`, ResultType `Completed`, no declaration, old `Parameter` keys.",
    ),
)

MAGIC_LOW = 254700000000
MAGIC_HIGH = 254700000099

_BY_NAME: dict[str, ScenarioInfo] = {info.scenario.value: info for info in SCENARIOS}
_BY_MSISDN: dict[str, Scenario] = {info.msisdn: info.scenario for info in SCENARIOS if info.msisdn}

TRANSPORT_FAULTS = frozenset(
    {Scenario.SLOW_RESPONSE, Scenario.HTTP_500, Scenario.CONNECTION_RESET, Scenario.MALFORMED_RESPONSE}
)


def scenario_names() -> list[str]:
    return [info.scenario.value for info in SCENARIOS]


def parse_scenario(name: str) -> Scenario:
    """The scenario called ``name``; ValueError listing the valid names otherwise."""
    info = _BY_NAME.get(name.strip().lower())
    if info is None:
        raise ValueError(f"unknown scenario {name!r}; choose one of: {', '.join(scenario_names())}")
    return info.scenario


def scenario_for_msisdn(msisdn: str | None) -> Scenario | None:
    """The magic number's scenario, or None for an ordinary recipient."""
    if msisdn is None:
        return None
    return _BY_MSISDN.get(msisdn.strip())


def describe(scenario: Scenario) -> str:
    return _BY_NAME[scenario.value].description


def msisdn_for(scenario: Scenario) -> str | None:
    return _BY_NAME[scenario.value].msisdn


def scenario_table_markdown() -> str:
    """The magic-number table for the README."""
    lines = ["| recipient MSISDN | scenario | what the simulator does |", "|---|---|---|"]
    for info in SCENARIOS:
        number = f"`{info.msisdn}`" if info.msisdn else "any other number"
        lines.append(f"| {number} | `{info.scenario.value}` | {info.description} |")
    return "\n".join(lines) + "\n"
