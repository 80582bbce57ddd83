"""The pinned JOSE profile of Comity (DESIGN.md, "Envelopes (JOSE, pinned profile)").

Everything an attacker controls before a signature or AEAD tag is checked is parsed here, strictly, before joserfc
sees it: the compact shape (RFC 7515 section 7.1, RFC 7516 section 7.1), base64url without padding (RFC 7515
section 2, canonical encodings only), and every protected header, parsed with ``parse_strict_json`` so duplicate
members are refused (RFC 7515 section 4 leaves them to the application; we refuse them). Algorithms come from the
constants below, never from a header. joserfc is then configured with registries that repeat the same rules (pinned
algorithms, registered custom members with validators, every other registered member refused, raised size limits),
so the library's own checks stay on as a second line.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from joserfc import jwe, jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import OKPKey
from joserfc.registry import JWE_HEADER_REGISTRY, HeaderParameter, HeaderRegistryDict

from crypto.errors import BadSignature, DecryptionFailed, OversizedEnvelope, ProfileViolation
from crypto.keys import key_id
from protocol.errors import InvalidMessage
from protocol.messages import Marking, MessageKind, parse_strict_json, validate_authority_id, validate_message_id

__all__ = [
    "ENVELOPE_TYP",
    "EPK_MEMBERS",
    "JWE_ALG",
    "JWE_ENC",
    "JWE_HEADER_CHECKS",
    "JWE_MEMBERS",
    "JWS_ALG",
    "JWS_MEMBERS",
    "MAX_JWE_HEADER_SEGMENT",
    "MESSAGE_TYP",
    "RECEIPT_TYP",
    "REFUSAL_TYP",
    "UnverifiedJWE",
    "UnverifiedJWS",
    "b64url_decode",
    "b64url_encode",
    "check_header",
    "decrypt_jwe",
    "encrypt_jwe",
    "is_okp",
    "jwe_registry",
    "jws_header_checks",
    "jws_registry",
    "parse_jwe",
    "parse_jws",
    "sign_jws",
    "verify_jws",
    "wire_bytes",
]

# -- the profile ------------------------------------------------------------------------------------------------

JWS_ALG = "Ed25519"  # RFC 9864 fully specified EdDSA
JWE_ALG = "ECDH-ES+A256KW"  # RFC 7518 section 4.6, X25519 per RFC 8037
JWE_ENC = "A256GCM"  # RFC 7518 section 5.3
MESSAGE_TYP = "comity-message+jws"
ENVELOPE_TYP = "comity-envelope+jwe"
RECEIPT_TYP = "comity-receipt+jws"
REFUSAL_TYP = "comity-refusal+jws"

JWS_MEMBERS = frozenset({"alg", "kid", "typ"})
JWE_MEMBERS = frozenset({"alg", "enc", "epk", "kid", "typ", "cty", "id", "from", "to", "kind", "marking"})
EPK_MEMBERS = frozenset({"crv", "kty", "x"})
# joserfc's default JWE header limit is 1024 base64url bytes; a marking with many caveats can exceed it, and a
# sender must never seal what a receiver refuses, so both sides use this one limit.
MAX_JWE_HEADER_SEGMENT = 8192

_KID_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256 RFC 7638 thumbprint
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
# Names of members and algorithms are echoed in errors only if they look like JOSE tokens, never arbitrary text.
_TOKEN_RE = re.compile(r"[A-Za-z0-9+#._-]{1,32}")

HeaderCheck = Callable[[Any], None]  # raises ValueError, as joserfc's HeaderParameter validators do


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) and _TOKEN_RE.fullmatch(value) else "(unprintable)"


# -- member validators (shared by our parser and the joserfc registries) -----------------------------------------


def _equals(expected: str) -> HeaderCheck:
    def check(value: Any) -> None:
        if value != expected:
            raise ValueError(f"must be {expected!r}")

    return check


def _is_kid(value: Any) -> None:
    if not isinstance(value, str) or not _KID_RE.fullmatch(value):
        raise ValueError("must be an RFC 7638 SHA-256 thumbprint (43 base64url characters)")


def _is_x25519_epk(value: Any) -> None:
    if not isinstance(value, dict) or set(value) != EPK_MEMBERS:
        raise ValueError("must be a public OKP JWK with exactly the members crv, kty, x")
    if value["kty"] != "OKP" or value["crv"] != "X25519":
        raise ValueError("must be an X25519 OKP key")
    x = value["x"]
    try:
        if not isinstance(x, str) or len(b64url_decode(x.encode("ascii"), "epk x")) != 32:
            raise ValueError("x must be 32 bytes")
    except (ProfileViolation, UnicodeEncodeError):
        raise ValueError("x must be 32 bytes, base64url") from None


def _protocol_check(validate: Callable[[Any], object]) -> HeaderCheck:
    def check(value: Any) -> None:
        try:
            validate(value)
        except InvalidMessage as exc:
            raise ValueError(exc.message) from None

    return check


def _is_kind(value: Any) -> None:
    if not isinstance(value, str) or value not in MessageKind._value2member_map_:
        raise ValueError("must be a message kind")


def _is_marking(value: Any) -> None:
    # Both members always present, so the header bytes of one marking are always the same.
    if not isinstance(value, dict) or set(value) != {"level", "caveats"}:
        raise ValueError("must be an object with exactly the members level and caveats")
    _protocol_check(Marking.parse)(value)


JWE_HEADER_CHECKS: Mapping[str, HeaderCheck] = {
    "alg": _equals(JWE_ALG),
    "enc": _equals(JWE_ENC),
    "epk": _is_x25519_epk,
    "kid": _is_kid,
    "typ": _equals(ENVELOPE_TYP),
    "cty": _equals(MESSAGE_TYP),
    "id": _protocol_check(validate_message_id),
    "from": _protocol_check(validate_authority_id),
    "to": _protocol_check(validate_authority_id),
    "kind": _is_kind,
    "marking": _is_marking,
}
assert set(JWE_HEADER_CHECKS) == JWE_MEMBERS


def jws_header_checks(typ: str) -> Mapping[str, HeaderCheck]:
    return {"alg": _equals(JWS_ALG), "kid": _is_kid, "typ": _equals(typ)}


# -- strict parsing ---------------------------------------------------------------------------------------------


def wire_bytes(token: bytes | str) -> bytes:
    """The bytes of a token as it travels. Anything outside ASCII is refused later, by the base64url checks."""
    return token if isinstance(token, bytes) else token.encode("utf-8", "surrogatepass")


def b64url_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(segment: bytes, what: str) -> bytes:
    """Decode unpadded base64url, refusing padding, other characters and non-canonical trailing bits."""
    # the standard alphabet's '+' and '/' would pass the translation below; strict mode refuses anything else
    if len(segment) % 4 == 1 or b"+" in segment or b"/" in segment or b"=" in segment:
        raise ProfileViolation(f"{what} is not unpadded base64url")
    try:
        data = binascii.a2b_base64(segment.translate(_TO_STANDARD) + b"=" * (-len(segment) % 4), strict_mode=True)
    except binascii.Error:
        raise ProfileViolation(f"{what} is not unpadded base64url") from None
    # only a last group of 2 or 3 characters has unused bits: canonical if they are zero (re-encoding gives it back)
    if (tail := len(segment) % 4) and b64url_encode(data[len(data) - tail + 1 :]) != segment[-tail:]:
        raise ProfileViolation(f"{what} is not canonical base64url")
    return data


def _split_compact(token: bytes, parts: int, what: str) -> list[bytes]:
    if token.lstrip()[:1] == b"{":
        raise ProfileViolation(f"{what} uses the JSON serialisation; this profile accepts the compact one only")
    segments = token.split(b".")
    if len(segments) != parts:
        raise ProfileViolation(f"{what} must be a compact serialisation of {parts} dot-separated parts")
    return segments


def _parse_header(segment: bytes, what: str) -> dict[str, Any]:
    raw = b64url_decode(segment, f"{what} protected header")
    try:
        header = parse_strict_json(raw)
    except InvalidMessage as exc:
        raise ProfileViolation(f"{what} protected header: {exc.message}") from None
    if not isinstance(header, dict):
        raise ProfileViolation(f"{what} protected header is not a JSON object")
    return header


def check_header(header: Mapping[str, Any], checks: Mapping[str, HeaderCheck], what: str) -> None:
    """Check that ``header`` has exactly the members of ``checks`` and that each value passes its check."""
    if "zip" in header:
        raise ProfileViolation(f"{what} header: compression ('zip') is refused")
    if "crit" in header:
        raise ProfileViolation(f"{what} header: 'crit' is refused; this profile has no extensions")
    if header.get("alg") == "none":
        raise ProfileViolation(f"{what} header: alg 'none' is refused")
    # Algorithms first: a header for another algorithm also lacks or adds members, and the algorithm is the cause.
    for name in ("alg", "enc"):
        if name in checks and name in header:
            _check_member(header, name, checks[name], what)
    if extra := sorted(set(header) - set(checks)):
        names = ", ".join(_shown(name) for name in extra)
        raise ProfileViolation(f"{what} header: members outside the profile: {names}")
    if missing := sorted(set(checks) - set(header)):
        raise ProfileViolation(f"{what} header: missing members: {', '.join(missing)}")
    for name, check in checks.items():
        _check_member(header, name, check, what)


def _check_member(header: Mapping[str, Any], name: str, check: HeaderCheck, what: str) -> None:
    try:
        check(header[name])
    except ValueError as exc:
        raise ProfileViolation(f"{what} header: {name!r} {exc}") from None


@dataclass(frozen=True)
class UnverifiedJWS:
    """A compact JWS whose shape and header are in profile; its signature is NOT checked yet."""

    token: bytes
    header: Mapping[str, Any]
    kid: str
    payload: bytes


def parse_jws(token: bytes, typ: str, what: str) -> UnverifiedJWS:
    """Strictly parse a compact JWS of this profile with header ``typ``; no cryptography."""
    header_segment, payload_segment, signature_segment = _split_compact(token, 3, what)
    header = _parse_header(header_segment, what)
    check_header(header, jws_header_checks(typ), what)
    payload = b64url_decode(payload_segment, f"{what} payload")
    b64url_decode(signature_segment, f"{what} signature")
    return UnverifiedJWS(token=token, header=header, kid=header["kid"], payload=payload)


@dataclass(frozen=True)
class UnverifiedJWE:
    """A compact JWE whose shape and header are in profile; NOT decrypted or authenticated."""

    token: bytes
    header: Mapping[str, Any]


def parse_jwe(token: bytes, what: str) -> UnverifiedJWE:
    """Strictly parse a compact JWE of this profile; no cryptography."""
    segments = _split_compact(token, 5, what)
    if len(segments[0]) > MAX_JWE_HEADER_SEGMENT:
        raise ProfileViolation(f"{what} protected header is longer than {MAX_JWE_HEADER_SEGMENT} bytes")
    header = _parse_header(segments[0], what)
    check_header(header, JWE_HEADER_CHECKS, what)
    for name, segment in zip(("encrypted key", "iv", "ciphertext", "tag"), segments[1:], strict=True):
        b64url_decode(segment, f"{what} {name}")
    return UnverifiedJWE(token=token, header=header)


def is_okp(key: object, curve: str, *, private: bool) -> bool:
    """Whether ``key`` is a joserfc OKPKey on ``curve`` (and holds the private part, if ``private``)."""
    return isinstance(key, OKPKey) and key.curve_name == curve and (key.is_private or not private)


# -- joserfc registries -----------------------------------------------------------------------------------------


def _registry_for(checks: Mapping[str, HeaderCheck], *, required: frozenset[str]) -> HeaderRegistryDict:
    """Our members with our validators; every other member joserfc knows is refused ('none' validator)."""
    registry: HeaderRegistryDict = {
        name: HeaderParameter(f"{name} (Comity profile)", "none") for name in JWE_HEADER_REGISTRY if name not in checks
    }
    for name, check in checks.items():
        registry[name] = HeaderParameter(f"{name} (Comity profile)", check, name in required)
    return registry


@functools.lru_cache(maxsize=16)
def jws_registry(typ: str, max_bytes: int) -> jws.JWSRegistry:
    """A JWSRegistry that allows only Ed25519 and the members alg, kid, typ (pinned), payloads up to ``max_bytes``."""
    registry = jws.JWSRegistry(
        header_registry=_registry_for(jws_header_checks(typ), required=JWS_MEMBERS),
        algorithms=[JWS_ALG],
        strict_check_header=True,
    )
    registry.max_payload_length = max_bytes  # joserfc's default is 128000
    return registry


@functools.lru_cache(maxsize=16)
def jwe_registry(max_bytes: int) -> jwe.JWERegistry:
    """A JWERegistry that allows only ECDH-ES+A256KW with A256GCM and the profile's members, ciphertexts up to
    ``max_bytes`` and protected headers up to MAX_JWE_HEADER_SEGMENT."""
    # epk is required by the ECDH-ES algorithm itself on decryption; joserfc adds it after checking on encryption.
    registry = jwe.JWERegistry(
        header_registry=_registry_for(JWE_HEADER_CHECKS, required=JWE_MEMBERS - {"epk"}),
        algorithms=[JWE_ALG, JWE_ENC],
        strict_check_header=True,
        max_recipients=1,
    )
    registry.max_ciphertext_length = max_bytes  # joserfc's default is 64 KiB
    registry.max_protected_header_length = MAX_JWE_HEADER_SEGMENT  # joserfc's default is 1024
    return registry


# -- operations -------------------------------------------------------------------------------------------------


def sign_jws(payload: bytes, signing_key: OKPKey, typ: str, max_bytes: int) -> str:
    """Compact JWS, header exactly {"alg":"Ed25519","kid":<thumbprint>,"typ":typ}."""
    if not is_okp(signing_key, "Ed25519", private=True):
        raise ValueError("signing_key must be a private Ed25519 OKPKey")
    header = {"alg": JWS_ALG, "kid": key_id(signing_key), "typ": typ}
    return jws.serialize_compact(header, payload, signing_key, registry=jws_registry(typ, max_bytes))


def verify_jws(parsed: UnverifiedJWS, public_key: OKPKey, typ: str, what: str, max_bytes: int) -> bytes:
    """Verify the Ed25519 signature of an in-profile JWS; return the payload bytes or raise BadSignature."""
    try:
        jws.deserialize_compact(parsed.token, public_key, registry=jws_registry(typ, max_bytes))
    except BadSignatureError:
        raise BadSignature(f"{what} signature does not verify under the key it names") from None
    except (JoseError, ValueError) as exc:
        # Our parser accepted the token, so this is joserfc refusing it on its own grounds.
        raise ProfileViolation(f"{what} refused by the JOSE library ({type(exc).__name__})") from None
    return parsed.payload


def encrypt_jwe(header: Mapping[str, Any], plaintext: bytes, recipient_key: OKPKey, max_bytes: int) -> str:
    """Compact JWE to ``recipient_key`` (X25519); joserfc adds ``epk``, a fresh CEK and a fresh IV."""
    sealed = jwe.encrypt_compact(dict(header), plaintext, recipient_key, registry=jwe_registry(max_bytes))
    if len(sealed) > max_bytes:  # joserfc bounds what it decrypts, not what it writes: a receiver would refuse it
        raise OversizedEnvelope(f"the sealed envelope would be larger than the limit of {max_bytes} bytes")
    if sealed.index(".") > MAX_JWE_HEADER_SEGMENT:
        raise ProfileViolation(f"JWE protected header would be longer than {MAX_JWE_HEADER_SEGMENT} bytes")
    return sealed


def decrypt_jwe(parsed: UnverifiedJWE, private_key: OKPKey, max_bytes: int) -> bytes:
    """Decrypt an in-profile JWE; any key-agreement, unwrap or AEAD failure is one opaque DecryptionFailed."""
    try:
        opened = jwe.decrypt_compact(parsed.token, private_key, registry=jwe_registry(max_bytes))
    except (JoseError, ValueError, TypeError, KeyError, AssertionError):
        raise DecryptionFailed(
            "envelope cannot be decrypted with our key (tampered, or sealed to another key)"
        ) from None
    if opened.plaintext is None:  # pragma: no cover - joserfc always sets it after decryption
        raise DecryptionFailed("envelope cannot be decrypted with our key")
    return opened.plaintext
