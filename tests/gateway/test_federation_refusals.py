"""The federation endpoint refuses hostile input cleanly, over the real network path, on SQLite and PostgreSQL.

A hostile peer (tests/gateway/hostile.py) connects to au.ag with ar.mj's real certificate and keys, so it passes
mutual TLS and is listed, and sends envelopes that break one rule of the receive checklist each
(gateway/receiving.py). For every refusal we check, on au.ag: the HTTP status and problem+json ``type``/``code``; a
``refusal`` that verifies under au.ag's signing key (as listed in the directory ar.mj holds) and names the same code;
that nothing was stored (messages and attachment rows unchanged, no file under the attachments directory); and
that exactly one ``message.refused`` ledger entry was added, with that code as its reason. Problem documents must
not echo the random canary planted in each hostile payload's content.

Two regressions are covered: a broken multipart body once escaped as a 500 without a signed refusal, and
concurrent deliveries of one envelope once shared (and deleted) one attachment file.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import json
import os
import re
import ssl
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
import structlog
from joserfc import jws
from joserfc.jwk import OctKey
from sqlalchemy import func, select

from crypto.attachments import CHUNK_SIZE
from crypto.envelope import encrypt_signed
from crypto.jose_profile import MESSAGE_TYP, b64url_encode
from crypto.keys import generate_encryption_key, generate_signing_key
from crypto.note import NoteVerifier, open_checkpoint
from crypto.receipts import verify_receipt, verify_refusal
from gateway import receiving
from gateway.context import Gateway
from gateway.files import AttachmentFile
from protocol.markings import MarkingScheme
from protocol.messages import Marking, MessagePayload, new_message_id
from protocol.receipts import Refusal
from store.tables import attachments, ledger_entries, messages
from tests.gateway.conftest import PASSPHRASE, Pair, attachment_files, ledger
from tests.gateway.hostile import Answer, HostilePeer, make_attachment, raw_jws, sha256_hex, swap_jwe_header

# --- helpers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    messages: int
    attachments: int
    ledger_size: int
    files: tuple[str, ...]


async def stored(gw: Gateway) -> Stored:
    async with gw.engine.connect() as conn:
        count_messages = (await conn.execute(select(func.count()).select_from(messages))).scalar_one()
        count_attachments = (await conn.execute(select(func.count()).select_from(attachments))).scalar_one()
        size = (await conn.execute(select(func.count()).select_from(ledger_entries))).scalar_one()
    return Stored(int(count_messages), int(count_attachments), int(size), attachment_files(gw))


@pytest.fixture
def hostile(pair: Pair) -> HostilePeer:
    """ar.mj's real TLS identity and keys, pointed at au.ag's federation port."""
    return HostilePeer.impersonating(
        data_dir=pair.ar.provisioned.data_dir,
        identity="ar.mj",
        passphrase=PASSPHRASE.encode(),
        target=pair.ar.gw.peer("au.ag"),
        target_cert=pair.au.provisioned.data_dir / "tls" / "cert.pem",
        url=f"https://127.0.0.1:{pair.au.provisioned.federation_port}",
    )


def canary() -> str:
    return uuid.uuid4().hex


def _prefix_digests(data: bytes, *, longer_than: int) -> set[str]:
    """The SHA-256 of every prefix of ``data`` longer than ``longer_than`` bytes."""
    running = hashlib.sha256(data[:longer_than])
    digests = set()
    for byte in data[longer_than:]:
        running.update(bytes([byte]))
        digests.add(running.hexdigest())
    return digests


async def assert_refused(
    pair: Pair,
    hostile: HostilePeer,
    answer: Answer,
    before: Stored,
    *,
    status: int,
    code: str,
    sent: bytes | None = None,
    claimed: str | None = None,
    message_id: str | None = None,
    secrets: tuple[str, ...] = (),
) -> Refusal:
    """Every property of a clean refusal; returns the verified refusal."""
    gw = pair.au.gw
    assert answer.status == status, (answer.status, answer.raw[:500])
    assert answer.content_type == "application/problem+json"
    problem = answer.document
    assert problem["type"] == f"urn:comity:problem:{code}", problem
    assert problem["code"] == code and problem["status"] == status
    assert isinstance(problem.get("title"), str) and isinstance(problem.get("detail"), str)
    for secret in secrets:
        assert secret not in answer.raw.decode("utf-8", "replace"), f"problem document echoes {secret}"

    # the signed refusal, under au.ag's key as the directory lists it
    assert isinstance(problem.get("refusal"), str), problem
    refusal = verify_refusal(problem["refusal"], hostile.target.all_signing_keys())
    assert refusal.code == code and refusal.from_ == "au.ag"
    # addressed to the authenticated peer (hostile always presents ar.mj's certificate), whatever it claimed
    assert refusal.to == "ar.mj" and refusal.message_id == message_id
    if sent is not None:
        assert refusal.envelope_sha256 == sha256_hex(sent)

    # nothing stored
    after = await stored(gw)
    assert (after.messages, after.attachments, after.files) == (before.messages, before.attachments, before.files)
    assert after.files == (), after.files

    # exactly one ledger entry: the refusal, with the code as its reason
    added = await ledger(gw, before.ledger_size)
    assert len(added) == 1, added
    entry = added[0]
    assert entry["type"] == "message.refused" and entry["reason"] == code, entry
    assert entry["envelope_sha256"] == refusal.envelope_sha256
    assert entry.get("message_id") == message_id
    assert entry["actor"] == "peer:ar.mj" and entry["from"] == "ar.mj"
    if claimed is not None and claimed != "ar.mj":
        assert entry["subject"] == f"claimed:{claimed}"
    else:
        assert "subject" not in entry
    return refusal


async def refused_case(
    pair: Pair,
    hostile: HostilePeer,
    sealed: bytes,
    *,
    status: int,
    code: str,
    claimed: str | None,
    message_id: str | None,
    content_type: str = "application/jose",
    secrets: tuple[str, ...] = (),
    parts: list[bytes] | None = None,
) -> Refusal:
    """``sealed`` delivered by ar.mj (with its attachment ``parts``, as multipart), and every property of a clean
    refusal."""
    before = await stored(pair.au.gw)
    if parts is None:
        answer = await hostile.post(sealed, content_type)
    else:
        answer = await hostile.post_multipart(sealed, parts)
    return await assert_refused(
        pair,
        hostile,
        answer,
        before,
        status=status,
        code=code,
        sent=sealed if parts is not None or content_type == "application/jose" else None,
        claimed=claimed,
        message_id=message_id,
        secrets=secrets,
    )


def secret_payload(hostile: HostilePeer, **overrides: Any) -> tuple[MessagePayload, str]:
    """A payload with a canary in its content, so a problem document echoing content would show."""
    mark = canary()
    payload = hostile.payload(content={"subject": f"subject {mark}", "text": f"text {mark}"}, **overrides)
    return payload, mark


def _flip(segment: str, at: int) -> str:
    data = bytearray(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    data[at] ^= 0x01
    return b64url_encode(bytes(data)).decode("ascii")


# --- (1) sender mismatch ----------------------------------------------------------------------------------------


async def test_envelope_claiming_another_sender_is_refused(pair: Pair, hostile: HostilePeer) -> None:
    # signed with ar.mj's real key, sent over ar.mj's pinned certificate, claiming to come from au.ag itself
    for claimed in ("au.ag", "zz.evil"):
        payload, mark = secret_payload(hostile, **{"from": claimed})
        await refused_case(
            pair,
            hostile,
            hostile.seal(payload),
            status=403,
            code="sender-mismatch",
            claimed=claimed,
            message_id=payload.id,
            secrets=(mark,),
        )


# --- (2) bad signature ------------------------------------------------------------------------------------------


async def test_bad_signature_is_refused(pair: Pair, hostile: HostilePeer) -> None:
    payload, mark = secret_payload(hostile)
    header, body, signature = hostile.signed(payload).split(".")
    tampered = ".".join((header, body, _flip(signature, 10)))
    await refused_case(
        pair,
        hostile,
        hostile.seal_signed(tampered, payload),
        status=401,
        code="bad-signature",
        claimed="ar.mj",
        message_id=payload.id,
        secrets=(mark,),
    )

    # a genuine signature of ar.mj over another payload, grafted onto this one
    other, _ = secret_payload(hostile)
    grafted_payload, mark = secret_payload(hostile)
    header, _, signature = hostile.signed(other).split(".")
    grafted = ".".join((header, b64url_encode(grafted_payload.to_bytes()).decode("ascii"), signature))
    await refused_case(
        pair,
        hostile,
        hostile.seal_signed(grafted, grafted_payload),
        status=401,
        code="bad-signature",
        claimed="ar.mj",
        message_id=grafted_payload.id,
        secrets=(mark,),
    )


# --- (3) wrong recipient ----------------------------------------------------------------------------------------


async def test_envelope_for_another_recipient_is_refused(pair: Pair, hostile: HostilePeer) -> None:
    payload, mark = secret_payload(hostile, to="zz.other")
    await refused_case(
        pair,
        hostile,
        hostile.seal(payload),
        status=421,
        code="wrong-recipient",
        claimed="ar.mj",
        message_id=payload.id,
        secrets=(mark,),
    )

    # addressed to au.ag, but sealed to an encryption key that is not au.ag's
    payload, mark = secret_payload(hostile)
    foreign = encrypt_signed(hostile.signed(payload), payload, generate_encryption_key()).encode("ascii")
    await refused_case(
        pair,
        hostile,
        foreign,
        status=421,
        code="wrong-recipient",
        claimed="ar.mj",
        message_id=payload.id,
        secrets=(mark,),
    )


# --- (4) routing header differs from the signed payload --------------------------------------------------------


async def test_routing_header_differing_from_signed_payload_is_refused(pair: Pair, hostile: HostilePeer) -> None:
    cases: list[tuple[MessagePayload, str, dict[str, Any]]] = []
    payload, mark = secret_payload(hostile)
    cases.append((payload, mark, {"kind": "consultation"}))
    payload, mark = secret_payload(hostile)
    cases.append((payload, mark, {"marking": {"level": "UNCLASSIFIED", "caveats": []}}))
    payload, mark = secret_payload(hostile)
    cases.append((payload, mark, {"id": new_message_id()}))
    # the signed payload claims au.ag; the routing header (checked against the TLS peer) says ar.mj
    payload, mark = secret_payload(hostile, **{"from": "au.ag"})
    cases.append((payload, mark, {"from": "ar.mj"}))
    for payload, mark, overrides in cases:
        sealed = hostile.seal_with_header(payload, **overrides)
        await refused_case(
            pair,
            hostile,
            sealed,
            status=400,
            code="header-mismatch",
            claimed="ar.mj",
            message_id=overrides.get("id", payload.id),
            secrets=(mark,),
        )


# --- (5) signing key not listed ---------------------------------------------------------------------------------


async def test_signing_key_not_listed_is_refused(pair: Pair, hostile: HostilePeer) -> None:
    payload, mark = secret_payload(hostile)
    await refused_case(
        pair,
        hostile,
        hostile.seal(payload, signing_key=generate_signing_key()),
        status=401,
        code="unknown-key",
        claimed="ar.mj",
        message_id=payload.id,
        secrets=(mark,),
    )

    # au.ag's own signing key id, with ar.mj's signature: a key the directory lists, but not for the sender
    payload, mark = secret_payload(hostile)
    au_kid = next(iter(hostile.target.all_signing_keys()))
    header = {"alg": "Ed25519", "kid": au_kid, "typ": MESSAGE_TYP}
    token = hostile.raw_signed(header, payload)
    await refused_case(
        pair,
        hostile,
        hostile.seal_signed(token, payload),
        status=401,
        code="unknown-key",
        claimed="ar.mj",
        message_id=payload.id,
        secrets=(mark,),
    )


# --- (6) algorithms outside the profile -------------------------------------------------------------------------


async def test_algorithms_outside_the_profile_are_refused(pair: Pair, hostile: HostilePeer) -> None:
    kid = hostile.keys.signing.thumbprint()

    # inner JWS: alg none (no signature), HS256 made with joserfc, EdDSA (a valid Ed25519 signature, unpinned name)
    payload, mark = secret_payload(hostile)
    none_token = raw_jws({"alg": "none", "kid": kid, "typ": MESSAGE_TYP}, payload.to_bytes())
    inner: list[tuple[MessagePayload, str, str]] = [(payload, mark, none_token)]

    payload, mark = secret_payload(hostile)
    hs_header = {"alg": "HS256", "kid": kid, "typ": MESSAGE_TYP}
    hs_token = jws.serialize_compact(hs_header, payload.to_bytes(), OctKey.import_key(os.urandom(32)))
    inner.append((payload, mark, hs_token))

    payload, mark = secret_payload(hostile)
    eddsa_token = hostile.raw_signed({"alg": "EdDSA", "kid": kid, "typ": MESSAGE_TYP}, payload)
    inner.append((payload, mark, eddsa_token))

    for payload, mark, token in inner:
        await refused_case(
            pair,
            hostile,
            hostile.seal_signed(token, payload),
            status=400,
            code="profile-violation",
            claimed="ar.mj",
            message_id=payload.id,
            secrets=(mark,),
        )

    # outer JWE: the protected header names another alg / enc, or alg none (refused before any decryption, so
    # before the routing header is trusted: the refusal names no sender and no message id)
    for change in ({"alg": "none"}, {"alg": "dir"}, {"alg": "RSA-OAEP"}, {"enc": "A128GCM"}, {"alg": "ECDH-ES"}):
        payload, mark = secret_payload(hostile)
        sealed = hostile.seal(payload)
        header = {**hostile.jwe_header(sealed), **change}
        modified = swap_jwe_header(sealed.decode("ascii"), header).encode("ascii")
        await refused_case(
            pair,
            hostile,
            modified,
            status=400,
            code="profile-violation",
            claimed=None,
            message_id=None,
            secrets=(mark,),
        )


# --- (7) stale iat ----------------------------------------------------------------------------------------------


async def test_message_outside_the_time_bounds_is_refused(pair: Pair, hostile: HostilePeer) -> None:
    # iat more than max_clock_skew_seconds in our future, or older than max_message_age_seconds (an outbox resends
    # the same signed bytes until a receipt arrives, so the past bound is the age, not the skew)
    now = int(datetime.now(UTC).timestamp())
    settings = pair.au.gw.settings
    skew, age = settings.max_clock_skew_seconds, settings.max_message_age_seconds
    assert skew == 300
    for iat in (now + skew + 60, now - age - 60, 0):
        payload, mark = secret_payload(hostile, iat=iat)
        await refused_case(
            pair,
            hostile,
            hostile.seal(payload),
            status=400,
            code="stale-message",
            claimed="ar.mj",
            message_id=payload.id,
            secrets=(mark,),
        )
    # inside the bounds: a little ahead (clock skew), and issued an hour ago (a resend)
    for iat in (now + skew - 60, now - 3600):
        assert (await hostile.post(hostile.seal(hostile.payload(iat=iat)))).status == 200


# --- marking above the receiver's accreditation ----------------------------------------------------------------


async def test_marking_outside_the_receivers_accreditation_is_refused(pair: Pair, hostile: HostilePeer) -> None:
    for marking in ({"level": "TOP SECRET", "caveats": []}, {"level": "CONFIDENTIAL", "caveats": ["not-honoured"]}):
        payload, mark = secret_payload(hostile, marking=marking)
        await refused_case(
            pair,
            hostile,
            hostile.seal(payload),
            status=403,
            code="marking-refused",
            claimed="ar.mj",
            message_id=payload.id,
            secrets=(mark,),
        )


# --- (8) replay, (9) duplicate ----------------------------------------------------------------------------------


async def test_replayed_message_id_with_other_bytes_is_refused(pair: Pair, hostile: HostilePeer) -> None:
    payload, mark = secret_payload(hostile)
    first = hostile.seal(payload)
    before = await stored(pair.au.gw)
    answer = await hostile.post(first)
    assert answer.status == 200, answer.raw
    accepted = await stored(pair.au.gw)
    assert accepted.messages == before.messages + 1

    # the same signed payload sealed again (other bytes), then a different payload reusing the id
    again = hostile.seal(payload)
    assert again != first
    other = hostile.payload(id=payload.id, content={"text": "something else"})
    for sealed in (again, hostile.seal(other)):
        await refused_case(
            pair,
            hostile,
            sealed,
            status=409,
            code="replayed-message",
            claimed="ar.mj",
            message_id=payload.id,
            secrets=(mark,),
        )
    async with pair.au.gw.engine.connect() as conn:
        row = (await conn.execute(select(messages.c.envelope_sha256).where(messages.c.id == payload.id))).one()
    assert row.envelope_sha256 == sha256_hex(first)


async def test_duplicate_delivery_gets_the_same_receipt(pair: Pair, hostile: HostilePeer) -> None:
    payload = hostile.payload()
    sealed = hostile.seal(payload)
    first = await hostile.post(sealed)
    assert first.status == 200, first.raw
    after_first = await stored(pair.au.gw)
    for _ in range(2):
        again = await hostile.post(sealed)
        assert again.status == 200, again.raw
        assert again.document["receipt"] == first.document["receipt"]
        assert await stored(pair.au.gw) == after_first  # no second row, no ledger entry at all


async def test_a_key_conflict_that_is_not_the_message_id_is_retried_not_refused_for_good(
    pair: Pair, hostile: HostilePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that hits another row's key written at once by another delivery (two consents for one message and
    recipient at two replicas, say) is not a replay of the message id: it was refused for good as replayed-message,
    a genuine message lost. It is now a 503 the sender retries, with nothing stored or ledgered."""
    from sqlalchemy.exc import IntegrityError

    real, calls = receiving._commit, []

    async def conflicting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("INSERT INTO consents ...", {}, Exception("duplicate key value"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(receiving, "_commit", conflicting)
    before = await stored(pair.au.gw)
    sealed = hostile.seal(hostile.payload())
    answer = await hostile.post(sealed)
    assert answer.status == 503 and answer.document["code"] == "store-unavailable", answer.raw
    assert "refusal" not in answer.document
    assert await stored(pair.au.gw) == before
    again = await hostile.post(sealed)
    assert again.status == 200 and "receipt" in again.document, again.raw


@dataclass(frozen=True)
class _AccreditedForUnclassifiedOnly(MarkingScheme):
    """As if a new directory had narrowed the receiver's accreditation to the lowest level."""

    def check_accreditation(self, marking: Marking, max_level: str, honoured: Sequence[str], recipient: str) -> None:
        super().check_accreditation(marking, self.levels[0], honoured, recipient)


async def test_a_receipted_message_keeps_its_receipt_after_our_accreditation_narrows(
    pair: Pair, hostile: HostilePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Duplicates are looked up before our accreditation is checked: a sender retrying a message we already
    receipted (its first answer lost) must get that receipt, not a final ``marking-refused`` for a message we hold."""
    sealed = hostile.seal(hostile.payload())
    first = await hostile.post(sealed)
    assert first.status == 200, first.raw
    after_first = await stored(pair.au.gw)
    monkeypatch.setattr(pair.au.gw, "scheme", _AccreditedForUnclassifiedOnly())

    again = await hostile.post(sealed)
    assert again.status == 200 and again.document["receipt"] == first.document["receipt"], again.raw
    assert await stored(pair.au.gw) == after_first
    fresh = await hostile.post(hostile.seal(hostile.payload()))  # a new message at that marking is refused now
    assert (fresh.status, fresh.document["code"]) == (403, "marking-refused"), fresh.raw


# --- receipt ----------------------------------------------------------------------------------------------------


async def test_receipt_of_a_valid_delivery(pair: Pair, hostile: HostilePeer) -> None:
    data = os.urandom(1000)
    attachment = make_attachment(data)
    payload = hostile.payload(attachments=[attachment.ref.model_dump()])
    sealed = hostile.seal(payload)
    before = await stored(pair.au.gw)
    answer = await hostile.post_multipart(sealed, [attachment.ciphertext])
    assert answer.status == 200, answer.raw
    assert answer.content_type == "application/json"

    receipt = verify_receipt(answer.document["receipt"], hostile.target.all_signing_keys())
    assert (receipt.message_id, receipt.from_, receipt.to) == (payload.id, "au.ag", "ar.mj")
    assert receipt.envelope_sha256 == sha256_hex(sealed)

    added = await ledger(pair.au.gw, before.ledger_size)
    received = [entry for entry in added if entry["type"] == "message.received"]
    assert len(received) == 1 and received[0]["message_id"] == payload.id
    assert receipt.ledger_index == received[0]["idx"]
    assert received[0]["envelope_sha256"] == receipt.envelope_sha256

    verifier = NoteVerifier.from_verifier_key(pair.au.gw.note_verifier_key())
    checkpoint, note = open_checkpoint(receipt.checkpoint, [verifier])
    assert checkpoint.origin == "comity-ledger/au.ag" and note.verified
    assert checkpoint.size > receipt.ledger_index

    after = await stored(pair.au.gw)
    assert after.messages == before.messages + 1 and after.attachments == before.attachments + 1
    # each delivery writes a file of its own name: <message id>.<position>.<random>
    (name,) = after.files
    assert re.fullmatch(rf"in/{payload.id}\.0\.[0-9a-f]{{16}}", name), name
    assert (pair.au.gw.settings.attachments_path / name).read_bytes() == attachment.ciphertext


# --- (10) oversized body ----------------------------------------------------------------------------------------


async def test_oversized_envelope_is_refused(pair: Pair, hostile: HostilePeer) -> None:
    await pair.au.stop()
    await pair.au.start(max_envelope_bytes=8192)
    assert pair.au.gw.settings.max_envelope_bytes == 8192

    # within the limit: accepted (the limit is not refusing everything)
    small = hostile.seal(hostile.payload(content={"text": "x" * 1000}))
    assert len(small) < 8192
    assert (await hostile.post(small)).status == 200

    mark = canary()
    big_payload = hostile.payload(content={"text": mark + "y" * 20_000})
    big = hostile.seal(big_payload)
    assert len(big) > 8192
    before = await stored(pair.au.gw)
    answer = await hostile.post(big)
    refusal = await assert_refused(
        pair,
        hostile,
        answer,
        before,
        status=413,
        code="envelope-too-large",
        claimed=None,
        message_id=None,
        secrets=(mark,),
    )
    # the refusal names the digest of the bytes read so far (section 10): a prefix past the limit, not nothing
    assert refusal.envelope_sha256 in _prefix_digests(big, longer_than=8192)

    # the same inside multipart/mixed (first part too large), with an attachment part after it
    attachment = make_attachment(b"z" * 100)
    before = await stored(pair.au.gw)
    answer = await hostile.post_multipart(big, [attachment.ciphertext])
    refusal = await assert_refused(
        pair,
        hostile,
        answer,
        before,
        status=413,
        code="envelope-too-large",
        claimed=None,
        message_id=None,
        secrets=(mark,),
    )
    assert refusal.envelope_sha256 in _prefix_digests(big, longer_than=8192)


# --- (11) attachments -------------------------------------------------------------------------------------------


async def test_corrupt_attachments_are_refused_and_leave_no_file(pair: Pair, hostile: HostilePeer) -> None:
    big = make_attachment(os.urandom(2 * CHUNK_SIZE + 5))  # header + 3 chunks
    twin = make_attachment(os.urandom(2 * CHUNK_SIZE + 5))  # same sizes, another stream
    small = make_attachment(b"statement of account")
    chunks, twin_chunks = big.chunks(), twin.chunks()
    assert len(chunks) == 4 and len(chunks[1]) == len(chunks[2]) == CHUNK_SIZE + 17

    substituted = b"".join([chunks[0], twin_chunks[1], chunks[2], chunks[3]])
    reordered = b"".join([chunks[0], chunks[2], chunks[1], chunks[3]])
    cases: list[tuple[str, list[bytes], str]] = [
        ("truncated", [big.ciphertext[:-1], small.ciphertext], "attachment-corrupt"),
        ("last chunk dropped", [b"".join(chunks[:3]), small.ciphertext], "attachment-corrupt"),
        ("one byte appended", [big.ciphertext + b"\0", small.ciphertext], "attachment-corrupt"),
        ("chunk substituted", [substituted, small.ciphertext], "attachment-corrupt"),
        ("chunks reordered", [reordered, small.ciphertext], "attachment-corrupt"),
        (
            "bit flipped",
            [big.ciphertext[:100] + bytes([big.ciphertext[100] ^ 0x01]) + big.ciphertext[101:], small.ciphertext],
            "attachment-corrupt",
        ),
        ("parts swapped", [small.ciphertext, big.ciphertext], "attachment-corrupt"),
        ("missing part", [big.ciphertext], "attachment-corrupt"),
        ("no parts", [], "attachment-corrupt"),
        ("empty part", [b"", small.ciphertext], "attachment-corrupt"),
        ("extra part", [big.ciphertext, small.ciphertext, b"more"], "invalid-message"),
        ("extra empty part", [big.ciphertext, small.ciphertext, b""], "invalid-message"),
    ]
    for name, parts, code in cases:
        payload, mark = secret_payload(hostile, attachments=[big.ref.model_dump(), small.ref.model_dump()])
        try:
            await refused_case(
                pair,
                hostile,
                hostile.seal(payload),
                parts=parts,
                status=400,
                code=code,
                claimed="ar.mj",
                message_id=payload.id,
                secrets=(mark,),
            )
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from exc

    # the intact parts are accepted, and only then does a file exist
    payload = hostile.payload(attachments=[big.ref.model_dump(), small.ref.model_dump()])
    answer = await hostile.post_multipart(hostile.seal(payload), [big.ciphertext, small.ciphertext])
    assert answer.status == 200, answer.raw
    names = attachment_files(pair.au.gw)
    assert [re.sub(r"\.[0-9a-f]{16}$", "", name) for name in names] == [f"in/{payload.id}.0", f"in/{payload.id}.1"]


async def test_a_manifest_key_that_can_never_decrypt_gets_no_receipt(pair: Pair, hostile: HostilePeer) -> None:
    """Check 15: the receiver does not decrypt attachments, but it refuses a manifest whose key is not 32 bytes of
    canonical base64url, instead of receipting an attachment nobody will ever open."""
    attachment = make_attachment(b"statement of account")
    payload, mark = secret_payload(hostile, attachments=[attachment.ref.model_dump()])
    undecryptable = attachment.ref.model_copy(update={"key": "!" * 43})  # a copy is not validated again
    payload = payload.model_copy(update={"attachments": [undecryptable]})
    # with a routing header that differs too: check 15 comes before check 16 (header-mismatch)
    routed_as = new_message_id()
    sealed = hostile.seal_with_header(payload, id=routed_as)
    await refused_case(
        pair,
        hostile,
        sealed,
        parts=[attachment.ciphertext],
        status=400,
        code="invalid-message",
        claimed="ar.mj",
        message_id=routed_as,  # a refusal names the message by its routing header, the only id it can trust
        secrets=(mark,),
    )


async def test_every_attachment_size_is_checked_before_any_part_is_read(pair: Pair, hostile: HostilePeer) -> None:
    """Check 22 for the whole manifest first: a size this gateway refuses is refused before any part is read, not
    once the parts before it have arrived."""
    from crypto.attachments import ciphertext_size

    small = make_attachment(b"statement of account")
    huge = small.ref.model_dump()
    huge["size"] = 1 << 40
    huge["ct_size"] = ciphertext_size(1 << 40)
    assert huge["ct_size"] > pair.au.gw.settings.max_attachment_bytes
    payload, mark = secret_payload(hostile, attachments=[small.ref.model_dump(), huge])
    # no part at all: refused for its size, not for the missing part
    await refused_case(
        pair, hostile, hostile.seal(payload), parts=[], status=413, code="attachment-too-large", claimed="ar.mj",
        message_id=payload.id, secrets=(mark,),
    )  # fmt: skip


async def test_attachments_sent_without_multipart_are_refused(pair: Pair, hostile: HostilePeer) -> None:
    attachment = make_attachment(b"records")
    payload, mark = secret_payload(hostile, attachments=[attachment.ref.model_dump()])
    await refused_case(
        pair,
        hostile,
        hostile.seal(payload),
        status=400,
        code="attachment-corrupt",
        claimed="ar.mj",
        message_id=payload.id,
        secrets=(mark,),
    )


# --- (12) unlisted client certificate ---------------------------------------------------------------------------


async def test_unlisted_client_certificate_cannot_connect(pair: Pair, hostile: HostilePeer, tmp_path: Path) -> None:
    sealed = hostile.seal(hostile.payload())
    before = await stored(pair.au.gw)
    strangers = [
        hostile.with_unlisted_certificate("ar.mj", tmp_path),  # same name as the listed peer, another key
        hostile.with_unlisted_certificate("zz.evil", tmp_path),
        hostile.without_client_certificate(),
    ]
    for stranger in strangers:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            await stranger.post(sealed)
    assert await stored(pair.au.gw) == before  # not even a refusal is ledgered

    # the real identity still works: the failures above were the certificate, not the envelope
    assert (await hostile.post(sealed)).status == 200


async def test_a_certificate_issued_by_a_listed_one_is_not_that_authority(
    pair: Pair, hostile: HostilePeer, tmp_path: Path
) -> None:
    """A listed certificate is its own trust anchor (CA, path length 0), so a leaf it signs passes the handshake; but
    the authority is the pin of the certificate presented, and that leaf is listed nowhere: a signed unknown-peer
    refusal, not ledgered, nothing stored."""
    issued = hostile.with_certificate_issued_by(pair.ar.provisioned.data_dir, PASSPHRASE.encode(), tmp_path)

    payload = hostile.payload()
    sealed = hostile.seal(payload)
    before = await stored(pair.au.gw)
    answer = await issued.post(sealed)
    assert (answer.status, answer.document.get("code")) == (403, "unknown-peer"), answer.raw
    refusal = verify_refusal(answer.document["refusal"], pair.ar.gw.peer("au.ag").all_signing_keys())
    assert refusal.code == "unknown-peer" and refusal.to is None
    assert await stored(pair.au.gw) == before  # not even the refusal is ledgered
    assert (await hostile.post(sealed)).status == 200  # the listed certificate itself is ar.mj


# --- (13) garbage bodies and content types ----------------------------------------------------------------------


async def test_garbage_bodies_are_refused(pair: Pair, hostile: HostilePeer) -> None:
    valid = hostile.seal(hostile.payload())
    json_serialisation = json.dumps({"protected": "e30", "ciphertext": "AA", "iv": "AA", "tag": "AA"}).encode()
    garbage: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("random bytes", os.urandom(512)),
        ("text", b"hello, gateway"),
        ("five dots", b"...."),
        ("json serialisation", json_serialisation),
        ("not utf-8", b"\xff\xfe." * 4 + b"\x00"),
        ("padded base64", valid.replace(b".", b"=.", 1)),
        ("six parts", valid + b".AAAA"),
    ]
    for name, body in garbage:
        try:
            await refused_case(pair, hostile, body, status=400, code="profile-violation", claimed=None, message_id=None)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from exc

    # well-formed, but the ciphertext or its tag was cut or altered: one opaque decryption failure
    message_id = hostile.jwe_header(valid)["id"]
    segments = valid.decode("ascii").split(".")
    altered = []
    for position in (1, 2, 3, 4):  # encrypted key, iv, ciphertext, tag
        changed = list(segments)
        changed[position] = _flip(changed[position], 3)
        altered.append(".".join(changed).encode("ascii"))
    for body in [valid[:-10], *altered]:
        await refused_case(
            pair, hostile, body, status=400, code="decryption-failed", claimed="ar.mj", message_id=message_id
        )


async def test_wrong_content_types_are_refused(pair: Pair, hostile: HostilePeer) -> None:
    payload, mark = secret_payload(hostile)
    valid = hostile.seal(payload)
    for content_type in ("text/plain", "application/json", "application/octet-stream", "application/jose+json"):
        before = await stored(pair.au.gw)
        answer = await hostile.post(valid, content_type)
        await assert_refused(
            pair,
            hostile,
            answer,
            before,
            status=400,
            code="invalid-message",
            claimed=None,
            message_id=None,
            secrets=(mark,),
        )

    # multipart whose first part is not the envelope
    before = await stored(pair.au.gw)
    answer = await hostile.post_multipart(valid, [], envelope_type="application/octet-stream")
    await assert_refused(
        pair,
        hostile,
        answer,
        before,
        status=400,
        code="invalid-message",
        claimed=None,
        message_id=None,
        secrets=(mark,),
    )
    # the message was never accepted, so the honest delivery still goes through afterwards
    assert (await hostile.post(valid)).status == 200


BOUNDARY = "multipart/mixed; boundary=xyz"


def _malformed_multipart(hostile: HostilePeer) -> dict[str, tuple[bytes, str, str]]:
    """name -> (body, content type, the code a clean refusal carries)."""
    valid = hostile.seal(hostile.payload())
    attachment = make_attachment(b"records")
    with_attachment = hostile.seal(hostile.payload(attachments=[attachment.ref.model_dump()]))
    envelope_part = b"--xyz\r\nContent-Type: application/jose\r\n\r\n" + with_attachment + b"\r\n"
    attachment_head = b"--xyz\r\nContent-Type: application/octet-stream\r\n"
    return {
        # clean today
        "closing delimiter only": (b"--xyz--\r\n", BOUNDARY, "invalid-message"),
        "nested multipart first": (
            b"--xyz\r\nContent-Type: multipart/mixed; boundary=abc\r\n\r\n--abc--\r\n--xyz--\r\n",
            BOUNDARY,
            "invalid-message",
        ),
        # the envelope part runs to the end of the body, so the envelope itself is malformed
        "envelope part header never ends": (b"--xyz\r\nContent-Type: application/jose", BOUNDARY, "profile-violation"),
        "garbage instead of the next part": (
            envelope_part + b"no delimiter" + attachment.ciphertext,
            BOUNDARY,
            "profile-violation",
        ),
        # aiohttp's multipart reader raises on these; the endpoint turns that into a typed, signed refusal
        "no boundary parameter": (valid, "multipart/mixed", "invalid-message"),
        "boundary never appears": (b"garbage without any boundary", BOUNDARY, "invalid-message"),
        "empty body": (b"", BOUNDARY, "invalid-message"),
        "body ends inside the attachment part": (
            envelope_part + attachment_head + b"\r\n" + attachment.ciphertext,
            BOUNDARY,
            "invalid-message",
        ),
        "attachment part header never ends": (
            envelope_part + attachment_head + b"X" * 100,
            BOUNDARY,
            "invalid-message",
        ),
    }


CLEAN_MULTIPART = [
    "closing delimiter only",
    "nested multipart first",
    "envelope part header never ends",
    "garbage instead of the next part",
]
BROKEN_MULTIPART = [
    "no boundary parameter",
    "boundary never appears",
    "empty body",
    "body ends inside the attachment part",
    "attachment part header never ends",
]


async def test_malformed_multipart_bodies_are_refused(pair: Pair, hostile: HostilePeer) -> None:
    cases = _malformed_multipart(hostile)
    for name in CLEAN_MULTIPART:
        body, content_type, code = cases[name]
        before = await stored(pair.au.gw)
        answer = await hostile.post_raw(body, {"Content-Type": content_type})
        try:
            await assert_refused(pair, hostile, answer, before, status=400, code=code, claimed=None, message_id=None)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from exc


async def test_malformed_multipart_bodies_store_nothing(pair: Pair, hostile: HostilePeer) -> None:
    """Whatever the answer, a malformed multipart body leaves no row and no file (not even a .part file)."""
    for name, (body, content_type, _) in _malformed_multipart(hostile).items():
        before = await stored(pair.au.gw)
        answer = await hostile.post_raw(body, {"Content-Type": content_type})
        assert answer.status >= 400, name
        after = await stored(pair.au.gw)
        assert (after.messages, after.attachments, after.files) == (before.messages, before.attachments, ()), name


async def test_malformed_multipart_bodies_get_a_signed_refusal(pair: Pair, hostile: HostilePeer) -> None:
    """Every case of BROKEN_MULTIPART; the failure lists each case that is not refused cleanly."""
    cases = _malformed_multipart(hostile)
    failures: list[str] = []
    for name in BROKEN_MULTIPART:
        body, content_type, code = cases[name]
        before = await stored(pair.au.gw)
        answer = await hostile.post_raw(body, {"Content-Type": content_type})
        # refused inside receive_envelope (at an attachment part) once fixed: then sender and id are known
        late = name.startswith(("body ends", "attachment part"))
        try:
            await assert_refused(
                pair,
                hostile,
                answer,
                before,
                status=400,
                code=answer.document.get("code", "") if late else code,
                claimed="ar.mj" if late else None,
                message_id=hostile.jwe_header(body.split(b"\r\n")[3])["id"] if late else None,
            )
            if late:
                assert answer.document["code"] in {"invalid-message", "attachment-corrupt"}
        except AssertionError as exc:
            failures.append(f"{name}: HTTP {answer.status} {answer.document.get('code')}: {str(exc)[:120]}")
    assert not failures, "\n".join(failures)


# --- concurrent duplicates --------------------------------------------------------------------------------------


async def test_copies_delivered_at_once_are_received_one_after_the_other(
    pair: Pair, hostile: HostilePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies of one envelope delivered at once (a retrying sender, a peer flooding) do not all pass the duplicate
    check into the group commit, where all but one would fail a batch on the message's key: one is received, the
    others wait for it and get its receipt."""
    committed: list[str] = []
    real_commit = receiving._commit

    async def counted(gw: Gateway, opened: Any, *args: Any) -> Any:
        committed.append(opened.payload.id)
        if len(committed) == 1:
            await asyncio.sleep(0.3)  # the first to get here holds on: the others arrive meanwhile
        return await real_commit(gw, opened, *args)

    monkeypatch.setattr(receiving, "_commit", counted)
    payload = hostile.payload()
    sealed = hostile.seal(payload)
    before = await stored(pair.au.gw)
    answers = await asyncio.gather(*(hostile.post(sealed) for _ in range(8)))
    assert [answer.status for answer in answers] == [200] * 8, [answer.raw[:200] for answer in answers]
    assert len({answer.document["receipt"] for answer in answers}) == 1
    assert committed == [payload.id]  # the same bytes were opened into a group commit once
    after = await stored(pair.au.gw)
    assert after.messages == before.messages + 1
    assert pair.au.gw.receiving_ids == {}  # nothing left waiting


async def test_a_delivery_waits_for_another_of_its_id_only_so_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery whose twin is stalled (reading attachments from a dead connection, say) goes ahead after
    ``ALONE_WAIT_SECONDS``, holding no turn; one whose twin ends takes its turn and frees it."""
    monkeypatch.setattr(receiving, "ALONE_WAIT_SECONDS", 0.05)
    stalled = asyncio.Event()
    gw = cast(Gateway, SimpleNamespace(receiving_ids={"m": stalled}))
    started = asyncio.get_running_loop().time()
    async with receiving._alone(gw, "m"):
        assert gw.receiving_ids == {"m": stalled}  # went ahead without taking the stalled one's turn
        assert asyncio.get_running_loop().time() - started < 1.0
    assert gw.receiving_ids == {"m": stalled}

    async def end_the_other() -> None:
        await asyncio.sleep(0.01)
        del gw.receiving_ids["m"]
        stalled.set()

    ending = asyncio.create_task(end_the_other())
    async with receiving._alone(gw, "m"):
        assert ending.done() and gw.receiving_ids["m"] is not stalled  # waited, then took its own turn
    assert gw.receiving_ids == {}


class _FullDisk:
    """A file on a full disk: writing fails, and so does closing, which flushes what is buffered."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self.real.close()
        raise OSError(errno.ENOSPC, "No space left on device")


class _NoRoomToRename:
    """A partial file the full disk will not let be renamed (a new directory entry needs a block)."""

    def __init__(self, real: Path) -> None:
        self.real = real

    def replace(self, target: Path) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    def unlink(self, missing_ok: bool = False) -> None:
        self.real.unlink(missing_ok=missing_ok)


async def test_a_failed_attachment_commit_leaves_no_file(
    pair: Pair, hostile: HostilePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the second of two attachments is moved to its final name: neither file stays behind
    without its row (the first was already renamed), nothing is stored, and the answer is 503 store-unavailable
    with Retry-After, unsigned (the bytes are fine: the sender tries again), logged by the errno's name only."""
    first, second = make_attachment(b"first statement"), make_attachment(b"second statement")
    payload = hostile.payload(attachments=[first.ref.model_dump(), second.ref.model_dump()])
    real_commit = AttachmentFile.commit
    moved: list[str] = []

    def commit_until_the_disk_is_full(self: AttachmentFile) -> Path:
        if moved:  # each part's file was written, synced and closed as it was verified: the rename fails
            self.partial = _NoRoomToRename(self.partial)  # type: ignore[assignment]
        else:
            moved.append(self.final.name)
        return real_commit(self)

    monkeypatch.setattr(AttachmentFile, "commit", commit_until_the_disk_is_full)
    before = await stored(pair.au.gw)
    with structlog.testing.capture_logs() as logs:
        answer = await hostile.post_multipart(hostile.seal(payload), [first.ciphertext, second.ciphertext])
    assert (answer.status, answer.document["code"]) == (503, "store-unavailable"), answer.raw[:300]
    assert "refusal" not in answer.document and answer.retry_after == "1"
    (line,) = [entry for entry in logs if entry["event"] == "store_unavailable"]
    assert line["error"] == "ENOSPC" and not [entry for entry in logs if entry["event"] == "unhandled_error"]
    assert len(moved) == 1  # the first file did reach its final name before the second failed
    after = await stored(pair.au.gw)
    assert (after.messages, after.attachments, after.files) == (before.messages, before.attachments, before.files)

    monkeypatch.setattr(AttachmentFile, "commit", real_commit)  # space again: the same bytes are received
    answer = await hostile.post_multipart(hostile.seal(payload), [first.ciphertext, second.ciphertext])
    assert answer.status == 200, answer.raw[:300]


async def test_a_reception_committed_despite_an_error_keeps_its_attachment_files(
    pair: Pair, hostile: HostilePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer to COMMIT is lost after the reception committed (decision 96's ambiguity, on the receiving
    side): the sender's retry gets the stored receipt, so the files the stored rows name must still be there,
    and they open to the bytes sent (decision 111)."""
    from gateway.committer import Committer
    from gateway.receiving import Received

    real = Committer._transaction
    armed = [True]

    async def commit_then_lose_the_answer(self: Committer, jobs: list[Any], head: Any) -> list[Any]:
        results = await real(self, jobs, head)
        if armed[0] and any(isinstance(result, Received) for result in results):
            armed[0] = False
            raise ConnectionResetError("the answer to COMMIT was lost")  # committed all the same
        return results

    monkeypatch.setattr(Committer, "_transaction", commit_then_lose_the_answer)
    attachment = make_attachment(b"bank records")
    payload = hostile.payload(attachments=[attachment.ref.model_dump()])
    sealed = hostile.seal(payload)
    await hostile.post_multipart(sealed, [attachment.ciphertext])
    # the answer was lost: SQLite's committer answers the error; PostgreSQL's runs the unit again, which meets the
    # stored row and answers the stored receipt
    assert not armed[0]
    again = await hostile.post_multipart(sealed, [attachment.ciphertext])  # the outbox retries
    assert again.status == 200, again.raw[:300]  # the stored receipt: the message counts as received
    gw = pair.au.gw
    async with gw.engine.connect() as conn:
        query = select(attachments.c.path).where(attachments.c.message_id == payload.id)
        paths = (await conn.execute(query)).scalars().all()
    assert len(paths) == 1
    assert (gw.settings.attachments_path / "in" / paths[0]).read_bytes() == attachment.ciphertext


async def test_a_full_disk_while_writing_an_attachment_leaves_no_file(
    pair: Pair, hostile: HostilePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk is full when the second attachment is written: its partial file and the first one's go all the
    same, although closing fails too; 503 store-unavailable, logged by the errno's name, nothing stored."""
    first, second = make_attachment(b"first statement"), make_attachment(b"second statement")
    payload = hostile.payload(attachments=[first.ref.model_dump(), second.ref.model_dump()])
    real_init = AttachmentFile.__init__
    opened: list[Path] = []

    def open_on_a_filling_disk(self: AttachmentFile, directory: Path, name: str) -> None:
        real_init(self, directory, name)
        opened.append(self.partial)
        if len(opened) == 2:
            self._file = _FullDisk(self._file)  # type: ignore[assignment]

    monkeypatch.setattr(AttachmentFile, "__init__", open_on_a_filling_disk)
    before = await stored(pair.au.gw)
    with structlog.testing.capture_logs() as logs:
        answer = await hostile.post_multipart(hostile.seal(payload), [first.ciphertext, second.ciphertext])
    assert (answer.status, answer.document["code"]) == (503, "store-unavailable"), answer.raw[:300]
    assert [entry["error"] for entry in logs if entry["event"] == "store_unavailable"] == ["ENOSPC"]
    assert len(opened) == 2 and not [path for path in opened if path.exists()]
    assert await stored(pair.au.gw) == before


async def test_concurrent_duplicate_deliveries_store_one_message_and_keep_its_file(
    pair: Pair, hostile: HostilePeer
) -> None:
    """The same bytes delivered several times at once (a sender retrying on a timeout): one row, one file, every
    answer the same receipt."""
    attachment = make_attachment(os.urandom(2 * CHUNK_SIZE + 100))
    payload = hostile.payload(attachments=[attachment.ref.model_dump()])
    sealed = hostile.seal(payload)
    before = await stored(pair.au.gw)
    answers = await asyncio.gather(*(hostile.post_multipart(sealed, [attachment.ciphertext]) for _ in range(6)))
    assert [answer.status for answer in answers] == [200] * 6, [answer.raw[:200] for answer in answers]
    assert len({answer.document["receipt"] for answer in answers}) == 1
    after = await stored(pair.au.gw)
    assert after.messages == before.messages + 1 and after.attachments == before.attachments + 1
    # each delivery writes a file of its own name: <message id>.<position>.<random>
    (name,) = after.files
    assert re.fullmatch(rf"in/{payload.id}\.0\.[0-9a-f]{{16}}", name), name
    assert (pair.au.gw.settings.attachments_path / name).read_bytes() == attachment.ciphertext
