"""Attachment files on disk (gateway/files.py): written whole, synced, then renamed in a synced directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.files import AttachmentFile


def test_a_committed_file_its_rename_and_a_new_directory_are_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's bytes are synced before the rename, and the directory after it: a rename is an entry of the
    directory, and a power loss could otherwise undo it after the message row naming the file had committed. The
    first attachment makes its directory (attachments/in or out), an entry of the directory above: synced too."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    root = tmp_path / "attachments"
    root.mkdir()
    stored = AttachmentFile(root / "in", "a1")
    stored.write(b"ciphertext")
    final = stored.commit()
    assert synced == [str(root), str(root / "in" / "a1.part"), str(root / "in")]
    assert final.read_bytes() == b"ciphertext" and not (root / "in" / "a1.part").exists()
    synced.clear()
    second = AttachmentFile(root / "in", "a2")  # the directory is there: only the file and its rename
    second.write(b"more")
    second.commit()
    assert synced == [str(root / "in" / "a2.part"), str(root / "in")]
