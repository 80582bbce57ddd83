"""Known-answer vectors (tests/vectors/envelopes/, made by tests/vectors/make_envelope_vectors.py).

Envelopes are byte-exact: the inner JWS because Ed25519 is deterministic, the JWE because the vector fixes the
ephemeral key, CEK and IV. The stored CEK and IV are also checked with plain AES-GCM, and jwcrypto opens each one.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import OKPKey

from crypto.envelope import encrypt_signed, open_envelope, sign_payload
from crypto.receipts import sign_receipt, sign_refusal, verify_receipt, verify_refusal
from protocol.errors import ComityError
from protocol.messages import MessagePayload
from protocol.receipts import Receipt, Refusal
from tests.crypto.test_jwcrypto_interop import jc_decrypt, jc_verify
from tests.vectors.make_envelope_vectors import VECTOR_DIR, build_vectors, fixed_jwe_randomness, render

VECTORS = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(VECTOR_DIR.glob("*.json"))}
ENVELOPES = [name for name, vector in VECTORS.items() if vector["type"] == "envelope"]
VALID_ENVELOPES = [name for name in ENVELOPES if VECTORS[name]["expect"] == "ok"]
NEGATIVE_ENVELOPES = [name for name in ENVELOPES if VECTORS[name]["expect"] != "ok"]
TOKENS = [name for name, vector in VECTORS.items() if vector["type"] in {"receipt", "refusal"}]


def private(jwk: dict[str, str]) -> OKPKey:
    return OKPKey.import_key(dict(jwk))


def public(jwk: dict[str, str]) -> OKPKey:
    return OKPKey.import_key({k: v for k, v in jwk.items() if k != "d"})


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def open_vector(vector: dict[str, Any]) -> Any:
    opener = private(vector["keys"][vector["sealed_to"]])
    signer = public(vector["keys"]["sender_signing"])
    return open_envelope(
        vector["sealed"],
        recipient_keys={opener.thumbprint(): opener},
        sender_keys={signer.thumbprint(): signer},
        expected_recipient=vector["expected_recipient"],
    )


def test_there_are_vectors_of_each_type() -> None:
    assert len(VALID_ENVELOPES) >= 2
    assert NEGATIVE_ENVELOPES
    assert {VECTORS[name]["type"] for name in TOKENS} == {"receipt", "refusal"}


def test_the_generator_reproduces_every_file_byte_for_byte() -> None:
    built = build_vectors()
    assert sorted(built) == sorted(VECTORS)
    for name, vector in built.items():
        assert render(vector) == (VECTOR_DIR / name).read_text(encoding="utf-8"), name


@pytest.mark.parametrize("name", ENVELOPES)
def test_inner_jws_is_byte_exact(name: str) -> None:
    vector = VECTORS[name]
    payload = MessagePayload.parse(vector["payload"])
    assert payload.to_bytes() == vector["payload_bytes"].encode("utf-8")
    assert sign_payload(payload, private(vector["keys"]["sender_signing"])) == vector["signed"]


@pytest.mark.parametrize("name", VALID_ENVELOPES)  # negative vectors are made with joserfc directly
def test_whole_envelope_is_byte_exact_with_the_fixed_ephemeral_key_cek_and_iv(name: str) -> None:
    vector = VECTORS[name]
    payload = MessagePayload.parse(vector["payload"])
    with fixed_jwe_randomness(vector["ephemeral_key"], unb64(vector["cek"]), unb64(vector["iv"])):
        sealed = encrypt_signed(vector["signed"], payload, public(vector["keys"][vector["sealed_to"]]))
    assert sealed == vector["sealed"]
    assert hashlib.sha256(sealed.encode("ascii")).hexdigest() == vector["sha256"]


@pytest.mark.parametrize("name", ENVELOPES)
def test_stored_cek_and_iv_decrypt_with_plain_aes_gcm(name: str) -> None:
    vector = VECTORS[name]
    header, _, iv, ciphertext, tag = vector["sealed"].split(".")
    assert unb64(iv) == unb64(vector["iv"])
    plaintext = AESGCM(unb64(vector["cek"])).decrypt(unb64(iv), unb64(ciphertext) + unb64(tag), header.encode())
    assert plaintext == vector["signed"].encode("ascii")
    assert json.loads(unb64(header)) == vector["routing_header"]


@pytest.mark.parametrize("name", VALID_ENVELOPES)
def test_valid_vectors_open(name: str) -> None:
    vector = VECTORS[name]
    opened = open_vector(vector)
    assert opened.payload.to_bytes() == vector["payload_bytes"].encode("utf-8")
    assert opened.signed == vector["signed"]
    assert opened.sha256 == vector["sha256"]
    assert opened.header.kid == private(vector["keys"][vector["sealed_to"]]).thumbprint()


@pytest.mark.parametrize("name", NEGATIVE_ENVELOPES)
def test_negative_vectors_are_refused_with_their_code(name: str) -> None:
    vector = VECTORS[name]
    with pytest.raises(ComityError) as info:
        open_vector(vector)
    assert info.value.code == vector["expect"]


@pytest.mark.parametrize("name", ENVELOPES)
def test_jwcrypto_opens_every_envelope_vector(name: str) -> None:
    vector = VECTORS[name]
    header, signed = jc_decrypt(vector["sealed"], private(vector["keys"][vector["sealed_to"]]))
    _, payload = jc_verify(signed.decode("ascii"), public(vector["keys"]["sender_signing"]))
    assert header == vector["routing_header"]
    assert signed.decode("ascii") == vector["signed"]
    assert payload == vector["payload_bytes"].encode("utf-8")


@pytest.mark.parametrize("name", TOKENS)
def test_receipt_and_refusal_vectors_are_byte_exact(name: str) -> None:
    vector = VECTORS[name]
    signer = private(vector["keys"]["recipient_signing"])
    keys = {signer.thumbprint(): public(vector["keys"]["recipient_signing"])}
    model: Receipt | Refusal
    if vector["type"] == "receipt":
        model = Receipt.parse(vector["payload"])
        assert sign_receipt(model, signer) == vector["signed"]
        assert verify_receipt(vector["signed"], keys) == model
    else:
        model = Refusal.parse(vector["payload"])
        assert sign_refusal(model, signer) == vector["signed"]
        assert verify_refusal(vector["signed"], keys) == model
    assert model.to_bytes() == vector["payload_bytes"].encode("utf-8")
    _, payload = jc_verify(vector["signed"], public(vector["keys"]["recipient_signing"]))
    assert payload == model.to_bytes()


def test_receipts_name_the_envelopes_they_answer() -> None:
    assert VECTORS["receipt.json"]["payload"]["envelope_sha256"] == VECTORS["envelope-request.json"]["sha256"]
    assert VECTORS["refusal.json"]["payload"]["envelope_sha256"] == VECTORS["envelope-header-mismatch.json"]["sha256"]


def test_the_worked_example_in_protocol_md_shows_the_vectors() -> None:
    """docs/protocol.md section 13 quotes these vectors (payload bytes, headers, sizes, digests, compact forms): a
    second implementation checks itself against it, so it must not drift from what the code makes."""
    section = (VECTOR_DIR.parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = section.split("\n## 13. Worked example\n", 1)[1].split("\n## 14.", 1)[0]
    request, receipt = VECTORS["envelope-request.json"], VECTORS["receipt.json"]
    signed, sealed = request["signed"], request["sealed"]
    shown = [
        request["payload_bytes"],
        json.dumps(request["routing_header"], separators=(",", ":"), ensure_ascii=False),
        f"Compact ({len(signed)} characters): `{signed[:60]}...{signed[-30:]}`",
        f"total {len(sealed)} bytes, SHA-256 `{request['sha256']}`",
        f"Compact: `{sealed[:60]}...{sealed[-30:]}`",
        receipt["payload_bytes"],
        f"Compact ({len(receipt['signed'])} characters): `{receipt['signed'][:60]}...{receipt['signed'][-30:]}`",
        *receipt["payload"]["checkpoint"].rstrip("\n").split("\n"),
    ]
    missing = [text[:80] for text in shown if text not in section]
    assert not missing, f"protocol.md section 13 no longer shows: {missing}"
