"""Signed receipts and refusals: round trips, exact bytes, and every refusal with its typed error."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import OctKey, OKPKey

from crypto.errors import BadSignature, ProfileViolation, UnknownKey
from crypto.receipts import MAX_RECEIPT_BYTES, sign_receipt, sign_refusal, verify_receipt, verify_refusal
from protocol.errors import InvalidMessage
from protocol.receipts import Receipt, Refusal
from protocol.timefmt import parse_time
from tests.crypto.test_envelope_refusals import b64, craft_jws

RECEIPT_TYP = "comity-receipt+jws"


def make_receipt(**changes: Any) -> Receipt:
    data: dict[str, Any] = {
        "message_id": "7f0c3a52-1f6e-4c8e-9a3d-2b5e8c4d1a90",
        "from": "es.mj",
        "to": "ar.mjdh",
        "envelope_sha256": "ab" * 32,
        "received_at": "2026-11-28T07:40:00.123456Z",
        "ledger_index": 41,
        "checkpoint": "es.mj/comity\n42\nqL6c1HjtTWaH7sNxNxB+daio2fcZ5Zs7xWR384E+IEo=\n",
    } | changes
    return Receipt.parse(data)


def make_refusal(**changes: Any) -> Refusal:
    data: dict[str, Any] = {
        "message_id": None,
        "from": "es.mj",
        "to": None,
        "envelope_sha256": "cd" * 32,
        "refused_at": "2026-11-28T07:41:00.000001Z",
        "code": "profile-violation",
        "reason": "envelope header: alg 'none' is refused",
    } | changes
    return Refusal.parse(data)


@pytest.fixture
def signer() -> OKPKey:
    return OKPKey.generate_key("Ed25519")


def listed(key: OKPKey) -> dict[str, OKPKey]:
    return {key.thumbprint(): OKPKey.import_key(key.as_dict(private=False))}


def header_of(token: str) -> bytes:
    segment = token.split(".")[0]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def test_receipt_round_trip(signer: OKPKey) -> None:
    receipt = make_receipt()
    token = sign_receipt(receipt, signer)
    assert verify_receipt(token, listed(signer)) == receipt
    assert header_of(token) == b'{"alg":"Ed25519","kid":"' + signer.thumbprint().encode() + b'","typ":"' + (
        RECEIPT_TYP.encode() + b'"}'
    )


def test_a_duplicate_delivery_gets_the_byte_identical_receipt(signer: OKPKey) -> None:
    assert sign_receipt(make_receipt(), signer) == sign_receipt(make_receipt(), signer)


@pytest.mark.parametrize(
    "refusal",
    [make_refusal(), make_refusal(message_id="7f0c3a52-1f6e-4c8e-9a3d-2b5e8c4d1a90", to="ar.mjdh")],
)
def test_refusal_round_trip(signer: OKPKey, refusal: Refusal) -> None:
    token = sign_refusal(refusal, signer)
    assert verify_refusal(token, listed(signer)) == refusal
    assert b'"typ":"comity-refusal+jws"' in header_of(token)


def test_a_receipt_is_not_a_refusal_and_back(signer: OKPKey) -> None:
    with pytest.raises(ProfileViolation, match="'typ' must be 'comity-refusal\\+jws'"):
        verify_refusal(sign_receipt(make_receipt(), signer), listed(signer))
    with pytest.raises(ProfileViolation, match="'typ' must be 'comity-receipt\\+jws'"):
        verify_receipt(sign_refusal(make_refusal(), signer), listed(signer))
    # Right typ, wrong body: the payload's own "type" still tells them apart.
    body = make_refusal().to_bytes()
    forged = craft_jws({"alg": "Ed25519", "kid": signer.thumbprint(), "typ": RECEIPT_TYP}, body, signer)
    with pytest.raises(InvalidMessage, match="Receipt"):
        verify_receipt(forged, listed(signer))


def test_flipped_signature(signer: OKPKey) -> None:
    head, body, signature = sign_receipt(make_receipt(), signer).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[-1] ^= 0x40
    with pytest.raises(BadSignature, match="receipt signature does not verify"):
        verify_receipt(f"{head}.{body}.{b64(bytes(raw))}", listed(signer))


def test_edited_receipt_body(signer: OKPKey) -> None:
    head, _, signature = sign_receipt(make_receipt(), signer).split(".")
    edited = make_receipt(ledger_index=0).to_bytes()
    with pytest.raises(BadSignature, match="does not verify"):
        verify_receipt(f"{head}.{b64(edited)}.{signature}", listed(signer))


def test_another_key_claiming_the_signers_kid(signer: OKPKey) -> None:
    impostor = OKPKey.generate_key("Ed25519")
    header = {"alg": "Ed25519", "kid": signer.thumbprint(), "typ": RECEIPT_TYP}
    with pytest.raises(BadSignature, match="does not verify"):
        verify_receipt(craft_jws(header, make_receipt().to_bytes(), impostor), listed(signer))


def test_signer_not_listed(signer: OKPKey) -> None:
    token = sign_receipt(make_receipt(), signer)
    with pytest.raises(UnknownKey, match="not listed"):
        verify_receipt(token, listed(OKPKey.generate_key("Ed25519")))
    with pytest.raises(UnknownKey, match="not listed"):
        verify_receipt(token, {signer.thumbprint(): OKPKey.generate_key("X25519")})


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"alg": "none"}, "alg 'none' is refused"),
        ({"alg": "HS256"}, "'alg' must be 'Ed25519'"),
        ({"alg": "EdDSA"}, "'alg' must be 'Ed25519'"),
        ({"jku": "https://attacker.example/k"}, "members outside the profile: 'jku'"),
        ({"jwk": {"kty": "OKP"}}, "members outside the profile: 'jwk'"),
        ({"b64": False}, "members outside the profile: 'b64'"),
        ({"crit": ["b64"]}, "'crit' is refused"),
        ({"kid": None}, "missing members: kid"),
        ({"typ": "JWT"}, "'typ' must be"),
    ],
)
def test_header_outside_the_profile(signer: OKPKey, header: dict[str, Any], match: str) -> None:
    full = {k: v for k, v in ({"alg": "Ed25519", "kid": signer.thumbprint(), "typ": RECEIPT_TYP} | header).items()}
    full = {k: v for k, v in full.items() if v is not None}
    token = craft_jws(full, make_receipt().to_bytes(), signer)
    with pytest.raises(ProfileViolation, match=match):
        verify_receipt(token, listed(signer))


def test_hs256_receipt_keyed_with_the_public_key_bytes(signer: OKPKey) -> None:
    # The classic confusion attack: an HMAC "signature" keyed with the verifier's public key.
    public_x = signer.as_dict(private=False)["x"]
    assert isinstance(public_x, str)
    hmac_key = OctKey.import_key(public_x.encode())
    header = {"alg": "HS256", "kid": signer.thumbprint(), "typ": RECEIPT_TYP}
    token = jws.serialize_compact(header, make_receipt().to_bytes(), hmac_key, algorithms=["HS256"])
    with pytest.raises(ProfileViolation, match="'alg' must be 'Ed25519'"):
        verify_receipt(token, listed(signer))


def test_duplicate_header_member(signer: OKPKey) -> None:
    text = '{"alg":"Ed25519","kid":"' + signer.thumbprint() + '","typ":"comity-refusal+jws","typ":"' + RECEIPT_TYP
    token = craft_jws(text + '"}', make_receipt().to_bytes(), signer)
    with pytest.raises(ProfileViolation, match="duplicate member 'typ'"):
        verify_receipt(token, listed(signer))


@pytest.mark.parametrize(
    ("render", "match"),
    [
        (lambda r: json.dumps(r.model_dump(by_alias=True)).encode(), "not RFC 8785 canonical"),
        (lambda r: r.to_bytes()[:-1] + b',"ledger_index":0}', "duplicate member 'ledger_index'"),
        (lambda r: r.to_bytes()[:-1] + b',"zz":0}', "Extra inputs are not permitted"),
        (lambda r: b"not json", "not valid JSON"),
    ],
)
def test_payload_that_is_not_a_canonical_receipt(signer: OKPKey, render: Any, match: str) -> None:
    header = {"alg": "Ed25519", "kid": signer.thumbprint(), "typ": RECEIPT_TYP}
    token = craft_jws(header, render(make_receipt()), signer)
    with pytest.raises(InvalidMessage, match=match):
        verify_receipt(token, listed(signer))


def test_json_serialisation(signer: OKPKey) -> None:
    member: jws.HeaderDict = {
        "protected": {"alg": "Ed25519", "typ": RECEIPT_TYP},
        "header": {"kid": signer.thumbprint()},
    }
    token = json.dumps(jws.serialize_json(member, make_receipt().to_bytes(), signer, algorithms=["Ed25519"]))
    with pytest.raises(ProfileViolation, match="JSON serialisation"):
        verify_receipt(token, listed(signer))


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        (lambda t: t[: t.rindex(".")], "3 dot-separated parts"),
        (lambda t: t + ".", "3 dot-separated parts"),
        (lambda t: t[:-1], "signature is not unpadded base64url"),
    ],
)
def test_truncated(signer: OKPKey, cut: Any, match: str) -> None:
    with pytest.raises(ProfileViolation, match=match):
        verify_receipt(cut(sign_receipt(make_receipt(), signer)), listed(signer))


def test_truncated_signature_is_a_bad_signature(signer: OKPKey) -> None:
    with pytest.raises(BadSignature, match="does not verify"):
        verify_receipt(sign_receipt(make_receipt(), signer)[:-2], listed(signer))


def test_oversized(signer: OKPKey) -> None:
    with pytest.raises(ProfileViolation, match=f"larger than {MAX_RECEIPT_BYTES} bytes"):
        verify_receipt("a" * (MAX_RECEIPT_BYTES + 1), listed(signer))


def test_sign_refuses_a_public_or_x25519_key(signer: OKPKey) -> None:
    with pytest.raises(ValueError, match="private Ed25519"):
        sign_receipt(make_receipt(), OKPKey.import_key(signer.as_dict(private=False)))
    with pytest.raises(ValueError, match="private Ed25519"):
        sign_refusal(make_refusal(), OKPKey.generate_key("X25519"))


# --- keys valid when signed ------------------------------------------------------------------------------------------


def keys_between(key: OKPKey, start: str, end: str) -> Any:
    """A KeysAt: ``key`` is listed as valid in [start, end) only (a directory entry's validity period)."""
    bounds = (parse_time(start), parse_time(end))

    def keys_at(when: datetime) -> dict[str, OKPKey]:
        return listed(key) if bounds[0] <= when < bounds[1] else {}

    return keys_at


def test_a_receipt_must_be_signed_by_a_key_valid_at_its_received_at(signer: OKPKey) -> None:
    receipt = make_receipt()  # received 2026-11-28T07:40:00.123456Z
    token = sign_receipt(receipt, signer)
    assert verify_receipt(token, keys_between(signer, "2026-01-01T00:00:00.000000Z", "2027-01-01T00:00:00.000000Z"))
    # the key ended before the receipt's time (say, retired as compromised): refused whatever the time claimed
    ended = keys_between(signer, "2025-01-01T00:00:00.000000Z", "2026-11-28T07:40:00.123456Z")
    with pytest.raises(UnknownKey, match="not listed for its signer at its received_at"):
        verify_receipt(token, ended)
    # the time is read before the signature is checked, but a changed time breaks the signature
    parts = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    payload["received_at"] = "2026-06-01T00:00:00.000000Z"
    moved = ".".join([parts[0], b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()), parts[2]])
    with pytest.raises(BadSignature):
        verify_receipt(moved, keys_between(signer, "2026-01-01T00:00:00.000000Z", "2027-01-01T00:00:00.000000Z"))


def test_a_refusal_must_be_signed_by_a_key_valid_at_its_refused_at(signer: OKPKey) -> None:
    token = sign_refusal(make_refusal(), signer)  # refused 2026-11-28T07:41:00.000001Z
    assert verify_refusal(token, keys_between(signer, "2026-11-28T07:41:00.000001Z", "2026-11-29T00:00:00.000000Z"))
    with pytest.raises(UnknownKey, match="at its refused_at"):
        verify_refusal(token, keys_between(signer, "2026-11-28T07:41:00.000002Z", "2026-11-29T00:00:00.000000Z"))


def test_a_signed_payload_without_its_time_is_refused_before_any_key_is_chosen(signer: OKPKey) -> None:
    body = json.dumps({"type": "receipt", "received_at": "yesterday"}).encode()
    forged = craft_jws({"alg": "Ed25519", "kid": signer.thumbprint(), "typ": RECEIPT_TYP}, body, signer)
    with pytest.raises(InvalidMessage, match="no valid received_at"):
        verify_receipt(forged, keys_between(signer, "2026-01-01T00:00:00.000000Z", "2027-01-01T00:00:00.000000Z"))
