"""``python -m bench.ledger``: the ledger at 1,000,000 entries, on PostgreSQL and SQLite.

For each backend, in a fresh schema (PostgreSQL) or file (SQLite) that is dropped at the end:

1. append N events (``bench.ledger_workload``: realistic interleaved message lives) with ``EventLog.append_many``
   in transactions of ``--batch`` events, a signed checkpoint with a cosignature every ``--checkpoint-every``
   entries; entries/s counts the transactions only (event objects are built beforehand, batch by batch), and one
   batch is profiled to show where an append spends its time;
2. 1,000 random inclusion proofs and 1,000 random consistency proofs through ``store.ledger.LedgerReader`` (the
   auditor API's code: plan with ``merkle.*_needs``, one SELECT of the nodes, assemble), each verified; p50/p99;
3. ``comity audit verify --database`` over the whole log in a subprocess (the real command, a real signed
   directory): entries/s and the process's peak RSS (VmHWM).

Targets (the ledger issue): appends >= 20,000 entries/s, proofs < 2 ms, audit >= 200,000 entries/s with peak RSS
< 200 MiB. Bounded by ``--time-limit``; prints a table and writes bench/out/ledger-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from bench.ledger_workload import raw_events
from bench.schemas import drop_schemas, new_database
from crypto.keys import generate_authority_keys, generate_signing_key, public_jwk
from crypto.note import CosignatureSigner, NoteSigner, sign_note
from protocol import merkle
from protocol.events import LedgerEvent
from store.db import is_sqlite, make_engine, run_migrations
from store.events import EventLog
from store.ledger import LedgerReader
from store.tables import cosignatures

NOW = datetime.now(UTC)


def _directory(tmp: Path) -> tuple[Any, Any, Path, Path]:
    from config.directory import Directory, directory_entry_for, sign_directory
    from crypto.tls import generate_tls_identity
    from protocol.timefmt import format_time

    ar, au = generate_authority_keys(), generate_authority_keys()
    entries = []
    for authority_id, keys, port in (("ar.mj", ar, 8443), ("au.ag", au, 9443)):
        tls = generate_tls_identity(authority_id, ["127.0.0.1"], None, now=NOW)
        entries.append(
            directory_entry_for(
                authority_id=authority_id,
                name=f"Central authority {authority_id}",
                country=authority_id[:2].upper(),
                endpoint=f"https://127.0.0.1:{port}",
                keys=keys,
                tls_cert_pem=tls.cert_pem,
                not_before=NOW - timedelta(days=1),
            )
        )
    directory = Directory.model_validate(
        {
            "v": 1,
            "serial": 1,
            "issued_at": format_time(NOW - timedelta(days=1)),
            "expires_at": format_time(NOW + timedelta(days=30)),
            "authorities": [entry.to_json() for entry in entries],
        }
    )
    directory_key = generate_signing_key()
    jws, key = tmp / "directory.jws", tmp / "directory-key.jwk"
    jws.write_text(sign_directory(directory, directory_key))
    key.write_text(json.dumps(public_jwk(directory_key)))
    return ar, au, jws, key


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


async def _append(url: str, args: argparse.Namespace, ar: Any, au: Any, deadline: float) -> dict[str, Any]:
    engine = make_engine(url, pool_size=2)
    log = EventLog(for_update=not is_sqlite(url))
    signer = NoteSigner("comity-ledger/ar.mj", ar.signing)
    cosigner = CosignatureSigner("comity-witness/au.ag", au.signing)
    documents = raw_events(args.entries)
    appended, spent, checkpoints = 0, 0.0, 0
    profile_text = ""
    try:
        while appended < args.entries and time.monotonic() < deadline:
            batch = [LedgerEvent.parse(next(documents)) for _ in range(min(args.batch, args.entries - appended))]
            checkpoint = (appended + len(batch)) // args.checkpoint_every > appended // args.checkpoint_every
            profiler = cProfile.Profile() if appended == args.batch * 10 else None
            started = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            async with engine.begin() as conn:
                await log.append_many(conn, batch)
                if checkpoint:
                    note = await log.record_checkpoint(
                        conn, "comity-ledger/ar.mj", lambda text: sign_note(text, [signer]), NOW
                    )
                    text = note[: note.index("\n\n") + 1]
                    size = int(text.split("\n")[1])
                    line = cosigner.sign(text, int(time.time()))
                    await conn.execute(
                        insert(cosignatures).values(
                            size=size, witness="comity-witness/au.ag", line=line, received_at=NOW
                        )
                    )
                    checkpoints += 1
            if profiler is not None:
                profiler.disable()
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
                profile_text = out.getvalue()
            spent += time.perf_counter() - started
            appended += len(batch)
            if appended % 100_000 < args.batch:
                print(f"  appended {appended:,} ({appended / spent:,.0f}/s)", file=sys.stderr, flush=True)
    finally:
        await engine.dispose()
    return {
        "entries": appended,
        "checkpoints": checkpoints,
        "seconds": spent,
        "entries_per_s": appended / spent if spent else 0.0,
        "profile_one_batch": profile_text,
    }


async def _proofs(url: str, size: int, count: int) -> dict[str, Any]:
    engine = make_engine(url, pool_size=1)
    rng = random.Random(1)
    inclusion, consistency = [], []
    try:
        async with engine.connect() as conn:
            root = await LedgerReader.root(conn, size)
            for _ in range(count):
                index = rng.randrange(size)
                started = time.perf_counter()
                leaf, proof, got_root = await LedgerReader.inclusion(conn, index, size)
                inclusion.append(time.perf_counter() - started)
                merkle.verify_inclusion(leaf, index, size, proof, root)
                assert got_root == root
            for _ in range(count):
                old = rng.randrange(1, size)
                started = time.perf_counter()
                proof = await LedgerReader.consistency(conn, old, size)
                consistency.append(time.perf_counter() - started)
                if _ < 20:  # verification needs the old root, one more query: check a sample
                    merkle.verify_consistency(old, size, proof, await LedgerReader.root(conn, old), root)
    finally:
        await engine.dispose()
    return {"inclusion": _percentiles(inclusion), "consistency": _percentiles(consistency)}


_AUDIT_RUNNER = """
import sys, time, resource
from gateway.cli import main
started = time.perf_counter()
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    seconds = time.perf_counter() - started
    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
    print(f"BENCH seconds={seconds:.3f} vmhwm_kib={hwm}", file=sys.stderr)
"""


def _audit(url: str, directory: Path, key: Path, timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-c", _AUDIT_RUNNER, "audit", "verify", "--database", url]
    command += ["--directory", str(directory), "--directory-key", str(key), "--authority", "ar.mj"]
    command += ["--no-state", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    figures = dict(
        item.split("=") for line in result.stderr.splitlines() if line.startswith("BENCH ") for item in line.split()[1:]
    )
    summary = result.stdout.strip().splitlines()
    rate = next((line for line in summary if line.strip().startswith("entries")), "")
    return {
        "exit_code": result.returncode,
        "summary": summary,
        "stderr": [line for line in result.stderr.splitlines() if not line.startswith("BENCH ")][-3:],
        "command_seconds": float(figures.get("seconds", "nan")),
        "peak_rss_mib": int(figures.get("vmhwm_kib", "0")) / 1024,
        "entries_line": rate.strip(),
    }


async def run_backend(backend: str, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="comity-bench-ledger-") as tmp_name:
        tmp = Path(tmp_name)
        ar, au, directory, key = _directory(tmp)
        url, schema = await new_database(backend, tmp, "ledger")
        try:
            await run_migrations(url)
            print(f"{backend}: appending {args.entries:,} events", file=sys.stderr, flush=True)
            append = await _append(url, args, ar, au, deadline)
            if args.append_only:
                return {"backend": backend, "append": append}
            print(f"{backend}: proofs", file=sys.stderr, flush=True)
            proofs = await _proofs(url, append["entries"], args.proofs)
            print(f"{backend}: comity audit verify --database", file=sys.stderr, flush=True)
            audit = await asyncio.to_thread(_audit, url, directory, key, max(60.0, deadline - time.monotonic()))
            return {"backend": backend, "append": append, "proofs": proofs, "audit": audit}
        finally:
            await drop_schemas([schema])


def _prototype_fast_append() -> None:
    """The two changes proposed for the product (docs/performance.md, "Ledger"), patched in for comparison:
    ``parse_time`` through ``datetime.fromisoformat`` (after the same shape check) instead of ``strptime``, and
    ``LedgerEvent.to_bytes`` through ``json.dumps(sort_keys=True)``, which is RFC 8785 for these events (ASCII member
    names, strings and small integers only), falling back to rfc8785 for anything else."""
    import json as _json
    import re

    import store.events as store_events
    from protocol.messages import canonical_json

    shape = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")

    def parse_time(value: str) -> datetime:
        if not shape.fullmatch(value):
            raise ValueError("time must be RFC 3339 UTC with microseconds")
        return datetime.fromisoformat(value)

    def to_bytes(self: LedgerEvent) -> bytes:
        data = self.to_json()
        index = data.get("peer_ledger_index", 0)
        if isinstance(index, int) and index < 2**53 and data.get("v") == 1:
            try:
                return _json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: let rfc8785 refuse it
                pass
        return canonical_json(data)

    setattr(store_events, "parse_time", parse_time)  # noqa: B010
    LedgerEvent.to_bytes = to_bytes  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--checkpoint-every", type=int, default=10_000)
    parser.add_argument("--proofs", type=int, default=1_000)
    parser.add_argument("--backend", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--time-limit", type=float, default=1800, help="seconds for the whole run")
    parser.add_argument("--prototype", action="store_true", help="patch in the proposed faster append path")
    parser.add_argument("--append-only", action="store_true", help="skip proofs and the audit")
    args = parser.parse_args()
    if args.prototype:
        _prototype_fast_append()
    deadline = time.monotonic() + args.time_limit
    backends = ["postgresql", "sqlite"] if args.backend == "both" else [args.backend]
    results = []
    for backend in backends:
        results.append(asyncio.run(run_backend(backend, args, deadline)))
    for result in results:
        append = result["append"]
        print(f"\n== {result['backend']}: {append['entries']:,} entries, {append['checkpoints']} checkpoints")
        print(f"append (batches of {args.batch:,}):  {append['entries_per_s']:>10,.0f} entries/s   (target >= 20,000)")
        if "audit" not in result:
            print("where one append batch spends its time:\n" + append["profile_one_batch"])
            continue
        proofs, audit = result["proofs"], result["audit"]
        for kind in ("inclusion", "consistency"):
            p = proofs[kind]
            print(
                f"{kind} proof:  p50 {p['p50_ms']:.2f} ms  p99 {p['p99_ms']:.2f} ms  max {p['max_ms']:.2f} ms  (< 2 ms)"
            )
        print(f"audit verify: exit {audit['exit_code']}  {audit['entries_line']}  (target >= 200,000/s)")
        print(f"audit peak RSS: {audit['peak_rss_mib']:.0f} MiB (target < 200 MiB)")
        if audit["exit_code"] != 0:
            print("audit output: " + " | ".join(audit["summary"] + audit["stderr"]))
        print("where one append batch spends its time:\n" + append["profile_one_batch"])
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    path = out / f"ledger-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"figures in {path}")


if __name__ == "__main__":
    main()
