"""Trust roots of an audit: the signed directory under the pinned directory key, and the keys it lists.

The auditor trusts neither the operator nor its database: checkpoint signatures are checked with the audited
authority's signing keys as the signed directory lists them (every listed key, so that checkpoints signed before a
rotation still verify), cosignatures with the other authorities' signing keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from joserfc.jwk import OKPKey

from config.directory import Directory, format_time, load_directory_key, verify_directory_signature
from crypto.keys import key_id
from crypto.note import CosignatureVerifier, NoteVerifier
from protocol.checkpoint import ledger_origin

__all__ = ["Trust", "ledger_origin", "load_trust", "witness_name"]


def witness_name(authority_id: str) -> str:
    return f"comity-witness/{authority_id}"


def _raw(key: OKPKey) -> bytes:
    public = key.public_key
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError("a signing key in the directory is not Ed25519")
    return public.public_bytes_raw()


@dataclass(frozen=True)
class Trust:
    authority_id: str
    note_verifiers: list[NoteVerifier]
    cosignature_verifiers: list[CosignatureVerifier]
    directory_kid: str = ""
    directory_serial: int = 0
    directory_expires_at: str = "9999-12-31T23:59:59.999999Z"

    @property
    def origin(self) -> str:
        return ledger_origin(self.authority_id)

    def expired(self, now: datetime) -> bool:
        return self.directory_expires_at <= format_time(now)


def trust_from_directory(directory: Directory, directory_kid: str, authority_id: str) -> Trust:
    entry = directory.authority(authority_id)
    origin = ledger_origin(authority_id)
    notes = [NoteVerifier(origin, _raw(key)) for key in entry.all_signing_keys().values()]
    cosigners = [
        CosignatureVerifier(witness_name(other.id), _raw(key))
        for other in directory.authorities
        if other.id != authority_id
        for key in other.all_signing_keys().values()
    ]
    return Trust(authority_id, notes, cosigners, directory_kid, directory.serial, directory.expires_at)


def load_trust(directory_file: Path, directory_key_file: Path, authority_id: str) -> Trust:
    """Verify ``directory_file`` under the key pinned in ``directory_key_file`` (signature and schema; not expiry:
    an expired directory still names the keys that signed old checkpoints) and take ``authority_id``'s keys."""
    pinned = load_directory_key(directory_key_file.read_bytes())
    directory = verify_directory_signature(directory_file.read_bytes(), pinned)
    return trust_from_directory(directory, key_id(pinned), authority_id)
