"""A realistic synthetic ledger for one authority (``ar.mj``) talking to ``au.ag``, for benchmarks and tests.

Messages live interleaved, as they do on a busy gateway: an outbound request is submitted, sent, receipted,
acknowledged and answered by the peer, the answer received and opened, the case closed; an inbound request is
received, opened, acknowledged and answered by a user here (each answer itself submitted, sent and receipted).
Times increase by a few milliseconds per event; every event satisfies the timeline invariants.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from protocol.events import LedgerEvent
from protocol.timefmt import format_time

__all__ = ["SELF", "PEER", "events", "raw_events"]

SELF, PEER = "ar.mj", "au.ag"
_MARKING = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}
_DIGEST = "5b" * 32


def _outbound(rng: random.Random, kind: str, reply_to: str | None = None) -> list[dict[str, object]]:
    mid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    common = {"message_id": mid, "to": PEER, "envelope_sha256": _DIGEST}
    submitted: dict[str, object] = {
        "type": "message.submitted",
        "actor": "user:alice",
        "kind": kind,
        "from": SELF,
        "marking": _MARKING,
        **common,
    }
    if reply_to:
        submitted["in_reply_to"] = reply_to
    steps: list[dict[str, object]] = [submitted]
    if reply_to:
        effect = "message.acknowledged" if kind == "acknowledgement" else "message.answered"
        steps.append({"type": effect, "actor": "user:alice", "message_id": reply_to, "related_id": mid})
    steps += [
        {"type": "message.sent", "actor": "system", **common},
        {"type": "message.receipt_recorded", "actor": "system", "peer_time": "+", "peer_ledger_index": 7, **common},
    ]
    return steps


def _lifecycles(rng: random.Random) -> Iterator[list[dict[str, object]]]:
    while True:
        if rng.random() < 0.5:  # outbound request, answered by the peer
            steps = _outbound(rng, "request")
            mid = str(steps[0]["message_id"])
            answer = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            steps += [
                {"type": "message.acknowledged", "actor": f"peer:{PEER}", "message_id": mid, "related_id": answer},
                {
                    "type": "message.received",
                    "actor": f"peer:{PEER}",
                    "message_id": answer,
                    "kind": "response",
                    "from": PEER,
                    "to": SELF,
                    "in_reply_to": mid,
                    "envelope_sha256": _DIGEST,
                    "marking": _MARKING,
                },
                {"type": "message.answered", "actor": f"peer:{PEER}", "message_id": mid, "related_id": answer},
                {"type": "message.opened", "actor": "user:alice", "message_id": answer, "purpose": "review"},
                {"type": "message.closed", "actor": "user:alice", "message_id": answer},
                {"type": "message.closed", "actor": "user:alice", "message_id": mid},
            ]
        else:  # inbound request, acknowledged and answered here
            mid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            steps = [
                {
                    "type": "message.received",
                    "actor": f"peer:{PEER}",
                    "message_id": mid,
                    "kind": "request",
                    "from": PEER,
                    "to": SELF,
                    "envelope_sha256": _DIGEST,
                    "marking": _MARKING,
                },
                {"type": "message.opened", "actor": "user:bob", "message_id": mid, "purpose": "review"},
            ]
            ack = _outbound(rng, "acknowledgement", mid)
            response = _outbound(rng, "response", mid)
            steps += ack + response
            steps += [
                {"type": "message.closed", "actor": "user:bob", "message_id": m}
                for m in (str(ack[0]["message_id"]), str(response[0]["message_id"]), mid)
            ]
        yield steps


def raw_events(count: int, *, seed: int = 7, concurrent: int = 50) -> Iterator[dict[str, object]]:
    """``count`` event documents (``LedgerEvent.parse`` input), ``concurrent`` lifecycles interleaved."""
    rng = random.Random(seed)
    lifecycles = _lifecycles(rng)
    active: list[list[dict[str, object]]] = [next(lifecycles) for _ in range(concurrent)]
    when = datetime(2026, 11, 28, 7, 40, tzinfo=UTC)
    for _ in range(count):
        slot = rng.randrange(concurrent)
        if not active[slot]:
            active[slot] = next(lifecycles)
        step = dict(active[slot].pop(0))
        when += timedelta(microseconds=rng.randrange(500, 5000))
        step["time"] = format_time(when)
        if step.get("peer_time") == "+":
            step["peer_time"] = format_time(when - timedelta(microseconds=300))
        yield step


def events(count: int, *, seed: int = 7) -> Iterator[LedgerEvent]:
    for document in raw_events(count, seed=seed):
        yield LedgerEvent.parse(document)
