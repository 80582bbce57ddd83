"""Signed receipts and refusals (DESIGN.md, "Receipts").

Each is a compact JWS, header exactly ``{"alg":"Ed25519","kid":<thumbprint>,"typ":...}``, over the RFC 8785 bytes
of a :class:`~protocol.receipts.Receipt` or :class:`~protocol.receipts.Refusal`. Ed25519 is deterministic, so the
same receipt signed by the same key has the same bytes: a duplicate delivery is answered byte for byte.
The ``typ`` and the payload's ``type`` both distinguish a receipt from a refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from joserfc.jwk import OKPKey

from crypto.errors import ProfileViolation, UnknownKey
from crypto.jose_profile import RECEIPT_TYP, REFUSAL_TYP, is_okp, parse_jws, sign_jws, verify_jws, wire_bytes
from protocol.errors import InvalidMessage
from protocol.messages import parse_strict_json
from protocol.receipts import Receipt, Refusal
from protocol.timefmt import parse_time

__all__ = ["MAX_RECEIPT_BYTES", "KeysAt", "sign_receipt", "sign_refusal", "verify_receipt", "verify_refusal"]

# the signer's keys valid at a time (config.directory_model.AuthorityEntry.signing_keys_at): given one, a receipt or
# refusal must be signed by a key valid at the time it says it was signed (``received_at``, ``refused_at``)
KeysAt = Callable[[datetime], Mapping[str, OKPKey]]

# A receipt carries at most an 8 KiB checkpoint; this bounds the work done on an unauthenticated token.
MAX_RECEIPT_BYTES = 64 * 1024


def sign_receipt(receipt: Receipt, signing_key: OKPKey) -> str:
    return sign_jws(receipt.to_bytes(), signing_key, RECEIPT_TYP, MAX_RECEIPT_BYTES)


def sign_refusal(refusal: Refusal, signing_key: OKPKey) -> str:
    return sign_jws(refusal.to_bytes(), signing_key, REFUSAL_TYP, MAX_RECEIPT_BYTES)


def _verified_payload(
    token: str | bytes, signer_keys: Mapping[str, OKPKey] | KeysAt, typ: str, what: str, signed_at: str
) -> tuple[bytes, Any]:
    """The signed payload's bytes and its strictly parsed JSON (parsed once)."""
    # 1. Size, before anything is parsed.
    if len(token) > MAX_RECEIPT_BYTES or len(token_bytes := wire_bytes(token)) > MAX_RECEIPT_BYTES:
        raise ProfileViolation(f"{what} is larger than {MAX_RECEIPT_BYTES} bytes")

    # 2. Compact shape and protected header within the profile (alg, kid, typ; nothing else).
    parsed = parse_jws(token_bytes, typ, what)

    # 3. The key is one the directory lists for the claimed signer (valid when it says it signed, if asked: the
    #    time is read before the signature is checked, but the signature covers it, so a changed time fails below).
    document: Any = None
    if isinstance(signer_keys, Mapping):
        keys = signer_keys
    else:
        document = parse_strict_json(parsed.payload)
        keys = signer_keys(_signed_time(document, signed_at))
    key = keys.get(parsed.kid)
    if key is None or not is_okp(key, "Ed25519", private=False):
        raise UnknownKey(
            f"{what} is signed by a key not listed for its signer at its {signed_at}; refresh the directory"
        )

    # 4. The Ed25519 signature verifies under that key.
    data = verify_jws(parsed, key, typ, what, MAX_RECEIPT_BYTES)
    return data, parse_strict_json(data) if document is None else document


def _canonical(data: bytes, model: Receipt | Refusal, what: str) -> None:
    # 6. RFC 8785 bytes only, so every party hashes and ledgers the same bytes.
    if model.to_bytes() != data:
        raise InvalidMessage(f"{what} payload is not RFC 8785 canonical JSON")


def verify_receipt(token: str, signer_keys: Mapping[str, OKPKey] | KeysAt) -> Receipt:
    """Verify a signed receipt by one of ``signer_keys`` (the receiver's keys by kid, or those valid at its
    ``received_at``) and return it."""
    data, document = _verified_payload(token, signer_keys, RECEIPT_TYP, "receipt", "received_at")
    # 5. A valid Receipt (duplicate members refused).
    receipt = Receipt.parse(document)
    _canonical(data, receipt, "receipt")
    return receipt


def verify_refusal(token: str, signer_keys: Mapping[str, OKPKey] | KeysAt) -> Refusal:
    """Verify a signed refusal by one of ``signer_keys`` (the refusing gateway's keys by kid, or those valid at its
    ``refused_at``) and return it."""
    data, document = _verified_payload(token, signer_keys, REFUSAL_TYP, "refusal", "refused_at")
    # 5. A valid Refusal (duplicate members refused).
    refusal = Refusal.parse(document)
    _canonical(data, refusal, "refusal")
    return refusal


def _signed_time(document: Any, member: str) -> datetime:
    value = document.get(member) if isinstance(document, dict) else None
    try:
        if isinstance(value, str):
            return parse_time(value)
    except ValueError:
        pass
    raise InvalidMessage(f"the signed payload has no valid {member}")
