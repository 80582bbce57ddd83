"""Load through the sender's officer API, and end-to-end figures from the sender's ledger.

A message is done when the sender's ledger holds its ``message.receipt_recorded`` entry: by then it was sealed,
sent over mutual TLS, opened, verified, stored and ledgered by the receiver, receipted, and the receipt verified and
ledgered by the sender. Two latencies per message:

* ``e2e``: from the moment the bench starts the ``POST /v1/messages`` (wall clock) to the ledger time of the
  receipt; this includes the submit request (authentication, sealing, the first transaction);
* ``ledger``: from the ledger time of ``message.submitted`` to that of ``message.receipt_recorded``.
"""

from __future__ import annotations

import asyncio
import math
import random
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.pair import GatewayProcess, Pair
from bench.procs import CpuMeter

__all__ = ["LoadResult", "Submitted", "content_text", "fixed_rate", "flat_out", "percentiles", "request_body"]

SUBMITTED = "message.submitted"
RECEIPTED = "message.receipt_recorded"


def content_text(size: int = 2048) -> str:
    rng = random.Random(2048)
    return "".join(rng.choice(string.ascii_letters + " ") for _ in range(size))


def request_body(to: str, text: str) -> dict[str, object]:
    return {
        "to": to,
        "kind": "request",
        "marking": {"level": "CONFIDENTIAL", "caveats": []},
        "content": {"text": text},
    }


@dataclass(frozen=True)
class Submitted:
    message_id: str
    started: float  # wall clock when the POST started
    answered: float  # wall clock when the 202 arrived


@dataclass(frozen=True)
class LoadResult:
    mode: str
    messages: int
    seconds: float  # first POST start to last receipt
    rate: float  # messages / seconds
    submit_rate: float  # messages / (first POST start to last 202)
    e2e_ms: dict[str, float]
    ledger_ms: dict[str, float]
    submit_ms: dict[str, float]
    cpu_s: dict[str, float]
    cpu_ms_per_message: dict[str, float]
    retried: int
    target_rate: float | None = None
    # the slowest 2% (at least 10): (seconds from the phase's first POST to this one's, e2e ms, submit ms),
    # slowest first, to tell a steady tail from stalls that hit everything in flight at one moment
    slowest: list[tuple[float, float, float]] | None = None


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]  # nearest rank

    return {
        "p50": round(rank(50), 2),
        "p95": round(rank(95), 2),
        "p99": round(rank(99), 2),
        "max": round(ordered[-1], 2),
        "mean": round(sum(ordered) / len(ordered), 2),
    }


async def _submit(side: GatewayProcess, body: dict[str, object]) -> Submitted:
    assert side.session is not None
    started = time.time()
    async with side.session.post(side.api + "/v1/messages", json=body) as response:
        document = await response.json(content_type=None)
        if response.status != 202:
            raise RuntimeError(f"submit answered {response.status}: {document}")
    return Submitted(str(document["id"]), started, time.time())


async def wait_drained(pair: Pair, expected_ids: Sequence[str], within: float) -> None:
    """Until the sender's outbox is empty and every id has its receipt in the sender's ledger."""
    deadline = time.monotonic() + within
    while True:
        if await pair.sender.db.outbox_pending() == 0:
            receipted = await pair.sender.db.ledger_times(RECEIPTED)
            missing = [i for i in expected_ids if i not in receipted]
            if not missing:
                return
            states = await pair.sender.db.states()
            raise RuntimeError(f"outbox empty but {len(missing)} messages have no receipt; states {states}")
        if time.monotonic() > deadline:
            pending = await pair.sender.db.outbox_pending()
            raise TimeoutError(f"{pending} messages still in the outbox after {within} s")
        await asyncio.sleep(0.1)


async def _result(
    pair: Pair, mode: str, sent: Sequence[Submitted], cpu: dict[str, float], target: float | None
) -> LoadResult:
    submitted = await pair.sender.db.ledger_times(SUBMITTED)
    receipted = await pair.sender.db.ledger_times(RECEIPTED)
    e2e = [(receipted[s.message_id] - s.started) * 1000 for s in sent]
    ledger = [(receipted[s.message_id] - submitted[s.message_id]) * 1000 for s in sent]
    first = min(s.started for s in sent)
    last = max(receipted[s.message_id] for s in sent)
    submit_span = max(s.answered for s in sent) - first
    return LoadResult(
        mode=mode,
        messages=len(sent),
        seconds=round(last - first, 3),
        rate=round(len(sent) / (last - first), 1),
        submit_rate=round(len(sent) / submit_span, 1),
        e2e_ms=percentiles(e2e),
        ledger_ms=percentiles(ledger),
        submit_ms=percentiles([(s.answered - s.started) * 1000 for s in sent]),
        cpu_s=cpu,
        cpu_ms_per_message={
            name: round(seconds * 1000 / len(sent), 2) for name, seconds in cpu.items() if name != "wall"
        },
        retried=await pair.sender.db.outbox_errors(),
        target_rate=target,
        slowest=sorted(
            (
                (round(s.started - first, 3), round(ms, 1), round((s.answered - s.started) * 1000, 1))
                for s, ms in zip(sent, e2e, strict=True)
            ),
            key=lambda row: -row[1],
        )[: max(10, len(sent) // 50)],
    )


async def fixed_rate(pair: Pair, text: str, *, rate: float, seconds: float, meter: CpuMeter) -> LoadResult:
    """Open loop: one submission every 1/rate seconds whatever the answers, for ``seconds``."""
    body = request_body(pair.receiver.authority_id, text)
    count = max(1, int(rate * seconds))
    tasks: list[asyncio.Task[Submitted]] = []
    meter.start()
    start = time.monotonic()
    for index in range(count):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_submit(pair.sender, body)))
    sent = await asyncio.gather(*tasks)
    await wait_drained(pair, [s.message_id for s in sent], within=max(60.0, 10 * seconds))
    cpu = meter.stop()
    return await _result(pair, "fixed-rate", sent, cpu, rate)


async def flat_out(pair: Pair, text: str, *, messages: int, clients: int, meter: CpuMeter) -> LoadResult:
    """Closed loop: ``clients`` tasks submit ``messages`` in all, each as soon as its previous one was accepted."""
    body = request_body(pair.receiver.authority_id, text)
    remaining = messages
    sent: list[Submitted] = []

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            sent.append(await _submit(pair.sender, body))

    meter.start()
    await asyncio.gather(*(client() for _ in range(clients)))
    await wait_drained(pair, [s.message_id for s in sent], within=max(120.0, messages / 10))
    cpu = meter.stop()
    return await _result(pair, "flat-out", sent, cpu, None)


async def warm_up(pair: Pair, text: str, messages: int) -> None:
    """Open the pools, the TLS connection and SQLAlchemy's statement cache before measuring."""
    body = request_body(pair.receiver.authority_id, text)
    sent = await asyncio.gather(*(_submit(pair.sender, body) for _ in range(messages)))
    await wait_drained(pair, [s.message_id for s in sent], within=120)
