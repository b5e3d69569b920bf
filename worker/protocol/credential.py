"""The initiator's SecurityCredential: the operator password RSA-encrypted for Safaricom's API key.

PKCS#1 v1.5 (not OAEP) is what the gateway decrypts; the padding is random, so two calls never agree and the
value is computed once per process rather than compared.
"""

from __future__ import annotations

import base64
import binascii

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from worker.errors import GatewayError, ProtocolError


def _public_key(material: bytes) -> rsa.RSAPublicKey:
    """Safaricom ships a certificate (PEM or DER); a bare PEM public key is accepted for tests and tooling."""
    try:
        if b"-----BEGIN PUBLIC KEY-----" in material:
            key = serialization.load_pem_public_key(material)
        elif b"-----BEGIN" in material:
            key = x509.load_pem_x509_certificate(material).public_key()
        else:
            key = x509.load_der_x509_certificate(material).public_key()
    except ValueError as exc:
        raise GatewayError("the M-PESA encryption certificate cannot be read (PEM or DER expected)") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise GatewayError("the M-PESA encryption certificate does not hold an RSA key")
    return key


def security_credential(password: str, certificate: bytes) -> str:
    """Encrypt the initiator password with the certificate's RSA key; base64 (344 chars for RSA-2048)."""
    key = _public_key(certificate)
    try:
        encrypted = key.encrypt(password.encode("utf-8"), padding.PKCS1v15())
    except ValueError as exc:
        raise GatewayError("the initiator password is too long for the certificate's key") from exc
    return base64.b64encode(encrypted).decode("ascii")


def decrypt_security_credential(value: str, private_key: rsa.RSAPrivateKey) -> str:
    """The gateway's side (used by the simulator): recover the initiator password or raise ProtocolError."""
    try:
        encrypted = base64.b64decode(value.strip(), validate=True)
        plain = private_key.decrypt(encrypted, padding.PKCS1v15())
        return plain.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        # UnicodeDecodeError is a ValueError: implicit-rejection padding yields random bytes, not an error.
        raise ProtocolError("SecurityCredential cannot be decrypted") from exc
