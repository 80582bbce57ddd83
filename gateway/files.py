"""Attachment ciphertext files: written to a temporary name, fsynced, then renamed, so a crash never leaves a
half-written file under a final name."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["AttachmentFile", "read_chunks"]

READ_SIZE = 1 << 20


class AttachmentFile:
    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.final = directory / name
        self.partial = directory / (name + ".part")
        self._file = self.partial.open("wb")

    def write(self, data: bytes) -> None:
        if data:
            self._file.write(data)

    def commit(self) -> Path:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.partial.replace(self.final)
        return self.final

    def discard(self) -> None:
        self._file.close()
        self.partial.unlink(missing_ok=True)


async def read_chunks(path: Path, size: int = READ_SIZE) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk
