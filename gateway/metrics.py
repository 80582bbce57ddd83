"""Prometheus metrics of one gateway. Labels carry routes, codes and authority ids only: never content."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge

from store.outbox import Backlog

__all__ = ["Metrics"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "comity_http_requests", "HTTP requests handled", ["listener", "route", "status"], registry=self.registry
        )
        self.received = Counter("comity_envelopes_received", "Envelopes accepted", registry=self.registry)
        self.refused = Counter("comity_envelopes_refused", "Envelopes refused", ["code"], registry=self.registry)
        self.limited = Counter(
            "comity_envelopes_limited",
            "Envelopes turned away unparsed: the peer ran out of refusals (429)",
            ["peer"],
            registry=self.registry,
        )
        self.busy = Counter(
            "comity_envelopes_busy",
            "Envelopes turned away unparsed: the peer had peer_deliveries_at_once in flight (503)",
            ["peer"],
            registry=self.registry,
        )
        self.stalled = Counter(
            "comity_envelopes_stalled",
            "Deliveries whose body did not arrive within body_read_seconds (408)",
            ["peer"],
            registry=self.registry,
        )
        self.delivered = Counter("comity_envelopes_delivered", "Envelopes receipted by peers", registry=self.registry)
        self.delivery_failures = Counter(
            "comity_delivery_failures", "Failed delivery attempts", ["peer"], registry=self.registry
        )
        self.peer_alarms = Counter(
            "comity_peer_alarms", "Counterpart ledgers found forked or rewritten", ["peer"], registry=self.registry
        )
        self.polls_unanswered = Counter(
            "comity_witness_polls_unanswered",
            "Checkpoint polls of a peer that failed or were refused (not counted toward an alarm)",
            ["peer"],
            registry=self.registry,
        )
        self.orphan_files_removed = Counter(
            "comity_attachment_orphans_removed",
            "Attachment files no message names, removed after the grace (gateway/sweeper.py)",
            registry=self.registry,
        )
        self.ledger_size = Gauge("comity_ledger_size", "Entries in this gateway's ledger", registry=self.registry)
        self.outbox_waiting = Gauge(
            "comity_outbox_waiting", "Messages waiting for a peer's receipt", ["peer"], registry=self.registry
        )
        self.outbox_oldest = Gauge(
            "comity_outbox_oldest_seconds",
            "Age of the oldest message waiting for a peer's receipt",
            ["peer"],
            registry=self.registry,
        )

    def show_backlog(self, backlog: Iterable[Backlog], now: datetime) -> None:
        """Replace the outbox gauges: a peer with nothing waiting (or a backlog that could not be read) has no
        series, never a stale one."""
        self.outbox_waiting.clear()
        self.outbox_oldest.clear()
        for item in backlog:
            self.outbox_waiting.labels(peer=item.peer).set(item.messages)
            self.outbox_oldest.labels(peer=item.peer).set(max(0.0, (now - item.oldest).total_seconds()))

    def middleware(self, listener: str) -> Middleware:
        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            response = await handler(request)
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            self.requests.labels(listener=listener, route=route, status=str(response.status)).inc()
            return response

        return count
