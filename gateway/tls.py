"""Mutual TLS with the certificates the directory pins.

Each gateway has a self-signed certificate; the directory carries it with its pin (SHA-256 of the DER
certificate). The server requires a client certificate and trusts exactly the certificates the directory lists;
the handler then maps the presented certificate's pin to an authority. A client trusts only the one certificate
the directory lists for the peer it calls, so a connection to anyone else fails the handshake.
"""

from __future__ import annotations

import ssl
from typing import Any

from config.directory import AuthorityEntry, Directory
from crypto.tls import certificate_pin

__all__ = ["client_context", "peer_pin", "server_context"]


def _pem(entry: AuthorityEntry) -> str:
    body = entry.tls_cert
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


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
