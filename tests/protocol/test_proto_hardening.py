"""Hostile XML is refused at both layers: the SOAP envelope and the document inside ResponseMsg/ResultMsg."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from worker.errors import ProtocolError, UnsafeXmlError
from worker.protocol.response import RESPONSE_NS, parse_response_document, parse_response_envelope
from worker.protocol.result import (
    RESULT_NS,
    parse_queue_timeout,
    parse_result_document,
    parse_result_envelope,
)
from worker.protocol.xml import MAX_XML_BYTES

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
REQUEST_NS = "http://api-v1.gen.mm.vodafone.com/mminterface/request"

XXE_DTD = '<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
BOMB_DTD = (
    '<!DOCTYPE r [<!ENTITY lol "lol">'
    '<!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
    '<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">'
    '<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">'
    '<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">'
    '<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">'
    '<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">'
    '<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>'
)
ATTACKS = {"xxe": (XXE_DTD, "&xxe;"), "billion-laughs": (BOMB_DTD, "&lol9;")}

KINDS: dict[str, tuple[str, str, str, Callable[[bytes], object], Callable[[str | bytes], object]]] = {
    "response": ("ResponseMsg", REQUEST_NS, "response", parse_response_envelope, parse_response_document),
    "result": ("ResultMsg", RESULT_NS, "result", parse_result_envelope, parse_result_document),
}


def inner_document(kind: str, attack: str) -> str:
    _, _, root, _, _ = KINDS[kind]
    dtd, reference = ATTACKS[attack]
    namespace = RESPONSE_NS if kind == "response" else RESULT_NS
    code = "ResponseCode" if kind == "response" else "ResultCode"
    return (
        f'<?xml version="1.0"?>{dtd}<{root} xmlns="{namespace}"><{code}>0</{code}>'
        f"<{'ResponseDesc' if kind == 'response' else 'ResultDesc'}>{reference}</"
        f"{'ResponseDesc' if kind == 'response' else 'ResultDesc'}></{root}>"
    )


def wrap(kind: str, payload: str) -> bytes:
    message, namespace, _, _, _ = KINDS[kind]
    return (
        f'<s:Envelope xmlns:s="{SOAP}"><s:Body><m:{message} xmlns:m="{namespace}">{payload}'
        f"</m:{message}></s:Body></s:Envelope>"
    ).encode()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_outer_envelope_with_dtd_is_refused(kind: str, attack: str) -> None:
    dtd, reference = ATTACKS[attack]
    message, namespace, _, parse_envelope, _ = KINDS[kind]
    body = (
        f'<?xml version="1.0"?>{dtd.replace("<!DOCTYPE r", "<!DOCTYPE s:Envelope")}'
        f'<s:Envelope xmlns:s="{SOAP}"><s:Body><m:{message} xmlns:m="{namespace}">{reference}'
        f"</m:{message}></s:Body></s:Envelope>"
    ).encode()
    with pytest.raises(UnsafeXmlError):
        parse_envelope(body)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_attack_inside_cdata_is_refused(kind: str, attack: str) -> None:
    parse_envelope = KINDS[kind][3]
    with pytest.raises(UnsafeXmlError):
        parse_envelope(wrap(kind, f"<![CDATA[{inner_document(kind, attack)}]]>"))


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_attack_only_visible_after_unescaping_is_refused(kind: str, attack: str) -> None:
    # Escaped text hides the DTD from the outer layer entirely, so the inner parse must catch it.
    parse_envelope = KINDS[kind][3]
    escaped = inner_document(kind, attack).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    body = wrap(kind, escaped)
    assert b"<!DOCTYPE" not in body and b"<!ENTITY" not in body
    with pytest.raises(UnsafeXmlError):
        parse_envelope(body)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_inner_document_parsers_refuse_attacks(kind: str, attack: str) -> None:
    parse_document = KINDS[kind][4]
    with pytest.raises(UnsafeXmlError):
        parse_document(inner_document(kind, attack))
    with pytest.raises(UnsafeXmlError):
        parse_document(inner_document(kind, attack).encode())


def test_queue_timeout_refuses_dtd() -> None:
    body = (
        f'<?xml version="1.0"?>{XXE_DTD.replace("<!DOCTYPE r", "<!DOCTYPE e")}<e:Envelope xmlns:e="{SOAP}">'
        "<e:Body><notifyQueueTimeout><originatorConversationID>&xxe;</originatorConversationID>"
        "</notifyQueueTimeout></e:Body></e:Envelope>"
    ).encode()
    with pytest.raises(UnsafeXmlError):
        parse_queue_timeout(body)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_undeclared_entity_is_a_protocol_error(kind: str) -> None:
    parse_envelope = KINDS[kind][3]
    with pytest.raises(ProtocolError):
        parse_envelope(wrap(kind, "&xxe;"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_oversized_body_is_refused(kind: str) -> None:
    parse_envelope = KINDS[kind][3]
    padding = " " * (MAX_XML_BYTES + 1)
    with pytest.raises(UnsafeXmlError):
        parse_envelope(wrap(kind, f"<![CDATA[{padding}]]>"))
    with pytest.raises(UnsafeXmlError):
        parse_queue_timeout(b" " * (MAX_XML_BYTES + 1) + b"<x/>")
