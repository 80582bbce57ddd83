"""How many refusals each counterpart may cost us: a token bucket per authenticated peer (decision 75).

Every refusal of an authenticated peer is a ledger entry (protocol.md section 10), so a peer that keeps sending what
we refuse, by malice or by a bug, grows our ledger as fast as it can send. The peer's bucket holds at most ``burst``
tokens and fills at ``per_minute``. Every envelope the federation endpoint lets in takes a token first, and gets it
back unless it ends in a ledgered refusal; so no more than the tokens a peer holds can be refused at once, however
many deliveries it opens together. While a peer has no whole token, its envelopes are answered
``429 too-many-refusals`` with ``Retry-After``, unparsed: nothing signed, nothing stored, nothing ledgered. Its
outbox retries them later, like any answer without a receipt.

Buckets live in this process only: each replica sharing a database has its own. Only authenticated peers get a
bucket (an unauthenticated client is refused without a ledger entry anyway), so their number is bounded by the
directory; in development mode, by the names loopback processes claim.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from protocol.errors import ComityError

__all__ = [
    "DELIVERY_WAIT_SECONDS",
    "MIN_ATTACHMENT_RATE",
    "BodyStalled",
    "Busy",
    "DeliverySlots",
    "RateLimited",
    "TokenBuckets",
    "TooManyRefusals",
    "read_capped",
    "retry_after_seconds",
]


async def read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes | None:
    """A peer's whole answer (one ``content.read(n)`` returns only what has arrived so far), or None past ``cap``
    bytes."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 14):
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)


# how long a delivery waits for one of its peer's slots before it is answered 503 busy
DELIVERY_WAIT_SECONDS = 10.0
# a delivery's attachments must arrive within body_read_seconds plus their ct_size at this many bytes a second
MIN_ATTACHMENT_RATE = 64 * 1024


class BodyStalled(Exception):
    """A body did not arrive in time (``body_read_seconds``, and for an attachment ``MIN_ATTACHMENT_RATE``):
    answered 408 ``read-timeout``, unsigned and unledgered, and the connection not kept alive. Not a
    :class:`ComityError`, so that nothing turns it into a signed refusal: the bytes may be fine, and the sender sends
    them again."""

    peer: str | None = None  # the authenticated peer, once known (for the log line)


def retry_after_seconds(value: str | None) -> float | None:
    """Delay-seconds of a ``Retry-After`` header (RFC 9110 10.2.3); None for anything else, an HTTP date included
    (ASCII digits only: ``str.isdigit`` alone takes '²')."""
    return float(value) if value is not None and value.isascii() and value.isdigit() else None


class TooManyRefusals(ComityError):
    """The peer ran out of refusals for now: answered 429 with ``Retry-After``, not signed, not ledgered."""

    code = "too-many-refusals"


@dataclass
class _Bucket:
    tokens: float
    at: float
    limited: bool = False  # answered 429 since it last had a token: log the start of a limitation once


class TokenBuckets:
    """A token bucket per key (a peer's refusals; a user's API requests, decision 177): at most ``burst`` tokens,
    refilled at ``per_minute``."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least one")
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, peer: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
            bucket.at = now
        return bucket

    def take(self, peer: str) -> float:
        """Take one of ``peer``'s tokens and return 0.0; or, if it has no whole one, take nothing and return the
        seconds until it has."""
        bucket = self._bucket(peer)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.limited = False
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def give_back(self, peer: str) -> None:
        """The envelope that took a token did not end in a ledgered refusal (a receipt, a duplicate, our own
        failure): the token returns."""
        bucket = self._bucket(peer)
        bucket.tokens = min(self._burst, bucket.tokens + 1.0)

    def available(self, peer: str) -> float:
        """The tokens ``peer`` holds now."""
        return self._bucket(peer).tokens

    def starts_limit(self, peer: str) -> bool:
        """True the first time ``peer`` is turned away since it last had a token (what is worth a log line)."""
        bucket = self._bucket(peer)
        first, bucket.limited = not bucket.limited, True
        return first


class RateLimited(ComityError):
    """A user sent API requests faster than ``api_requests_per_minute`` allows: answered 429 with ``Retry-After``,
    before the route's scope is checked, so nothing is done and nothing ledgered."""

    code = "rate-limited"


class Busy(ComityError):
    """The peer has as many deliveries in flight as it may: answered 503 with ``Retry-After``, unparsed."""

    code = "busy"


class DeliverySlots:
    """At most ``per_peer`` deliveries of one authenticated peer are read and checked at a time (decision 86).

    Each holds an envelope of up to ``max_envelope_bytes`` in memory (and, while it is opened, its decoded and
    decrypted copies), so this bounds what one peer, honest or not, can make us hold: about three times ``per_peer``
    times that. One more delivery waits for a slot, holding its connection and what aiohttp buffers before it stops
    reading the socket (about 128 KiB), for up to ``wait`` seconds; past that it is :class:`Busy`. Per process, like
    the refusal budget; peers are bounded by the directory."""

    def __init__(self, per_peer: int, wait: float) -> None:
        if per_peer < 1 or wait < 0:
            raise ValueError("delivery slots need at least one slot per peer and a wait of zero or more")
        self.per_peer = per_peer
        self.wait = wait
        self._slots: dict[str, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def hold(self, peer: str) -> AsyncIterator[None]:
        slots = self._slots.get(peer)
        if slots is None:
            slots = self._slots[peer] = asyncio.Semaphore(self.per_peer)
        if slots.locked():  # rare: only then a timer (every envelope comes through here)
            try:
                async with asyncio.timeout(self.wait):
                    await slots.acquire()
            except TimeoutError:
                raise Busy(f"{self.per_peer} of your deliveries are in flight; try again") from None
        else:
            await slots.acquire()  # free: returns at once
        try:
            yield
        finally:
            slots.release()

    def full(self, peer: str) -> bool:
        """Whether every one of ``peer``'s slots is held (a next delivery would wait)."""
        slots = self._slots.get(peer)
        return slots is not None and slots.locked()
