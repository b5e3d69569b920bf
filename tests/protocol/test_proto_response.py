from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from worker.errors import ProtocolError
from worker.protocol.codes import ResponseOutcome
from worker.protocol.request import REQUEST_NS
from worker.protocol.response import (
    RESPONSE_NS,
    SyncResponse,
    build_response_envelope,
    parse_response_document,
    parse_response_envelope,
)
from worker.protocol.xml import parse_untrusted

RESULT_NS = "http://api-v1.gen.mm.vodafone.com/mminterface/result"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
Samples = Callable[[str], list[bytes]]


def envelope(message: str, *, holder_ns: str = REQUEST_NS, prefix: str = "soapenv") -> bytes:
    return (
        f'<{prefix}:Envelope xmlns:{prefix}="{SOAP}"><{prefix}:Body>'
        f'<ResponseMsg xmlns="{holder_ns}">{message}</ResponseMsg>'
        f"</{prefix}:Body></{prefix}:Envelope>"
    ).encode()


def test_v15_template_and_real_accept(sample_envelopes: Samples) -> None:
    template, real = sample_envelopes("g2_v15_03_GenericAPIResponse_template_and_real_accept.xml")
    first = parse_response_envelope(template)
    assert first.code == "ResponseCode0"
    assert first.outcome is ResponseOutcome.UNKNOWN
    assert first.conversation_id is None and first.originator_conversation_id is None
    assert first.service_status == "0"
    assert parse_response_envelope(real) == SyncResponse(
        code="0",
        description="Accept the service request successfully.",
        conversation_id="AG_20140825_000056ac18ccfd6a13a2",
        originator_conversation_id="B2C-SIT-000005",
        service_status="0",
    )
    assert parse_response_envelope(real).outcome is ResponseOutcome.ACCEPTED


@pytest.mark.parametrize(
    ("name", "code", "description", "outcome"),
    [
        (
            "g2_v15_04_GenericAPIResponse_error_100000007_auth_failed.xml",
            "100000007",
            "Authentication failed",
            ResponseOutcome.REJECTED,
        ),
        (
            "g2_v15_05_GenericAPIResponse_error_100000000_cached.xml",
            "100000000",
            "Request was cached, waiting for resending",
            ResponseOutcome.ACCEPTED,
        ),
    ],
)
def test_v15_error_examples(
    sample_envelopes: Samples, name: str, code: str, description: str, outcome: ResponseOutcome
) -> None:
    [body] = sample_envelopes(name)
    response = parse_response_envelope(body)
    assert (response.code, response.description, response.outcome) == (code, description, outcome)


def test_v15_result_receiver_answers(sample_envelopes: Samples) -> None:
    success, error = sample_envelopes("g2_v15_07_ResultReceiver_ResponseMsg_success_and_error.xml")
    assert parse_response_envelope(success).code == "00000000"
    assert parse_response_envelope(success).description == "success"
    # v1.5 prints 20000003 (eight digits) where its table says 200000003.
    assert parse_response_envelope(error).code == "20000003"
    assert parse_response_envelope(error).description == "Internal Server Error"


def test_production_trace_response(trace_messages: dict[str, list[bytes]]) -> None:
    for body in trace_messages["submitApiResponse"]:
        assert b"<Response " in body and b"<?xml" not in body
        response = parse_response_envelope(body)
        assert response == SyncResponse(
            code="0",
            description="",
            conversation_id="e0e968f5-8cea-4313-aacf-079c5ca47d01",
            originator_conversation_id="R9I1-0000-4225-g64153",
            service_status="0",
        )


INNER_VARIANTS = {
    "xsd": f'<response xmlns="{RESPONSE_NS}"><ResponseCode>0</ResponseCode><ResponseDesc>ok</ResponseDesc>'
    "<ConversationID>AG_1</ConversationID><OriginatorConversationID>o-1</OriginatorConversationID>"
    "<ServiceStatus>0</ServiceStatus></response>",
    "capitalised": f'<Response xmlns="{RESPONSE_NS}"><ResponseCode>0</ResponseCode>'
    "<ResponseDesc>ok</ResponseDesc>"
    "<ConversationID>AG_1</ConversationID><OriginatorConversationID>o-1</OriginatorConversationID>"
    "<ServiceStatus>0</ServiceStatus></Response>",
    "no-namespace": "<response><ResponseCode>0</ResponseCode><ResponseDesc>ok</ResponseDesc>"
    "<ConversationID>AG_1</ConversationID><OriginatorConversationID>o-1</OriginatorConversationID>"
    "<ServiceStatus>0</ServiceStatus></response>",
    "prefixed-other-namespace": '<x:Response xmlns:x="urn:other"><x:ResponseCode>0</x:ResponseCode>'
    "<x:ResponseDesc>ok</x:ResponseDesc><x:ConversationId>AG_1</x:ConversationId>"
    "<x:OriginatorConversationId>o-1</x:OriginatorConversationId><x:ServiceStatus>0</x:ServiceStatus>"
    "</x:Response>",
}
PREFIXES = [
    "",
    '<?xml version="1.0" encoding="UTF-8"?>',
    '\n   <?xml version="1.0" encoding="UTF-8"?>\n',
    "\n  ",
]
EXPECTED = SyncResponse("0", "ok", "AG_1", "o-1", "0")


@pytest.mark.parametrize("variant", sorted(INNER_VARIANTS))
@pytest.mark.parametrize("prefix", PREFIXES)
def test_response_dialects_in_cdata(variant: str, prefix: str) -> None:
    body = envelope(f"<![CDATA[{prefix}{INNER_VARIANTS[variant]}]]>")
    assert parse_response_envelope(body) == EXPECTED
    assert parse_response_document(prefix + INNER_VARIANTS[variant]) == EXPECTED


@pytest.mark.parametrize("variant", sorted(INNER_VARIANTS))
def test_response_as_escaped_text_or_markup(variant: str) -> None:
    inner = INNER_VARIANTS[variant]
    escaped = inner.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert parse_response_envelope(envelope(escaped)) == EXPECTED
    assert parse_response_envelope(envelope(inner)) == EXPECTED


def test_response_with_comment_beside_cdata_and_any_envelope_prefix() -> None:
    body = envelope(f"<!-- note --><![CDATA[{INNER_VARIANTS['xsd']}]]>", prefix="s", holder_ns="urn:x")
    assert parse_response_envelope(body) == EXPECTED


def test_declared_encoding_inside_cdata_is_harmless() -> None:
    inner = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>'
        f'<response xmlns="{RESPONSE_NS}"><ResponseCode>0</ResponseCode>'
        "<ResponseDesc>Ombi limekubaliwa \u2013 José</ResponseDesc></response>"
    )
    assert parse_response_envelope(envelope(f"<![CDATA[{inner}]]>")).description == "Ombi limekubaliwa \u2013 José"
    assert parse_response_document(inner).description == "Ombi limekubaliwa \u2013 José"


def test_soap_fault_is_a_protocol_error_naming_the_fault() -> None:
    body = (
        f'<s:Envelope xmlns:s="{SOAP}"><s:Body><s:Fault><faultcode>s:Server</faultcode>'
        "<faultstring>Service unavailable</faultstring></s:Fault></s:Body></s:Envelope>"
    ).encode()
    with pytest.raises(ProtocolError, match="Service unavailable"):
        parse_response_envelope(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b"<html><body>502 Bad Gateway</body></html>",
        f'<s:Envelope xmlns:s="{SOAP}"/>'.encode(),
        f'<s:Envelope xmlns:s="{SOAP}"><s:Body/></s:Envelope>'.encode(),
        envelope(""),
        envelope("   "),
        envelope("<![CDATA[]]>"),
        envelope("<![CDATA[<response><ResponseDesc>no code</ResponseDesc></response>]]>"),
        envelope("<![CDATA[<response><ResponseCode> </ResponseCode></response>]]>"),
        envelope("<![CDATA[<result><ResultCode>0</ResultCode></result>]]>"),
        envelope("<![CDATA[<response><ResponseCode>0</ResponseCode>]]>"),
        envelope("<![CDATA[plain text]]>"),
    ],
)
def test_unreadable_responses_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_response_envelope(body)


@pytest.mark.parametrize(
    ("code", "description"),
    [
        ("00000000", "success"),
        ("200000001", "System overloaded"),
        ("200000002", "Throttling error"),
        ("200000003", "Internal Server Error"),
    ],
)
def test_receiver_answers(code: str, description: str, response_schema: etree.XMLSchema) -> None:
    body = build_response_envelope(code, description)
    assert b"<![CDATA[" in body
    root = parse_untrusted(body)
    message = root.find(f"{{{SOAP}}}Body/{{{REQUEST_NS}}}ResponseMsg")
    assert message is not None and message.text is not None
    document = parse_untrusted(message.text)
    assert etree.QName(document).namespace == RESPONSE_NS
    assert etree.QName(document).localname == "response"
    assert response_schema.validate(document), response_schema.error_log
    assert [etree.QName(n).localname for n in document] == ["ResponseCode", "ResponseDesc"]
    assert parse_response_envelope(body) == SyncResponse(code, description, None, None, None)


def test_simulator_answer_carries_every_field_in_xsd_order(response_schema: etree.XMLSchema) -> None:
    body = build_response_envelope(
        "0",
        "Accept the service request successfully.",
        conversation_id="AG_20240131_0001",
        originator_conversation_id="600000_Acme_x",
        service_status="0",
    )
    message = parse_untrusted(body).find(f".//{{{REQUEST_NS}}}ResponseMsg")
    assert message is not None and message.text is not None
    document = parse_untrusted(message.text)
    assert response_schema.validate(document), response_schema.error_log
    assert [etree.QName(n).localname for n in document] == [
        "ResponseCode",
        "ResponseDesc",
        "ConversationID",
        "OriginatorConversationID",
        "ServiceStatus",
    ]
    response = parse_response_envelope(body)
    assert response.outcome is ResponseOutcome.ACCEPTED
    assert response.conversation_id == "AG_20240131_0001"


def test_message_namespace_can_follow_the_result_wsdl() -> None:
    body = build_response_envelope("00000000", "success", message_namespace=RESULT_NS)
    assert parse_untrusted(body).find(f".//{{{RESULT_NS}}}ResponseMsg") is not None
    assert parse_response_envelope(body).code == "00000000"


def test_builder_refuses_text_xml_cannot_carry() -> None:
    with pytest.raises(ProtocolError):
        build_response_envelope("0", "bad\x00char")


FIELD = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")).filter(lambda c: c not in "\ufffe\uffff"),
    max_size=40,
).map(str.strip)
OPTIONAL = st.none() | FIELD.filter(bool)


@settings(max_examples=200, deadline=None)
@given(code=FIELD.filter(bool), description=FIELD, conversation=OPTIONAL, originator=OPTIONAL, status=OPTIONAL)
def test_build_then_parse_round_trips(
    code: str, description: str, conversation: str | None, originator: str | None, status: str | None
) -> None:
    body = build_response_envelope(
        code,
        description,
        conversation_id=conversation,
        originator_conversation_id=originator,
        service_status=status,
    )
    assert parse_response_envelope(body) == SyncResponse(code, description, conversation, originator, status)
