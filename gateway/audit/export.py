"""``comity audit export`` and ``comity audit timeline``: the ledger's events, flattened or per message.

Neither verifies anything: run ``comity audit verify`` for that. They read the same sources (a database, or the
auditor API) and parse each entry as strict JSON.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import IO, Any

from gateway.audit.sources import Source
from protocol.messages import parse_strict_json
from protocol.timefmt import format_time
from protocol.timeline import Milestone, build_timeline, format_duration

__all__ = ["COLUMNS", "ExportFilter", "export_events", "parse_bound", "side_timeline", "write_timeline"]

# every LedgerEvent member, in schema order; the marking is split in two; "case" is not in the schema yet
COLUMNS = [
    "index",
    "v",
    "type",
    "time",
    "actor",
    "message_id",
    "kind",
    "from",
    "to",
    "in_reply_to",
    "related_id",
    "envelope_sha256",
    "marking_level",
    "marking_caveats",
    "peer_time",
    "peer_ledger_index",
    "reason",
    "purpose",
    "state",
    "subject",
    "case",
]


def parse_bound(value: str, *, end: bool) -> str:
    """A date (``2026-11-28``) or an RFC 3339 UTC time, as a ledger time string to compare with.

    A date as ``--until`` includes the whole day.
    """
    try:
        day = date.fromisoformat(value)
    except ValueError:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is neither a date (2026-11-28) nor an RFC 3339 time") from None
        if moment.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone; add Z for UTC") from None
        return format_time(moment)
    return f"{(day + timedelta(days=1)) if end else day}T00:00:00.000000Z"


@dataclass(frozen=True)
class ExportFilter:
    since: str | None = None  # ledger time string, inclusive
    until: str | None = None  # exclusive
    counterpart: str | None = None
    kind: str | None = None
    case: str | None = None
    type: str | None = None

    def accepts(self, event: dict[str, Any]) -> bool:
        when = str(event.get("time", ""))
        if self.since is not None and when < self.since:
            return False
        if self.until is not None and when >= self.until:
            return False
        if self.counterpart is not None and self.counterpart not in (
            event.get("from"),
            event.get("to"),
            str(event.get("actor", "")).removeprefix("peer:"),
        ):
            return False
        if self.kind is not None and event.get("kind") != self.kind:
            return False
        if self.type is not None and event.get("type") not in (self.type, f"message.{self.type}"):
            return False
        return self.case is None or event.get("case") == self.case


def _row(index: int, event: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"index": index, **{k: v for k, v in event.items() if k != "marking"}}
    marking = event.get("marking")
    if isinstance(marking, dict):
        row["marking_level"] = marking.get("level")
        row["marking_caveats"] = " ".join(str(c) for c in marking.get("caveats", []))
    return row


async def export_events(source: Source, out: IO[str], *, fmt: str, only: ExportFilter) -> int:
    """Write the accepted events as CSV (header + one row each) or JSON lines; return how many."""
    snapshot = await source.snapshot()
    writer: Any = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
    count = 0
    async for start, batch in source.entries(0, snapshot.total):
        for offset, entry in enumerate(batch):
            event = parse_strict_json(entry)
            if not isinstance(event, dict) or not only.accepts(event):
                continue
            if writer is not None:
                writer.writerow(_row(start + offset, event))
            else:
                out.write(json.dumps({"index": start + offset, **event}, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    return count


@dataclass(frozen=True)
class SideTimeline:
    label: str
    milestones: list[Milestone]


async def side_timeline(source: Source, message_id: str) -> SideTimeline:
    entries: list[dict[str, Any]] = []
    origin = source.name
    async for _, entry in _entries_of(source, message_id):
        event = parse_strict_json(entry)
        if isinstance(event, dict):
            entries.append(event)
    async for record in source.checkpoints():
        origin = record.note.split("\n", 1)[0]  # the newest checkpoint names the log
    return SideTimeline(f"{origin} ({source.name})", build_timeline(message_id, entries))


async def _entries_of(source: Source, message_id: str) -> AsyncIterator[tuple[int, bytes]]:
    async for item in source.entries_of(message_id):
        yield item


def write_timeline(message_id: str, sides: Iterable[SideTimeline], out: IO[str]) -> None:
    sides = list(sides)
    out.write(f"message {message_id}\n")
    for side in sides:
        out.write(f"\n{side.label}\n")
        if not side.milestones:
            out.write("  (no events for this message)\n")
        for milestone in side.milestones:
            out.write(
                f"  {format_time(milestone.time)}  {milestone.name:<13} {milestone.actor:<22} "
                f"{format_duration(milestone.since_previous)}\n"
            )
    if len(sides) > 1:
        merged = sorted(
            ((m.time, side.label.split(" ", 1)[0], m) for side in sides for m in side.milestones),
            key=lambda item: item[0],
        )
        out.write("\nboth sides, in time order\n")
        first = merged[0][0] if merged else None
        previous = None
        for when, label, milestone in merged:
            since = None if previous is None else (when - previous).total_seconds()
            total = "" if first is None else f"(t+{(when - first).total_seconds():.3f} s)"
            out.write(f"  {format_time(when)}  {label:<22} {milestone.name:<13} {format_duration(since):<12} {total}\n")
            previous = when
