"""Fixtures: the loopback G2 double, an encryption certificate, and Gateways pointed at the double."""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.g2_double import INITIATOR_PASSWORD, SP_PASSWORD, FakeGateway, KeyPair, TlsFiles
from worker.gateway.g2 import Gateway
from worker.settings import load_settings
from worker.simulator.keys import self_signed_certificate


@pytest.fixture
def fake_gateway() -> Iterator[FakeGateway]:
    server = FakeGateway()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="session")
def encryption_key(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """A stand-in for Safaricom's apicrypt certificate, with the private key the tests decrypt with."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("apicrypt") / "apicrypt.cer"
    path.write_bytes(self_signed_certificate(key))
    return KeyPair(key, path)


@pytest.fixture
def settings_env(fake_gateway: FakeGateway, encryption_key: KeyPair, tmp_path: Path) -> dict[str, str]:
    return {
        "B2C_DATA_DIR": str(tmp_path),
        "B2C_MPESA_URL": fake_gateway.url,
        "B2C_SP_ID": "107031",
        "B2C_SP_PASSWORD": SP_PASSWORD,
        "B2C_SERVICE_ID": "107031000",
        "B2C_INITIATOR_NAME": "apiop37",
        "B2C_INITIATOR_PASSWORD": INITIATOR_PASSWORD,
        "B2C_SHORTCODE": "600000",
        "B2C_CERT_PATH": str(encryption_key.cert_path),
        "B2C_CONNECT_TIMEOUT": "0.5",
        "B2C_READ_TIMEOUT": "0.3",
        "B2C_RETRY_ATTEMPTS": "3",
        "B2C_RETRY_MAX_SECONDS": "5",
    }


@pytest.fixture
def make_gateway(settings_env: dict[str, str]) -> Iterator[Callable[..., Gateway]]:
    made: list[Gateway] = []

    def make(*, clock: Callable[[], datetime] | None = None, **overrides: str) -> Gateway:
        settings = load_settings({**settings_env, **overrides})
        extra: dict[str, Any] = {"clock": clock} if clock else {}
        gateway = Gateway(settings.mpesa, backoff_initial=0.01, backoff_max=0.05, **extra)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.close()


def _issue(
    subject: str, issuer_key: rsa.RSAPrivateKey | None, issuer: x509.Name | None, *, ca: bool, ip: str | None
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
    return key, builder.sign(issuer_key or key, hashes.SHA256())


def _write_pair(directory: Path, stem: str, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate, as for the VPN link."""
    directory = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = _issue("test-ca", None, None, ca=True, ip=None)
    server_key, server_cert = _issue("127.0.0.1", ca_key, ca_cert.subject, ca=False, ip="127.0.0.1")
    client_key, client_cert = _issue("b2c-client", ca_key, ca_cert.subject, ca=False, ip=None)
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server = _write_pair(directory, "server", server_key, server_cert)
    client = _write_pair(directory, "client", client_key, client_cert)
    return TlsFiles(ca_path, server[0], server[1], client[0], client[1])


@pytest.fixture
def tls_gateway(tls_files: TlsFiles) -> Iterator[FakeGateway]:
    """The double behind HTTPS that insists on a client certificate from the test CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    context.load_verify_locations(tls_files.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server = FakeGateway()
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
