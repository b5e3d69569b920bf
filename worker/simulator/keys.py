"""The simulator's RSA key pair: the private key decrypts SecurityCredential; the worker gets the cert.

With no key configured a fresh 2048-bit key is made at every start and its self-signed certificate is written
to the worker's certificate path, so that a default set-up encrypts with the key the simulator holds.
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from worker.errors import ConfigError
from worker.settings import Settings

log = logging.getLogger(__name__)


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError("B2C_SIM_PRIVATE_KEY", f"{path} is not a readable unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("B2C_SIM_PRIVATE_KEY", f"{path} does not hold an RSA key")
    return key


SIMULATOR_CN = "apicrypt.simulator.invalid"


def self_signed_certificate(key: rsa.RSAPrivateKey) -> bytes:
    """A PEM certificate shaped like Safaricom's apicrypt one, for the worker to encrypt with."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "KE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "M-PESA G2 simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, SIMULATOR_CN),
        ]
    )
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _is_simulator_certificate(path: Path) -> bool:
    data = path.read_bytes()
    load = x509.load_pem_x509_certificate if b"-----BEGIN" in data else x509.load_der_x509_certificate
    try:
        certificate = load(data)
    except ValueError:
        return False
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return [n.value for n in names] == [SIMULATOR_CN]


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cert-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_key(settings: Settings) -> rsa.RSAPrivateKey:
    """Load the configured key (writing its certificate if none exists yet) or make a new pair."""
    cert_path = settings.mpesa.cert_path
    configured = settings.simulator.private_key_path
    if configured is not None:
        key = load_private_key(configured)
        if not cert_path.exists():
            _write_atomically(cert_path, self_signed_certificate(key))
            log.info("wrote the certificate for the configured simulator key to %s", cert_path)
        return key
    if cert_path.exists() and not _is_simulator_certificate(cert_path):
        # Started with a real deployment's settings: never replace M-PESA's certificate with our own.
        raise ConfigError(
            "B2C_CERT_PATH",
            f"{cert_path} holds a certificate that is not the simulator's; give the simulator its own"
            " B2C_CERT_PATH or a key (B2C_SIM_PRIVATE_KEY) instead of overwriting it",
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_atomically(cert_path, self_signed_certificate(key))
    log.info("generated a simulator key pair; certificate written to %s", cert_path)
    return key
