"""Attachment ciphertext files: written to a temporary name, fsynced, then renamed, so a crash never leaves a
half-written file under a final name.

Creating, writing or committing a file raises :class:`FileStoreFailed` when the file system fails (a full disk,
say): not a ``ComityError``, so that it never becomes a signed refusal of bytes that are fine; the API and the
federation endpoint answer it 503 ``store-unavailable`` (gateway/problems.py). Cleaning up never raises.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

from gateway.logs import get_logger

__all__ = ["AttachmentFile", "FileStoreFailed", "read_chunks", "readable", "remove_quietly", "sync_directory"]

READ_SIZE = 1 << 20
_T = TypeVar("_T")


class FileStoreFailed(Exception):
    """The file system failed while an attachment was stored or read; ``reason`` is the errno's name (never a
    path)."""

    def __init__(self, error: OSError, doing: str = "storing") -> None:
        self.reason = errno.errorcode.get(error.errno or 0, type(error).__name__)
        super().__init__(f"{doing} an attachment failed ({self.reason})")


def _on_disk(operation: Callable[[], _T]) -> _T:
    try:
        return operation()
    except OSError as error:
        raise FileStoreFailed(error) from error


def remove_quietly(path: Path) -> None:
    """Remove ``path`` if it is there; a failure to remove it is logged for the operator (the errno's name, not the
    path), not raised."""
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        get_logger().warning("attachment_file_not_removed", error=errno.errorcode.get(error.errno or 0, "OSError"))


def sync_directory(directory: Path) -> None:
    """Sync ``directory`` itself: the entries made, renamed or replaced in it survive a power loss."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _make_directory(directory: Path) -> None:
    """Make ``directory`` if it is not there, and sync its parent, whose entry it is (decision 158)."""
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        sync_directory(directory.parent)


class AttachmentFile:
    def __init__(self, directory: Path, name: str) -> None:
        _on_disk(lambda: _make_directory(directory))
        self.final = directory / name
        self.partial = directory / (name + ".part")
        self._file = _on_disk(lambda: self.partial.open("wb"))

    def write(self, data: bytes) -> None:
        if data:
            _on_disk(lambda: self._file.write(data))

    def close(self) -> None:
        """Flush, sync and close the partial file once all of it is written, so that a delivery of many parts holds
        one file open at a time; :meth:`commit` then only renames it."""

        def close() -> None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

        if not self._file.closed:
            _on_disk(close)

    def commit(self) -> Path:
        self.close()

        def commit() -> Path:
            self.partial.replace(self.final)
            # the rename is an entry of the directory: synced too, before the row naming the file can commit, so
            # that a power loss cannot leave a stored message whose file is still under its partial name
            sync_directory(self.final.parent)
            return self.final

        return _on_disk(commit)

    def discard(self) -> None:
        """Close and remove the partial file. Never raises: closing flushes what is buffered, which fails again on
        a full disk, and the file must go all the same."""
        with suppress(OSError):
            self._file.close()
        remove_quietly(self.partial)


async def read_chunks(path: Path, size: int = READ_SIZE) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def readable(path: Path) -> None:
    """Raise :class:`FileStoreFailed` unless the file can be opened for reading now (a missing attachments directory
    after a restore, a permission): checked before a download is answered or ledgered."""
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise FileStoreFailed(error, "reading") from error
