"""The one time format used in payload times, receipts and ledger entries: RFC 3339, UTC, microseconds.

``2026-11-28T07:40:00.123456Z``: always this shape, so the same instant always has the same bytes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["TIME_SHAPE", "format_time", "parse_time"]

TIME_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


def format_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    # isoformat is the same bytes as strftime(_FORMAT) for years 1000-9999, several times faster
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(value: str) -> datetime:
    """Parse the one format; ``fromisoformat`` is ~15 times faster than ``strptime`` on the ledger's hot path."""
    if len(value) != 27 or not TIME_SHAPE.fullmatch(value):  # fromisoformat alone takes week dates, other separators
        raise ValueError("time must look like 2026-11-28T07:40:00.123456Z")  # not the value: it may be content's
    return datetime.fromisoformat(value).astimezone(UTC)
