"""Attachment files that no message names, removed once they are a week old (decision 101).

A file is written, fsynced and renamed before the row that names it commits (gateway/files.py), so a failure in
between leaves a file nobody will read: a submission whose commit the database could not confirm and that turns out
not to be stored (decision 96), a process killed between an attachment's rename and its message's commit, a
partial file of a write that died with its process. They hold ciphertext only, under keys that died with the
failed request, but they fill the disk.

Once an hour each process lists ``attachments/out`` and ``attachments/in``. A file is an orphan when its name has
the form the gateway gives attachment files, it was last modified more than :data:`ORPHAN_GRACE` ago and after the
database's first checkpoint (the first start of a gateway on it), and no ``attachments`` row of a message of that
direction names it; it is removed when it is still an orphan at a sweep at least :data:`CONFIRM_AFTER` later (on
the monotonic clock, so that a wall clock stepping forward cannot make a file that is waiting for its row look
old). The grace is far beyond the longest write a file can be part of: an 8 GiB attachment at the 64 KiB/s a
receiver allows takes 36 hours.

Removing what the database does not name is only safe with the right database, so nothing is removed unless:

* the attachments directory is bound to this database: a random id kept both as a fact in the database and in
  the file :data:`MARKER` of the directory (written together the first time, when neither exists);
* the database can answer;
* the orphans are a handful, not most of what is old: a database restored from an older snapshot, or still
  being loaded, names few of the files, and an outage leaves a few orphans, not hundreds.

Each refusal is an error log line (``attachment_sweep_refused``) saying why.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.context import Gateway
from gateway.logs import get_logger
from gateway.loops import stop_if_cancelled
from store.facts import claim_fact, read_fact
from store.ledger import LedgerReader
from store.messages import Messages

__all__ = ["CONFIRM_AFTER", "MARKER", "ORPHAN_GRACE", "Swept", "Sweeper"]

ORPHAN_GRACE = 7 * 86400.0  # seconds since a file no row names was last modified before it may go (see above)
CONFIRM_AFTER = 3600.0  # monotonic seconds a file must stay an orphan, from one sweep to a later one
SWEEP_INTERVAL = 3600.0  # seconds between two sweeps of one process
FIRST_SWEEP = 60.0  # seconds after the start
BATCH = 500  # message ids looked up per query
MOST = 0.5  # of the old files listed, the share of orphans beyond which nothing is removed ...
MANY = 100  # ... once they are more than this many
MARKER = ".comity-database"  # in the attachments directory: the id of the database it belongs to
BINDING_FACT = "attachments_directory_id"
# the names gateway/sending.py (<message id>.<position>) and gateway/receiving.py (... .<16 hex>) give attachment
# files, and their partial form; anything else in the directory is not the gateway's to remove
_NAME = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.[0-9]{1,6}(\.[0-9a-f]{16})?(\.part)?"
)


@dataclass(frozen=True)
class Swept:
    files: int
    bytes: int


class Sweeper:
    def __init__(self, gw: Gateway, *, grace: float = ORPHAN_GRACE, confirm_after: float = CONFIRM_AFTER) -> None:
        self.gw = gw
        self.grace = grace
        self.confirm_after = confirm_after
        # files last modified before this (wall clock) were looked at by an earlier sweep of this process: the named
        # ones stay named (rows are never deleted) and the others are suspects below, so later sweeps list only the
        # files that aged past the grace since
        self._listed_before = float("-inf")
        self._suspects: dict[tuple[str, str], float] = {}  # (direction, name) -> monotonic time first found orphan
        self.log = get_logger(component="sweeper")

    async def sweep(self) -> Swept:
        """Remove the confirmed orphans; return how many files and bytes were removed."""
        cutoff, now = time.time() - self.grace, time.monotonic()
        root = self.gw.settings.attachments_path
        async with self.gw.reader.connect() as conn:
            born = await LedgerReader.first_checkpoint_at(conn)
        if born is None or not await self._bound(root):  # no gateway has started on it, or another's directory
            return Swept(0, 0)
        listed_after = max(self._listed_before, born.timestamp())
        found: dict[str, dict[str, int]] = {}  # direction -> orphan name -> size
        for direction in ("out", "in"):
            directory = root / direction
            old = await asyncio.to_thread(_aged, directory, listed_after, cutoff)
            again = {name for way, name in self._suspects if way == direction and name not in old}
            sizes = {**old, **await asyncio.to_thread(_sizes, directory, again)}
            orphans = await self._unnamed(direction, sizes)
            listed_orphans = sum(1 for name in orphans if name in old)
            if listed_orphans > MANY and listed_orphans > MOST * len(old):
                self.log.error(
                    "attachment_sweep_refused",
                    reason="most old files are named by no message: is this the right database, fully loaded?",
                    directory=direction,
                    orphans=listed_orphans,
                    listed=len(old),
                )
                return Swept(0, 0)  # nothing removed, and the same files are listed again at the next sweep
            found[direction] = {name: sizes[name] for name in orphans}
        self._listed_before = cutoff
        removed = Swept(0, 0)
        suspects: dict[tuple[str, str], float] = {}
        for direction, sized in found.items():
            for name, size in sized.items():
                since = self._suspects.get((direction, name), now)
                if now - since < self.confirm_after:
                    suspects[direction, name] = since
                elif await asyncio.to_thread(_remove, root / direction / name):
                    removed = Swept(removed.files + 1, removed.bytes + size)
        self._suspects = suspects  # a suspect named meanwhile, or gone, is dropped
        if removed.files:
            self.log.warning("attachment_orphans_removed", files=removed.files, bytes=removed.bytes)
            self.gw.metrics.orphan_files_removed.inc(removed.files)
        return removed

    async def _unnamed(self, direction: str, files: dict[str, int]) -> set[str]:
        names = sorted(files)
        unnamed: set[str] = set()
        for start in range(0, len(names), BATCH):
            batch = names[start : start + BATCH]
            ids = {_message_id(name) for name in batch}
            async with self.gw.reader.connect() as conn:
                named = await Messages.attachment_files(conn, direction, ids)
            unnamed.update(name for name in batch if name not in named)
        return unnamed

    async def _bound(self, root: Path) -> bool:
        """Whether ``root`` belongs to this database; binds the two the first time, when neither names the other."""
        marker = root / MARKER
        on_disk = await asyncio.to_thread(_read_marker, marker)
        async with self.gw.reader.connect() as conn:
            in_database = await read_fact(conn, BINDING_FACT)
        if in_database is None and on_disk is None:
            async with self.gw.transaction() as conn:  # one id, whichever replica binds first
                in_database = await claim_fact(conn, BINDING_FACT, secrets.token_hex(16))
            await asyncio.to_thread(_write_marker, marker, str(in_database))
            on_disk = str(in_database)
        if on_disk == in_database:
            return True
        self.log.error(
            "attachment_sweep_refused",
            reason=(
                f"the attachments directory's {MARKER} does not name this database ({in_database}): another "
                "gateway's directory, or a database restored without it; nothing is removed"
                if on_disk is not None
                else f"the attachments directory has no {MARKER} but the database was bound to one ({in_database}): "
                f"restore the file from the backup of the directory; nothing is removed"
            ),
        )
        return False

    async def run(self, interval: float = SWEEP_INTERVAL, first: float = FIRST_SWEEP) -> None:
        """Sweep ``first`` seconds after the start, then every ``interval`` (plus up to a tenth: replicas sharing
        the directory do not all list it at once), until cancelled."""
        await asyncio.sleep(first)
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # the database or the disk: the next sweep looks again
                self.log.warning("attachment_sweep_failed", error=type(exc).__name__)
            stop_if_cancelled()
            await asyncio.sleep(interval * (1 + 0.1 * random.random()))  # noqa: S311 (spread, not a secret)


def _message_id(name: str) -> str:
    return name[:36]


def _aged(directory: Path, after: float, before: float) -> dict[str, int]:
    """The attachment files of ``directory`` last modified in [after, before): name -> size."""
    return {entry.name: stat.st_size for entry, stat in _files(directory) if after <= stat.st_mtime < before}


def _sizes(directory: Path, names: set[str]) -> dict[str, int]:
    """Of ``names``, those still in ``directory``: name -> size."""
    sizes = {}
    for name in names:
        try:
            sizes[name] = (directory / name).stat().st_size
        except OSError:
            continue
    return sizes


def _files(directory: Path) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:  # nothing was ever written there
        return
    for entry in entries:
        if not _NAME.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                yield entry, entry.stat(follow_symlinks=False)
        except OSError:  # removed meanwhile, or unreadable: not this sweep's to judge
            continue


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:  # another replica removed it
        return False
    except OSError as error:
        get_logger(component="sweeper").warning(
            "attachment_file_not_removed", error=errno.errorcode.get(error.errno or 0, "OSError")
        )
        return False
    return True


def _read_marker(marker: Path) -> str | None:
    try:
        return marker.read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        return None


def _write_marker(marker: Path, value: str) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    partial = marker.with_name(marker.name + ".part")
    partial.write_text(value + "\n", encoding="ascii")
    partial.chmod(0o600)
    os.replace(partial, marker)
