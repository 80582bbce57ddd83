"""Complete the first time: the checklist of what a request still lacks, article by article.

Incomplete or unclear requests are the first cause of delay and return (UNODC, CAC/COSP/EG.1/2018/2, para. 33). The
checker is pure: a :class:`~protocol.requests.Request` and, optionally, the recipient's requirements from the
directory (:class:`RecipientRequirements`, built by the caller) in, a deterministic :class:`Checklist` out.

Each item names the element (``46(15)(a)``), its status, whether the element blocks a formal request, and what to
add. Status ``missing`` means a blocking element is absent; an absent element that does not block is a
``warning``. Items never quote the request's content, only indexes, roles and article numbers, so a checklist may be
shown or stored alongside a refusal without leaking the facts. The rules, in the order they are reported:

1. art. 46(15)(a) to (f): (a), (b), (c), (d) and (f) block, (e) warns; (c) is not needed to serve documents, (d) is
   replaced by the request type for extradition and provisional arrest;
2. offences (arts. 15 to 25, each with the national description) block for criminal-law types; an offence the
   Convention does not oblige states to criminalise warns of a dual-criminality risk (art. 43(2), 44(1), 46(9));
3. art. 44: the person sought (44(1)), penalties (44(8)), nationality (44(11)), urgency for provisional arrest
   (44(10));
4. art. 55(3)(a) to (c) and 57(3) for confiscation, freezing and return of assets;
5. the legal basis; deadlines and urgency with reasons (46(24)); confidentiality (46(20)); the marking's caveats
   for a request that asks for confidentiality or states a use limitation (``uncac-46-20``, ``uncac-46-19``;
   blocking when the marking is known, else a warning); de minimis (46(9)(b));
6. the recipient's requirements: an accepted language (46(14)), its designation (46(13)), its notes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from protocol.checklist_rules import (
    ChecklistItem,
    ItemStatus,
    RecipientRequirements,
    checklist_items,
    language_accepted,
)
from protocol.errors import ProtocolError
from protocol.requests import Request, RequestType

__all__ = [
    "Checklist",
    "ChecklistItem",
    "IncompleteRequest",
    "ItemStatus",
    "RecipientRequirements",
    "check_request",
    "language_accepted",
    "require_complete",
]


@dataclass(frozen=True)
class Checklist:
    request_type: RequestType
    items: tuple[ChecklistItem, ...]

    @property
    def blocking(self) -> tuple[ChecklistItem, ...]:
        """The missing elements that block a formal request (empty when the request may be sent)."""
        return tuple(item for item in self.items if item.status is ItemStatus.MISSING)

    @property
    def warnings(self) -> tuple[ChecklistItem, ...]:
        return tuple(item for item in self.items if item.status is ItemStatus.WARNING)

    @property
    def complete(self) -> bool:
        return not self.blocking

    def item(self, element: str) -> ChecklistItem:
        """The item for ``element``; ``KeyError`` if the checker did not report it for this request."""
        for candidate in self.items:
            if candidate.element == element:
                return candidate
        raise KeyError(element)

    def to_json(self) -> dict[str, Any]:
        return {"request_type": self.request_type.value, "items": [item.to_json() for item in self.items]}

    def render(self) -> str:
        """The checklist as text for a terminal: one line per element, what to add indented below it."""
        lines = [f"Checklist for a request of type {self.request_type.value} ({self.request_type.label})"]
        width = max(len(item.element) for item in self.items)
        for item in self.items:
            status = "MISSING" if item.status is ItemStatus.MISSING else item.status.value
            lines.append(f"  {status:<14} {item.element:<{width}}  {item.label}")
            if item.what_to_add:
                lines.append(f"  {'':<14} {'':<{width}}  -> {item.what_to_add}")
        if self.blocking:
            ids = ", ".join(item.element for item in self.blocking)
            lines.append(f"Incomplete: {len(self.blocking)} blocking element(s) missing: {ids}.")
        else:
            lines.append(f"Complete: no blocking element missing; {len(self.warnings)} warning(s).")
        return "\n".join(lines)


class IncompleteRequest(ProtocolError):
    """A formal request lacks blocking elements; ``checklist`` says which and what to add."""

    code = "incomplete-request"

    def __init__(self, checklist: Checklist) -> None:
        ids = ", ".join(item.element for item in checklist.blocking)
        super().__init__(
            f"the {checklist.request_type.value} request is incomplete: missing {ids}; add them (see the checklist)"
            " or have a supervisor override the refusal with a reason"
        )
        self.checklist = checklist


def require_complete(checklist: Checklist) -> None:
    """Return if no blocking element is missing, else raise :class:`IncompleteRequest` carrying ``checklist``."""
    if checklist.blocking:
        raise IncompleteRequest(checklist)


# --- the checker --------------------------------------------------------------------------------------------------


def check_request(
    request: Request, recipient: RecipientRequirements | None = None, caveats: Iterable[str] | None = None
) -> Checklist:
    """Every element ``request`` needs, in a fixed order, with its status and what to add. ``caveats``: the caveat
    names of the marking it will be sent under; unknown (None), a caveat the request needs is only a warning.

    Pure and deterministic: the same request, requirements and caveats always give the same checklist.
    """
    return Checklist(request.type, checklist_items(request, recipient, caveats))
