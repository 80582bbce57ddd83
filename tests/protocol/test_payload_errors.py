"""What a refusal of a payload says: names of our schemas, never a member name that may be content; and the one
time format, with no second spelling of an instant."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.content import Forwarded
from protocol.errors import InvalidMessage
from protocol.messages import MessagePayload, new_message_id, parse_strict_json
from protocol.requests import Request
from protocol.timefmt import format_time, parse_time

SECRET = "Account 12345 of J. Doe"


def _payload(**overrides: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "id": new_message_id(),
        "from": "ar.mj",
        "to": "au.ag",
        "kind": "request",
        "iat": 1_795_851_600,
        "in_reply_to": None,
        "marking": {"level": "CONFIDENTIAL", "caveats": []},
        "attachments": [],
        "content": {"text": "x"},
        **overrides,
    }


def test_a_repeated_member_is_named_only_when_it_is_a_name_of_the_protocol() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_strict_json(b'{"content":{"' + SECRET.encode() + b'":1,"' + SECRET.encode() + b'":2}}')
    assert SECRET not in caught.value.message and "duplicate member" in caught.value.message
    with pytest.raises(InvalidMessage, match="duplicate member 'to'"):
        parse_strict_json(b'{"to":"au.ag","to":"fr.mj"}')


def test_an_unknown_member_is_not_named_in_the_refusal() -> None:
    with pytest.raises(InvalidMessage, match=r"^MessagePayload: \(member\): Extra inputs") as payload:
        MessagePayload.parse(_payload(**{SECRET: 1}))
    # a forwarded item, which the receiver checks inside content (check 19)
    item = {"message_id": new_message_id(), "from": "ar.mj", "content": {}, SECRET: 1}
    with pytest.raises(InvalidMessage, match=r"^Forwarded: \(member\): Extra inputs") as forwarded:
        Forwarded.parse(item)
    assert SECRET not in payload.value.message + forwarded.value.message
    with pytest.raises(InvalidMessage, match=r"^Request: legal_basis: 'kind' must be one of 'uncac', 'treaty'") as tag:
        Request.parse({"type": "mla-criminal", "legal_basis": {"kind": SECRET}})  # a tagged union's unknown tag
    assert SECRET not in tag.value.message
    with pytest.raises(InvalidMessage, match=r"^MessagePayload: marking\.level: "):
        MessagePayload.parse(_payload(marking={"level": 3, "caveats": []}))


@pytest.mark.parametrize(
    "text",
    [
        "2026-W48-1T07:40:00.123456Z",  # an ISO week date of 2026-11-23: fromisoformat takes it
        "2026-11-23 07:40:00.123456Z",
        "2026-11-23T07:40:00,123456Z",
        "2026-11-23T07:40:00.1234567",
        "\uff12026-11-23T07:40:00.123456Z",  # a fullwidth digit
    ],
)
def test_a_time_has_one_spelling(text: str) -> None:
    with pytest.raises(ValueError, match="time must look like"):
        parse_time(text)


def test_a_time_reads_back_as_written() -> None:
    text = "2026-11-23T07:40:00.123456Z"
    assert format_time(parse_time(text)) == text
