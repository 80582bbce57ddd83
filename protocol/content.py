"""Members of a message's signed content that the gateways act on (beyond the officers' own text).

They travel inside the encrypted, signed payload, so both sides see them and neither can deny them:

* ``marking_downgrade``: an answer carries a lower marking than the message it answers, recorded by a supervisor
  with a reason (DESIGN.md: "a response cannot silently carry a lower marking than its request");
* ``forwarded``: content of earlier messages passed on to this recipient (only with the originator's consent when
  they carry a use limitation or no-onward caveat, UNCAC art. 46(19));
* ``consent``: in a ``consent`` message, the originator allows one message's content to travel to one authority;
* ``confidentiality``: in an acknowledgement of a request that asks for confidentiality (art. 46(20)), whether the
  requested State can comply.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from protocol.errors import InvalidMessage
from protocol.messages import StrictModel, validate_authority_id, validate_message_id

__all__ = [
    "GATEWAY_MEMBERS",
    "Consent",
    "Forwarded",
    "MarkingDowngrade",
    "confidentiality_answer",
    "consent_of",
    "downgrade_of",
]

# content members the sending gateway writes itself, from what it checked (forwards, a downgrade, an override):
# never taken from a draft (decision 145)
GATEWAY_MEMBERS = frozenset({"forwarded", "marking_downgrade", "check_override"})


class MarkingDowngrade(StrictModel):
    from_level: str = Field(alias="from", min_length=1, max_length=64)
    from_caveats: list[str] = Field(default_factory=list, max_length=64)  # the caveats of the original marking
    reason: str = Field(min_length=3, max_length=2000)


class Forwarded(StrictModel):
    message_id: str
    from_: str = Field(alias="from")
    content: dict[str, Any]

    @model_validator(mode="after")
    def _ids(self) -> Forwarded:
        # ids a gateway looks up (the consent about a forwarded message): a message id and an authority id, or the
        # envelope is refused (a NUL byte reached PostgreSQL as a 500)
        validate_message_id(self.message_id)
        validate_authority_id(self.from_)
        return self


class Consent(StrictModel):
    message_id: str
    recipient: str

    def check(self) -> Consent:
        validate_message_id(self.message_id)
        validate_authority_id(self.recipient)
        return self


def downgrade_of(content: dict[str, Any]) -> MarkingDowngrade | None:
    value = content.get("marking_downgrade")
    return None if value is None else MarkingDowngrade.parse(value)


def consent_of(content: dict[str, Any]) -> Consent:
    if "consent" not in content:
        raise InvalidMessage("a consent message must carry content.consent {message_id, recipient}")
    return Consent.parse(content["consent"]).check()


def confidentiality_answer(content: dict[str, Any]) -> Literal["can-comply", "cannot-comply"] | None:
    value = content.get("confidentiality")
    if value is None:
        return None
    if value not in ("can-comply", "cannot-comply"):
        raise InvalidMessage("content.confidentiality must be 'can-comply' or 'cannot-comply' (UNCAC art. 46(20))")
    return "can-comply" if value == "can-comply" else "cannot-comply"
