"""structlog JSON logs. Log lines carry ids, peers, codes and timings: never content, keys or tokens.

Call sites log only identifiers; as a second line of defence a processor drops any event member whose name says it
may hold a secret or content, and masks bearer tokens anywhere in a string. An exception is rendered as the types
of its chain and the source lines it went through, never its messages: a driver's message may quote a row
(PostgreSQL's ``DETAIL: Failing row contains (...)``), a library's may quote its input.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "get_logger"]

_FORBIDDEN_KEYS = re.compile(
    r"(passphrase|password|secret|token|authorization|private|content|body|plaintext|key_pem|jwk)", re.I
)
_TOKEN_RE = re.compile(r"cmt_[A-Za-z0-9_-]{8,}")


def _scrub(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in [k for k in event if k != "event" and _FORBIDDEN_KEYS.search(k)]:
        event[key] = "[redacted]"
    for key, value in event.items():
        if isinstance(value, str) and "cmt_" in value:
            event[key] = _TOKEN_RE.sub("cmt_[redacted]", value)
    return event


def _exception_shape(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace ``exc_info`` with ``exception``: each error of the chain (the latest first, then what it was raised
    from or while handling) as its type and the frames it passed, without its message."""
    exc_info = event.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if not isinstance(error, BaseException):
        return event
    lines: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if lines:
            lines.append("raised from, or while handling:")
        lines.append(f"{type(current).__module__}.{type(current).__qualname__}")
        lines += [
            f"  {frame.filename}:{frame.lineno} in {frame.name}"
            for frame in traceback.extract_tb(current.__traceback__)
        ]
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    event["exception"] = "\n".join(lines)
    return event


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on ``stream`` (stderr by default), one object per event."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _exception_shape,
            _scrub,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("comity").bind(**bound)
