"""Streamed attachment encryption: libsodium secretstream XChaCha20-Poly1305 in fixed-size chunks.

Framing (every implementation must produce exactly these bytes)::

    ciphertext = header (24 bytes) || chunk_1 || ... || chunk_n

Each chunk is one secretstream ``push`` without associated data. Every chunk but the last holds ``CHUNK_SIZE``
plaintext bytes (``CHUNK_SIZE + 17`` ciphertext bytes) and carries ``TAG_MESSAGE``; the last holds 0 to
``CHUNK_SIZE`` plaintext bytes and carries ``TAG_FINAL``. An empty attachment is one empty ``TAG_FINAL`` chunk; an
attachment whose size is an exact multiple of ``CHUNK_SIZE`` ends with a full chunk tagged ``TAG_FINAL``, so the
number of chunks is ``max(1, ceil(size / CHUNK_SIZE))`` and ``ct_size`` follows from ``size``
(:func:`ciphertext_size`).

Secretstream authenticates each chunk, its position (reordering fails) and its stream (a chunk from another
attachment fails, even under the same key, since each stream has its own random header). ``TAG_FINAL`` on the last
chunk and the ``ct_size`` of the signed manifest entry catch truncation and appended bytes; the manifest's SHA-256
digests are checked once more at the end.

Memory stays O(chunk size) whatever the attachment size: the encryptor holds at most one chunk of plaintext, the
decryptor at most one chunk of ciphertext plus what a single ``push`` hands it.

The decryptor returns each chunk's plaintext as soon as that chunk authenticates, before the stream is known to be
complete: a caller writes it to a temporary place and uses it only after :meth:`AttachmentDecryptor.finish` returns.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Final, NoReturn

import nacl.exceptions
from nacl.bindings import (
    crypto_secretstream_xchacha20poly1305_ABYTES,
    crypto_secretstream_xchacha20poly1305_HEADERBYTES,
    crypto_secretstream_xchacha20poly1305_init_pull,
    crypto_secretstream_xchacha20poly1305_init_push,
    crypto_secretstream_xchacha20poly1305_KEYBYTES,
    crypto_secretstream_xchacha20poly1305_pull,
    crypto_secretstream_xchacha20poly1305_push,
    crypto_secretstream_xchacha20poly1305_state,
    crypto_secretstream_xchacha20poly1305_TAG_FINAL,
    crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
)

from crypto.errors import AttachmentError
from protocol.errors import InvalidMessage
from protocol.messages import AttachmentRef

__all__ = [
    "ABYTES",
    "CHUNK_SIZE",
    "HEADER_SIZE",
    "KEY_SIZE",
    "AttachmentDecryptor",
    "AttachmentEncryptor",
    "CiphertextVerifier",
    "ciphertext_size",
]

CHUNK_SIZE: Final = 1 << 20
HEADER_SIZE: Final[int] = crypto_secretstream_xchacha20poly1305_HEADERBYTES
ABYTES: Final[int] = crypto_secretstream_xchacha20poly1305_ABYTES
KEY_SIZE: Final[int] = crypto_secretstream_xchacha20poly1305_KEYBYTES
_TAG_MESSAGE: Final[int] = crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL: Final[int] = crypto_secretstream_xchacha20poly1305_TAG_FINAL

assert (HEADER_SIZE, ABYTES, KEY_SIZE) == (24, 17, 32)


def _check_chunk_size(chunk_size: int) -> int:
    # Only tests pass another chunk size; the protocol fixes CHUNK_SIZE.
    if not isinstance(chunk_size, int) or not 1 <= chunk_size <= CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {CHUNK_SIZE}")
    return chunk_size


def ciphertext_size(plaintext_size: int, *, chunk_size: int = CHUNK_SIZE) -> int:
    """The exact ciphertext length of a ``plaintext_size``-byte attachment."""
    if plaintext_size < 0:
        raise ValueError("plaintext_size must not be negative")
    chunks = max(1, -(-plaintext_size // _check_chunk_size(chunk_size)))
    return HEADER_SIZE + plaintext_size + chunks * ABYTES


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _attachment_key(ref: AttachmentRef) -> bytes:
    text = ref.key
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise AttachmentError("attachment key in the manifest is not base64url") from None
    if len(key) != KEY_SIZE or _b64e(key) != text:
        raise AttachmentError("attachment key in the manifest is not 32 bytes of unpadded base64url")
    return key


def _check_manifest_sizes(ref: AttachmentRef, chunk_size: int) -> None:
    if ref.ct_size != ciphertext_size(ref.size, chunk_size=chunk_size):
        raise AttachmentError("manifest entry is inconsistent: ct_size does not follow from size")


class AttachmentEncryptor:
    """Encrypt one attachment incrementally: ``start()``, ``push()`` any number of times, ``finish()``.

    Concatenating everything these return gives the ciphertext. ``manifest_entry()`` then describes it for the
    signed payload. The key is fresh and random unless given (known-answer tests only: never reuse a key).
    """

    def __init__(self, key: bytes | None = None, *, chunk_size: int = CHUNK_SIZE) -> None:
        if key is None:
            key = secrets.token_bytes(KEY_SIZE)
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise ValueError(f"attachment key must be {KEY_SIZE} bytes")
        self.key: bytes = key
        self._chunk_size = _check_chunk_size(chunk_size)
        self._state = crypto_secretstream_xchacha20poly1305_state()
        self._pending = bytearray()  # plaintext not yet encrypted: at most one chunk
        self._plain_hash = hashlib.sha256()
        self._cipher_hash = hashlib.sha256()
        self._size = 0
        self._ct_size = 0
        self._started = False
        self._finished = False

    def start(self) -> bytes:
        """The 24-byte secretstream header: the first bytes of the ciphertext."""
        if self._started:
            raise AttachmentError("start() was already called")
        self._started = True
        header: bytes = crypto_secretstream_xchacha20poly1305_init_push(self._state, self.key)
        return self._emit(header)

    def push(self, plaintext: bytes) -> bytes:
        """Feed plaintext of any length; returns the ciphertext of every chunk known not to be the last."""
        self._check_open()
        view = memoryview(plaintext).cast("B")
        self._plain_hash.update(view)
        self._size += len(view)
        out: list[bytes] = []
        # A full chunk is encrypted only once a further byte arrives: until then it may be the last one, which must
        # carry TAG_FINAL. So the buffer never holds more than one chunk.
        while len(self._pending) + len(view) > self._chunk_size:
            take = self._chunk_size - len(self._pending)
            if self._pending:
                self._pending += view[:take]
                chunk = bytes(self._pending)
                self._pending.clear()
            else:
                chunk = bytes(view[:take])
            view = view[take:]
            out.append(self._seal(chunk, _TAG_MESSAGE))
        self._pending += view
        return b"".join(out)

    def finish(self) -> bytes:
        """The last chunk, tagged ``TAG_FINAL`` (empty plaintext for an empty attachment)."""
        self._check_open()
        self._finished = True
        final = self._seal(bytes(self._pending), _TAG_FINAL)
        self._pending.clear()
        return final

    def manifest_entry(self, name: str, media_type: str) -> AttachmentRef:
        """The signed manifest entry of the finished attachment (sizes, digests and key)."""
        if not self._finished:
            raise AttachmentError("manifest_entry() needs a finished stream; call finish() first")
        try:
            return AttachmentRef.parse(
                {
                    "name": name,
                    "media_type": media_type,
                    "size": self._size,
                    "sha256": self._plain_hash.hexdigest(),
                    "ct_size": self._ct_size,
                    "ct_sha256": self._cipher_hash.hexdigest(),
                    "key": _b64e(self.key),
                }
            )
        except InvalidMessage as exc:
            raise AttachmentError(str(exc)) from None

    def _check_open(self) -> None:
        if not self._started:
            raise AttachmentError("call start() first: the header begins the ciphertext")
        if self._finished:
            raise AttachmentError("the stream is already finished")

    def _seal(self, chunk: bytes, tag: int) -> bytes:
        return self._emit(crypto_secretstream_xchacha20poly1305_push(self._state, chunk, None, tag))

    def _emit(self, ciphertext: bytes) -> bytes:
        self._cipher_hash.update(ciphertext)
        self._ct_size += len(ciphertext)
        return ciphertext


class AttachmentDecryptor:
    """Decrypt one attachment against its signed manifest entry: ``push()`` ciphertext in any split, ``finish()``.

    Any failure raises ``AttachmentError`` and leaves the decryptor unusable. Plaintext returned by ``push()`` is
    authentic chunk by chunk but the attachment is complete and matches its manifest only once ``finish()``
    returns.
    """

    def __init__(self, ref: AttachmentRef, *, chunk_size: int = CHUNK_SIZE) -> None:
        self._ref = ref
        self._chunk_size = _check_chunk_size(chunk_size)
        _check_manifest_sizes(ref, self._chunk_size)
        self._key = _attachment_key(ref)
        self._chunks_left = max(1, -(-ref.size // self._chunk_size))
        self._state = crypto_secretstream_xchacha20poly1305_state()
        self._buffer = bytearray()  # ciphertext not yet decrypted: less than one chunk between calls
        self._plain_hash = hashlib.sha256()
        self._cipher_hash = hashlib.sha256()
        self._received = 0
        self._size = 0
        self._header_read = False
        self._final_seen = False
        self._failed = False

    def push(self, ciphertext: bytes) -> bytes:
        """Feed the next ciphertext bytes; returns the plaintext of every chunk completed and authenticated."""
        self._check_usable()
        view = memoryview(ciphertext).cast("B")
        if self._received + len(view) > self._ref.ct_size:
            self._fail("attachment is longer than its manifest entry (bytes after the final chunk)")
        self._received += len(view)
        self._cipher_hash.update(view)
        out: list[bytes] = []
        if not self._header_read:
            need = HEADER_SIZE - len(self._buffer)
            self._buffer += view[:need]
            view = view[need:]
            if len(self._buffer) < HEADER_SIZE:
                return b""
            crypto_secretstream_xchacha20poly1305_init_pull(self._state, bytes(self._buffer), self._key)
            self._buffer.clear()
            self._header_read = True
        block = self._chunk_size + ABYTES
        # Whole chunks are decrypted straight from the input; only a partial chunk is copied into the buffer.
        while view:
            if self._buffer or len(view) < block:
                need = block - len(self._buffer)
                self._buffer += view[:need]
                view = view[need:]
                if len(self._buffer) == block:
                    out.append(self._open(bytes(self._buffer)))
                    self._buffer.clear()
            else:
                out.append(self._open(bytes(view[:block])))
                view = view[block:]
        # The manifest's ct_size (checked above against size) says where the stream ends, so a short final chunk is
        # complete once every byte has arrived.
        if self._buffer and self._received == self._ref.ct_size:
            out.append(self._open(bytes(self._buffer)))
            self._buffer.clear()
        return b"".join(out)

    def finish(self) -> None:
        """Raise ``AttachmentError`` unless the stream was complete, ended with its final chunk and matches the
        manifest entry (size, SHA-256 of plaintext, ct_size, SHA-256 of ciphertext)."""
        self._check_usable()
        self._failed = True  # finish() is the end either way
        if self._received != self._ref.ct_size or not self._final_seen:
            raise AttachmentError("attachment is truncated: the final chunk is missing")
        if self._size != self._ref.size:
            raise AttachmentError("attachment size does not match its manifest entry")
        if not hmac.compare_digest(self._cipher_hash.hexdigest(), self._ref.ct_sha256):
            raise AttachmentError("attachment ciphertext SHA-256 does not match its manifest entry")
        if not hmac.compare_digest(self._plain_hash.hexdigest(), self._ref.sha256):
            raise AttachmentError("attachment plaintext SHA-256 does not match its manifest entry")

    def _open(self, chunk: bytes) -> bytes:
        if self._final_seen:
            self._fail("attachment has bytes after its final chunk")
        try:
            plaintext, tag = crypto_secretstream_xchacha20poly1305_pull(self._state, chunk, None)
        except nacl.exceptions.CryptoError:
            self._fail("attachment chunk failed to authenticate (modified, reordered, substituted or wrong key)")
        self._chunks_left -= 1
        expected = _TAG_FINAL if self._chunks_left == 0 else _TAG_MESSAGE
        if tag != expected:
            self._fail("attachment chunk has the wrong tag (truncated or extended stream)")
        self._final_seen = tag == _TAG_FINAL
        self._size += len(plaintext)
        self._plain_hash.update(plaintext)
        result: bytes = plaintext
        return result

    def _check_usable(self) -> None:
        if self._failed:
            raise AttachmentError("this attachment stream already failed or finished")

    def _fail(self, message: str) -> NoReturn:
        self._failed = True
        self._buffer.clear()
        raise AttachmentError(message)


class CiphertextVerifier:
    """Check a received ciphertext stream against its manifest entry without the key (size and SHA-256 only)."""

    def __init__(self, ref: AttachmentRef, *, chunk_size: int = CHUNK_SIZE) -> None:
        _check_manifest_sizes(ref, _check_chunk_size(chunk_size))
        self._ref = ref
        self._hash = hashlib.sha256()
        self._received = 0
        self._failed = False

    def push(self, ciphertext: bytes) -> None:
        """Feed the next bytes; ``AttachmentError`` as soon as they exceed the manifest's ``ct_size``."""
        if self._failed:
            raise AttachmentError("this attachment stream already failed or finished")
        if self._received + len(ciphertext) > self._ref.ct_size:
            self._failed = True
            raise AttachmentError("attachment is longer than its manifest entry")
        self._received += len(ciphertext)
        self._hash.update(ciphertext)

    def finish(self) -> None:
        """``AttachmentError`` unless the stream had exactly ``ct_size`` bytes with digest ``ct_sha256``."""
        if self._failed:
            raise AttachmentError("this attachment stream already failed or finished")
        self._failed = True
        if self._received != self._ref.ct_size:
            raise AttachmentError("attachment is shorter than its manifest entry (truncated)")
        if not hmac.compare_digest(self._hash.hexdigest(), self._ref.ct_sha256):
            raise AttachmentError("attachment ciphertext SHA-256 does not match its manifest entry")
