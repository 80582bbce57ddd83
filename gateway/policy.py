"""The enforcement points of confidentiality markings (docs/markings.md lists each with the test that proves it).

* sending: the recipient's accreditation (level and honoured caveats); an answer's marking not below the message it
  answers unless a supervisor records a downgrade with a reason; content under a use limitation or no-onward caveat
  forwarded to a third authority only with the originator's signed consent; a request asking for confidentiality
  (art. 46(20)) acknowledged with an answer on whether the requested State can comply;
* opening: clearance at or above the level, authorisation for every caveat, an assignment to the case (or
  supervision of its unit), and no embargo still running;
* receiving: our own accreditation (gateway/receiving.py) and no silent downgrade of an answer.

Every refusal is a typed error and a ledger event in a transaction of its own; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.committer import Finish, Tx, done
from gateway.context import Gateway
from gateway.problems import ShownAs
from protocol.content import confidentiality_answer, consent_of, downgrade_of
from protocol.errors import ComityError, InvalidMessage
from protocol.events import ANSWER_EFFECTS, EventType
from protocol.markings import MarkingRefused, asks_confidentiality, embargo_until, limits_onward
from protocol.messages import Marking, MessageKind, is_message_id
from store.accounts import CONTENT_OPEN
from store.cases import Case, Cases, Consents
from store.casework import CaseWork
from store.messages import MessageRow, Messages
from store.users import User

__all__ = [
    "AccessRefused",
    "ConfidentialityAnswerRequired",
    "ConsentRequired",
    "Embargoed",
    "Outgoing",
    "check_answer_received",
    "check_opening",
    "check_outgoing",
    "ledger_refusal",
    "refuse_case_access",
    "running_embargo",
]


class AccessRefused(ComityError):
    code = "forbidden"


class Unseen(ShownAs, AccessRefused):
    """An officer or supervisor refused a message, case or thread she may not know exists (decisions 94, 100):
    ledgered as ``forbidden``, answered as if there were no such thing (``shown_detail`` and ``shown_code``: what
    the same request gets for an id that names nothing, most often the store's own ``not-found``)."""

    def __init__(self, message: str, shown_detail: str, shown_code: str = "not-found") -> None:
        super().__init__(message)
        self.shown_detail = shown_detail
        self.shown_code = shown_code


class Embargoed(ComityError):
    code = "embargoed"


class ConsentRequired(ComityError):
    code = "consent-required"


class ConfidentialityAnswerRequired(ComityError):
    """An acknowledgement of a request asking for confidentiality must say whether it can be kept (art. 46(20))."""

    code = "confidentiality-answer-required"


@dataclass(frozen=True)
class Outgoing:
    """What the checks decided about a draft: extra signed content and the case it belongs to."""

    content: dict[str, Any]
    case_id: str | None
    downgraded_from: str | None
    answers: bool = False  # it answers a message we received (acknowledgement, response): that one moves on


async def ledger_refusal(
    gw: Gateway, type: EventType, actor: str, error: ComityError, *, message_id: str | None, **fields: Any
) -> None:
    """Record a policy refusal; the refused change itself never happens."""

    async def unit(tx: Tx) -> Finish[None]:
        tx.record(type, actor, message_id=message_id, reason=error.code, **fields)
        return await done(None)

    await gw.commit(unit)


async def ledger_submit_refusal(
    gw: Gateway, actor: str, error: ComityError, *, to: str, kind: MessageKind, marking: Marking
) -> None:
    """Record a refused submission by what it would have sent (to whom, what kind, under which marking), never its
    content: the sending gateway's refusals are evidence too."""
    await ledger_refusal(
        gw, EventType.SUBMIT_REFUSED, actor, error, message_id=None, to=to, kind=kind.value, marking=marking.to_json()
    )


async def check_outgoing(
    gw: Gateway,
    user: User,
    *,
    to: str,
    kind: MessageKind,
    marking: Marking,
    content: dict[str, Any],
    in_reply_to: str | None,
    forwards: tuple[str, ...],
    downgrade_reason: str | None,
) -> Outgoing:
    peer = gw.peer(to)
    gw.scheme.check_accreditation(marking, peer.accreditation.max_level, peer.accreditation.caveats, to)
    extra: dict[str, Any] = {}
    case_id: str | None = None
    downgraded_from: str | None = None
    answers = False
    if in_reply_to is None and not forwards and kind is not MessageKind.CONSENT:
        return Outgoing(extra, case_id, downgraded_from, answers)  # a new message: nothing to look up
    async with gw.reader.connect() as conn:
        if in_reply_to is not None:
            original = await Messages.get(conn, in_reply_to)
            await check_case_access(gw, user, original, conn, "answering")  # first: the rest describes the message
            if original.peer != to:
                raise InvalidMessage(f"message {in_reply_to} was not exchanged with {to}")
            if kind in ANSWER_EFFECTS and original.direction != "in":
                raise InvalidMessage(f"an {kind.value} answers a message received from {to}, not one we sent")
            case_id = original.case_id  # a follow-up joins the case, whichever side opened it
            answers = original.direction == "in"
            if gw.scheme.lowers(marking, original.marking):
                await _check_downgrade(gw, conn, user, original, marking, downgrade_reason)
                extra["marking_downgrade"] = {
                    "from": original.marking.level,
                    "from_caveats": list(original.marking.caveats),
                    "reason": downgrade_reason,
                }
                downgraded_from = original.marking.level
            # the answer is checked on every acknowledgement, as the receiver checks it, not only where the request asks
            if (
                kind is MessageKind.ACKNOWLEDGEMENT
                and confidentiality_answer(content) is None
                and asks_confidentiality(original.marking)
            ):
                raise ConfidentialityAnswerRequired(
                    "the request asks for confidentiality (UNCAC art. 46(20)): acknowledge it with "
                    "'confidentiality': 'can-comply' or 'cannot-comply'"
                )
        if kind is MessageKind.CONSENT:
            about = await Messages.get(conn, consent_of(content).message_id)
            await check_case_access(gw, user, about, conn, "consenting about")
            if about.direction != "out" or about.peer != to:
                raise InvalidMessage(
                    f"a consent goes to the authority its message was sent to: message {about.id} was not sent to {to}"
                )
            if gw.scheme.lowers(marking, about.marking):  # it names the message and says where its content may go
                raise MarkingRefused(
                    f"a consent about message {about.id} carries at least its marking ({_shown(about.marking)})"
                )
            case_id = about.case_id
        if forwards:
            extra["forwarded"] = await _forwarded(gw, conn, user, to, marking, forwards)
    return Outgoing(extra, case_id, downgraded_from, answers)


async def _check_downgrade(
    gw: Gateway, conn: AsyncConnection, user: User, original: MessageRow, marking: Marking, reason: str | None
) -> None:
    """Only a supervisor of the case's unit, cleared for the original marking, records a downgrade, with a reason."""
    case = await Cases.find(conn, original.case_id) if original.case_id else None
    supervises = user.role == "supervisor" and (case is None or case.unit in (None, user.unit))
    if reason is None or not supervises or not user.cleared_for(original.marking, gw.scheme):
        lower, upper = _shown(marking), _shown(original.marking)
        raise MarkingRefused(
            f"an answer cannot carry a lower marking ({lower}) than the message it answers ({upper}) unless a "
            "supervisor of the case's unit, cleared for it, records a downgrade with a reason"
        )


def _shown(marking: Marking) -> str:
    return f"{marking.level}, caveats {', '.join(marking.caveats) or 'none'}"


async def _forwarded(
    gw: Gateway, conn: AsyncConnection, user: User, to: str, marking: Marking, forwards: tuple[str, ...]
) -> list[dict[str, Any]]:
    from gateway.reading import decrypt_row  # reading imports this module

    if CONTENT_OPEN not in user.scopes:  # forwarding decrypts what it carries on, as opening does (decision 165)
        raise AccessRefused(f"forwarding content needs a token with the {CONTENT_OPEN!r} scope")
    items = []
    for message_id in forwards:
        row = await Messages.get(conn, message_id)
        await check_opening(gw, user, row, conn)
        payload = decrypt_row(gw, row).payload
        originator = row.peer if row.direction == "in" else gw.authority_id
        if limits_onward(row.marking) and to != originator:  # back to whoever sent it to us, all of it may go
            if originator != gw.authority_id and not await Consents.granted(conn, message_id, to):
                raise ConsentRequired(
                    f"message {message_id} is under a use limitation or no-onward caveat: {originator} must "
                    f"consent before its content goes to {to}"
                )
            # content it carries forwarded in turn needs its own originator's consent, about the message that
            # brought it to us; content we never received ourselves has no one here to consent (decision 110)
            for earlier_id, earlier in _forwarded_from(payload.content):
                if earlier in (to, gw.authority_id):
                    continue
                # an id that is none (a NUL byte, nested too deep for the receiver's check) names nothing held here
                held = await Messages.find(conn, earlier_id) if is_message_id(earlier_id) else None
                if (
                    held is not None
                    and (held.direction, held.peer) == ("in", earlier)
                    and (not limits_onward(held.marking) or await Consents.granted(conn, earlier_id, to))
                ):
                    continue
                raise ConsentRequired(
                    f"message {message_id} carries content of {earlier} (message {earlier_id}) under a use "
                    f"limitation or no-onward caveat: {earlier} must consent before it goes to {to}"
                )
        # the forwarded content keeps its level and every caveat, onward ones included: a consent lets it travel
        # to that recipient, under the limits it was sent with (decision 110)
        if gw.scheme.lowers(marking, row.marking):
            raise MarkingRefused(
                f"forwarded content is marked {_shown(row.marking)}: the message must carry at least that"
            )
        items.append({"message_id": message_id, "from": payload.from_, "content": payload.content})
    return items


def _forwarded_from(content: Any) -> list[tuple[str, str]]:
    """The messages ``content`` carries forwarded, as (message id, the authority that sent it): its ``forwarded``
    items, and theirs in turn (protocol/content.py ``Forwarded``)."""
    items = content.get("forwarded") if isinstance(content, dict) else None
    found: list[tuple[str, str]] = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            found += [(str(item.get("message_id")), str(item.get("from"))), *_forwarded_from(item.get("content"))]
    return found


async def check_case_access(
    gw: Gateway,
    user: User,
    row: MessageRow,
    conn: AsyncConnection,
    doing: str,
    *,
    unseen: str | None = None,
    unseen_code: str = "not-found",
) -> None:
    """Raise unless ``user`` may act on ``row``: an officer or supervisor cleared for its marking and caveats, and
    assigned to its case or supervising the case's unit. Opening, answering and consenting all need this."""
    if user.id == 0:  # the gateway itself (automatic status answers, gateway/requests.py)
        return
    case = await Cases.find(conn, row.case_id) if row.case_id else None
    unseen = f"no message {row.id}" if unseen is None else unseen
    refuse_case_access(gw, user, row.marking, case, doing, unseen=unseen, unseen_code=unseen_code)


def refuse_case_access(
    gw: Gateway,
    user: User,
    marking: Marking,
    case: Case | None,
    doing: str,
    *,
    unseen: str | None = None,
    unseen_code: str = "not-found",
) -> None:
    """The rule of :func:`check_case_access` for a case held under ``marking`` (case work applies it to many cases
    at once). With ``unseen`` (what the store says of a message or case that does not exist), an officer or
    supervisor refused is answered that instead (:class:`Unseen`): whoever may not act on it is not shown it either
    (decision 94). Auditors and administrators see every message's metadata, never content: theirs stays a 403."""
    if user.id == 0:
        return
    if user.role not in ("officer", "supervisor"):
        raise AccessRefused(f"the {user.role} role never {doing} message content")
    refused: str | None = None
    if not user.cleared_for(marking, gw.scheme):
        refused = (
            f"{doing} needs clearance {marking.level} and authorisation for caveats "
            f"{', '.join(marking.caveats) or 'none'}"
        )
    elif not (user.role == "supervisor" and (case is None or case.unit in (None, user.unit))) and (
        case is None or user.id not in case.assignees
    ):
        refused = f"only officers assigned to the case, or supervisors of its unit, are {doing} it"
    if refused is not None:
        raise AccessRefused(refused) if unseen is None else Unseen(refused, unseen, unseen_code)


async def case_marking(conn: AsyncConnection, case_id: str) -> Marking | None:
    """The marking ``case_id`` is held under (its opening message's, or its oral request's), or None for a case
    with neither."""
    found = await CaseWork.access_facts(conn, [case_id])
    return found[case_id][1] if case_id in found else None


def check_supervising(gw: Gateway, supervisor: User, case: Case, marking: Marking | None) -> None:
    """Assigning officers to a case, or taking them off it, needs what opening it needs (decision 93): supervising
    the case's unit (or a case with none yet), and clearance for its marking and caveats (a case with no marking
    holds no content). A supervisor refused is answered as if there were no such case (decision 100)."""
    unseen = f"no case {case.id}"
    if case.unit not in (None, supervisor.unit):
        raise Unseen(f"case {case.id} belongs to another unit", unseen)
    if marking is not None and not supervisor.cleared_for(marking, gw.scheme):
        raise Unseen(
            f"assigning officers to a case needs clearance {marking.level} and authorisation for caveats "
            f"{', '.join(marking.caveats) or 'none'}",
            unseen,
        )


async def check_opening(gw: Gateway, user: User, row: MessageRow, conn: AsyncConnection) -> None:
    """Raise unless ``user`` may see the content of ``row`` now (clearance, caveats, case, embargo)."""
    await check_case_access(gw, user, row, conn, "opening")
    embargo = running_embargo(gw, row)
    if embargo is not None:
        raise Embargoed(f"the content is under embargo until {embargo.isoformat()}")


def running_embargo(gw: Gateway, row: MessageRow) -> date | None:
    """The date until which a received message's content may not be seen, if that is still ahead (UTC: the date
    binds both sides)."""
    embargo = embargo_until(row.marking)
    return embargo if row.direction == "in" and embargo is not None and gw.clock().date() < embargo else None


async def check_answer_received(
    gw: Gateway, conn: AsyncConnection, original: MessageRow | None, marking: Marking, content: dict[str, Any]
) -> str | None:
    """Refuse an answer whose marking is lower than what it answers (level, or a dropped caveat) without a declared
    downgrade naming the original marking; return the level it was downgraded from, if any."""
    if original is None or not gw.scheme.lowers(marking, original.marking):
        return None
    downgrade = downgrade_of(content)
    dropped = not set(original.marking.caveats) <= set(marking.caveats)
    if (
        downgrade is None
        or downgrade.from_level != original.marking.level
        or (dropped and set(downgrade.from_caveats) != set(original.marking.caveats))
    ):
        raise MarkingRefused(
            f"the answer is marked below what it answers ({original.marking.level}) without a recorded downgrade"
        )
    return downgrade.from_level
