"""The outbox sender: delivers persisted messages, retrying with exponential backoff until a receipt arrives.

It survives a restart of either side: a message leaves the outbox only in the transaction that records its
receipt (or a permanent, signed refusal). Claims are leases, so replicas sharing one PostgreSQL do not collide.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from config.directory import AuthorityEntry
from crypto.errors import CryptoError
from crypto.receipts import verify_receipt, verify_refusal
from gateway.committer import Finish, Tx, done
from gateway.context import Gateway
from gateway.files import read_chunks
from gateway.limits import MIN_ATTACHMENT_RATE, read_capped, retry_after_seconds
from gateway.logs import get_logger
from gateway.loops import stop_if_cancelled
from gateway.tls import client_context
from gateway.witness import Witness, WitnessError
from protocol.checkpoint import CheckpointError
from protocol.errors import ComityError, error_code
from protocol.events import EventType
from protocol.receipts import RECEIPT_SKEW
from protocol.timefmt import parse_time
from store.case_stats import CaseStats
from store.consultations import Consultations
from store.delivery import record_delivery
from store.messages import AttachmentRow, Messages
from store.outbox import OutboxItem

__all__ = ["FEDERATION_PATH", "OutboxSender"]

FEDERATION_PATH = "/federation/v1/envelopes"
MAX_ANSWER_BYTES = 1 << 16
SIZE_CODES = {"envelope-too-large", "attachment-too-large"}
LEASE = timedelta(minutes=10)  # a claimed delivery's lease, renewed every third of it while the attempt runs
# one attempt, connection to answer, without attachments; with them, plus their size at the rate a receiver allows
# (gateway/limits.py): a peer that accepts the connection and then stalls holds an attempt no longer than this
ATTEMPT_SECONDS = 120.0
# the claim loop looks again at least this often: for what other replicas queued, or released by their receipts
POLL_SECONDS = 1.0

# refusals a later attempt may overcome; every other signed refusal is final for these bytes
TRANSIENT_CODES = {
    "directory-expired",
    "directory-invalid",
    "not-ready",
    "unknown-peer",
    "peer-blocked",
    "internal-error",
}


class DeliveryError(ComityError):
    code = "delivery-failed"

    def __init__(self, message: str, *, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # the peer's Retry-After, in seconds: no attempt before then


def _retry_after(value: str | None) -> float:
    """Delay-seconds of a Retry-After header; 0 for anything else, an HTTP date included."""
    return retry_after_seconds(value) or 0.0


def retry_delay(attempts: int, initial: float, maximum: float, jitter: Callable[[], float] = random.random) -> float:
    """Seconds until the next attempt after ``attempts`` failed ones: ``min(maximum, initial * 2^attempts)`` less up
    to a fifth at random. Never above ``maximum``, and spread even there, so that the rows an outage held back do not
    all come due in the same second."""
    backoff: float = min(maximum, initial * 2.0 ** min(attempts, 64))
    return backoff * (1 - 0.2 * jitter())


def not_before(delay: float, retry_after: float, maximum: float, jitter: Callable[[], float] = random.random) -> float:
    """``delay``, or the peer's ``retry_after`` if longer, plus up to a fifth of it at random (the rows a limited
    peer turned away must not all come back in the same second); never above ``maximum``, and spread below it there
    as in :func:`retry_delay`."""
    if retry_after <= delay:
        return delay
    return max(delay, min(retry_after * (1 + 0.2 * jitter()), maximum * (1 - 0.2 * jitter())))


class OutboxSender:
    def __init__(self, gw: Gateway, *, concurrency: int = 32) -> None:
        self.gw = gw
        self.concurrency = concurrency
        self._sessions: dict[tuple[str, str, tuple[str, ...]], aiohttp.ClientSession] = {}  # by peer, endpoint, pins
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()  # every delivery running: claimed ones and direct ones
        # the claimed ones alone, which ``concurrency`` limits: direct deliveries, which have no limit of their own
        # (they wait for a connection, see _session), must not keep the claim loop from retrying (decision 112)
        self._claimed: set[asyncio.Task[None]] = set()
        self.log = get_logger(component="outbox")
        self.witness = Witness(gw, self._session)
        self._watching: asyncio.Task[None] | None = None  # the witness's polls (decision 78), while run() runs

    # --- loop ---------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.gw.direct_delivery = self.deliver_now
        self._watching = asyncio.create_task(self.witness.watch())
        try:
            await self._run()
        finally:
            if self.gw.direct_delivery == self.deliver_now:
                self.gw.direct_delivery = None
            await self._stop_watching()

    async def _stop_watching(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.wait({self._watching})

    def deliver_now(self, message_id: str, peer: str, sealed: bytes, digest: str, submitted_at: datetime) -> None:
        """Send a message just committed to the outbox under :data:`DIRECT_LEASE` (no attachments), at once.

        If this process stops before a receipt, the lease runs out and the claim loop (here or on another replica)
        sends it; if the attempt fails, it is rescheduled with backoff like any other.
        """
        if self._stopping.is_set():
            return  # the lease runs out and the next run sends it
        item = OutboxItem(message_id, peer, 0, submitted_at)
        task = asyncio.create_task(self._deliver_safely(item, (sealed, digest)))
        self._inflight.add(task)
        task.add_done_callback(functools.partial(self._done, message_id))

    async def _run(self) -> None:
        while not self._stopping.is_set():
            free = self.concurrency - len(self._claimed)
            items: list[OutboxItem] = []
            if free > 0:
                try:
                    async with self.gw.transaction() as conn:
                        items = await self.gw.outbox.claim_due(conn, self.gw.clock(), limit=free, lease=LEASE)
                except Exception as exc:  # a database that reads but will not write: a second, not a spin
                    self.log.warning("outbox_claim_failed", error=error_code(exc))
                    free = 0
            stop_if_cancelled()
            for item in items:
                task = asyncio.create_task(self._deliver_safely(item))
                self._inflight.add(task)
                self._claimed.add(task)
                task.add_done_callback(functools.partial(self._done, item.message_id))
            if not items:
                await self._sleep(full=free <= 0)

    def _done(self, message_id: str, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        followed = message_id in self.gw.outbox_awaited
        self.gw.outbox_awaited.discard(message_id)
        if task in self._claimed:  # a slot is free, and what its end released may go
            self._claimed.discard(task)
            self.gw.outbox_wakeup.set()
        elif followed:  # a direct delivery frees no slot: only a queued message that follows it needs the loop
            self.gw.outbox_wakeup.set()

    async def _sleep(self, *, full: bool) -> None:
        """Until a claimed delivery ends, a retry is due, or a second has passed. ``full``: every slot is taken, so
        what is due waits for a delivery to end (a due row would otherwise make this loop spin)."""
        wakeup = self.gw.outbox_wakeup
        wakeup.clear()
        timeout = POLL_SECONDS
        if not full:
            try:
                async with self.gw.reader.connect() as conn:
                    due = await self.gw.outbox.next_due(conn, self.gw.clock())
            except Exception as exc:  # the database, for now: the loop goes on, and polls again within a second
                self.log.warning("outbox_next_due_failed", error=error_code(exc))
                due = None
            wait = None if due is None else (due - self.gw.clock()).total_seconds()
            # a row already due that the claim just now did not get (next_due leaves it out) is polled within a
            # second, not claimed for in a loop
            if wait is not None and wait > 0:
                timeout = min(timeout, wait)
        stop = asyncio.create_task(self._stopping.wait())
        wake = asyncio.create_task(wakeup.wait())
        await asyncio.wait({stop, wake}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        wake.cancel()

    async def stop(self) -> None:
        """Stop claiming; let deliveries in flight finish (their rows stay leased if they do not)."""
        self._stopping.set()
        await self._stop_watching()  # no poll queues a check after the witness went idle
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=10)
        try:  # a peer slow to answer a proof request must not keep the gateway from stopping
            await asyncio.wait_for(self.witness.idle(), timeout=10)
        except TimeoutError:
            self.log.warning("witness_checks_abandoned_at_stop")
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    # --- one delivery -------------------------------------------------------------------------------------------

    async def _deliver_safely(self, item: OutboxItem, prefetched: tuple[bytes, str] | None = None) -> None:
        log = self.log.bind(message_id=item.message_id, peer=item.peer)
        try:
            await self.deliver(item, prefetched)
        except Exception as exc:
            code = error_code(exc)
            settings = self.gw.settings
            delay = retry_delay(item.attempts, settings.outbox_initial_backoff, settings.outbox_max_backoff)
            if isinstance(exc, DeliveryError):
                delay = not_before(delay, exc.retry_after, settings.outbox_max_backoff)
            log.warning("delivery_retry", attempt=item.attempts + 1, error=code, retry_in=round(delay, 3))
            self.gw.metrics.delivery_failures.labels(peer=item.peer).inc()
            try:
                async with self.gw.transaction() as conn:
                    await self.gw.outbox.reschedule(
                        conn,
                        item.message_id,
                        attempts=item.attempts + 1,
                        next_attempt_at=self.gw.clock() + timedelta(seconds=delay),
                        error=code,
                    )
            except Exception:
                log.exception("outbox_reschedule_failed")

    def _session(self, peer: AuthorityEntry) -> aiohttp.ClientSession:
        """The session that calls ``peer``: mutual TLS pinned to its directory certificate, or, for a plain-``http``
        endpoint, no TLS at all, which only the development flag allows. Asked before every request (the witness's
        too, decision 116). A session is kept per endpoint and pin, not per peer: its TLS decision is made once, when
        it is created, and must never serve another endpoint or certificate of the peer."""
        settings = self.gw.settings
        if not peer.endpoint.startswith("https://") and not settings.dev_plain_http:
            raise DeliveryError(f"{peer.id} has a plain-HTTP endpoint and the development flag is off")
        key = (peer.id, peer.endpoint, peer.tls_pins)
        session = self._sessions.get(key)
        if session is None:
            ssl_context: Any = False
            if peer.endpoint.startswith("https://"):
                ssl_context = client_context(
                    peer, str(settings.tls_cert_path), str(settings.tls_key_path), self.gw.tls_password
                )
            # messages without attachments are handed over at commit (deliver_now) with no limit of their own and
            # wait here for a connection; the more in flight, the larger the peer's group commits (docs/performance.md,
            # fifth session). Claimed deliveries (attachments streamed from disk) stay limited by ``concurrency``.
            limit = settings.outbox_connections_per_peer
            connector = aiohttp.TCPConnector(ssl=ssl_context, limit=limit, keepalive_timeout=60)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
            session = aiohttp.ClientSession(connector=connector, timeout=timeout)
            self._sessions[key] = session
        return session

    async def deliver(self, item: OutboxItem, prefetched: tuple[bytes, str] | None = None) -> None:
        """One attempt; ``prefetched`` is the envelope and its digest when the caller holds them (no attachments)."""
        gw = self.gw
        peer = gw.peer(item.peer)
        files: list[AttachmentRow]
        if prefetched is not None:
            (sealed, digest), files = prefetched, []
        else:
            async with gw.reader.connect() as conn:
                sealed, digest, files = await Messages.for_delivery(conn, item.message_id)
        session = self._session(peer)  # a plain-HTTP endpoint without the development flag: refused here
        body: Any
        if files:
            body = aiohttp.MultipartWriter("mixed")
            body.append(sealed, {"Content-Type": "application/jose"})
            for row in files:
                path = gw.settings.attachments_path / "out" / row.path
                part = body.append(read_chunks(path), {"Content-Type": "application/octet-stream"})
                part.headers["Content-Length"] = str(row.ct_size)
            headers: dict[str, str] = {}
        else:
            body, headers = sealed, {"Content-Type": "application/jose"}
        if gw.settings.dev_plain_http and not peer.endpoint.startswith("https://"):
            headers["Comity-Dev-Peer"] = gw.authority_id  # plain HTTP has no certificate to name us
        url = peer.endpoint.rstrip("/") + FEDERATION_PATH
        started = gw.clock()
        limit = ATTEMPT_SECONDS + sum(row.ct_size for row in files) / MIN_ATTACHMENT_RATE
        # a claimed delivery's lease is renewed while an attempt runs that may outlive a renewal interval
        keeper = None
        if prefetched is None and limit > LEASE.total_seconds() / 3:
            keeper = asyncio.create_task(self._keep_lease(item.message_id))
        try:
            async with asyncio.timeout(limit):
                async with session.post(url, data=body, headers=headers) as response:
                    raw = await read_capped(response, MAX_ANSWER_BYTES) or b""  # a receipt or a problem: small
        except TimeoutError:
            raise DeliveryError(f"{peer.id} did not take and answer the delivery within {limit:.0f} s") from None
        finally:
            if keeper is not None:
                keeper.cancel()
        document = _json(raw)
        if response.status == 200 and isinstance(document.get("receipt"), str):
            await self._record_receipt(peer, digest, item, document["receipt"], started)
        elif isinstance(document.get("refusal"), str):
            refusal = verify_refusal(document["refusal"], peer.signing_keys_at)  # a key valid when it was signed
            # a size refusal names the digest of what was read before the limit; any other must name our bytes
            about_ours = refusal.envelope_sha256 == digest or refusal.code in SIZE_CODES
            if refusal.code in TRANSIENT_CODES or not about_ours:
                raise DeliveryError(f"{peer.id} refused for now: {refusal.code}")
            await self._record_refusal(item, refusal.code, document["refusal"])
        else:
            raise DeliveryError(
                f"{peer.id} answered HTTP {response.status} without a signed receipt or refusal",
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )

    async def _keep_lease(self, message_id: str) -> None:
        """Renew a claimed delivery's lease every third of it while the attempt runs, so that no replica (this one
        included) claims and sends it again meanwhile."""
        while True:
            await asyncio.sleep(LEASE.total_seconds() / 3)  # deliver() starts this only for a longer attempt
            try:
                async with self.gw.transaction() as conn:
                    await self.gw.outbox.extend_lease(conn, message_id, self.gw.clock() + LEASE)
            except Exception as exc:
                self.log.warning("outbox_lease_not_renewed", message_id=message_id, error=error_code(exc))

    async def _record_receipt(
        self, peer: AuthorityEntry, digest: str, item: OutboxItem, token: str, sent_at: datetime
    ) -> None:
        # a key valid when it was signed (a duplicate delivery gets the receipt first issued, maybe by an older key)
        receipt = verify_receipt(token, peer.signing_keys_at)
        if (receipt.message_id, receipt.from_, receipt.to, receipt.envelope_sha256) != (
            item.message_id,
            peer.id,
            self.gw.authority_id,
            digest,
        ):
            raise DeliveryError(f"the receipt from {peer.id} does not match the envelope sent")
        # dated within the message's life: not before its submission (the auditor's bound; a redelivery's receipt
        # is the first one, so it may be older than this attempt), and not later than a receiver whose clock runs
        # ahead of ours still takes it (it refuses only what is dated in its future), so never near the calendar's
        # end (decision 91)
        received = parse_time(receipt.received_at)
        too_early = item.submitted_at is not None and received < item.submitted_at - RECEIPT_SKEW
        ahead = timedelta(seconds=self.gw.settings.max_message_age_seconds)
        if too_early or received > self.gw.clock() + ahead:
            raise DeliveryError(f"the receipt from {peer.id} is dated {receipt.received_at}, out of the message's life")
        try:  # its checkpoint too, before it is recorded (decision 88)
            await self.witness.receipt_checkpoint(peer.id, receipt, received)
        except (CryptoError, CheckpointError, WitnessError) as exc:
            raise DeliveryError(f"the receipt from {peer.id} carries a checkpoint that does not back it") from exc
        gw = self.gw

        async def unit(tx: Tx) -> Finish[bool]:
            delivered = await record_delivery(
                tx.conn,
                gw.outbox,
                item.message_id,
                sent_at=sent_at,  # statistics: a request's wait starts when its transmission began
                received_at=received,
                receipt=token,
            )
            if not delivered:
                return await done(False)  # another replica recorded it first
            common: dict[str, Any] = {"message_id": item.message_id, "to": peer.id, "envelope_sha256": digest}
            # "sent" is when the successful transmission began; "receipt recorded" is now
            tx.record(EventType.SENT, "system", at=sent_at, **common)
            tx.record(
                EventType.RECEIPT_RECORDED,
                "system",
                **common,
                peer_time=receipt.received_at,
                peer_ledger_index=receipt.ledger_index,
            )
            return await done(True)

        if not await gw.commit(unit):
            return
        self.gw.metrics.delivered.inc()
        self.log.info("message_delivered", message_id=item.message_id, peer=peer.id, attempts=item.attempts + 1)
        self.witness.observe(peer.id, receipt.checkpoint, receipt)

    async def _record_refusal(self, item: OutboxItem, code: str, token: str) -> None:
        async def unit(tx: Tx) -> Finish[bool]:
            if not await self.gw.outbox.remove(tx.conn, item.message_id):
                return await done(False)
            tx.record(EventType.DELIVERY_FAILED, "system", message_id=item.message_id, to=item.peer, reason=code)
            # the peer's signed answer is kept as a receipt is: evidence of why the message did not go (decision 98)
            await Messages.update(tx.conn, item.message_id, state="refused", receipt=token)
            # a request the peer never took is no request made: out of the statistics (its case stays, as sent), and
            # a thread converted into it is open again, as the peer still holds it (decision 166)
            await CaseStats.forget(tx.conn, item.message_id)
            thread = await Consultations.reopen(tx.conn, item.message_id)
            if thread is not None:
                tx.record(EventType.CONSULTATION_REOPENED, "system", message_id=thread, related_id=item.message_id)
            return await done(True)

        if not await self.gw.commit(unit):
            return
        self.log.warning("message_refused_by_peer", message_id=item.message_id, peer=item.peer, code=code)


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}
