"""Regenerate the known-answer vectors in tests/vectors/envelopes/.

Run from the repository root: ``.venv/bin/python -m tests.vectors.make_envelope_vectors``.

Every input is fixed: the JWK private keys below, the payloads (fixed ``id`` and ``iat``) and, for the JWE, the
ephemeral X25519 key, the CEK and the IV. joserfc draws those three from hooks we can patch (the ECDH-ES
algorithm keeps a ``Recipient.ephemeral_key`` that it only generates when unset; the A256GCM model has
``generate_cek`` and ``generate_iv``), so the whole envelope is byte-exact. Ed25519 is deterministic, so the
inner JWS, receipts and refusals are byte-exact anyway. Never use fixed randomness outside vectors.

Vector format, one JSON object per file:

  ``type``               "envelope", "receipt" or "refusal"
  ``description``        what the vector shows
  ``keys``               JWK private keys by role (``sender_signing``, ``recipient_encryption``, ...)
  ``payload``            the JSON value signed (MessagePayload, Receipt or Refusal)
  ``payload_bytes``      its RFC 8785 bytes, as a string
  ``signed``             the compact JWS
  envelopes only:
  ``sealed_to``          role of the key the JWE is sealed to; ``ephemeral_key``, ``cek``, ``iv`` (base64url)
  ``expected_recipient`` what the opener passes (for an archive copy: still the original recipient)
  ``sealed``             the compact JWE; ``sha256`` its hex SHA-256
  ``routing_header``     the JWE protected header as JSON
  ``expect``             "ok", or the error ``code`` an opener must raise (negative vectors)
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from joserfc import jwe
from joserfc._rfc7516.models import JWEKeyAgreement, Recipient
from joserfc.jwk import OKPKey

from crypto.envelope import encrypt_signed, seal_envelope, sign_payload
from crypto.jose_profile import JWE_ALG, JWE_ENC, jwe_registry
from crypto.note import NoteSigner, sign_note
from crypto.receipts import sign_receipt, sign_refusal
from protocol.messages import MessagePayload
from protocol.receipts import Receipt, Refusal

VECTOR_DIR = Path(__file__).resolve().parent / "envelopes"

Jwk = dict[str, str | list[str]]
KEYS: dict[str, Jwk] = {
    "sender_signing": {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "WTUylym1cXHzxlrpiB_ziJVFeci4LKKtu5EbXj6Afbw",
        "d": "VITQLIaS9rGu82hBME4TUlu9Flnfxsa-SRDO8QGc5nw",
    },
    "sender_archive": {
        "kty": "OKP",
        "crv": "X25519",
        "x": "ITxnyUJLhK6F5cJO_UlXIGhjH3NWV8nvQE6n3T8KeBw",
        "d": "kD_6lyfRhr6OmuQHKjNNRp6gSF1xrcGM4Mm7OIiH5V4",
    },
    "recipient_signing": {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "I-YaVfr0MAglgkefEGMxXV3lroqQ0iMO1u9CskadAXk",
        "d": "51TtiwKI1X5NhWCKZcrbpfy58mGct3vE523Qi-ghSw8",
    },
    "recipient_encryption": {
        "kty": "OKP",
        "crv": "X25519",
        "x": "8wI02wr9JC1XPEZCVZWia3rbVT_TlsHRLyvSzs9OnGQ",
        "d": "mKXM_-sk49CjYAzmcTeGT41EECQJdgUtKl0j34X7_lo",
    },
}
EPHEMERAL_KEYS: dict[str, Jwk] = {
    "envelope": {
        "kty": "OKP",
        "crv": "X25519",
        "x": "g9t3gKZsUOUusg3xpgbIjtU8oR8BfDp7LT2UAzegiys",
        "d": "8Mm4RD4yV-VMCDY3ze-miBg218cSGr7PnsuApPqpDU0",
    },
    "archive": {
        "kty": "OKP",
        "crv": "X25519",
        "x": "k8_X_BLfMkSr60x3UdO04H2L95bijugayRty26idGVA",
        "d": "sL6c1HjtTWaH7sNxNxB-daio2fcZ5Zs7xWR384E-IEo",
    },
}

REQUEST: dict[str, Any] = {
    "v": 1,
    "id": "7f0c3a52-1f6e-4c8e-9a3d-2b5e8c4d1a90",
    "from": "ar.mjdh",
    "to": "es.mj",
    "kind": "request",
    "iat": 1795851600,
    "in_reply_to": None,
    "marking": {"level": "CONFIDENTIAL", "caveats": ["embargo:2027-03-01", "uncac-46-19", "uncac-46-20"]},
    "attachments": [
        {
            "name": "letter-of-request.pdf",
            "media_type": "application/pdf",
            "size": 182044,
            "sha256": "3f1d3c2b6a8e5d4c0b9a8f7e6d5c4b3a29181716151413121110090807060504",
            "ct_size": 182244,
            "ct_sha256": "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f",
            "key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        }
    ],
    "content": {"subject": "Request for bank records", "legal_basis": "UNCAC art. 46", "text": "Ñandú, ü, 日本"},
}
RECEIPT: dict[str, Any] = {
    "v": 1,
    "type": "receipt",
    "message_id": REQUEST["id"],
    "from": "es.mj",
    "to": "ar.mjdh",
    "envelope_sha256": "",  # filled in with the request envelope's digest
    "received_at": "2026-11-28T07:40:00.123456Z",
    "ledger_index": 41,
    "checkpoint": "",  # filled in: es.mj's signed checkpoint note at tree size 42 (protocol.md 10.2, 13.5)
}
CHECKPOINT_BODY = "comity-ledger/es.mj\n42\nqL6c1HjtTWaH7sNxNxB+daio2fcZ5Zs7xWR384E+IEo=\n"
REFUSAL: dict[str, Any] = {
    "v": 1,
    "type": "refusal",
    "message_id": REQUEST["id"],
    "from": "es.mj",
    "to": "ar.mjdh",
    "envelope_sha256": "",  # filled in with the mismatching envelope's digest
    "refused_at": "2026-11-28T07:41:00.000001Z",
    "code": "header-mismatch",
    "reason": "routing header member 'kind' differs from the signed payload; envelope refused",
}
CEK = bytes(range(32))
IV = bytes(range(100, 112))


def key(role: str) -> OKPKey:
    return OKPKey.import_key(KEYS[role])


def public(role: str) -> OKPKey:
    return OKPKey.import_key({k: v for k, v in KEYS[role].items() if k != "d"})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@contextmanager
def fixed_jwe_randomness(ephemeral: Jwk, cek: bytes, iv: bytes) -> Iterator[None]:
    """Make joserfc's ECDH-ES+A256KW / A256GCM use this ephemeral key, CEK and IV (vectors only)."""
    alg = jwe.JWERegistry.algorithms["alg"][JWE_ALG]
    enc = jwe.JWERegistry.algorithms["enc"][JWE_ENC]
    assert isinstance(alg, JWEKeyAgreement)
    prepare = alg.prepare_ephemeral_key

    def prepare_fixed(recipient: Recipient[Any]) -> None:
        recipient.ephemeral_key = OKPKey.import_key(ephemeral)
        prepare(recipient)

    with (
        mock.patch.object(alg, "prepare_ephemeral_key", prepare_fixed),
        mock.patch.object(enc, "generate_cek", return_value=cek),
        mock.patch.object(enc, "generate_iv", return_value=iv),
    ):
        yield


def _header_json(sealed: str) -> Any:
    segment = sealed.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _envelope_vector(
    description: str, payload: MessagePayload, signed: str, sealed: str, sealed_to: str, ephemeral: str, expect: str
) -> dict[str, Any]:
    return {
        "type": "envelope",
        "description": description,
        "keys": {role: KEYS[role] for role in ("sender_signing", sealed_to)},
        "payload": payload.to_json(),
        "payload_bytes": payload.to_bytes().decode("utf-8"),
        "signed": signed,
        "sealed_to": sealed_to,
        "ephemeral_key": EPHEMERAL_KEYS[ephemeral],
        "cek": b64(CEK),
        "iv": b64(IV),
        "expected_recipient": payload.to,
        "sealed": sealed,
        "sha256": hashlib.sha256(sealed.encode("ascii")).hexdigest(),
        "routing_header": _header_json(sealed),
        "expect": expect,
    }


def build_vectors() -> dict[str, dict[str, Any]]:
    """All vectors by file name, computed from the fixed inputs above."""
    request = MessagePayload.parse(REQUEST)
    with fixed_jwe_randomness(EPHEMERAL_KEYS["envelope"], CEK, IV):
        envelope = seal_envelope(request, key("sender_signing"), public("recipient_encryption"))
    with fixed_jwe_randomness(EPHEMERAL_KEYS["archive"], CEK, IV):
        archive = encrypt_signed(envelope.signed, request, public("sender_archive"))
    # A validly signed JWS under a routing header that claims another kind (joserfc directly, as an attacker would).
    mismatched_header = {**_header_json(envelope.compact), "kind": "response"}
    del mismatched_header["epk"]
    with fixed_jwe_randomness(EPHEMERAL_KEYS["envelope"], CEK, IV):
        mismatched = jwe.encrypt_compact(
            mismatched_header, envelope.signed, public("recipient_encryption"), registry=jwe_registry(1 << 22)
        )
    checkpoint = sign_note(CHECKPOINT_BODY, [NoteSigner("comity-ledger/es.mj", key("recipient_signing"))])
    digest = hashlib.sha256(envelope.compact.encode()).hexdigest()
    receipt = Receipt.parse({**RECEIPT, "envelope_sha256": digest, "checkpoint": checkpoint})
    refusal = Refusal.parse({**REFUSAL, "envelope_sha256": hashlib.sha256(mismatched.encode()).hexdigest()})
    assert sign_payload(request, key("sender_signing")) == envelope.signed
    return {
        "envelope-request.json": _envelope_vector(
            "A request from ar.mjdh to es.mj, sealed to es.mj's encryption key.",
            request,
            envelope.signed,
            envelope.compact,
            "recipient_encryption",
            "envelope",
            "ok",
        ),
        "envelope-archive-copy.json": _envelope_vector(
            "The sender's archive copy of the same signed request, sealed to the sender's own archive key; "
            "the routing header still names es.mj and the opener passes expected_recipient es.mj.",
            request,
            envelope.signed,
            archive,
            "sender_archive",
            "archive",
            "ok",
        ),
        "envelope-header-mismatch.json": _envelope_vector(
            "Negative: the validly signed request re-encrypted under a routing header claiming kind 'response'.",
            request,
            envelope.signed,
            mismatched,
            "recipient_encryption",
            "envelope",
            "header-mismatch",
        ),
        "receipt.json": {
            "type": "receipt",
            "description": "es.mj's signed receipt for envelope-request.json.",
            "keys": {"recipient_signing": KEYS["recipient_signing"]},
            "payload": receipt.model_dump(by_alias=True),
            "payload_bytes": receipt.to_bytes().decode("utf-8"),
            "signed": sign_receipt(receipt, key("recipient_signing")),
            "expect": "ok",
        },
        "refusal.json": {
            "type": "refusal",
            "description": "es.mj's signed refusal of envelope-header-mismatch.json.",
            "keys": {"recipient_signing": KEYS["recipient_signing"]},
            "payload": refusal.model_dump(by_alias=True),
            "payload_bytes": refusal.to_bytes().decode("utf-8"),
            "signed": sign_refusal(refusal, key("recipient_signing")),
            "expect": "ok",
        },
    }


def render(vector: dict[str, Any]) -> str:
    return json.dumps(vector, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    VECTOR_DIR.mkdir(exist_ok=True)
    for name, vector in build_vectors().items():
        (VECTOR_DIR / name).write_text(render(vector), encoding="utf-8")
        print(f"wrote {VECTOR_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
