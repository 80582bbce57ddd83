"""Ledger events: the schema admits no content, and the fast encoder agrees with RFC 8785 byte for byte."""

from __future__ import annotations

from datetime import datetime

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import InvalidMessage
from protocol.events import EventType, LedgerEvent

ids = st.uuids(version=4).map(str)
times = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1)).map(
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
)
events = st.builds(
    lambda type, time, message_id, level, caveats, index, purpose: LedgerEvent.parse(
        {
            "type": type.value,
            "time": time,
            "actor": "user:alice",
            "message_id": message_id,
            "marking": {"level": level, "caveats": sorted(set(caveats))},
            "peer_ledger_index": index,
            "purpose": purpose,
        }
    ),
    st.sampled_from(list(EventType)),
    times,
    ids,
    st.text(min_size=1, max_size=64),
    st.lists(st.sampled_from(["uncac-46-19", "uncac-46-20", "no-onward", "embargo:2027-01-01"]), max_size=4),
    st.integers(min_value=0, max_value=2**53 - 1),
    st.sampled_from(["review", "execution", "attachment"]),
)


@given(events)
def test_fast_encoding_is_rfc8785(event: LedgerEvent) -> None:
    assert event.to_bytes() == bytes(rfc8785.dumps(event.to_json()))


def test_free_form_members_are_refused() -> None:
    with pytest.raises(InvalidMessage, match="Extra inputs are not permitted"):
        LedgerEvent.parse(
            {"type": "message.opened", "time": "2026-11-28T07:40:00.000000Z", "actor": "system", "subject_line": "x"}
        )


def test_a_large_peer_index_uses_the_canonical_encoder() -> None:
    event = LedgerEvent.parse(
        {
            "type": "message.receipt_recorded",
            "time": "2026-11-28T07:40:00.000000Z",
            "actor": "system",
            "peer_ledger_index": 2**60,
        }
    )
    with pytest.raises(InvalidMessage, match="RFC 8785"):
        event.to_bytes()
