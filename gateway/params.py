"""Sizes and indexes of the ledger that callers send us, in a query parameter or a JSON member: what the database
holds as a signed 64-bit integer. Anything else is ``invalid-message`` before any query (decision 93)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from protocol.errors import InvalidMessage

__all__ = ["MAX_INDEX", "bounded_param", "int_param"]

MAX_INDEX = 2**63 - 1  # sizes and indexes are signed 64-bit integers in the database
# ASCII decimal, no leading zero: int() also reads other Unicode digits (fullwidth, Arabic-Indic), "1_0", " 1 " and
# "+1", which a strict client, a proxy or a reader of our logs takes for another number or none (fullmatch: "$" would
# let "1\n" by)
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


def int_param(query: Mapping[str, str], name: str, default: int | None = None) -> int:
    """The query parameter ``name``, a size or an index from 0 to MAX_INDEX; ``default``, if given, when absent."""
    raw = query.get(name)
    if raw is None and default is not None:
        return default
    if raw is None or not _DECIMAL.fullmatch(raw) or int(raw) > MAX_INDEX:
        raise InvalidMessage(f"query parameter {name!r} must be an integer from 0 to {MAX_INDEX}")
    return int(raw)


def bounded_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """The query parameter ``name``, an integer from ``low`` to ``high`` in ASCII digits (not any Unicode digit),
    or ``default`` when absent: a page's ``limit`` or ``offset``."""
    raw = query.get(name, str(default))
    if not re.fullmatch(r"[0-9]{1,10}", raw) or not low <= int(raw) <= high:
        raise InvalidMessage(f"{name} must be an integer from {low} to {high}")
    return int(raw)
