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
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Final, Literal, Self, TypeVar, get_args
from urllib.parse import urlsplit

from cryptography import x509
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from pydantic import Field, ValidationError, field_validator, model_validator

from config.errors import (
    ConfigError,
    DirectoryBadSignature,
    DirectoryExpired,
    DirectoryInvalid,
    DirectoryRolledBack,
    DirectoryUnsigned,
    UnknownAuthority,
)
from config.settings import Settings, is_loopback_host
from crypto.errors import CryptoError, UnknownKey
from crypto.keys import AuthorityKeys, import_public_jwk, key_id, public_jwk
from crypto.tls import cert_der, certificate_pin
from protocol.errors import InvalidMessage
from protocol.messages import StrictModel, canonical_json, parse_strict_json, validate_authority_id
from protocol.receipts import rfc3339_utc

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
    "verify_directory",
    "verify_directory_signature",
]

DIRECTORY_VERSION: Final = 1
DIRECTORY_TYP: Final = "comity-directory+jws"
_ALG: Final = "Ed25519"
_MAX_TOKEN_BYTES: Final = 16 * 1024 * 1024  # a directory of a few hundred authorities is well under 1 MiB

Role = Literal[
    "mla-central-authority",
    "extradition-central-authority",
    "asset-recovery-focal-point",
    "prevention-authority",
    "civil-administrative-focal-point",
]
ROLES: Final[tuple[str, ...]] = get_args(Role)

_COUNTRY_RE: Final = re.compile(r"^[A-Z]{2}$")
_PIN_RE: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
# BCP 47 (RFC 5646), the common shapes: language, optional script, region and variants ("es", "pt-BR", "zh-Hant").
_LANGUAGE_RE: Final = re.compile(
    r"^[a-z]{2,3}(-[A-Z][a-z]{3})?(-([A-Z]{2}|[0-9]{3}))?(-([a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*$"
)
_M = TypeVar("_M", bound=StrictModel)
_CAVEAT_RE: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{0,47}(:[0-9A-Za-z.-]{1,32})?$")  # as protocol.messages.Marking


# --- times --------------------------------------------------------------------------------------------------------


def format_time(when: datetime) -> str:
    """``when`` (timezone-aware) as the directory writes times: ``2026-11-28T07:40:00.123456Z``."""
    if when.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> datetime:
    """The aware UTC datetime of a directory time string."""
    return datetime.strptime(rfc3339_utc(value), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return when


# --- model ----------------------------------------------------------------------------------------------------------


class DirectoryKey(StrictModel):
    """A published public key with its validity period ``[not_before, not_after)``; rotation periods overlap."""

    use: Literal["sig", "enc"]
    jwk: dict[str, str]
    not_before: str
    not_after: str | None = None

    @field_validator("not_before", "not_after")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        return None if value is None else rfc3339_utc(value)

    @model_validator(mode="after")
    def _key(self) -> Self:
        if "d" in self.jwk:
            raise ValueError("JWK carries a private key member ('d'); publish only the public key")
        if "kid" not in self.jwk:
            raise ValueError("JWK must carry its kid (the RFC 7638 thumbprint)")
        try:
            key = import_public_jwk(self.jwk, use=self.use)
        except CryptoError as exc:
            raise ValueError(exc.message) from None
        if key_id(key) != self.jwk["kid"]:  # import_public_jwk checks it too; a directory must never get it wrong
            raise ValueError("JWK kid is not its RFC 7638 thumbprint")
        if self.not_after is not None and self.not_after <= self.not_before:  # same-shape strings compare as times
            raise ValueError("not_after must be later than not_before")
        return self

    @property
    def kid(self) -> str:
        return self.jwk["kid"]

    @cached_property
    def key(self) -> OKPKey:
        """The imported public key (``kid``, ``use`` and ``alg`` set as the profile fixes them)."""
        return import_public_jwk(self.jwk, use=self.use)

    def valid_at(self, when: datetime) -> bool:
        stamp = format_time(_aware(when))
        return self.not_before <= stamp and (self.not_after is None or stamp < self.not_after)


class Accreditation(StrictModel):
    """The highest marking level the authority may receive and the caveats it undertakes to honour."""

    max_level: str = Field(min_length=1, max_length=64)
    caveats: list[str] = Field(default_factory=list)

    @field_validator("caveats")
    @classmethod
    def _sorted_unique(cls, value: list[str]) -> list[str]:
        if value != sorted(set(value)):
            raise ValueError("caveats must be sorted and unique")
        for caveat in value:
            if not _CAVEAT_RE.fullmatch(caveat):
                raise ValueError("caveat must be a short lowercase identifier, optionally ':parameter'")
        return value


class AuthorityEntry(StrictModel):
    """One authority as the directory publishes it. Only public material: never the archive key, never a ``d``."""

    id: str
    name: str = Field(min_length=1, max_length=200)
    country: str
    roles: list[Role] = Field(min_length=1)
    endpoint: str = Field(max_length=2048)
    tls_cert: str = Field(min_length=1, max_length=65536)
    tls_pin: str
    keys: list[DirectoryKey] = Field(min_length=2, max_length=64)
    accreditation: Accreditation
    languages: list[str] = Field(min_length=1, max_length=32)
    notes: str = Field(default="", max_length=2000)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        try:
            return validate_authority_id(value)
        except InvalidMessage as exc:
            raise ValueError(exc.message) from None

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        if not _COUNTRY_RE.fullmatch(value):
            raise ValueError("country must be an ISO 3166-1 alpha-2 code in upper case, e.g. 'AR'")
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str]) -> list[str]:
        if value != sorted(set(value)):
            raise ValueError("roles must be sorted and unique")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            raise ValueError("endpoint must be a URL like https://gateway.example.org:8443") from None
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("endpoint must be a URL like https://gateway.example.org:8443, without query")
        if parts.username is not None or parts.password is not None:
            raise ValueError("endpoint must not carry credentials")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError("endpoint must use https (plain http only on a loopback host, for development)")
        return value

    @field_validator("tls_pin")
    @classmethod
    def _pin(cls, value: str) -> str:
        if not _PIN_RE.fullmatch(value):
            raise ValueError("tls_pin must be 'sha256:' and 64 lowercase hex digits")
        return value

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("languages must be unique")
        for tag in value:
            if not _LANGUAGE_RE.fullmatch(tag):
                raise ValueError("languages must be BCP 47 tags such as 'es', 'en' or 'pt-BR'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.country != self.id[:2].upper():
            raise ValueError(f"country must be {self.id[:2].upper()!r}, the prefix of the authority id")
        try:
            der = base64.b64decode(self.tls_cert, validate=True)
            x509.load_der_x509_certificate(der)
        except (binascii.Error, ValueError):
            raise ValueError("tls_cert must be a DER X.509 certificate in standard base64") from None
        if certificate_pin(der) != self.tls_pin:
            raise ValueError("tls_pin does not match tls_cert; recompute it from the certificate")
        kids = [key.kid for key in self.keys]
        if len(set(kids)) != len(kids):
            raise ValueError("keys must not list the same kid twice")
        uses = {key.use for key in self.keys}
        if uses != {"sig", "enc"}:
            raise ValueError("keys must include at least one signing ('sig') and one encryption ('enc') key")
        return self

    def signing_keys_at(self, when: datetime) -> dict[str, OKPKey]:
        """Every signing key valid at ``when``, by kid (during a rotation both the old and the new key)."""
        return {key.kid: key.key for key in self.keys if key.use == "sig" and key.valid_at(when)}

    def all_signing_keys(self) -> dict[str, OKPKey]:
        """Every signing key listed, valid now or not (for checking old signatures, e.g. archived receipts)."""
        return {key.kid: key.key for key in self.keys if key.use == "sig"}

    def encryption_key_at(self, when: datetime) -> OKPKey:
        """The encryption key to seal to at ``when``: the valid one with the latest ``not_before``."""
        valid = [key for key in self.keys if key.use == "enc" and key.valid_at(when)]
        if not valid:
            raise UnknownKey(
                f"the directory lists no encryption key of {self.id} valid at {format_time(when)}; "
                "install a newer signed directory"
            )
        return max(valid, key=lambda key: key.not_before).key

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Directory(StrictModel):
    """The directory payload."""

    v: int
    serial: int = Field(ge=1)
    issued_at: str
    expires_at: str
    authorities: list[AuthorityEntry] = Field(default_factory=list, max_length=10000)

    @field_validator("v")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != DIRECTORY_VERSION:
            raise ValueError(f"unsupported directory version, expected {DIRECTORY_VERSION}")
        return value

    @field_validator("issued_at", "expires_at")
    @classmethod
    def _time(cls, value: str) -> str:
        return rfc3339_utc(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be later than issued_at")
        ids = [entry.id for entry in self.authorities]
        if ids != sorted(set(ids)):
            raise ValueError("authorities must be sorted by id, each id once")
        pins = [entry.tls_pin for entry in self.authorities]
        if len(set(pins)) != len(pins):
            raise ValueError("two authorities share a TLS certificate; each gateway needs its own")
        return self

    @cached_property
    def _by_id(self) -> dict[str, AuthorityEntry]:
        return {entry.id: entry for entry in self.authorities}

    @cached_property
    def _by_pin(self) -> dict[str, AuthorityEntry]:
        return {entry.tls_pin: entry for entry in self.authorities}

    def authority(self, authority_id: str) -> AuthorityEntry:
        """The entry of ``authority_id``; ``UnknownAuthority`` if the directory does not list it."""
        entry = self._by_id.get(authority_id)
        if entry is None:
            raise UnknownAuthority(
                f"the directory (serial {self.serial}) lists no authority {authority_id!r}; "
                "check the id or install a newer signed directory"
            )
        return entry

    def by_tls_pin(self, pin: str) -> AuthorityEntry | None:
        """The authority whose gateway presents the TLS certificate with ``pin``, if any."""
        return self._by_pin.get(pin)

    def with_entry(self, entry: AuthorityEntry, *, replace: bool = False) -> Directory:
        """A copy with ``entry`` added (or replacing the entry of the same id when ``replace``)."""
        if entry.id in self._by_id and not replace:
            raise DirectoryInvalid(f"{entry.id} is already in the directory; use --replace to update its entry")
        entries = sorted([*(e for e in self.authorities if e.id != entry.id), entry], key=_id)
        return _parse(Directory, {**self.to_json(), "authorities": [e.to_json() for e in entries]})

    def reissued(self, when: datetime) -> Directory:
        """A copy issued at ``when`` (the moment of signing); refused if it would already have expired."""
        stamp = format_time(_aware(when))
        if self.expires_at <= stamp:
            raise DirectoryExpired(
                f"the draft expires at {self.expires_at}, before it would be issued; "
                "make a new draft with a later expiry ('comity directory new')"
            )
        return _parse(Directory, {**self.to_json(), "issued_at": stamp})

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


def _id(entry: AuthorityEntry) -> str:
    return entry.id


def _parse(model: type[_M], data: Any) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        location = ".".join(str(part) for part in first["loc"])
        where = f"{location}: " if location else ""
        message = str(first["msg"]).removeprefix("Value error, ")
        raise DirectoryInvalid(f"{model.__name__}: {where}{message}") from None


# --- signing and verification ---------------------------------------------------------------------------------------


def sign_directory(directory: Directory, signing_key: OKPKey) -> str:
    """The directory as a JWS compact serialisation, signed with the directory's Ed25519 private key."""
    if not signing_key.is_private or signing_key.curve_name != "Ed25519":
        raise ConfigError("the directory signing key must be an Ed25519 private key")
    header = {"alg": _ALG, "kid": key_id(signing_key), "typ": DIRECTORY_TYP}
    return jws.serialize_compact(header, directory.to_bytes(), signing_key, algorithms=[_ALG])


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
        verified = jws.deserialize_compact(token, pinned_key, algorithms=[_ALG])
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
    if canonical_json(document) != payload:
        raise DirectoryInvalid("the directory payload is not RFC 8785 canonical JSON")
    return _parse(Directory, document)


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
