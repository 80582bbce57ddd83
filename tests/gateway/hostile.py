"""A hostile peer for the federation endpoint: real network path, real mutual TLS, real keys, dishonest bytes.

:class:`HostilePeer` connects to a gateway's federation port presenting another gateway's certificate and key (so
it is an authenticated, listed, but dishonest peer), or a third certificate the directory does not list. It builds
envelopes with the impersonated authority's real keys through the same functions the product uses
(``seal_envelope``, ``sign_payload``, ``encrypt_signed``) and, for malformed variants, raw JOSE bytes. It posts them
as ``application/jose`` or ``multipart/mixed`` exactly as gateway/outbox.py does, and returns the answer unparsed
beyond JSON.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from joserfc.jwk import OKPKey

from config.directory import AuthorityEntry
from crypto.attachments import CHUNK_SIZE, AttachmentEncryptor
from crypto.envelope import encrypt_signed, seal_envelope, sign_payload
from crypto.jose_profile import (
    ENVELOPE_TYP,
    JWE_ALG,
    JWE_ENC,
    MESSAGE_TYP,
    b64url_encode,
    encrypt_jwe,
)
from crypto.keys import AuthorityKeys, tls_key_password
from crypto.tls import generate_tls_identity
from protocol.messages import AttachmentRef, MessagePayload, new_message_id

__all__ = [
    "FEDERATION_PATH",
    "Answer",
    "Attachment",
    "HostilePeer",
    "b64url_json",
    "make_attachment",
    "raw_jws",
    "sha256_hex",
    "swap_jwe_header",
]

FEDERATION_PATH = "/federation/v1/envelopes"
MARKING = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64url_json(value: Any) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":")).encode()).decode("ascii")


def raw_jws(header: Mapping[str, Any], payload: bytes, signature: bytes = b"") -> str:
    """A compact JWS with any header and signature bytes: no library checks, for out-of-profile variants."""
    return ".".join(
        (b64url_json(dict(header)), b64url_encode(payload).decode("ascii"), b64url_encode(signature).decode("ascii"))
    )


def swap_jwe_header(compact: str, header: Mapping[str, Any]) -> str:
    """Replace the protected header of a compact JWE (the AEAD tag then no longer matches, if it is even read)."""
    parts = compact.split(".")
    parts[0] = b64url_json(dict(header))
    return ".".join(parts)


@dataclass(frozen=True)
class Attachment:
    """One attachment as it travels: the ciphertext and its signed manifest entry."""

    ciphertext: bytes
    ref: AttachmentRef

    def chunks(self) -> list[bytes]:
        """The ciphertext as header + secretstream chunks (the unit a substitution or reordering swaps)."""
        block = CHUNK_SIZE + 17
        body = self.ciphertext[24:]
        return [self.ciphertext[:24]] + [body[i : i + block] for i in range(0, len(body), block)]


def make_attachment(data: bytes, name: str = "records.pdf", media_type: str = "application/pdf") -> Attachment:
    encryptor = AttachmentEncryptor()
    ciphertext = encryptor.start() + encryptor.push(data) + encryptor.finish()
    return Attachment(ciphertext, encryptor.manifest_entry(name, media_type))


@dataclass
class Answer:
    status: int
    content_type: str
    raw: bytes
    document: dict[str, Any] = field(default_factory=dict)
    retry_after: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names (read_answer only)


@dataclass
class HostilePeer:
    """A client of ``target``'s federation port. ``identity`` is the authority whose keys sign what it builds."""

    url: str  # https://host:port of the target's federation listener
    identity: str  # the authority id it signs as (its real keys)
    keys: AuthorityKeys
    target: AuthorityEntry  # the target's directory entry (encryption key to seal to, signing keys to verify with)
    ssl_context: ssl.SSLContext
    clock: Any = field(default=lambda: datetime.now(UTC))

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def impersonating(
        cls,
        *,
        data_dir: Path,
        identity: str,
        passphrase: bytes,
        target: AuthorityEntry,
        target_cert: Path,
        url: str,
    ) -> HostilePeer:
        """A peer presenting ``data_dir``'s real TLS certificate and key, signing with its real authority keys.

        The TLS key PEM is encrypted with a password derived from the unsealed keys (crypto.keys.tls_key_password).
        """
        keys = AuthorityKeys.unseal((data_dir / "keys.sealed").read_bytes(), passphrase)
        cert, key = data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem"
        context = _client_context(cert, key, tls_key_password(keys), target_cert)
        return cls(url, identity, keys, target, context)

    def with_unlisted_certificate(self, common_name: str, work_dir: Path) -> HostilePeer:
        """The same keys, but a fresh self-signed TLS identity (``common_name`` in it) that no directory lists."""
        tls = generate_tls_identity(common_name, ["127.0.0.1"], None)
        cert, key = work_dir / f"unlisted-{common_name}.pem", work_dir / f"unlisted-{common_name}.key"
        cert.write_bytes(tls.cert_pem)
        key.write_bytes(tls.key_pem)
        trusted = self.ssl_context.get_ca_certs(binary_form=True)
        context = _bare_client_context()
        context.load_cert_chain(str(cert), str(key))
        for der in trusted:
            context.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(der))
        return HostilePeer(self.url, self.identity, self.keys, self.target, context, self.clock)

    def with_certificate_issued_by(self, data_dir: Path, passphrase: bytes, work_dir: Path) -> HostilePeer:
        """The same keys, but a TLS leaf that ``data_dir``'s listed certificate issued: it passes the handshake (a
        listed certificate is its own trust anchor), yet its pin is listed nowhere."""
        keys = AuthorityKeys.unseal((data_dir / "keys.sealed").read_bytes(), passphrase)
        issuer_cert = x509.load_pem_x509_certificate((data_dir / "tls" / "cert.pem").read_bytes())
        issuer_key = serialization.load_pem_private_key(
            (data_dir / "tls" / "key.pem").read_bytes(), password=tls_key_password(keys)
        )
        assert isinstance(issuer_key, ec.EllipticCurvePrivateKey)
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a second identity")]))
            .issuer_name(issuer_cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(issuer_key, hashes.SHA256())
        )
        cert_path, key_path = work_dir / "issued.pem", work_dir / "issued.key"
        cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            leaf_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = _bare_client_context()
        context.load_cert_chain(str(cert_path), str(key_path))
        for der in self.ssl_context.get_ca_certs(binary_form=True):
            context.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(der))
        return replace(self, ssl_context=context)

    def without_client_certificate(self) -> HostilePeer:
        trusted = self.ssl_context.get_ca_certs(binary_form=True)
        context = _bare_client_context()
        for der in trusted:
            context.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(der))
        return HostilePeer(self.url, self.identity, self.keys, self.target, context, self.clock)

    # --- envelopes ----------------------------------------------------------------------------------------------

    @property
    def recipient_key(self) -> OKPKey:
        return self.target.encryption_key_at(self.clock())

    def payload(self, **overrides: Any) -> MessagePayload:
        """A valid request payload from ``identity`` to the target; ``overrides`` replace JSON members."""
        data: dict[str, Any] = {
            "v": 1,
            "id": new_message_id(),
            "from": self.identity,
            "to": self.target.id,
            "kind": "request",
            "iat": int(self.clock().timestamp()),
            "in_reply_to": None,
            "marking": MARKING,
            "attachments": [],
            "content": {"subject": "Hostile test", "text": "nothing to see"},
        }
        data.update(overrides)
        return MessagePayload.parse(data)

    def seal(self, payload: MessagePayload, *, signing_key: OKPKey | None = None) -> bytes:
        """Sign-then-encrypt with the product's own functions (a fully valid envelope for a valid payload)."""
        return seal_envelope(payload, signing_key or self.keys.signing, self.recipient_key).compact.encode("ascii")

    def seal_signed(self, signed: str, payload: MessagePayload) -> bytes:
        """Encrypt an arbitrary compact JWS whose payload segment is ``payload`` (a tampered or foreign one)."""
        return encrypt_signed(signed, payload, self.recipient_key).encode("ascii")

    def seal_with_header(self, payload: MessagePayload, **header_overrides: Any) -> bytes:
        """A correctly signed and encrypted envelope whose JWE routing header differs from the signed payload."""
        header: dict[str, Any] = {
            "alg": JWE_ALG,
            "enc": JWE_ENC,
            "kid": self.recipient_key.thumbprint(),
            "typ": ENVELOPE_TYP,
            "cty": MESSAGE_TYP,
            "id": payload.id,
            "from": payload.from_,
            "to": payload.to,
            "kind": payload.kind.value,
            "marking": payload.marking.to_json(),
        }
        header.update(header_overrides)
        signed = sign_payload(payload, self.keys.signing)
        return encrypt_jwe(header, signed.encode("ascii"), self.recipient_key, 1 << 24).encode("ascii")

    def raw_signed(self, header: Mapping[str, Any], payload: MessagePayload) -> str:
        """A compact JWS with any ``header``, carrying a genuine Ed25519 signature by our signing key."""
        signing_input = raw_jws(header, payload.to_bytes()).rsplit(".", 1)[0].encode("ascii")
        private = self.keys.signing.private_key
        assert isinstance(private, Ed25519PrivateKey)
        return raw_jws(header, payload.to_bytes(), private.sign(signing_input))

    def signed(self, payload: MessagePayload) -> str:
        return sign_payload(payload, self.keys.signing)

    @staticmethod
    def jwe_header(sealed: bytes) -> dict[str, Any]:
        segment = sealed.split(b".")[0]
        value = json.loads(base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4)))
        assert isinstance(value, dict)
        return value

    # --- posting ------------------------------------------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self.ssl_context, force_close=True)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))

    async def start_post(
        self, declared_length: int, first_bytes: bytes, content_type: str = "application/jose"
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a connection and send a POST that declares ``declared_length`` bytes of body but sends only
        ``first_bytes`` of it: the caller then waits, sends more, or closes."""
        address = urlsplit(self.url)
        assert address.hostname is not None and address.port is not None
        reader, writer = await asyncio.open_connection(address.hostname, address.port, ssl=self.ssl_context)
        head = (
            f"POST {FEDERATION_PATH} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {declared_length}\r\n\r\n"
        )
        writer.write(head.encode() + first_bytes)
        await writer.drain()
        return reader, writer

    async def post_raw(self, body: Any, headers: Mapping[str, str] | None = None) -> Answer:
        url = self.url + FEDERATION_PATH
        async with self.session() as session, session.post(url, data=body, headers=dict(headers or {})) as response:
            raw = await response.read()
            answer = Answer(
                response.status, response.content_type, raw, retry_after=response.headers.get("Retry-After")
            )
        try:
            document = json.loads(raw)
        except ValueError:
            document = None
        if isinstance(document, dict):
            answer.document = document
        return answer

    async def post(self, sealed: bytes, content_type: str = "application/jose") -> Answer:
        """The envelope alone, as the outbox sends a message without attachments."""
        return await self.post_raw(sealed, {"Content-Type": content_type})

    async def post_multipart(
        self,
        sealed: bytes,
        parts: Sequence[bytes] | Iterable[bytes],
        *,
        envelope_type: str = "application/jose",
    ) -> Answer:
        """``multipart/mixed``: the envelope, then each attachment ciphertext, as gateway/outbox.py builds it."""
        writer = aiohttp.MultipartWriter("mixed")
        writer.append(sealed, {"Content-Type": envelope_type})
        for data in parts:
            part = writer.append(data, {"Content-Type": "application/octet-stream"})
            part.headers["Content-Length"] = str(len(data))
        return await self.post_raw(writer)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """The HTTP/1.1 answer on a connection opened by :meth:`HostilePeer.start_post`, read by its Content-Length."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines if line)}
    raw = await reader.readexactly(int(headers["content-length"]))
    answer = Answer(
        int(status_line.split()[1]), headers["content-type"].split(";")[0], raw, retry_after=headers.get("retry-after")
    )
    answer.document = json.loads(raw)
    answer.headers = headers
    return answer


def _bare_client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system trust store
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    return context


def _client_context(cert: Path, key: Path, password: bytes, trusted_cert: Path) -> ssl.SSLContext:
    """Like gateway/tls.client_context: TLS 1.3, our certificate and key, trust exactly the target's certificate."""
    context = _bare_client_context()
    context.load_cert_chain(str(cert), str(key), password=password)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(trusted_cert))
    return context
