"""Building and running a gateway: the federation listener (mutual TLS) and the local API listener.

``run_gateway`` starts both listeners, the outbox sender and the case-work notifier, and on SIGTERM/SIGINT (or
``stop``) stops accepting, lets requests and deliveries in flight finish, and closes the database: a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from gateway.api import api_routes, auth_middleware
from gateway.auth import auth_routes
from gateway.committer import Finish, Tx, done
from gateway.consultations_api import consultation_routes
from gateway.context import Gateway
from gateway.federation import GATEWAY, federation_routes
from gateway.ledger_api import ledger_routes
from gateway.logs import get_logger
from gateway.loops import stop_if_cancelled
from gateway.notify import Notifier
from gateway.openapi import openapi_document
from gateway.outbox import OutboxSender
from gateway.problems import problem_middleware, problem_response
from gateway.requests import run_pending_status_answers
from gateway.stats_api import stats_routes
from gateway.sweeper import Sweeper
from gateway.tls import check_own_certificate, server_context
from store.db import checkpoint_wal, is_sqlite
from store.errors import outage_name
from store.ledger import WitnessState
from store.outbox import Backlog

__all__ = ["RunningGateway", "build_api_app", "build_federation_app", "start_gateway"]

# how long a graceful stop waits for the notifier to mark the notification in hand (a webhook call times out in 10 s)
NOTIFIER_STOP_SECONDS = 12.0


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        gw.check_directory()
        async with gw.reader.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        code = getattr(exc, "code", "not-ready")
        return problem_response("not-ready", f"gateway not ready: {code}", status=503)
    return web.json_response({"status": "ready", "directory_serial": gw.directory.serial})


METRICS_READ_TIMEOUT = 2.0  # seconds: a scrape must not wait for a pool the deliveries keep busy


async def _backlog(gw: Gateway) -> list[Backlog]:
    async with gw.reader.connect() as conn:
        return await gw.outbox.backlog(conn)


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:  # read when scraped, not on a timer: it costs nothing unless someone watches
        backlog = await asyncio.wait_for(_backlog(gw), timeout=METRICS_READ_TIMEOUT)
    except Exception as exc:  # the counters still come out, without outbox series rather than stale ones
        get_logger().warning("metrics_backlog_failed", error=outage_name(exc) or type(exc).__name__)
        backlog = []
    gw.metrics.show_backlog(backlog, gw.clock())
    body = generate_latest(gw.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def build_federation_app(gw: Gateway) -> web.Application:
    # the body is streamed by the handler; client_max_size only bounds what aiohttp itself would buffer
    app = web.Application(
        middlewares=[gw.metrics.middleware("federation"), problem_middleware],
        client_max_size=gw.settings.max_envelope_bytes,
    )
    app[GATEWAY] = gw
    app.add_routes(federation_routes())
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    return app


def build_api_app(gw: Gateway) -> web.Application:
    app = web.Application(middlewares=[gw.metrics.middleware("api"), problem_middleware, auth_middleware])
    app[GATEWAY] = gw
    app.add_routes(api_routes())
    app.add_routes(consultation_routes())
    app.add_routes(ledger_routes())
    app.add_routes(auth_routes())
    app.add_routes(stats_routes())
    app.add_routes(
        [
            web.get("/v1/openapi.json", openapi),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
        ]
    )
    return app


@dataclass
class RunningGateway:
    gw: Gateway
    runners: list[web.AppRunner]
    sender: OutboxSender
    sender_task: asyncio.Task[None]
    checkpointer_task: asyncio.Task[None]
    notifier_task: asyncio.Task[None] | None = None  # case-work notifications (gateway/notify.py)
    notifier: Notifier | None = None
    wal_task: asyncio.Task[None] | None = None  # SQLite: run_wal_checkpoints
    sweeper_task: asyncio.Task[None] | None = None  # attachment files no message names (gateway/sweeper.py)
    answers_task: asyncio.Task[None] | None = None  # status queries left unanswered (gateway/requests.py)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        log = get_logger(authority=self.gw.authority_id)
        log.info("gateway_stopping")
        for runner in self.runners:
            await runner.cleanup()  # stops accepting, waits for handlers in flight
        await self.sender.stop()
        self.sender_task.cancel()
        self.checkpointer_task.cancel()
        tasks = [self.sender_task, self.checkpointer_task]
        for task in (self.wal_task, self.sweeper_task, self.answers_task):
            if task is not None:
                task.cancel()
                tasks.append(task)
        if self.notifier is not None and self.notifier_task is not None:
            # let the notification in hand be marked: cancelled between sending and marking, it would go out again
            self.notifier.stop()
            await asyncio.wait({self.notifier_task}, timeout=NOTIFIER_STOP_SECONDS)
            self.notifier_task.cancel()
            tasks.append(self.notifier_task)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.gw.close()
        log.info("gateway_stopped")


async def start_gateway(gw: Gateway, *, run_outbox: bool = True) -> RunningGateway:
    settings = gw.settings
    if not settings.dev_plain_http:  # before anything is served or recorded
        check_own_certificate(gw.directory, gw.authority_id, settings.tls_cert_path, gw.clock())
    # a checkpoint of the ledger as it starts: peers and auditors always find one (then the checkpointer's ticks)
    await gw.commit(_checkpoint_tick)
    federation = web.AppRunner(
        build_federation_app(gw), handle_signals=False, shutdown_timeout=10, auto_decompress=False
    )
    api = web.AppRunner(build_api_app(gw), handle_signals=False, shutdown_timeout=10)
    await federation.setup()
    await api.setup()
    ssl_context = None
    if not settings.dev_plain_http:
        ssl_context = server_context(
            gw.directory, gw.authority_id, str(settings.tls_cert_path), str(settings.tls_key_path), gw.tls_password
        )
    await web.TCPSite(federation, settings.federation_host, settings.federation_port, ssl_context=ssl_context).start()
    await web.TCPSite(api, settings.api_host, settings.api_port).start()
    sender = OutboxSender(gw)
    task = asyncio.create_task(sender.run() if run_outbox else asyncio.sleep(0))
    get_logger(authority=gw.authority_id).info(
        "gateway_started",
        federation=f"{settings.federation_host}:{settings.federation_port}",
        api=f"{settings.api_host}:{settings.api_port}",
        tls=ssl_context is not None,
    )
    checkpointer = asyncio.create_task(run_checkpointer(gw))
    wal = asyncio.create_task(run_wal_checkpoints(gw)) if is_sqlite(settings.database_dsn) else None
    notifier = Notifier(gw) if settings.notify != "none" else None
    notifier_task = asyncio.create_task(notifier.run()) if notifier is not None else None
    sweeper = asyncio.create_task(Sweeper(gw).run())
    answers = asyncio.create_task(run_pending_status_answers(gw)) if run_outbox else None
    return RunningGateway(
        gw, [federation, api], sender, task, checkpointer, notifier_task, notifier, wal, sweeper, answers
    )


async def _checkpoint_tick(tx: Tx) -> Finish[None]:
    tx.wants_checkpoint = True
    return await done(None)


async def run_checkpointer(gw: Gateway, interval: float = 1.0) -> None:
    """Sign a checkpoint at least every ``interval`` seconds while the ledger grows (receipts sign their own)."""
    log = get_logger(component="checkpointer")
    while True:
        await asyncio.sleep(interval)
        try:
            # an empty unit: the group commit signs a checkpoint when the ledger grew since the last one
            await gw.commit(_checkpoint_tick)
            async with gw.reader.connect() as conn:
                gw.metrics.ledger_size.set((await gw.events.head(conn)).size)
                # alarms are raised by the witness or cleared by an operator's 'comity peer clear': follow the database
                gw.blocked_peers = {alarm.peer for alarm in await WitnessState.open_alarms(conn)}
        except Exception:
            log.exception("checkpoint_failed")
        stop_if_cancelled()


async def run_wal_checkpoints(gw: Gateway, interval: float = 1.0) -> None:
    """SQLite: checkpoint the WAL every ``interval`` seconds, beside the writers rather than in one of their commits
    (store/db.py, decision 81)."""
    log = get_logger(component="wal")
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await checkpoint_wal(gw.reader)
            if failing:
                log.info("wal_checkpoint_recovered")
            failing = False
        except Exception:
            if not failing:  # once per outage, not every second (the backstop keeps the WAL bounded meanwhile)
                log.exception("wal_checkpoint_failed")
            failing = True
        stop_if_cancelled()


# How often CPython hands the GIL from one running thread to another waiting for it; its default is 5 ms. A database
# thread (aiosqlite: every SQLite statement, and the reader pools) whose statement has finished waits for the GIL to
# hand its result to the event loop, up to this long while the loop runs Python; an SQLite transaction makes ten or
# so such hand-overs. At 0.5 ms the p99 at 100 envelopes/s on SQLite fell from 42 to 34 ms on average over six
# alternating pairs of runs, flat-out rates unchanged (docs/performance.md, fourteenth session; decision 104).
SWITCH_INTERVAL_SECONDS = 0.0005


def settle_heap() -> int:
    """Move everything the gateway allocated while starting (modules, tables, compiled statements, the directory)
    out of the collector's reach, once, before the first request: a full collection otherwise walks those hundreds
    of thousands of objects again and again, an 80 ms pause of the whole event loop each time
    (docs/performance.md). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def serve_forever(gw: Gateway) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)  # the served process only: in-process tests keep the default
    try:
        running = await start_gateway(gw)
    except BaseException:  # refused to serve (a certificate peers would refuse, say): the one-line error follows
        await gw.close()
        raise
    get_logger(authority=gw.authority_id).info("heap_settled", frozen=settle_heap())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()
