"""Attachment files no message names are removed once older than the grace and still orphans at a later sweep
(gateway/sweeper.py, decision 101); every file a message names stays, however old, and nothing is removed while
the database cannot answer, when the directory belongs to another database, or when most old files look orphaned."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from sqlalchemy import insert, update

from gateway import sweeper as sweeper_module
from gateway.sweeper import MARKER, ORPHAN_GRACE, Sweeper
from store.messages import Messages
from store.tables import attachments, checkpoints
from tests.gateway.conftest import Pair, Side
from tests.gateway.test_exchange import wait_for
from tests.gateway.test_markings import post_form

REQUEST = {"to": "au.ag", "kind": "request", "marking": {"level": "CONFIDENTIAL", "caveats": []}, "content": {}}
OLD = ORPHAN_GRACE + 3600


def _age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def _names(directory: Path) -> set[str]:
    return {entry.name for entry in directory.iterdir()}


def _orphan(directory: Path, data: bytes = b"x", *, age: float = OLD, name: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"{uuid.uuid4()}.0")
    path.write_bytes(data)
    _age(path, age)
    return path


async def _started_days_ago(side: Side, days: int) -> None:
    """As if a gateway had first started on this database ``days`` ago (its first checkpoint's time)."""
    async with side.gw.transaction() as conn:
        await conn.execute(update(checkpoints).values(created_at=datetime.now(UTC) - timedelta(days=days)))


async def test_files_no_message_names_go_after_the_grace_and_named_ones_stay(pair: Pair) -> None:
    status, body = await post_form(pair.ar, "/v1/messages", REQUEST, b"%PDF evidence" * 1000, "records.pdf")
    assert status == 202, body
    message_id = body["id"]
    await wait_for(pair.ar, message_id, "delivered")
    await _started_days_ago(pair.ar, 30)
    root = pair.ar.gw.settings.attachments_path
    out, incoming = root / "out", root / "in"
    (named,) = _names(out)
    assert named == f"{message_id}.0"
    _age(out / named, OLD)  # a message's own file, however old, stays

    orphans = [
        _orphan(out, b"x" * 10),  # a submission that was never stored
        _orphan(out, b"y" * 20, name=f"{message_id}.1"),  # a second file of a message that has one attachment
        _orphan(out, b"z" * 30, name=f"{message_id}.0.part"),  # a partial write whose process died
        _orphan(incoming, b"w" * 40, name=f"{message_id}.0"),  # named by a message we sent, not one we received
        _orphan(incoming, b"v" * 50, name=f"{uuid.uuid4()}.0.0123456789abcdef"),  # a reception never stored
    ]
    young = _orphan(out, age=0)  # no row names it yet: its message may still be committing
    theirs = _orphan(out, name="notes.txt")  # not a name the gateway gives: not the gateway's to remove

    swept = await Sweeper(pair.ar.gw, confirm_after=0).sweep()

    assert (swept.files, swept.bytes) == (len(orphans), 150)
    assert _names(out) == {named, young.name, theirs.name}
    assert _names(incoming) == set()
    # the message's attachment still opens
    status, data = await pair.ar.call("GET", f"/v1/messages/{message_id}/attachments/0")
    assert status == 200 and data == b"%PDF evidence" * 1000
    assert f"comity_attachment_orphans_removed_total {len(orphans)}.0" in await pair.ar.metrics()


async def test_an_orphan_goes_only_if_it_still_is_one_at_a_later_sweep(pair: Pair) -> None:
    """A wall clock stepping forward can make a file that waits for its row look a week old: a file is removed only
    when it is still named by no row at a sweep at least ``confirm_after`` (monotonic) later."""
    status, body = await post_form(pair.ar, "/v1/messages", REQUEST, b"%PDF one", "one.pdf")
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    await _started_days_ago(pair.ar, 30)
    out = pair.ar.gw.settings.attachments_path / "out"
    waiting = _orphan(out, name=f"{body['id']}.1")  # its row commits between the two sweeps
    lost = _orphan(out)  # no row ever names it
    sweeper = Sweeper(pair.ar.gw, confirm_after=1.0)
    assert (await sweeper.sweep()).files == 0 and waiting.exists() and lost.exists()
    async with pair.ar.gw.transaction() as conn:
        row = {"message_id": body["id"], "position": 1, "ct_size": 1, "ct_sha256": "0" * 64, "path": waiting.name}
        await conn.execute(insert(attachments).values(**row))
    assert (await sweeper.sweep()).files == 0  # too soon for the suspect
    await asyncio.sleep(1.1)
    assert (await sweeper.sweep()).files == 1
    assert waiting.exists() and not lost.exists()


async def test_a_file_is_swept_by_the_first_sweep_after_it_outgrows_the_grace(pair: Pair) -> None:
    sweeper = Sweeper(pair.ar.gw, grace=1.5, confirm_after=0)
    orphan = _orphan(pair.ar.gw.settings.attachments_path / "out", age=0)
    assert (await sweeper.sweep()).files == 0 and orphan.exists()
    await asyncio.sleep(2)
    assert (await sweeper.sweep()).files == 1 and not orphan.exists()


async def test_nothing_is_removed_while_the_database_cannot_answer(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    orphan = _orphan(pair.ar.gw.settings.attachments_path / "out")
    await _started_days_ago(pair.ar, 30)

    async def down(*args: object) -> set[str]:
        raise ConnectionRefusedError

    monkeypatch.setattr(Messages, "attachment_files", down)
    sweeper = Sweeper(pair.ar.gw, confirm_after=0)
    with pytest.raises(ConnectionRefusedError):
        await sweeper.sweep()
    assert orphan.exists()
    monkeypatch.undo()
    assert (await sweeper.sweep()).files == 1 and not orphan.exists()  # the failed sweep did not move its mark


async def test_files_older_than_the_database_are_never_swept(pair: Pair) -> None:
    """A gateway started by mistake on an empty database, beside the real attachments: no row names the real files,
    but they are older than this database's first checkpoint, so they stay."""
    out = pair.ar.gw.settings.attachments_path / "out"
    real = [_orphan(out, b"ciphertext", age=ORPHAN_GRACE + 86400) for _ in range(3)]
    assert (await Sweeper(pair.ar.gw, confirm_after=0).sweep()).files == 0
    assert all(path.exists() for path in real)
    await _started_days_ago(pair.ar, 30)  # the same files, had they been written while this database was in use
    assert (await Sweeper(pair.ar.gw, confirm_after=0).sweep()).files == 3


async def test_a_directory_bound_to_another_database_is_left_alone(pair: Pair) -> None:
    """The first sweep binds the directory to the database (a random id in both); a directory whose marker names
    another database, or a database bound to a directory whose marker is missing, is refused, with an error."""
    await _started_days_ago(pair.ar, 30)
    root = pair.ar.gw.settings.attachments_path
    assert (await Sweeper(pair.ar.gw, confirm_after=0).sweep()).files == 0  # nothing to remove yet; binds
    bound = (root / MARKER).read_text().strip()
    assert len(bound) == 32
    orphan = _orphan(root / "out")
    for marker in ("0" * 32, None):  # another database's directory; a directory restored without its marker
        if marker is None:
            (root / MARKER).unlink()
        else:
            (root / MARKER).write_text(marker)
        with structlog.testing.capture_logs() as logs:
            assert (await Sweeper(pair.ar.gw, confirm_after=0).sweep()).files == 0
        assert orphan.exists()
        assert [line["event"] for line in logs if line["log_level"] == "error"] == ["attachment_sweep_refused"]
    (root / MARKER).write_text(bound + "\n")
    assert (await Sweeper(pair.ar.gw, confirm_after=0).sweep()).files == 1


async def test_nothing_is_removed_when_most_old_files_are_named_by_no_message(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database restored from an older snapshot, or still being loaded, names few of the files: refused, and the
    same files are looked at again at the next sweep."""
    await _started_days_ago(pair.ar, 30)
    out = pair.ar.gw.settings.attachments_path / "out"
    files = [_orphan(out) for _ in range(sweeper_module.MANY + 1)]
    sweeper = Sweeper(pair.ar.gw, confirm_after=0)
    with structlog.testing.capture_logs() as logs:
        assert (await sweeper.sweep()).files == 0
    assert all(path.exists() for path in files)
    assert [line["event"] for line in logs if line["log_level"] == "error"] == ["attachment_sweep_refused"]
    monkeypatch.setattr(sweeper_module, "MANY", len(files))  # an operator's judgement, in the test's terms
    assert (await sweeper.sweep()).files == len(files)
