"""Message payloads that travel inside the signed inner layer of an envelope.

The signed payload names its own routing (``id``, ``from``, ``to``, ``kind``, ``iat``, ``in_reply_to``), its
marking and its attachment manifest, so that a signed document cannot be forwarded to a third party as if it were
addressed to it (DESIGN.md, "Envelopes"). Payload bytes are RFC 8785 canonical JSON; a payload whose bytes are not
canonical is refused, so two implementations always sign and hash the same bytes.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from typing import Any, Literal, Self, get_args, get_origin

import orjson
import rfc8785
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol.errors import InvalidMessage, StaleMessage

__all__ = [
    "AUTHORITY_ID_RE",
    "MAX_ATTACHMENTS",
    "PROTOCOL_VERSION",
    "AttachmentRef",
    "StrictModel",
    "Marking",
    "MessageKind",
    "MessagePayload",
    "canonical_json",
    "check_manifest",
    "check_freshness",
    "is_message_id",
    "new_message_id",
    "parse_strict_json",
    "validate_authority_id",
    "validate_message_id",
]

PROTOCOL_VERSION = 1
AUTHORITY_ID_RE = re.compile(r"^[a-z]{2}\.[a-z0-9][a-z0-9-]{0,30}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# 32 bytes in canonical unpadded base64url: 43 characters, the last one carrying 2 bits of padding that must be zero
_KEY32_B64URL = re.compile(r"^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$")
# attachments per message, on receipt and at submission: each costs the receiver a file and a sync, and a 4 MiB
# manifest could otherwise list thousands of empty parts
MAX_ATTACHMENTS = 256
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class MessageKind(enum.StrEnum):
    REQUEST = "request"
    RESPONSE = "response"
    ACKNOWLEDGEMENT = "acknowledgement"
    STATUS_QUERY = "status_query"
    STATUS_REPORT = "status_report"
    CONSULTATION = "consultation"
    WITHDRAWAL = "withdrawal"
    CONSENT = "consent"  # the originator consents to onward use of a message's content (art. 46(19))


def validate_authority_id(value: str) -> str:
    """Return ``value`` if it is an authority id (``ar.mj``: ISO 3166-1 alpha-2, dot, short name)."""
    if not isinstance(value, str) or not AUTHORITY_ID_RE.fullmatch(value):
        raise InvalidMessage("authority id must look like 'ar.mj' (country code, dot, short lowercase name)")
    return value


def validate_message_id(value: str) -> str:
    """Return ``value`` if it is a lowercase canonical random (version 4) UUID."""
    if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
        raise InvalidMessage("message id must be a lowercase version-4 UUID")
    return value


def is_message_id(value: object) -> bool:
    """Whether ``value`` is a message id (:func:`validate_message_id`), for what may name nothing at all."""
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def new_message_id() -> str:
    return str(uuid.uuid4())


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical bytes of a JSON value; values JCS cannot encode are an InvalidMessage."""
    if _orjson_is_canonical(value):
        # ASCII member names (so UTF-16 and byte order agree), strings, booleans, null and integers below 2**53, no
        # floats: RFC 8785 and orjson's sorted compact output are the same bytes, many times faster (every envelope,
        # receipt and ledger entry goes through here); tests/protocol/test_canonical.py checks they agree
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # a lone surrogate: the canonical encoder refuses it with a typed error below
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, ValueError, TypeError, OverflowError) as exc:
        # never echo the value: it may be content (integers beyond 2**53, lone surrogates, ...)
        raise InvalidMessage(f"value cannot be encoded as RFC 8785 canonical JSON ({type(exc).__name__})") from None


_MAX_SAFE_INTEGER = 2**53  # RFC 8785 section 3.2.2.3: integers beyond are not exactly representable


def _orjson_is_canonical(value: Any) -> bool:
    """Whether orjson's sorted output of ``value`` is its RFC 8785 form (see :func:`canonical_json`)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -_MAX_SAFE_INTEGER < item < _MAX_SAFE_INTEGER:
                continue
            return False
        if kind is dict:
            for key, member in item.items():
                if type(key) is not str or not key.isascii():
                    return False
                stack.append(member)
            continue
        if kind is list:
            stack.extend(item)
            continue
        return False  # floats, tuples and anything else: the canonical encoder decides
    return True


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidMessage(f"duplicate member {_shown_name(key)} in JSON object")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise InvalidMessage(f"JSON constant {name} is not allowed")


def parse_strict_json(data: bytes) -> Any:
    """Parse JSON, refusing duplicate object members, NaN/Infinity and invalid UTF-8."""
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except InvalidMessage:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidMessage(f"not valid JSON ({type(exc).__name__})") from None


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    @classmethod
    def parse(cls, data: Any) -> Self:
        """Validate a parsed JSON value; errors name fields, never echo values."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(_shown_location(first["loc"])) or "payload"
            message = first["msg"]
            if first["type"] == "union_tag_invalid":  # pydantic's text quotes the tag it was given: content, maybe
                message = f"{first['ctx']['discriminator']} must be one of {first['ctx']['expected_tags']}"
            raise InvalidMessage(f"{cls.__name__}: {where}: {message}") from None


def _shown_location(loc: tuple[int | str, ...]) -> list[str]:
    """A validation error's location, each part a list position or a name of our own schemas (see
    :func:`_shown_name`)."""
    return [_shown_name(part, quote=False) if isinstance(part, str) else str(part) for part in loc]


# the JOSE header members of the profile (crypto/jose_profile.py), which no model of ours declares
_JOSE_MEMBERS = frozenset({"alg", "enc", "kid", "typ", "cty", "epk", "crv", "kty", "x"})


def _shown_name(name: str, *, quote: bool = True) -> str:
    """``name`` if it is a member name of our schemas (a model's field or alias, a JOSE header member), else a
    placeholder: an unknown or repeated member's name, inside ``content`` say, may itself be content, and a refusal's
    reason goes into problems, ledgers and the sender's stored refusal (docs/protocol.md section 10)."""
    names = set(_JOSE_MEMBERS)
    models: list[type[BaseModel]] = [StrictModel]
    while models:  # errors are rare: walked each time, so models defined after this module count too
        model = models.pop()
        models.extend(model.__subclasses__())
        for field_name, field in model.model_fields.items():
            names.add(field_name)
            if field.alias:
                names.add(field.alias)
            if get_origin(field.annotation) is Literal:  # a tagged union's tags name its members in a location
                names.update(arg for arg in get_args(field.annotation) if isinstance(arg, str))
    if name not in names:
        return "(a member)" if quote else "(member)"
    return repr(name) if quote else name


class Marking(StrictModel):
    """A confidentiality marking: a level of the deployment's ordered scheme plus caveats.

    Caveats are short identifiers; a parameter follows a colon (``embargo:2027-03-01``). They are kept sorted and
    unique so that the same marking always has the same bytes.
    """

    level: str = Field(min_length=1, max_length=64)
    caveats: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("caveats")
    @classmethod
    def _sorted_unique(cls, value: list[str]) -> list[str]:
        if value != sorted(set(value)):
            raise ValueError("caveats must be sorted and unique")
        for caveat in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{0,47}(:[0-9A-Za-z.-]{1,32})?", caveat):
                raise ValueError("caveat must be a short lowercase identifier, optionally ':parameter'")
        return value

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "caveats": list(self.caveats)}


class AttachmentRef(StrictModel):
    """One entry of the signed attachment manifest (see crypto/attachments.py for the framing)."""

    name: str = Field(min_length=1, max_length=255)
    media_type: str = Field(min_length=1, max_length=127)
    size: int = Field(ge=0)
    sha256: str
    ct_size: int = Field(ge=0)
    ct_sha256: str
    key: str = Field(min_length=43, max_length=43, repr=False)  # base64url, no padding, of the 32-byte secretstream key

    @field_validator("sha256", "ct_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _HEX64.fullmatch(value):
            raise ValueError("must be 64 lowercase hex digits")
        return value


def check_manifest(payload: MessagePayload) -> None:
    """On receipt (check 15, crypto/envelope.py ``open_envelope``): at most MAX_ATTACHMENTS entries (each part costs
    the receiver a file and a sync), and each key 32 bytes in canonical unpadded base64url, so that a key that can
    never decrypt is refused rather than receipted. Not part of the model: a stored payload is parsed again whenever
    it is opened, and one receipted before this check must still open (its attachment alone fails then)."""
    if len(payload.attachments) > MAX_ATTACHMENTS:
        raise InvalidMessage(f"MessagePayload: attachments: at most {MAX_ATTACHMENTS} per message")
    for position, ref in enumerate(payload.attachments):
        if not _KEY32_B64URL.fullmatch(ref.key):
            raise InvalidMessage(f"MessagePayload: attachments.{position}.key: must be 32 bytes in unpadded base64url")


class MessagePayload(StrictModel):
    """The signed payload of an envelope (the JWS payload of the inner layer)."""

    v: int = PROTOCOL_VERSION
    id: str
    from_: str = Field(alias="from")
    to: str
    kind: MessageKind
    iat: int = Field(ge=0)
    in_reply_to: str | None = None
    marking: Marking
    attachments: list[AttachmentRef] = Field(default_factory=list)
    content: dict[str, Any] = Field(default_factory=dict)

    @field_validator("v")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != PROTOCOL_VERSION:
            raise ValueError(f"unsupported protocol version, expected {PROTOCOL_VERSION}")
        return value

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return validate_message_id(value)

    @field_validator("in_reply_to")
    @classmethod
    def _reply(cls, value: str | None) -> str | None:
        return None if value is None else validate_message_id(value)

    @field_validator("from_", "to")
    @classmethod
    def _authority(cls, value: str) -> str:
        return validate_authority_id(value)

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: Any) -> Any:
        # strict mode would refuse the plain string a JSON document carries
        return MessageKind(value) if isinstance(value, str) and value in MessageKind._value2member_map_ else value

    def to_json(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "id": self.id,
            "from": self.from_,
            "to": self.to,
            "kind": self.kind.value,
            "iat": self.iat,
            "in_reply_to": self.in_reply_to,
            "marking": self.marking.to_json(),
            "attachments": [a.model_dump() for a in self.attachments],
            "content": self.content,
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> MessagePayload:
        """Parse signed payload bytes, refusing duplicates and non-canonical encodings."""
        payload = cls.parse(parse_strict_json(data))
        if payload.to_bytes() != data:
            raise InvalidMessage("payload is not RFC 8785 canonical JSON")
        return payload


def check_freshness(iat: int, now: int, max_skew_seconds: int, max_age_seconds: int) -> None:
    """Refuse a message dated more than ``max_skew_seconds`` in our future, or older than ``max_age_seconds``.

    The signed ``iat`` is fixed when the message is sealed and an outbox resends the same bytes until a receipt
    arrives, so a message may legitimately arrive long after it was issued (the receiver was down). Replays are
    caught by the message id, which a gateway keeps forever; the age bound only limits how long ago a captured
    envelope may have been issued, and the future bound catches a sender's clock running ahead.
    """
    if iat - now > max_skew_seconds:
        raise StaleMessage(f"message time is {iat - now} s ahead of ours; allowed clock skew is {max_skew_seconds} s")
    if now - iat > max_age_seconds:
        raise StaleMessage(f"message was issued {now - iat} s ago; this gateway accepts at most {max_age_seconds} s")
