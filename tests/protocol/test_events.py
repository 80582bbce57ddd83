"""Ledger events: the schema admits no content, and the fast encoder agrees with RFC 8785 byte for byte."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import InvalidMessage
from protocol.events import EventType, LedgerEvent
from protocol.messages import MessageKind

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


# --- docs/ledger.md, the specification an independent verifier builds from, lists what the code has --------------

LEDGER_DOC = Path(__file__).resolve().parents[2] / "docs" / "ledger.md"


def _table(header: str) -> list[list[str]]:
    """The rows of the Markdown table of docs/ledger.md whose header row starts with ``header``, split in cells."""
    lines = LEDGER_DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:  # past the header and the | --- | row
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def _quoted(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def test_the_documented_enumerations_are_the_codes() -> None:
    """Every member, event type and message kind an entry may hold, no more: a kind or type the gateway ledgers but
    the page omits makes a verifier built from the page refuse an honest ledger."""
    members = _table("| member | type |")
    documented_members = set().union(*(_quoted(row[0]) for row in members))
    assert documented_members == {field.alias or name for name, field in LedgerEvent.model_fields.items()}
    kind_row = next(row for row in members if row[0] == "`kind`")
    # the meaning cell lists the kinds; any parenthesised remark after them holds no backquoted word
    assert _quoted(kind_row[3]) == {kind.value for kind in MessageKind}
    documented_types = set().union(*(_quoted(row[0]) for row in _table("| `type` | recorded when |")))
    assert documented_types == {event_type.value for event_type in EventType}
    # the actor's forms: the documented user name pattern is the model's
    actor_row = next(row for row in members if row[0] == "`actor`")
    assert "[a-z0-9._-]{1,64}" in actor_row[3]
    assert "user:[a-z0-9._-]{1,64}" in str(LedgerEvent.model_fields["actor"].metadata)
