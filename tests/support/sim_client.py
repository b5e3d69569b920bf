"""A G2 client written from the specification alone (PROTOCOL.md sections 2-4 and the v1.5 samples).

Deliberately independent of worker.protocol: raw SOAP text from string templates, the spPassword from
hashlib, the SecurityCredential from cryptography, responses read with plain lxml. If the simulator and the
project's own builders ever agreed on a mistake, this client would not share it.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.sax.saxutils import escape

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree

NS_OSG = "http://www.huawei.com/schema/osg/common/v2_1"
NS_XSD = "http://www.huawei.com.cn/schema/common/v2_1"

ENVELOPE = """<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" \
xmlns:req="http://api-v1.gen.mm.vodafone.com/mminterface/request">
   <soapenv:Header>
      <tns:RequestSOAPHeader xmlns:tns="{header_ns}">
         <tns:spId>{sp_id}</tns:spId>
         <tns:spPassword>{sp_password}</tns:spPassword>
         <tns:serviceId>{service_id}</tns:serviceId>
         <tns:timeStamp>{timestamp}</tns:timeStamp>
      </tns:RequestSOAPHeader>
   </soapenv:Header>
   <soapenv:Body>
      <req:RequestMsg><![CDATA[{inner}]]></req:RequestMsg>
   </soapenv:Body>
</soapenv:Envelope>"""

PAYMENT = """<?xml version="1.0" encoding="UTF-8"?>
<request xmlns="http://api-v1.gen.mm.vodafone.com/mminterface/request">
    <Transaction>
        <CommandID>{command}</CommandID>
        <LanguageCode>0</LanguageCode>
        <OriginatorConversationID>{ocid}</OriginatorConversationID>
        <ConversationID></ConversationID>
        <Remark>{remark}</Remark>
        <Parameters>
            <Parameter>
                <Key>Amount</Key>
                <Value>{amount}</Value>
            </Parameter>
        </Parameters>
        <ReferenceData>
            <ReferenceItem>
                <Key>QueueTimeoutURL</Key>
                <Value>{queue_timeout_url}</Value>
            </ReferenceItem>
            <ReferenceItem>
                <Key>Occasion</Key>
                <Value>{occasion}</Value>
            </ReferenceItem>
        </ReferenceData>
        <Timestamp>{timestamp}</Timestamp>
    </Transaction>
    <Identity>
        <Caller>
            <CallerType>2</CallerType>
            <ThirdPartyID></ThirdPartyID>
            <Password>Password0</Password>
            <CheckSum>CheckSum0</CheckSum>
            <ResultURL>{result_url}</ResultURL>
        </Caller>
        <Initiator>
            <IdentifierType>11</IdentifierType>
            <Identifier>{initiator}</Identifier>
            <SecurityCredential>{credential}</SecurityCredential>
            <ShortCode>{shortcode}</ShortCode>
        </Initiator>
        <PrimaryParty>
            <IdentifierType>4</IdentifierType>
            <Identifier>{shortcode}</Identifier>
            <ShortCode>{shortcode}</ShortCode>
        </PrimaryParty>
        <ReceiverParty>
            <IdentifierType>1</IdentifierType>
            <Identifier>{msisdn}</Identifier>
            <ShortCode></ShortCode>
        </ReceiverParty>
    </Identity>
    <KeyOwner>1</KeyOwner>
</request>"""

STATUS_QUERY = """<?xml version="1.0" encoding="UTF-8"?>
<request xmlns="http://api-v1.gen.mm.vodafone.com/mminterface/request">
    <Transaction>
        <CommandID>TransactionStatusQuery</CommandID>
        <LanguageCode>0</LanguageCode>
        <OriginatorConversationID>{ocid}</OriginatorConversationID>
        <ConversationID></ConversationID>
        <Remark>status</Remark>
        <Parameters>
            <Parameter>
                <Key>{key}</Key>
                <Value>{value}</Value>
            </Parameter>
        </Parameters>
        <ReferenceData>
            <ReferenceItem>
                <Key>QueueTimeoutURL</Key>
                <Value>{queue_timeout_url}</Value>
            </ReferenceItem>
        </ReferenceData>
        <Timestamp>{timestamp}</Timestamp>
    </Transaction>
    <Identity>
        <Caller>
            <CallerType>2</CallerType>
            <ThirdPartyID></ThirdPartyID>
            <Password>Password0</Password>
            <ResultURL>{result_url}</ResultURL>
        </Caller>
        <Initiator>
            <IdentifierType>11</IdentifierType>
            <Identifier>{initiator}</Identifier>
            <SecurityCredential>{credential}</SecurityCredential>
            <ShortCode>{shortcode}</ShortCode>
        </Initiator>
    </Identity>
    <KeyOwner>1</KeyOwner>
</request>"""


def sp_password(sp_id: str, password: str, timestamp: str, *, upper: bool = True) -> str:
    """base64 of the 64-character hex text of SHA-256(spId + password + timeStamp)."""
    hex_text = hashlib.sha256((sp_id + password + timestamp).encode()).hexdigest()
    return base64.b64encode((hex_text.upper() if upper else hex_text).encode()).decode()


def encrypt_credential(password: str, certificate_pem: bytes) -> str:
    """RSA PKCS#1 v1.5 with the certificate's key, base64."""
    key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    return base64.b64encode(key.encrypt(password.encode(), padding.PKCS1v15())).decode()  # type: ignore[union-attr]


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def compact(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")


@dataclass
class G2Client:
    host: str
    port: int
    sp_id: str
    sp_password: str
    service_id: str
    initiator: str
    initiator_password: str
    shortcode: str
    certificate: bytes
    result_url: str
    queue_timeout_url: str
    header_ns: str = NS_OSG
    upper_hex: bool = True

    def envelope(self, inner: str, *, sp_password_override: str | None = None, sp_id: str | None = None) -> bytes:
        stamp = compact(datetime.now(UTC))
        digest = sp_password_override or sp_password(sp_id or self.sp_id, self.sp_password, stamp, upper=self.upper_hex)
        return ENVELOPE.format(
            header_ns=self.header_ns,
            sp_id=sp_id or self.sp_id,
            sp_password=digest,
            service_id=self.service_id,
            timestamp=stamp,
            inner=inner,
        ).encode()

    def payment_document(
        self,
        ocid: str,
        msisdn: str,
        amount: str = "1500.00",
        *,
        command: str = "BusinessPayment",
        timestamp: str | None = None,
        initiator_password: str | None = None,
        occasion: str = "Salary Nov",
    ) -> str:
        return PAYMENT.format(
            command=command,
            ocid=escape(ocid),
            remark="payout",
            amount=amount,
            queue_timeout_url=escape(self.queue_timeout_url),
            occasion=escape(occasion),
            timestamp=timestamp or iso_now(),
            result_url=escape(self.result_url),
            initiator=self.initiator,
            credential=encrypt_credential(initiator_password or self.initiator_password, self.certificate),
            shortcode=self.shortcode,
            msisdn=msisdn,
        )

    def query_document(self, ocid: str, key: str, value: str, *, timestamp: str | None = None) -> str:
        return STATUS_QUERY.format(
            ocid=escape(ocid),
            key=key,
            value=escape(value),
            queue_timeout_url=escape(self.queue_timeout_url),
            timestamp=timestamp or iso_now(),
            result_url=escape(self.result_url),
            initiator=self.initiator,
            credential=encrypt_credential(self.initiator_password, self.certificate),
            shortcode=self.shortcode,
        )

    def post(self, body: bytes, *, timeout: float = 10.0) -> tuple[int, bytes]:
        """POST over a raw socket; returns (status, body). Socket errors propagate so tests can see them."""
        request = (
            f"POST /mminterface/request HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            'Content-Type: text/xml; charset=utf-8\r\nSOAPAction: ""\r\n'
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(request)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        raw = b"".join(chunks)
        head, _, content = raw.partition(b"\r\n\r\n")
        if not head:
            raise ConnectionError("the server closed the connection without an answer")
        status = int(head.split(b" ", 2)[1])
        return status, content

    def pay(self, ocid: str, msisdn: str, amount: str = "1500.00", **kw: object) -> tuple[int, bytes]:
        return self.post(self.envelope(self.payment_document(ocid, msisdn, amount, **kw)))  # type: ignore[arg-type]

    def query(self, ocid: str, key: str, value: str) -> tuple[int, bytes]:
        return self.post(self.envelope(self.query_document(ocid, key, value)))


def _parse(text: str | bytes) -> etree._Element:
    data = text.encode() if isinstance(text, str) else text
    data = data.lstrip()
    if data.startswith(b"<?xml"):
        data = data.split(b"?>", 1)[1]
    return etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def _find(element: etree._Element, name: str) -> etree._Element | None:
    for node in element.iter():
        if isinstance(node.tag, str) and _local(node).lower() == name.lower():
            return node
    return None


def embedded(envelope: bytes, holder: str) -> etree._Element:
    """The document carried as text by the Body's ``holder`` element (ResponseMsg / ResultMsg)."""
    node = _find(_parse(envelope), holder)
    assert node is not None, f"no {holder} in {envelope[:200]!r}"
    return _parse(node.text or "")


def response_fields(envelope: bytes) -> dict[str, str]:
    doc = embedded(envelope, "ResponseMsg")
    return {_local(node): (node.text or "").strip() for node in doc if isinstance(node.tag, str)}


@dataclass
class ResultView:
    fields: dict[str, str]
    parameters: dict[str, str]
    reference: dict[str, str]

    @property
    def code(self) -> str:
        return self.fields["ResultCode"]


def _pairs(container: etree._Element | None) -> dict[str, str]:
    pairs: dict[str, str] = {}
    if container is None:
        return pairs
    for item in container:
        if not isinstance(item.tag, str):
            continue
        key = next((c for c in item if isinstance(c.tag, str) and _local(c) == "Key"), None)
        value = next((c for c in item if isinstance(c.tag, str) and _local(c) == "Value"), None)
        if key is not None:
            pairs[(key.text or "").strip()] = (value.text or "").strip() if value is not None else ""
    return pairs


def result_view(envelope: bytes) -> ResultView:
    doc = embedded(envelope, "ResultMsg")
    fields = {
        _local(node): (node.text or "").strip()
        for node in doc
        if isinstance(node.tag, str) and _local(node) not in ("ResultParameters", "ReferenceData")
    }
    return ResultView(fields, _pairs(_find(doc, "ResultParameters")), _pairs(_find(doc, "ReferenceData")))
