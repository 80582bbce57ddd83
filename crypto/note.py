"""C2SP signed notes with Ed25519, checkpoints, and C2SP tlog-cosignature/v1 (Ed25519) cosignatures.

A signed note is a text ending in a newline, a blank line, and one or more signature lines::

    <text, ending in \\n>
    <blank line>
    — <key name> base64(4-byte key ID || signature)

Key strings follow golang.org/x/mod/sumdb/note, so they interoperate with Go tooling and witnesses:

- verifier key: ``<name>+<hex key ID>+base64(type byte || 32-byte public key)``
- signer key (secret): ``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || 32-byte Ed25519 seed)``

Signature types: ``0x01`` Ed25519 over the note text (signed-note "Ed25519 signatures"), and ``0x04`` timestamped
cosignature over ``"cosignature/v1\\ntime <seconds>\\n" || checkpoint text`` (tlog-cosignature "Ed25519 signed
message"). A cosigner key may reuse a note key: the type byte in its key ID keeps the two apart.

Signature lines produced here carry no trailing newline; :func:`sign_note` and :func:`add_signatures` add it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc.jwk import OKPKey

from crypto.errors import CryptoError
from protocol.checkpoint import Checkpoint

__all__ = [
    "MAX_SIGNATURES",
    "SIG_TYPE_COSIGNATURE_V1",
    "SIG_TYPE_ED25519",
    "CosignatureSigner",
    "CosignatureVerifier",
    "NoteError",
    "NoteSigner",
    "NoteVerifier",
    "VerifiedNote",
    "VerifiedSignature",
    "Verifier",
    "add_signatures",
    "open_checkpoint",
    "open_note",
    "sign_note",
    "verifier_from_key",
]

SIG_TYPE_ED25519 = 0x01
SIG_TYPE_COSIGNATURE_V1 = 0x04
# signed-note "Format": verifiers MUST accept at least 16 signatures; x/mod stops at 100.
MAX_SIGNATURES = 100
MAX_TIMESTAMP = 2**63 - 1

_SIG_PREFIX = "\u2014 "  # em dash, space
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_KEY_ID_HEX = re.compile(r"[0-9a-fA-F]{8}")
_KEY_ID_SIZE = 4
_ED25519_KEY_SIZE = 32
_ED25519_SIG_SIZE = 64
_TIMESTAMP_SIZE = 8


class NoteError(CryptoError):
    """A signed note, key string or signature line is malformed, or its signatures do not verify."""

    code = "note-invalid"


# --- text, names, base64 ---------------------------------------------------------------------------------------


def _check_chars(note: str, what: str) -> None:
    # signed-note "Format": valid UTF-8, no ASCII control characters other than newline.
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError(f"{what} is not valid UTF-8") from None
    if any(ch < " " and ch != "\n" for ch in note):
        raise NoteError(f"{what} contains a control character other than newline")


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text:
        raise NoteError("note text is empty")
    _check_chars(text, "note text")
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")


def _is_valid_name(name: str) -> bool:
    # signed-note "Format": key names are non-empty and contain no Unicode spaces and no '+'.
    return bool(name) and not any(ch.isspace() or ch == "+" or ch < " " for ch in name) and _encodes(name)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _b64decode(text: str) -> bytes | None:
    """Standard base64 (RFC 4648 section 4), canonical only: one encoding per byte string."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return None
    return data if base64.b64encode(data).decode("ascii") == text else None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    # signed-note "Signatures": key ID = SHA-256(key name || 0x0A || signature type || public key)[:4].
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()[:_KEY_ID_SIZE]


def _cosigned_message(text: str, timestamp: int) -> bytes:
    # tlog-cosignature "Ed25519 signed message": header line, timestamp line, then the whole checkpoint text.
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


# --- signers ---------------------------------------------------------------------------------------------------


def _ed25519_private(private_key: OKPKey | bytes) -> Ed25519PrivateKey:
    if isinstance(private_key, OKPKey):
        raw = private_key.private_key
        if not isinstance(raw, Ed25519PrivateKey):
            raise ValueError("the OKPKey is not an Ed25519 private key; pass a signing key with its private part")
        return raw
    if isinstance(private_key, bytes) and len(private_key) == _ED25519_KEY_SIZE:
        return Ed25519PrivateKey.from_private_bytes(private_key)
    raise ValueError("pass an Ed25519 private OKPKey or a 32-byte Ed25519 seed")


class _Ed25519Signer:
    signature_type: ClassVar[int]

    def __init__(self, name: str, private_key: OKPKey | bytes) -> None:
        if not isinstance(name, str) or not _is_valid_name(name):
            raise ValueError("key name must be non-empty, without spaces, '+' or control characters")
        self._private_key = _ed25519_private(private_key)
        self.name = name
        self.public_key = self._private_key.public_key().public_bytes_raw()
        self.key_id = _key_id(name, self.signature_type, self.public_key)

    @classmethod
    def from_signer_key(cls, skey: str) -> Self:
        """Build from an x/mod signer key string ``PRIVATE+KEY+<name>+<hex>+base64(0x01 || seed)``.

        A cosigner reuses such an Ed25519 key, as Go witnesses do; its own key ID is recomputed with type 0x04.
        """
        if not isinstance(skey, str) or not skey.startswith(_PRIVATE_PREFIX):
            raise NoteError("signer key must start with PRIVATE+KEY+")
        name, key_id_hex, key_b64 = _split_key(skey[len(_PRIVATE_PREFIX) :], "signer key")
        key = _b64decode(key_b64)
        if key is None or len(key) != 1 + _ED25519_KEY_SIZE or key[0] != SIG_TYPE_ED25519:
            raise NoteError(f"signer key for {name} is not base64(0x01 || 32-byte Ed25519 seed)")
        signer = cls(name, key[1:])
        if _key_id(name, SIG_TYPE_ED25519, signer.public_key) != bytes.fromhex(key_id_hex):
            raise NoteError(f"signer key for {name} has a key ID that does not match its key")
        return signer

    def signer_key(self) -> str:
        """The x/mod signer key string. It is secret: store it like any private key."""
        note_key_id = _key_id(self.name, SIG_TYPE_ED25519, self.public_key)
        seed = self._private_key.private_bytes_raw()
        return f"{_PRIVATE_PREFIX}{self.name}+{note_key_id.hex()}+{_b64encode(bytes([SIG_TYPE_ED25519]) + seed)}"

    def verifier_key(self) -> str:
        """``<name>+<hex key ID>+base64(type || public key)``, to publish."""
        return f"{self.name}+{self.key_id.hex()}+{_b64encode(bytes([self.signature_type]) + self.public_key)}"

    def _line(self, signature: bytes) -> str:
        return f"{_SIG_PREFIX}{self.name} {_b64encode(self.key_id + signature)}"


class NoteSigner(_Ed25519Signer):
    """Signs note texts with Ed25519 (signature type 0x01)."""

    signature_type = SIG_TYPE_ED25519

    def sign(self, text: str) -> str:
        """One signature line (no trailing newline) over ``text``."""
        _check_text(text)
        return self._line(self._private_key.sign(text.encode("utf-8")))

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.public_key)


class CosignatureSigner(_Ed25519Signer):
    """Cosigns checkpoints per tlog-cosignature/v1 with Ed25519 (signature type 0x04)."""

    signature_type = SIG_TYPE_COSIGNATURE_V1

    def sign(self, text: str, timestamp: int) -> str:
        """One cosignature line (no trailing newline) over the checkpoint ``text`` at ``timestamp`` (POSIX seconds).

        Raises ``CheckpointError`` if ``text`` is not a checkpoint: a cosignature vouches for a tree head only.
        """
        _check_text(text)
        Checkpoint.from_text(text)
        if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= MAX_TIMESTAMP:
            raise ValueError("cosignature timestamp must be an integer in [0, 2**63 - 1] seconds")
        signature = self._private_key.sign(_cosigned_message(text, timestamp))
        # tlog-cosignature "Format": timestamped_signature = u64 big-endian timestamp || Ed25519 signature.
        return self._line(timestamp.to_bytes(_TIMESTAMP_SIZE, "big") + signature)

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.public_key)


# --- verifiers -------------------------------------------------------------------------------------------------


def _split_key(body: str, what: str) -> tuple[str, str, str]:
    # Names hold no '+', but standard base64 may: split on the first two only.
    parts = body.split("+", 2)
    if len(parts) != 3:
        raise NoteError(f"{what} must be <name>+<hex key ID>+<base64 key>")
    name, key_id_hex, key_b64 = parts
    if not _is_valid_name(name):
        raise NoteError(f"{what} has an invalid key name")
    if not _KEY_ID_HEX.fullmatch(key_id_hex):
        raise NoteError(f"{what} for {name} must have an 8-digit hex key ID")
    return name, key_id_hex, key_b64


class _Ed25519Verifier:
    signature_type: ClassVar[int]

    def __init__(self, name: str, public_key: bytes) -> None:
        if not isinstance(name, str) or not _is_valid_name(name):
            raise ValueError("key name must be non-empty, without spaces, '+' or control characters")
        if not isinstance(public_key, bytes) or len(public_key) != _ED25519_KEY_SIZE:
            raise ValueError("an Ed25519 public key has 32 bytes")
        self.name = name
        self.public_key = public_key
        self.key_id = _key_id(name, self.signature_type, public_key)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def from_verifier_key(cls, vkey: str) -> Self:
        """Parse ``<name>+<hex key ID>+base64(type || 32-byte public key)``; the key ID must match the key."""
        if not isinstance(vkey, str):
            raise NoteError("verifier key must be a string")
        name, key_id_hex, key_b64 = _split_key(vkey, "verifier key")
        key = _b64decode(key_b64)
        if key is None or len(key) != 1 + _ED25519_KEY_SIZE or key[0] != cls.signature_type:
            raise NoteError(f"verifier key for {name} is not base64(0x{cls.signature_type:02x} || 32-byte key)")
        verifier = cls(name, key[1:])
        if verifier.key_id != bytes.fromhex(key_id_hex):
            raise NoteError(f"verifier key for {name} has a key ID that does not match its key")
        return verifier

    def verifier_key(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{_b64encode(bytes([self.signature_type]) + self.public_key)}"

    def _ed25519_ok(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def _check(self, text: str, signature: bytes) -> tuple[bool, int | None]:
        raise NotImplementedError


class NoteVerifier(_Ed25519Verifier):
    """Verifies Ed25519 note signatures (type 0x01)."""

    signature_type = SIG_TYPE_ED25519

    def verify(self, text: str, signature: bytes) -> bool:
        """Whether ``signature`` (the bytes after the 4-byte key ID) is this key's signature over ``text``."""
        if len(signature) != _ED25519_SIG_SIZE or not _encodes(text):
            return False
        return self._ed25519_ok(text.encode("utf-8"), signature)

    def _check(self, text: str, signature: bytes) -> tuple[bool, int | None]:
        return self.verify(text, signature), None


class CosignatureVerifier(_Ed25519Verifier):
    """Verifies tlog-cosignature/v1 Ed25519 cosignatures (type 0x04)."""

    signature_type = SIG_TYPE_COSIGNATURE_V1

    def verify(self, text: str, signature: bytes) -> int | None:
        """The cosigned timestamp if ``signature`` (the bytes after the key ID) verifies over ``text``, else None."""
        if len(signature) != _TIMESTAMP_SIZE + _ED25519_SIG_SIZE or not _encodes(text):
            return None
        timestamp = int.from_bytes(signature[:_TIMESTAMP_SIZE], "big")
        # tlog-cosignature "Format": the timestamp MUST NOT exceed 2^63 - 1.
        if timestamp > MAX_TIMESTAMP:
            return None
        ok = self._ed25519_ok(_cosigned_message(text, timestamp), signature[_TIMESTAMP_SIZE:])
        return timestamp if ok else None

    def _check(self, text: str, signature: bytes) -> tuple[bool, int | None]:
        timestamp = self.verify(text, signature)
        return timestamp is not None, timestamp


def verifier_from_key(vkey: str) -> NoteVerifier | CosignatureVerifier:
    """A verifier of the type that the key's type byte names (0x01 note key, 0x04 cosigner key)."""
    if not isinstance(vkey, str):
        raise NoteError("verifier key must be a string")
    key = _b64decode(_split_key(vkey, "verifier key")[2])
    if key and key[0] == SIG_TYPE_COSIGNATURE_V1:
        return CosignatureVerifier.from_verifier_key(vkey)
    return NoteVerifier.from_verifier_key(vkey)


Verifier = NoteVerifier | CosignatureVerifier
"""Any key that :func:`open_note` can check a signature line against."""


# --- notes -----------------------------------------------------------------------------------------------------


class VerifiedSignature(NamedTuple):
    name: str
    key_id: bytes
    timestamp: int | None  # the cosigned time for a cosignature, None for a plain note signature


@dataclass(frozen=True)
class VerifiedNote:
    """An opened note. ``text`` is trustworthy only because ``verified`` is non-empty, which open_note ensures."""

    text: str
    verified: list[VerifiedSignature]
    unverified: list[str]  # signature lines from keys we do not know, kept (without newline) but not trusted


class _Line(NamedTuple):
    name: str
    key_id: bytes
    signature: bytes
    line: str


def _parse_line(line: str) -> _Line:
    if not line.startswith(_SIG_PREFIX):
        raise NoteError("signature line does not start with an em dash and a space")
    name, space, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not space or not _is_valid_name(name):
        raise NoteError("signature line has an invalid key name")
    data = _b64decode(b64)
    if data is None or len(data) <= _KEY_ID_SIZE:
        raise NoteError(f"signature line of {name} is not base64(key ID || signature)")
    return _Line(name, data[:_KEY_ID_SIZE], data[_KEY_ID_SIZE:], line)


def _split_note(note: str) -> tuple[str, list[_Line]]:
    if not isinstance(note, str):
        raise NoteError("a signed note must be a str")
    _check_chars(note, "signed note")
    # signed-note "Format": the text ends at the last blank line; one or more signature lines follow, each ending
    # in a newline.
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("signed note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise NoteError("signed note has no signature lines, or its last line does not end with a newline")
    raw_lines = block[:-1].split("\n")
    if len(raw_lines) > MAX_SIGNATURES:
        raise NoteError(f"signed note has more than {MAX_SIGNATURES} signatures")
    return text, [_parse_line(line) for line in raw_lines]


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """``text`` + blank line + one signature line per signer."""
    if not signers:
        raise ValueError("sign_note needs at least one signer")
    _check_text(text)
    return text + "\n" + "".join(signer.sign(text) + "\n" for signer in signers)


def add_signatures(note: str, lines: Sequence[str]) -> str:
    """Append signature lines (e.g. cosignatures) to a signed note; lines it already carries are not repeated.

    Nothing is verified here: open the result with :func:`open_note`.
    """
    text, existing = _split_note(note)
    present = [entry.line for entry in existing]
    for line in lines:
        if not isinstance(line, str):
            raise NoteError("a signature line must be a str")
        _check_chars(line, "signature line")
        if "\n" in line:
            raise NoteError("pass signature lines without their newline")
        _parse_line(line)
        if line not in present:
            present.append(line)
    if len(present) > MAX_SIGNATURES:
        raise NoteError(f"a signed note carries at most {MAX_SIGNATURES} signatures")
    return text + "\n" + "".join(line + "\n" for line in present)


def open_note(note: str, verifiers: Sequence[Verifier]) -> VerifiedNote:
    """Verify a signed note against the keys we trust.

    signed-note "Signatures": lines from unknown keys (name and key ID not both matching a known key) are kept but
    ignored; every line from a known key must verify, and at least one must. Raises :class:`NoteError` otherwise.
    A key ID is 32 bits, so keys that share a name and a key ID are easily made: a line matching several known keys
    counts as verified if one of them verifies it (as the spec says verifiers should), never as an error of ours.
    """
    known: dict[tuple[str, bytes], list[Verifier]] = {}
    for verifier in verifiers:
        known.setdefault((verifier.name, verifier.key_id), []).append(verifier)
    text, lines = _split_note(note)
    verified: list[VerifiedSignature] = []
    unverified: list[str] = []
    for entry in lines:
        candidates = known.get((entry.name, entry.key_id))
        if candidates is None:
            if entry.line not in unverified:
                unverified.append(entry.line)
            continue
        if any(v.name == entry.name and v.key_id == entry.key_id for v in verified):
            raise NoteError(f"signed note carries two signatures by {entry.name} ({entry.key_id.hex()})")
        for candidate in candidates:
            ok, timestamp = candidate._check(text, entry.signature)
            if ok:
                break
        else:
            raise NoteError(f"signature by {entry.name} ({entry.key_id.hex()}) does not verify; reject the note")
        verified.append(VerifiedSignature(entry.name, entry.key_id, timestamp))
    if not verified:
        raise NoteError("signed note carries no valid signature from a trusted key")
    return VerifiedNote(text, verified, unverified)


def open_checkpoint(note: str, verifiers: Sequence[Verifier]) -> tuple[Checkpoint, VerifiedNote]:
    """:func:`open_note`, then parse its text as a checkpoint (raises ``NoteError`` or ``CheckpointError``)."""
    opened = open_note(note, verifiers)
    return Checkpoint.from_text(opened.text), opened
