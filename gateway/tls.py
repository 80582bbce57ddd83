"""Mutual TLS with the certificates the directory pins.

Each gateway has a self-signed certificate; the directory carries it with its pin (SHA-256 of the DER
certificate). The server requires a client certificate and trusts exactly the certificates the directory lists;
the handler then maps the presented certificate's pin to an authority. A client trusts only the one certificate
the directory lists for the peer it calls, so a connection to anyone else fails the handshake.
"""

from __future__ import annotations

import errno
import ssl
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from config.directory import AuthorityEntry, Directory
from config.errors import ConfigError
from crypto.errors import ProfileViolation
from crypto.tls import cert_der, certificate_pin
from gateway.logs import get_logger

__all__ = ["EXPIRY_WARNING", "check_own_certificate", "client_context", "peer_pin", "server_context"]

EXPIRY_WARNING = timedelta(days=30)  # a certificate that expires sooner is served with a warning at every start


def check_own_certificate(directory: Directory, own_id: str, cert_file: Path, now: datetime) -> None:
    """Refuse to serve a certificate every peer would refuse in the handshake, which would otherwise show only as
    deliveries retried forever: one our directory entry does not pin, or one outside its validity; warn when it
    expires within EXPIRY_WARNING."""
    try:
        pem = cert_file.read_bytes()
        pin, cert = certificate_pin(pem), x509.load_der_x509_certificate(cert_der(pem))
    except OSError as error:
        reason = errno.errorcode.get(error.errno or 0, type(error).__name__)
        raise ConfigError(f"the TLS certificate {cert_file} cannot be read ({reason})") from None
    except ProfileViolation as error:
        raise ConfigError(f"the TLS certificate {cert_file} is not usable: {error}") from None
    own = directory.get(own_id)
    if own is not None and pin not in own.tls_pins:
        raise ConfigError(
            f"the TLS certificate {cert_file} ({pin}) is not one directory serial {directory.serial} pins for "
            f"{own_id} ({', '.join(own.tls_pins)}): peers would refuse every connection; install the published "
            "certificate, or publish this one under a new serial"
        )
    starts, ends = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not starts <= now <= ends:
        when = f"expired on {ends:%Y-%m-%d}" if now > ends else f"is valid only from {starts:%Y-%m-%d %H:%M} UTC"
        raise ConfigError(
            f"the TLS certificate {cert_file} {when}: peers would refuse every connection; it must be replaced "
            "and published under a new directory serial (docs/operations.md, 'TLS certificates')"
        )
    if ends - now < EXPIRY_WARNING:
        get_logger(authority=own_id).warning("tls_certificate_expiring", expires_at=f"{ends:%Y-%m-%dT%H:%M:%SZ}")


def _pem(entry: AuthorityEntry) -> str:
    """Every certificate the entry pins (two during a rollover), PEM."""
    blocks = []
    for body in entry.tls_certs:
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        blocks.append("-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n")
    return "".join(blocks)


def _base(protocol: int, cert_file: str, key_file: str, password: bytes) -> ssl.SSLContext:
    # a bare context: no system trust store, only the certificates the directory pins are ever trusted
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert_file, key_file, password=password)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_context(directory: Directory, own_id: str, cert_file: str, key_file: str, password: bytes) -> ssl.SSLContext:
    context = _base(ssl.PROTOCOL_TLS_SERVER, cert_file, key_file, password)
    peers = [entry for entry in directory.authorities if entry.id != own_id]
    if peers:
        context.load_verify_locations(cadata="".join(_pem(entry) for entry in peers))
    return context


def client_context(peer: AuthorityEntry, cert_file: str, key_file: str, password: bytes) -> ssl.SSLContext:
    context = _base(ssl.PROTOCOL_TLS_CLIENT, cert_file, key_file, password)
    context.check_hostname = False  # identity is the pinned certificate, not a name
    context.load_verify_locations(cadata=_pem(peer))
    return context


def peer_pin(transport: Any) -> str | None:
    """The pin of the certificate the TLS peer presented, or None on a plain connection."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return None if der is None else certificate_pin(der)
