"""crypto.note against the published signed-note / tlog-cosignature vectors (../shared/vectors/signed-note)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from crypto.note import (
    CosignatureVerifier,
    NoteError,
    NoteSigner,
    NoteVerifier,
    add_signatures,
    open_note,
    sign_note,
    verifier_from_key,
)
from tests.vectors_path import VECTORS_DIR, vectors_path


def _vectors() -> dict[str, Any]:
    path = VECTORS_DIR / "signed-note" / "vectors.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


VECTORS = _vectors()
KEYS: dict[str, dict[str, str]] = VECTORS.get("keys", {})
VALID: list[dict[str, Any]] = VECTORS.get("valid", [])
INVALID: list[dict[str, Any]] = VECTORS.get("invalid", [])
INVALID_VKEYS: list[str] = VECTORS.get("invalid_vkeys", [])
COSIGNATURE: dict[str, Any] = VECTORS.get("cosignature_v1", {})


def _trusted(names: list[str]) -> list[NoteVerifier]:
    return [NoteVerifier.from_verifier_key(KEYS[name]["vkey"]) for name in names]


def _text_of(note: str) -> str:
    return note[: note.rfind("\n\n") + 1]


def test_published_note_vectors_are_present() -> None:
    vectors_path("signed-note", "vectors.json")
    assert (len(KEYS), len(VALID), len(INVALID), len(INVALID_VKEYS)) == (3, 3, 7, 3)
    assert set(COSIGNATURE) >= {"formats_timestamp_vector", "cosigner_vkey_type4"}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_verifier_key(name: str) -> None:
    key = KEYS[name]
    verifier = NoteVerifier.from_verifier_key(key["vkey"])
    assert verifier.name == name
    assert verifier.key_id.hex() == key["key_id_hex"]
    if "ed25519_pub_hex" in key:
        assert verifier.public_key.hex() == key["ed25519_pub_hex"]
    assert verifier.verifier_key() == key["vkey"]


def test_signer_key_of_peter_neumann() -> None:
    vectors_path("signed-note", "vectors.json")
    key = KEYS["PeterNeumann"]
    signer = NoteSigner.from_signer_key(key["skey"])
    assert signer.name == "PeterNeumann"
    assert signer.key_id.hex() == key["key_id_hex"]
    assert signer.public_key.hex() == key["ed25519_pub_hex"]
    assert signer.verifier_key() == key["vkey"]
    assert signer.signer_key() == key["skey"]
    assert NoteSigner("PeterNeumann", bytes.fromhex(key["ed25519_seed_hex"])).verifier_key() == key["vkey"]


@pytest.mark.parametrize("case", VALID, ids=[c["desc"] for c in VALID])
def test_valid_note_verifies(case: dict[str, Any]) -> None:
    opened = open_note(case["note"], _trusted(case["trusted"]))
    assert opened.text == _text_of(case["note"])
    assert [sig.name for sig in opened.verified] == case["trusted"]
    assert [sig.key_id.hex() for sig in opened.verified] == [KEYS[n]["key_id_hex"] for n in case["trusted"]]
    assert all(sig.timestamp is None for sig in opened.verified)
    assert opened.unverified == []


def test_signing_is_byte_exact() -> None:
    vectors_path("signed-note", "vectors.json")
    case = VALID[0]
    signer = NoteSigner.from_signer_key(KEYS["PeterNeumann"]["skey"])
    assert sign_note(_text_of(case["note"]), [signer]) == case["note"]


def test_two_signatures_with_one_trusted_key_keeps_the_other() -> None:
    vectors_path("signed-note", "vectors.json")
    case = VALID[1]
    opened = open_note(case["note"], _trusted(["EnochRoot"]))
    assert [sig.name for sig in opened.verified] == ["EnochRoot"]
    assert len(opened.unverified) == 1
    assert opened.unverified[0].startswith("\u2014 PeterNeumann ")


@pytest.mark.parametrize("case", INVALID, ids=[c["desc"] for c in INVALID])
def test_invalid_note_is_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(NoteError):
        open_note(case["note"], _trusted(case["trusted"]))


@pytest.mark.parametrize("vkey", INVALID_VKEYS)
def test_invalid_verifier_key_is_rejected(vkey: str) -> None:
    with pytest.raises(NoteError):
        NoteVerifier.from_verifier_key(vkey)
    with pytest.raises(NoteError):
        verifier_from_key(vkey)


def test_cosigner_verifier_key_of_type_4() -> None:
    vectors_path("signed-note", "vectors.json")
    vkey = COSIGNATURE["cosigner_vkey_type4"]
    verifier = CosignatureVerifier.from_verifier_key(vkey)
    assert verifier.name == "remora.n621.de"
    assert verifier.key_id.hex() == vkey.split("+")[1]
    assert isinstance(verifier_from_key(vkey), CosignatureVerifier)
    assert verifier.verifier_key() == vkey
    with pytest.raises(NoteError, match="0x01"):
        NoteVerifier.from_verifier_key(vkey)


def test_cosignature_layout_of_the_formats_vector() -> None:
    """key ID (4) || u64 big-endian timestamp (8) || Ed25519 signature (64); an unknown cosigner is kept, ignored."""
    vectors_path("signed-note", "vectors.json")
    vector = COSIGNATURE["formats_timestamp_vector"]
    raw = base64.b64decode(vector["sig_b64"], validate=True)
    assert len(raw) == 4 + 8 + 64
    assert raw[:4].hex() == vector["key_id_hex"]
    assert int.from_bytes(raw[4:12], "big") == vector["timestamp"]
    note = add_signatures(VALID[0]["note"], [f"\u2014 witness.example {vector['sig_b64']}"])
    opened = open_note(note, _trusted(["PeterNeumann"]))
    assert opened.unverified == [f"\u2014 witness.example {vector['sig_b64']}"]
