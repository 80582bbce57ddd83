"""Informal consultations: the signed ``consultation`` member of a message of kind ``consultation``.

A consultation is a thread between officers of two authorities before (or beside) a formal request: UNCAC art.
46(26) and 44(17) ask the requested State to consult before it refuses or postpones, and the UNODC survey notes that
authorities lack a place for informal consultation before a formal request. Every message of the thread is an
ordinary envelope (sealed, signed, receipted, ledgered) of kind ``consultation`` whose content carries::

    "consultation": {
        "thread_id": <message id of the thread's first message (its own id for the first message)>,
        "informal": true,
        "about": <case id (the id of the request that opened it) the thread is about, or null>,
        "draft_request": <a request (protocol/requests.py) shared for review, or absent>
    }

The member is strict (no other member). ``informal`` is always ``true``: nothing in a thread is a formal request or
binds either authority; a draft request shared in a thread opens no case state and is not refused as incomplete,
but either side may run the checklist on it. A formal request that comes out of a thread names it in
``request.consultation_id`` (the link both sides keep). Sans-IO: the gateway checks the thread and the case against
what it holds (gateway/consultations.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import field_validator

from protocol.checklist import Checklist
from protocol.errors import InvalidMessage
from protocol.messages import MessageKind, StrictModel, validate_message_id
from protocol.requests import Request

__all__ = ["CONSULTATION_MEMBER", "ConsultationMember", "DraftCheck", "consultation_of", "linked_consultation"]

CONSULTATION_MEMBER = "consultation"


class ConsultationMember(StrictModel):
    thread_id: str
    informal: Literal[True]
    about: str | None = None
    draft_request: dict[str, Any] | None = None

    @field_validator("thread_id", "about")
    @classmethod
    def _ids(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_message_id(value)
        except InvalidMessage:  # pydantic wants a ValueError
            raise ValueError("must be a message id (a lowercase version-4 UUID)") from None

    def draft(self) -> Request | None:
        """The draft request shared for review, validated like a formal one (errors name fields, never values)."""
        return None if self.draft_request is None else Request.parse(self.draft_request)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"thread_id": self.thread_id, "informal": True, "about": self.about}
        if self.draft_request is not None:
            data["draft_request"] = self.draft_request
        return data


def consultation_of(
    kind: MessageKind, content: dict[str, Any], message_id: str, in_reply_to: str | None
) -> ConsultationMember | None:
    """The validated consultation member of a message, None for other kinds; :class:`InvalidMessage` otherwise.

    A ``consultation`` message must carry it; no other kind may. The first message of a thread (no ``in_reply_to``)
    names itself as the thread; a reply names another message. A consultation never carries a formal ``request``:
    a draft for review travels as ``draft_request``.
    """
    if kind is not MessageKind.CONSULTATION:
        if CONSULTATION_MEMBER in content:
            raise InvalidMessage(f"only a message of kind consultation carries content.{CONSULTATION_MEMBER}")
        return None
    if CONSULTATION_MEMBER not in content:
        raise InvalidMessage("a consultation carries content.consultation {thread_id, informal: true, about}")
    if "request" in content:
        raise InvalidMessage("a consultation is informal: share a draft as consultation.draft_request")
    member = ConsultationMember.parse(content[CONSULTATION_MEMBER])
    if in_reply_to is None and member.thread_id != message_id:
        raise InvalidMessage("the first message of a consultation is its own thread: thread_id = its id")
    if in_reply_to is not None and member.thread_id == message_id:
        raise InvalidMessage("a reply in a consultation names the thread's first message, not itself")
    member.draft()  # a malformed draft is refused, not stored
    return member


def linked_consultation(kind: MessageKind, content: dict[str, Any]) -> str | None:
    """The thread a formal request says it came from (``request.consultation_id``), if it names one."""
    if kind is not MessageKind.REQUEST:
        return None
    request = content.get("request")
    if not isinstance(request, dict) or request.get("consultation_id") is None:
        return None
    value = request["consultation_id"]
    if not isinstance(value, str):
        raise InvalidMessage("request.consultation_id must be a message id")
    return validate_message_id(value)


@dataclass(frozen=True)
class DraftCheck:
    """What the checklist found in a shared draft: element ids only (no content), kept beside the thread."""

    request_type: str
    blocking: tuple[str, ...]
    warnings: tuple[str, ...]

    @classmethod
    def of(cls, checklist: Checklist) -> DraftCheck:
        return cls(
            checklist.request_type.value,
            tuple(item.element for item in checklist.blocking),
            tuple(item.element for item in checklist.warnings),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "request_type": self.request_type,
            "complete": not self.blocking,
            "blocking": list(self.blocking),
            "warnings": list(self.warnings),
        }
