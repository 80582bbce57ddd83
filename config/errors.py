"""Typed errors of ``config/``: settings that cannot be loaded and directories that must not be trusted.

Each class carries a stable ``code``. Messages say what is wrong and what the operator should do next; they never
contain key material or passphrases.
"""

from __future__ import annotations

from protocol.errors import ComityError

__all__ = [
    "ConfigError",
    "DirectoryBadSignature",
    "DirectoryError",
    "DirectoryExpired",
    "DirectoryInvalid",
    "DirectoryRolledBack",
    "DirectoryUnsigned",
    "UnknownAuthority",
]


class ConfigError(ComityError):
    """The configuration (settings file, environment, key or directory files) is missing or invalid."""

    code = "config-error"


class DirectoryError(ConfigError):
    """Base of the refusals of a directory document."""

    code = "directory-error"


class DirectoryUnsigned(DirectoryError):
    """The directory is plain JSON, not a JWS, or is "signed" with ``alg: none``."""

    code = "directory-unsigned"


class DirectoryBadSignature(DirectoryError):
    """The directory JWS uses another algorithm, names another key, or its signature does not verify."""

    code = "directory-bad-signature"


class DirectoryExpired(DirectoryError):
    """The directory's ``expires_at`` has passed."""

    code = "directory-expired"


class DirectoryRolledBack(DirectoryError):
    """The directory's serial is lower than one this gateway has already accepted."""

    code = "directory-rolled-back"


class DirectoryInvalid(DirectoryError):
    """The directory (or a draft, or an entry) is malformed: duplicate members, schema violations."""

    code = "directory-invalid"


class UnknownAuthority(DirectoryError):
    """The directory lists no authority with this id."""

    code = "unknown-authority"
