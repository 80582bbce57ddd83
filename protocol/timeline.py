"""The acknowledgement timeline of a message, from ledger events of either side, with durations.

Pure: feed it the ledger entries (as JSON objects) that concern one message, get back its milestones in order and
the time between consecutive ones. The receiver's signed receive time comes from the receipt (``peer_time``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from protocol.timefmt import parse_time

__all__ = ["Milestone", "build_timeline", "format_duration"]

# ledger event type -> milestone name, in the order a request normally lives
_MILESTONES = {
    "message.submitted": "submitted",
    "message.sent": "sent",
    "message.received": "received",
    "message.receipt_recorded": "receipted",
    "message.acknowledged": "acknowledged",
    "message.answered": "answered",
    "message.closed": "closed",
}


@dataclass(frozen=True)
class Milestone:
    name: str
    time: datetime
    actor: str
    since_previous: float | None  # seconds


def build_timeline(message_id: str, entries: Iterable[Mapping[str, Any]]) -> list[Milestone]:
    """Milestones of ``message_id``: the first occurrence of each, ordered by time.

    A "receipt recorded" entry carries the receiver's signed receive time; on the sender's side that is when the
    message was received, so it yields a "received" milestone at the peer's time as well.
    """
    found: dict[str, tuple[datetime, str]] = {}
    for entry in entries:
        if entry.get("message_id") != message_id:
            continue
        kind = entry.get("type")
        if kind == "case.state_changed" and entry.get("state") in ("acknowledged", "closed"):
            # the case this message opened moved: acknowledged through the life cycle (POST /v1/cases/{id}/events,
            # or the peer's status report), which statistics count as the acknowledgement too; or closed
            # (docs/ledger.md: Comity writes no message.closed)
            name = str(entry["state"])
        elif kind in _MILESTONES:
            name = _MILESTONES[str(kind)]
        else:
            continue
        # a peer's report recorded after a later one (reason overtaken) took the milestone at the time it gives
        at = entry["peer_time"] if kind == "case.state_changed" and "peer_time" in entry else entry["time"]
        found.setdefault(name, (parse_time(str(at)), str(entry["actor"])))
        if name == "receipted" and "peer_time" in entry:
            found.setdefault("received", (parse_time(str(entry["peer_time"])), f"peer:{entry.get('to', '?')}"))
    ordered = sorted(found.items(), key=lambda item: (item[1][0], list(_MILESTONES.values()).index(item[0])))
    result: list[Milestone] = []
    previous: datetime | None = None
    for name, (time, actor) in ordered:
        result.append(Milestone(name, time, actor, None if previous is None else (time - previous).total_seconds()))
        previous = time
    return result


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"+{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"+{seconds:.2f} s"
    return f"+{seconds / 60:.1f} min"
