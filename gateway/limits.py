"""How many refusals each counterpart may cost us: a token bucket per authenticated peer (decision 75).

Every refusal of an authenticated peer is a ledger entry (protocol.md section 10), so a peer that keeps sending what
we refuse, by malice or by a bug, grows our ledger as fast as it can send. Each such refusal takes a token from the
peer's bucket, which holds at most ``burst`` and fills at ``per_minute``. While a peer has no whole token left, the
federation endpoint answers its envelopes ``429 too-many-refusals`` with ``Retry-After``, before reading the body:
nothing signed, nothing stored, nothing ledgered. Its outbox retries them later, like any answer without a receipt.

Buckets live in this process only: each replica sharing a database has its own. Only listed peers get a bucket
(an unauthenticated client is refused without a ledger entry anyway), so their number is bounded by the directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from protocol.errors import ComityError

__all__ = ["RefusalBudget", "TooManyRefusals"]


class TooManyRefusals(ComityError):
    """The peer ran out of refusals for now: answered 429 with ``Retry-After``, not signed, not ledgered."""

    code = "too-many-refusals"


@dataclass
class _Bucket:
    tokens: float
    at: float
    limited: bool = False  # answered 429 since it last had a token: log the start of a limitation once


class RefusalBudget:
    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("the refusal budget needs a positive rate and a burst of at least one")
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

    def wait(self, peer: str) -> float:
        """Seconds until ``peer`` may cost us another refusal; 0.0 while it has a token."""
        bucket = self._bucket(peer)
        if bucket.tokens >= 1.0:
            bucket.limited = False
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def starts_limit(self, peer: str) -> bool:
        """True the first time ``peer`` is turned away since it last had a token (what is worth a log line)."""
        bucket = self._bucket(peer)
        first, bucket.limited = not bucket.limited, True
        return first

    def spend(self, peer: str) -> None:
        """One refusal of ``peer`` was ledgered. Refusals already in flight when the bucket ran dry still spend: the
        debt (at most the peer's concurrent deliveries) lengthens its wait."""
        self._bucket(peer).tokens -= 1.0
