from __future__ import annotations

import threading
from collections.abc import Callable
from xml.sax.saxutils import escape

import pytest

from worker.errors import ProtocolError, UnsafeXmlError
from worker.protocol.inbound import parse_request_envelope, validate_request_document
from worker.settings import HEADER_NS_OSG, HEADER_NS_XSD

ENVELOPE_HEAD = (
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    b'xmlns:req="http://api-v1.gen.mm.vodafone.com/mminterface/request">'
    b'<soapenv:Header><tns:RequestSOAPHeader xmlns:tns="http://www.huawei.com/schema/osg/common/v2_1">'
    b"<tns:spId>107031</tns:spId></tns:RequestSOAPHeader></soapenv:Header><soapenv:Body>"
)
ENVELOPE_TAIL = b"</soapenv:Body></soapenv:Envelope>"


def _with_body(body: bytes) -> bytes:
    return ENVELOPE_HEAD + body + ENVELOPE_TAIL


def test_reads_the_specification_sample(sample_request: bytes) -> None:
    inbound = parse_request_envelope(sample_request)

    assert inbound.header.namespace == HEADER_NS_XSD
    assert inbound.header.sp_id == "35000011"
    assert inbound.header.sp_password == "c5216e519a071d601bedd150f3fcd026"
    assert inbound.header.service_id == "35000001000009"
    assert inbound.header.timestamp == "20120101010101"
    request = inbound.request
    assert request.command_id == "PromotionPayment"
    assert request.originator_conversation_id == "4596"
    assert request.parameters == {"Amount": "1", "Key1": "Value1"}
    assert request.reference == {"QueueTimeoutURL": "http://10.66.49.789:7888/new", "Occasion": "Jamuhuri"}
    assert request.timestamp == "2013-07-29T18:50:41.2109675Z"
    assert request.initiator_name == "username"
    assert request.security_credential == "SecurityCredential0"
    assert request.initiator_shortcode == "859636"
    assert request.primary_party == "859636"
    assert request.receiver_party == "2547204789659"
    assert request.result_url == "ResultURL0"
    assert inbound.document.startswith(b"<request ")
    assert validate_request_document(inbound.document) == []


def test_reads_the_osg_header_namespace_and_what_the_builder_sends(
    make_envelope: Callable[..., bytes], inner_document: bytes
) -> None:
    inbound = parse_request_envelope(make_envelope(namespace=HEADER_NS_OSG))

    assert inbound.header.namespace == HEADER_NS_OSG
    assert inbound.header.sp_password == "c3BwYXNzd29yZA=="
    assert inbound.request.parameters == {"Amount": "1500.00"}
    assert inbound.request.reference == {
        "QueueTimeoutURL": "http://127.0.0.1:8320/mpesa/queue-timeout",
        "Occasion": "payroll",
    }
    assert inbound.request.receiver_party == "254712345678"
    assert inbound.request.primary_party == "600000"
    assert validate_request_document(inbound.document) == []
    assert validate_request_document(inner_document) == []


def test_escaped_text_reads_like_cdata(make_envelope: Callable[..., bytes], inner_document: bytes) -> None:
    body = b"<req:RequestMsg>" + escape(inner_document.decode()).encode() + b"</req:RequestMsg>"
    escaped = parse_request_envelope(_with_body(body))
    cdata = parse_request_envelope(make_envelope())

    assert escaped.request == cdata.request
    assert escaped.document == cdata.document


def test_markup_instead_of_text_is_accepted(inner_document: bytes) -> None:
    markup = inner_document.split(b"?>", 1)[1].strip()
    inbound = parse_request_envelope(_with_body(b"<req:RequestMsg>" + markup + b"</req:RequestMsg>"))

    assert inbound.request.command_id == "BusinessPayment"
    assert validate_request_document(inbound.document) == []


def test_the_shipped_xsd_spelling_is_read_but_is_not_valid(inner_document: bytes) -> None:
    misspelt = inner_document.replace(b"PrimaryParty", b"PrimartyParty")
    body = b"<req:RequestMsg><![CDATA[" + misspelt + b"]]></req:RequestMsg>"
    inbound = parse_request_envelope(_with_body(body))

    assert inbound.request.primary_party == "600000"
    errors = validate_request_document(inbound.document)
    assert errors and any("PrimartyParty" in error for error in errors)


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        (
            ENVELOPE_HEAD.replace(b"osg/common", b"example.org/common") + b"<req:RequestMsg/>" + ENVELOPE_TAIL,
            "unknown namespace",
        ),
        (ENVELOPE_HEAD.replace(b"<tns:spId>107031</tns:spId>", b"") + ENVELOPE_TAIL, "no spId"),
        (
            b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>',
            "no RequestSOAPHeader",
        ),
        (_with_body(b""), "no RequestMsg"),
        (_with_body(b"<req:RequestMsg>  </req:RequestMsg>"), "empty"),
        (_with_body(b"<req:RequestMsg><![CDATA[<response/>]]></req:RequestMsg>"), "expected a request"),
        (_with_body(b"<req:RequestMsg><![CDATA[<request><oops></request>]]></req:RequestMsg>"), "malformed"),
        (b"<notsoap/>", "expected a SOAP Envelope"),
        (b"not xml at all", "malformed"),
    ],
)
def test_unreadable_requests_are_protocol_errors(envelope: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_request_envelope(envelope)


XXE_DOCTYPE = '<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
BOMB_DOCTYPE = (
    '<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
)


@pytest.mark.parametrize("doctype", [XXE_DOCTYPE, BOMB_DOCTYPE], ids=["xxe", "bomb"])
def test_hostile_outer_envelope_is_refused(doctype: str, make_envelope: Callable[..., bytes]) -> None:
    envelope = make_envelope().split(b"?>", 1)[1]
    hostile = doctype.encode() + envelope.replace(b"<tns:spId>107031", b"<tns:spId>&xxe;&d;107031")
    with pytest.raises(UnsafeXmlError):
        parse_request_envelope(hostile)


@pytest.mark.parametrize("doctype", [XXE_DOCTYPE, BOMB_DOCTYPE], ids=["xxe", "bomb"])
@pytest.mark.parametrize("carrier", ["cdata", "escaped"])
def test_hostile_inner_document_is_refused(
    doctype: str, carrier: str, make_envelope: Callable[..., bytes], inner_document: bytes
) -> None:
    inner = inner_document.split(b"?>", 1)[1].replace(b"<Remark>", b"<Remark>&xxe;&d;")
    hostile_inner = doctype.encode() + inner
    if carrier == "cdata":
        envelope = make_envelope(inner=hostile_inner)
    else:
        envelope = _with_body(b"<req:RequestMsg>" + escape(hostile_inner.decode()).encode() + b"</req:RequestMsg>")
        assert b"<!DOCTYPE" not in envelope  # only the inner parse can catch it
    with pytest.raises(UnsafeXmlError):
        parse_request_envelope(envelope)
    assert validate_request_document(hostile_inner) != []


def test_oversized_envelope_is_refused(make_envelope: Callable[..., bytes], inner_document: bytes) -> None:
    padded = inner_document.replace(b"<Remark>", b"<Remark>" + b"x" * 1_100_000)
    with pytest.raises(UnsafeXmlError):
        parse_request_envelope(make_envelope(inner=padded))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.replace(b"<KeyOwner>1</KeyOwner>", b""), "KeyOwner"),
        (
            lambda d: d.replace(b"<IdentifierType>1</IdentifierType>", b"<IdentifierType>99</IdentifierType>"),
            "99",
        ),
        (lambda d: d.replace(b"0123456789abcdef0123456789abcdef", b"0" * 200), "OriginatorConversationID"),
        (lambda d: d.replace(b"<Remark>June salary</Remark>", b""), None),
        (
            lambda d: d.replace(b"<LanguageCode>0</LanguageCode>", b"").replace(
                b"</CommandID>", b"</CommandID><Timestamp>x</Timestamp>"
            ),
            "Timestamp",
        ),
        (
            lambda d: d.replace(b'xmlns="http://api-v1.gen.mm.vodafone.com/mminterface/request"', b""),
            "request",
        ),
    ],
    ids=[
        "missing-keyowner",
        "bad-identifier-type",
        "long-originator-id",
        "no-remark",
        "order",
        "no-namespace",
    ],
)
def test_schema_validation(change: Callable[[bytes], bytes], fragment: str | None, inner_document: bytes) -> None:
    errors = validate_request_document(change(inner_document))
    if fragment is None:
        assert errors == []  # Remark is optional
    else:
        assert errors, "expected the schema to refuse the document"
        assert any(fragment in error for error in errors), errors


def test_unreadable_document_is_one_error() -> None:
    errors = validate_request_document(b"<request")
    assert len(errors) == 1
    assert "malformed" in errors[0]


def test_validation_is_consistent_across_threads(inner_document: bytes) -> None:
    invalid = inner_document.replace(b"<KeyOwner>1</KeyOwner>", b"")
    results: list[tuple[bool, list[str]]] = []
    lock = threading.Lock()

    def work(valid: bool) -> None:
        for _ in range(30):
            errors = validate_request_document(inner_document if valid else invalid)
            with lock:
                results.append((valid, errors))

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 180
    for valid, errors in results:
        assert (errors == []) is valid
        assert all("KeyOwner" in error for error in errors)


def test_secrets_stay_out_of_repr(make_envelope: Callable[..., bytes]) -> None:
    inbound = parse_request_envelope(make_envelope())
    text = repr(inbound.header) + repr(inbound.request)
    assert "c3BwYXNzd29yZA==" not in text
    assert "Q1JFREVOVElBTA==" not in text
