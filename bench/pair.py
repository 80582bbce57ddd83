"""Two gateways on loopback, each in its own ``comity serve`` process, on SQLite or on fresh PostgreSQL schemas.

Provisioning goes through :func:`gateway.provision.provision` (the real ``comity`` commands, fast KDF); officer
tokens come from ``comity user create``. The bench reads each gateway's database directly (read only) to follow
the outbox and to take the authoritative ledger times, which costs the gateways nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from gateway.provision import AuthoritySpec, Provisioned, provision

__all__ = ["PASSPHRASE", "PG_ADMIN_DSN", "Database", "GatewayProcess", "Pair", "start_pair"]

PASSPHRASE = "bench passphrase, not a secret"  # noqa: S105 - fast-KDF keys in a temporary directory
PG_ADMIN_DSN = os.environ.get("COMITY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
SENDER = AuthoritySpec("ar.mj", "Ministerio de Justicia y Derechos Humanos", "AR", ("es", "en"))
RECEIVER = AuthoritySpec("au.ag", "Attorney-General's Department", "AU", ("en",))
COMITY = str(Path(sys.executable).with_name("comity"))


def ledger_time(entry: bytes) -> float:
    """The ``time`` member of a canonical ledger entry, as a POSIX timestamp."""
    return datetime.fromisoformat(json.loads(entry)["time"]).timestamp()


class Database:
    """Read-only access to one gateway's store, from the bench process."""

    def __init__(self, backend: str, *, sqlite_path: Path | None = None, schema: str | None = None) -> None:
        self.backend = backend
        self.sqlite_path = sqlite_path
        self.schema = schema
        self._pg: Any = None

    async def open(self) -> None:
        if self.backend == "postgresql":
            self._pg = await asyncpg.connect(PG_ADMIN_DSN, server_settings={"search_path": str(self.schema)})

    async def close(self) -> None:
        if self._pg is not None:
            await self._pg.close()
            self._pg = None

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Run one query; ``$1``-style parameters on both backends."""
        if self._pg is not None:
            return [tuple(row) for row in await self._pg.fetch(sql, *args)]
        return await asyncio.to_thread(self._sqlite_fetch, sql, args)

    def _sqlite_fetch(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        for position in range(len(args), 0, -1):
            sql = sql.replace(f"${position}", "?")
        conn = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=30)
        try:
            return list(conn.execute(sql, tuple(args)).fetchall())
        finally:
            conn.close()

    async def outbox_pending(self) -> int:
        return int((await self.fetch("SELECT count(*) FROM outbox"))[0][0])

    async def outbox_errors(self) -> int:
        return int((await self.fetch("SELECT count(*) FROM outbox WHERE last_error IS NOT NULL"))[0][0])

    async def states(self) -> dict[str, int]:
        rows = await self.fetch("SELECT state, count(*) FROM messages WHERE direction = 'out' GROUP BY state")
        return {str(state): int(count) for state, count in rows}

    async def ledger_times(self, event_type: str) -> dict[str, float]:
        """message id -> ledger time of its ``event_type`` entry (the first one)."""
        rows = await self.fetch("SELECT message_id, entry FROM ledger_entries WHERE type = $1 ORDER BY idx", event_type)
        times: dict[str, float] = {}
        for message_id, entry in rows:
            times.setdefault(str(message_id), ledger_time(bytes(entry)))
        return times

    async def ledger_size(self) -> int:
        return int((await self.fetch("SELECT size FROM ledger_head WHERE id = 1"))[0][0])


@dataclass
class GatewayProcess:
    name: str
    provisioned: Provisioned
    token: str
    db: Database
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    session: aiohttp.ClientSession | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.provisioned.api_port}"

    @property
    def authority_id(self) -> str:
        return self.provisioned.spec.id

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, log_level: str) -> None:
        env = {**os.environ, "COMITY_PASSPHRASE": PASSPHRASE, "COMITY_LOG_LEVEL": log_level}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [COMITY, "serve", "--config", str(self.provisioned.config)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    async def wait_ready(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as probe:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} gateway exited with {self.proc.returncode}: {self.log_tail(3)}")
                try:
                    async with probe.get(self.api + "/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} gateway not ready after {within} s; see {self.log_path}")
                await asyncio.sleep(0.1)
        connector = aiohttp.TCPConnector(limit=128)
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> int | None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        return self.proc.returncode


@dataclass
class Pair:
    backend: str
    workdir: Path
    sender: GatewayProcess
    receiver: GatewayProcess
    schemas: list[str] = field(default_factory=list)

    @property
    def pids(self) -> dict[str, int]:
        return {"sender": self.sender.pid, "receiver": self.receiver.pid}

    async def close(self) -> None:
        """Stop both gateways, close the bench's connections and drop the PostgreSQL schemas."""
        for side in (self.sender, self.receiver):
            try:
                await side.stop()
            finally:
                await side.db.close()
        await drop_schemas(self.schemas)


async def create_schema() -> str:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return schema


async def drop_schemas(schemas: Sequence[str]) -> None:
    if not schemas:
        return
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        for schema in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def _provision(workdir: Path, urls: list[str | None]) -> list[Provisioned]:
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "provision.log").open("w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        return provision(workdir, [SENDER, RECEIVER], passphrase=PASSPHRASE, database_urls=urls)


def _create_officer(config: Path, username: str) -> str:
    result = subprocess.run(
        [COMITY, "user", "create", username, "--role", "officer", "--token-days", "1", "--config", str(config)],
        env={**os.environ, "COMITY_PASSPHRASE": PASSPHRASE},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.strip().splitlines()[-1]


async def start_pair(backend: str, workdir: Path, *, log_level: str) -> Pair:
    """Provision two authorities, issue an officer token on each and start both gateways (own processes)."""
    schemas: list[str] = []
    try:
        urls: list[str | None] = [None, None]
        if backend == "postgresql":
            schemas = [await create_schema(), await create_schema()]
            base = PG_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://", 1)
            urls = [f"{base}?comity_schema={schema}" for schema in schemas]
        # the comity commands run their own event loop: run them in a thread
        sender_p, receiver_p = await asyncio.to_thread(_provision, workdir, urls)
        sides = []
        for index, (provisioned, user) in enumerate(((sender_p, "alice"), (receiver_p, "bruce"))):
            token = await asyncio.to_thread(_create_officer, provisioned.config, user)
            if backend == "postgresql":
                db = Database(backend, schema=schemas[index])
            else:
                db = Database(backend, sqlite_path=provisioned.data_dir / "comity.db")
            await db.open()
            name = "sender" if index == 0 else "receiver"
            sides.append(GatewayProcess(name, provisioned, token, db, workdir / f"{name}.log"))
        pair = Pair(backend, workdir, sides[0], sides[1], schemas)
    except BaseException:
        await drop_schemas(schemas)
        raise
    try:
        for side in (pair.sender, pair.receiver):
            side.start(log_level)
        for side in (pair.sender, pair.receiver):
            await side.wait_ready()
    except BaseException:
        await pair.close()
        raise
    return pair
