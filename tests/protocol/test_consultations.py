"""The consultation member (protocol/consultations.py): what a consultation must say, what no other kind may say,
the link of a formal request to its thread; garbage gives InvalidMessage, never a crash."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.checklist import check_request
from protocol.consultations import DraftCheck, consultation_of, linked_consultation
from protocol.errors import InvalidMessage
from protocol.messages import MessageKind, new_message_id
from protocol.requests import RequestType, blank_request

FIRST = new_message_id()
REPLY = new_message_id()
K = MessageKind.CONSULTATION


def member(**overrides: Any) -> dict[str, Any]:
    return {"consultation": {"thread_id": FIRST, "informal": True, "about": None, **overrides}}


def test_the_first_message_is_its_own_thread_and_a_reply_names_it() -> None:
    first = consultation_of(K, member(), FIRST, None)
    assert first is not None and first.thread_id == FIRST and first.informal is True and first.draft() is None
    reply = consultation_of(K, member(), REPLY, FIRST)
    assert reply is not None and reply.thread_id == FIRST
    with pytest.raises(InvalidMessage, match="its own thread"):
        consultation_of(K, member(), REPLY, None)
    with pytest.raises(InvalidMessage, match="not itself"):
        consultation_of(K, member(thread_id=REPLY), REPLY, FIRST)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"text": "no member"}, "carries content.consultation"),
        (member(informal=False), "informal"),
        (member(thread_id="not-an-id"), "thread_id"),
        (member(about="c-1"), "about"),
        (member(extra=1), r"\(member\): Extra inputs"),
        ({**member(), "request": {}}, "draft_request"),
        (member(draft_request={"type": "no-such-type"}), "type"),
    ],
)
def test_a_malformed_consultation_is_refused(content: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidMessage, match=match):
        consultation_of(K, content, FIRST, None)


def test_only_a_consultation_carries_the_member_and_a_draft_is_checked_not_refused() -> None:
    assert consultation_of(MessageKind.REQUEST, {"text": "x"}, FIRST, None) is None
    with pytest.raises(InvalidMessage, match="only a message of kind consultation"):
        consultation_of(MessageKind.RESPONSE, member(), FIRST, None)
    draft = blank_request(RequestType.FREEZING)
    found = consultation_of(K, member(draft_request=draft.to_json()), FIRST, None)
    assert found is not None and found.draft() == draft
    check = DraftCheck.of(check_request(draft))
    assert check.request_type == "freezing" and check.blocking and not check.to_json()["complete"]


def test_a_formal_request_names_the_thread_it_came_from() -> None:
    request = {**blank_request(RequestType.MLA_CRIMINAL).to_json(), "consultation_id": FIRST}
    assert linked_consultation(MessageKind.REQUEST, {"request": request}) == FIRST
    assert linked_consultation(MessageKind.REQUEST, {"request": {**request, "consultation_id": None}}) is None
    assert linked_consultation(MessageKind.REQUEST, {"text": "free-form"}) is None
    assert linked_consultation(MessageKind.CONSULTATION, {"request": request}) is None
    with pytest.raises(InvalidMessage):
        linked_consultation(MessageKind.REQUEST, {"request": {"consultation_id": 7}})
    with pytest.raises(InvalidMessage):
        linked_consultation(MessageKind.REQUEST, {"request": {"consultation_id": "c-1"}})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@given(value=JSON, reply=st.booleans())
def test_garbage_gives_invalid_message_never_a_crash(value: Any, reply: bool) -> None:
    for content in ({"consultation": value}, {"request": {"consultation_id": value}}):
        for kind in (MessageKind.CONSULTATION, MessageKind.REQUEST):
            try:
                consultation_of(kind, content, FIRST, REPLY if reply else None)
                linked_consultation(kind, content)
            except InvalidMessage:
                pass
