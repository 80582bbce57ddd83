"""Sizes and indexes of the ledger that callers send us, in a query parameter or a JSON member: what the database
holds as a signed 64-bit integer. Anything else is ``invalid-message`` before any query (decision 93)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from protocol.errors import InvalidMessage

__all__ = ["MAX_INDEX", "int_param"]

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
