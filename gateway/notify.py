"""Case-work notifications: a background task that tells someone when a critical date or task comes due.

Every ``notify_interval_seconds`` it looks for open items that entered a stage not yet notified: *due-soon* (due
today or within ``notify_days_ahead`` days) and *overdue* (past the due date), and notifies each stage of each item
once, through the ``notify`` hook: ``log`` (a structured log line), ``webhook`` (an HTTP POST of a JSON body, signed
with HMAC-SHA256 when ``notify_webhook_secret`` is set) or ``none``. The stage is marked as notified in the database
only after the hook succeeded, so a restart does not notify again and a failing webhook loses nothing: it is retried
with a growing delay (at least once; receivers deduplicate on ``id``).

Replicas sharing a database take turns by a lease (the fact ``notifier_lease``, :data:`LEASE` seconds, taken at
the start of a scan and renewed during it): only the holder scans, so each notification goes out once, not once
per replica; between scans the lease runs out and whichever replica scans next takes it. A webhook that is
unreachable, redirects, or answers anything but a 2xx or a refusal of the body fails the whole scan (the next waits
longer); one that refuses a notification's body (400, 409, 413, 415, 422) holds back only that one, which is tried
again after a growing delay of its own (decision 103).

A notification carries ids, the kind, the due date and the stage, never a note or any content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
from datetime import timedelta
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.context import Gateway
from gateway.logs import get_logger
from gateway.loops import stop_if_cancelled
from protocol.casework import Stage
from protocol.errors import ComityError
from protocol.timefmt import format_time, parse_time
from store.casework import CaseDate, CaseWork
from store.db import transaction_locks
from store.facts import delete_fact, read_fact, write_fact

__all__ = ["SIGNATURE_HEADER", "NotifyFailed", "Notifier", "notification", "sign"]

SIGNATURE_HEADER = "Comity-Signature"
MAX_DELAY = 300.0
LEASE = 60.0  # seconds a scan holds the notifier lease, renewed while it runs
LEASE_FACT = "notifier_lease"
BODY_REFUSED = (400, 409, 413, 415, 422)  # answers that refuse one notification's body, not the hook itself
MAX_BACKOFF_STEPS = 20
TIMEOUT = aiohttp.ClientTimeout(total=10)


class NotifyFailed(ComityError):
    """The webhook could not take notifications: unreachable, redirected, busy or failing."""

    code = "notify-failed"


class NotifyRefused(NotifyFailed):
    """The webhook refused this notification (a 4xx but 408 and 429): the others may still go."""


def notification(gw: Gateway, item: CaseDate, stage: Stage) -> dict[str, Any]:
    """What a hook receives: ids, the kind, the due date, the stage; never the note."""
    return {
        "id": f"{gw.authority_id}/{item.id}/{stage.value}",
        "authority": gw.authority_id,
        "case_id": item.case_id,
        "item_id": item.id,
        "kind": item.kind.value,
        "due": item.due.isoformat(),
        "stage": stage.value,
        "time": format_time(gw.clock()),
    }


def sign(secret: bytes, body: bytes) -> str:
    """The ``Comity-Signature`` header value: ``sha256=`` and the hex HMAC-SHA256 of the body under ``secret``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Notifier:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.log = get_logger(component="notify")
        self.failures = 0
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self.holder = secrets.token_hex(8)  # this process, in the lease
        self._refused: dict[tuple[int, Stage], tuple[int, float]] = {}  # refusals in a row, loop time of the next try

    def stop(self) -> None:
        """Stop after the notification in hand is marked (a graceful shutdown): a notification that went out but
        was not marked would go out again after the restart."""
        self._stopping.set()

    async def deliver(self, note: dict[str, Any]) -> None:
        settings = self.gw.settings
        if settings.notify == "log":
            self.log.info("case_work_due", **note)
            return
        body = json.dumps(note, sort_keys=True, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if settings.notify_webhook_secret is not None:
            headers[SIGNATURE_HEADER] = sign(settings.notify_webhook_secret.get_secret_value().encode(), body)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        assert settings.notify_webhook_url is not None  # the settings refuse a webhook without a URL
        try:
            # a redirect is not followed: a 301/302 would turn the POST into a GET whose 2xx marks it notified, and
            # a 307/308 would send the body and its signature wherever the answer points
            url = settings.notify_webhook_url
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                if not 200 <= response.status < 300:
                    refused = response.status in BODY_REFUSED
                    raise (NotifyRefused if refused else NotifyFailed)(f"the webhook answered HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotifyFailed(f"the webhook is unreachable ({type(exc).__name__})") from None

    async def scan_once(self) -> int:
        """Notify what is due; return how many notifications went out. Raises :class:`NotifyFailed` after marking
        those that did."""
        if self.gw.settings.notify == "none":
            return 0
        gw = self.gw
        if not await self._lead():
            return 0
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        held_back = {item_id for (item_id, _), (_, next_try) in self._refused.items() if loop.time() < next_try}
        async with gw.reader.connect() as conn:
            pending = await CaseWork.to_notify(conn, gw.today(), gw.settings.notify_days_ahead, exclude=held_back)
        # what is neither pending nor held back was notified, done or closed meanwhile: forget its refusals
        keys = {(item.id, stage) for item, stage in pending}
        self._refused = {key: value for key, value in self._refused.items() if key in keys or key[0] in held_back}
        sent = 0
        for item, stage in pending:
            if self._stopping.is_set():
                break
            if loop.time() - renewed > LEASE / 3:  # a long scan keeps its lease, or stops if another took it
                if not await self._lead():
                    break
                renewed = loop.time()
            async with gw.reader.connect() as conn:  # done, closed or notified since the scan read it: not sent
                if not await CaseWork.still_to_notify(conn, item.id, stage):
                    continue
            refusals, _ = self._refused.get((item.id, stage), (0, 0.0))
            try:
                await self.deliver(notification(gw, item, stage))
            except NotifyRefused as exc:  # this one only: the next may go
                refusals = min(refusals + 1, MAX_BACKOFF_STEPS)
                self._refused[item.id, stage] = (refusals, loop.time() + self._backoff(refusals))
                self.log.warning("case_work_notify_refused", item_id=item.id, error=exc.message, attempts=refusals)
                continue
            self._refused.pop((item.id, stage), None)
            async with gw.engine.begin() as conn:
                await CaseWork.mark_notified(conn, item.id, stage, gw.clock())
            sent += 1
        return sent

    async def _lead(self) -> bool:
        """Whether this process holds the notifier lease (taking it if it is free or has run out, renewing it if it
        is ours): one replica notifies at a time."""
        gw = self.gw
        now = gw.clock()
        async with gw.transaction() as conn:
            await _lock(conn)
            held = await read_fact(conn, LEASE_FACT)
            if isinstance(held, dict) and held.get("holder") != self.holder:
                until = held.get("until")
                if isinstance(until, str) and parse_time(until) > now:
                    return False
            await write_fact(
                conn, LEASE_FACT, {"holder": self.holder, "until": format_time(now + timedelta(seconds=LEASE))}
            )
        return True

    def _backoff(self, failures: int) -> float:
        interval = float(self.gw.settings.notify_interval_seconds)
        return float(min(interval * 2**failures, max(interval, MAX_DELAY)))

    def delay(self) -> float:
        return self._backoff(self.failures) if self.failures else float(self.gw.settings.notify_interval_seconds)

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    await self.scan_once()
                    self.failures = 0
                except NotifyFailed as exc:
                    self.failures = min(self.failures + 1, MAX_BACKOFF_STEPS)
                    self.log.warning("case_work_notify_failed", error=exc.message, attempts=self.failures)
                except Exception:
                    self.failures = min(self.failures + 1, MAX_BACKOFF_STEPS)
                    self.log.exception("case_work_scan_failed")
                stop_if_cancelled()
                with contextlib.suppress(TimeoutError):  # the interval passed without a stop
                    await asyncio.wait_for(self._stopping.wait(), self.delay())
        finally:
            await self._release()
            if self._session is not None:
                await self._session.close()

    async def _release(self) -> None:
        """Give up the lease, if this process holds it (a stop): the next process need not wait for it to run out.
        Never raises: a lease that stays runs out."""
        try:
            async with self.gw.transaction() as conn:
                await _lock(conn)
                held = await read_fact(conn, LEASE_FACT)
                if isinstance(held, dict) and held.get("holder") == self.holder:
                    await delete_fact(conn, LEASE_FACT)
        except Exception as exc:
            self.log.warning("notifier_lease_not_released", error=type(exc).__name__)


async def _lock(conn: AsyncConnection) -> None:
    """Hold the notifier lease's lock until the transaction ends (SQLite's ``BEGIN IMMEDIATE`` already serialises
    writers)."""
    await transaction_locks(conn, LEASE_FACT)
