"""The gateway's side of ``GenericAPIRequest``: read what a client sent, as the real Broker would.

Used by the simulator. Reading is lenient where real clients differ (the header namespace, CDATA or escaped
text, ``PrimartyParty`` from the shipped XSD, element case) and strict where safety is at stake: the
envelope and the document inside it are both untrusted and both go through ``parse_untrusted``.
Validation against the project's request schema is a separate step, so that a server can still read the
OriginatorConversationID of an invalid request and echo it in its error answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from worker.errors import ProtocolError
from worker.protocol.xml import child, child_text, local_name, parse_untrusted
from worker.resources import wsdl_path

HEADER_NAMESPACES = (
    "http://www.huawei.com/schema/osg/common/v2_1",
    "http://www.huawei.com.cn/schema/common/v2_1",
)
REQUEST_SCHEMA_FILE = "CPSInterface_Request.xsd"
_MAX_ERRORS = 20


@dataclass(frozen=True)
class RequestHeader:
    """The ``RequestSOAPHeader``; ``namespace`` tells which of the two namespaces the client used."""

    sp_id: str
    sp_password: str | None = field(repr=False)
    service_id: str | None
    timestamp: str | None
    namespace: str


@dataclass(frozen=True)
class ParsedRequest:
    """The fields of the inner ``request`` a gateway acts on; absent optional parts are None."""

    command_id: str
    originator_conversation_id: str
    remark: str
    parameters: dict[str, str]
    reference: dict[str, str]
    timestamp: str
    initiator_name: str
    security_credential: str = field(repr=False)
    initiator_shortcode: str | None
    primary_party: str | None
    receiver_party: str | None
    result_url: str | None


@dataclass(frozen=True)
class InboundRequest:
    """One received request: its header, the inner document (UTF-8, declaration dropped), what it says."""

    header: RequestHeader
    document: bytes
    request: ParsedRequest


def _soap_part(envelope: etree._Element, name: str) -> etree._Element | None:
    if local_name(envelope) != "Envelope":
        raise ProtocolError(f"expected a SOAP Envelope, got {local_name(envelope)[:60]!r}")
    return child(envelope, name)


def _parse_header(envelope: etree._Element) -> RequestHeader:
    soap_header = _soap_part(envelope, "Header")
    node = child(soap_header, "RequestSOAPHeader") if soap_header is not None else None
    if node is None:
        raise ProtocolError("the request has no RequestSOAPHeader")
    namespace = etree.QName(node).namespace or ""
    if namespace not in HEADER_NAMESPACES:
        raise ProtocolError(f"RequestSOAPHeader in an unknown namespace {namespace[:100]!r}")
    sp_id = child_text(node, "spId")
    if not sp_id:
        raise ProtocolError("the RequestSOAPHeader has no spId")
    return RequestHeader(
        sp_id=sp_id,
        sp_password=child_text(node, "spPassword"),
        service_id=child_text(node, "serviceId"),
        timestamp=child_text(node, "timeStamp"),
        namespace=namespace,
    )


def _strip_declaration(text: str) -> str:
    # The text is already decoded: a declaration naming another encoding would now be a lie.
    if text.startswith("<?xml"):
        end = text.find("?>")
        if end < 0:
            raise ProtocolError("the request document has an unterminated XML declaration")
        return text[end + 2 :].lstrip()
    return text


def _inner_document(envelope: etree._Element) -> tuple[bytes, etree._Element]:
    """The document carried by RequestMsg, as UTF-8 bytes and parsed; CDATA, escaped text or markup."""
    body = _soap_part(envelope, "Body")
    if body is None:
        raise ProtocolError("the SOAP envelope has no Body")
    holder = child(body, "RequestMsg")
    if holder is None:
        raise ProtocolError("the SOAP Body holds no RequestMsg")
    for node in holder:
        if isinstance(node.tag, str):
            # Some clients embed the request as markup instead of text; accept it as the same document.
            document = etree.tostring(node, encoding="UTF-8")
            return document, parse_untrusted(document)
    text = "".join([holder.text or "", *(node.tail or "" for node in holder)])
    text = _strip_declaration(text.lstrip("\ufeff \t\r\n"))
    if not text:
        raise ProtocolError("RequestMsg is empty")
    document = text.encode("utf-8")
    return document, parse_untrusted(document)


def _pairs(parent: etree._Element | None, item_name: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    if parent is None:
        return pairs
    for item in parent:
        if not isinstance(item.tag, str) or local_name(item).lower() != item_name.lower():
            continue
        key = child_text(item, "Key")
        if key:
            pairs[key] = child_text(item, "Value") or ""
    return pairs


def _text(parent: etree._Element | None, name: str) -> str | None:
    """Stripped text of a child of a possibly absent element; empty text counts as absent."""
    if parent is None:
        return None
    return child_text(parent, name) or None


def _part(parent: etree._Element | None, *names: str) -> etree._Element | None:
    for name in names:
        node = child(parent, name) if parent is not None else None
        if node is not None:
            return node
    return None


def _parse_request(root: etree._Element) -> ParsedRequest:
    if local_name(root).lower() != "request":
        raise ProtocolError(f"expected a request document, got {local_name(root)[:60]!r}")
    transaction = child(root, "Transaction")
    if transaction is None:
        raise ProtocolError("the request has no Transaction")
    identity = child(root, "Identity")
    initiator = _part(identity, "Initiator")
    return ParsedRequest(
        command_id=_text(transaction, "CommandID") or "",
        originator_conversation_id=_text(transaction, "OriginatorConversationID") or "",
        remark=_text(transaction, "Remark") or "",
        parameters=_pairs(child(transaction, "Parameters"), "Parameter"),
        reference=_pairs(child(transaction, "ReferenceData"), "ReferenceItem"),
        timestamp=_text(transaction, "Timestamp") or "",
        initiator_name=_text(initiator, "Identifier") or "",
        security_credential=_text(initiator, "SecurityCredential") or "",
        initiator_shortcode=_text(initiator, "ShortCode"),
        # The shipped XSD's misspelling: a client generated from it would send this.
        primary_party=_text(_part(identity, "PrimaryParty", "PrimartyParty"), "Identifier"),
        receiver_party=_text(_part(identity, "ReceiverParty"), "Identifier"),
        result_url=_text(_part(identity, "Caller"), "ResultURL"),
    )


def parse_request_envelope(body: bytes) -> InboundRequest:
    """Read a ``GenericAPIRequest`` envelope; ProtocolError (UnsafeXmlError) when it cannot be read safely."""
    envelope = parse_untrusted(body)
    header = _parse_header(envelope)
    document, root = _inner_document(envelope)
    return InboundRequest(header=header, document=document, request=_parse_request(root))


class _RequestSchema:
    """The request XSD, compiled once on first use; validations are serialised as they share one error log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._schema: etree.XMLSchema | None = None

    def _load(self) -> etree.XMLSchema:
        path = wsdl_path(REQUEST_SCHEMA_FILE)
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        try:
            return etree.XMLSchema(etree.parse(str(path), parser))
        except (OSError, etree.XMLSyntaxError, etree.XMLSchemaParseError) as exc:
            raise ProtocolError(f"the request schema {path} cannot be loaded: {exc}") from exc

    def validate(self, root: etree._Element) -> list[str]:
        with self._lock:
            if self._schema is None:
                self._schema = self._load()
            if self._schema.validate(root):
                return []
            errors: Iterable[Any] = self._schema.error_log  # type: ignore[assignment]  # stubs omit __iter__
            return [f"line {error.line}: {error.message}" for error in errors][:_MAX_ERRORS]


_REQUEST_SCHEMA = _RequestSchema()


def validate_request_document(doc: bytes) -> list[str]:
    """Schema errors of an inner ``request`` document (empty when valid); unreadable XML is one error."""
    try:
        root = parse_untrusted(doc)
    except ProtocolError as exc:
        return [str(exc)]
    return _REQUEST_SCHEMA.validate(root)
