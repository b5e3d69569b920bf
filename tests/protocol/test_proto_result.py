from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from worker.errors import ProtocolError
from worker.protocol.codes import ResultOutcome
from worker.protocol.request import REQUEST_NS
from worker.protocol.result import (
    RESULT_NS,
    QueueTimeout,
    ResultDetails,
    build_queue_timeout_response,
    build_result_document,
    build_result_envelope,
    parse_queue_timeout,
    parse_result_document,
    parse_result_envelope,
)
from worker.protocol.xml import parse_untrusted

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
TIMEOUT_NS = "http://www.csapi.org/schema/timeoutnotification/data/v1_0/local"
EAT = timedelta(hours=3)
Samples = Callable[[str], list[bytes]]

MODERN_PARAMETERS = {
    "TransactionReceipt": "LGR019G3J2",
    "TransactionAmount": "1500.00",
    "B2CWorkingAccountAvailableFunds": "900000.00",
    "B2CUtilityAccountAvailableFunds": "228000.50",
    "TransactionCompletedDateTime": "17.07.2017 10:54:57",
    "ReceiverPartyPublicName": "254722000000 - Safaricom PLC",
    "B2CChargesPaidAccountAvailableFunds": "-4510.00",
    "B2CRecipientIsRegisteredCustomer": "Y",
}
MODERN_DETAILS = ResultDetails(
    receipt="LGR019G3J2",
    amount=Decimal("1500.00"),
    completed_at=datetime(2017, 7, 17, 7, 54, 57, tzinfo=UTC),
    public_name="Safaricom PLC",
    working_balance=Decimal("900000.00"),
    utility_balance=Decimal("228000.50"),
    charges_balance=Decimal("-4510.00"),
    recipient_registered=True,
    withdrawal_charge=None,
)


def envelope(message: str, *, holder_ns: str = RESULT_NS) -> bytes:
    return (
        f'<s:Envelope xmlns:s="{SOAP}"><s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<ResultMsg xmlns="{holder_ns}">{message}</ResultMsg></s:Body></s:Envelope>'
    ).encode()


def result_text(
    *,
    root: str = "result",
    namespace: str | None = RESULT_NS,
    id_suffix: str = "ID",
    result_type: str = "0",
    parameter_style: str = "ResultParameter",
    code: str = "0",
    parameters: dict[str, str] | None = None,
) -> str:
    """One result document in the requested dialect, written by hand rather than by the builder."""
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    pairs = MODERN_PARAMETERS if parameters is None else parameters
    if parameter_style == "ResultParameter":
        items = "".join(
            f"<ResultParameter><Key>{k}</Key><Value>{v}</Value></ResultParameter>" for k, v in pairs.items()
        )
        reference = "<ReferenceItem><Key>QueueTimeoutURL</Key><Value>https://payer/timeout</Value></ReferenceItem>"
    else:
        req = f' xmlns="{REQUEST_NS}"'
        items = "".join(f"<Parameter><Key{req}>{k}</Key><Value{req}>{v}</Value></Parameter>" for k, v in pairs.items())
        reference = (
            f"<ReferenceItem><Key{req}>QueueTimeoutURL</Key><Value{req}>https://payer/timeout</Value></ReferenceItem>"
        )
    return (
        f"<{root}{xmlns}><ResultType>{result_type}</ResultType><ResultCode>{code}</ResultCode>"
        "<ResultDesc>The service request is processed successfully.</ResultDesc>"
        f"<OriginatorConversation{id_suffix}>600000_Acme_abc</OriginatorConversation{id_suffix}>"
        f"<Conversation{id_suffix}>AG_20170717_00006c6f7f6f2b4c8e61</Conversation{id_suffix}>"
        f"<Transaction{id_suffix}>LGR019G3J2</Transaction{id_suffix}>"
        f"<ResultParameters>{items}</ResultParameters><ReferenceData>{reference}</ReferenceData></{root}>"
    )


CDATA_PREFIXES = {
    "bare": "",
    "declaration": '<?xml version="1.0" encoding="UTF-8"?>',
    "declaration-newline": '<?xml version="1.0" encoding="utf-8"?>\n',
    "whitespace-declaration": '\n    <?xml version="1.0" encoding="UTF-8"?>\n',
    "whitespace": "\n\t  ",
}


@pytest.mark.parametrize("prefix", sorted(CDATA_PREFIXES))
@pytest.mark.parametrize("parameter_style", ["ResultParameter", "Parameter"])
@pytest.mark.parametrize("result_type", ["0", "Completed"])
@pytest.mark.parametrize("id_suffix", ["ID", "Id"])
@pytest.mark.parametrize("namespace", [RESULT_NS, "urn:some:other", None])
@pytest.mark.parametrize("root", ["result", "Result"])
def test_every_result_dialect(
    root: str, namespace: str | None, id_suffix: str, result_type: str, parameter_style: str, prefix: str
) -> None:
    text = result_text(
        root=root,
        namespace=namespace,
        id_suffix=id_suffix,
        result_type=result_type,
        parameter_style=parameter_style,
    )
    result = parse_result_envelope(envelope(f"<![CDATA[{CDATA_PREFIXES[prefix]}{text}]]>"))
    assert result.result_type == result_type
    assert result.code == "0"
    assert result.outcome is ResultOutcome.COMPLETED
    assert result.description == "The service request is processed successfully."
    assert result.originator_conversation_id == "600000_Acme_abc"
    assert result.conversation_id == "AG_20170717_00006c6f7f6f2b4c8e61"
    assert result.transaction_id == "LGR019G3J2"
    assert result.parameters == MODERN_PARAMETERS
    assert result.reference == {"QueueTimeoutURL": "https://payer/timeout"}
    assert result.details == MODERN_DETAILS


def test_details_are_exact_and_aware() -> None:
    details = parse_result_document(result_text()).details
    assert isinstance(details.amount, Decimal)
    assert details.completed_at is not None
    assert details.completed_at.utcoffset() == EAT
    assert details.completed_at.replace(tzinfo=None) == datetime(2017, 7, 17, 10, 54, 57)


def test_escaped_text_and_markup_holders_work_too() -> None:
    text = result_text()
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert parse_result_envelope(envelope(escaped)).details == MODERN_DETAILS
    assert parse_result_envelope(envelope(text, holder_ns="urn:x")).details == MODERN_DETAILS


def test_old_parameter_keys() -> None:
    old = {
        "Amount": "Ksh200.00",
        "Transaction Datetime": "05.03.2014 14:25:33",
        "Working Account Available Funds": "Ksh1,000,000.00",
        "Utility Account Available Funds": "KES 50.25",
    }
    result = parse_result_document(result_text(parameters=old, parameter_style="Parameter", id_suffix="Id"))
    assert result.parameters == old
    assert result.details == ResultDetails(
        receipt="LGR019G3J2",
        amount=Decimal("200.00"),
        completed_at=datetime(2014, 3, 5, 11, 25, 33, tzinfo=UTC),
        working_balance=Decimal("1000000.00"),
        utility_balance=Decimal("50.25"),
    )


def test_withdrawal_charge_unregistered_recipient_and_lowercase_flag() -> None:
    parameters = {
        "TransactionAmount": "100",
        "B2CWithdrawalChargeAmount": "27.00",
        "B2CRecipientIsRegisteredCustomer": "n",
        "ReceiverPartyPublicName": "Jane Doe",
    }
    details = parse_result_document(result_text(parameters=parameters)).details
    assert details.withdrawal_charge == Decimal("27.00")
    assert details.recipient_registered is False
    assert details.public_name == "Jane Doe"
    assert details.amount == Decimal("100")


def test_unreadable_detail_values_become_none_not_errors() -> None:
    parameters = {
        "TransactionAmount": "lots",
        "TransactionCompletedDateTime": "yesterday",
        "B2CWorkingAccountAvailableFunds": "NaN",
        "B2CUtilityAccountAvailableFunds": "",
        "B2CRecipientIsRegisteredCustomer": "maybe",
        "ReceiverPartyPublicName": "254722000000 - ",
    }
    result = parse_result_document(result_text(parameters=parameters))
    assert result.details == ResultDetails(receipt="LGR019G3J2")
    assert result.parameters["TransactionAmount"] == "lots"


def test_receipt_falls_back_to_transaction_id_only_on_success() -> None:
    assert parse_result_document(result_text(parameters={})).details.receipt == "LGR019G3J2"
    failed = parse_result_document(result_text(parameters={}, code="1"))
    assert failed.details.receipt is None
    assert failed.transaction_id == "LGR019G3J2"
    assert failed.outcome is ResultOutcome.FAILED


def test_minimal_result_and_duplicate_keys() -> None:
    text = (
        "<Result><ResultCode> 15 </ResultCode><ResultParameters>"
        "<ResultParameter><Key>A</Key><Value>first</Value></ResultParameter>"
        "<ResultParameter><Key>A</Key><Value>second</Value></ResultParameter>"
        "<ResultParameter><Value>keyless</Value></ResultParameter>"
        "<ResultParameter><Key>B</Key></ResultParameter>"
        "</ResultParameters></Result>"
    )
    result = parse_result_document(text)
    assert result.code == "15"
    assert result.outcome is ResultOutcome.DUPLICATE
    assert result.result_type == ""
    assert result.originator_conversation_id is None
    assert result.parameters == {"A": "first", "B": ""}
    assert result.reference == {}


def test_production_trace_result(trace_messages: dict[str, list[bytes]]) -> None:
    [body] = trace_messages["submitApiResult"]
    result = parse_result_envelope(body)
    assert result.result_type == "Completed"
    assert result.code == "19"
    assert result.outcome is ResultOutcome.FAILED
    assert result.description == "ApiRequestMessageExpiryFailure"
    assert result.originator_conversation_id == "R9I1-0000-4225-g64153"
    assert result.conversation_id == "e0e968f5-8cea-4313-aacf-079c5ca47d01"
    assert result.parameters == {"Transaction DateTime": "30.09.2014 12:52:31"}
    assert result.reference == {"QueueTimeoutURL": "http://10.66.49.201:8989/"}
    assert result.details.completed_at == datetime(2014, 9, 30, 9, 52, 31, tzinfo=UTC)


def test_declared_encoding_inside_cdata_with_non_ascii_name() -> None:
    text = result_text(parameters={"ReceiverPartyPublicName": "254722000000 - José Ñandú"})
    body = envelope(f'<![CDATA[<?xml version="1.0" encoding="ISO-8859-1"?>{text}]]>')
    assert parse_result_envelope(body).details.public_name == "José Ñandú"
    assert parse_result_document(f'  <?xml version="1.0" encoding="UTF-16"?>{text}').details.public_name == (
        "José Ñandú"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x01",
        b"<Envelope/>",
        f'<s:Envelope xmlns:s="{SOAP}"><s:Body><Other/></s:Body></s:Envelope>'.encode(),
        envelope(""),
        envelope("<![CDATA[<result><ResultDesc>no code</ResultDesc></result>]]>"),
        envelope("<![CDATA[<response><ResultCode>0</ResultCode></response>]]>"),
        envelope("<![CDATA[<result><ResultCode>0</ResultCode>]]>"),
        envelope("<![CDATA[<?xml version='1.0'?>]]>"),
    ],
)
def test_unreadable_results_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_result_envelope(body)


def test_built_result_matches_the_result_xsd(result_schema: etree.XMLSchema) -> None:
    document = build_result_document(
        code="0",
        description="ok",
        originator_conversation_id="o",
        conversation_id="c",
        transaction_id="t",
        parameters={"TransactionAmount": "10.00"},
        reference={"QueueTimeoutURL": "u"},
    )
    assert result_schema.validate(parse_untrusted(document)), result_schema.error_log


PARAMETER_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")).filter(lambda c: c not in "\ufffe\uffff"),
    max_size=30,
).map(str.strip)


@settings(max_examples=150, deadline=None)
@given(
    code=st.sampled_from(["0", "1", "2", "15", "17", "18", "19", "26", "49", "9999"]),
    description=PARAMETER_TEXT,
    originator=st.none() | PARAMETER_TEXT.filter(bool),
    parameters=st.dictionaries(PARAMETER_TEXT.filter(bool), PARAMETER_TEXT, max_size=6),
    reference=st.dictionaries(PARAMETER_TEXT.filter(bool), PARAMETER_TEXT, max_size=3),
    cents=st.integers(min_value=0, max_value=10**12),
)
def test_build_then_parse_round_trips(
    code: str,
    description: str,
    originator: str | None,
    parameters: dict[str, str],
    reference: dict[str, str],
    cents: int,
) -> None:
    amount = Decimal(cents).scaleb(-2)
    parameters = {**parameters, "TransactionAmount": f"{amount:.2f}"}
    body = build_result_envelope(
        code=code,
        description=description,
        originator_conversation_id=originator,
        conversation_id="AG_1",
        result_type="Completed",
        parameters=parameters,
        reference=reference,
    )
    result = parse_result_envelope(body)
    assert (result.code, result.description, result.result_type) == (code, description, "Completed")
    assert result.originator_conversation_id == originator
    assert result.conversation_id == "AG_1"
    assert result.parameters == parameters
    assert result.reference == reference
    assert result.details.amount == amount


# --- notifyQueueTimeout -------------------------------------------------------------------------------


def test_v15_queue_timeout_example(sample_envelopes: Samples) -> None:
    notification, success, error = sample_envelopes("g2_v15_08_notifyQueueTimeout_and_response.xml")
    timeout = parse_queue_timeout(notification)
    assert timeout.originator_conversation_id == "OriginatorConversationID0"
    assert timeout.conversation_id is None
    assert timeout.origin_request is not None
    assert timeout.origin_request.startswith(b"<soapenv:Envelope")
    assert b"<req:RequestMsg>" in timeout.origin_request
    for answer in (success, error):
        with pytest.raises(ProtocolError):
            parse_queue_timeout(answer)


def test_queue_timeout_recovers_the_id_from_the_original_request(sample_envelopes: Samples) -> None:
    [notification, *_] = sample_envelopes("g2_v15_08_notifyQueueTimeout_and_response.xml")
    # The WSDL spells the element originReqeust; drop the top-level id to force the fallback.
    altered = notification.replace(b"loc:originRequest", b"loc:originReqeust").replace(
        b"<loc:originatorConversationID>OriginatorConversationID0</loc:originatorConversationID>", b""
    )
    timeout = parse_queue_timeout(altered)
    assert timeout.originator_conversation_id == "OriginatorConversationID0"
    assert timeout.origin_request is not None


def test_queue_timeout_with_extension_items_and_http_framed_origin() -> None:
    origin_envelope = envelope_request("600000_Acme_zz")
    origin = base64.b64encode(b"POST /mminterface/request HTTP/1.1\r\nHost: x\r\n\r\n" + origin_envelope).decode()
    body = (
        f'<soapenv:Envelope xmlns:soapenv="{SOAP}" xmlns:loc="{TIMEOUT_NS}" xmlns:res="{RESULT_NS}">'
        "<soapenv:Body><loc:notifyQueueTimeout>"
        f"<loc:originRequest>{origin}</loc:originRequest>"
        "<loc:extensionInfo><loc:item><res:Key>ConversationID</res:Key><res:Value>AG_9</res:Value></loc:item>"
        "</loc:extensionInfo></loc:notifyQueueTimeout></soapenv:Body></soapenv:Envelope>"
    ).encode()
    timeout = parse_queue_timeout(body)
    assert timeout == QueueTimeout(
        originator_conversation_id="600000_Acme_zz",
        conversation_id="AG_9",
        origin_request=base64.b64decode(origin),
        extension={"ConversationID": "AG_9"},
    )


def envelope_request(originator: str) -> bytes:
    inner = (
        f'<request xmlns="{REQUEST_NS}"><Transaction><CommandID>BusinessPayment</CommandID>'
        f"<OriginatorConversationID>{originator}</OriginatorConversationID></Transaction></request>"
    )
    return (
        f'<soapenv:Envelope xmlns:soapenv="{SOAP}" xmlns:req="{REQUEST_NS}"><soapenv:Body>'
        f"<req:RequestMsg><![CDATA[{inner}]]></req:RequestMsg></soapenv:Body></soapenv:Envelope>"
    ).encode()


def test_queue_timeout_with_garbage_origin_keeps_what_it_can() -> None:
    body = (
        f'<soapenv:Envelope xmlns:soapenv="{SOAP}" xmlns:loc="{TIMEOUT_NS}"><soapenv:Body>'
        "<loc:notifyQueueTimeout><loc:originRequest>%%% not base64</loc:originRequest>"
        "</loc:notifyQueueTimeout></soapenv:Body></soapenv:Envelope>"
    ).encode()
    assert parse_queue_timeout(body) == QueueTimeout(None, None, None, {})


def test_queue_timeout_answer_has_the_v15_shape(sample_envelopes: Samples) -> None:
    _, success, _ = sample_envelopes("g2_v15_08_notifyQueueTimeout_and_response.xml")

    def shape(body: bytes) -> list[tuple[str, str]]:
        root = parse_untrusted(body)
        answer = root.find(f"{{{SOAP}}}Body/{{{TIMEOUT_NS}}}notifyQueueTimeoutResponse/{{{TIMEOUT_NS}}}result")
        assert answer is not None
        return [(node.tag, (node.text or "").strip()) for node in answer]

    assert shape(build_queue_timeout_response()) == shape(success)
    assert shape(build_queue_timeout_response("000000001", "failed")) == [
        (f"{{{RESULT_NS}}}ResultCode", "000000001"),
        (f"{{{RESULT_NS}}}ResultDesc", "failed"),
    ]
