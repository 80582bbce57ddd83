"""Receipts and refusals: what a receiving gateway signs about an envelope it accepted or refused.

A receipt names the message id, the SHA-256 of the envelope bytes as received, the receiver's own receive time,
the ledger index of the "received" event and the receiver's latest signed checkpoint (DESIGN.md, "Receipts").
A duplicate delivery is answered with the byte-identical receipt. A refusal is signed too and says why, with the
same stable ``code`` the problem document carries.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field, field_validator

from protocol.messages import StrictModel, canonical_json, validate_authority_id, validate_message_id
from protocol.timefmt import TIME_SHAPE

__all__ = ["MAX_CLOCK_SKEW", "RECEIPT_SKEW", "Receipt", "Refusal", "rfc3339_utc"]

# the most a receiver may let a message's iat lie ahead of its clock (the max_clock_skew_seconds setting's bound),
# and so the most its signed receive time may lie before the sealing (iat is whole seconds, compared with whole
# seconds: the receive time is at least iat minus the skew)
MAX_CLOCK_SKEW = timedelta(seconds=300)
# a receipt's signed receive time may be at most this before the message's submission (the sender checks it before
# recording the receipt, the auditor's timeline invariants after): what any receiver may allow, plus a minute for
# the time between the sealing and the commit of the submission, so that no receiver keeping to its setting signs
# a receipt every sender refuses (decision 157); how far ahead it may be is the sender's max_message_age_seconds
RECEIPT_SKEW = MAX_CLOCK_SKEW + timedelta(seconds=60)


def rfc3339_utc(value: str) -> str:
    """Check a time string: RFC 3339, UTC, microseconds, always this shape so that the bytes are stable."""
    if not TIME_SHAPE.fullmatch(value) or not _is_date(value):
        raise ValueError("time must be RFC 3339 UTC with microseconds, e.g. 2026-11-28T07:40:00.123456Z")
    return value


def _is_date(value: str) -> bool:
    try:
        datetime.fromisoformat(value[:-1])  # the shape is checked already; this checks the calendar (fast, in C)
    except ValueError:
        return False
    return True


class Receipt(StrictModel):
    v: Literal[1] = 1
    type: Literal["receipt"] = "receipt"
    message_id: str
    from_: str = Field(alias="from")  # the receiver, who signs
    to: str  # the sender
    envelope_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    received_at: str
    ledger_index: int = Field(ge=0)
    checkpoint: str = Field(min_length=1, max_length=8192)

    @field_validator("received_at")
    @classmethod
    def _time(cls, value: str) -> str:
        return rfc3339_utc(value)

    @field_validator("message_id")
    @classmethod
    def _message(cls, value: str) -> str:
        return validate_message_id(value)

    @field_validator("from_", "to")
    @classmethod
    def _authority(cls, value: str) -> str:
        return validate_authority_id(value)

    def to_bytes(self) -> bytes:
        return canonical_json(self.model_dump(by_alias=True))


class Refusal(StrictModel):
    v: Literal[1] = 1
    type: Literal["refusal"] = "refusal"
    message_id: str | None
    from_: str = Field(alias="from")  # the refusing gateway, who signs
    to: str | None  # the claimed sender, when it could be read
    envelope_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    refused_at: str
    code: str = Field(pattern=r"^[a-z0-9-]{1,64}$")
    reason: str = Field(max_length=500)

    @field_validator("refused_at")
    @classmethod
    def _time(cls, value: str) -> str:
        return rfc3339_utc(value)

    @field_validator("from_")
    @classmethod
    def _authority(cls, value: str) -> str:
        return validate_authority_id(value)

    @field_validator("to")
    @classmethod
    def _sender(cls, value: str | None) -> str | None:
        return None if value is None else validate_authority_id(value)

    @field_validator("message_id")
    @classmethod
    def _message(cls, value: str | None) -> str | None:
        return None if value is None else validate_message_id(value)

    def to_bytes(self) -> bytes:
        return canonical_json(self.model_dump(by_alias=True))
