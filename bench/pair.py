"""Two gateways on loopback, each in its own ``comity serve`` process, on SQLite or on fresh PostgreSQL schemas.

Provisioning goes through :func:`gateway.provision.provision` (the real ``comity`` commands, fast KDF); officer
tokens come from ``comity user create``. Every product process (provisioning, the commands, the gateways) runs
the code of a :class:`CodeSource`: by default a snapshot of git HEAD (``git archive``), so that the figures belong
to one commit even while others edit the working tree; ``--code worktree`` runs the working tree as it is.

The bench reads each gateway's database directly (read only) to follow the outbox and to take the authoritative
ledger times, which costs the gateways nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.schemas import PG_ADMIN_DSN, create_schema, drop_schemas, schema_url
from gateway.provision import AuthoritySpec

__all__ = [
    "PASSPHRASE",
    "PG_ADMIN_DSN",
    "CodeSource",
    "Database",
    "GatewayProcess",
    "Pair",
    "code_source",
    "start_pair",
]

PASSPHRASE = "bench passphrase, not a secret"  # noqa: S105 - fast-KDF keys in a temporary directory
SENDER = AuthoritySpec("ar.mj", "Ministerio de Justicia y Derechos Humanos", "AR", ("es", "en"))
RECEIVER = AuthoritySpec("au.ag", "Attorney-General's Department", "AU", ("en",))

# runs in a subprocess with the code source on PYTHONPATH: provision(), then one JSON line per authority
_PROVISION = """
import contextlib, json, sys
from gateway.provision import AuthoritySpec, provision
workdir, passphrase, specs, urls = json.loads(sys.argv[1])
with open(workdir + "/provision.log", "w") as log, contextlib.redirect_stdout(log):
    done = provision(__import__("pathlib").Path(workdir), [AuthoritySpec(s[0], s[1], s[2], tuple(s[3])) for s in specs],
                     passphrase=passphrase, database_urls=urls)
print(json.dumps([[str(p.data_dir), str(p.config), p.api_port] for p in done]))
"""


@dataclass(frozen=True)
class CodeSource:
    """Where the product code comes from: ``pythonpath`` (a snapshot directory) or None for the working tree."""

    pythonpath: str | None
    commit: str
    dirty_files: int  # modified or untracked product files in the working tree when the run started

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, **extra}
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env

    @property
    def cwd(self) -> str | None:
        """Run from the snapshot: ``python -c`` puts the current directory first on sys.path."""
        return self.pythonpath

    def comity(self, *args: str) -> list[str]:
        """The argv of ``comity ARGS`` run from this source."""
        return [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())", *args]


def code_source(kind: str, workdir: Path) -> CodeSource:
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout

    commit = git("rev-parse", "HEAD").strip()
    product = ("gateway", "store", "crypto", "protocol", "config")
    dirty = len(git("status", "--porcelain", "--", *product).splitlines())
    if kind == "worktree":
        return CodeSource(None, commit, dirty)
    snapshot = workdir / "code"
    snapshot.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD", *product], cwd=root, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(snapshot)], input=archive, check=True)
    return CodeSource(str(snapshot), commit, dirty)


@dataclass(frozen=True)
class Provisioned:
    authority_id: str
    data_dir: Path
    config: Path
    api_port: int


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
        return self.provisioned.authority_id

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, code: CodeSource, log_level: str) -> None:
        # the load driver is one officer submitting hundreds a second: no per-user API limit (decision 177)
        env = code.env(COMITY_PASSPHRASE=PASSPHRASE, COMITY_LOG_LEVEL=log_level, COMITY_API_REQUESTS_PER_MINUTE="0")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                code.comity("serve", "--config", str(self.provisioned.config)),
                env=env,
                cwd=code.cwd,
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

    def log_errors(self, lines: int = 3) -> list[str]:
        """The last error lines of the gateway's log (structlog JSON, level error, with the traceback)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line[-4000:] for line in text.splitlines() if '"level": "error"' in line][-lines:]

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


def _provision(code: CodeSource, workdir: Path, urls: list[str | None]) -> list[Provisioned]:
    workdir.mkdir(parents=True, exist_ok=True)
    specs = [[s.id, s.name, s.country, list(s.languages)] for s in (SENDER, RECEIVER)]
    result = subprocess.run(
        [sys.executable, "-c", _PROVISION, json.dumps([str(workdir), PASSPHRASE, specs, urls])],
        env=code.env(),
        cwd=code.cwd or workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"provisioning failed: {' | '.join(result.stderr.strip().splitlines()[-3:])}")
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    return [
        Provisioned(spec.id, Path(data_dir), Path(config), int(port))
        for spec, (data_dir, config, port) in zip((SENDER, RECEIVER), rows, strict=True)
    ]


def _create_officer(code: CodeSource, config: Path, username: str) -> str:
    # a supervisor of the unit, cleared for every marking the bench uses: it opens incoming cases unassigned
    args = ["user", "create", username, "--role", "supervisor", "--clearance", "STRICTLY CONFIDENTIAL"]
    args += ["--caveat", "uncac-46-19", "--caveat", "uncac-46-20", "--unit", "mla"]
    result = subprocess.run(
        code.comity(*args, "--token-days", "1", "--config", str(config)),
        env=code.env(COMITY_PASSPHRASE=PASSPHRASE),
        cwd=code.cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"comity user create failed: {' | '.join(result.stderr.strip().splitlines()[-3:])}")
    return result.stdout.strip().splitlines()[-1]


async def start_pair(backend: str, workdir: Path, *, code: CodeSource, log_level: str) -> Pair:
    """Provision two authorities, issue an officer token on each and start both gateways (own processes)."""
    schemas: list[str] = []
    try:
        urls: list[str | None] = [None, None]
        if backend == "postgresql":
            schemas = [await create_schema(), await create_schema()]
            urls = [schema_url(schema) for schema in schemas]
        sender_p, receiver_p = await asyncio.to_thread(_provision, code, workdir, urls)
        sides = []
        for index, (provisioned, user) in enumerate(((sender_p, "alice"), (receiver_p, "bruce"))):
            token = await asyncio.to_thread(_create_officer, code, provisioned.config, user)
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
            side.start(code, log_level)
        for side in (pair.sender, pair.receiver):
            await side.wait_ready()
    except BaseException:
        await pair.close()
        raise
    return pair
