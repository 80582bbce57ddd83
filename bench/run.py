"""``make bench`` / ``python -m bench.run``: end-to-end throughput, latency and memory of two gateways on loopback.

For each backend (SQLite, PostgreSQL) the bench provisions two authorities in a temporary directory, starts each
gateway in its own ``comity serve`` process and drives the sender's officer API:

1. warm-up (pools, TLS session, statement caches);
2. fixed rate: 100 envelopes/s for 10 s (open loop), p50/p95/p99 of the end-to-end latency; first a light
   probe (10/s for 5 s) that shows the latency of one envelope when nothing queues;
3. flat out: N envelopes from 32 concurrent clients, rate = N / (last receipt - first submit);
4. a 1 GiB attachment end to end, then downloaded on the receiver; MB/s and VmHWM of each gateway.

Beside it, in the same run, the raw aiohttp round trip of the same 2 KiB JSON body (own server process, 32
keep-alive tasks) gives the ratio end-to-end / raw, and ``bench.floor`` how much of the CPU that the ratio target
allows an envelope the mandated libraries take before any of Comity's own work. A table goes to stdout and the
figures to bench/out/*.json. Everything binds to 127.0.0.1 and the run stops by itself (``--time-limit``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.floor import JoseCost, floor, jose_cost
from bench.gib import BigResult, big_attachment
from bench.load import LoadResult, content_text, fixed_rate, flat_out, request_body, warm_up
from bench.pair import PG_ADMIN_DSN, CodeSource, code_source, start_pair
from bench.procs import CpuMeter, memory
from bench.raw import RawResult, raw_round_trips
from bench.report import render
from gateway.provision import free_port

__all__ = ["main"]

OUT_DIR = Path(__file__).resolve().parent / "out"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="small run to check the harness (about a minute)")
    parser.add_argument("--n", type=int, default=None, help="flat-out envelopes (default 3000; --quick 300)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent submitting clients in flat-out mode")
    parser.add_argument("--rate", type=float, default=100.0, help="fixed-rate envelopes per second")
    parser.add_argument("--seconds", type=float, default=None, help="fixed-rate duration (default 10; --quick 3)")
    parser.add_argument("--probe-rate", type=float, default=10.0, help="light fixed rate measured first (0: skip)")
    parser.add_argument("--probe-seconds", type=float, default=5.0, help="duration of the light probe")
    parser.add_argument("--raw-seconds", type=float, default=None, help="raw baseline duration (default 5; --quick 2)")
    parser.add_argument("--warmup", type=int, default=100, help="envelopes sent before measuring")
    parser.add_argument("--skip-gib", action="store_true", help="skip the large attachment")
    parser.add_argument("--gib-mib", type=int, default=None, help="large attachment size in MiB (1024; --quick 64)")
    parser.add_argument(
        "--gib-backend", choices=["sqlite", "postgresql", "both"], default="both", help="where to send it"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the provisioned directories and logs")
    parser.add_argument(
        "--code",
        choices=["head", "worktree"],
        default="head",
        help="run a snapshot of git HEAD (default) or the working tree as it is",
    )
    parser.add_argument("--time-limit", type=float, default=1800.0, help="abort the whole run after this many s")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for the JSON results")
    args = parser.parse_args(argv)
    args.n = args.n if args.n is not None else (300 if args.quick else 3000)
    args.seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 10.0)
    args.raw_seconds = args.raw_seconds if args.raw_seconds is not None else (2.0 if args.quick else 5.0)
    args.gib_mib = args.gib_mib if args.gib_mib is not None else (64 if args.quick else 1024)
    args.warmup = min(args.warmup, 30) if args.quick else args.warmup
    return args


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


async def _postgres_version() -> str | None:
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        say(f"PostgreSQL at {PG_ADMIN_DSN} is not reachable: {exc}")
        return None
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def _machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "kernel": platform.release(),
    }


async def _backend_run(
    backend: str, args: argparse.Namespace, base: Path, text: str, raw_body: bytes, code: CodeSource
) -> dict[str, Any]:
    workdir = base / backend
    say(f"{backend}: provisioning two authorities in {workdir}")
    results: dict[str, Any] = {"backend": backend}
    try:
        pair = await start_pair(backend, workdir, code=code, log_level=args.log_level)
    except Exception as exc:  # a backend that cannot start is reported, the other one still runs
        say(f"{backend}: could not start: {exc}")
        results["error"] = f"start: {exc}"
        return results
    try:
        say(f"{backend}: gateways up (sender pid {pair.sender.pid}, receiver pid {pair.receiver.pid}); warm-up")
        await warm_up(pair, text, args.warmup)
        postgres = backend == "postgresql"
        if args.probe_rate > 0:
            say(f"{backend}: light probe {args.probe_rate:g}/s for {args.probe_seconds:g} s")
            probe: LoadResult = await fixed_rate(
                pair,
                text,
                rate=args.probe_rate,
                seconds=args.probe_seconds,
                meter=CpuMeter(pair.pids, postgres=postgres),
            )
            results["probe"] = asdict(probe)
        say(f"{backend}: fixed rate {args.rate:g}/s for {args.seconds:g} s")
        fixed: LoadResult = await fixed_rate(
            pair, text, rate=args.rate, seconds=args.seconds, meter=CpuMeter(pair.pids, postgres=postgres)
        )
        results["fixed_rate"] = asdict(fixed)
        say(
            f"{backend}: fixed rate p50/p95/p99 {fixed.e2e_ms.get('p50')}/{fixed.e2e_ms.get('p95')}/"
            f"{fixed.e2e_ms.get('p99')} ms"
        )
        # the baseline again, right beside the flat-out phase (the gateways idle), so that both see the same machine
        raw: RawResult = await raw_round_trips(raw_body, free_port(), seconds=args.raw_seconds)
        results["raw"] = asdict(raw)
        say(f"{backend}: raw baseline beside flat out: {raw.rate} requests/s")
        if postgres:  # the floor of the throughput target (bench.floor), timed beside the raw baseline it uses
            jose: JoseCost = jose_cost()
            results["jose"] = asdict(jose)
            say(f"{backend}: JOSE, the seven operations of an envelope: {jose.total_ms} ms of CPU")
        say(f"{backend}: flat out, {args.n} envelopes from {args.clients} clients")
        flat: LoadResult = await flat_out(
            pair, text, messages=args.n, clients=args.clients, meter=CpuMeter(pair.pids, postgres=postgres)
        )
        results["flat_out"] = asdict(flat)
        say(f"{backend}: flat out {flat.rate} envelopes/s (submits accepted at {flat.submit_rate}/s)")
        results["rss_after_load_mib"] = {name: asdict(memory(pid)) for name, pid in pair.pids.items()}
        if not args.skip_gib and args.gib_backend in {backend, "both"}:
            size = args.gib_mib * 1024 * 1024
            say(f"{backend}: {args.gib_mib} MiB attachment end to end, then downloaded")
            big: BigResult = await big_attachment(pair, size, text)
            results["attachment"] = asdict(big)
            say(
                f"{backend}: attachment {big.end_to_end_mb_s} MB/s end to end, download {big.download_mb_s} MB/s, "
                f"peak RSS {big.peak_rss_mib} MiB, sha256 ok: {big.sha256_ok}"
            )
    except Exception as exc:  # keep what was measured; say what broke, with the gateways' last log lines
        say(f"{backend}: failed: {type(exc).__name__}: {exc}")
        results["error"] = f"{type(exc).__name__}: {exc}"
        results["sender_log_errors"] = pair.sender.log_errors()
        results["receiver_log_errors"] = pair.receiver.log_errors()
    finally:
        say(f"{backend}: stopping the gateways")
        await pair.close()
        results["exit_codes"] = {
            "sender": pair.sender.proc and pair.sender.proc.returncode,
            "receiver": pair.receiver.proc and pair.receiver.proc.returncode,
        }
    return results


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    pg_version = await _postgres_version() if "postgresql" in backends else None
    if "postgresql" in backends and pg_version is None:
        raise SystemExit("PostgreSQL is needed for --backend postgresql/both; start it or use --backend sqlite")
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "machine": {**_machine(), "postgresql": pg_version},
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "backends": [],
    }
    text = content_text()
    body = json.dumps(request_body("au.ag", text)).encode()
    report["body_bytes"] = len(body)
    say(f"raw aiohttp baseline: {len(body)} byte JSON POST, 32 keep-alive tasks, {args.raw_seconds:g} s")
    raw: RawResult = await raw_round_trips(body, free_port(), seconds=args.raw_seconds)
    report["raw"] = asdict(raw)
    say(f"raw: {raw.rate} requests/s")
    base = Path(tempfile.mkdtemp(prefix="comity-bench-", dir=args.workdir))
    try:
        code = code_source(args.code, base)
        report["code"] = {"source": args.code, "commit": code.commit, "dirty_product_files": code.dirty_files}
        say(f"code: {args.code} at {code.commit[:12]} ({code.dirty_files} product files differ in the working tree)")
        for backend in backends:
            result = await _backend_run(backend, args, base, text, body, code)
            if result.get("jose") and result.get("raw") and result.get("flat_out"):
                cpu, jose = result["flat_out"]["cpu_ms_per_message"], JoseCost(**result["jose"])
                result["floor"] = asdict(floor(raw=result["raw"], jose=jose, flat_cpu_ms=cpu))
            report["backends"].append(result)
    finally:
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def bounded() -> dict[str, Any]:
        # SIGTERM/SIGINT cancel the run, so that the finally clauses stop the gateways and drop the schemas
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        async with asyncio.timeout(args.time_limit):
            return await _run(args)

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        report = runner(bounded())
    except (asyncio.CancelledError, KeyboardInterrupt):
        say("interrupted: gateways stopped, schemas dropped, nothing recorded")
        return 130
    except TimeoutError:
        say(f"stopped after --time-limit {args.time_limit:g} s: gateways stopped, schemas dropped, nothing recorded")
        return 124
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = args.out / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"\nfigures: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
