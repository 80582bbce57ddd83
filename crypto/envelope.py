"""Envelopes: sign, then encrypt (DESIGN.md, "Envelopes (JOSE, pinned profile)").

The inner layer is a compact JWS (Ed25519) by the sending authority over the RFC 8785 bytes of the
:class:`~protocol.messages.MessagePayload`. The outer layer is a compact JWE (ECDH-ES+A256KW, A256GCM) to the
recipient's X25519 key whose protected header repeats ``id``, ``from``, ``to``, ``kind`` and the marking, so a
gateway can route and apply policy before decrypting, and must find them equal to the signed ones after.

The sender keeps an archive copy: the same signed JWS sealed with :func:`encrypt_signed` to its own archive key.
Its routing header still names the original recipient; open it with the archive key in ``recipient_keys`` and
``expected_recipient`` set to that recipient.

Freshness (``iat``) and replay are the caller's job: it has the clock and the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import OKPKey

from crypto.errors import HeaderMismatch, OversizedEnvelope, UnknownKey, WrongRecipient
from crypto.jose_profile import (
    ENVELOPE_TYP,
    JWE_ALG,
    JWE_ENC,
    MESSAGE_TYP,
    UnverifiedJWE,
    b64url_encode,
    decrypt_jwe,
    encrypt_jwe,
    is_okp,
    parse_jwe,
    parse_jws,
    sign_jws,
    verify_jws,
    wire_bytes,
)
from crypto.keys import key_id
from protocol.messages import Marking, MessageKind, MessagePayload, check_manifest

__all__ = [
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "OpenedEnvelope",
    "ReadEnvelope",
    "RoutingHeader",
    "SealedEnvelope",
    "encrypt_signed",
    "open_envelope",
    "read_envelope",
    "read_routing_header",
    "seal_envelope",
    "sign_payload",
]

DEFAULT_MAX_ENVELOPE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class RoutingHeader:
    """The routing members of the JWE protected header. UNVERIFIED until :func:`open_envelope` returns."""

    id: str
    from_: str
    to: str
    kind: MessageKind
    marking: Marking
    kid: str  # the recipient encryption key id


_READ = object()


@dataclass(frozen=True)
class ReadEnvelope:
    """An envelope whose size, shape and protected header passed the profile (:func:`read_envelope`). UNVERIFIED:
    hand it to :func:`open_envelope` to decrypt and verify without parsing it again."""

    header: RoutingHeader
    outer: UnverifiedJWE
    max_bytes: int
    # set by read_envelope alone, after construction: neither the constructor nor dataclasses.replace can set it
    _made_by: object = field(default=None, init=False, repr=False, compare=False)


@dataclass(frozen=True)
class SealedEnvelope:
    compact: str  # the JWE compact serialisation that travels
    signed: str  # the inner JWS compact, kept by the sender to make its archive copy


@dataclass(frozen=True)
class OpenedEnvelope:
    header: RoutingHeader
    payload: MessagePayload
    signed: str
    sha256: str  # hex SHA-256 of the sealed bytes as given


def sign_payload(payload: MessagePayload, signing_key: OKPKey) -> str:
    """The inner layer: a compact JWS by ``signing_key`` (private Ed25519) over ``payload.to_bytes()``."""
    return sign_jws(payload.to_bytes(), signing_key, MESSAGE_TYP, DEFAULT_MAX_ENVELOPE_BYTES)


def _routing_members(payload: MessagePayload) -> dict[str, Any]:
    return {
        "id": payload.id,
        "from": payload.from_,
        "to": payload.to,
        "kind": payload.kind.value,
        "marking": payload.marking.to_json(),
    }


def encrypt_signed(signed: str, payload: MessagePayload, recipient_key: OKPKey) -> str:
    """The outer layer: seal the JWS ``signed`` (over ``payload``) to ``recipient_key`` (public X25519).

    Used for the copy that travels and for the sender's archive copy (sealed to its archive key).
    """
    if not is_okp(recipient_key, "X25519", private=False):
        raise ValueError("recipient_key must be an X25519 OKPKey")
    parts = signed.split(".")
    if len(parts) != 3 or parts[1].encode("ascii", "replace") != b64url_encode(payload.to_bytes()):
        raise ValueError("signed must be the compact JWS of this payload (from sign_payload)")
    header = {
        "alg": JWE_ALG,
        "enc": JWE_ENC,
        "kid": key_id(recipient_key),
        "typ": ENVELOPE_TYP,
        "cty": MESSAGE_TYP,
        **_routing_members(payload),
    }
    return encrypt_jwe(header, signed.encode("ascii"), recipient_key, DEFAULT_MAX_ENVELOPE_BYTES)


def seal_envelope(payload: MessagePayload, signing_key: OKPKey, recipient_key: OKPKey) -> SealedEnvelope:
    """Sign ``payload`` with ``signing_key``, then encrypt to ``recipient_key``."""
    signed = sign_payload(payload, signing_key)
    return SealedEnvelope(compact=encrypt_signed(signed, payload, recipient_key), signed=signed)


def _check_size(sealed: bytes | str, max_bytes: int) -> bytes:
    # len(str) <= len(its encoding), so a long str is refused before it is encoded.
    if len(sealed) > max_bytes or len(sealed_bytes := wire_bytes(sealed)) > max_bytes:
        raise OversizedEnvelope(f"envelope is larger than the limit of {max_bytes} bytes")
    return sealed_bytes


def read_routing_header(sealed: bytes | str, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> RoutingHeader:
    """Strictly parse the JWE protected header, without any cryptography. The result is UNVERIFIED."""
    return read_envelope(sealed, max_bytes=max_bytes).header


def read_envelope(sealed: bytes | str, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> ReadEnvelope:
    """Steps 1 and 2 of :func:`open_envelope` (size; compact shape and protected header within the profile), without
    any cryptography, for a receiver that routes and checks the header before it opens the envelope."""
    outer = parse_jwe(_check_size(sealed, max_bytes), "envelope")
    read = ReadEnvelope(_routing_header(outer.header), outer, max_bytes)
    object.__setattr__(read, "_made_by", _READ)
    return read


def _routing_header(header: Mapping[str, Any]) -> RoutingHeader:
    # parse_jwe has already validated every member
    return RoutingHeader(
        id=header["id"],
        from_=header["from"],
        to=header["to"],
        kind=MessageKind(header["kind"]),
        marking=Marking.parse(header["marking"]),
        kid=header["kid"],
    )


def open_envelope(
    sealed: bytes | str | ReadEnvelope,
    *,
    recipient_keys: Mapping[str, OKPKey],
    sender_keys: Mapping[str, OKPKey],
    expected_recipient: str,
    max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES,
    stored: bool = False,
) -> OpenedEnvelope:
    """Open and verify an envelope, or raise a typed ``CryptoError`` (or ``InvalidMessage``) naming the failed check.

    ``recipient_keys``: our private X25519 keys by kid (encryption keys, or the archive key for an archive copy).
    ``sender_keys``: the public Ed25519 keys by kid that the directory lists for the claimed sender (``from``).
    ``expected_recipient``: our authority id (for an archive copy: the original recipient).
    ``sealed`` may be what :func:`read_envelope` returned (steps 1 and 2 done, under the limit it was read with).
    ``stored``: an envelope read back from our own store, received (or sent) under the rules of its day; the checks
    that only decide whether to receive it (the manifest's size and keys) are not made again, so that it still opens.
    """
    # 1. and 2. Size, then outer shape and protected header within the profile (compact, pinned alg/enc, exactly the
    #    profile's members, no duplicates, valid routing values): read_envelope, here or by the caller. Unverified.
    if not isinstance(sealed, ReadEnvelope):
        sealed = read_envelope(sealed, max_bytes=max_bytes)
    elif sealed._made_by is not _READ:  # open_envelope trusts what it holds: only read_envelope may make one
        raise TypeError("a ReadEnvelope comes from read_envelope only")
    else:
        max_bytes = min(max_bytes, sealed.max_bytes)
    outer, unverified_header = sealed.outer, sealed.header
    sealed_bytes = _check_size(outer.token, max_bytes)

    # 3. Addressed to us, by the routing header.
    if unverified_header.to != expected_recipient:
        raise WrongRecipient(f"envelope is addressed to {unverified_header.to!r}, not to {expected_recipient!r}")

    # 4. Sealed to one of our keys.
    recipient_key = recipient_keys.get(unverified_header.kid)
    if recipient_key is None:
        raise WrongRecipient("envelope is sealed to an encryption key that is not ours; check the directory entry")

    # 5. Decrypt: ECDH-ES key agreement, A256KW unwrap, A256GCM over the header too (one opaque error).
    signed_bytes = decrypt_jwe(outer, recipient_key, max_bytes)

    # 6. Inner shape and protected header within the profile.
    inner = parse_jws(signed_bytes, MESSAGE_TYP, "signed message")

    # 7. The signing key is one the directory lists for the claimed sender.
    sender_key = sender_keys.get(inner.kid)
    if sender_key is None or not is_okp(sender_key, "Ed25519", private=False):
        raise UnknownKey(
            f"signing key is not listed for {unverified_header.from_!r}; refresh the directory or ask the sender"
        )

    # 8. The Ed25519 signature verifies under that key.
    payload_bytes = verify_jws(inner, sender_key, MESSAGE_TYP, "signed message", max_bytes)

    # 9. The payload is a valid, RFC 8785 canonical MessagePayload (duplicates refused).
    payload = MessagePayload.from_bytes(payload_bytes)
    if not stored:
        check_manifest(payload)  # at most 256 entries, each with a key that can decrypt (check 15)

    # 10. The routing header repeats the signed routing exactly.
    for name, in_header, in_payload in (
        ("id", unverified_header.id, payload.id),
        ("from", unverified_header.from_, payload.from_),
        ("to", unverified_header.to, payload.to),
        ("kind", unverified_header.kind, payload.kind),
        ("marking", unverified_header.marking, payload.marking),
    ):
        if in_header != in_payload:
            raise HeaderMismatch(f"routing header member {name!r} differs from the signed payload; envelope refused")

    # 11. The signed payload is addressed to us (a signed document cannot be forwarded as if addressed to us).
    if payload.to != expected_recipient:  # pragma: no cover - implied by steps 3 and 10, kept as the rule itself
        raise WrongRecipient(f"signed payload is addressed to {payload.to!r}, not to {expected_recipient!r}")

    return OpenedEnvelope(
        header=unverified_header,
        payload=payload,
        signed=signed_bytes.decode("ascii"),
        sha256=hashlib.sha256(sealed_bytes).hexdigest(),
    )
