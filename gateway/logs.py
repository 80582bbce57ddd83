"""structlog JSON logs. Log lines carry ids, peers, codes and timings: never content, keys or tokens.

Call sites log only identifiers; as a second line of defence a processor drops any event member whose name says it
may hold a secret or content, and masks bearer tokens anywhere in a string. An exception is rendered as the types
of its chain and the source lines it went through, never its messages: a driver's message may quote a row
(PostgreSQL's ``DETAIL: Failing row contains (...)``), a library's may quote its input.

Libraries log through the standard library (SQLAlchemy's pool, asyncio, aiohttp): their records at ``warning`` and
above go through the same processors and come out as the same JSON lines, with the logger's name and only the
first line of the record's message template, cut where a formatted value would begin, never its arguments. asyncio,
for one, formats the failed task's or callback's repr, arguments and exception message included, into the message.
"""

from __future__ import annotations

import contextlib
import json
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


_LIBRARY_EVENT_CHARS = 200
# where a value a library formatted into its message would begin: a repr, a quoted string, a container
_FORMATTED_VALUE = re.compile(r"""[(<'"{\[=]""")


def _library_record(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A standard-library record keeps its logger's name and the start of its message template's first line,
    nothing else: the arguments, and whatever a library formatted into the message before logging it (asyncio's
    "Exception in callback cb('...')", a task's repr), may quote data. So the line is cut where a value would
    begin."""
    record: logging.LogRecord = event["_record"]
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    first = _FORMATTED_VALUE.split(template.split("\n", 1)[0], maxsplit=1)[0]
    event["event"] = first.strip()[:_LIBRARY_EVENT_CHARS] or "library_log"
    event["logger"] = record.name
    return event


class _LibraryHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root logger's handler that ``configure_logging`` installs (and replaces when called again). Without a
    stream of its own it writes to whatever ``sys.stderr`` is when a record arrives, like ``logging.lastResort``."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._fixed = stream

    @property
    def stream(self) -> TextIO:
        return self._fixed or sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:  # StreamHandler.__init__ assigns it; the property decides
        pass

    def handleError(self, record: logging.LogRecord) -> None:
        # the default prints the record's message and arguments to stderr as text: one fixed line instead
        with contextlib.suppress(Exception):
            self.stream.write(json.dumps({"event": "log_record_failed", "logger": record.name}) + "\n")


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on ``stream`` (stderr by default), one object per event: ours at ``level`` and above, the
    libraries' at ``level`` or ``warning``, whichever is higher."""
    threshold = logging.getLevelNamesMapping()[level.upper()]
    out = stream or sys.stderr
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    rendering: list[Any] = [_exception_shape, _scrub, structlog.processors.JSONRenderer(sort_keys=True)]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = _LibraryHandler(stream)
    handler.setLevel(max(threshold, logging.WARNING))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            use_get_message=False,  # never interpolate a library's arguments, not even to throw them away
            foreign_pre_chain=[*shared, _library_record],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _LibraryHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(handler.level)


def get_logger(**bound: Any) -> Any:
    return structlog.get_logger("comity").bind(**bound)
