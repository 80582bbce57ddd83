"""Where an audit reads a ledger from: the gateway's database directly, or the gateway's auditor API.

Both give the same things, all of them untrusted: the entries in index order, in batches; the signed checkpoints in
size order, each with the cosignatures it collected appended as signature lines. The database source also gives
the stored tree (level-0 nodes and the head), which an auditor uses only to name exactly which entry changed.

The database source reads through the drivers themselves (sqlite3, asyncpg), in one read-only snapshot (a
deferred SQLite read transaction, a PostgreSQL ``REPEATABLE READ READ ONLY`` transaction), in index ranges of
:data:`BATCH` rows, so memory stays flat whatever the size of the log.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp

from crypto.note import NoteError, add_signatures
from gateway.limits import retry_after_seconds
from protocol import merkle
from protocol.checkpoint import SERVED_COSIGNATURES
from store.db import is_sqlite, split_schema

__all__ = [
    "BATCH",
    "CheckpointRecord",
    "DatabaseSource",
    "HttpSource",
    "Snapshot",
    "Source",
    "SourceError",
    "UnreadableEntry",
    "open_source",
]

BATCH = 20_000  # entries per query: ~7 MB of rows
CHECKPOINT_PAGE = 1_000


class SourceError(Exception):
    """The source cannot be read, or what it returns is malformed (the message says where)."""


@dataclass(frozen=True)
class CheckpointRecord:
    size: int
    note: str  # the signed note with every cosignature line appended


@dataclass(frozen=True)
class Snapshot:
    total: int  # entries to verify: [0, total)
    head: tuple[int, bytes] | None  # the stored tree head (size, root), database only
    extra_rows: str | None = None  # rows outside [0, total), described, if any


class Source(Protocol):
    name: str
    has_stored_tree: bool

    async def snapshot(self) -> Snapshot: ...

    def checkpoints(self) -> AsyncIterator[CheckpointRecord]: ...

    def entries(self, start: int, end: int) -> AsyncIterator[tuple[int, list[bytes]]]: ...

    def message_ids(self, start: int) -> list[bytes | None] | None: ...

    def stored_leaves(self, start: int, end: int) -> AsyncIterator[tuple[int, list[bytes | None]]]: ...

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes] | None: ...

    def entries_of(self, message_id: str) -> AsyncIterator[tuple[int, bytes]]: ...

    async def close(self) -> None: ...


# --- database ----------------------------------------------------------------------------------------------------


class DatabaseSource:
    has_stored_tree = True

    def __init__(self, url: str) -> None:
        self.url = url
        clean, self._schema = split_schema(url)
        self._sqlite = is_sqlite(clean)
        self._clean = clean
        self._lite: sqlite3.Connection | None = None
        self._pg: Any = None
        self._pg_tx: Any = None
        self._pg_lock = asyncio.Lock()
        # the message_id column of the batches fetched and not yet passed on (the current one and the next)
        self._message_ids: dict[int, list[bytes | None]] = {}
        # the column as the bytes an entry holds, converted by the database rather than here; on SQLite only a TEXT
        # value (a BLOB of the same bytes would pass a cast, yet `message_id = ?` never selects it): anything else
        # becomes 0xff, a byte no UTF-8 holds
        as_bytes = (
            "CASE typeof(message_id) WHEN 'text' THEN CAST(message_id AS BLOB) WHEN 'null' THEN NULL ELSE x'ff' END"
            if self._sqlite
            else "convert_to(message_id, 'UTF8')"
        )
        # the entry: on SQLite a TEXT value as its bytes (the driver would decode it, and refuse one not UTF-8)
        entry = "CASE typeof(entry) WHEN 'text' THEN CAST(entry AS BLOB) ELSE entry END" if self._sqlite else "entry"
        self._batch_sql = (
            f"SELECT idx, {entry}, {as_bytes} FROM ledger_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx"  # noqa: S608
        )
        self._entries_of_sql = f"SELECT idx, {entry} FROM ledger_entries WHERE message_id = $1 ORDER BY idx"  # noqa: S608
        parts = urlsplit(clean)
        self.name = f"{parts.scheme.split('+')[0]}:{parts.path.rsplit('/', 1)[-1]}" + (
            f"/{self._schema}" if self._schema else ""
        )

    async def open(self) -> None:
        if self._sqlite:
            path = self._clean.split(":///", 1)[1].split("?", 1)[0] if ":///" in self._clean else ""
            if not path:
                raise SourceError("a SQLite URL looks like sqlite+aiosqlite:///path/to/comity.db")
            try:
                self._lite = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, isolation_level=None)
                self._lite.execute("BEGIN")  # one snapshot for the whole audit
                self._lite.execute("SELECT 1 FROM ledger_entries LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                raise SourceError(f"cannot read the SQLite database {path}: {exc}") from None
            return
        import asyncpg

        dsn = self._clean.replace("postgresql+asyncpg://", "postgresql://", 1)
        settings = {"application_name": "comity-audit"}
        if self._schema:
            settings["search_path"] = self._schema
        try:
            self._pg = await asyncpg.connect(dsn, server_settings=settings)
            self._pg_tx = self._pg.transaction(isolation="repeatable_read", readonly=True)
            await self._pg_tx.start()
        except (OSError, asyncpg.PostgresError) as exc:
            raise SourceError(f"cannot read the PostgreSQL database: {exc}") from None

    async def close(self) -> None:
        if self._lite is not None:
            self._lite.close()
            self._lite = None
        if self._pg is not None:
            try:
                await self._pg_tx.rollback()
            finally:
                await self._pg.close()
                self._pg = None

    async def _fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        """Run ``sql`` written with ``$1, $2, ...`` placeholders."""
        if self._lite is not None:
            for number in range(len(args), 0, -1):
                sql = sql.replace(f"${number}", f"?{number}")
            try:
                return self._lite.execute(sql, args).fetchall()
            except sqlite3.Error as exc:  # e.g. a TEXT value that is not UTF-8, written outside the ledger code
                raise SourceError(f"cannot read the SQLite database: {exc}") from None
        # one query at a time on the connection: the prefetch of the next batch may still be running when a failure
        # reads the stored tree or entries again to name the changed entry (asyncpg refuses a second operation)
        async with self._pg_lock:
            rows: list[Sequence[Any]] = await self._pg.fetch(sql, *args)
        return rows

    async def snapshot(self) -> Snapshot:
        low, high, count = (await self._fetch("SELECT min(idx), max(idx), count(*) FROM ledger_entries"))[0]
        if not all(value is None or type(value) is int for value in (low, high)):  # SQLite stores any type
            return Snapshot(0, None, "a row whose idx is not an integer: written outside the ledger code")
        head_rows = await self._fetch("SELECT size, frontier FROM ledger_head WHERE id = 1")
        head = None
        if head_rows:
            size, blob = head_rows[0][0], head_rows[0][1]
            # SQLite keeps any type in any column: only the ledger code writes this row, an integer size and a BLOB
            if type(size) is not int or size < 0:
                raise SourceError(f"ledger_head: the stored size is not an integer >= 0 ({_shown(size)})")
            if not isinstance(blob, bytes):
                raise SourceError(f"ledger_head: the stored frontier is not bytes ({type(blob).__name__})")
            needs = merkle.root_needs(size)
            if len(blob) != merkle.HASH_SIZE * len(needs):
                raise SourceError(f"ledger_head: the stored frontier does not have the length of size {size}")
            nodes = {node: blob[i * merkle.HASH_SIZE : (i + 1) * merkle.HASH_SIZE] for i, node in enumerate(needs)}
            head = (size, merkle.root_hash(size, nodes))
        total = max(0 if high is None else int(high) + 1, head[0] if head else 0)
        extra = None
        if low is not None and int(low) < 0:
            extra = f"a row with negative idx {int(low)}"
        elif not head_rows:  # every migrated database has it (migration 0001), and only the ledger code writes it
            extra = "the tree head row (ledger_head) is missing: it was deleted outside the ledger code"
        del count
        return Snapshot(total, head, extra)

    async def checkpoints(self) -> AsyncIterator[CheckpointRecord]:
        after = -1
        while True:
            rows = await self._fetch(
                "SELECT size, note FROM checkpoints WHERE size > $1 ORDER BY size LIMIT $2", after, CHECKPOINT_PAGE
            )
            if not rows:
                return
            for size, note in rows:  # SQLite keeps any type in any column; the ledger code writes these only
                if type(size) is not int:
                    raise SourceError(f"checkpoints: a row whose size is not an integer ({_shown(size)})")
                if not isinstance(note, str):
                    raise SourceError(f"checkpoint at size {size}: the stored note is not text")
            low, high = rows[0][0], rows[-1][0]
            found: dict[int, list[tuple[str, str]]] = {}
            for size, witness, line in await self._fetch(
                "SELECT size, witness, line FROM cosignatures WHERE size >= $1 AND size <= $2"
                " ORDER BY size, received_at, witness",
                low,
                high,
            ):
                if type(size) is not int or not isinstance(line, str) or not isinstance(witness, str):
                    raise SourceError(
                        f"cosignatures: a row whose size is not an integer or line not text (size {_shown(size)})"
                    )
                kept = found.setdefault(size, [])
                if len(kept) < SERVED_COSIGNATURES:  # the first witnesses, as the gateway serves them (decision 124)
                    kept.append((witness, line))
            for size, note in rows:
                text = note
                if size in found:
                    try:
                        text = add_signatures(text, [line for _, line in sorted(found[size])])
                    except NoteError as exc:
                        raise SourceError(f"checkpoint at size {size}: a stored cosignature: {exc.message}") from None
                yield CheckpointRecord(size, text)
            after = high

    async def entries(self, start: int, end: int) -> AsyncIterator[tuple[int, list[bytes]]]:
        # the next batch is fetched while the caller checks this one (it yields to the loop between segments)
        position = start
        upcoming = asyncio.ensure_future(self._batch(position, min(position + BATCH, end))) if start < end else None
        try:
            while upcoming is not None:
                batch = await upcoming
                stop = position + len(batch)
                upcoming = asyncio.ensure_future(self._batch(stop, min(stop + BATCH, end))) if stop < end else None
                yield position, batch
                self._message_ids.pop(position, None)
                position = stop
        finally:
            if upcoming is not None:
                upcoming.cancel()
            self._message_ids.clear()

    def message_ids(self, start: int) -> list[bytes | None] | None:
        """The ``message_id`` column of the rows of the batch :meth:`entries` is passing on at ``start`` (the
        operator's index, which timelines select on: the verifier checks it against the entries); ask before the
        next batch is asked for."""
        return self._message_ids.get(start)

    async def _batch(self, position: int, stop: int) -> list[bytes]:
        rows = await self._fetch(self._batch_sql, position, stop)
        if len(rows) != stop - position or (rows and int(rows[-1][0]) != stop - 1):
            expected = position
            for row in rows:
                if int(row[0]) != expected:
                    break
                expected += 1
            raise MissingEntry(expected)
        batch = [row[1] for row in rows]
        if not all(type(entry) is bytes for entry in batch):  # a memoryview, or what SQLite keeps in any column
            batch = [_entry_bytes(position + offset, entry) for offset, entry in enumerate(batch)]
        self._message_ids[position] = [row[2] for row in rows]
        return batch

    async def stored_leaves(self, start: int, end: int) -> AsyncIterator[tuple[int, list[bytes | None]]]:
        position = start
        while position < end:
            stop = min(position + BATCH, end)
            rows = await self._fetch(
                "SELECT idx, hash FROM ledger_nodes WHERE level = 0 AND idx >= $1 AND idx < $2 ORDER BY idx",
                position,
                stop,
            )
            # a hash that is not bytes (SQLite keeps any type) matches no leaf: that entry is named as changed
            found = {int(row[0]): row[1] if type(row[1]) is bytes else None for row in rows}
            yield position, [found.get(index) for index in range(position, stop)]
            position = stop

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes] | None:
        return None  # the auditor recomputes every root itself; the stored nodes add nothing here

    async def entries_of(self, message_id: str) -> AsyncIterator[tuple[int, bytes]]:
        # the message_id column is the operator's: `audit verify` checks it against every entry (so none is left out
        # of a timeline), and an entry it selects must name the message itself
        rows = await self._fetch(self._entries_of_sql, message_id)
        needle = _naming(message_id)
        for index, value in rows:
            entry = _entry_bytes(index, value)
            if needle not in entry:
                raise SourceError(f"entry {index}: the message_id column names a message the entry does not")
            yield int(index), entry


def _naming(message_id: str) -> bytes:
    """The bytes of an entry that names ``message_id`` (canonical JSON: no space, and an id holds no quote)."""
    return f'"message_id":"{message_id}"'.encode()


def _shown(value: object) -> str:
    """A stored value that should have been an integer, for an error line: short, and only a number or a type."""
    return str(value) if type(value) in (int, float) else type(value).__name__


def _entry_bytes(index: int, value: object) -> bytes:
    """The bytes of the entry stored at ``index``: what SQLite keeps in any column is refused unless bytes or text
    (``bytes(n)`` of an integer ``n`` would be ``n`` zero bytes)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise UnreadableEntry(index, f"stored as {type(value).__name__}, not bytes: written outside the ledger code")


class UnreadableEntry(SourceError):
    """The source cannot give the entry at ``index`` (missing, or stored as something that is no entry)."""

    def __init__(self, index: int, what: str) -> None:
        super().__init__(f"entry {index}: {what}")
        self.index = index


class MissingEntry(UnreadableEntry):
    def __init__(self, index: int) -> None:
        super().__init__(index, "missing (the source has no entry at this index)")


# --- auditor API -------------------------------------------------------------------------------------------------

HTTP_BATCH = 20_000  # the API serves at most 100,000 per call


RATE_LIMITED_ATTEMPTS = 8  # answers 429 with a usable Retry-After waited out before one counts as a failure
MAX_RATE_LIMITED_WAIT = 60.0  # seconds: a longer Retry-After is not waited for


class HttpSource:
    """The gateway's auditor API (``docs/ledger.md``, "Auditor API"), with a bearer token."""

    has_stored_tree = False

    def __init__(self, url: str, token: str, *, timeout: float = 120) -> None:
        _check_url(url)
        self.base = url.rstrip("/")
        self.name = self.base
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._latest: CheckpointRecord | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self._token}"}, timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, path: str, params: dict[str, Any]) -> aiohttp.ClientResponse:
        assert self._session is not None
        for attempt in range(RATE_LIMITED_ATTEMPTS):
            try:
                response = await self._session.get(self.base + path, params={k: str(v) for k, v in params.items()})
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise SourceError(f"GET {path}: {_failure(exc)}") from None
            wait = retry_after_seconds(response.headers.get("Retry-After")) if response.status == 429 else None
            if wait is None or wait > MAX_RATE_LIMITED_WAIT or attempt == RATE_LIMITED_ATTEMPTS - 1:
                break
            response.release()  # the user's API budget is spent (decision 177): wait as the gateway says
            await asyncio.sleep(wait)
        if response.status != 200:
            detail = ""
            try:
                body = await response.json(content_type=None)
                detail = f": {body.get('title', '')} {body.get('detail', '')}".rstrip()
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
                pass
            response.release()
            raise SourceError(f"GET {path} answered HTTP {response.status}{detail}")
        return response

    async def _json(self, path: str, params: dict[str, Any]) -> Any:
        response = await self._get(path, params)
        try:
            return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SourceError(f"GET {path}: reading the answer: {_failure(exc)}") from None
        except ValueError as exc:
            raise SourceError(f"GET {path} did not return JSON ({exc})") from None
        finally:
            response.release()

    async def snapshot(self) -> Snapshot:
        """The size to verify is the newest checkpoint's: the ``size`` member is not signed, so :meth:`checkpoints`
        always gives that note too, even at size 0, and the audit checks that its signed size is this one."""
        body = await self._json("/v1/ledger/checkpoint", {})
        size = body.get("size") if isinstance(body, dict) else None
        note = body.get("note") if isinstance(body, dict) else None
        if type(size) is not int or size < 0 or not isinstance(note, str):
            raise SourceError("GET /v1/ledger/checkpoint: expected {size: an integer >= 0, root, note: a signed note}")
        self._latest = CheckpointRecord(size, note)
        return Snapshot(size, None)

    async def checkpoints(self) -> AsyncIterator[CheckpointRecord]:
        latest = self._latest
        after = 0
        while True:
            body = await self._json("/v1/ledger/checkpoints", {"after": after, "limit": CHECKPOINT_PAGE})
            items = body.get("checkpoints") if isinstance(body, dict) else None
            if not isinstance(items, list) or not all(
                isinstance(item, dict) and type(item.get("size")) is int and isinstance(item.get("note"), str)
                for item in items
            ):
                raise SourceError("GET /v1/ledger/checkpoints: expected {checkpoints: [{size: an integer, note}]}")
            page = [CheckpointRecord(item["size"], item["note"]) for item in items]
            for record in page:
                if record.size <= after:
                    raise SourceError("GET /v1/ledger/checkpoints: sizes are not ascending")
                after = record.size
                # the newest is the note /v1/ledger/checkpoint served, given last; later ones were signed after the
                # audit began
                if latest is not None and record.size >= latest.size:
                    continue
                yield record
            if len(page) < CHECKPOINT_PAGE or (latest is not None and after >= latest.size):
                break
        if latest is not None:  # always, at size 0 too: the audit checks that its signed size is the size served
            yield latest

    async def entries(self, start: int, end: int) -> AsyncIterator[tuple[int, list[bytes]]]:
        position = start
        while position < end:
            stop = min(position + HTTP_BATCH, end)
            response = await self._get("/v1/ledger/entries", {"start": position, "end": stop})
            try:
                body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:  # a connection dropped or too slow mid-body
                raise SourceError(f"GET /v1/ledger/entries: reading the answer: {_failure(exc)}") from None
            finally:
                response.release()
            lines = body.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            if len(lines) != stop - position:
                raise MissingEntry(position + min(len(lines), stop - position))
            yield position, lines
            position = stop

    def message_ids(self, start: int) -> list[bytes | None] | None:
        return None  # the API serves entries only: no index of the operator's to check

    async def stored_leaves(self, start: int, end: int) -> AsyncIterator[tuple[int, list[bytes | None]]]:
        return
        yield  # pragma: no cover

    async def consistency_proof(self, size1: int, size2: int) -> list[bytes] | None:
        body = await self._json("/v1/ledger/proofs/consistency", {"from": size1, "to": size2})
        try:
            return [base64.b64decode(item, validate=True) for item in body["proof"]]
        except (KeyError, TypeError, ValueError):
            raise SourceError("GET /v1/ledger/proofs/consistency: expected {proof: [base64...]}") from None

    async def entries_of(self, message_id: str) -> AsyncIterator[tuple[int, bytes]]:
        snap = await self.snapshot()
        needle = _naming(message_id)
        async for start, batch in self.entries(0, snap.total):
            for offset, entry in enumerate(batch):
                if needle in entry:
                    yield start + offset, entry


def _check_url(url: str) -> None:
    """An auditor API address: http or https, a host, a port if any in range, and no user or password, which the
    URL would carry into every message naming it (decision 95). Refused without repeating it."""
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        usable = False
    if not usable:
        raise SourceError("--url must be an http:// or https:// address with a host and no user name or password")


def _failure(exc: BaseException) -> str:
    """An HTTP client failure in one line: its type, and its text if it has one (not for an address aiohttp
    refused, whose text is the address)."""
    if isinstance(exc, aiohttp.InvalidURL):
        return type(exc).__name__
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def open_source(*, database: str | None = None, url: str | None = None, token: str | None = None) -> Source:
    source: DatabaseSource | HttpSource
    if database is not None:
        source = DatabaseSource(database)
    elif url is not None and token is not None:
        source = HttpSource(url, token)
    else:
        raise SourceError("give --database URL, or --url URL with --token TOKEN")
    await source.open()
    return source
