"""The auditor's own memory: the newest checkpoint it verified per log, kept in a local JSON file.

A log that the operator rewrote *consistently* (entries, tree nodes and freshly signed checkpoints all agree) passes
every check that looks at the log alone. What gives it away is history: the root at a size this auditor verified
before must still be the root at that size. The file holds, per origin::

    {"version": 1,
     "logs": {"comity-ledger/ar.mj": {"size": 2000, "root": "<base64>", "note": "<signed note>",
                                        "verified_at": "2026-11-28T07:40:00.123456Z"}},
     "directory_serials": {"<directory key kid>": 7}}

and the highest directory serial seen per pinned directory key (an older directory is refused). It is written
atomically (temporary file, then rename), merged under a lock file with what another run saved meanwhile, and only
after a run in which the whole log verified: a run that then fails ``--max-unwitnessed`` has saved it (only
witnessing lags; decision 106).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.files import sync_directory

__all__ = ["AuditState", "StateError", "Verified", "default_state_path"]


class StateError(Exception):
    """The state file cannot be read or is malformed."""


def default_state_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "comity" / "audit-state.json"


@dataclass(frozen=True)
class Verified:
    size: int
    root: bytes
    note: str
    verified_at: str


class AuditState:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._data: dict[str, Any] = {"version": 1, "logs": {}, "directory_serials": {}}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StateError(f"cannot read the state file {path}: {exc}") from None
            if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("logs"), dict):
                raise StateError(f"the state file {path} is not a version 1 audit state")
            data.setdefault("directory_serials", {})
            self._data = data

    def last(self, origin: str) -> Verified | None:
        entry = self._data["logs"].get(origin)
        return None if entry is None else AuditState._entry(origin, entry)

    @staticmethod
    def _entry(origin: str, entry: Any) -> Verified:
        try:
            return Verified(
                int(entry["size"]), base64.b64decode(entry["root"]), str(entry["note"]), entry["verified_at"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"the state file entry for {origin} is malformed ({exc})") from None

    def directory_serial(self, kid: str) -> int:
        return int(self._data["directory_serials"].get(kid, 0))

    def remember(self, origin: str, verified: Verified, directory_kid: str, directory_serial: int) -> None:
        """Hold ``verified`` as the newest checkpoint of ``origin`` seen, unless one held is larger: what this
        auditor once saw signed never shrinks."""
        held = self.last(origin)
        if held is not None and held.size > verified.size:
            verified = held
        self._data["logs"][origin] = {
            "size": verified.size,
            "root": base64.b64encode(verified.root).decode("ascii"),
            "note": verified.note,
            "verified_at": verified.verified_at,
        }
        serials = self._data["directory_serials"]
        serials[directory_kid] = max(int(serials.get(directory_kid, 0)), directory_serial)

    def save(self) -> None:
        """Write the state, merged with what the file holds now: another run that finished meanwhile may have
        saved a larger log, which must not be rolled back (decision 172). One run at a time, under a lock file."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._merge(AuditState(self.path)._data)
            self._write()

    def _merge(self, saved: dict[str, Any]) -> None:
        """Keep, per log, the larger of this run's and the file's checkpoints (the same root if the same size), and
        the higher directory serial."""
        for origin, entry in saved["logs"].items():
            theirs, ours = AuditState._entry(origin, entry), self.last(origin)
            if ours is not None and theirs.size == ours.size and theirs.root != ours.root:
                raise StateError(
                    f"another run saved a different root for {origin} at size {ours.size}: the log was forked or "
                    "rewritten; the state file is left as it is"
                )
            if ours is None or theirs.size > ours.size:
                self._data["logs"][origin] = entry
        serials = self._data["directory_serials"]
        for kid, serial in saved["directory_serials"].items():
            serials[kid] = max(int(serials.get(kid, 0)), int(serial))

    def _write(self) -> None:
        assert self.path is not None
        fd, tmp = tempfile.mkstemp(prefix=".audit-state-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._data, handle, indent=2, sort_keys=True)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            sync_directory(self.path.parent)  # the rename itself survives a crash: the next run compares with it
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
