"""Typed errors of ``crypto/``.

Authentication failures of one kind collapse into one opaque error (``BadSignature``, ``DecryptionFailed``) so
that no oracle tells an attacker which check failed; profile violations are precise, since they concern only
public header bytes.
"""

from __future__ import annotations

from protocol.errors import ComityError

__all__ = [
    "AttachmentError",
    "BadSignature",
    "CryptoError",
    "DecryptionFailed",
    "HeaderMismatch",
    "KeyStoreError",
    "OversizedEnvelope",
    "ProfileViolation",
    "UnknownKey",
    "WrongRecipient",
]


class CryptoError(ComityError):
    code = "crypto-error"


class ProfileViolation(CryptoError):
    """A JOSE object is outside the pinned profile (algorithm, members, serialisation, duplicates)."""

    code = "profile-violation"


class BadSignature(CryptoError):
    """A signature does not verify under the key it names."""

    code = "bad-signature"


class DecryptionFailed(CryptoError):
    """A JWE cannot be decrypted with our key (tampered, or not for us)."""

    code = "decryption-failed"


class UnknownKey(CryptoError):
    """A ``kid`` names no key that the directory lists for the claimed party."""

    code = "unknown-key"


class HeaderMismatch(CryptoError):
    """The JWE routing header differs from the signed payload."""

    code = "header-mismatch"


class WrongRecipient(CryptoError):
    """The envelope is addressed to another authority."""

    code = "wrong-recipient"


class OversizedEnvelope(CryptoError):
    """The envelope exceeds the configured size limit."""

    code = "envelope-too-large"


class AttachmentError(CryptoError):
    """An attachment stream is truncated, reordered, substituted or does not match its manifest entry."""

    code = "attachment-corrupt"


class KeyStoreError(CryptoError):
    """A sealed key file cannot be opened (wrong passphrase or corrupt file)."""

    code = "keystore-error"
