"""Ledger events: what the tracking ledger records, and nothing more.

An event holds ids, kinds, parties, actors, times, digests, markings and states; there is deliberately no free-form
member, so content or a confidential subject line has nowhere to go (DESIGN.md, "The ledger"). The entry bytes are
RFC 8785 canonical JSON of :meth:`LedgerEvent.to_json` with absent members omitted.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import Field, field_validator

from protocol.messages import Marking, MessageKind, StrictModel, canonical_json, validate_authority_id
from protocol.receipts import rfc3339_utc

__all__ = ["ANSWER_EFFECTS", "EventType", "LedgerEvent"]


class EventType(enum.StrEnum):
    SUBMITTED = "message.submitted"  # an officer handed a message to our outbox
    SENT = "message.sent"  # our gateway delivered it to the peer gateway
    RECEIPT_RECORDED = "message.receipt_recorded"  # we hold the peer's signed receipt (peer_time = its receive time)
    RECEIVED = "message.received"  # we accepted an envelope from a peer
    REFUSED = "message.refused"  # we refused an envelope (reason = problem code)
    ACKNOWLEDGED = "message.acknowledged"  # an officer (ours, or the peer's through its acknowledgement) acknowledged
    OPENED = "message.opened"  # a user decrypted the content (actor, purpose)
    ANSWERED = "message.answered"  # a response to the message was sent or received (related_id = the response)
    CLOSED = "message.closed"
    DELIVERY_FAILED = "message.delivery_failed"  # the peer refused it for good (reason = problem code)
    SUBMIT_REFUSED = "message.submit_refused"  # our gateway refused to send it (reason = problem code)
    OPEN_REFUSED = "message.open_refused"  # a user was refused the content (reason = problem code)
    MARKING_DOWNGRADED = "marking.downgraded"  # an answer carries a lower marking, recorded by a supervisor
    CONSENT_RECEIVED = "consent.received"  # the originator consented to onward use (related_id = consent message)
    CASE_ASSIGNED = "case.assigned"  # an officer was assigned to a case (subject = user, message_id = case)
    CASE_STATE = "case.state_changed"  # a case moved (state = new state, message_id = case; actor ours or peer:)
    CASE_UNASSIGNED = "case.unassigned"  # an officer was taken off a case (subject = user, message_id = case)
    CASE_NEXT_ACTION = "case.next_action"  # the next action was set or cleared (state = set | cleared; no text)
    CASE_FLAG = "case.flag"  # a flag was set or cleared (reason = the flag, state = set | cleared)
    # a critical date or task was added or done (reason = its kind, subject = due:<date>, related_id = date:<n>,
    # state = added | done); its note is never ledgered
    CASE_DATE = "case.date"
    # an urgent request made (to) or received (from) orally, art. 46(14) (state = made | received, subject =
    # due:<date> of its written confirmation), or confirmed in writing (state = confirmed, related_id = the request)
    CASE_ORAL_REQUEST = "case.oral_request"
    # a user was refused a change of a case's work or assignments (reason = problem code, state = what was tried:
    # next-action, flag-set, flag-cleared, date-added, date-done, assigned, unassigned; message_id = case)
    CASE_REFUSED = "case.refused"
    CONSULTATION_CONVERTED = "consultation.converted"  # a thread became a formal request (related_id = the request)
    # the peer refused that request for good: the thread is open again (related_id = the refused request)
    CONSULTATION_REOPENED = "consultation.reopened"
    REQUEST_CHECK_OVERRIDDEN = "request.check_overridden"  # a supervisor sent an incomplete request (reason signed)
    PEER_ALARM = "peer.alarm"  # a counterpart's ledger forked or was rewritten (from = the peer, reason)
    PEER_ALARM_CLEARED = "peer.alarm_cleared"  # an operator cleared it (actor, from = the peer)
    USER_CHANGED = "user.changed"
    DIRECTORY_INSTALLED = "directory.installed"


class LedgerEvent(StrictModel):
    v: Literal[1] = 1
    type: EventType
    time: str
    actor: str = Field(pattern=r"^(system|user:[a-z0-9._-]{1,64}|peer:[a-z]{2}\.[a-z0-9][a-z0-9-]{0,30})$")
    message_id: str | None = None
    kind: MessageKind | None = None
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    in_reply_to: str | None = None
    related_id: str | None = None
    envelope_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    marking: Marking | None = None
    peer_time: str | None = None
    peer_ledger_index: int | None = Field(default=None, ge=0)
    reason: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,64}$")
    purpose: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,64}$")
    state: str | None = Field(default=None, pattern=r"^[a-z0-9_-]{1,32}$")
    subject: str | None = Field(default=None, pattern=r"^[a-z0-9._:-]{1,80}$")  # a user name, directory serial, ...

    @field_validator("time", "peer_time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        return None if value is None else rfc3339_utc(value)

    @field_validator("from_", "to")
    @classmethod
    def _authority(cls, value: str | None) -> str | None:
        return None if value is None else validate_authority_id(value)

    @field_validator("kind", "type", mode="before")
    @classmethod
    def _enum(cls, value: Any) -> Any:
        for enum_type in (EventType, MessageKind):
            if isinstance(value, str) and value in enum_type._value2member_map_:
                return enum_type(value)
        return value

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        if self.marking is not None:
            data["marking"] = self.marking.to_json()
        return data

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


# an answer to a message records this event on the message it answers, which moves to this state (both sides)
ANSWER_EFFECTS: dict[MessageKind, tuple[EventType, str]] = {
    MessageKind.ACKNOWLEDGEMENT: (EventType.ACKNOWLEDGED, "acknowledged"),
    MessageKind.RESPONSE: (EventType.ANSWERED, "answered"),
}
