"""The gateway's outgoing messages, written as text templates in each dialect seen in real traffic.

Deliberately not built with the worker's serialisers: the simulator has to keep sending what M-PESA sends
(PROTOCOL section 4), including the shapes the XSD does not allow, so that the receiver is tested against
the wire and not against itself.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from enum import StrEnum
from xml.sax.saxutils import escape

NS_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
NS_REQUEST = "http://api-v1.gen.mm.vodafone.com/mminterface/request"
NS_RESULT = "http://api-v1.gen.mm.vodafone.com/mminterface/result"
NS_QUEUE_TIMEOUT = "http://www.csapi.org/schema/timeoutnotification/data/v1_0/local"
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'


class Dialect(StrEnum):
    XSD = "xsd"
    UPPERCASE_ROOT = "uppercase_root"
    NO_NAMESPACE = "no_namespace"
    OTHER_NAMESPACE = "other_namespace"
    ID_CASING = "id_casing"
    COMPLETED_WORD = "completed_word"
    OLD_PARAMETERS = "old_parameters"
    NO_DECLARATION = "no_declaration"
    LEADING_WHITESPACE = "leading_whitespace"
    TRACE_2014 = "trace_2014"


@dataclass(frozen=True)
class ResultDocument:
    """One GenericAPIResult's content; ``legacy_parameters`` are the pre-2015 keys for the old dialects."""

    code: str
    description: str
    originator_conversation_id: str
    conversation_id: str
    transaction_id: str
    parameters: tuple[tuple[str, str], ...] = ()
    legacy_parameters: tuple[tuple[str, str], ...] = ()
    reference: tuple[tuple[str, str], ...] = ()


def _e(value: str) -> str:
    return escape(value)


def _pairs(items: tuple[tuple[str, str], ...], wrapper: str, key_ns: str | None) -> str:
    attr = f' xmlns="{key_ns}"' if key_ns else ""
    return "".join(
        f"<{wrapper}><Key{attr}>{_e(key)}</Key><Value{attr}>{_e(value)}</Value></{wrapper}>" for key, value in items
    )


def result_document(doc: ResultDocument, dialect: Dialect = Dialect.XSD) -> str:
    """The inner ``result`` document as the text that goes into the CDATA section."""
    legacy = dialect in (Dialect.OLD_PARAMETERS, Dialect.TRACE_2014)
    root = "Result" if dialect in (Dialect.UPPERCASE_ROOT, Dialect.TRACE_2014) else "result"
    if dialect == Dialect.NO_NAMESPACE:
        namespace = ""
    elif dialect == Dialect.OTHER_NAMESPACE:
        namespace = f' xmlns="{NS_REQUEST}"'
    elif dialect == Dialect.TRACE_2014:
        namespace = f' xmlns:i="http://www.w3.org/2001/XMLSchema-instance" xmlns="{NS_RESULT}"'
    else:
        namespace = f' xmlns="{NS_RESULT}"'
    result_type = "Completed" if dialect in (Dialect.COMPLETED_WORD, Dialect.TRACE_2014) else "0"
    id_suffix = "Id" if dialect == Dialect.ID_CASING else "ID"
    if legacy:
        parameters = _pairs(doc.legacy_parameters, "Parameter", NS_REQUEST)
        reference = _pairs(doc.reference, "ReferenceItem", NS_REQUEST)
    else:
        parameters = _pairs(doc.parameters, "ResultParameter", None)
        reference = _pairs(doc.reference, "ReferenceItem", None)
    body = (
        f"<{root}{namespace}>"
        f"<ResultType>{result_type}</ResultType>"
        f"<ResultCode>{_e(doc.code)}</ResultCode>"
        f"<ResultDesc>{_e(doc.description)}</ResultDesc>"
        f"<OriginatorConversationID>{_e(doc.originator_conversation_id)}</OriginatorConversationID>"
        f"<Conversation{id_suffix}>{_e(doc.conversation_id)}</Conversation{id_suffix}>"
        f"<Transaction{id_suffix}>{_e(doc.transaction_id)}</Transaction{id_suffix}>"
        + (f"<ResultParameters>{parameters}</ResultParameters>" if parameters else "")
        + (f"<ReferenceData>{reference}</ReferenceData>" if doc.reference else "")
        + f"</{root}>"
    )
    if dialect in (Dialect.NO_DECLARATION, Dialect.TRACE_2014):
        return body
    if dialect == Dialect.LEADING_WHITESPACE:
        return f"\n    {XML_DECLARATION}\n{body}"
    return f"{XML_DECLARATION}\n{body}"


def result_envelope(doc: ResultDocument, dialect: Dialect = Dialect.XSD) -> bytes:
    """The GenericAPIResult SOAP request the gateway POSTs to the ResultURL."""
    inner = result_document(doc, dialect)
    if dialect == Dialect.TRACE_2014:
        text = (
            f'<s:Envelope xmlns:s="{NS_SOAP}">'
            '<s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
            f'<ResultMsg xmlns="{NS_RESULT}"><![CDATA[{inner}]]></ResultMsg>'
            "</s:Body></s:Envelope>"
        )
    else:
        text = (
            f'<soapenv:Envelope xmlns:soapenv="{NS_SOAP}" xmlns:res="{NS_RESULT}">\n'
            "   <soapenv:Header/>\n"
            "   <soapenv:Body>\n"
            f"      <res:ResultMsg><![CDATA[{inner}]]></res:ResultMsg>\n"
            "   </soapenv:Body>\n"
            "</soapenv:Envelope>\n"
        )
    return text.encode("utf-8")


def queue_timeout_envelope(originator_conversation_id: str, original_request: bytes) -> bytes:
    """notifyQueueTimeout as in v1.5's example: ``originRequest`` holds the base64 of the request."""
    encoded = base64.encodebytes(original_request).decode("ascii").strip()
    text = (
        f'<soapenv:Envelope xmlns:soapenv="{NS_SOAP}" xmlns:loc="{NS_QUEUE_TIMEOUT}"'
        f' xmlns:res="{NS_RESULT}">\n'
        "   <soapenv:Header/>\n"
        "   <soapenv:Body>\n"
        "      <loc:notifyQueueTimeout>\n"
        "         <loc:originatorConversationID>"
        f"{_e(originator_conversation_id)}</loc:originatorConversationID>\n"
        f"         <loc:originRequest>{encoded}</loc:originRequest>\n"
        "      </loc:notifyQueueTimeout>\n"
        "   </soapenv:Body>\n"
        "</soapenv:Envelope>\n"
    )
    return text.encode("utf-8")


def soap_fault(message: str) -> bytes:
    """What an application server in front of the Broker answers with its HTTP 500."""
    text = (
        f'<soapenv:Envelope xmlns:soapenv="{NS_SOAP}"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>soapenv:Server</faultcode><faultstring>{_e(message)}</faultstring>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )
    return text.encode("utf-8")


def truncate(envelope: bytes) -> bytes:
    """A response cut off mid-element, as a failing proxy or a crashed writer would leave it."""
    return envelope[: max(1, len(envelope) * 3 // 5)]
