"""Typed errors of ``store/``."""

from __future__ import annotations

from protocol.errors import ComityError

__all__ = ["Conflict", "NotFound", "StoreError"]


class StoreError(ComityError):
    code = "store-error"


class NotFound(StoreError):
    code = "not-found"


class Conflict(StoreError):
    """The change conflicts with what is stored (a duplicate id, a state that moved on)."""

    code = "conflict"
