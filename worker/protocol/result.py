"""The asynchronous result callback (``GenericAPIResult``) and the queue-timeout notification.

Real results differ from the XSD in root name, namespaces, id casing, ResultType spelling, parameter element
names and parameter keys (PROTOCOL §4); the parser accepts all of them, since a result it cannot read is a
payment whose fate nobody learns.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from lxml import etree

from worker.errors import ProtocolError
from worker.protocol.codes import ResultOutcome, classify_result_code
from worker.protocol.request import SOAP_ENV_NS, default_namespace, serialize
from worker.protocol.response import embedded_document, envelope_with_message, parse_document, soap_body
from worker.protocol.xml import child, child_text, local_name, parse_untrusted

RESULT_NS = "http://api-v1.gen.mm.vodafone.com/mminterface/result"
TIMEOUT_NS = "http://www.csapi.org/schema/timeoutnotification/data/v1_0/local"
NAIROBI = timezone(timedelta(hours=3), "EAT")

_RECEIPT_KEYS = ("TransactionReceipt", "ReceiptNo", "ReceiptNumber")
_AMOUNT_KEYS = ("TransactionAmount", "Amount")
_COMPLETED_KEYS = ("TransactionCompletedDateTime", "Transaction Datetime", "FinalisedTime")
_NAME_KEYS = ("ReceiverPartyPublicName", "CreditPartyName")
_WORKING_KEYS = ("B2CWorkingAccountAvailableFunds", "Working Account Available Funds")
_UTILITY_KEYS = ("B2CUtilityAccountAvailableFunds", "Utility Account Available Funds")
_CHARGES_KEYS = ("B2CChargesPaidAccountAvailableFunds", "Charges Paid Account Available Funds")
_REGISTERED_KEYS = ("B2CRecipientIsRegisteredCustomer",)
_WITHDRAWAL_KEYS = ("B2CWithdrawalChargeAmount",)

_CURRENCY_RE = re.compile(r"^(?:ksh|kes)\.?\s*", re.IGNORECASE)
_NAME_PREFIX_RE = re.compile(r"^[\d*+]{6,15}\s*-\s*")
_DATETIME_FORMATS = ("%d.%m.%Y %H:%M:%S", "%Y%m%d%H%M%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class ResultDetails:
    """The typed view of the result parameters; a value that cannot be read is None, never a guess."""

    receipt: str | None = None
    amount: Decimal | None = None
    completed_at: datetime | None = None
    public_name: str | None = None
    working_balance: Decimal | None = None
    utility_balance: Decimal | None = None
    charges_balance: Decimal | None = None
    recipient_registered: bool | None = None
    withdrawal_charge: Decimal | None = None


@dataclass(frozen=True)
class Result:
    """One result callback; ``parameters`` and ``reference`` keep every key exactly as M-PESA sent it."""

    result_type: str
    code: str
    description: str
    originator_conversation_id: str | None
    conversation_id: str | None
    transaction_id: str | None
    parameters: dict[str, str]
    reference: dict[str, str]
    details: ResultDetails

    @property
    def outcome(self) -> ResultOutcome:
        return classify_result_code(self.code)


@dataclass(frozen=True)
class QueueTimeout:
    """``notifyQueueTimeout``: a cached request (response 100000000) expired before M-PESA processed it."""

    originator_conversation_id: str | None
    conversation_id: str | None
    origin_request: bytes | None = field(default=None, repr=False)
    extension: dict[str, str] = field(default_factory=dict)


def _norm_key(key: str) -> str:
    return re.sub(r"[\s_]", "", key).lower()


def _lookup(parameters: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    normalised = {_norm_key(key): value for key, value in parameters.items()}
    for key in keys:
        value = normalised.get(_norm_key(key))
        if value:
            return value
    return None


def parse_money(value: str | None) -> Decimal | None:
    """``1500.00``, ``Ksh200.00``, ``KES 1,000.00``: exact Decimal, or None when unreadable."""
    if value is None:
        return None
    text = _CURRENCY_RE.sub("", value.strip()).replace(",", "")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def parse_completed_at(value: str | None) -> datetime | None:
    """``dd.MM.yyyy HH:mm:ss`` (and older spellings); a stamp without zone is Nairobi time."""
    if value is None:
        return None
    text = value.strip()
    for pattern in _DATETIME_FORMATS:
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=NAIROBI)
        except ValueError:
            continue
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=NAIROBI)


def _public_name(value: str | None) -> str | None:
    # ``2547XXXXXXXX - First Last``: keep the name only, so the full MSISDN does not travel further.
    if value is None:
        return None
    name = _NAME_PREFIX_RE.sub("", value.strip()).strip()
    return name or None


def _registered(value: str | None) -> bool | None:
    flag = (value or "").strip().upper()
    return {"Y": True, "YES": True, "N": False, "NO": False}.get(flag)


def details_from(parameters: Mapping[str, str], *, transaction_id: str | None, code: str) -> ResultDetails:
    receipt = _lookup(parameters, _RECEIPT_KEYS)
    if receipt is None and classify_result_code(code) is ResultOutcome.COMPLETED:
        # Results before 2015 carried no receipt parameter; the TransactionID is the M-PESA receipt.
        receipt = transaction_id
    return ResultDetails(
        receipt=receipt,
        amount=parse_money(_lookup(parameters, _AMOUNT_KEYS)),
        completed_at=parse_completed_at(_lookup(parameters, _COMPLETED_KEYS)),
        public_name=_public_name(_lookup(parameters, _NAME_KEYS)),
        working_balance=parse_money(_lookup(parameters, _WORKING_KEYS)),
        utility_balance=parse_money(_lookup(parameters, _UTILITY_KEYS)),
        charges_balance=parse_money(_lookup(parameters, _CHARGES_KEYS)),
        recipient_registered=_registered(_lookup(parameters, _REGISTERED_KEYS)),
        withdrawal_charge=parse_money(_lookup(parameters, _WITHDRAWAL_KEYS)),
    )


def _elements(parent: etree._Element) -> Iterator[etree._Element]:
    return (node for node in parent if isinstance(node.tag, str))


def _pairs(container: etree._Element | None, item_names: tuple[str, ...]) -> dict[str, str]:
    """Key/Value items in any namespace; old results put Key/Value in the request namespace."""
    pairs: dict[str, str] = {}
    if container is None:
        return pairs
    wanted = {name.lower() for name in item_names}
    for item in _elements(container):
        if local_name(item).lower() not in wanted:
            continue
        key = child_text(item, "Key")
        if not key or key in pairs:
            continue
        pairs[key] = child_text(item, "Value") or ""
    return pairs


def _optional(element: etree._Element, name: str) -> str | None:
    return child_text(element, name) or None


def result_from_element(root: etree._Element) -> Result:
    """Read a ``result``/``Result`` document in any namespace."""
    if local_name(root).lower() != "result":
        raise ProtocolError(f"expected a result document, got {local_name(root)[:60]!r}")
    code = child_text(root, "ResultCode")
    if not code:
        raise ProtocolError("the result has no ResultCode")
    container = child(root, "ResultParameters")
    if container is None:
        container = child(root, "Parameters")
    parameters = _pairs(container, ("ResultParameter", "Parameter"))
    reference = _pairs(child(root, "ReferenceData"), ("ReferenceItem",))
    transaction_id = _optional(root, "TransactionID")
    return Result(
        result_type=child_text(root, "ResultType") or "",
        code=code,
        description=child_text(root, "ResultDesc") or "",
        originator_conversation_id=_optional(root, "OriginatorConversationID"),
        conversation_id=_optional(root, "ConversationID"),
        transaction_id=transaction_id,
        parameters=parameters,
        reference=reference,
        details=details_from(parameters, transaction_id=transaction_id, code=code),
    )


def parse_result_document(text: str | bytes) -> Result:
    """Parse the inner ``result`` document alone (the text of ``ResultMsg``)."""
    return result_from_element(parse_document(text))


def parse_result_envelope(body: bytes) -> Result:
    """Parse a whole ``GenericAPIResult`` POST body; anything unreadable is a ProtocolError."""
    return result_from_element(embedded_document(body, "ResultMsg"))


def _decode_origin(text: str | None) -> bytes | None:
    if not text:
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _originator_from_origin(origin: bytes | None) -> str | None:
    """The original request's OriginatorConversationID, when the notification itself lacks it."""
    if origin is None:
        return None
    start = origin.find(b"<")
    if start < 0:
        return None
    try:
        request = embedded_document(origin[start:], "RequestMsg")
    except ProtocolError:
        return None
    transaction = child(request, "Transaction")
    return _optional(transaction, "OriginatorConversationID") if transaction is not None else None


def parse_queue_timeout(body: bytes) -> QueueTimeout:
    """Parse ``notifyQueueTimeout`` (the WSDL spells ``originReqeust``; v1.5's example ``originRequest``)."""
    soap = soap_body(parse_untrusted(body))
    node = child(soap, "notifyQueueTimeout")
    if node is None:
        raise ProtocolError("the SOAP Body holds no notifyQueueTimeout")
    origin_node = child(node, "originRequest")
    if origin_node is None:
        origin_node = child(node, "originReqeust")
    origin = _decode_origin(origin_node.text if origin_node is not None else None)
    extension = _pairs(child(node, "extensionInfo"), ("item",))
    originator = _optional(node, "originatorConversationID") or _originator_from_origin(origin)
    return QueueTimeout(
        originator_conversation_id=originator,
        conversation_id=_lookup(extension, ("ConversationID",)),
        origin_request=origin,
        extension=extension,
    )


def _text_element(parent: etree._Element, tag: str, value: str) -> etree._Element:
    node = etree.SubElement(parent, tag)
    try:
        node.text = value
    except ValueError as exc:
        raise ProtocolError(f"{etree.QName(tag).localname} contains characters XML cannot carry") from exc
    return node


def _add_items(parent: etree._Element, container: str, item: str, pairs: Mapping[str, str]) -> None:
    holder = etree.SubElement(parent, f"{{{RESULT_NS}}}{container}")
    for key, value in pairs.items():
        entry = etree.SubElement(holder, f"{{{RESULT_NS}}}{item}")
        _text_element(entry, f"{{{RESULT_NS}}}Key", key)
        _text_element(entry, f"{{{RESULT_NS}}}Value", value)


def build_result_document(
    *,
    code: str,
    description: str,
    originator_conversation_id: str | None,
    conversation_id: str | None,
    transaction_id: str | None = None,
    result_type: str = "0",
    parameters: Mapping[str, str] | None = None,
    reference: Mapping[str, str] | None = None,
) -> bytes:
    """The inner ``result`` document in the XSD's shape (the simulator's and the tests' dialect)."""
    root = etree.Element(f"{{{RESULT_NS}}}result", nsmap=default_namespace(RESULT_NS))
    for name, value in (
        ("ResultType", result_type),
        ("ResultCode", code),
        ("ResultDesc", description),
        ("OriginatorConversationID", originator_conversation_id),
        ("ConversationID", conversation_id),
        ("TransactionID", transaction_id),
    ):
        if value is not None:
            _text_element(root, f"{{{RESULT_NS}}}{name}", value)
    if parameters:
        _add_items(root, "ResultParameters", "ResultParameter", parameters)
    if reference:
        _add_items(root, "ReferenceData", "ReferenceItem", reference)
    return serialize(root)


def build_result_envelope(
    *,
    code: str,
    description: str,
    originator_conversation_id: str | None,
    conversation_id: str | None,
    transaction_id: str | None = None,
    result_type: str = "0",
    parameters: Mapping[str, str] | None = None,
    reference: Mapping[str, str] | None = None,
) -> bytes:
    """A ``GenericAPIResult`` POST body: ``ResultMsg`` (result namespace) carrying the document as CDATA."""
    document = build_result_document(
        code=code,
        description=description,
        originator_conversation_id=originator_conversation_id,
        conversation_id=conversation_id,
        transaction_id=transaction_id,
        result_type=result_type,
        parameters=parameters,
        reference=reference,
    )
    return envelope_with_message(f"{{{RESULT_NS}}}ResultMsg", document, {"res": RESULT_NS})


def build_queue_timeout_response(code: str = "00000000", description: str = "success") -> bytes:
    """The answer to ``notifyQueueTimeout`` in the shape of v1.5's example."""
    envelope = etree.Element(
        f"{{{SOAP_ENV_NS}}}Envelope",
        nsmap={"soapenv": SOAP_ENV_NS, "loc": TIMEOUT_NS, "res": RESULT_NS},
    )
    etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Header")
    body = etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body")
    answer = etree.SubElement(body, f"{{{TIMEOUT_NS}}}notifyQueueTimeoutResponse")
    result = etree.SubElement(answer, f"{{{TIMEOUT_NS}}}result")
    _text_element(result, f"{{{RESULT_NS}}}ResultCode", code)
    _text_element(result, f"{{{RESULT_NS}}}ResultDesc", description)
    return serialize(envelope)
