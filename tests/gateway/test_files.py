"""Attachment files on disk (gateway/files.py): written whole, synced, then renamed in a synced directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.files import AttachmentFile


def test_a_committed_file_and_its_rename_are_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's bytes are synced before the rename, and the directory after it: a rename is an entry of the
    directory, and a power loss could otherwise undo it after the message row naming the file had committed."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    stored = AttachmentFile(tmp_path / "in", "a1")
    stored.write(b"ciphertext")
    final = stored.commit()
    assert synced == ["file", "directory"]
    assert final.read_bytes() == b"ciphertext" and not (tmp_path / "in" / "a1.part").exists()
