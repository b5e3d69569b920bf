"""The synchronous ``GenericAPIResponse``: parse what the gateway answers, and build such answers.

The same ``ResponseMsg`` shape is what the simulator returns and what the callback receiver answers M-PESA
with, so one builder serves both.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from worker.errors import ProtocolError
from worker.protocol.codes import ResponseOutcome, classify_response_code
from worker.protocol.request import REQUEST_NS, SOAP_ENV_NS, cdata, default_namespace, serialize
from worker.protocol.xml import child, child_text, descendant, local_name, parse_untrusted

RESPONSE_NS = "http://api-v1.gen.mm.vodafone.com/mminterface/response"
_FAULT_TEXT_LIMIT = 200


@dataclass(frozen=True)
class SyncResponse:
    """M-PESA's answer to a request: accepted for processing or not; no money has moved yet."""

    code: str
    description: str
    conversation_id: str | None
    originator_conversation_id: str | None
    service_status: str | None

    @property
    def outcome(self) -> ResponseOutcome:
        return classify_response_code(self.code)


def _own_text(element: etree._Element) -> str:
    # Only the element's own text nodes: a comment next to the CDATA must not leak into the document.
    parts = [element.text or ""]
    parts.extend(node.tail or "" for node in element)
    return "".join(parts)


def soap_body(envelope: etree._Element) -> etree._Element:
    """The SOAP Body of a parsed envelope, in whatever namespace prefix the sender chose."""
    if local_name(envelope) != "Envelope":
        raise ProtocolError(f"expected a SOAP Envelope, got {local_name(envelope)[:60]!r}")
    body = child(envelope, "Body")
    if body is None:
        raise ProtocolError("the SOAP envelope has no Body")
    return body


def _fault_error(body: etree._Element) -> ProtocolError | None:
    fault = child(body, "Fault")
    if fault is None:
        return None
    text = child_text(fault, "faultstring") or ""
    return ProtocolError(f"SOAP fault: {text[:_FAULT_TEXT_LIMIT]!r}")


def embedded_document(body: bytes, message: str) -> etree._Element:
    """Parse an envelope and the document its ``message`` element carries (CDATA, escaped text or markup).

    Both layers are untrusted, so both go through ``parse_untrusted``.
    """
    soap = soap_body(parse_untrusted(body))
    holder = child(soap, message)
    if holder is None:
        holder = descendant(soap, message)
    if holder is None:
        fault = _fault_error(soap)
        raise fault or ProtocolError(f"the SOAP Body holds no {message}")
    for node in holder:
        if isinstance(node.tag, str):
            return node
    text = _own_text(holder).lstrip("\ufeff \t\r\n")
    if not text:
        raise ProtocolError(f"{message} is empty")
    return parse_untrusted(text)


def _optional(element: etree._Element, name: str) -> str | None:
    value = child_text(element, name)
    return value or None


def response_from_element(root: etree._Element) -> SyncResponse:
    """Read a ``response``/``Response`` document in any namespace (real traffic capitalised the root)."""
    if local_name(root).lower() != "response":
        raise ProtocolError(f"expected a response document, got {local_name(root)[:60]!r}")
    code = child_text(root, "ResponseCode")
    if not code:
        raise ProtocolError("the response has no ResponseCode")
    return SyncResponse(
        code=code,
        description=child_text(root, "ResponseDesc") or "",
        conversation_id=_optional(root, "ConversationID"),
        originator_conversation_id=_optional(root, "OriginatorConversationID"),
        service_status=_optional(root, "ServiceStatus"),
    )


def parse_document(text: str | bytes) -> etree._Element:
    """``parse_untrusted`` for a document handed over as text, which may hold unencodable surrogates."""
    try:
        return parse_untrusted(text)
    except UnicodeEncodeError as exc:
        raise ProtocolError("the document is not encodable text") from exc


def parse_response_document(text: str | bytes) -> SyncResponse:
    """Parse the inner ``response`` document alone (the text of ``ResponseMsg``)."""
    return response_from_element(parse_document(text))


def parse_response_envelope(body: bytes) -> SyncResponse:
    """Parse a whole ``GenericAPIResponse`` SOAP envelope; anything unreadable is a ProtocolError."""
    return response_from_element(embedded_document(body, "ResponseMsg"))


def _text_element(parent: etree._Element, tag: str, value: str) -> None:
    node = etree.SubElement(parent, tag)
    try:
        node.text = value
    except ValueError as exc:
        raise ProtocolError(f"{etree.QName(tag).localname} contains characters XML cannot carry") from exc


def envelope_with_message(message_tag: str, document: bytes, nsmap: dict[str, str]) -> bytes:
    """A SOAP 1.1 envelope whose Body holds one message element carrying ``document`` as CDATA."""
    envelope = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap={"soapenv": SOAP_ENV_NS, **nsmap})
    etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Header")
    body = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body")
    message = etree.SubElement(body, message_tag)
    message.text = cdata(document.decode("utf-8"))
    return serialize(envelope)


def build_response_document(
    code: str,
    description: str,
    *,
    conversation_id: str | None = None,
    originator_conversation_id: str | None = None,
    service_status: str | None = None,
) -> bytes:
    """The inner ``response`` document, elements in XSD order, absent values left out."""
    root = etree.Element(f"{{{RESPONSE_NS}}}response", nsmap=default_namespace(RESPONSE_NS))
    for name, value in (
        ("ResponseCode", code),
        ("ResponseDesc", description),
        ("ConversationID", conversation_id),
        ("OriginatorConversationID", originator_conversation_id),
        ("ServiceStatus", service_status),
    ):
        if value is not None:
            _text_element(root, f"{{{RESPONSE_NS}}}{name}", value)
    return serialize(root)


def build_response_envelope(
    code: str,
    description: str,
    *,
    conversation_id: str | None = None,
    originator_conversation_id: str | None = None,
    service_status: str | None = None,
    message_namespace: str = REQUEST_NS,
) -> bytes:
    """A ``ResponseMsg`` envelope: the simulator's GenericAPIResponse and the result receiver's answer.

    v1.5's examples put ``ResponseMsg`` in the request namespace even for the result receiver, while the
    result WSDL declares it in the result namespace; ``message_namespace`` lets a caller choose.
    """
    document = build_response_document(
        code,
        description,
        conversation_id=conversation_id,
        originator_conversation_id=originator_conversation_id,
        service_status=service_status,
    )
    prefix = "req" if message_namespace == REQUEST_NS else "res"
    return envelope_with_message(f"{{{message_namespace}}}ResponseMsg", document, {prefix: message_namespace})
