"""What a client of the federation port can make a gateway hold, and for how long (decision 86).

An unlisted client, and a listed peer the gateway refuses to talk to (blocked, or an expired directory), get their
signed refusal before a byte of the body is read (ledgered for a listed peer only), and the connection is not kept
alive. A listed peer has at most ``peer_deliveries_at_once`` deliveries read and checked at a time; one more waits
for a slot, then is answered 503 ``busy``. A body that stops arriving is answered 408 ``read-timeout`` after
``body_read_seconds`` (then the attachments must keep coming at 64 KiB/s, our own disk time not counted), and
a client that leaves mid-body costs an info line: in these cases nothing is stored, signed or ledgered, and the peer's
refusal token comes back. A compressed body is refused; broken chunked framing is aiohttp's 400.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import re
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import structlog

from crypto.receipts import verify_refusal
from gateway import receiving
from gateway.context import utcnow
from gateway.files import AttachmentFile
from protocol.receipts import Refusal
from protocol.timefmt import parse_time
from tests.gateway.conftest import PASSPHRASE, Pair, ledger
from tests.gateway.hostile import Answer, HostilePeer, make_attachment, read_answer
from tests.gateway.test_federation_refusals import stored
from tests.gateway.test_markings import hostile_towards
from tests.gateway.test_outbox import restart

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
BOUNDARY = "limits-test-boundary"


def multipart(sealed: bytes, attachment: bytes) -> bytes:
    """``multipart/mixed`` as the outbox sends it: the envelope, then one attachment ciphertext."""
    return (
        f"--{BOUNDARY}\r\nContent-Type: application/jose\r\nContent-Length: {len(sealed)}\r\n\r\n".encode()
        + sealed
        + f"\r\n--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(attachment)}\r\n\r\n".encode()
        + attachment
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def multipart_pieces(sealed: bytes, attachments: list[bytes]) -> list[bytes]:
    """The same body in pieces, to send with pauses between them: the envelope, each attachment part, the end."""
    head = f"--{BOUNDARY}\r\nContent-Type: application/jose\r\nContent-Length: {len(sealed)}\r\n\r\n".encode()
    pieces = [head + sealed]
    for attachment in attachments:
        pieces.append(
            f"\r\n--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(attachment)}\r\n\r\n".encode()
            + attachment
        )
    return [*pieces, f"\r\n--{BOUNDARY}--\r\n".encode()]


async def post_in_pieces(hostile: HostilePeer, pieces: list[bytes], pause: float) -> Answer:
    """Send ``pieces`` with ``pause`` seconds before each after the first; the answer, whenever it comes."""
    body = b"".join(pieces)
    reader, writer = await hostile.start_post(len(body), pieces[0], f"multipart/mixed; boundary={BOUNDARY}")
    try:
        answer_task = asyncio.create_task(read_answer(reader))
        for piece in pieces[1:]:
            await asyncio.sleep(pause)
            if answer_task.done():
                break
            writer.write(piece)
        return await asyncio.wait_for(answer_task, 5)
    finally:
        writer.close()


async def trickle(hostile: HostilePeer, body: bytes, cut: int, held: str) -> Answer:
    """Send ``body`` up to ``cut`` of it, then a byte every 0.1 s for 4 s; the answer, which must come before
    that (else ``held``: the slot was held for the trickle)."""
    reader, writer = await hostile.start_post(len(body), body[:cut], f"multipart/mixed; boundary={BOUNDARY}")
    try:
        answer_task = asyncio.create_task(read_answer(reader))
        for byte in body[cut : cut + 40]:
            if answer_task.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
        else:
            answer_task.cancel()
            raise AssertionError(held)
        return answer_task.result()
    finally:
        writer.close()


async def until(condition: Callable[[], bool | Awaitable[bool]], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        result = condition()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not hold in time")


@pytest.fixture
def hostile(pair: Pair) -> HostilePeer:
    """ar.mj's real TLS identity and keys, pointed at au.ag's federation port."""
    return hostile_towards(pair.ar, pair.au)


async def refused_unread(pair: Pair, client: HostilePeer, code: str, status: int = 403) -> Refusal:
    """The signed ``code`` refusal ``client`` gets for a POST that declares a GiB and sends three bytes: were
    the body read first, the answer would never come."""
    reader, writer = await client.start_post(1 << 30, b"eyJ")
    try:
        answer = await asyncio.wait_for(read_answer(reader), 5)
    finally:
        writer.close()
    assert (answer.status, answer.document["code"]) == (status, code), answer.raw
    assert answer.headers["connection"] == "close"
    refusal = verify_refusal(answer.document["refusal"], pair.ar.gw.peer("au.ag").all_signing_keys())
    assert refusal.code == code
    return refusal


def counted(pair: Pair, name: str) -> float:
    return pair.au.gw.metrics.registry.get_sample_value(name, {"peer": "ar.mj"}) or 0.0


async def test_an_unlisted_client_is_refused_before_its_body_is_read(
    pair: Pair,
    hostile: HostilePeer,
    tmp_path: Path,
) -> None:
    """It declares a GiB and sends three bytes: were the body read first, the answer would never come."""
    issued = hostile.with_certificate_issued_by(pair.ar.provisioned.data_dir, PASSPHRASE.encode(), tmp_path)
    before = await stored(pair.au.gw)
    refusal = await refused_unread(pair, issued, "unknown-peer")
    assert (refusal.to, refusal.message_id, refusal.envelope_sha256) == (None, None, EMPTY_SHA256)
    assert await stored(pair.au.gw) == before  # nothing stored, nothing ledgered


async def test_a_blocked_peer_is_refused_before_its_body_is_read(pair: Pair, hostile: HostilePeer) -> None:
    """A listed peer the gateway will not talk to gets its signed (and ledgered) refusal unread; unblocked, the
    same peer is received."""
    pair.au.gw.blocked_peers.add("ar.mj")
    size = len(await ledger(pair.au.gw))  # indexes start at 0
    refusal = await refused_unread(pair, hostile, "peer-blocked")
    assert (refusal.to, refusal.message_id, refusal.envelope_sha256) == ("ar.mj", None, EMPTY_SHA256)
    (entry,) = await ledger(pair.au.gw, since=size)
    assert (entry["type"], entry["reason"], entry["envelope_sha256"]) == (
        "message.refused",
        "peer-blocked",
        EMPTY_SHA256,
    )

    pair.au.gw.blocked_peers.discard("ar.mj")
    assert (await hostile.post(hostile.seal(hostile.payload()))).status == 200


async def test_every_client_is_refused_before_its_body_is_read_while_our_directory_is_expired(
    pair: Pair, hostile: HostilePeer
) -> None:
    """Past our directory's expiry nobody is an authenticated peer: a listed peer gets its signed (and ledgered)
    directory-expired refusal unread, and once the clock is back, it is received."""
    expiry = parse_time(pair.au.gw.directory.expires_at)
    pair.au.gw.clock = lambda: expiry + timedelta(seconds=1)
    try:
        size = len(await ledger(pair.au.gw))
        refusal = await refused_unread(pair, hostile, "directory-expired", status=503)
        assert (refusal.to, refusal.message_id, refusal.envelope_sha256) == ("ar.mj", None, EMPTY_SHA256)
        (entry,) = await ledger(pair.au.gw, since=size)
        assert (entry["type"], entry["reason"]) == ("message.refused", "directory-expired")
    finally:
        pair.au.gw.clock = utcnow
    assert (await hostile.post(hostile.seal(hostile.payload()))).status == 200


async def test_a_peer_has_at_most_its_deliveries_in_flight(pair: Pair, hostile: HostilePeer) -> None:
    """One slot: while a delivery holds it, the next waits for it, and past the wait is answered 503 busy with
    Retry-After, unparsed and unledgered, and its refusal token comes back; once the slot is free, deliveries go
    through again."""
    await restart(pair.au, peer_deliveries_at_once=1, peer_refusals_per_minute=0.06)  # a token refills in 1000 s
    slots, budget = pair.au.gw.delivery_slots, pair.au.gw.refusal_budget
    first, second, third = (hostile.seal(hostile.payload()) for _ in range(3))
    before, tokens = await stored(pair.au.gw), budget.available("ar.mj")

    # a delivery that finds the slot held waits for it
    reader, writer = await hostile.start_post(len(first), first[:100])
    try:
        await until(lambda: slots.full("ar.mj"))
        waiting = asyncio.create_task(hostile.post(second))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        writer.write(first[100:])
        assert (await asyncio.wait_for(read_answer(reader), 5)).status == 200
        assert (await asyncio.wait_for(waiting, 5)).status == 200
    finally:
        writer.close()
    assert (await stored(pair.au.gw)).messages == before.messages + 2

    # past the wait: busy
    slots.wait = 0.2
    before = await stored(pair.au.gw)
    reader, writer = await hostile.start_post(len(third), third[:100])
    try:
        await until(lambda: slots.full("ar.mj"))
        answer = await hostile.post(hostile.seal(hostile.payload()))
        assert (answer.status, answer.document["code"], answer.retry_after) == (503, "busy", "1"), answer.raw
        assert "refusal" not in answer.document
        assert await stored(pair.au.gw) == before
        assert counted(pair, "comity_envelopes_busy_total") == 1
        writer.write(third[100:])
        assert (await asyncio.wait_for(read_answer(reader), 5)).status == 200
    finally:
        writer.close()
    await until(lambda: not slots.full("ar.mj"))
    assert (await hostile.post(hostile.seal(hostile.payload()))).status == 200
    assert budget.available("ar.mj") == pytest.approx(tokens, abs=0.01)  # nothing here was a ledgered refusal


@pytest.mark.parametrize(
    ("part", "trickle"), [("envelope", False), ("envelope", True), ("attachment", False), ("attachment", True)]
)
async def test_a_body_that_stops_arriving_is_answered_408_and_nothing_is_kept(
    pair: Pair, hostile: HostilePeer, part: str, trickle: bool
) -> None:
    """``body_read_seconds`` bounds every pause, and the whole envelope; an attachment part must arrive within that
    plus its size at ``MIN_ATTACHMENT_RATE`` (here 0.5 s + 0.34 s), so that a byte at a time does not hold a slot
    for ever. The answer is unsigned (the bytes may be fine), the connection is not kept alive, no partial file
    stays, the peer's refusal token comes back, and the same bytes sent whole pass."""
    await restart(pair.au, body_read_seconds=0.5, peer_refusals_per_minute=0.06)  # a token refills in 1000 s
    attachment = make_attachment(b"a statement of account" * 1000)
    with_attachment = part == "attachment"
    payload = hostile.payload(attachments=[attachment.ref.model_dump()] if with_attachment else [])
    sealed = hostile.seal(payload)
    body = multipart(sealed, attachment.ciphertext) if with_attachment else sealed
    cut = len(body) - 10_000 if with_attachment else 100
    content_type = f"multipart/mixed; boundary={BOUNDARY}" if with_attachment else "application/jose"
    before, tokens = await stored(pair.au.gw), pair.au.gw.refusal_budget.available("ar.mj")
    with structlog.testing.capture_logs() as logs:
        reader, writer = await hostile.start_post(len(body), body[:cut], content_type)
        try:
            if trickle:  # a byte every 0.1 s: never idle as long as the limit, yet never done
                answer_task = asyncio.create_task(read_answer(reader))
                for byte in body[cut : cut + 40]:  # 4 s of it: the answer comes within 1 s, not when it stops
                    if answer_task.done():
                        break
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("a body that trickles in was read for as long as it came")
                answer = answer_task.result()
            else:
                answer = await asyncio.wait_for(read_answer(reader), 5)
            assert (answer.status, answer.document["code"]) == (408, "read-timeout"), answer.raw
            assert "refusal" not in answer.document and answer.headers["connection"] == "close"
        finally:
            writer.close()
    assert [entry["event"] for entry in logs if entry["log_level"] != "debug"] == ["body_stalled"]
    assert [entry["peer"] for entry in logs if entry["event"] == "body_stalled"] == ["ar.mj"]
    assert counted(pair, "comity_envelopes_stalled_total") == 1
    assert await stored(pair.au.gw) == before  # no row, no ledger entry, no file (partial or whole)
    assert pair.au.gw.refusal_budget.available("ar.mj") == pytest.approx(tokens, abs=0.01)

    sent: dict[str, Any] = {"content_type": content_type}
    reader, writer = await hostile.start_post(len(body), body, **sent)
    try:
        assert (await asyncio.wait_for(read_answer(reader), 5)).status == 200
    finally:
        writer.close()


async def test_a_small_part_gets_no_time_from_the_large_parts_after_it(pair: Pair, hostile: HostilePeer) -> None:
    """Each part has its own time, from its own size (decision 118): a manifest that claims a large attachment
    after a small one does not let the small one trickle in for as long as the large one might take (here 0.5 s
    + 2 KB at 64 KiB/s, not the 90 s that 6 MB more would give)."""
    await restart(pair.au, body_read_seconds=0.5)
    small, large = make_attachment(os.urandom(2000)), make_attachment(os.urandom(6_000_000))
    payload = hostile.payload(attachments=[small.ref.model_dump(), large.ref.model_dump()])
    body = multipart(hostile.seal(payload), small.ciphertext)  # the large one never comes
    cut = len(body) - 1500  # inside the small attachment
    answer = await trickle(hostile, body, cut, "the small part was read for as long as the large one would have been")
    assert (answer.status, answer.document["code"]) == (408, "read-timeout"), answer.raw
    assert re.search(r"attachment 0 did not arrive within 0\.[5-9] s", answer.document["detail"]), answer.document


async def test_a_large_claim_buys_no_time_without_its_bytes(pair: Pair, hostile: HostilePeer) -> None:
    """The time follows the bytes that arrive, not the size the manifest claims: a part that claims 6 MB and sends a
    byte every 0.1 s is answered 408 after body_read_seconds, not after the 90 s its size would be worth."""
    await restart(pair.au, body_read_seconds=0.5)
    large = make_attachment(os.urandom(6_000_000))
    payload = hostile.payload(attachments=[large.ref.model_dump()])
    body = multipart(hostile.seal(payload), large.ciphertext)
    cut = len(body) - len(large.ciphertext) + 100  # a hundred bytes of it
    answer = await trickle(hostile, body, cut, "a trickle held the slot for the size it claimed")
    assert (answer.status, answer.document["code"]) == (408, "read-timeout"), answer.raw


async def test_our_own_disk_time_is_not_the_peers(
    pair: Pair, hostile: HostilePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Syncing each part's file as it is verified takes our time, not the peer's: three small parts sent at once,
    each synced in 0.3 s, pass within a body_read_seconds of 0.5 s."""
    from gateway.files import AttachmentFile

    await restart(pair.au, body_read_seconds=0.5)
    real_close = AttachmentFile.close

    def slow_close(self: AttachmentFile) -> None:
        time.sleep(0.3)  # a slow disk: blocking, as the real fsync is
        real_close(self)

    monkeypatch.setattr(AttachmentFile, "close", slow_close)
    parts = [make_attachment(os.urandom(40)) for _ in range(3)]
    payload = hostile.payload(attachments=[part.ref.model_dump() for part in parts])
    pieces = multipart_pieces(hostile.seal(payload), [part.ciphertext for part in parts])
    answer = await post_in_pieces(hostile, pieces, pause=0.05)  # so that we wait for each part after the sync
    assert answer.status == 200, answer.raw[:300]


async def test_many_small_parts_get_no_more_time_than_their_size(pair: Pair, hostile: HostilePeer) -> None:
    """The attachments get body_read_seconds, then what their bytes are worth at 64 KiB/s: six tiny parts, each just
    inside 0.5 s of the one before, do not hold the slot six times as long."""
    await restart(pair.au, body_read_seconds=0.5)
    parts = [make_attachment(os.urandom(40)) for _ in range(6)]
    payload = hostile.payload(attachments=[part.ref.model_dump() for part in parts])
    pieces = multipart_pieces(hostile.seal(payload), [part.ciphertext for part in parts])
    answer = await post_in_pieces(hostile, pieces, pause=0.35)
    assert (answer.status, answer.document["code"]) == (408, "read-timeout"), answer.raw
    # the grace plus what the bytes are worth, plus our own disk time on a slow disk
    assert re.search(r"attachment [1-5] did not arrive within 0\.[5-9] s", answer.document["detail"]), answer.document


@pytest.mark.parametrize("where", ["envelope", "attachment"])
async def test_a_client_that_leaves_mid_body_costs_an_info_line(
    pair: Pair,
    hostile: HostilePeer,
    where: str,
) -> None:
    """The handler ends on the reset connection with an info line, no error or traceback, and nothing kept."""
    attachment = make_attachment(b"a statement of account" * 1000)
    payload = hostile.payload(attachments=[attachment.ref.model_dump()] if where == "attachment" else [])
    sealed = hostile.seal(payload)
    body = multipart(sealed, attachment.ciphertext) if where == "attachment" else sealed
    cut = len(body) - 100 if where == "attachment" else 100
    content_type = f"multipart/mixed; boundary={BOUNDARY}" if where == "attachment" else "application/jose"
    await restart(pair.au, peer_deliveries_at_once=1, peer_refusals_per_minute=0.06)  # slots show a reading
    slots, budget = pair.au.gw.delivery_slots, pair.au.gw.refusal_budget
    before, tokens = await stored(pair.au.gw), budget.available("ar.mj")
    with structlog.testing.capture_logs() as logs:
        _, writer = await hostile.start_post(len(body), body[:cut], content_type)
        await until(lambda: slots.full("ar.mj"))
        writer.close()
        await until(lambda: any(entry["event"] == "client_disconnected" for entry in logs))
        await until(lambda: not slots.full("ar.mj"))
    assert not [entry for entry in logs if entry["log_level"] in ("warning", "error", "critical")], logs
    assert await stored(pair.au.gw) == before
    assert budget.available("ar.mj") == pytest.approx(tokens, abs=0.01)
    assert (await hostile.post(hostile.seal(hostile.payload()))).status == 200


async def test_broken_chunked_framing_is_answered_at_once_and_nothing_is_kept(pair: Pair, hostile: HostilePeer) -> None:
    """A chunk size that is not hexadecimal: the answer is a 400 at once (aiohttp's parser's, or our signed
    invalid-message), never a wait for the body, a 500 or an unhandled error; nothing is stored."""
    sealed = hostile.seal(hostile.payload())
    address = urlsplit(hostile.url)
    assert address.hostname is not None and address.port is not None
    before = await stored(pair.au.gw)
    with structlog.testing.capture_logs() as logs:
        reader, writer = await asyncio.open_connection(address.hostname, address.port, ssl=hostile.ssl_context)
        try:
            head = (
                f"POST /federation/v1/envelopes HTTP/1.1\r\nHost: {address.netloc}\r\n"
                "Content-Type: application/jose\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            writer.write(head.encode() + b"64\r\n" + sealed[:100] + b"\r\nzz\r\n" + sealed[100:200])
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 5)
        finally:
            writer.close()
        await asyncio.sleep(0.2)
    assert status_line.split()[1] == b"400", status_line
    assert not [entry for entry in logs if entry["log_level"] in ("error", "critical")], logs
    assert not [entry for entry in logs if entry["event"] in ("body_stalled", "unhandled_error")], logs
    assert (await stored(pair.au.gw)).messages == before.messages


async def test_a_compressed_body_is_refused_before_it_is_read(pair: Pair, hostile: HostilePeer) -> None:
    """No Content-Encoding: the gateway never inflates what a peer sends (a small body could be a large one)."""
    answer = await hostile.post_raw(
        gzip.compress(hostile.seal(hostile.payload())),
        {"Content-Type": "application/jose", "Content-Encoding": "gzip"},
    )
    assert (answer.status, answer.document["code"]) == (400, "invalid-message"), answer.raw
    refusal = verify_refusal(answer.document["refusal"], pair.ar.gw.peer("au.ag").all_signing_keys())
    assert refusal.envelope_sha256 == EMPTY_SHA256 and "Content-Encoding" in refusal.reason


@pytest.mark.parametrize(
    "headers",
    [
        "Content-Encoding: identity\r\nContent-Encoding: gzip\r\n",  # the check read the first, aiohttp the last
        "Content-Encoding: identity, gzip\r\n",
        "Content-Encoding: gzip\r\nContent-Encoding: identity\r\n",
    ],
)
async def test_no_content_encoding_header_gets_a_body_inflated(pair: Pair, hostile: HostilePeer, headers: str) -> None:
    """Check 3 read the first Content-Encoding header only, and aiohttp inflated the body by the last one: a gzip
    body behind "identity" was inflated, verified, receipted and stored, so a peer could have a part of zeros, a
    thousandth of its size on the wire, written to our disk in full. Every value is now read, and the federation
    server never inflates a body whatever its headers."""
    before = await stored(pair.au.gw)
    body = gzip.compress(hostile.seal(hostile.payload()))
    address = urlsplit(hostile.url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port, ssl=hostile.ssl_context)
    try:
        head = (
            f"POST /federation/v1/envelopes HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"Content-Type: application/jose\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        answer = await asyncio.wait_for(read_answer(reader), 10)
    finally:
        writer.close()
    assert (answer.status, answer.document["code"]) == (400, "invalid-message"), answer.raw[:300]
    assert (await stored(pair.au.gw)).messages == before.messages


async def test_a_slow_disk_of_ours_is_not_counted_as_the_peers_stall(
    pair: Pair, hostile: HostilePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each write of the attachment takes 0.15 s (the event loop blocked, as on a saturated disk), sixteen of them
    against a deadline of 1 s (no allowance for size here): the time is ours, so the delivery is receipted, not
    answered 408."""
    await restart(pair.au, body_read_seconds=1.0)
    monkeypatch.setattr(receiving, "MIN_ATTACHMENT_RATE", 1 << 40)
    attachment = make_attachment(os.urandom(1_000_000))  # 16 reads of 64 KiB, more than the sockets buffer
    payload = hostile.payload(attachments=[attachment.ref.model_dump()])
    real_write = AttachmentFile.write
    writes: list[int] = []

    def slow_write(self: AttachmentFile, data: bytes) -> None:
        writes.append(len(data))
        time.sleep(0.15)
        real_write(self, data)

    monkeypatch.setattr(AttachmentFile, "write", slow_write)
    answer = await hostile.post_multipart(hostile.seal(payload), [attachment.ciphertext])
    assert answer.status == 200, answer.raw[:300]
    assert len(writes) >= 10
