"""The skeleton: the least any implementation of the benchmarked exchange can cost with the mandated stack.

``python -m bench.skeleton`` runs, in place of the two gateways, two minimal aiohttp processes that do only the
steps item 7 of issue #2 names for an envelope, each in its cheapest form, with the libraries the issue and
DESIGN.md mandate, and drives them as ``bench.run`` drives the gateways (the same 2 KiB of content, 32 clients
flat out), beside the same raw baseline:

* **sender**: accepts the officer's JSON POST on loopback (no token check, no schema validation, no markings),
  signs the payload (Ed25519 JWS), seals it to the recipient and to its own archive key (two ECDH-ES JWEs), stores
  both and a ledger row in one group commit, POSTs the envelope to the receiver over mutual TLS (TLS 1.3, pinned
  self-signed certificates, one keep-alive pool), verifies the receipt's signature, stores it and a second ledger
  row in one group commit, and answers the officer;
* **receiver**: decrypts the envelope, verifies its signature (the sender's key is known in advance: no directory),
  stores it and a ledger row in one group commit, signs a receipt and answers it.

Everything else the gateways do is left out: parsing and checking under DESIGN.md §7, the directory, replay and
skew checks, canonical JSON, the hash chain and Merkle tree of the ledger (each row carries the SHA-256 of its own
bytes only), the outbox and its retries, cases, statistics, logs, authentication. JOSE goes through the product's
wrappers and registries (joserfc), PostgreSQL through asyncpg without SQLAlchemy, one writer connection per side
batching whatever is queued into one transaction (``synchronous_commit`` on, as in the product).

Any implementation of the exchange does at least this much, so its flat-out rate on a machine bounds what the
gateways can reach there: if the skeleton stays under a tenth of the raw round trip, so must every implementation
with this stack on this machine. ``python -m bench.skeleton --n 3000`` prints the rate, the ratio to the raw round
trip beside it and the CPU per envelope of each process (`docs/performance.md`, "The skeleton").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from joserfc import jwe, jws
from joserfc.jwk import OKPKey

from bench.floor import floor, jose_cost
from bench.load import content_text, request_body
from bench.procs import CpuMeter
from bench.raw import _wait_listening, raw_round_trips
from bench.schemas import PG_ADMIN_DSN, create_schema, drop_schemas
from crypto.envelope import DEFAULT_MAX_ENVELOPE_BYTES as _MAX
from crypto.jose_profile import (
    ENVELOPE_TYP,
    JWE_ALG,
    JWE_ENC,
    MESSAGE_TYP,
    RECEIPT_TYP,
    jwe_registry,
    jws_registry,
    sign_jws,
)
from crypto.keys import key_id
from crypto.receipts import MAX_RECEIPT_BYTES
from crypto.tls import generate_tls_identity
from gateway.provision import free_port

__all__ = ["SkeletonResult", "create_tables", "main", "provision", "receiver_app", "run_skeleton", "sender_app"]

_TABLES = (
    "CREATE TABLE messages (id uuid PRIMARY KEY, envelope bytea NOT NULL, archive bytea, receipt bytea)",
    "CREATE TABLE ledger (seq bigserial PRIMARY KEY, kind text NOT NULL, message_id uuid NOT NULL,"
    " at double precision NOT NULL, digest bytea NOT NULL)",
)


class GroupCommit:
    """One writer connection: every write queued meanwhile goes out in one transaction, each statement once as
    ``executemany``; a caller waits until the transaction that holds its write has committed."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.queue: list[tuple[str, tuple[Any, ...], asyncio.Future[None] | None]] = []
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for index, (sql, args) in enumerate(statements):
            self.queue.append((sql, args, done if index == len(statements) - 1 else None))
        self.wake.set()
        await done

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.queue = self.queue, []
            by_sql: dict[str, list[tuple[Any, ...]]] = {}
            for sql, args, _ in batch:
                by_sql.setdefault(sql, []).append(args)
            failure: BaseException | None = None
            try:
                async with self.connection.transaction():
                    for sql, rows in by_sql.items():
                        await self.connection.executemany(sql, rows)
            except Exception as error:  # every write of the batch fails with it; the writer goes on
                failure = error
            for _, _, done in batch:
                if done is not None and not done.done():
                    done.set_result(None) if failure is None else done.set_exception(failure)


_LEDGER = "INSERT INTO ledger (kind, message_id, at, digest) VALUES ($1, $2, $3, $4)"


def _ledger_row(kind: str, message_id: uuid.UUID, what: bytes) -> tuple[str, tuple[Any, ...]]:
    at = time.time()
    return _LEDGER, (
        kind,
        message_id,
        at,
        hashlib.sha256(b"%s|%s|%f|" % (kind.encode(), message_id.bytes, at) + what).digest(),
    )


def _keys(directory: Path) -> dict[str, OKPKey]:
    return {name: OKPKey.import_key(json.loads((directory / f"{name}.jwk").read_text())) for name in _KEY_NAMES}


_KEY_NAMES = ("sender_signing", "sender_archive", "receiver_signing", "receiver_encryption")


async def _database(dsn: str, schema: str) -> GroupCommit:
    connection = await asyncpg.connect(dsn, server_settings={"search_path": schema, "synchronous_commit": "on"})
    return GroupCommit(connection)


def sender_app(directory: Path, dsn: str, schema: str, peer_port: int) -> web.Application:
    keys = _keys(directory)
    signing, archive = keys["sender_signing"], keys["sender_archive"]
    recipient = OKPKey.import_key(keys["receiver_encryption"].as_dict(private=False))
    receipt_key = OKPKey.import_key(keys["receiver_signing"].as_dict(private=False))
    state: dict[str, Any] = {}
    to_recipient = {"alg": JWE_ALG, "enc": JWE_ENC, "kid": key_id(recipient), "typ": ENVELOPE_TYP, "cty": MESSAGE_TYP}
    to_archive = {**to_recipient, "kid": key_id(archive)}

    async def start(app: web.Application) -> None:
        state["db"] = await _database(dsn, schema)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(directory / "sender.crt", directory / "sender.key")
        context.check_hostname = False
        context.load_verify_locations(directory / "receiver.crt")
        state["http"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=32))

    async def stop(app: web.Application) -> None:
        await state["http"].close()

    async def submit(request: web.Request) -> web.Response:
        body = await request.json()
        message_id = uuid.uuid4()
        payload = {
            "id": str(message_id),
            "from": "ar.mj",
            "to": body["to"],
            "kind": body["kind"],
            "iat": int(time.time()),
            "marking": body["marking"],
            "content": body["content"],
        }
        signed = sign_jws(json.dumps(payload).encode(), signing, MESSAGE_TYP, _MAX).encode()
        routing = {key: payload[key] for key in ("id", "from", "to", "kind", "marking")}
        sealed = jwe.encrypt_compact({**to_recipient, **routing}, signed, recipient, registry=jwe_registry(_MAX))
        archived = jwe.encrypt_compact({**to_archive, **routing}, signed, archive, registry=jwe_registry(_MAX))
        db: GroupCommit = state["db"]
        envelope = sealed.encode()
        await db.write(
            (
                "INSERT INTO messages (id, envelope, archive) VALUES ($1, $2, $3)",
                (message_id, envelope, archived.encode()),
            ),
            _ledger_row("message.submitted", message_id, envelope),
        )
        async with state["http"].post(
            f"https://127.0.0.1:{peer_port}/v1/envelopes",
            data=envelope,
            headers={"Content-Type": "application/jose"},
        ) as response:
            receipt = await response.read()
            if response.status != 200:
                raise web.HTTPBadGateway(text=f"receiver answered {response.status}")
        jws.deserialize_compact(receipt, receipt_key, registry=jws_registry(RECEIPT_TYP, MAX_RECEIPT_BYTES))
        await db.write(
            ("UPDATE messages SET receipt = $2 WHERE id = $1", (message_id, receipt)),
            _ledger_row("message.receipt_recorded", message_id, receipt),
        )
        return web.json_response({"id": str(message_id)}, status=202)

    app = web.Application()
    app.add_routes([web.post("/v1/messages", submit)])
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def receiver_app(directory: Path, dsn: str, schema: str) -> web.Application:
    keys = _keys(directory)
    decrypting, signing = keys["receiver_encryption"], keys["receiver_signing"]
    sender_key = OKPKey.import_key(keys["sender_signing"].as_dict(private=False))
    state: dict[str, Any] = {}

    async def start(app: web.Application) -> None:
        state["db"] = await _database(dsn, schema)

    async def receive(request: web.Request) -> web.Response:
        envelope = await request.read()
        opened = jwe.decrypt_compact(envelope, decrypting, registry=jwe_registry(_MAX))
        assert opened.plaintext is not None
        verified = jws.deserialize_compact(opened.plaintext, sender_key, registry=jws_registry(MESSAGE_TYP, _MAX))
        message_id = uuid.UUID(json.loads(verified.payload)["id"])
        db: GroupCommit = state["db"]
        await db.write(
            ("INSERT INTO messages (id, envelope) VALUES ($1, $2)", (message_id, envelope)),
            _ledger_row("message.received", message_id, envelope),
        )
        receipt = {
            "message_id": str(message_id),
            "from": "au.ag",
            "to": "ar.mj",
            "envelope_sha256": hashlib.sha256(envelope).hexdigest(),
            "received_at": time.time(),
        }
        signed = sign_jws(json.dumps(receipt).encode(), signing, RECEIPT_TYP, MAX_RECEIPT_BYTES)
        return web.Response(body=signed.encode(), content_type="application/jose")

    app = web.Application(client_max_size=_MAX)
    app.add_routes([web.post("/v1/envelopes", receive)])
    app.on_startup.append(start)
    return app


def _serve(role: str, directory: Path, dsn: str, schema: str, port: int, peer_port: int) -> None:
    import uvloop

    context: ssl.SSLContext | None = None
    if role == "sender":
        app = sender_app(directory, dsn, schema, peer_port)
    else:
        app = receiver_app(directory, dsn, schema)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(directory / "receiver.crt", directory / "receiver.key")
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(directory / "sender.crt")
    web.run_app(
        app, host="127.0.0.1", port=port, ssl_context=context, print=None, access_log=None, loop=uvloop.new_event_loop()
    )


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command)


async def create_tables(schema: str) -> None:
    connection = await asyncpg.connect(PG_ADMIN_DSN, server_settings={"search_path": schema})
    try:
        for statement in _TABLES:
            await connection.execute(statement)
    finally:
        await connection.close()


def provision(directory: Path) -> None:
    """The four JOSE keys (JWK files) and the two TLS identities (unencrypted PEM) of the skeleton's processes."""
    for name in _KEY_NAMES:
        key = OKPKey.generate_key("Ed25519" if name.endswith("signing") else "X25519")
        (directory / f"{name}.jwk").write_text(json.dumps(key.as_dict(private=True)))
    for side, authority in (("sender", "ar.mj"), ("receiver", "au.ag")):
        identity = generate_tls_identity(authority, ["127.0.0.1"], None)
        (directory / f"{side}.crt").write_bytes(identity.cert_pem)
        (directory / f"{side}.key").write_bytes(identity.key_pem)


@dataclass(frozen=True)
class SkeletonResult:
    messages: int
    seconds: float
    rate: float
    raw_rate: float
    ratio: float
    cpu_ms_per_message: dict[str, float]
    exchange_ms: float  # CPU per envelope of every process of the exchange (sender, receiver, PostgreSQL, driver)
    capacity: float  # envelopes/s with every core busy at exchange_ms each: an upper bound on the skeleton's rate
    capacity_ratio: float  # capacity / raw rate
    budget_ms: float  # what a tenth of the raw rate allows an envelope, every process together
    jose_ms: float
    stored: dict[str, int]  # rows at the end: envelopes the sender holds receipted, the receiver holds, ledger rows


async def _drive(api: str, text: str, messages: int, clients: int, meter: CpuMeter) -> float:
    """Warm up (a first envelope per client: connections, TLS, statements), then start ``meter`` and send
    ``messages`` from ``clients`` closed-loop clients; the seconds that took."""
    body = request_body("au.ag", text)
    remaining = messages

    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            async with session.post(api + "/v1/messages", json=body) as response:
                await response.read()
                if response.status != 202:
                    raise RuntimeError(f"the skeleton's sender answered {response.status}")

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one()

        await asyncio.gather(*(one() for _ in range(clients)))
        meter.start()
        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.monotonic() - started


async def run_skeleton(*, messages: int, clients: int, raw_seconds: float = 5.0) -> SkeletonResult:
    text = content_text(2048)
    schemas = [await create_schema("skeleton"), await create_schema("skeleton")]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="comity-skeleton-") as temp:
            directory = Path(temp)
            provision(directory)
            for schema in schemas:
                await create_tables(schema)
            receiver_port, sender_port = free_port(), free_port()
            for role, schema, port, peer in (
                ("receiver", schemas[1], receiver_port, 0),
                ("sender", schemas[0], sender_port, receiver_port),
            ):
                command = [sys.executable, "-m", "bench.skeleton", "--serve", role, "--dir", str(directory)]
                command += ["--schema", schema, "--port", str(port), "--peer-port", str(peer)]
                processes.append(_spawn(command))
                await _wait_listening(port, processes[-1])
            raw = await raw_round_trips(
                json.dumps(request_body("au.ag", text)).encode(), free_port(), seconds=raw_seconds
            )
            jose = jose_cost()
            meter = CpuMeter({"receiver": processes[0].pid, "sender": processes[1].pid}, postgres=True)
            seconds = await _drive(f"http://127.0.0.1:{sender_port}", text, messages, clients, meter)
            cpu = meter.stop()
            stored = await _stored(schemas)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        await drop_schemas(schemas)
    per_message = {name: round(value * 1000 / messages, 3) for name, value in cpu.items() if name != "wall"}
    line = floor(raw=asdict(raw), jose=jose)
    exchange = sum(per_message.get(name, 0.0) for name in ("sender", "receiver", "postgres", "bench"))
    capacity = line.cpus * 1000 / exchange
    return SkeletonResult(
        messages=messages,
        seconds=round(seconds, 3),
        rate=round(messages / seconds, 1),
        raw_rate=raw.rate,
        ratio=round(messages / seconds / raw.rate, 4),
        cpu_ms_per_message=per_message,
        exchange_ms=round(exchange, 3),
        capacity=round(capacity, 1),
        capacity_ratio=round(capacity / raw.rate, 4),
        budget_ms=line.budget_ms,
        jose_ms=jose.total_ms,
        stored=stored,
    )


# an envelope the sender is done with has its archive copy and its receipt; the receiver's stores the envelope
_DONE = {
    "sender": "SELECT count(*) FROM messages WHERE archive IS NOT NULL AND receipt IS NOT NULL",
    "receiver": "SELECT count(*) FROM messages",
}


async def _stored(schemas: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for side, schema in zip(("sender", "receiver"), schemas, strict=True):
        connection = await asyncpg.connect(PG_ADMIN_DSN, server_settings={"search_path": schema})
        try:
            counts[f"{side}_envelopes"] = await connection.fetchval(_DONE[side])
            counts[f"{side}_ledger"] = await connection.fetchval("SELECT count(*) FROM ledger")
        finally:
            await connection.close()
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.skeleton", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="flat-out envelopes (default 3000)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--serve", choices=["sender", "receiver"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--peer-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.dir, PG_ADMIN_DSN, args.schema, args.port, args.peer_port)
        return 0
    result = asyncio.run(run_skeleton(messages=args.n, clients=args.clients))
    print(json.dumps(asdict(result), indent=2))
    print(
        f"skeleton flat out: {result.rate:,.1f} env/s = {result.ratio} of the raw round trip ({result.raw_rate:,.0f} "
        f"req/s; target 0.1). CPU per envelope, every process of the exchange: {result.exchange_ms:.2f} ms (JOSE "
        f"{result.jose_ms:.2f}), where a tenth of raw allows {result.budget_ms:.2f} ms on {os.cpu_count()} cores; "
        f"with every core busy at that cost: {result.capacity:,.0f} env/s = {result.capacity_ratio} of raw"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
