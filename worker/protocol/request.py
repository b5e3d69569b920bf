"""Build the outbound G2 request: the inner ``request`` document and the SOAP envelope that carries it.

Element order follows Safaricom's request schema (the inline-schema WSDL, which spells ``PrimaryParty``
correctly). The document is what the gateway validates; the envelope only transports it as CDATA text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import cast

from lxml import etree

from worker.errors import ProtocolError

REQUEST_NS = "http://api-v1.gen.mm.vodafone.com/mminterface/request"
SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"

PAYMENT_COMMANDS = frozenset(
    {
        "BusinessPayment",
        "SalaryPayment",
        "PromotionPayment",
        "BusinessPaymentWithWithdrawalChargePaid",
        "SalaryPaymentWithWithdrawalChargePaid",
    }
)
STATUS_QUERY_COMMAND = "TransactionStatusQuery"

_CALLER_TYPE_API = "2"
_IDENTIFIER_MSISDN = "1"
_IDENTIFIER_SHORTCODE = "4"
_IDENTIFIER_OPERATOR_USERNAME = "11"
_KEY_OWNER_API_CALLER = "1"
# Every sample and the 2014 production trace carry these unused placeholders; mirror what was accepted.
_CALLER_PASSWORD_PLACEHOLDER = "Password0"  # noqa: S105 - a placeholder, not a secret
_CALLER_CHECKSUM_PLACEHOLDER = "CheckSum0"
_QUEUE_TIMEOUT_KEY = "QueueTimeoutURL"
_MSISDN_RE = re.compile(r"254[17][0-9]{8}")
_CENT = Decimal("0.01")
_MAX_ORIGINATOR_ID = 128
_MAX_REMARK = 255


def default_namespace(uri: str) -> dict[str, str]:
    """An nsmap with a default namespace; lxml-stubs do not admit the ``None`` key lxml requires."""
    return cast("dict[str, str]", {None: uri})


@dataclass(frozen=True)
class Initiator:
    """The API operator who signs requests; the credential is already encrypted (see credential.py)."""

    name: str
    security_credential: str = field(repr=False)
    shortcode: str


XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def serialize(root: etree._Element) -> bytes:
    """UTF-8 with the double-quoted declaration Safaricom's own examples carry."""
    return XML_DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)


def _q(name: str) -> str:
    return f"{{{REQUEST_NS}}}{name}"


def _add(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    node = etree.SubElement(parent, _q(name))
    if text is not None:
        try:
            node.text = text
        except ValueError as exc:
            raise ProtocolError(f"{name} contains characters XML cannot carry") from exc
    return node


def _add_pairs(parent: etree._Element, item_name: str, pairs: list[tuple[str, str]]) -> None:
    for key, value in pairs:
        item = _add(parent, item_name)
        _add(item, "Key", key)
        _add(item, "Value", value)


def format_amount(amount: Decimal) -> str:
    """Two decimals, exactly; an amount that would need rounding is refused, never silently changed."""
    try:
        if not amount.is_finite() or amount <= 0:
            raise ProtocolError(f"amount {amount} is not a positive finite number")
        quantized = amount.quantize(_CENT)
    except InvalidOperation as exc:
        raise ProtocolError(f"amount {amount} cannot be written with two decimals") from exc
    if quantized != amount:
        raise ProtocolError(f"amount {amount} has more than two decimals")
    return f"{quantized:.2f}"


def _check_common(originator_conversation_id: str, remark: str) -> None:
    if not originator_conversation_id or len(originator_conversation_id) > _MAX_ORIGINATOR_ID:
        raise ProtocolError("OriginatorConversationID must be 1 to 128 characters")
    if len(remark) > _MAX_REMARK:
        raise ProtocolError("Remark must be at most 255 characters")


def _reference_items(queue_timeout_url: str, reference: Mapping[str, str]) -> list[tuple[str, str]]:
    if _QUEUE_TIMEOUT_KEY in reference:
        raise ProtocolError("QueueTimeoutURL is set by its own argument, not as a reference item")
    return [(_QUEUE_TIMEOUT_KEY, queue_timeout_url), *reference.items()]


def _document(
    *,
    command_id: str,
    originator_conversation_id: str,
    remark: str,
    parameters: list[tuple[str, str]],
    reference: list[tuple[str, str]],
    timestamp: str,
    initiator: Initiator,
    result_url: str,
    primary_party: str,
    receiver_msisdn: str | None,
) -> bytes:
    root = etree.Element(_q("request"), nsmap=default_namespace(REQUEST_NS))
    transaction = _add(root, "Transaction")
    _add(transaction, "CommandID", command_id)
    _add(transaction, "LanguageCode", "0")
    _add(transaction, "OriginatorConversationID", originator_conversation_id)
    _add(transaction, "ConversationID", "")
    _add(transaction, "Remark", remark)
    _add_pairs(_add(transaction, "Parameters"), "Parameter", parameters)
    _add_pairs(_add(transaction, "ReferenceData"), "ReferenceItem", reference)
    _add(transaction, "Timestamp", timestamp)

    identity = _add(root, "Identity")
    caller = _add(identity, "Caller")
    _add(caller, "CallerType", _CALLER_TYPE_API)
    _add(caller, "ThirdPartyID", "")
    _add(caller, "Password", _CALLER_PASSWORD_PLACEHOLDER)
    _add(caller, "CheckSum", _CALLER_CHECKSUM_PLACEHOLDER)
    _add(caller, "ResultURL", result_url)
    initiator_node = _add(identity, "Initiator")
    _add(initiator_node, "IdentifierType", _IDENTIFIER_OPERATOR_USERNAME)
    _add(initiator_node, "Identifier", initiator.name)
    _add(initiator_node, "SecurityCredential", initiator.security_credential)
    _add(initiator_node, "ShortCode", initiator.shortcode)
    primary = _add(identity, "PrimaryParty")
    _add(primary, "IdentifierType", _IDENTIFIER_SHORTCODE)
    _add(primary, "Identifier", primary_party)
    if receiver_msisdn is not None:
        receiver = _add(identity, "ReceiverParty")
        _add(receiver, "IdentifierType", _IDENTIFIER_MSISDN)
        _add(receiver, "Identifier", receiver_msisdn)
    _add(root, "KeyOwner", _KEY_OWNER_API_CALLER)
    return serialize(root)


def build_payment_request(
    *,
    command_id: str,
    originator_conversation_id: str,
    amount: Decimal,
    msisdn: str,
    remark: str,
    initiator: Initiator,
    result_url: str,
    queue_timeout_url: str,
    reference: Mapping[str, str],
    timestamp: str,
    primary_party: str | None = None,
) -> bytes:
    """The inner ``request`` document of a B2C payment.

    ``primary_party`` defaults to the initiator's shortcode; the 2014 trace shows a paying shortcode that
    differs from the initiator's, hence the override.
    """
    if command_id not in PAYMENT_COMMANDS:
        raise ProtocolError(f"{command_id!r} is not a B2C payment CommandID")
    if not _MSISDN_RE.fullmatch(msisdn):
        raise ProtocolError("the receiver MSISDN must be 2547 or 2541 followed by 8 digits")
    _check_common(originator_conversation_id, remark)
    return _document(
        command_id=command_id,
        originator_conversation_id=originator_conversation_id,
        remark=remark,
        parameters=[("Amount", format_amount(amount))],
        reference=_reference_items(queue_timeout_url, reference),
        timestamp=timestamp,
        initiator=initiator,
        result_url=result_url,
        primary_party=primary_party or initiator.shortcode,
        receiver_msisdn=msisdn,
    )


def build_status_query(
    *,
    originator_conversation_id: str,
    initiator: Initiator,
    result_url: str,
    queue_timeout_url: str,
    target_originator_conversation_id: str | None = None,
    receipt: str | None = None,
    remark: str = "",
    timestamp: str,
    primary_party: str | None = None,
) -> bytes:
    """A TransactionStatusQuery; its answer arrives later as a result for *this* request's own id.

    Only the receipt finds payments older than about 15 days, so both lookup keys are sent when known.
    """
    parameters: list[tuple[str, str]] = []
    if target_originator_conversation_id:
        parameters.append(("OriginatorConversationID", target_originator_conversation_id))
    if receipt:
        parameters.append(("ReceiptNumber", receipt))
    if not parameters:
        raise ProtocolError("a status query needs the original OriginatorConversationID or a receipt")
    _check_common(originator_conversation_id, remark)
    return _document(
        command_id=STATUS_QUERY_COMMAND,
        originator_conversation_id=originator_conversation_id,
        remark=remark,
        parameters=parameters,
        reference=[(_QUEUE_TIMEOUT_KEY, queue_timeout_url)],
        timestamp=timestamp,
        initiator=initiator,
        result_url=result_url,
        primary_party=primary_party or initiator.shortcode,
        receiver_msisdn=None,
    )


def cdata(text: str) -> etree.CDATA:
    """Wrap a document as CDATA; the gateway reads the text, so it must not be escaped markup."""
    try:
        return etree.CDATA(text)
    except ValueError as exc:
        raise ProtocolError("the embedded document cannot be carried as CDATA") from exc


def build_envelope(
    *,
    inner: bytes,
    sp_id: str,
    sp_password_digest: str,
    service_id: str,
    timestamp: str,
    header_namespace: str,
) -> bytes:
    """A SOAP 1.1 ``GenericAPIRequest``; header order spId, spPassword, serviceId, timeStamp."""
    envelope = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap={"soapenv": SOAP_ENV_NS, "req": REQUEST_NS})
    header = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Header")
    soap_header = etree.SubElement(header, f"{{{header_namespace}}}RequestSOAPHeader", nsmap={"tns": header_namespace})
    for name, value in (
        ("spId", sp_id),
        ("spPassword", sp_password_digest),
        ("serviceId", service_id),
        ("timeStamp", timestamp),
    ):
        node = etree.SubElement(soap_header, f"{{{header_namespace}}}{name}")
        try:
            node.text = value
        except ValueError as exc:
            raise ProtocolError(f"{name} contains characters XML cannot carry") from exc
    body = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body")
    message = etree.SubElement(body, f"{{{REQUEST_NS}}}RequestMsg")
    try:
        text = inner.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("the request document is not UTF-8") from exc
    message.text = cdata(text)
    return serialize(envelope)
