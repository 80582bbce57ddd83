"""The signed directory (DESIGN.md, "Identity and the directory").

The directory lists every authority a gateway may talk to: its id, name, country, roles, endpoint, TLS certificate
and pin, public keys with validity periods, accreditation and languages. It is a JWS in compact serialisation,
signed with ``alg`` ``Ed25519`` (RFC 9864) by the directory key that every gateway pins in its configuration; the
payload is RFC 8785 canonical JSON. It carries a serial and an expiry, and a gateway refuses an expired directory
or one with a lower serial than it has already accepted.

Verification (:func:`verify_directory`) is a checklist, each step labelled below where it happens:

1. the token is a three-part JWS compact serialisation (else ``DirectoryUnsigned``);
2. the protected header is exactly ``{"alg": "Ed25519", "kid": <pinned kid>, "typ": "comity-directory+jws"}``
   (``alg`` ``none``: ``DirectoryUnsigned``; any other difference: ``DirectoryBadSignature``);
3. the signature verifies under the pinned key, algorithm pinned to Ed25519 (``DirectoryBadSignature``);
4. the payload is canonical JSON without duplicate members and matches the schema (``DirectoryInvalid``);
5. ``expires_at`` is later than now (``DirectoryExpired``);
6. ``serial`` is not lower than the highest serial already accepted (``DirectoryRolledBack``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from config.directory_model import (
    DIRECTORY_TYP,
    DIRECTORY_VERSION,
    ROLES,
    Accreditation,
    AuthorityEntry,
    Directory,
    DirectoryKey,
    Role,
    _aware,
    _parse,
    format_time,
    parse_time,
)
from config.errors import (
    ConfigError,
    DirectoryBadSignature,
    DirectoryExpired,
    DirectoryInvalid,
    DirectoryRolledBack,
    DirectoryUnsigned,
)
from config.settings import Settings
from crypto.errors import CryptoError
from crypto.keys import AuthorityKeys, import_public_jwk, key_id, public_jwk
from crypto.tls import cert_der, certificate_pin
from protocol.errors import InvalidMessage
from protocol.messages import canonical_json, parse_strict_json

__all__ = [
    "DIRECTORY_TYP",
    "DIRECTORY_VERSION",
    "ROLES",
    "Accreditation",
    "AuthorityEntry",
    "Directory",
    "DirectoryKey",
    "Role",
    "directory_entry_for",
    "dump_directory_draft",
    "format_time",
    "load_authority_entry",
    "load_directory_draft",
    "load_directory_key",
    "parse_time",
    "read_directory",
    "sign_directory",
    "signed_serial",
    "verify_directory",
    "verify_directory_signature",
]

_ALG: Final = "Ed25519"
_MAX_TOKEN_BYTES: Final = 16 * 1024 * 1024  # a directory of a few hundred authorities is well under 1 MiB


def _registry() -> jws.JWSRegistry:
    """Ed25519 only, and payloads up to the directory's limit (joserfc's default stops at 128,000 bytes, about 85
    authorities: every State party of UNCAC would not fit)."""
    registry = jws.JWSRegistry(algorithms=[_ALG])
    registry.max_payload_length = _MAX_TOKEN_BYTES
    return registry


# --- signing and verification ---------------------------------------------------------------------------------------


def sign_directory(directory: Directory, signing_key: OKPKey) -> str:
    """The directory as a JWS compact serialisation, signed with the directory's Ed25519 private key."""
    if not signing_key.is_private or signing_key.curve_name != "Ed25519":
        raise ConfigError("the directory signing key must be an Ed25519 private key")
    header = {"alg": _ALG, "kid": key_id(signing_key), "typ": DIRECTORY_TYP}
    return jws.serialize_compact(header, directory.to_bytes(), signing_key, registry=_registry())


def _b64url_json(segment: str, what: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise DirectoryInvalid(f"the directory {what} is not base64url") from None
    try:
        return parse_strict_json(raw)
    except InvalidMessage as exc:
        raise DirectoryInvalid(f"the directory {what}: {exc.message}") from None


def verify_directory_signature(token: str | bytes, pinned_key: OKPKey) -> Directory:
    """Steps 1 to 4 of the checklist: a well-formed directory signed by ``pinned_key``, whatever its dates.

    Gateways use :func:`verify_directory`; this is for the directory operator extending an old directory.
    """
    pinned_kid = key_id(pinned_key)
    # 1. a three-part JWS compact serialisation, not plain JSON
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise DirectoryUnsigned("the directory is not a signed JWS; install the signed directory.jws") from None
    token = token.strip()
    if len(token) > _MAX_TOKEN_BYTES:
        raise DirectoryInvalid(f"the directory is larger than {_MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if token.startswith(("{", "[")) or len(parts) != 3 or not all(re.fullmatch(r"[A-Za-z0-9_-]*", p) for p in parts):
        raise DirectoryUnsigned("the directory is not a signed JWS (plain JSON?); install the signed directory.jws")
    # 2. the protected header: exactly alg, kid, typ, with the pinned values; nothing taken from it
    header = _b64url_json(parts[0], "JWS header")
    if not isinstance(header, dict):
        raise DirectoryInvalid("the directory JWS header is not a JSON object")
    alg = header.get("alg")
    if alg == "none" or not parts[2]:
        raise DirectoryUnsigned("the directory is unsigned (alg 'none'); install a directory signed by the operator")
    if alg != _ALG:
        raise DirectoryBadSignature(f"the directory is signed with alg {str(alg)[:20]!r}; only Ed25519 is accepted")
    if header.get("kid") != pinned_kid:
        raise DirectoryBadSignature(
            f"the directory is signed by key {str(header.get('kid'))[:64]!r}, not the pinned directory key "
            f"{pinned_kid}; check directory_key_file"
        )
    if header != {"alg": _ALG, "kid": pinned_kid, "typ": DIRECTORY_TYP}:
        raise DirectoryBadSignature(f"the directory JWS header must hold exactly alg, kid and typ {DIRECTORY_TYP!r}")
    # 3. the signature, algorithm pinned
    try:
        verified = jws.deserialize_compact(token, pinned_key, registry=_registry())
    except JoseError:
        raise DirectoryBadSignature(
            "the directory signature does not verify under the pinned directory key; it was altered or signed by "
            "another key"
        ) from None
    payload = verified.payload
    # 4. canonical JSON without duplicates, then the schema
    try:
        document = parse_strict_json(payload)
    except InvalidMessage as exc:
        raise DirectoryInvalid(f"the directory payload: {exc.message}") from None
    try:
        canonical = canonical_json(document)
    except InvalidMessage as exc:  # parsed, but not encodable (an integer beyond 2**53): signed nonsense all the same
        raise DirectoryInvalid(f"the directory payload: {exc.message}") from None
    if canonical != payload:
        raise DirectoryInvalid("the directory payload is not RFC 8785 canonical JSON")
    return _parse(Directory, document)


def signed_serial(data: bytes) -> int | None:
    """The serial a signed directory (JWS compact) claims, its signature unchecked: what a file about to be replaced
    was published as. ``None`` when ``data`` is no signed directory."""
    parts = data.strip().split(b".")
    if len(parts) != 3 or len(data) > _MAX_TOKEN_BYTES:
        return None
    try:
        payload = _b64url_json(parts[1].decode("ascii"), "payload")
    except (UnicodeDecodeError, DirectoryInvalid):
        return None
    serial = payload.get("serial") if isinstance(payload, dict) else None
    return serial if isinstance(serial, int) and not isinstance(serial, bool) else None


def verify_directory(token: str | bytes, pinned_key: OKPKey, *, now: datetime, min_serial: int = 0) -> Directory:
    """The directory in ``token`` if it is signed by ``pinned_key``, well-formed, unexpired and not rolled back.

    ``min_serial`` is the highest serial this gateway has accepted before. Raises a :class:`DirectoryError`.
    """
    directory = verify_directory_signature(token, pinned_key)
    # 5. expiry
    if directory.expires_at <= format_time(_aware(now)):
        raise DirectoryExpired(
            f"directory serial {directory.serial} expired at {directory.expires_at}; install a newer signed directory"
        )
    # 6. roll-back
    if directory.serial < min_serial:
        raise DirectoryRolledBack(
            f"directory serial {directory.serial} is lower than {min_serial} already seen; "
            "install the current signed directory"
        )
    return directory


def load_directory_key(data: bytes) -> OKPKey:
    """The pinned directory key from its public JWK file (``directory-key.jwk``)."""
    try:
        jwk = parse_strict_json(data)
        if not isinstance(jwk, dict):
            raise ConfigError("the directory key file must hold one public JWK (a JSON object)")
        return import_public_jwk(jwk, use="sig")
    except (InvalidMessage, CryptoError) as exc:
        raise ConfigError(f"the directory key file is not an Ed25519 public JWK: {exc.message}") from None


def read_directory(settings: Settings, *, now: datetime, min_serial: int = 0) -> Directory:
    """Read and verify ``directory_file`` under the key pinned in ``directory_key_file``."""
    try:
        pinned = load_directory_key(settings.directory_key_path.read_bytes())
        token = settings.directory_path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {exc.filename}: {exc.strerror}; install directory.jws and the pinned directory-key.jwk"
        ) from None
    return verify_directory(token, pinned, now=now, min_serial=min_serial)


# --- the unsigned editing form and entries ---------------------------------------------------------------------------


def load_directory_draft(data: bytes) -> Directory:
    """A draft directory (plain JSON, as the operator edits it before signing)."""
    try:
        document = parse_strict_json(data)
    except InvalidMessage as exc:
        raise DirectoryInvalid(f"the draft: {exc.message}") from None
    return _parse(Directory, document)


def dump_directory_draft(directory: Directory) -> bytes:
    """The draft as indented JSON for people to read; signing canonicalises it."""
    return json.dumps(directory.to_json(), indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


def load_authority_entry(data: bytes) -> AuthorityEntry:
    """An authority's ``entry.json`` (as ``comity init`` writes it), validated."""
    try:
        document = parse_strict_json(data)
    except InvalidMessage as exc:
        raise DirectoryInvalid(f"the entry: {exc.message}") from None
    return _parse(AuthorityEntry, document)


def directory_entry_for(
    *,
    authority_id: str,
    name: str,
    country: str,
    endpoint: str,
    keys: AuthorityKeys,
    tls_cert_pem: bytes,
    roles: Iterable[str] = ("mla-central-authority",),
    languages: Sequence[str] = ("en",),
    max_level: str = "STRICTLY CONFIDENTIAL",
    caveats: Iterable[str] = (),
    not_before: datetime,
    notes: str = "",
) -> AuthorityEntry:
    """The public entry of an authority: its signing and encryption keys (never the archive key) and TLS pin."""
    der = cert_der(tls_cert_pem)
    entry: Mapping[str, Any] = {
        "id": authority_id,
        "name": name,
        "country": country,
        "roles": sorted(set(roles)),
        "endpoint": endpoint,
        "tls_cert": base64.b64encode(der).decode("ascii"),
        "tls_pin": certificate_pin(der),
        "keys": [
            {"use": use, "jwk": public_jwk(key), "not_before": format_time(not_before), "not_after": None}
            for use, key in (("sig", keys.signing), ("enc", keys.encryption))
        ],
        "accreditation": {"max_level": max_level, "caveats": sorted(set(caveats))},
        "languages": list(languages),
        "notes": notes,
    }
    return _parse(AuthorityEntry, entry)
