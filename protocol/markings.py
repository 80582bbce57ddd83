"""Confidentiality markings: an ordered scheme of levels and a set of known caveats.

The default scheme follows the UN information-sensitivity policy; a deployment may configure its own ordered levels
and add caveats. The defaults include the UNCAC caveats: confidentiality of the fact and substance of a request
(art. 46(20)), use limited to the stated proceedings (art. 46(19)), no onward transmission without the originator's
consent, and an embargo until a date (``embargo:YYYY-MM-DD``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from protocol.errors import ProtocolError
from protocol.messages import Marking

__all__ = [
    "CONFIDENTIALITY_CAVEAT",
    "DEFAULT_CAVEATS",
    "DEFAULT_LEVELS",
    "EMBARGO_CAVEAT",
    "ONWARD_CAVEATS",
    "USE_LIMITATION_CAVEAT",
    "MarkingRefused",
    "MarkingScheme",
    "asks_confidentiality",
    "caveat_name",
    "embargo_until",
    "limits_onward",
]

CONFIDENTIALITY_CAVEAT = "uncac-46-20"  # keep the fact and substance of the request confidential
USE_LIMITATION_CAVEAT = "uncac-46-19"  # use limited to the proceedings stated in the request
ONWARD_CAVEATS = (USE_LIMITATION_CAVEAT, "no-onward")  # content may not travel on without the originator's consent
EMBARGO_CAVEAT = "embargo"  # embargo:YYYY-MM-DD: closed to the receiver's users until that date
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

DEFAULT_LEVELS = ("UNCLASSIFIED", "CONFIDENTIAL", "STRICTLY CONFIDENTIAL")
DEFAULT_CAVEATS = (CONFIDENTIALITY_CAVEAT, *ONWARD_CAVEATS, EMBARGO_CAVEAT)


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

    def level_named(self, value: str) -> str:
        """The level of the scheme ``value`` names, also written in any case with '-' or '_' for spaces
        (STRICTLY-CONFIDENTIAL); ``value`` itself when it names none, for :meth:`rank` to refuse."""
        wanted = " ".join(value.replace("-", " ").replace("_", " ").split()).upper()
        return next((level for level in self.levels if level.upper() == wanted), value)

    def check(self, marking: Marking) -> None:
        """Refuse a marking with an unknown level or caveat."""
        self.rank(marking.level)
        for caveat in marking.caveats:
            if caveat_name(caveat) not in self.caveats:
                raise MarkingRefused(f"unknown caveat {caveat!r}")

    def admit(self, marking: Marking) -> None:
        """Refuse a marking entering the gateway (a message sent or received, an oral request recorded) that
        :meth:`check` refuses, or that has an embargo without a real date: content under it could never be opened.
        What is already stored is held to :meth:`check` alone, so that a case admitted before this rule (decision
        83) stays workable."""
        self.check(marking)
        embargo_until(marking)

    def lowers(self, marking: Marking, original: Marking) -> bool:
        """Whether ``marking`` is below ``original``: a lower level, or a caveat of the original dropped."""
        return self.rank(marking.level) < self.rank(original.level) or not set(original.caveats) <= set(marking.caveats)

    def join(self, first: Marking, second: Marking) -> Marking:
        """The least marking that neither lowers: the higher level and every caveat of both."""
        level = first.level if self.rank(first.level) >= self.rank(second.level) else second.level
        return Marking(level=level, caveats=sorted({*first.caveats, *second.caveats}))

    def check_accreditation(self, marking: Marking, max_level: str, honoured: Sequence[str], recipient: str) -> None:
        """Refuse a marking above the recipient's accreditation or with a caveat it does not honour (and what
        :meth:`admit` refuses)."""
        self.admit(marking)
        if self.rank(marking.level) > self.rank(max_level):
            raise MarkingRefused(f"{recipient} is accredited up to {max_level}, not {marking.level}")
        for caveat in marking.caveats:
            if caveat_name(caveat) not in honoured:
                raise MarkingRefused(f"{recipient} does not honour the caveat {caveat_name(caveat)!r}")


# A caveat is matched by its name, the part before ":" (docs/protocol.md 5.1), for the effects it has: a parameter
# ("uncac-46-19:proc-17", the proceedings the use is limited to) narrows a caveat, it never lifts it. Whether one
# marking is lower than another (MarkingScheme.lowers) compares whole caveats instead, on the strict side.


def caveat_name(caveat: str) -> str:
    return caveat.partition(":")[0]


def asks_confidentiality(marking: Marking) -> bool:
    """Whether the marking asks for the fact and substance of a request to stay confidential (UNCAC art. 46(20)):
    its acknowledgement must say whether the requested State can comply."""
    return any(caveat_name(caveat) == CONFIDENTIALITY_CAVEAT for caveat in marking.caveats)


def limits_onward(marking: Marking) -> bool:
    """Whether content under the marking may travel to a third authority only with the originator's consent (UNCAC
    art. 46(19), no onward transmission)."""
    return any(caveat_name(caveat) in ONWARD_CAVEATS for caveat in marking.caveats)


def embargo_until(marking: Marking) -> date | None:
    """The date of the ``embargo:YYYY-MM-DD`` caveat: content stays closed to the receiver's users until then; of
    several, the latest. An embargo without a real date is refused."""
    dates = []
    for caveat in marking.caveats:
        name, _, parameter = caveat.partition(":")
        if name == EMBARGO_CAVEAT:
            try:
                if not _ISO_DAY.fullmatch(parameter):  # exactly this form, whatever else a parser reads
                    raise ValueError(parameter)
                dates.append(date.fromisoformat(parameter))
            except ValueError:
                raise MarkingRefused("an embargo caveat must carry a date: embargo:YYYY-MM-DD") from None
    return max(dates, default=None)
