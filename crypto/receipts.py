"""Signed receipts and refusals (DESIGN.md, "Receipts").

Each is a compact JWS, header exactly ``{"alg":"Ed25519","kid":<thumbprint>,"typ":...}``, over the RFC 8785 bytes
of a :class:`~protocol.receipts.Receipt` or :class:`~protocol.receipts.Refusal`. Ed25519 is deterministic, so the
same receipt signed by the same key has the same bytes: a duplicate delivery is answered byte for byte.
The ``typ`` and the payload's ``type`` both distinguish a receipt from a refusal.
"""

from __future__ import annotations

from collections.abc import Mapping

from joserfc.jwk import OKPKey

from crypto.errors import ProfileViolation, UnknownKey
from crypto.jose_profile import RECEIPT_TYP, REFUSAL_TYP, is_okp, parse_jws, sign_jws, verify_jws, wire_bytes
from protocol.errors import InvalidMessage
from protocol.messages import parse_strict_json
from protocol.receipts import Receipt, Refusal

__all__ = ["MAX_RECEIPT_BYTES", "sign_receipt", "sign_refusal", "verify_receipt", "verify_refusal"]

# A receipt carries at most an 8 KiB checkpoint; this bounds the work done on an unauthenticated token.
MAX_RECEIPT_BYTES = 64 * 1024


def sign_receipt(receipt: Receipt, signing_key: OKPKey) -> str:
    return sign_jws(receipt.to_bytes(), signing_key, RECEIPT_TYP, MAX_RECEIPT_BYTES)


def sign_refusal(refusal: Refusal, signing_key: OKPKey) -> str:
    return sign_jws(refusal.to_bytes(), signing_key, REFUSAL_TYP, MAX_RECEIPT_BYTES)


def _verified_payload(token: str | bytes, signer_keys: Mapping[str, OKPKey], typ: str, what: str) -> bytes:
    # 1. Size, before anything is parsed.
    if len(token) > MAX_RECEIPT_BYTES or len(token_bytes := wire_bytes(token)) > MAX_RECEIPT_BYTES:
        raise ProfileViolation(f"{what} is larger than {MAX_RECEIPT_BYTES} bytes")

    # 2. Compact shape and protected header within the profile (alg, kid, typ; nothing else).
    parsed = parse_jws(token_bytes, typ, what)

    # 3. The key is one the directory lists for the claimed signer.
    key = signer_keys.get(parsed.kid)
    if key is None or not is_okp(key, "Ed25519", private=False):
        raise UnknownKey(f"{what} is signed by a key not listed for its signer; refresh the directory")

    # 4. The Ed25519 signature verifies under that key.
    return verify_jws(parsed, key, typ, what, MAX_RECEIPT_BYTES)


def _canonical(data: bytes, model: Receipt | Refusal, what: str) -> None:
    # 6. RFC 8785 bytes only, so every party hashes and ledgers the same bytes.
    if model.to_bytes() != data:
        raise InvalidMessage(f"{what} payload is not RFC 8785 canonical JSON")


def verify_receipt(token: str, signer_keys: Mapping[str, OKPKey]) -> Receipt:
    """Verify a signed receipt by one of ``signer_keys`` (the receiver's keys by kid) and return it."""
    data = _verified_payload(token, signer_keys, RECEIPT_TYP, "receipt")
    # 5. A valid Receipt (duplicate members refused).
    receipt = Receipt.parse(parse_strict_json(data))
    _canonical(data, receipt, "receipt")
    return receipt


def verify_refusal(token: str, signer_keys: Mapping[str, OKPKey]) -> Refusal:
    """Verify a signed refusal by one of ``signer_keys`` (the refusing gateway's keys by kid) and return it."""
    data = _verified_payload(token, signer_keys, REFUSAL_TYP, "refusal")
    # 5. A valid Refusal (duplicate members refused).
    refusal = Refusal.parse(parse_strict_json(data))
    _canonical(data, refusal, "refusal")
    return refusal
