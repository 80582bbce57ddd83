"""Typed errors of the sans-IO protocol layer.

Every Comity error derives from :class:`ComityError`. Each class carries a stable ``code`` (a slug): the gateway
maps codes to HTTP statuses and RFC 9457 problem types in one place, and the protocol documentation lists them.
Messages never contain content, keys or tokens: only ids, field names and what to do next.
"""

from __future__ import annotations

__all__ = [
    "ComityError",
    "InvalidMessage",
    "ProtocolError",
    "StaleMessage",
    "error_code",
]


class ComityError(Exception):
    """Base of every Comity error. ``code`` is stable and part of the wire protocol."""

    code: str = "comity-error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def error_code(error: BaseException) -> str:
    """What to log or record of ``error``: a Comity error's stable code, else its type's name; never its message."""
    return error.code if isinstance(error, ComityError) else type(error).__name__


class ProtocolError(ComityError):
    """Base of errors raised by ``protocol/``."""

    code = "protocol-error"


class InvalidMessage(ProtocolError):
    """A message payload or field is malformed or violates the profile."""

    code = "invalid-message"


class StaleMessage(ProtocolError):
    """A message's ``iat`` lies outside the allowed clock skew."""

    code = "stale-message"
