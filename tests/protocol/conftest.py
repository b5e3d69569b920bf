"""Fixtures for the protocol tests: Safaricom's reference files, sample messages and a throwaway RSA key."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from tests.support.data import DATA, G2_REFERENCE, G2_SAMPLES

XS = "http://www.w3.org/2001/XMLSchema"
_ENVELOPE_START = re.compile(r"<soapenv:Envelope\b")
_ENVELOPE_END = "</soapenv:Envelope>"
CONFORMANCE_FIXTURES = {
    "g2_data",
    "sample_envelopes",
    "request_schema",
    "response_schema",
    "result_schema",
    "sandbox_certificate",
    "trace_messages",
}


@pytest.fixture(scope="session")
def g2_data() -> Path:
    """Safaricom's reference files and the specification samples (tests/data/mpesa-g2)."""
    return DATA / "mpesa-g2"


@pytest.fixture(scope="session")
def sample_envelopes() -> Callable[[str], list[bytes]]:
    """Each complete ``<soapenv:Envelope>...</soapenv:Envelope>`` span of a sample file, prose dropped."""

    def load(name: str) -> list[bytes]:
        text = (G2_SAMPLES / name).read_text(encoding="utf-8")
        starts = [match.start() for match in _ENVELOPE_START.finditer(text)]
        spans: list[bytes] = []
        for index, start in enumerate(starts):
            end = text.find(_ENVELOPE_END, start)
            following = starts[index + 1] if index + 1 < len(starts) else len(text)
            if 0 <= end < following:
                spans.append(text[start : end + len(_ENVELOPE_END)].encode("utf-8"))
        return spans

    return load


@pytest.fixture(scope="session")
def request_schema() -> etree.XMLSchema:
    """Safaricom's request schema, taken out of the inline-schema WSDL (trusted local file)."""
    wsdl = etree.parse(str(G2_REFERENCE / "CBPInterface_Request_inline.wsdl"))
    schema = wsdl.find(f".//{{{XS}}}schema")
    assert schema is not None
    return etree.XMLSchema(schema)


@pytest.fixture(scope="session")
def response_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(G2_REFERENCE / "CPSInterface_Response.xsd")))


@pytest.fixture(scope="session")
def result_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(G2_REFERENCE / "CPSInterface_Result.xsd")))


@pytest.fixture(scope="session")
def sandbox_certificate() -> bytes:
    return (G2_REFERENCE / "apicrypt-sandbox-cert.cer").read_bytes()


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def rsa_certificate(rsa_key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apicrypt.test")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )


@pytest.fixture(scope="session")
def rsa_certificate_pem(rsa_certificate: x509.Certificate) -> bytes:
    return rsa_certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="session")
def rsa_certificate_der(rsa_certificate: x509.Certificate) -> bytes:
    return rsa_certificate.public_bytes(serialization.Encoding.DER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that read Safaricom's files carry the ``conformance`` marker, so they can be selected."""
    for item in items:
        if CONFORMANCE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.conformance)


@pytest.fixture(scope="session")
def trace_messages() -> dict[str, list[bytes]]:
    """The 2014 production trace inside v1.5's queryTransaction example: base64 HTTP messages, bodies only."""
    text = (G2_SAMPLES / "g2_v15_09_queryTransaction_request_and_response.xml").read_text()
    messages: dict[str, list[bytes]] = {}
    for match in re.finditer(r"<ns1:(submitApi\w+)>([A-Za-z0-9+/=\s]+)</ns1:\1>", text):
        http = base64.b64decode("".join(match.group(2).split()))
        messages.setdefault(match.group(1), []).append(http.split(b"\r\n\r\n", 1)[1])
    return messages
