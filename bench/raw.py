"""The raw baseline: the same 2 KiB JSON POST to a minimal aiohttp server in its own process, 32 keep-alive tasks.

``python -m bench.raw --port P`` runs the server (uvloop, like ``comity serve``); :func:`raw_round_trips` starts it,
drives it from this process for a fixed time and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from bench.procs import cpu_seconds, machine_busy_seconds

__all__ = ["RawResult", "raw_round_trips"]


@dataclass(frozen=True)
class RawResult:
    requests: int
    seconds: float
    rate: float
    server_cpu_s: float
    client_cpu_s: float
    others_cpu_s: float  # the rest of the machine meanwhile (concurrent jobs skew the baseline)


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"ok": True, "bytes": len(body)})


def _serve(port: int) -> None:
    app = web.Application()
    app.add_routes([web.post("/echo", _echo), web.get("/healthz", _echo)])
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=loop)


async def _wait_listening(port: int, proc: subprocess.Popen[bytes], within: float = 20) -> None:
    deadline = time.monotonic() + within
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the raw server exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def _spawn_server(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.raw", "--port", str(port)])


async def raw_round_trips(body: bytes, port: int, *, seconds: float, concurrency: int = 32) -> RawResult:
    proc = _spawn_server(port)
    try:
        await _wait_listening(port, proc)
        url = f"http://127.0.0.1:{port}/echo"
        headers = {"Content-Type": "application/json"}
        count = 0
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(concurrency):  # warm the connections
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
            server_cpu, client_cpu, machine = cpu_seconds(proc.pid), cpu_seconds_self(), machine_busy_seconds()
            started = time.monotonic()
            stop_at = started + seconds

            async def worker() -> None:
                nonlocal count
                while time.monotonic() < stop_at:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"raw server answered {response.status}")
                    count += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.monotonic() - started
            server_cpu = cpu_seconds(proc.pid) - server_cpu
            client_cpu = cpu_seconds_self() - client_cpu
            others = max(0.0, machine_busy_seconds() - machine - server_cpu - client_cpu)
        return RawResult(
            count,
            round(elapsed, 3),
            round(count / elapsed, 1),
            round(server_cpu, 2),
            round(client_cpu, 2),
            round(others, 2),
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds_self() -> float:
    return cpu_seconds(os.getpid())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="minimal aiohttp echo server for the raw baseline")
    parser.add_argument("--port", type=int, required=True)
    _serve(parser.parse_args().port)
