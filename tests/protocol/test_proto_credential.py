from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from worker.errors import GatewayError, ProtocolError
from worker.protocol.credential import decrypt_security_credential, security_credential


def test_sandbox_certificate_gives_344_char_base64(sandbox_certificate: bytes) -> None:
    value = security_credential("Safaricom999!*!", sandbox_certificate)
    assert len(value) == 344
    assert len(base64.b64decode(value, validate=True)) == 256


def test_padding_is_random(sandbox_certificate: bytes) -> None:
    values = {security_credential("Safaricom999!*!", sandbox_certificate) for _ in range(5)}
    assert len(values) == 5


@pytest.mark.parametrize("form", ["pem", "der"])
def test_round_trip_with_a_generated_key(
    form: str, rsa_key: rsa.RSAPrivateKey, rsa_certificate_pem: bytes, rsa_certificate_der: bytes
) -> None:
    certificate = rsa_certificate_pem if form == "pem" else rsa_certificate_der
    value = security_credential("Ünïcode pässword 1!", certificate)
    assert len(value) == 344
    assert decrypt_security_credential(value, rsa_key) == "Ünïcode pässword 1!"


def test_uses_pkcs1_v15_not_oaep(rsa_key: rsa.RSAPrivateKey, rsa_certificate_pem: bytes) -> None:
    encrypted = base64.b64decode(security_credential("pw", rsa_certificate_pem))
    assert rsa_key.decrypt(encrypted, padding.PKCS1v15()) == b"pw"
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    with pytest.raises(ValueError):
        rsa_key.decrypt(encrypted, oaep)


def test_bare_public_key_pem_is_accepted(rsa_key: rsa.RSAPrivateKey) -> None:
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert decrypt_security_credential(security_credential("pw", public_pem), rsa_key) == "pw"


def test_unreadable_certificate_is_a_gateway_error() -> None:
    with pytest.raises(GatewayError):
        security_credential("pw", b"not a certificate")
    with pytest.raises(GatewayError):
        security_credential("pw", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_non_rsa_certificate_is_a_gateway_error() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(GatewayError):
        security_credential("pw", cert.public_bytes(serialization.Encoding.PEM))


def test_password_too_long_for_the_key_is_a_gateway_error(rsa_certificate_pem: bytes) -> None:
    with pytest.raises(GatewayError):
        security_credential("x" * 300, rsa_certificate_pem)


@pytest.mark.parametrize("value", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_undecryptable_value_is_a_protocol_error(value: str, rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ProtocolError):
        decrypt_security_credential(value, rsa_key)


def test_value_for_another_key_does_not_yield_the_password(
    rsa_key: rsa.RSAPrivateKey, sandbox_certificate: bytes
) -> None:
    value = security_credential("Safaricom999!*!", sandbox_certificate)
    # With implicit rejection OpenSSL returns random bytes instead of failing; either way no password.
    try:
        recovered = decrypt_security_credential(value, rsa_key)
    except ProtocolError:
        return
    assert recovered != "Safaricom999!*!"
