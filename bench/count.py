"""Count the database work per envelope: statements, transactions and new connections on each side, in one process.

Both gateways run in this process (as the tests run them: mutual TLS on loopback), so the CPU figure is the two
together, sender, receiver and the driver of the load; what this tool is for is the *counts*, which do not depend
on how busy the machine is::

    python -m bench.count --backend postgresql --n 500 --clients 32

It provisions two authorities in a temporary directory (PostgreSQL: two fresh schemas in database ``test``, dropped
at the end), posts ``--n`` messages of 2 KiB through the sender's officer API from ``--clients`` concurrent tasks,
waits until the sender's outbox is empty, and prints per envelope: statements and transactions per side (writer
and reader pools together), the connections each side opened meanwhile, and the process CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.load import content_text, request_body
from bench.procs import postgres_cpu_by_pid
from bench.schemas import create_schema, drop_schemas, schema_url

PASSPHRASE = "bench passphrase"  # noqa: S105 - a throwaway key store


class Counts:
    def __init__(self) -> None:
        self.counter: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.backends: set[int] = set()  # PostgreSQL: the server pids of this side's connections
        self.drivers: set[int] = set()  # SQLite: id() of this side's aiosqlite connections

    def attach(self, engine: AsyncEngine, *, writer: bool = True) -> None:
        sync = engine.sync_engine

        @event.listens_for(sync, "before_cursor_execute")
        def _statement(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            self.counter["statements"] += 1
            self.kinds[" ".join(statement.split())[:150]] += 1

        @event.listens_for(sync, "begin")
        def _begin(conn: Any) -> None:
            self.counter["transactions"] += 1
            if writer and conn.dialect.name == "sqlite":  # store/db.py sends BEGIN IMMEDIATE to aiosqlite itself
                self.counter["statements"] += 1
                self.counter["of which hot path"] += 1
                self.kinds["(hot path) BEGIN IMMEDIATE"] += 1

        @event.listens_for(sync.pool, "connect")
        def _connect(dbapi: Any, record: Any) -> None:
            self.counter["connections opened"] += 1
            driver = getattr(dbapi, "driver_connection", None)
            if driver is not None and hasattr(driver, "get_server_pid"):
                self.backends.add(driver.get_server_pid())
            elif driver is not None:
                self.drivers.add(id(driver))

    def reset(self) -> None:
        self.counter.clear()
        self.kinds.clear()


def count_hot_path(counts: dict[str, Counts]) -> None:
    """Count the statements store.fast sends to asyncpg and store.sqlite_fast to aiosqlite themselves (no
    SQLAlchemy event sees them), by side."""
    from store import fast, sqlite_fast

    run = fast._run

    def count_sqlite(driver: Any, statements: int, kind: str) -> None:
        for c in counts.values():
            if id(driver) in c.drivers:
                c.counter["statements"] += statements
                c.counter["of which hot path"] += statements
                c.kinds["(hot path) " + " ".join(kind.split())[:138]] += statements

    insert_many, execute = sqlite_fast.insert_many, sqlite_fast.execute
    typed_rows = sqlite_fast.typed_rows

    async def counted_insert_many(driver: Any, dialect: Any, table: Any, rows: Any) -> None:
        count_sqlite(driver, len({tuple(row) for row in rows}), f"INSERT INTO {table.name}")
        await insert_many(driver, dialect, table, rows)

    async def counted_execute(driver: Any, dialect: Any, sql: str, args: Any) -> int | None:
        changed = await execute(driver, dialect, sql, args)
        if changed is not None:  # else SQLAlchemy ran the statement, and its event counted it
            count_sqlite(driver, 1, sql)
        return changed

    async def counted_typed_rows(driver: Any, dialect: Any, sql: str, args: Any, columns: Any) -> Any:
        count_sqlite(driver, 1, sql)  # the reads, and returning()'s UPDATE, which calls it
        return await typed_rows(driver, dialect, sql, args, columns)

    sqlite_fast.insert_many = counted_insert_many
    sqlite_fast.execute = counted_execute
    sqlite_fast.typed_rows = counted_typed_rows

    async def counted(driver: Any, sql: str, args: Any, **options: Any) -> Any:
        for c in counts.values():
            if driver.get_server_pid() in c.backends:
                c.counter["statements"] += 1
                c.counter["of which hot path"] += 1
                c.kinds["(hot path) " + " ".join(sql.split())[:138]] += 1
        return await run(driver, sql, args, **options)

    fast._run = counted


async def run(args: argparse.Namespace) -> None:
    from config.settings import load_settings
    from gateway.app import settle_heap, start_gateway
    from gateway.context import Gateway
    from gateway.logs import configure_logging
    from gateway.provision import AuthoritySpec, provision
    from tests.gateway.conftest import issue_token

    work = Path(tempfile.mkdtemp(prefix="comity-count-"))
    log = (work / "gateways.log").open("w")
    configure_logging("info", stream=log)  # JSON lines to a file, as `comity serve` writes them
    schemas: list[str] = []
    if args.backend == "postgresql":
        schemas = [await create_schema(), await create_schema()]
        urls: list[str | None] = [schema_url(schema) for schema in schemas]
    else:
        urls = [f"sqlite+aiosqlite:///{work / 'ar.db'}", f"sqlite+aiosqlite:///{work / 'au.db'}"]
    specs = [
        AuthoritySpec("ar.mj", "Ministerio de Justicia", "AR", ("es", "en")),
        AuthoritySpec("au.ag", "Attorney-General's Department", "AU", ("en",)),
    ]
    ar, au = await asyncio.to_thread(provision, work, specs, passphrase=PASSPHRASE, database_urls=urls)
    token = await asyncio.to_thread(issue_token, ar.config, "alice")
    gateways = []
    counts = {"sender": Counts(), "receiver": Counts()}
    try:
        for side, provisioned in (("sender", ar), ("receiver", au)):
            settings = load_settings(provisioned.config).model_copy(update={"api_requests_per_minute": 0})
            gw = await Gateway.load(settings, PASSPHRASE.encode())  # one officer at any rate (decision 177)
            counts[side].attach(gw.engine)
            if gw.reader.sync_engine.pool is not gw.engine.sync_engine.pool:  # PostgreSQL: one pool, one dispatch
                counts[side].attach(gw.reader, writer=False)  # SQLite's reader pool: no BEGIN ever sent
                await gw.reader.dispose()
            await gw.engine.dispose()  # every connection is opened again, under the listeners: each side's are known
            gateways.append(await start_gateway(gw))
        count_hot_path(counts)
        settle_heap()  # as `comity serve` does once it has started
        sender = gateways[0].gw
        body = request_body("au.ag", content_text())
        url = f"http://127.0.0.1:{ar.api_port}/v1/messages"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:

            async def post(n: int) -> None:
                for _ in range(n):
                    async with session.post(url, json=body) as response:
                        if response.status != 202:
                            raise SystemExit(f"submit failed: HTTP {response.status} {await response.text()}")

            async def drained() -> None:
                while True:
                    async with sender.reader.connect() as conn:
                        if await sender.outbox.pending(conn) == 0:
                            return
                    await asyncio.sleep(0.05)

            await asyncio.gather(*(post(args.warmup // args.clients) for _ in range(args.clients)))
            await drained()
            await asyncio.sleep(1.5)
            for c in counts.values():
                c.reset()
            pg0 = postgres_cpu_by_pid()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if args.rate:
                n = args.n
                tasks = []
                for i in range(n):
                    tasks.append(asyncio.create_task(post(1)))
                    await asyncio.sleep(max(0.0, wall0 + (i + 1) / args.rate - time.perf_counter()))
                await asyncio.gather(*tasks)
            else:
                n = (args.n // args.clients) * args.clients
                await asyncio.gather(*(post(args.n // args.clients) for _ in range(args.clients)))
            await drained()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            pg1 = postgres_cpu_by_pid()
            pg = sum(cpu - pg0.get(pid, 0.0) for pid, cpu in pg1.items())
        print(f"{args.backend}: {n} envelopes, {args.clients} clients, {wall:.2f} s wall, {n / wall:.1f} env/s")
        print(f"process CPU (both gateways + driver): {1000 * cpu / n:.2f} ms per envelope")
        print(f"PostgreSQL CPU (a lower bound: backends that exit take theirs): {1000 * pg / n:.2f} ms per envelope")
        for side, c in counts.items():
            figures = ", ".join(f"{key} {value / n:.2f}" for key, value in sorted(c.counter.items()))
            print(f"  {side}: per envelope {figures}")
            if args.verbose:
                for kind, value in c.kinds.most_common(25):
                    print(f"      {value / n:6.2f}  {kind}")
        await _stages([g.gw for g in gateways], n)
    finally:
        for running in reversed(gateways):
            await running.stop()
        await drop_schemas(schemas)


async def _stages(gateways: list[Any], n: int) -> None:
    """Per-message stage durations from the two ledgers (the last ``n`` messages)."""
    import json

    from sqlalchemy import select

    from store.tables import ledger_entries

    times: dict[str, dict[str, float]] = {}
    for gw in gateways:
        async with gw.reader.connect() as conn:
            rows = (await conn.execute(select(ledger_entries.c.entry))).all()
        for (entry,) in rows:
            event = json.loads(entry)
            if event.get("message_id"):
                stamp = datetime.fromisoformat(event["time"]).timestamp()
                times.setdefault(event["message_id"], {})[event["type"]] = stamp
    stages = [
        ("submitted -> sent", "message.submitted", "message.sent"),
        ("sent -> received", "message.sent", "message.received"),
        ("received -> receipt recorded", "message.received", "message.receipt_recorded"),
        ("submitted -> receipt recorded", "message.submitted", "message.receipt_recorded"),
    ]
    done = [t for t in times.values() if "message.receipt_recorded" in t and "message.received" in t][-n:]
    for label, start, end in stages:
        values = sorted(1000 * (t[end] - t[start]) for t in done)
        if values:
            pick = [values[min(len(values) - 1, int(q * len(values)))] for q in (0.5, 0.95, 0.99)]
            print(f"  {label:32} p50 {pick[0]:7.1f}  p95 {pick[1]:7.1f}  p99 {pick[2]:7.1f} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.count", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0, help="open-loop rate per second instead of flat out")
    parser.add_argument("--verbose", "-v", action="store_true", help="list the statements by their first words")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
