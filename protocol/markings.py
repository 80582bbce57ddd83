"""Confidentiality markings: an ordered scheme of levels and a set of known caveats.

The default scheme follows the UN information-sensitivity policy; a deployment may configure its own ordered levels
and add caveats. The defaults include the UNCAC caveats: confidentiality of the fact and substance of a request
(art. 46(20)), use limited to the stated proceedings (art. 46(19)), no onward transmission without the originator's
consent, and an embargo until a date (``embargo:YYYY-MM-DD``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from protocol.errors import ProtocolError
from protocol.messages import Marking

__all__ = [
    "CONFIDENTIALITY_CAVEAT",
    "DEFAULT_CAVEATS",
    "DEFAULT_LEVELS",
    "ONWARD_CAVEATS",
    "MarkingRefused",
    "MarkingScheme",
    "embargo_until",
]

CONFIDENTIALITY_CAVEAT = "uncac-46-20"  # keep the fact and substance of the request confidential
ONWARD_CAVEATS = ("uncac-46-19", "no-onward")  # content may not travel on without the originator's consent

DEFAULT_LEVELS = ("UNCLASSIFIED", "CONFIDENTIAL", "STRICTLY CONFIDENTIAL")
DEFAULT_CAVEATS = ("uncac-46-20", "uncac-46-19", "no-onward", "embargo")


class MarkingRefused(ProtocolError):
    """A marking is unknown to the scheme or exceeds what the recipient is accredited for."""

    code = "marking-refused"


@dataclass(frozen=True)
class MarkingScheme:
    levels: tuple[str, ...] = DEFAULT_LEVELS
    caveats: tuple[str, ...] = DEFAULT_CAVEATS
    _rank: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rank", {level: i for i, level in enumerate(self.levels)})

    def rank(self, level: str) -> int:
        if level not in self._rank:
            raise MarkingRefused(f"unknown marking level {level!r}; known levels: {', '.join(self.levels)}")
        return self._rank[level]

    def check(self, marking: Marking) -> None:
        """Refuse a marking with an unknown level or caveat."""
        self.rank(marking.level)
        for caveat in marking.caveats:
            if caveat.split(":", 1)[0] not in self.caveats:
                raise MarkingRefused(f"unknown caveat {caveat!r}")

    def lowers(self, marking: Marking, original: Marking) -> bool:
        """Whether ``marking`` is below ``original``: a lower level, or a caveat of the original dropped."""
        return self.rank(marking.level) < self.rank(original.level) or not set(original.caveats) <= set(marking.caveats)

    def check_accreditation(self, marking: Marking, max_level: str, honoured: Sequence[str], recipient: str) -> None:
        """Refuse a marking above the recipient's accreditation or with a caveat it does not honour."""
        self.check(marking)
        if self.rank(marking.level) > self.rank(max_level):
            raise MarkingRefused(f"{recipient} is accredited up to {max_level}, not {marking.level}")
        for caveat in marking.caveats:
            if caveat.split(":", 1)[0] not in honoured:
                raise MarkingRefused(f"{recipient} does not honour the caveat {caveat.split(':', 1)[0]!r}")


def embargo_until(marking: Marking) -> date | None:
    """The date of an ``embargo:YYYY-MM-DD`` caveat: content stays closed to the receiver's users until then."""
    for caveat in marking.caveats:
        name, _, parameter = caveat.partition(":")
        if name == "embargo":
            try:
                return date.fromisoformat(parameter)
            except ValueError:
                raise MarkingRefused("an embargo caveat must carry a date: embargo:YYYY-MM-DD") from None
    return None
