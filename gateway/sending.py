"""Composing and submitting a message: attachments encrypted as they stream in, the payload signed and sealed to
the recipient, the sender's archive copy sealed to its own archive key, and the message persisted in the outbox
with its "submitted" event before anything is sent."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from crypto.attachments import AttachmentEncryptor, ciphertext_size
from crypto.envelope import encrypt_signed, seal_envelope
from gateway.committer import Finish, Tx, done
from gateway.consultations import Link, outgoing_link
from gateway.context import Gateway
from gateway.files import AttachmentFile, remove_quietly
from gateway.logs import get_logger
from gateway.policy import (
    AccessRefused,
    ConfidentialityAnswerRequired,
    ConsentRequired,
    Embargoed,
    Outgoing,
    check_outgoing,
    ledger_submit_refusal,
)
from gateway.requests import SYSTEM_USER, Completeness, check_completeness
from protocol.checklist import IncompleteRequest
from protocol.content import GATEWAY_MEMBERS, consent_of
from protocol.errors import ComityError, InvalidMessage, error_code
from protocol.events import ANSWER_EFFECTS, EventType
from protocol.markings import MarkingRefused
from protocol.messages import MAX_ATTACHMENTS, AttachmentRef, Marking, MessageKind, MessagePayload, new_message_id
from store.case_stats import ANSWER_MILESTONES, CaseStats
from store.cases import Cases
from store.errors import NotFound
from store.messages import AttachmentRow, Messages
from store.outbox import DIRECT_LEASE
from store.users import User

__all__ = ["Draft", "NewAttachment", "submit_message"]


@dataclass(frozen=True)
class NewAttachment:
    name: str
    media_type: str
    chunks: AsyncIterator[bytes]

    def __post_init__(self) -> None:
        # what the signed manifest admits (protocol/messages.py AttachmentRef), checked before a byte is encrypted
        if not 1 <= len(self.name) <= 255:
            raise InvalidMessage("an attachment's file name must have 1 to 255 characters")
        if not 1 <= len(self.media_type) <= 127:
            raise InvalidMessage("an attachment's media type must have 1 to 127 characters")
        for text in (self.name, self.media_type):  # a byte that is not UTF-8 reaches us as a lone surrogate
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidMessage("an attachment's file name and media type must be UTF-8 text") from None


@dataclass(frozen=True)
class Draft:
    to: str
    kind: MessageKind
    marking: Marking
    content: dict[str, Any]
    in_reply_to: str | None = None
    forwards: tuple[str, ...] = ()  # ids of earlier messages whose content this one passes on
    downgrade_reason: str | None = None  # a supervisor's reason for answering below the original marking
    override_reason: str | None = None  # a supervisor's reason for sending a request the checklist finds incomplete
    message_id: str | None = None  # chosen beforehand when the content names the message itself (a new thread)


# a change to commit together with a message (see submit_message)
Along = Callable[[Tx], Awaitable[None]]


class AttachmentTooLarge(ComityError):
    code = "attachment-too-large"


async def submit_message(
    gw: Gateway,
    user: User,
    draft: Draft,
    attachments: Sequence[NewAttachment] | AsyncIterable[NewAttachment] = (),
    *,
    along: Along | None = None,
) -> str:
    """Validate, seal and persist a message in the outbox; return its id. Nothing is sent from here.

    ``along`` runs in the same transaction, before the message's own rows and events: the change the message
    reports (a case move and its status report commit together, or neither does)."""
    if draft.to == gw.authority_id:
        raise InvalidMessage("a gateway does not send messages to itself")
    peer = gw.peer(draft.to)
    actor = _actor(user)
    message_id = draft.message_id or new_message_id()
    if written := sorted(GATEWAY_MEMBERS & set(draft.content)):
        raise InvalidMessage(
            f"content may not carry {', '.join(written)}: the gateway writes them from 'forwards', "
            "'downgrade_reason' and 'override_reason' once it has checked them"
        )
    try:
        # complete the first time (docs/requests.md): a formal request lacking blocking elements is refused
        completeness = check_completeness(
            gw,
            user,
            to=draft.to,
            kind=draft.kind,
            marking=draft.marking,
            content=draft.content,
            override_reason=draft.override_reason,
        )
        outgoing = await check_outgoing(
            gw,
            user,
            to=draft.to,
            kind=draft.kind,
            marking=draft.marking,
            content=draft.content,
            in_reply_to=draft.in_reply_to,
            forwards=draft.forwards,
            downgrade_reason=draft.downgrade_reason,
        )
        # informal consultations: the thread a message belongs to, or the one a formal request comes out of
        link = await outgoing_link(
            gw,
            user,
            message_id=message_id,
            to=draft.to,
            kind=draft.kind,
            marking=draft.marking,
            content=draft.content,
            in_reply_to=draft.in_reply_to,
        )
    except (
        MarkingRefused,
        ConsentRequired,
        AccessRefused,
        Embargoed,
        ConfidentialityAnswerRequired,
        IncompleteRequest,
    ) as refused:
        # the sending gateway's refusals are evidence too: ledgered, and nothing is sealed or sent
        await ledger_submit_refusal(gw, actor, refused, to=draft.to, kind=draft.kind, marking=draft.marking)
        raise
    after = await _follows(gw, message_id, draft, link)
    refs, files = await _encrypt_attachments(gw, message_id, attachments)
    now = gw.clock()  # the sealing time: iat, and the keys valid then
    try:
        payload = MessagePayload.parse(
            {
                "id": message_id,
                "from": gw.authority_id,
                "to": draft.to,
                "kind": draft.kind.value,
                "iat": int(now.timestamp()),
                "in_reply_to": draft.in_reply_to,
                "marking": draft.marking.to_json(),
                "attachments": [ref.model_dump() for ref in refs],
                "content": {**draft.content, **outgoing.content, **completeness.content},
            }
        )
        sealed = seal_envelope(payload, gw.signing_key(now), peer.encryption_key_at(now))
        archive = encrypt_signed(sealed.signed, payload, gw.archive_public)
        envelope = sealed.compact.encode("ascii")
        # a running sender takes a message without attachments straight from here, already claimed: no claim
        # transaction, no re-read; attachments stream from their files through the outbox's claim loop, and so
        # does a message that must wait for an earlier one's receipt
        direct = gw.direct_delivery if not files and after is None else None
        archived = archive.encode("ascii")
        digest, submitted_at = await _persist(
            gw,
            user,
            payload,
            envelope,
            archived,
            files,
            outgoing,
            completeness,
            link,
            direct=direct is not None,
            along=along,
            after=after,
        )
    except Exception as failed:  # not on cancellation: the shielded commit may still keep these files
        stored = await _stored(gw, message_id)
        if stored is not True:  # a commit that failed for sure (False), or no telling (None: keep what may be needed)
            if stored is False:
                for _, path in files:
                    remove_quietly(path.final)
            raise
        # the commit went through but its answer was lost (decision 96): the message is queued with its files; the
        # claim loop sends it (a direct delivery's row waits out its lease)
        get_logger(message_id=message_id, peer=draft.to).warning(
            "submission_committed_despite_error", error=error_code(failed)
        )
        direct = None
    if direct is not None:
        direct(message_id, draft.to, envelope, digest, submitted_at)
    else:
        if after is not None:
            gw.await_delivery_of(after)
        gw.outbox_wakeup.set()
    get_logger(message_id=message_id, peer=draft.to).info(
        "message_submitted", kind=draft.kind.value, attachments=len(refs)
    )
    return message_id


async def _follows(gw: Gateway, message_id: str, draft: Draft, link: Link | None) -> str | None:
    """The earlier message of ours to the same peer that this one follows and that still waits for its receipt:
    the peer refuses for good what names a message it does not hold yet (a reply in a thread it has not received,
    a consent about a message still on its way), and after an outage retries come due in any order (decision
    112). The latest of those it names, or None (a new message names nothing: no query)."""
    named = {draft.in_reply_to}
    if link is not None:
        named |= {link.thread_id, link.about}
    if draft.kind is MessageKind.CONSENT:
        named.add(consent_of(draft.content).message_id)
    earlier = {name for name in named if name is not None and name != message_id}
    if not earlier:
        return None
    async with gw.reader.connect() as conn:
        return await gw.outbox.waiting_among(conn, earlier, draft.to)


async def _stored(gw: Gateway, message_id: str) -> bool | None:
    """Whether ``message_id`` is in the database; None when the database cannot tell."""
    try:
        async with gw.reader.connect() as conn:
            await Messages.get(conn, message_id)
    except NotFound:
        return False
    except Exception:
        return None
    return True


def _actor(user: User) -> str:
    return "system" if user.id == SYSTEM_USER.id else f"user:{user.username}"


async def _each(attachments: Sequence[NewAttachment] | AsyncIterable[NewAttachment]) -> AsyncIterator[NewAttachment]:
    if isinstance(attachments, AsyncIterable):
        async for attachment in attachments:
            yield attachment
    else:
        for attachment in attachments:
            yield attachment


async def _encrypt_attachments(
    gw: Gateway, message_id: str, attachments: Sequence[NewAttachment] | AsyncIterable[NewAttachment]
) -> tuple[list[AttachmentRef], list[tuple[AttachmentRow, AttachmentFile]]]:
    directory = gw.settings.attachments_path / "out"
    refs: list[AttachmentRef] = []
    files: list[tuple[AttachmentRow, AttachmentFile]] = []
    position = 0
    writing: AttachmentFile | None = None  # the file being written, until it is committed
    try:
        async for attachment in _each(attachments):
            if position == MAX_ATTACHMENTS:  # what a receiver refuses (check 15): refused here, before sealing
                raise InvalidMessage(f"at most {MAX_ATTACHMENTS} attachments per message")
            writing = AttachmentFile(directory, f"{message_id}.{position}")
            encryptor = AttachmentEncryptor()
            writing.write(encryptor.start())
            size = 0
            async for chunk in attachment.chunks:
                size += len(chunk)
                # the limit is on the ciphertext, as the receiver checks it (protocol.md 7, check 22; decision 111)
                if ciphertext_size(size) > gw.settings.max_attachment_bytes:
                    raise AttachmentTooLarge(
                        f"attachment {position} exceeds {gw.settings.max_attachment_bytes} bytes once encrypted"
                    )
                writing.write(encryptor.push(chunk))
            writing.write(encryptor.finish())
            ref = encryptor.manifest_entry(attachment.name, attachment.media_type)
            writing.commit()
            refs.append(ref)
            files.append((AttachmentRow(position, ref.ct_size, ref.ct_sha256, writing.final.name), writing))
            writing = None
            position += 1
    except BaseException:
        if writing is not None:
            writing.discard()  # an aborted upload leaves neither a partial file nor an open handle
        for _, target in files:
            remove_quietly(target.final)
        raise
    return refs, files


async def _persist(
    gw: Gateway,
    user: User,
    payload: MessagePayload,
    sealed: bytes,
    archive: bytes,
    files: list[tuple[AttachmentRow, AttachmentFile]],
    outgoing: Outgoing,
    completeness: Completeness,
    link: Link | None = None,
    *,
    direct: bool = False,
    along: Along | None = None,
    after: str | None = None,
) -> tuple[str, datetime]:
    """Commit the message, its case, its outbox row and its events; return the envelope's SHA-256 and the time of
    its submission."""
    digest = hashlib.sha256(sealed).hexdigest()
    # a request opens a case of its own, even one sent in reply to a message (it is a new request to track, with its
    # own life cycle and statistics); any other message joins the case of what it follows, if it follows one
    request = payload.kind is MessageKind.REQUEST
    case_id = payload.id if request else (outgoing.case_id or payload.id)
    actor = _actor(user)
    # a request's case starts its life cycle as sent (protocol/lifecycle.py); other messages' cases have none
    case_state = "sent" if request else None

    async def unit(tx: Tx) -> Finish[datetime]:
        now = tx.clock()
        if along is not None:
            await along(tx)
        if case_id == payload.id:
            await Cases.open(
                tx.conn,
                case_id,
                user.unit,  # the users without a unit are a unit of their own: the empty one (decision 115)
                user.id,
                actor,
                now,
                state=case_state,
                request_type=completeness.request_type,
            )
            if case_state is not None:  # statistics: the request's coded facets, never its content
                await CaseStats.open(
                    tx.conn,
                    case_id,
                    direction="out",
                    counterpart=payload.to,
                    country=gw.directory.authority(payload.to).country,
                    at=now,
                    state=case_state,
                    facets=completeness.facets,
                    officer_id=None if user.id == SYSTEM_USER.id else user.id,
                )
        await Messages.insert(
            tx.conn,
            id=payload.id,
            direction="out",
            peer=payload.to,
            kind=payload.kind.value,
            in_reply_to=payload.in_reply_to,
            marking=payload.marking,
            state="queued",
            sealed=sealed,
            archive=archive,
            envelope_sha256=digest,
            created_by=None if user.id == SYSTEM_USER.id else user.id,
            created_at=now,
            case_id=case_id,
            attachment_rows=[row for row, _ in files],
        )
        await gw.outbox.enqueue(
            tx.conn, payload.id, payload.to, now, leased_until=now + DIRECT_LEASE if direct else None, after=after
        )
        tx.record_message(EventType.SUBMITTED, actor, payload, digest, at=now)
        if link is not None:
            await link.apply(tx, payload.id, actor)
        if completeness.overridden:  # the reason travels in the signed content (check_override), not the ledger
            tx.record(EventType.REQUEST_CHECK_OVERRIDDEN, actor, message_id=payload.id, to=payload.to)
        if outgoing.downgraded_from is not None:
            tx.record_downgrade(actor, payload)
        for item in outgoing.content.get("forwarded", ()):  # its content was decrypted to go on: say where to
            source = item["message_id"]
            tx.record(
                EventType.OPENED,
                actor,
                at=now,
                message_id=source,
                purpose="forward",
                related_id=payload.id,
                to=payload.to,
            )
        effect = ANSWER_EFFECTS.get(payload.kind)
        if outgoing.answers and payload.in_reply_to is not None and effect is not None:
            event, state = effect
            tx.record(event, actor, at=now, message_id=payload.in_reply_to, related_id=payload.id)
            await Messages.update(tx.conn, payload.in_reply_to, state=state)
            await CaseStats.milestone(tx.conn, payload.in_reply_to, ANSWER_MILESTONES[event], now)
        return await done(now)

    return digest, await gw.commit(unit)
