"""The acknowledgement timeline built from ledger entries (protocol/timeline.py)."""

from __future__ import annotations

from typing import Any

from protocol.timeline import build_timeline

M = "0b0d8a3e-6c35-4c5d-9a4b-4f1c2b7d3e01"


def entry(type_: str, second: int, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "time": f"2026-11-28T07:40:{second:02d}.000000Z", "actor": "user:bruce", "message_id": M,
            **fields}  # fmt: skip


def test_an_acknowledgement_through_the_life_cycle_is_the_acknowledged_milestone() -> None:
    """A case acknowledged with POST /v1/cases/{id}/events (case.state_changed, state acknowledged), as statistics
    count it, is the timeline's "acknowledged" too; before, the timeline showed none, so the acknowledgement wait of
    the statistics matched nothing an auditor's timeline showed. Only the first counts, and other moves are not
    milestones."""
    entries = [
        entry("message.received", 1, actor="peer:ar.mj"),
        entry("case.state_changed", 3, state="acknowledged"),
        entry("case.state_changed", 4, state="in_progress"),
        entry("message.acknowledged", 5),  # later: the first acknowledgement stands
        entry("message.answered", 9),
        entry("case.state_changed", 12, state="closed"),
    ]
    timeline = build_timeline(M, entries)
    assert [(m.name, m.since_previous) for m in timeline] == [
        ("received", None),
        ("acknowledged", 2.0),
        ("answered", 6.0),
        ("closed", 3.0),
    ]
