"""A throwaway certificate authority and loopback server certificate.

The SDK always dials `wss://` for Live, so the emulator must speak TLS. We make a small CA
and a leaf certificate signed by it rather than one self-signed leaf: a separate CA is what
OpenSSL's strict verification (Python 3.13's default `VERIFY_X509_STRICT`) expects, and the
CA file is what clients trust via `SSL_CERT_FILE` or `client_ssl_context()`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"
_VALIDITY = dt.timedelta(days=825)


@dataclass
class CertPaths:
    ca_file: str  # PEM of the CA: trust this (SSL_CERT_FILE)
    cert_file: str  # PEM chain: server certificate then CA
    key_file: str  # PEM private key of the server certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Parley Gemini Live emulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def generate(directory: str) -> CertPaths:
    """Write a fresh CA and a server certificate for localhost / 127.0.0.1 / ::1."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Parley emulator CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    os.makedirs(directory, exist_ok=True)
    paths = CertPaths(
        ca_file=os.path.join(directory, CA_FILE),
        cert_file=os.path.join(directory, CERT_FILE),
        key_file=os.path.join(directory, KEY_FILE),
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write(paths.ca_file, ca_pem)
    _write(paths.cert_file, cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(paths.key_file, key_pem, mode=0o600)
    return paths


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def load_or_generate(directory: str) -> CertPaths:
    """Reuse certificates in `directory` if they are there and not about to expire.

    Lets a long-lived CLI setup keep one SSL_CERT_FILE across restarts.
    """
    paths = CertPaths(
        ca_file=os.path.join(directory, CA_FILE),
        cert_file=os.path.join(directory, CERT_FILE),
        key_file=os.path.join(directory, KEY_FILE),
    )
    try:
        with open(paths.cert_file, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        if os.path.exists(paths.key_file) and os.path.exists(paths.ca_file):
            if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=1):
                return paths
    except (OSError, ValueError):
        pass
    return generate(directory)


def server_context(paths: CertPaths) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(paths.cert_file, paths.key_file)
    return ctx


def client_context(paths: CertPaths) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=paths.ca_file)
