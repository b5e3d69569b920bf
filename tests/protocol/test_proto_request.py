from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from worker.errors import ProtocolError
from worker.protocol.header import sp_password
from worker.protocol.request import (
    REQUEST_NS,
    Initiator,
    build_envelope,
    build_payment_request,
    build_status_query,
)
from worker.protocol.xml import parse_untrusted

NS = {"r": REQUEST_NS}
HEADER_OSG = "http://www.huawei.com/schema/osg/common/v2_1"
HEADER_XSD = "http://www.huawei.com.cn/schema/common/v2_1"
INITIATOR = Initiator(name="apiop", security_credential="Q" * 344, shortcode="600000")
PAYMENT_COMMANDS = [
    "BusinessPayment",
    "SalaryPayment",
    "PromotionPayment",
    "BusinessPaymentWithWithdrawalChargePaid",
    "SalaryPaymentWithWithdrawalChargePaid",
]
# XML 1.0 characters, minus \r (normalised away by any parser) and surrogates.
XML_TEXT = st.text(
    alphabet=st.characters(
        codec="utf-8",
        exclude_categories=("Cs", "Cc"),
        include_characters="\t\n",
    ).filter(lambda c: c not in "\ufffe\uffff"),
    max_size=60,
)


def payment(**overrides: object) -> bytes:
    arguments: dict[str, object] = {
        "command_id": "BusinessPayment",
        "originator_conversation_id": "600000_Acme_" + "a" * 32,
        "amount": Decimal("1500"),
        "msisdn": "254712345678",
        "remark": "March salary",
        "initiator": INITIATOR,
        "result_url": "https://payer.example/result",
        "queue_timeout_url": "https://payer.example/timeout",
        "reference": {"Occasion": "Jamhuri"},
        "timestamp": "2014-09-27T12:53:19.000052Z",
    }
    arguments.update(overrides)
    return build_payment_request(**arguments)  # type: ignore[arg-type]


def texts(document: bytes, path: str) -> list[str]:
    nodes = etree.fromstring(document).xpath(path, namespaces=NS)
    assert isinstance(nodes, list)
    return [node.text or "" for node in nodes if isinstance(node, etree._Element)]


@pytest.mark.parametrize("command_id", PAYMENT_COMMANDS)
def test_payment_request_validates_against_safaricom_schema(command_id: str, request_schema: etree.XMLSchema) -> None:
    document = payment(command_id=command_id)
    root = etree.fromstring(document)
    assert request_schema.validate(root), request_schema.error_log
    assert texts(document, "/r:request/r:Transaction/r:CommandID") == [command_id]


def test_status_query_validates_against_safaricom_schema(request_schema: etree.XMLSchema) -> None:
    for target, receipt in (("orig-1", None), (None, "NH26HBCQ1Y"), ("orig-1", "NH26HBCQ1Y")):
        document = build_status_query(
            originator_conversation_id="600000_Acme_query1",
            initiator=INITIATOR,
            result_url="https://payer.example/result",
            queue_timeout_url="https://payer.example/timeout",
            target_originator_conversation_id=target,
            receipt=receipt,
            timestamp="2019-03-18T17:22:09.651011Z",
        )
        assert request_schema.validate(etree.fromstring(document)), request_schema.error_log
        keys = texts(document, "//r:Parameters/r:Parameter/r:Key")
        assert ("OriginatorConversationID" in keys) is (target is not None)
        assert ("ReceiptNumber" in keys) is (receipt is not None)
        assert texts(document, "//r:CommandID") == ["TransactionStatusQuery"]
        assert texts(document, "//r:ReceiverParty") == []


def test_safaricom_own_example_validates_so_the_schema_is_the_real_one(
    request_schema: etree.XMLSchema, sample_envelopes: Callable[[str], list[bytes]]
) -> None:
    [envelope] = sample_envelopes("g2_v15_01_GenericAPIRequest_B2C_PromotionPayment_with_ResultURL.xml")
    message = parse_untrusted(envelope).find(f".//{{{REQUEST_NS}}}RequestMsg")
    assert message is not None and message.text
    assert request_schema.validate(parse_untrusted(message.text))
    assert not request_schema.validate(etree.fromstring(payment().replace(b"PrimaryParty", b"PrimartyParty")))


def test_payment_request_content_and_order() -> None:
    document = payment(amount=Decimal("1500"), reference={"Occasion": "Jamhuri", "PayoutId": "p-1"})
    assert document.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<request ')
    root = etree.fromstring(document)
    assert [etree.QName(node).localname for node in root] == ["Transaction", "Identity", "KeyOwner"]
    assert texts(document, "//r:Parameter[r:Key='Amount']/r:Value") == ["1500.00"]
    assert texts(document, "//r:ReferenceItem/r:Key") == ["QueueTimeoutURL", "Occasion", "PayoutId"]
    assert texts(document, "//r:ReferenceItem/r:Value") == ["https://payer.example/timeout", "Jamhuri", "p-1"]
    assert texts(document, "//r:Caller/r:ResultURL") == ["https://payer.example/result"]
    assert texts(document, "//r:Initiator/r:IdentifierType") == ["11"]
    assert texts(document, "//r:Initiator/r:Identifier") == ["apiop"]
    assert texts(document, "//r:Initiator/r:SecurityCredential") == ["Q" * 344]
    assert texts(document, "//r:Initiator/r:ShortCode") == ["600000"]
    assert texts(document, "//r:PrimaryParty/r:IdentifierType") == ["4"]
    assert texts(document, "//r:PrimaryParty/r:Identifier") == ["600000"]
    assert texts(document, "//r:ReceiverParty/r:IdentifierType") == ["1"]
    assert texts(document, "//r:ReceiverParty/r:Identifier") == ["254712345678"]
    assert texts(document, "//r:Transaction/r:Timestamp") == ["2014-09-27T12:53:19.000052Z"]
    assert texts(document, "/r:request/r:KeyOwner") == ["1"]
    assert b"PrimartyParty" not in document


def test_primary_party_can_differ_from_the_initiator_shortcode() -> None:
    document = payment(primary_party="898946")
    assert texts(document, "//r:PrimaryParty/r:Identifier") == ["898946"]
    assert texts(document, "//r:Initiator/r:ShortCode") == ["600000"]


@pytest.mark.parametrize(
    ("amount", "written"),
    [("10", "10.00"), ("10.5", "10.50"), ("250000.00", "250000.00"), ("0.01", "0.01"), ("1E+2", "100.00")],
)
def test_amount_has_two_decimals(amount: str, written: str) -> None:
    assert texts(payment(amount=Decimal(amount)), "//r:Parameter/r:Value") == [written]


@pytest.mark.parametrize("amount", ["10.005", "0", "-5", "NaN", "Infinity", "1E+30"])
def test_unwritable_amounts_are_refused(amount: str) -> None:
    with pytest.raises(ProtocolError):
        payment(amount=Decimal(amount))


@pytest.mark.parametrize(
    "overrides",
    [
        {"command_id": "TransactionStatusQuery"},
        {"command_id": "businesspayment"},
        {"msisdn": "+254712345678"},
        {"msisdn": "0712345678"},
        {"msisdn": "25471234567"},
        {"originator_conversation_id": ""},
        {"originator_conversation_id": "x" * 129},
        {"remark": "r" * 256},
        {"remark": "bell\x07"},
        {"reference": {"QueueTimeoutURL": "https://elsewhere"}},
        {"reference": {"Occasion": "nul\x00"}},
    ],
)
def test_invalid_payment_arguments_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        payment(**overrides)


def test_status_query_needs_a_lookup_key() -> None:
    with pytest.raises(ProtocolError):
        build_status_query(
            originator_conversation_id="q",
            initiator=INITIATOR,
            result_url="u",
            queue_timeout_url="t",
            timestamp="20190318172209",
        )


def test_initiator_repr_hides_the_credential() -> None:
    assert "Q" * 20 not in repr(INITIATOR)


@pytest.mark.parametrize("namespace", [HEADER_OSG, HEADER_XSD])
def test_envelope_carries_header_and_cdata_document(namespace: str) -> None:
    inner = payment()
    digest = sp_password("600000", "secret", "20240131103000")
    envelope = build_envelope(
        inner=inner,
        sp_id="600000",
        sp_password_digest=digest,
        service_id="600000000",
        timestamp="20240131103000",
        header_namespace=namespace,
    )
    assert b"<![CDATA[" + inner + b"]]>" in envelope
    root = parse_untrusted(envelope)
    header = root.find(f"{{http://schemas.xmlsoap.org/soap/envelope/}}Header/{{{namespace}}}RequestSOAPHeader")
    assert header is not None
    assert [(etree.QName(n).localname, n.text) for n in header] == [
        ("spId", "600000"),
        ("spPassword", digest),
        ("serviceId", "600000000"),
        ("timeStamp", "20240131103000"),
    ]
    message = root.find(f".//{{{REQUEST_NS}}}RequestMsg")
    assert message is not None
    assert message.text == inner.decode("utf-8")


def test_envelope_refuses_a_non_utf8_document() -> None:
    with pytest.raises(ProtocolError):
        build_envelope(
            inner=b"\xff\xfe",
            sp_id="1",
            sp_password_digest="d",
            service_id="s",
            timestamp="t",
            header_namespace=HEADER_OSG,
        )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    remark=XML_TEXT,
    occasion=XML_TEXT,
    cents=st.integers(min_value=1, max_value=10**9),
    command_id=st.sampled_from(PAYMENT_COMMANDS),
)
def test_any_legal_text_yields_a_valid_document(
    request_schema: etree.XMLSchema, remark: str, occasion: str, cents: int, command_id: str
) -> None:
    amount = Decimal(cents).scaleb(-2)
    document = payment(command_id=command_id, remark=remark, amount=amount, reference={"Occasion": occasion})
    root = etree.fromstring(document)
    assert request_schema.validate(root), request_schema.error_log
    assert texts(document, "//r:Remark") == [remark]
    assert Decimal(texts(document, "//r:Parameter/r:Value")[0]) == amount
    assert texts(document, "//r:ReferenceItem[r:Key='Occasion']/r:Value") == [occasion]
