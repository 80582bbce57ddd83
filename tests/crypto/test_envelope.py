"""Envelope seal/open: round trips, the archive copy, and the exact shape of both layers.

The helpers at the top (``Authority``, ``make_payload``, ``open_as``, ``b64json``) are shared by the other envelope
test modules.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from joserfc.jwk import OKPKey

from crypto.envelope import (
    DEFAULT_MAX_ENVELOPE_BYTES,
    OpenedEnvelope,
    ReadEnvelope,
    RoutingHeader,
    encrypt_signed,
    open_envelope,
    read_envelope,
    read_routing_header,
    seal_envelope,
    sign_payload,
)
from crypto.errors import OversizedEnvelope, WrongRecipient
from crypto.jose_profile import EPK_MEMBERS, JWE_MEMBERS, MAX_JWE_HEADER_SEGMENT
from protocol.errors import InvalidMessage
from protocol.messages import Marking, MessageKind, MessagePayload, new_message_id


@dataclass
class Authority:
    """One authority's keys, as its own gateway holds them (private) and the directory lists them (public)."""

    id: str
    signing: OKPKey = field(default_factory=lambda: OKPKey.generate_key("Ed25519"))
    encryption: OKPKey = field(default_factory=lambda: OKPKey.generate_key("X25519"))
    archive: OKPKey = field(default_factory=lambda: OKPKey.generate_key("X25519"))

    @property
    def signing_public(self) -> OKPKey:
        return OKPKey.import_key(self.signing.as_dict(private=False))

    @property
    def encryption_public(self) -> OKPKey:
        return OKPKey.import_key(self.encryption.as_dict(private=False))

    @property
    def archive_public(self) -> OKPKey:
        return OKPKey.import_key(self.archive.as_dict(private=False))

    def directory_keys(self) -> dict[str, OKPKey]:
        """What the directory lists as this authority's signing keys, by kid."""
        return {self.signing.thumbprint(): self.signing_public}


def make_payload(sender: Authority, recipient: Authority, **overrides: Any) -> MessagePayload:
    data: dict[str, Any] = {
        "id": new_message_id(),
        "from": sender.id,
        "to": recipient.id,
        "kind": "request",
        "iat": 1_795_851_600,
        "marking": {"level": "CONFIDENTIAL", "caveats": ["art46-20", "no-onward"]},
        "content": {"subject": "Request for bank records", "text": "Ñandú 日本"},
    }
    data.update(overrides)
    return MessagePayload.parse(data)


def open_as(
    recipient: Authority, sealed: bytes | str | ReadEnvelope, sender: Authority, **kwargs: Any
) -> OpenedEnvelope:
    """Open as ``recipient``'s gateway would: its encryption key, the sender's directory keys, its own id."""
    kwargs.setdefault("recipient_keys", {recipient.encryption.thumbprint(): recipient.encryption})
    kwargs.setdefault("sender_keys", sender.directory_keys())
    kwargs.setdefault("expected_recipient", recipient.id)
    return open_envelope(sealed, **kwargs)


def b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


@pytest.fixture
def sender() -> Authority:
    return Authority("ar.mjdh")


@pytest.fixture
def recipient() -> Authority:
    return Authority("es.mj")


def test_round_trip(sender: Authority, recipient: Authority) -> None:
    payload = make_payload(sender, recipient)
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)

    opened = open_as(recipient, sealed.compact, sender)

    assert opened.payload == payload
    assert opened.payload.to_bytes() == payload.to_bytes()
    assert opened.signed == sealed.signed
    assert opened.sha256 == hashlib.sha256(sealed.compact.encode("ascii")).hexdigest()
    assert opened.header == RoutingHeader(
        id=payload.id,
        from_=sender.id,
        to=recipient.id,
        kind=MessageKind.REQUEST,
        marking=payload.marking,
        kid=recipient.encryption.thumbprint(),
    )


def test_round_trip_from_bytes_gives_the_same_result(sender: Authority, recipient: Authority) -> None:
    payload = make_payload(sender, recipient, kind="status_query", in_reply_to=new_message_id())
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)
    assert open_as(recipient, sealed.compact.encode("ascii"), sender) == open_as(recipient, sealed.compact, sender)


def test_an_envelope_read_first_opens_as_the_envelope_itself(sender: Authority, recipient: Authority) -> None:
    """The receiver reads the header (read_envelope), checks it, then opens what it read without parsing it again:
    the same result, and the limit it is opened under still applies."""
    payload = make_payload(sender, recipient)
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public).compact
    read = read_envelope(sealed)
    assert read.header == read_routing_header(sealed)
    assert open_as(recipient, read, sender) == open_as(recipient, sealed, sender)
    with pytest.raises(OversizedEnvelope):
        open_as(recipient, read, sender, max_bytes=len(sealed) - 1)
    with pytest.raises(OversizedEnvelope):
        read_envelope(sealed, max_bytes=len(sealed) - 1)
    for forged in (ReadEnvelope(read.header, read.outer, read.max_bytes), dataclasses.replace(read)):
        with pytest.raises(TypeError, match="from read_envelope only"):  # no way around the profile's parser
            open_as(recipient, forged, sender)


@pytest.mark.parametrize("kind", list(MessageKind))
def test_every_kind_round_trips(sender: Authority, recipient: Authority, kind: MessageKind) -> None:
    payload = make_payload(sender, recipient, kind=kind.value)
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)
    assert open_as(recipient, sealed.compact, sender).header.kind is kind


def test_archive_copy_opens_with_the_archive_key_and_names_the_original_recipient(
    sender: Authority, recipient: Authority
) -> None:
    payload = make_payload(sender, recipient)
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)
    archive_copy = encrypt_signed(sealed.signed, payload, sender.archive_public)

    opened = open_envelope(
        archive_copy,
        recipient_keys={sender.archive.thumbprint(): sender.archive},
        sender_keys=sender.directory_keys(),
        expected_recipient=recipient.id,
    )

    assert opened.payload == payload
    assert opened.signed == sealed.signed
    assert opened.header.to == recipient.id
    assert opened.header.kid == sender.archive.thumbprint()


def test_the_recipient_cannot_open_the_archive_copy(sender: Authority, recipient: Authority) -> None:
    payload = make_payload(sender, recipient)
    archive_copy = encrypt_signed(sign_payload(payload, sender.signing), payload, sender.archive_public)
    with pytest.raises(WrongRecipient, match="not ours"):
        open_as(recipient, archive_copy, sender)


def test_a_rotated_key_set_opens_with_the_key_the_header_names(sender: Authority, recipient: Authority) -> None:
    old, new = OKPKey.generate_key("X25519"), OKPKey.generate_key("X25519")
    payload = make_payload(sender, recipient)
    sealed = seal_envelope(payload, sender.signing, old)
    keys = {old.thumbprint(): old, new.thumbprint(): new}
    assert open_as(recipient, sealed.compact, sender, recipient_keys=keys).payload == payload


def test_read_routing_header_parses_without_keys(sender: Authority, recipient: Authority) -> None:
    payload = make_payload(sender, recipient, kind="response")
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)
    header = read_routing_header(sealed.compact)
    assert (header.id, header.from_, header.to, header.kind) == (payload.id, sender.id, recipient.id, "response")
    assert header.marking == payload.marking
    assert header.kid == recipient.encryption.thumbprint()


def test_inner_jws_header_is_exactly_the_profile(sender: Authority, recipient: Authority) -> None:
    payload = make_payload(sender, recipient)
    signed = sign_payload(payload, sender.signing)
    header_segment, payload_segment, _ = signed.split(".")
    kid = sender.signing.thumbprint()
    assert base64.urlsafe_b64decode(header_segment + "==") == (
        b'{"alg":"Ed25519","kid":"' + kid.encode() + b'","typ":"comity-message+jws"}'
    )
    assert base64.urlsafe_b64decode(payload_segment + "=" * (-len(payload_segment) % 4)) == payload.to_bytes()
    assert sign_payload(payload, sender.signing) == signed  # Ed25519 is deterministic


def test_outer_jwe_header_is_exactly_the_profile(sender: Authority, recipient: Authority) -> None:
    payload = make_payload(sender, recipient)
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)
    header = b64json(sealed.compact.split(".")[0])
    assert set(header) == JWE_MEMBERS
    assert set(header["epk"]) == EPK_MEMBERS
    assert header | {"epk": None} == {
        "alg": "ECDH-ES+A256KW",
        "enc": "A256GCM",
        "epk": None,
        "kid": recipient.encryption.thumbprint(),
        "typ": "comity-envelope+jwe",
        "cty": "comity-message+jws",
        "id": payload.id,
        "from": sender.id,
        "to": recipient.id,
        "kind": "request",
        "marking": {"level": "CONFIDENTIAL", "caveats": ["art46-20", "no-onward"]},
    }
    assert header["epk"]["kty"] == "OKP"
    assert header["epk"]["crv"] == "X25519"
    assert sealed.compact.count(".") == 4


def test_each_seal_uses_fresh_ephemeral_key_cek_and_iv(sender: Authority, recipient: Authority) -> None:
    payload = make_payload(sender, recipient)
    first = seal_envelope(payload, sender.signing, recipient.encryption_public)
    second = seal_envelope(payload, sender.signing, recipient.encryption_public)
    assert first.signed == second.signed
    parts_1, parts_2 = first.compact.split("."), second.compact.split(".")
    assert all(a != b for a, b in zip(parts_1, parts_2, strict=True))


def test_large_payloads_pass_joserfc_default_limits(sender: Authority, recipient: Authority) -> None:
    # joserfc refuses ciphertexts over 64 KiB and JWS payloads over 128000 bytes by default; the profile raises both.
    payload = make_payload(sender, recipient, content={"text": "x" * 600_000})
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)
    assert len(sealed.compact) > 600_000
    assert open_as(recipient, sealed.compact, sender).payload == payload


def test_max_bytes_is_configurable(sender: Authority, recipient: Authority) -> None:
    payload = make_payload(sender, recipient, content={"text": "x" * 10_000})
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)
    size = len(sealed.compact)
    assert open_as(recipient, sealed.compact, sender, max_bytes=size).payload == payload
    with pytest.raises(OversizedEnvelope, match=f"limit of {size - 1} bytes"):
        open_as(recipient, sealed.compact, sender, max_bytes=size - 1)
    with pytest.raises(OversizedEnvelope, match="limit"):
        read_routing_header(sealed.compact, max_bytes=size - 1)
    assert DEFAULT_MAX_ENVELOPE_BYTES == 4 * 1024 * 1024


def test_the_sender_does_not_seal_what_a_receiver_would_refuse(sender: Authority, recipient: Authority) -> None:
    """joserfc bounds what it decrypts, not what it writes: the seal itself refuses an envelope over the limit, so a
    submission is refused at once instead of being ledgered, sent, and refused for good by every receiver."""
    fits = make_payload(sender, recipient, content={"text": "x" * 2_000_000})
    sealed = seal_envelope(fits, sender.signing, recipient.encryption_public)
    assert len(sealed.compact) <= DEFAULT_MAX_ENVELOPE_BYTES
    assert open_as(recipient, sealed.compact, sender).payload == fits
    too_large = make_payload(sender, recipient, content={"text": "x" * 3_000_000})
    with pytest.raises(OversizedEnvelope, match=f"larger than the limit of {DEFAULT_MAX_ENVELOPE_BYTES} bytes"):
        seal_envelope(too_large, sender.signing, recipient.encryption_public)


def test_a_manifest_key_that_can_never_decrypt_is_refused_on_receipt_only(
    sender: Authority, recipient: Authority
) -> None:
    """Check 15 on receipt; an envelope read back from our own store (received before the check existed) opens."""
    entry = {"name": "a.pdf", "media_type": "application/pdf", "size": 1, "sha256": "0" * 64, "ct_size": 42,
             "ct_sha256": "0" * 64, "key": "A" * 43}  # fmt: skip
    payload = make_payload(sender, recipient, attachments=[entry])
    assert open_as(recipient, seal_envelope(payload, sender.signing, recipient.encryption_public).compact, sender)
    bad = payload.model_copy(update={"attachments": [payload.attachments[0].model_copy(update={"key": "!" * 43})]})
    sealed = seal_envelope(bad, sender.signing, recipient.encryption_public).compact
    with pytest.raises(InvalidMessage, match=r"attachments\.0\.key: must be 32 bytes"):
        open_as(recipient, sealed, sender)
    assert open_as(recipient, sealed, sender, stored=True).payload == bad


def test_a_marking_with_many_caveats_round_trips(sender: Authority, recipient: Authority) -> None:
    # joserfc's default protected-header limit is 1024 bytes; the profile's limit is the same on both sides.
    caveats = sorted(f"caveat-{i:03d}:param-{i}" for i in range(60))
    payload = make_payload(sender, recipient, marking={"level": "STRICTLY CONFIDENTIAL", "caveats": caveats})
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)
    assert 1024 < sealed.compact.index(".") <= MAX_JWE_HEADER_SEGMENT
    assert open_as(recipient, sealed.compact, sender).header.marking == Marking(
        level="STRICTLY CONFIDENTIAL", caveats=caveats
    )


def test_seal_refuses_keys_of_the_wrong_type(sender: Authority, recipient: Authority) -> None:
    payload = make_payload(sender, recipient)
    with pytest.raises(ValueError, match="private Ed25519"):
        seal_envelope(payload, sender.signing_public, recipient.encryption_public)
    with pytest.raises(ValueError, match="private Ed25519"):
        seal_envelope(payload, sender.encryption, recipient.encryption_public)
    with pytest.raises(ValueError, match="X25519"):
        seal_envelope(payload, sender.signing, recipient.signing_public)


def test_encrypt_signed_refuses_a_jws_over_another_payload(sender: Authority, recipient: Authority) -> None:
    payload = make_payload(sender, recipient)
    other = make_payload(sender, recipient)
    with pytest.raises(ValueError, match="compact JWS of this payload"):
        encrypt_signed(sign_payload(other, sender.signing), payload, recipient.encryption_public)
    with pytest.raises(ValueError, match="compact JWS of this payload"):
        encrypt_signed("not a jws", payload, recipient.encryption_public)


def test_results_are_immutable(sender: Authority, recipient: Authority) -> None:
    payload = make_payload(sender, recipient)
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)
    opened = open_as(recipient, sealed.compact, sender)
    with pytest.raises(AttributeError):
        opened.sha256 = "0" * 64  # type: ignore[misc]
    with pytest.raises(AttributeError):
        sealed.compact = ""  # type: ignore[misc]
