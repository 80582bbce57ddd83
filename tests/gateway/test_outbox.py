"""The outbox persists before sending and retries with backoff until a receipt arrives, across restarts."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from gateway.logs import configure_logging
from gateway.outbox import FEDERATION_PATH, OutboxSender, retry_delay
from store.db import make_engine, make_reader
from store.tables import ledger_entries, messages, outbox
from tests.gateway.conftest import Pair, Side
from tests.gateway.test_exchange import REQUEST, send_with_attachment, wait_for

FAST = {"outbox_initial_backoff": 0.05, "outbox_max_backoff": 0.2}


async def count(side: Side, table: Any, *where: Any) -> int:
    async with side.gw.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


async def restart(side: Side, **overrides: Any) -> None:
    await side.stop()
    await side.start(**overrides)


async def failed_twice(sender: Side, message_id: str) -> None:
    """Until the sender's only outbox row has had two failed attempts; the message is still queued, unreceived."""
    attempts = 0
    for _ in range(200):
        async with sender.gw.engine.connect() as conn:
            attempts = (await conn.execute(select(outbox.c.attempts))).scalar_one()
        if attempts >= 2:
            break
        await asyncio.sleep(0.05)
    assert attempts >= 2
    assert (await wait_for(sender, message_id, "queued"))["received_at"] is None


async def test_retries_until_the_receiver_is_back_across_a_sender_restart(pair: Pair) -> None:
    await pair.au.stop()
    await restart(pair.ar, **FAST)
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202
    message_id = body["id"]

    # the receiver is down: attempts fail and are rescheduled, the message stays queued
    await failed_twice(pair.ar, message_id)

    # the sender restarts (the outbox row survives), then the receiver comes back
    await restart(pair.ar, **FAST)
    await pair.au.start()
    await wait_for(pair.ar, message_id, "delivered")
    assert await count(pair.ar, outbox) == 0
    assert await count(pair.au, messages, messages.c.id == message_id) == 1
    assert await count(pair.au, ledger_entries, ledger_entries.c.type == "message.received") == 1
    assert await count(pair.ar, ledger_entries, ledger_entries.c.type == "message.receipt_recorded") == 1


@pytest.mark.parametrize("failing", ["duplicate check", "commit"])
async def test_a_receiver_whose_database_fails_refuses_nothing_and_the_sender_retries(
    pair: Pair, tmp_path: Path, failing: str
) -> None:
    """An outage of the receiver's database is not the envelope's fault: no signed refusal (which the sender could
    take as final), no ledger entry; the sender retries until the database is back, then the message is delivered.
    The database fails at the receiver's first read (the duplicate check, through the coalescer) or at its group
    commit."""
    await restart(pair.ar, **FAST)
    receiver = pair.au.gw
    sqlite = receiver.engine.dialect.name == "sqlite"
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'comity.db'}"
        if sqlite
        else "postgresql+asyncpg://postgres@127.0.0.1:1/test"  # nothing listens there
    )
    gone = make_engine(url)
    saved = (receiver.reader, receiver.engine, receiver.committer._autocommit)
    if failing == "duplicate check":
        receiver.reader = make_reader(url, gone)
    elif sqlite:  # the committer begins its transactions on the engine
        receiver.engine = gone
    else:  # the committer runs its groups on an autocommit view of the engine
        receiver.committer._autocommit = gone.execution_options(isolation_level="AUTOCOMMIT")
    buffer = io.StringIO()
    saved_logging = structlog.get_config()
    configure_logging(level="info", stream=buffer)
    try:
        status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
        assert status == 202
        await failed_twice(pair.ar, body["id"])
    finally:
        structlog.configure(**saved_logging)
        if receiver.reader is not saved[0]:
            await receiver.reader.dispose()
        await gone.dispose()
        receiver.reader, receiver.engine, receiver.committer._autocommit = saved

    # the receiver answered 503 store-unavailable, not a 500 (the sender retries either)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert any(line["event"] == "store_unavailable" and line["path"] == FEDERATION_PATH for line in lines)
    assert not any(line["event"] == "unhandled_error" for line in lines)
    await wait_for(pair.ar, body["id"], "delivered")
    for side in (pair.ar, pair.au):
        refused = ledger_entries.c.type.in_(["message.refused", "message.delivery_failed"])
        assert await count(side, ledger_entries, refused) == 0
    assert await count(pair.au, ledger_entries, ledger_entries.c.type == "message.received") == 1


async def test_a_crash_after_delivery_redelivers_and_gets_the_same_receipt(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    await restart(pair.ar, **FAST)
    receipts: list[str] = []
    original = OutboxSender._record_receipt

    async def crash_once(self: OutboxSender, peer: Any, digest: str, item: Any, token: str, sent_at: Any) -> None:
        receipts.append(token)
        if len(receipts) == 1:
            raise ConnectionResetError("simulated crash before the receipt was committed")
        await original(self, peer, digest, item, token, sent_at)

    monkeypatch.setattr(OutboxSender, "_record_receipt", crash_once)
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202
    await wait_for(pair.ar, body["id"], "delivered")
    assert len(receipts) == 2 and receipts[0] == receipts[1]
    assert await count(pair.au, messages) == 1
    assert await count(pair.au, ledger_entries, ledger_entries.c.type == "message.received") == 1
    assert await count(pair.ar, ledger_entries, ledger_entries.c.type == "message.receipt_recorded") == 1


async def test_a_receipt_recorded_after_the_acknowledgement_leaves_the_message_acknowledged(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer to our delivery is lost and the peer acknowledges before our retry gets its stored receipt: the
    receipt is recorded, and the request stays acknowledged (decision 111)."""
    await restart(pair.ar, outbox_initial_backoff=1.5, outbox_max_backoff=1.5)
    original = OutboxSender._record_receipt
    lost: list[str] = []

    async def first_answer_lost(self: OutboxSender, peer: Any, digest: str, item: Any, token: str, sent: Any) -> None:
        if not lost:
            lost.append(item.message_id)
            raise ConnectionResetError("the connection dropped while the answer was read")
        await original(self, peer, digest, item, token, sent)

    monkeypatch.setattr(OutboxSender, "_record_receipt", first_answer_lost)
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202, body
    request_id = body["id"]
    await wait_for(pair.au, request_id, "received")
    body = {"confidentiality": "can-comply"}
    status, ack = await pair.au.call("POST", f"/v1/messages/{request_id}/acknowledge", json=body)
    assert status == 202, ack
    await wait_for(pair.ar, request_id, "acknowledged")
    for _ in range(200):
        if await count(pair.ar, ledger_entries, ledger_entries.c.type == "message.receipt_recorded"):
            break
        await asyncio.sleep(0.05)
    assert lost == [request_id]
    async with pair.ar.gw.engine.connect() as conn:
        row = (await conn.execute(select(messages).where(messages.c.id == request_id))).one()
    assert row.state == "acknowledged" and row.receipt is not None and row.received_at is not None


async def thread_and_reply(pair: Pair) -> tuple[str, str]:
    """ar.mj opens a consultation with au.ag and replies in it at once: the reply follows the thread's first message
    (decision 112). Returns both ids."""
    marking = {"level": "CONFIDENTIAL", "caveats": ["uncac-46-20"]}
    status, started = await pair.ar.call(
        "POST", "/v1/consultations", json={"to": "au.ag", "marking": marking, "content": {"text": "may we ask?"}}
    )
    assert status == 202, started
    status, replied = await pair.ar.call(
        "POST", f"/v1/consultations/{started['id']}/messages", json={"content": {"text": "and one more thing"}}
    )
    assert status == 202, replied
    async with pair.ar.gw.engine.connect() as conn:
        rows = dict((await conn.execute(select(outbox.c.message_id, outbox.c.after_id))).all())
    assert rows == {started["id"]: None, replied["id"]: started["id"]}
    return str(started["id"]), str(replied["id"])


async def test_after_an_outage_a_reply_waits_for_the_thread_it_replies_in(pair: Pair) -> None:
    """The peer is down; an officer opens a consultation and replies in it. After the outage the reply's retry
    comes due first: it waits until the thread's first message has its receipt, then goes, instead of being
    refused for good as a reply in a thread the peer does not know (decision 112)."""
    from datetime import timedelta

    from sqlalchemy import update

    await pair.au.stop()
    thread_id, reply_id = await thread_and_reply(pair)
    gw = pair.ar.gw
    async with gw.engine.begin() as conn:  # the thread's first message happens to come due a little later
        later = gw.clock() + timedelta(seconds=1)
        await conn.execute(
            update(outbox).where(outbox.c.message_id == thread_id).values(next_attempt_at=later, claimed_until=None)
        )
        await conn.execute(
            update(outbox).where(outbox.c.message_id == reply_id).values(next_attempt_at=gw.clock(), claimed_until=None)
        )
    await pair.au.start()
    await wait_for(pair.ar, thread_id, "delivered")
    await wait_for(pair.ar, reply_id, "delivered")
    async with pair.au.gw.engine.connect() as conn:
        received = (
            await conn.execute(
                select(ledger_entries.c.message_id)
                .where(ledger_entries.c.type == "message.received")
                .order_by(ledger_entries.c.idx)
            )
        ).scalars()
        assert list(received) == [thread_id, reply_id]


async def test_the_connections_to_a_peer_are_limited_by_the_setting(pair: Pair) -> None:
    await pair.ar.stop()
    await pair.ar.start(outbox_connections_per_peer=2)
    assert pair.ar.running is not None
    sender = pair.ar.running.sender
    ids = []
    for _ in range(6):
        status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
        assert status == 202
        ids.append(body["id"])
    for message_id in ids:
        await wait_for(pair.ar, message_id, "delivered")
    connector = sender._session(pair.ar.gw.peer("au.ag")).connector
    assert connector is not None and connector.limit == 2


@given(
    attempts=st.integers(min_value=0, max_value=10_000),
    initial=st.floats(min_value=0.001, max_value=60),
    extra=st.floats(min_value=0, max_value=86_400),
    draw=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_a_retry_waits_at_most_the_maximum_and_at_least_four_fifths_of_its_backoff(
    attempts: int, initial: float, extra: float, draw: float
) -> None:
    maximum = initial + extra  # settings refuse a maximum below the initial delay
    backoff = min(maximum, initial * 2.0 ** min(attempts, 64))
    delay = retry_delay(attempts, initial, maximum, jitter=lambda: draw)
    assert 0.8 * backoff - 1e-9 <= delay <= backoff <= maximum


def test_retries_held_back_by_an_outage_do_not_all_come_due_together() -> None:
    """At the cap every delay used to be exactly the maximum (the jitter was applied before the cap)."""
    delays = {retry_delay(40, 0.5, 300.0) for _ in range(50)}
    assert len(delays) > 40 and min(delays) >= 240.0 and max(delays) <= 300.0


async def _backlog_metrics(side: Side) -> dict[str, float]:
    text = await side.metrics()
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(("comity_outbox_waiting{", "comity_outbox_oldest_seconds{"))
    }


async def test_metrics_show_what_waits_for_a_peer_and_for_how_long(pair: Pair) -> None:
    """The outbox never gives up on a peer that does not answer; an operator sees the backlog grow and age."""
    await pair.au.stop()
    await restart(pair.ar, **FAST)
    assert await _backlog_metrics(pair.ar) == {}
    ids = []
    for _ in range(2):
        status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
        assert status == 202, body
        ids.append(body["id"])
    await asyncio.sleep(0.3)
    waiting = await _backlog_metrics(pair.ar)
    assert waiting['comity_outbox_waiting{peer="au.ag"}'] == 2
    assert waiting['comity_outbox_oldest_seconds{peer="au.ag"}'] >= 0.3

    await pair.au.start()
    for message_id in ids:
        await wait_for(pair.ar, message_id, "delivered")
    assert await _backlog_metrics(pair.ar) == {}  # no stale series for a peer with nothing waiting


async def _stalling_peer(side: Side) -> tuple[asyncio.Server, list[asyncio.StreamWriter]]:
    """In place of ``side``'s stopped gateway, on its port with its certificate: a peer that completes the TLS
    handshake and then reads nothing and answers nothing."""
    from gateway.tls import server_context

    gw, settings = side.gw, side.gw.settings
    context = server_context(
        gw.directory, gw.authority_id, str(settings.tls_cert_path), str(settings.tls_key_path), gw.tls_password
    )
    connections: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    port = side.provisioned.federation_port
    await side.stop()
    return await asyncio.start_server(hold, "127.0.0.1", port, ssl=context), connections


async def test_a_peer_that_stalls_holds_an_attempt_no_longer_than_its_limit_and_gets_it_once(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that takes the connection and then neither reads nor answers: the attempt ends at its limit
    (ATTEMPT_SECONDS, plus the attachments at MIN_ATTACHMENT_RATE) and is retried; while it runs, its lease is
    renewed, so the message is not claimed and sent a second time beside it."""
    from gateway import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "ATTEMPT_SECONDS", 2.0)
    monkeypatch.setattr(outbox_module, "LEASE", timedelta(seconds=0.6))  # renewed every 0.2 s
    server, connections = await _stalling_peer(pair.au)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await send_with_attachment(pair.ar, REQUEST, b"records" * 100)
        async with pair.ar.gw.engine.connect() as conn:
            assert (await conn.execute(select(outbox.c.attempts))).scalar_one() == 0
        while await count(pair.ar, outbox, outbox.c.attempts >= 1) == 0:
            assert loop.time() - started < 10, "the stalled attempt never ended"
            await asyncio.sleep(0.05)
        assert loop.time() - started >= 2.0  # no earlier than its limit
        assert len(connections) == 1  # three leases ran out meanwhile: renewed, not claimed again
        async with pair.ar.gw.engine.connect() as conn:
            row = (await conn.execute(select(outbox.c.last_error, outbox.c.claimed_until))).one()
        assert row.last_error == "delivery-failed" and row.claimed_until is None  # rescheduled
    finally:
        server.close()
        for writer in connections:
            writer.close()


async def test_the_claim_loop_survives_a_failing_database_and_does_not_spin_when_full(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Looking up the next due retry failed once: before, that ended the claim loop for good (nothing claimed,
    retried or sent from then on). And with every slot taken and a row due, the loop waits for a slot instead of
    asking the database again and again."""
    from sqlalchemy.exc import OperationalError

    assert pair.ar.running is not None
    sender, task = pair.ar.running.sender, pair.ar.running.sender_task
    real = pair.ar.gw.outbox.next_due
    calls = 0

    async def failing_once(conn: Any, now: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("SELECT next_attempt_at", {}, Exception("database is locked"))
        return await real(conn, now)

    monkeypatch.setattr(pair.ar.gw.outbox, "next_due", failing_once)  # ar.mj's only (au.ag runs a loop too)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while calls < 2:  # the loop polls at least once a second
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    assert not task.done()
    message_id = await send_with_attachment(pair.ar, REQUEST, b"records")  # only the claim loop sends these
    await wait_for(pair.ar, message_id, "delivered")

    sender.concurrency = 0  # every slot taken
    await send_with_attachment(pair.ar, REQUEST, b"records")  # due at once, and cannot be claimed
    before = calls
    await asyncio.sleep(1.5)
    # at most the one of a wait that began before the slots were taken (a spinning loop makes hundreds)
    assert calls - before <= 1, f"{calls - before} lookups of the next due row while no slot was free"


def stall_direct_deliveries(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Deliveries handed over at commit (no attachments) wait until the returned event is set; claimed ones go."""
    release = asyncio.Event()
    real = OutboxSender.deliver

    async def direct_ones_stall(self: OutboxSender, item: Any, prefetched: Any = None) -> None:
        if prefetched is not None:
            await release.wait()
        await real(self, item, prefetched)

    monkeypatch.setattr(OutboxSender, "deliver", direct_ones_stall)
    return release


async def test_direct_deliveries_in_flight_do_not_keep_the_claim_loop_from_sending(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages without attachments are handed to the sender at commit, with no limit of their own; while they are
    in flight, what only the claim loop sends (attachments, retries) still goes: the claim loop's limit counts its
    own deliveries (decision 112)."""
    assert pair.ar.running is not None
    sender = pair.ar.running.sender
    sender.concurrency = 1
    release = stall_direct_deliveries(monkeypatch)
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202, body
    stalled = body["id"]
    with_file = await send_with_attachment(pair.ar, REQUEST, b"records")  # only the claim loop sends these
    await wait_for(pair.ar, with_file, "delivered")
    status, message = await pair.ar.call("GET", f"/v1/messages/{stalled}")
    assert message["state"] == "queued"  # still in flight
    release.set()
    await wait_for(pair.ar, stalled, "delivered")


async def test_a_reply_queued_behind_a_direct_delivery_goes_as_soon_as_that_one_has_its_receipt(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply that follows a message still in flight is queued, held; the end of that message's direct delivery
    wakes the claim loop, so the reply does not wait for the loop's next poll (here made half a minute long)."""
    from gateway import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "POLL_SECONDS", 30.0)
    release = stall_direct_deliveries(monkeypatch)
    thread_id, reply_id = await thread_and_reply(pair)
    await asyncio.sleep(0.3)  # the claim loop, woken by the reply's commit, found it held and went back to sleep
    assert (await wait_for(pair.ar, reply_id, "queued"))["received_at"] is None
    release.set()
    await wait_for(pair.ar, thread_id, "delivered")
    await wait_for(pair.ar, reply_id, "delivered", timeout=10)
    assert pair.ar.gw.outbox_awaited == set()


async def test_a_submission_whose_commit_answer_was_lost_keeps_its_files_and_goes_out(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 96: the database committed the submission but its answer never came (a connection lost at COMMIT).
    The message is stored and queued: its attachment files stay and it is delivered, and the officer is told it was
    accepted. A commit that surely failed still removes the files it would have needed."""
    gw = pair.ar.gw
    real = gw.commit
    how = "lost answer"

    async def flaky(unit: Any) -> Any:
        if getattr(unit, "__qualname__", "") != "_persist.<locals>.unit":
            return await real(unit)
        if how == "lost answer":
            await real(unit)  # committed ...
        raise ConnectionResetError("connection lost at COMMIT")  # ... or not, and the answer is an error either way

    monkeypatch.setattr(gw, "commit", flaky)
    outgoing = gw.settings.attachments_path / "out"
    message_id = await send_with_attachment(pair.ar, REQUEST, b"records of account 1234")
    assert len(list(outgoing.rglob("*"))) >= 1
    await wait_for(pair.ar, message_id, "delivered")
    status, body = await pair.au.call("GET", f"/v1/messages/{message_id}")
    assert status == 200, body

    how = "failed"
    before = sorted(outgoing.rglob("*"))
    form = aiohttp.FormData()
    form.add_field("message", json.dumps(REQUEST), content_type="application/json")
    form.add_field("attachment", io.BytesIO(b"other records"), filename="records.pdf", content_type="application/pdf")
    status, body = await pair.ar.call("POST", "/v1/messages", data=form)
    assert status >= 500, body
    assert sorted(outgoing.rglob("*")) == before  # its file was removed


async def test_a_claim_that_keeps_failing_is_tried_about_once_a_second(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that reads but will not write (a standby after a failover, a full disk): the claim fails at once
    while a due row is there to be claimed. The loop waits a second between tries instead of spinning."""
    from sqlalchemy.exc import OperationalError

    assert pair.ar.running is not None
    task = pair.ar.running.sender_task
    await pair.au.stop()  # the first attempt fails: a retry comes due
    await send_with_attachment(pair.ar, REQUEST, b"records")
    claims = 0

    async def refused(conn: Any, now: Any, *, limit: int, lease: Any) -> Any:
        nonlocal claims
        claims += 1
        raise OperationalError("UPDATE outbox", {}, Exception("database or disk is full"))

    await asyncio.sleep(1.5)  # past the first attempt; its retry is due within a second
    monkeypatch.setattr(pair.ar.gw.outbox, "claim_due", refused)
    await asyncio.sleep(2.5)
    assert 1 <= claims <= 4, f"{claims} claims in 2.5 s"
    assert not task.done()


async def test_a_due_row_the_claim_does_not_get_is_polled_not_spun_on(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A due row held by another transaction (a replica's claim, a receipt being recorded) is skipped by the claim
    (SKIP LOCKED) but still due to next_due: the loop then claimed and asked again without sleeping, a dozen times a
    second for as long as the lock was held. Modelled by a claim that gets nothing while the row is due."""
    await pair.au.stop()
    await restart(pair.ar, outbox_initial_backoff=600, outbox_max_backoff=600)
    await send_with_attachment(pair.ar, REQUEST, b"records")  # only the claim loop sends it; au.ag is down
    for _ in range(200):
        async with pair.ar.gw.engine.connect() as conn:
            attempts = (await conn.execute(select(outbox.c.attempts))).scalar_one()
        if attempts:
            break
        await asyncio.sleep(0.05)
    assert attempts == 1  # rescheduled 600 s ahead
    gw, claims = pair.ar.gw, 0

    async def held_elsewhere(conn: Any, now: Any, **options: Any) -> list[Any]:
        nonlocal claims
        claims += 1
        return []

    monkeypatch.setattr(gw.outbox, "claim_due", held_elsewhere)
    real_clock = gw.clock
    monkeypatch.setattr(gw, "clock", lambda: real_clock() + timedelta(hours=1))  # the row is due now
    gw.outbox_wakeup.set()
    await asyncio.sleep(1.5)
    assert 1 <= claims <= 4, claims
