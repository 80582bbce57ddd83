"""The directory's data model: authorities, their keys, accreditation and languages, and the directory that lists
them, validated on construction; and the directory's time format. Signing and verification are in
:mod:`config.directory`, which re-exports everything here."""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any, Final, Literal, Self, TypeVar, get_args
from urllib.parse import urlsplit

from cryptography import x509
from joserfc.jwk import OKPKey
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from config.errors import (
    DirectoryExpired,
    DirectoryInvalid,
    UnknownAuthority,
)
from config.settings import is_loopback_host
from crypto.errors import CryptoError, UnknownKey
from crypto.keys import import_public_jwk, key_id
from crypto.tls import certificate_pin
from protocol.checklist_rules import RecipientRequirements
from protocol.errors import InvalidMessage
from protocol.markings import MarkingScheme, caveat_name
from protocol.messages import StrictModel, canonical_json, validate_authority_id
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
    "format_time",
    "parse_time",
]

DIRECTORY_VERSION: Final = 1
DIRECTORY_TYP: Final = "comity-directory+jws"

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
_BREAKING: Final = frozenset({"Cc", "Zl", "Zp"})  # control characters (newline, ESC, ...) and Unicode line breaks
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


_parsed = lru_cache(maxsize=4096)(parse_time)  # a directory's few key times, asked for per envelope


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
        """Whether ``when`` is in ``[not_before, not_after)``, compared as times (every incoming envelope asks)."""
        when = _aware(when)
        return _parsed(self.not_before) <= when and (self.not_after is None or when < _parsed(self.not_after))

    def valid_during(self, start: datetime, end: datetime) -> bool:
        """Whether the key is valid at some time in ``[start, end]``."""
        start, end = _aware(start), _aware(end)
        return _parsed(self.not_before) <= end and (self.not_after is None or start < _parsed(self.not_after))


class Accreditation(StrictModel):
    """The highest marking level the authority may receive and the caveats it undertakes to honour."""

    max_level: str = Field(min_length=1, max_length=64)
    caveats: list[str] = Field(default_factory=list)

    # Both are checked against the marking scheme: a level it does not know would make every accreditation check
    # for the authority raise (it could neither send nor receive), a caveat it does not know is one no marking holds.
    @field_validator("max_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        scheme = MarkingScheme()
        if value not in scheme.levels:
            raise ValueError(f"unknown marking level {value[:64]!r}; known levels: {', '.join(scheme.levels)}")
        return value

    @field_validator("caveats")
    @classmethod
    def _sorted_unique(cls, value: list[str]) -> list[str]:
        if value != sorted(set(value)):
            raise ValueError("caveats must be sorted and unique")
        scheme = MarkingScheme()
        for caveat in value:
            if not _CAVEAT_RE.fullmatch(caveat):
                raise ValueError("caveat must be a short lowercase identifier, optionally ':parameter'")
            if caveat_name(caveat) not in scheme.caveats:
                raise ValueError(f"unknown caveat {caveat!r}; known caveats: {', '.join(scheme.caveats)}")
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
    # a TLS rollover (`comity keys rotate-tls`): the certificate that will replace tls_cert. Peers accept either
    # until the entry is published with it as tls_cert; both members or neither, never null (left out, the entry's
    # bytes and so the signed directory are as they were before rollovers existed)
    tls_next_cert: str | None = Field(default=None, min_length=1, max_length=65536)
    tls_next_pin: str | None = None
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

    @field_validator("name", "notes")
    @classmethod
    def _one_text(cls, value: str) -> str:
        # the directory commands print these as they are: a newline or an escape sequence would fake an operator's
        # listing (a line for another authority, a cleared screen); other scripts' spaces and joiners stay allowed
        if any(unicodedata.category(char) in _BREAKING for char in value):
            raise ValueError("must not contain control characters or line breaks")
        return value

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
        # checked on the string itself, before urlsplit, which lowercases the scheme and drops leading whitespace and
        # tabs and newlines anywhere: the sender decides TLS on these same characters (gateway/outbox.py _session),
        # so "HTTPS://..." or " https://..." would pass here and then be called without a certificate check
        if not value.startswith(("https://", "http://")):
            raise ValueError(
                "endpoint must be a URL starting with 'https://' in lowercase, like https://gw.example.org"
            )
        if any(char.isspace() or not char.isprintable() for char in value):
            raise ValueError("endpoint must not contain whitespace or control characters")
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

    @field_validator("tls_next_cert", "tls_next_pin", mode="before")
    @classmethod
    def _left_out_not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must be left out, not null")
        return value

    @field_validator("tls_pin", "tls_next_pin")
    @classmethod
    def _pin(cls, value: str, info: ValidationInfo) -> str:
        if not _PIN_RE.fullmatch(value):
            raise ValueError(f"{info.field_name} must be 'sha256:' and 64 lowercase hex digits")
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
        _check_certificate(self.tls_cert, self.tls_pin, "tls_cert", "tls_pin")
        if (self.tls_next_cert is None) != (self.tls_next_pin is None):
            raise ValueError("tls_next_cert and tls_next_pin go together")
        if self.tls_next_cert is not None and self.tls_next_pin is not None:
            _check_certificate(self.tls_next_cert, self.tls_next_pin, "tls_next_cert", "tls_next_pin")
            if self.tls_next_pin == self.tls_pin:
                raise ValueError("tls_next_cert must be another certificate than tls_cert")
        kids = [key.kid for key in self.keys]
        if len(set(kids)) != len(kids):
            raise ValueError("keys must not list the same kid twice")
        uses = {key.use for key in self.keys}
        if uses != {"sig", "enc"}:
            raise ValueError("keys must include at least one signing ('sig') and one encryption ('enc') key")
        return self

    @property
    def tls_certs(self) -> tuple[str, ...]:
        """The certificates (standard base64 DER) a peer accepts from this authority's gateway: the current one,
        and during a rollover the next one."""
        return (self.tls_cert,) if self.tls_next_cert is None else (self.tls_cert, self.tls_next_cert)

    @property
    def tls_pins(self) -> tuple[str, ...]:
        """The pins of :attr:`tls_certs`, in the same order."""
        return (self.tls_pin,) if self.tls_next_pin is None else (self.tls_pin, self.tls_next_pin)

    @cached_property
    def tls_not_after(self) -> datetime:
        """Until when a peer can reach this gateway: the latest end of validity of :attr:`tls_certs`."""
        return max(
            x509.load_der_x509_certificate(base64.b64decode(cert)).not_valid_after_utc for cert in self.tls_certs
        )

    def signing_keys_at(self, when: datetime) -> dict[str, OKPKey]:
        """Every signing key valid at ``when``, by kid (during a rotation both the old and the new key)."""
        return {key.kid: key.key for key in self.keys if key.use == "sig" and key.valid_at(when)}

    def request_requirements(self) -> RecipientRequirements:
        """What the request checklist needs to know of this authority as a recipient (languages, notes, roles)."""
        return RecipientRequirements(languages=tuple(self.languages), notes=self.notes, roles=tuple(self.roles))

    def signing_keys_during(self, start: datetime, end: datetime) -> dict[str, OKPKey]:
        """Every signing key valid at some time in ``[start, end]``, by kid."""
        return {key.kid: key.key for key in self.keys if key.use == "sig" and key.valid_during(start, end)}

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
        data = self.model_dump(mode="json")
        for name in ("tls_next_cert", "tls_next_pin"):  # left out when absent, never null
            if data[name] is None:
                del data[name]
        return data

    def to_file(self) -> bytes:
        """The entry as ``entry.json`` holds it: indented JSON for people to read."""
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False).encode("utf-8") + b"\n"


def _check_certificate(cert: str, pin: str, cert_name: str, pin_name: str) -> None:
    try:
        der = base64.b64decode(cert, validate=True)
        x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
        raise ValueError(f"{cert_name} must be a DER X.509 certificate in standard base64") from None
    if certificate_pin(der) != pin:
        raise ValueError(f"{pin_name} does not match {cert_name}; recompute it from the certificate")


class Directory(StrictModel):
    """The directory payload."""

    v: int
    serial: int = Field(ge=1, le=2**53 - 1)  # RFC 8785 encodes integers only up to 2**53 - 1
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
        pins = [pin for entry in self.authorities for pin in entry.tls_pins]
        if len(set(pins)) != len(pins):
            raise ValueError("two authorities share a TLS certificate; each gateway needs its own")
        # a key listed under two authorities would have senders to one seal to the other's key, and signatures by
        # one verify as the other's
        owners: dict[str, str] = {}
        for entry in self.authorities:
            for key in entry.keys:
                owner = owners.setdefault(key.kid, entry.id)
                if owner != entry.id:
                    raise ValueError(
                        f"{owner} and {entry.id} list the same key {key.kid}; each authority needs its own"
                    )
        return self

    @cached_property
    def _by_id(self) -> dict[str, AuthorityEntry]:
        return {entry.id: entry for entry in self.authorities}

    @cached_property
    def _by_pin(self) -> dict[str, AuthorityEntry]:
        return {pin: entry for entry in self.authorities for pin in entry.tls_pins}

    def get(self, authority_id: str) -> AuthorityEntry | None:
        """The entry of ``authority_id``, or None if the directory does not list it."""
        return self._by_id.get(authority_id)

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
        data = self.model_dump(mode="json", exclude={"authorities"})
        data["authorities"] = [entry.to_json() for entry in self.authorities]
        return data

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
