"""One large attachment end to end, then downloaded on the receiver, with the peak resident memory of each gateway.

The attachment is generated as it is sent (never held whole by the bench): 1 MiB blocks of random bytes, each made
distinct by a counter, streamed as the "attachment" part of a multipart/form-data submission. Its SHA-256 is taken
on the way out and checked on the way back from the receiver's ``GET /v1/messages/{id}/attachments/0``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp.payload import AsyncIterablePayload

from bench.load import RECEIPTED, request_body, wait_drained
from bench.pair import Pair
from bench.procs import CpuMeter, memory, reset_peak

__all__ = ["BigResult", "big_attachment"]

BLOCK = 1 << 20


@dataclass
class BigResult:
    bytes: int
    submit_s: float = 0.0  # upload to the sender's API, encrypted to disk as it arrives, until the 202
    deliver_s: float = 0.0  # from the 202 to the receipt in the sender's ledger (sent, verified, stored, receipted)
    end_to_end_s: float = 0.0  # from the start of the upload to the receipt
    end_to_end_mb_s: float = 0.0
    download_s: float = 0.0
    download_mb_s: float = 0.0
    sha256_ok: bool = False
    # VmHWM per gateway: over the whole process life, and since a reset just before each phase
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    peak_rss_transfer_mib: dict[str, float] = field(default_factory=dict)
    peak_rss_download_mib: dict[str, float] = field(default_factory=dict)
    rss_before_mib: dict[str, float] = field(default_factory=dict)
    peak_rss_before_mib: dict[str, float] = field(default_factory=dict)  # VmHWM of the earlier phases
    cpu_s: dict[str, float] = field(default_factory=dict)


async def _generate(size: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    block = bytearray(os.urandom(BLOCK))
    sent, counter = 0, 0
    while sent < size:
        block[:8] = counter.to_bytes(8, "big")
        chunk = bytes(block[: min(BLOCK, size - sent)])
        digest.update(chunk)
        sent += len(chunk)
        counter += 1
        yield chunk


def _mb_s(size: int, seconds: float) -> float:
    return round(size / 1e6 / seconds, 1) if seconds > 0 else 0.0


async def big_attachment(pair: Pair, size: int, text: str) -> BigResult:
    result = BigResult(bytes=size)
    pids = pair.pids
    for name, pid in pids.items():
        before = memory(pid)
        result.rss_before_mib[name] = round(before.current_mib, 1)
        result.peak_rss_before_mib[name] = round(before.peak_mib, 1)
        reset_peak(pid)
    meter = CpuMeter(pids, postgres=pair.backend == "postgresql")
    meter.start()

    sent_digest = hashlib.sha256()
    form = aiohttp.MultipartWriter("form-data")
    draft = request_body(pair.receiver.authority_id, text[:200])
    part = form.append(json.dumps(draft), {"Content-Type": "application/json"})
    part.set_content_disposition("form-data", name="message")
    part = form.append_payload(
        AsyncIterablePayload(_generate(size, sent_digest), content_type="application/octet-stream")
    )
    part.set_content_disposition("form-data", name="attachment", filename="evidence.bin")

    sender = pair.sender
    assert sender.session is not None
    started = time.time()
    async with sender.session.post(sender.api + "/v1/messages", data=form) as response:
        document = await response.json(content_type=None)
        if response.status != 202:
            raise RuntimeError(f"submit answered {response.status}: {document}")
    accepted = time.time()
    message_id = str(document["id"])
    await wait_drained(pair, [message_id], within=max(600.0, size / 2e6))
    receipt_time = (await sender.db.ledger_times(RECEIPTED))[message_id]
    result.submit_s = round(accepted - started, 2)
    result.deliver_s = round(receipt_time - accepted, 2)
    result.end_to_end_s = round(receipt_time - started, 2)
    result.end_to_end_mb_s = _mb_s(size, receipt_time - started)
    for name, pid in pids.items():
        result.peak_rss_transfer_mib[name] = round(memory(pid).peak_mib, 1)
        reset_peak(pid)

    receiver = pair.receiver
    assert receiver.session is not None
    url = f"{receiver.api}/v1/messages/{message_id}"
    async with receiver.session.post(url + "/open", json={"purpose": "review"}) as response:
        opened = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"open answered {response.status}: {opened}")
    got_digest, got = hashlib.sha256(), 0
    started = time.time()
    async with receiver.session.get(url + "/attachments/0") as response:
        if response.status != 200:
            raise RuntimeError(f"download answered {response.status}")
        async for chunk in response.content.iter_chunked(BLOCK):
            got_digest.update(chunk)
            got += len(chunk)
    result.download_s = round(time.time() - started, 2)
    result.download_mb_s = _mb_s(got, time.time() - started)
    result.sha256_ok = got == size and got_digest.hexdigest() == sent_digest.hexdigest()
    result.sha256_ok = result.sha256_ok and opened["attachments"][0]["sha256"] == sent_digest.hexdigest()
    for name, pid in pids.items():
        result.peak_rss_download_mib[name] = round(memory(pid).peak_mib, 1)
    result.peak_rss_mib = {
        name: max(result.peak_rss_transfer_mib[name], result.peak_rss_download_mib[name]) for name in pids
    }
    result.cpu_s = meter.stop()
    return result
