"""Accepting an envelope from a peer: verify completely, store as received, record, answer with a signed receipt.

The checklist, in order (each failure is a typed error; nothing is stored but the ledgered refusal):

1. the peer is authenticated (mutual TLS pin, or the loopback development flag) and listed in a valid directory,
   and not blocked by a ledger alarm;
2. the routing header is inside the profile and names that peer as its sender;
3. a message id seen before: the same envelope bytes get the stored receipt again, other bytes are a replay;
4. the marking is within our own accreditation in the directory (whatever the sender checked);
5. the envelope opens with our key and its signature verifies under a key the directory lists for the sender;
6. its time is neither too far ahead nor too old;
7. what the content asks of us: an answer no lower than what it answers unless a downgrade is declared, a consent
   only about a message the peer sent us, a valid confidentiality answer (gateway/policy.py);
8. each attachment stream matches its signed manifest entry (size and SHA-256 of the ciphertext);
9. in one group commit: the message row, its attachments, the case, the "received" ledger event (and, for an
   answer, the event on the message it answers; downgrades and consents), a checkpoint and the receipt.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from crypto.attachments import CiphertextVerifier
from crypto.envelope import OpenedEnvelope, open_envelope, read_envelope
from crypto.errors import AttachmentError
from crypto.receipts import sign_receipt, sign_refusal
from gateway.committer import Finish, Tx, done
from gateway.consultations import Link, incoming_link
from gateway.context import Gateway
from gateway.files import AttachmentFile, remove_quietly
from gateway.limits import MIN_ATTACHMENT_RATE, BodyStalled
from gateway.logs import get_logger
from gateway.policy import ConfidentialityAnswerRequired, check_answer_received
from gateway.requests import StatusReport, record_peer_status, request_type_of, schedule_status_answer, status_report_of
from protocol.content import Consent, Forwarded, confidentiality_answer, consent_of
from protocol.errors import ComityError, InvalidMessage
from protocol.events import ANSWER_EFFECTS, EventType
from protocol.lifecycle import Side
from protocol.markings import asks_confidentiality, embargo_until
from protocol.messages import MessageKind, check_freshness
from protocol.receipts import Receipt, Refusal
from protocol.stats import facets_of_content
from protocol.timefmt import format_time
from store.case_stats import ANSWER_MILESTONES, CaseStats
from store.cases import Cases, Consents
from store.errors import StoreUnavailable
from store.messages import AttachmentRow, MessageRow, Messages

__all__ = ["AttachmentParts", "EnvelopeRefused", "Received", "receive_envelope", "refuse"]

# returns the chunks of the next attachment part, or None when the body has no more parts
AttachmentParts = Callable[[], Awaitable[AsyncIterator[bytes] | None]]


class PeerError(ComityError):
    code = "unknown-peer"


class SenderMismatch(ComityError):
    code = "sender-mismatch"


class SigningKeyNotValid(ComityError):
    """Our signing key is not valid now in our own directory entry: a receipt signed with it would be refused by
    the sender, and stored for every redelivery; so nothing is accepted until the directory or the keys agree."""

    code = "not-ready"


class ReplayedMessage(ComityError):
    code = "replayed-message"


class AttachmentTooLarge(ComityError):
    code = "attachment-too-large"


@dataclass(frozen=True)
class Received:
    receipt: str
    duplicate: bool
    message_id: str


class EnvelopeRefused(Exception):
    """Carries the typed error and the signed refusal the federation endpoint returns."""

    def __init__(self, error: ComityError, refusal: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.refusal = refusal


async def receive_envelope(gw: Gateway, *, peer_id: str | None, sealed: bytes, next_part: AttachmentParts) -> Received:
    """Run the checklist of the module docstring; raise :class:`EnvelopeRefused` with a signed refusal."""
    digest = hashlib.sha256(sealed).hexdigest()
    claimed: str | None = None
    message_id: str | None = None
    try:
        # 1. the peer is listed in a valid directory
        if peer_id is None:
            raise PeerError("the client certificate matches no authority in the directory")
        gw.peer(peer_id)
        if not gw.signing_key_valid(gw.clock()):
            raise SigningKeyNotValid("our signing key is not valid now in our directory entry; try again later")
        # 2. routing header in profile, naming the authenticated peer
        read = read_envelope(sealed, max_bytes=gw.settings.max_envelope_bytes)
        header = read.header
        claimed, message_id = header.from_, header.id
        if header.from_ != peer_id:
            raise SenderMismatch(f"envelope claims to come from {header.from_} but the peer is {peer_id}")
        # 3. duplicates and replays (before the marking check: a receipted message keeps its receipt); one delivery
        # of an id at a time, so that copies sent at once do not all pass this check and then fail a group commit
        async with _alone(gw, header.id):
            known = await gw.ids_seen.get(header.id)
            if known is not None:
                if known.direction == "in" and known.envelope_sha256 == digest and known.receipt:
                    return Received(known.receipt, True, header.id)
                raise ReplayedMessage(f"message id {header.id} was already used for another envelope")
            # the receiving gateway enforces its own accreditation too, whatever the sender checked (DESIGN.md)
            own = gw.directory.authority(gw.authority_id).accreditation
            gw.scheme.check_accreditation(header.marking, own.max_level, own.caveats, gw.authority_id)
            # 5. decrypt and verify under a key the directory lists for the sender
            now = gw.clock()
            opened = open_envelope(
                read,
                recipient_keys=gw.receiving_keys(now),
                sender_keys=gw.peer(header.from_).signing_keys_at(now),
                expected_recipient=gw.authority_id,
                max_bytes=gw.settings.max_envelope_bytes,
            )
            # 6. freshness
            check_freshness(
                opened.payload.iat,
                int(now.timestamp()),
                gw.settings.max_clock_skew_seconds,
                gw.settings.max_message_age_seconds,
            )
            # 7. what the content asks of us: no silent downgrade of an answer, a consent about a message it sent us
            context = await _answer_context(gw, opened)
            # 8. attachments against the signed manifest
            files = await _receive_attachments(gw, opened, next_part)
            # 9. store, record, receipt: one group commit
            try:
                return await _commit(gw, opened, sealed, files, context)
            except IntegrityError:
                # a concurrent delivery of the same message won the race: answer as for a duplicate
                async with gw.reader.connect() as conn:
                    known = await Messages.seen(conn, header.id)
                if known is not None and known.direction == "in" and known.envelope_sha256 == digest and known.receipt:
                    return Received(known.receipt, True, header.id)
                if known is None:  # another row's key, written at once by another delivery: not a replay, try again
                    raise StoreUnavailable(
                        "a concurrent delivery wrote a row this one needs; deliver it again"
                    ) from None
                raise ReplayedMessage(f"message id {header.id} was already used for another envelope") from None
    except ComityError as error:
        # an unauthenticated client gets a signed refusal but no ledger entry: it must not grow our ledger
        refusal = await refuse(gw, error, digest, peer_id=peer_id, claimed=claimed, message_id=message_id)
        raise EnvelopeRefused(error, refusal) from None


# how long a delivery waits for another delivery of the same id to end; past it, it goes ahead as if alone (the
# other may be reading attachments from a stalled connection for as long as TCP takes to notice)
ALONE_WAIT_SECONDS = 10.0


@asynccontextmanager
async def _alone(gw: Gateway, message_id: str) -> AsyncIterator[None]:
    """While a delivery of ``message_id`` is received (checked, opened, stored), another delivery of it waits for
    that one to end, then goes through every check itself: the same bytes then find the stored receipt, other bytes
    a used id. Without this, copies sent at once (a retrying sender, or a peer flooding) all pass the duplicate
    check, and all but one fail a group commit on the message's key, taking that batch's other units with it into
    a retry one by one. The wait is bounded (``ALONE_WAIT_SECONDS``): past it the delivery goes ahead unordered, and
    a collision at the key is answered as before. Per process: replicas still meet at the key, as before."""
    our_turn = True
    if message_id in gw.receiving_ids:  # rare: only then a timer (every envelope comes through here)
        try:
            async with asyncio.timeout(ALONE_WAIT_SECONDS):
                while (busy := gw.receiving_ids.get(message_id)) is not None:
                    await busy.wait()
        except TimeoutError:
            our_turn = False
    if not our_turn:
        yield  # unordered, holding no turn
        return
    ended = gw.receiving_ids[message_id] = asyncio.Event()  # no await since the map was found free
    try:
        yield
    finally:
        del gw.receiving_ids[message_id]
        ended.set()


@dataclass(frozen=True)
class _Context:
    original: MessageRow | None  # the message of ours this one answers, if any
    case_id: str | None  # the case of the message it follows up or consents about, if we hold it
    downgraded_from: str | None
    consent: Consent | None
    confidentiality: str | None
    status: StatusReport | None = None  # a status report's validated state and event
    requested: bool = False  # we are the requested side of the case (a status query is ours to answer)
    consultation: Link | None = None  # the thread it belongs to or, for a formal request, converts


async def _answer_context(gw: Gateway, opened: OpenedEnvelope) -> _Context:
    payload = opened.payload
    original = None
    answer = confidentiality_answer(payload.content) if payload.kind is MessageKind.ACKNOWLEDGEMENT else None
    forwarded = payload.content.get("forwarded", [])
    if not isinstance(forwarded, list):
        raise InvalidMessage("content.forwarded must be a list of forwarded messages")
    for item in forwarded:
        Forwarded.parse(item)  # a malformed forwarded member is refused, not stored
    report = payload.kind is MessageKind.STATUS_REPORT
    status = status_report_of(payload.content, None, payload.iat) if report else None
    if payload.in_reply_to is None and payload.kind is not MessageKind.CONSENT:
        # nothing to look up (but a new thread or a request out of one): the common case costs no query
        return _Context(None, None, None, None, answer, status, consultation=await incoming_link(gw, payload))
    case_id = None
    async with gw.reader.connect() as conn:
        if payload.in_reply_to is not None:
            found = await Messages.find(conn, payload.in_reply_to)
            if found is not None and found.peer == payload.from_:
                case_id = found.case_id  # a follow-up joins the case, whichever side opened it
                original = found if found.direction == "out" else None
        if (  # check 19 before check 20, as docs/protocol.md section 7 orders them
            payload.kind is MessageKind.ACKNOWLEDGEMENT
            and original is not None
            and asks_confidentiality(original.marking)
            and answer is None
        ):
            raise ConfidentialityAnswerRequired("an acknowledgement of this request must answer art. 46(20)")
        downgraded = await check_answer_received(gw, conn, original, payload.marking, payload.content)
        consent = None
        if payload.kind is MessageKind.CONSENT:
            consent = consent_of(payload.content)
            about = await Messages.find(conn, consent.message_id)
            if about is None or about.direction != "in" or about.peer != payload.from_:
                raise InvalidMessage(f"{payload.from_} can only consent about a message it sent us")
            case_id = about.case_id
        requested = False
        if case_id is not None and payload.kind in (MessageKind.STATUS_REPORT, MessageKind.STATUS_QUERY):
            opening = await Messages.find(conn, case_id)
            requested = opening is not None and opening.direction == "in"
            if status is not None:  # the peer's side may cause the event it reports (protocol/lifecycle.py)
                side = Side.REQUESTING if requested else Side.REQUESTED
                status = status_report_of(payload.content, side, payload.iat)
    link = await incoming_link(gw, payload)  # the thread a consultation belongs to, or a request converts
    return _Context(original, case_id, downgraded, consent, answer, status, requested, link)


async def _receive_attachments(
    gw: Gateway, opened: OpenedEnvelope, next_part: AttachmentParts
) -> list[tuple[AttachmentRow, AttachmentFile]]:
    directory = gw.settings.attachments_path / "in"
    refs = opened.payload.attachments
    done: list[tuple[AttachmentRow, AttachmentFile]] = []
    if not refs:  # the common case: no timer
        if await next_part() is not None:
            raise InvalidMessage("the body carries more parts than the manifest lists")
        return done
    for position, ref in enumerate(refs):  # every size before any part is read (check 22)
        if ref.ct_size > gw.settings.max_attachment_bytes:
            raise AttachmentTooLarge(f"attachment {position} is larger than this gateway accepts")
    # the attachments must keep coming at 64 KiB/s on average after a grace of body_read_seconds from when the first
    # was awaited (decisions 86, 118): the deadline moves with the bytes that arrive, not with the sizes the manifest
    # claims, so neither a small part trickling before large ones nor thousands of tiny parts hold the slot longer
    # than what they send is worth. The time we spend on our disk (opening, hashing, writing, syncing) is added
    # back: a slow disk of ours is not the peer's stall
    loop = asyncio.get_running_loop()
    begun = loop.time()
    ends = begun + gw.settings.body_read_seconds
    deadline = asyncio.timeout_at(ends)
    waited_for = "the end of the body"

    def ours(since: float, received: int = 0) -> None:
        nonlocal ends
        ends += loop.time() - since + received / MIN_ATTACHMENT_RATE
        deadline.reschedule(ends)

    try:
        try:
            async with deadline:
                for position, ref in enumerate(refs):
                    waited_for = f"attachment {position}"
                    part = await next_part()
                    if part is None:
                        raise AttachmentError(f"attachment {position} is missing from the body")
                    started = loop.time()
                    # a name of its own per delivery: concurrent deliveries of one message never share or delete one
                    target = AttachmentFile(directory, f"{opened.payload.id}.{position}.{secrets.token_hex(8)}")
                    done.append((AttachmentRow(position, ref.ct_size, ref.ct_sha256, target.final.name), target))
                    verifier = CiphertextVerifier(ref)
                    ours(started)
                    async for chunk in part:
                        started = loop.time()
                        verifier.push(chunk)
                        target.write(chunk)
                        ours(started, len(chunk))
                    started = loop.time()
                    verifier.finish()
                    target.close()  # one file open at a time, however many parts
                    ours(started)
                waited_for = "the end of the body"
                if await next_part() is not None:
                    raise InvalidMessage("the body carries more parts than the manifest lists")
        except TimeoutError:
            if not deadline.expired():
                raise
            raise BodyStalled(f"{waited_for} did not arrive within {ends - begun:.1f} s") from None
        for _, target in done:
            target.commit()
        return done
    except BaseException:
        for _, target in done:
            target.discard()
            remove_quietly(target.final)  # renamed already, if a later one failed to commit (a full disk)
        raise


async def _commit(
    gw: Gateway,
    opened: OpenedEnvelope,
    sealed: bytes,
    files: list[tuple[AttachmentRow, AttachmentFile]],
    context: _Context,
) -> Received:
    payload, digest = opened.payload, opened.sha256
    actor = f"peer:{payload.from_}"
    # a follow-up joins the case of what it follows; anything else opens a case of its own, for a supervisor to assign,
    # and so does a request, even one in reply to a message: a new request to track (decision 144)
    request = payload.kind is MessageKind.REQUEST
    case_id = payload.id if request else (context.case_id or payload.id)

    async def unit(tx: Tx) -> Finish[Received]:
        tx.wants_checkpoint = True  # the receipt carries a checkpoint that covers its own event
        now = tx.clock()
        if case_id == payload.id:  # a request's case starts its life cycle as received
            await Cases.create(
                tx.conn,
                case_id,
                None,
                now,
                state="received" if request else None,
                request_type=request_type_of(payload.content) if request else None,
            )
            if request:  # statistics: the request's coded facets, extracted here where the plaintext is
                await CaseStats.open(
                    tx.conn,
                    case_id,
                    direction="in",
                    counterpart=payload.from_,
                    country=gw.directory.authority(payload.from_).country,
                    at=now,
                    state="received",
                    facets=facets_of_content(payload.content),
                    hidden_until=embargo_until(payload.marking),
                )
        index = tx.record_message(EventType.RECEIVED, actor, payload, digest, at=now)
        if context.consultation is not None:
            await context.consultation.apply(tx, payload.id, actor)
        if context.original is not None:
            await _record_answer(tx, context, payload.kind, payload.id, payload.from_)
        if context.downgraded_from is not None:
            tx.record_downgrade(actor, payload)
        if context.status is not None and context.case_id is not None:
            await record_peer_status(tx, context.case_id, context.status, payload.from_)
        if context.consent is not None:
            await Consents.record(
                tx.conn, context.consent.message_id, context.consent.recipient, payload.from_, payload.id, now
            )
            tx.record(
                EventType.CONSENT_RECEIVED,
                actor,
                message_id=context.consent.message_id,
                related_id=payload.id,
                to=context.consent.recipient,
            )

        async def finish(checkpoint: str) -> Received:
            receipt = Receipt.parse(
                {
                    "message_id": payload.id,
                    "from": gw.authority_id,
                    "to": payload.from_,
                    "envelope_sha256": digest,
                    "received_at": format_time(now),
                    "ledger_index": index,
                    "checkpoint": checkpoint,
                }
            )
            token = sign_receipt(receipt, gw.signing_key(now))
            await Messages.insert(
                tx.conn,
                id=payload.id,
                direction="in",
                peer=payload.from_,
                kind=payload.kind.value,
                in_reply_to=payload.in_reply_to,
                marking=payload.marking,
                state="received",
                sealed=sealed,
                envelope_sha256=digest,
                created_at=now,
                received_at=now,
                receipt=token,
                ledger_index=index,
                case_id=case_id,
                attachment_rows=[row for row, _ in files],
            )
            return Received(token, False, payload.id)

        return finish

    try:
        received = await gw.commit(unit)
    except Exception:  # not on cancellation: the shielded unit may still commit with these files
        if not await _kept(gw, payload.id, digest, [row.path for row, _ in files]):
            for _, target in files:
                remove_quietly(target.final)
        raise
    gw.metrics.received.inc()
    get_logger(message_id=payload.id, peer=payload.from_).info("envelope_received", kind=payload.kind.value)
    if payload.kind is MessageKind.STATUS_QUERY and context.requested and context.case_id is not None:
        # art. 46(24): the gateway answers by itself, through the outbox, after the receive commit
        schedule_status_answer(gw, payload.id, context.case_id, payload.from_)
    return received


async def _kept(gw: Gateway, message_id: str, digest: str, paths: list[str]) -> bool:
    """Whether a commit that raised went through all the same (its answer lost, decision 96) and stored this
    delivery with these files, which must then stay; also True when the database cannot tell, so that what may
    be needed is kept (an orphan costs disk, a deleted file loses a receipted attachment)."""
    if not paths:
        return False
    try:
        async with gw.reader.connect() as conn:
            known = await Messages.seen(conn, message_id)
            stored = {row.path for row in await Messages.attachments(conn, message_id)} if known else set()
    except Exception:
        return True
    return known is not None and known.direction == "in" and known.envelope_sha256 == digest and set(paths) <= stored


async def _record_answer(tx: Tx, context: _Context, kind: MessageKind, answer_id: str, peer: str) -> None:
    """An acknowledgement or response from the peer is an event on the message it answers, on our side too."""
    effect = ANSWER_EFFECTS.get(kind)
    if context.original is None or effect is None:
        return
    event, state = effect
    original_id = context.original.id
    now = tx.clock()
    # an acknowledgement says whether the requested State can keep the request confidential (art. 46(20))
    tx.record(
        event, f"peer:{peer}", at=now, message_id=original_id, related_id=answer_id, state=context.confidentiality
    )
    await CaseStats.milestone(tx.conn, original_id, ANSWER_MILESTONES[event], now)
    changes: dict[str, str] = {"state": state}
    if context.confidentiality is not None:
        changes["confidentiality_answer"] = context.confidentiality
    await Messages.update(tx.conn, original_id, **changes)


async def refuse(
    gw: Gateway,
    error: ComityError,
    digest: str,
    *,
    peer_id: str | None,
    claimed: str | None,
    message_id: str | None,
) -> str:
    """Sign a refusal and, for an authenticated peer, ledger it in its own transaction (it changes nothing else).

    The refusal is addressed to, and ledgered under, the authenticated peer; a different sender claimed inside the
    envelope is kept as the entry's subject.
    """
    counterpart = peer_id or claimed
    refused_at = gw.clock()
    key = gw.signing_key(refused_at)
    refusal = Refusal.parse(
        {
            "message_id": message_id,
            "from": gw.authority_id,
            "to": counterpart,
            "envelope_sha256": digest,
            "refused_at": format_time(refused_at),
            "code": error.code,
            "reason": error.message[:500],
        }
    )
    gw.metrics.refused.labels(code=error.code).inc()
    log = get_logger(message_id=message_id, peer=counterpart)
    if peer_id is None:
        log.warning("unauthenticated_envelope_refused", code=error.code)
        return sign_refusal(refusal, key)

    async def unit(tx: Tx) -> Finish[None]:
        tx.record(
            EventType.REFUSED,
            f"peer:{peer_id}",
            message_id=message_id,
            envelope_sha256=digest,
            reason=error.code,
            from_=peer_id,
            subject=f"claimed:{claimed}" if claimed and claimed != peer_id else None,
        )
        return await done(None)

    await gw.commit(unit)
    log.warning("envelope_refused", code=error.code)
    return sign_refusal(refusal, key)
