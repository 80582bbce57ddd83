"""crypto/tls.py: the self-signed identity's profile, its pin, and a real mutual-TLS handshake against pins."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.errors import ProfileViolation
from crypto.tls import TlsIdentity, cert_der, certificate_pin, generate_tls_identity

PASSPHRASE = b"tls key passphrase"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def identity() -> TlsIdentity:
    return generate_tls_identity("ar.mjdh", ["gateway.mjdh.example", "127.0.0.1", "::1"], PASSPHRASE, now=NOW)


@pytest.fixture(scope="module")
def cert(identity: TlsIdentity) -> x509.Certificate:
    return x509.load_pem_x509_certificate(identity.cert_pem)


def test_certificate_is_self_signed_and_verifies_with_its_own_key(
    identity: TlsIdentity, cert: x509.Certificate
) -> None:
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert cert.signature_hash_algorithm is not None
    public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    cert.verify_directly_issued_by(cert)
    key = serialization.load_pem_private_key(identity.key_pem, PASSPHRASE)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == public.public_numbers()


def test_names(cert: x509.Certificate) -> None:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [attr.value for attr in cn] == ["ar.mjdh"]
    assert cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gateway.mjdh.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]


def test_extensions(cert: x509.Certificate) -> None:
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_cert_sign
    assert not usage.value.key_encipherment
    assert not usage.value.crl_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_validity(cert: x509.Certificate) -> None:
    assert cert.not_valid_before_utc <= NOW
    assert cert.not_valid_after_utc == NOW + timedelta(days=825)
    short = generate_tls_identity("ar.mjdh", ["127.0.0.1"], None, valid_days=30, now=NOW)
    assert x509.load_pem_x509_certificate(short.cert_pem).not_valid_after_utc == NOW + timedelta(days=30)


def test_pin_is_sha256_of_der_and_stable(identity: TlsIdentity, cert: x509.Certificate) -> None:
    der = cert.public_bytes(serialization.Encoding.DER)
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert certificate_pin(identity.cert_pem) == expected
    assert certificate_pin(der) == expected
    assert certificate_pin(identity.cert_pem) == certificate_pin(identity.cert_pem)
    assert cert_der(identity.cert_pem) == der == cert_der(der)
    assert expected == expected.lower()
    assert repr(identity) == f"TlsIdentity(pin={expected})"


def test_each_identity_has_its_own_pin(identity: TlsIdentity) -> None:
    other = generate_tls_identity("ar.mjdh", ["gateway.mjdh.example", "127.0.0.1", "::1"], PASSPHRASE, now=NOW)
    assert certificate_pin(other.cert_pem) != certificate_pin(identity.cert_pem)


def test_encrypted_key_loads_only_with_the_passphrase(identity: TlsIdentity) -> None:
    assert b"ENCRYPTED PRIVATE KEY" in identity.key_pem
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(identity.key_pem, None)
    # a wrong passphrase usually fails the padding check ("incorrect password"); about once in 256 the padding
    # happens to pass and the garbage fails to parse instead: either way the key does not load
    with pytest.raises(ValueError, match=r"(?i)incorrect password|bad decrypt|could not deserialize key data"):
        serialization.load_pem_private_key(identity.key_pem, b"wrong passphrase")
    assert serialization.load_pem_private_key(identity.key_pem, PASSPHRASE) is not None


def test_unencrypted_key_without_passphrase() -> None:
    plain = generate_tls_identity("de.bfj", ["127.0.0.1"], None)
    assert b"-----BEGIN PRIVATE KEY-----" in plain.key_pem
    assert serialization.load_pem_private_key(plain.key_pem, None) is not None


@pytest.mark.parametrize(
    ("authority_id", "hosts", "passphrase", "match"),
    [
        ("AR.MJ", ["127.0.0.1"], None, "authority id"),
        ("ar.mj", [], None, "at least one host"),
        ("ar.mj", "127.0.0.1", None, "at least one host"),
        ("ar.mj", ["*.example.org"], None, "DNS names"),
        ("ar.mj", ["Gateway.example.org"], None, "DNS names"),
        ("ar.mj", ["127.0.0.1"], b"", "must not be empty"),
    ],
)
def test_generate_refuses_bad_arguments(
    authority_id: str, hosts: list[str], passphrase: bytes | None, match: str
) -> None:
    with pytest.raises(ProfileViolation, match=match):
        generate_tls_identity(authority_id, hosts, passphrase)


def test_generate_refuses_bad_validity() -> None:
    with pytest.raises(ProfileViolation, match="valid_days"):
        generate_tls_identity("ar.mj", ["127.0.0.1"], None, valid_days=826)
    with pytest.raises(ProfileViolation, match="timezone"):
        generate_tls_identity("ar.mj", ["127.0.0.1"], None, now=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "garbage", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_cert_der_refuses_garbage(garbage: bytes) -> None:
    with pytest.raises(ProfileViolation, match=r"not an X\.509 certificate"):
        cert_der(garbage)
    with pytest.raises(ProfileViolation):
        certificate_pin(garbage)


@pytest.mark.parametrize("version", [3, 7, 255])
def test_cert_der_refuses_an_invalid_x509_version(identity: TlsIdentity, version: int) -> None:
    """cryptography raises InvalidVersion, which is no ValueError, for a version other than v1 to v3 (in the DER
    ``[0] EXPLICIT INTEGER``, v3 is 2): a typed refusal, DER or PEM, not an unexpected error."""
    der = cert_der(identity.cert_pem)
    at = der.index(bytes.fromhex("a003020102"))
    assert at < 16  # the TBSCertificate's first field
    patched = der[: at + 4] + bytes([version]) + der[at + 5 :]
    patched_pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(patched) + b"-----END CERTIFICATE-----\n"
    for data in (patched, patched_pem):
        with pytest.raises(ProfileViolation, match=r"not an X\.509 certificate"):
            cert_der(data)
        with pytest.raises(ProfileViolation):
            certificate_pin(data)


def test_cert_der_refuses_two_certificates(identity: TlsIdentity) -> None:
    other = generate_tls_identity("de.bfj", ["127.0.0.1"], None)
    with pytest.raises(ProfileViolation, match="exactly one"):
        cert_der(identity.cert_pem + other.cert_pem)


# --- mutual TLS on loopback, each side trusting only the other's certificate ----------------------------------------


@dataclass
class Peer:
    identity: TlsIdentity
    cert_file: Path
    key_file: Path

    @classmethod
    def make(cls, tmp_path: Path, name: str) -> Peer:
        identity = generate_tls_identity(f"xx.{name}", ["127.0.0.1", "localhost"], PASSPHRASE)
        cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        cert_file.write_bytes(identity.cert_pem)
        key_file.write_bytes(identity.key_pem)
        return cls(identity, cert_file, key_file)

    def context(self, purpose: int, trusted: TlsIdentity) -> ssl.SSLContext:
        context = ssl.SSLContext(purpose)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file, password=PASSPHRASE)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=trusted.cert_pem.decode())
        return context


@dataclass
class ServerResult:
    peer_pin: str | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def peers(tmp_path: Path) -> tuple[Peer, Peer, Peer]:
    return Peer.make(tmp_path, "server"), Peer.make(tmp_path, "client"), Peer.make(tmp_path, "intruder")


def _serve_once(context: ssl.SSLContext, listener: socket.socket, result: ServerResult) -> None:
    try:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            peer = tls.getpeercert(binary_form=True)
            result.peer_pin = certificate_pin(peer) if peer else None
            tls.sendall(b"hello " + tls.recv(16))
    except (ssl.SSLError, OSError) as exc:
        result.error = exc
    finally:
        result.done.set()


def _exchange(
    server: Peer, server_trusts: TlsIdentity, client: Peer, client_trusts: TlsIdentity, result: ServerResult
) -> tuple[bytes, str]:
    """Run one connection; return (what the client read, the pin of the server certificate it saw)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        thread = threading.Thread(
            target=_serve_once,
            args=(server.context(ssl.PROTOCOL_TLS_SERVER, server_trusts), listener, result),
            daemon=True,
        )
        thread.start()
        try:
            client_context = client.context(ssl.PROTOCOL_TLS_CLIENT, client_trusts)
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                client_context.wrap_socket(raw) as tls,
            ):
                server_cert = tls.getpeercert(binary_form=True)
                assert server_cert is not None
                tls.sendall(b"world")
                # under TLS 1.3 the server checks our certificate after our handshake returns: errors land here
                reply = tls.recv(64)
        finally:
            thread.join(10)
    if result.error is not None:
        raise result.error
    assert result.peer_pin == certificate_pin(client.identity.cert_pem)
    return reply, certificate_pin(server_cert)


def test_mutual_tls_with_pinned_certificates(peers: tuple[Peer, Peer, Peer]) -> None:
    server, client, _ = peers
    reply, server_pin = _exchange(server, client.identity, client, server.identity, ServerResult())
    assert reply == b"hello world"
    assert server_pin == certificate_pin(server.identity.cert_pem)


def test_server_refuses_an_unpinned_client_certificate(peers: tuple[Peer, Peer, Peer]) -> None:
    server, client, intruder = peers
    result = ServerResult()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _exchange(server, client.identity, intruder, server.identity, result)
    assert result.done.is_set()
    assert isinstance(result.error, ssl.SSLCertVerificationError)
    assert result.peer_pin is None


def test_client_refuses_an_unpinned_server_certificate(peers: tuple[Peer, Peer, Peer]) -> None:
    server, client, intruder = peers
    with pytest.raises(ssl.SSLCertVerificationError):
        _exchange(server, client.identity, client, intruder.identity, ServerResult())


def test_certificate_from_a_different_key_with_the_same_names_is_refused(peers: tuple[Peer, Peer, Peer]) -> None:
    # Same CN and SAN as the pinned client, a different key: the pin, not the name, is what is trusted.
    server, client, _ = peers
    lookalike = Peer.make(client.cert_file.parent, "client-lookalike")
    assert lookalike.identity.cert_pem != client.identity.cert_pem
    result = ServerResult()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _exchange(server, client.identity, lookalike, server.identity, result)
    assert isinstance(result.error, ssl.SSLCertVerificationError)


def test_certificate_signature_uses_sha256(cert: x509.Certificate) -> None:
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
