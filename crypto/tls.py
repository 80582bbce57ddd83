"""Self-signed TLS identity of a gateway, and the certificate pin that the directory publishes for it.

Gateways authenticate each other by mutual TLS against pinned certificates, not a public CA: each peer's
certificate is its own trust anchor (hence ``CA:TRUE``), the directory carries ``sha256:<hex of DER>`` of it, and
the verifying side loads exactly that certificate as its only trusted root.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    KeySerializationEncryption,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.errors import ProfileViolation
from protocol.errors import InvalidMessage
from protocol.messages import validate_authority_id

__all__ = [
    "PIN_PREFIX",
    "TlsIdentity",
    "cert_der",
    "certificate_hosts",
    "certificate_pin",
    "generate_tls_identity",
    "key_pem_password",
    "reencrypt_key_pem",
]

PIN_PREFIX: Final = "sha256:"
# Backdating covers modest clock skew between peers; a certificate is otherwise valid from the moment it is made.
_BACKDATE: Final = timedelta(hours=1)
_MAX_VALID_DAYS: Final = 825
_LABEL: Final = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME_RE: Final = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


@dataclass(frozen=True)
class TlsIdentity:
    """A certificate and its private key, both PEM; the key is encrypted when a passphrase was given."""

    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return f"TlsIdentity(pin={certificate_pin(self.cert_pem)})"


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str | bytes) or not hosts:
        raise ProfileViolation("a TLS identity needs at least one host name or IP address")
    names: list[x509.GeneralName] = []
    for host in hosts:
        if not isinstance(host, str):
            raise ProfileViolation("hosts must be strings")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _DNS_NAME_RE.fullmatch(host):
            raise ProfileViolation(
                "hosts must be IP addresses or lowercase DNS names (A-labels, no wildcards, no trailing dot)"
            )
        names.append(x509.DNSName(host))
    return names


def generate_tls_identity(
    authority_id: str,
    hosts: Sequence[str],
    passphrase: bytes | None,
    *,
    valid_days: int = _MAX_VALID_DAYS,
    now: datetime | None = None,
) -> TlsIdentity:
    """A self-signed ECDSA P-256 certificate for ``authority_id`` (CN) serving ``hosts`` (SAN).

    Extensions: BasicConstraints CA (critical; the certificate is its own trust anchor for the pinning peer),
    KeyUsage digitalSignature + keyCertSign (critical), ExtendedKeyUsage serverAuth + clientAuth (the same identity
    serves inbound and dials outbound), SubjectKeyIdentifier and AuthorityKeyIdentifier. The private key is PKCS#8
    PEM, encrypted with ``passphrase`` when one is given.
    """
    try:
        validate_authority_id(authority_id)
    except InvalidMessage as exc:
        raise ProfileViolation(str(exc)) from None
    if not 1 <= valid_days <= _MAX_VALID_DAYS:
        raise ProfileViolation(f"valid_days must be between 1 and {_MAX_VALID_DAYS}")
    if passphrase is not None and not passphrase:
        raise ProfileViolation("the TLS key passphrase must not be empty (pass None for an unencrypted key)")
    san = _subject_alt_names(hosts)
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None:
        raise ProfileViolation("now must be timezone-aware")

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, authority_id)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    encryption: KeySerializationEncryption = (
        NoEncryption() if passphrase is None else BestAvailableEncryption(passphrase)
    )
    return TlsIdentity(
        cert_pem=cert.public_bytes(Encoding.PEM),
        key_pem=key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption),
    )


def key_pem_password(key_pem: bytes, passwords: Sequence[bytes]) -> bytes:
    """The first of ``passwords`` that opens the encrypted TLS private key PEM. ``ProfileViolation`` if none does."""
    for password in passwords:
        try:
            load_pem_private_key(key_pem, password=password)
        except (ValueError, TypeError):
            continue
        return password
    raise ProfileViolation("the TLS key does not open with any of the given passwords")


def reencrypt_key_pem(key_pem: bytes, passwords: Sequence[bytes], new_password: bytes) -> bytes:
    """The TLS private key PEM under ``new_password``, opened with the first of ``passwords`` that fits (the
    certificate, and so the directory's pin, stay as they are). ``ProfileViolation`` if none does."""
    key = load_pem_private_key(key_pem, password=key_pem_password(key_pem, passwords))
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(new_password))


def cert_der(cert: bytes) -> bytes:
    """One X.509 certificate, PEM or DER, as DER. ``ProfileViolation`` on anything else."""
    if not isinstance(cert, bytes):
        raise ProfileViolation("a certificate must be given as bytes (PEM or DER)")
    try:
        if cert.lstrip().startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(cert)
            if len(certs) != 1:
                raise ProfileViolation("expected exactly one certificate in the PEM data")
            return certs[0].public_bytes(Encoding.DER)
        return x509.load_der_x509_certificate(cert).public_bytes(Encoding.DER)
    except (ValueError, x509.InvalidVersion):  # InvalidVersion (a version other than v1 to v3) is no ValueError
        raise ProfileViolation("not an X.509 certificate (PEM or DER)") from None


def certificate_pin(cert: bytes) -> str:
    """The pin the directory publishes: ``sha256:`` and the lowercase hex SHA-256 of the DER certificate."""
    return PIN_PREFIX + hashlib.sha256(cert_der(cert)).hexdigest()


def certificate_hosts(cert: bytes) -> list[str]:
    """The host names and IP addresses a certificate is for (its subjectAltName), as :func:`generate_tls_identity`
    takes them: what a renewed certificate must serve again. ``ProfileViolation`` when it names none."""
    parsed = x509.load_der_x509_certificate(cert_der(cert))
    try:
        names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ProfileViolation("the certificate names no host (no subjectAltName)") from None
    hosts = [str(address) for address in names.get_values_for_type(x509.IPAddress)]
    return hosts + names.get_values_for_type(x509.DNSName)
