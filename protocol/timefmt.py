"""The one time format used in payload times, receipts and ledger entries: RFC 3339, UTC, microseconds.

``2026-11-28T07:40:00.123456Z``: always this shape, so the same instant always has the same bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_time", "parse_time"]

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    return value.astimezone(UTC).strftime(_FORMAT)


def parse_time(value: str) -> datetime:
    return datetime.strptime(value, _FORMAT).replace(tzinfo=UTC)
