"""Cross-witnessing: peers check each other's checkpoints with consistency proofs, cosign them, and block a peer
that rewrites its history. Also the auditor API's proofs against the signed checkpoints."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from sqlalchemy import delete, select, update

from crypto.note import NoteError, NoteSigner, open_checkpoint, open_note, sign_note
from crypto.receipts import sign_receipt, verify_receipt
from gateway.outbox import DeliveryError
from gateway.witness import (
    MAX_PROOF_FAILURES,
    RECEIPT_PROOF_PATH,
    STORE_ATTEMPTS,
    WitnessError,
    cosignature_verifiers,
    note_verifiers,
)
from protocol import merkle
from protocol.checkpoint import Checkpoint, CheckpointError
from protocol.events import LedgerEvent
from protocol.receipts import Receipt
from protocol.timefmt import format_time, parse_time
from store.facts import read_fact
from store.ledger import PeerCheckpoint, WitnessState
from store.tables import (
    checkpoints,
    cosignatures,
    ledger_entries,
    ledger_head,
    ledger_nodes,
    messages,
    outbox,
    peer_checkpoints,
)
from tests.conftest import DatabaseFactory
from tests.gateway.conftest import Pair, Side, comity, issue_token, running_pair, serve_locally
from tests.gateway.test_exchange import REQUEST, wait_for
from tests.gateway.test_markings import assert_problem, hostile_towards


async def exchange(pair: Pair) -> str:
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    assert pair.ar.running is not None
    await pair.ar.running.sender.witness.idle()
    return str(body["id"])


async def rows(side: Side, query: Any) -> list[Any]:
    async with side.gw.engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def test_sender_verifies_and_cosigns_the_receivers_checkpoint(pair: Pair) -> None:
    await exchange(pair)
    held = await rows(pair.ar, select(peer_checkpoints))
    assert [row.peer for row in held] == ["au.ag"]
    checkpoint, _ = open_checkpoint(held[0].note, note_verifiers(pair.ar.gw, "au.ag"))
    assert checkpoint.origin == "comity-ledger/au.ag" and checkpoint.root_hash == bytes(held[0].root)

    # au.ag keeps ar.mj's cosignature beside its checkpoint, and it verifies under ar.mj's directory key
    lines = await rows(pair.au, select(cosignatures))
    assert [(row.size, row.witness) for row in lines] == [(checkpoint.size, "comity-witness/ar.mj")]
    await exchange(pair)  # the second checkpoint is checked against the first with a consistency proof
    held = await rows(pair.ar, select(peer_checkpoints).order_by(peer_checkpoints.c.size))
    assert len(held) == 2 and held[0].size < held[1].size
    assert not pair.ar.gw.blocked_peers


async def test_auditor_api_serves_checkpoints_entries_and_proofs(pair: Pair) -> None:
    message_id = await exchange(pair)
    auditor = await asyncio.to_thread(issue_token, pair.au.provisioned.config, "audrey", "auditor")
    headers = {"Authorization": f"Bearer {auditor}"}
    status, latest = await pair.au.call("GET", "/v1/ledger/checkpoint", headers=headers)
    assert status == 200
    verified = open_note(
        latest["note"], [*note_verifiers(pair.au.gw, "au.ag"), *cosignature_verifiers(pair.au.gw, "ar.mj")]
    )
    assert {sig.name for sig in verified.verified} >= {"comity-ledger/au.ag"}
    size, root = latest["size"], base64.b64decode(latest["root"])

    status, raw = await pair.au.call("GET", f"/v1/ledger/entries?start=0&end={size}", headers=headers)
    lines = raw.split(b"\n")[:-1]
    builder = merkle.TreeBuilder()
    for line in lines:
        LedgerEvent.parse(json.loads(line))
        builder.append_leaf_hash(merkle.leaf_hash(line))
    assert len(lines) == size and builder.root() == root

    status, proof = await pair.au.call(
        "GET", f"/v1/ledger/proofs/inclusion?message_id={message_id}&size={size}", headers=headers
    )
    assert status == 200
    leaf = merkle.leaf_hash(lines[proof["index"]])
    assert json.loads(lines[proof["index"]])["message_id"] == message_id
    merkle.verify_inclusion(leaf, proof["index"], size, [base64.b64decode(p) for p in proof["proof"]], root)

    await exchange(pair)
    status, newer = await pair.au.call("GET", "/v1/ledger/checkpoint", headers=headers)
    status, consistency = await pair.au.call(
        "GET", f"/v1/ledger/proofs/consistency?from={size}&to={newer['size']}", headers=headers
    )
    merkle.verify_consistency(
        size, newer["size"], [base64.b64decode(p) for p in consistency["proof"]], root, base64.b64decode(newer["root"])
    )
    # officers do not read the ledger API (alice is an officer; bruce supervises, and may)
    status, problem = await pair.ar.call("GET", "/v1/ledger/checkpoint")
    assert status == 403 and problem["code"] == "forbidden"


async def rewrite_history(side: Side) -> None:
    """A careful operator rewrites its first entry and rebuilds the whole tree so that it is self-consistent."""
    gw = side.gw
    async with gw.transaction() as conn:
        entries = [
            bytes(r.entry) for r in await conn.execute(select(ledger_entries.c.entry).order_by(ledger_entries.c.idx))
        ]
        first = json.loads(entries[0])
        first["time"] = "2020-01-01T00:00:00.000000Z"
        events = [LedgerEvent.parse(first), *(LedgerEvent.parse(json.loads(e)) for e in entries[1:])]
        for table in (ledger_entries, ledger_nodes, checkpoints):
            await conn.execute(delete(table))
        await conn.execute(update(ledger_head).values(size=0, frontier=b""))
        await gw.events.append_many(conn, events)


async def test_a_peer_that_rewrites_its_history_is_caught_and_blocked(pair: Pair) -> None:
    await exchange(pair)
    await rewrite_history(pair.au)
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    await wait_for(pair.ar, body["id"], "delivered")
    assert pair.ar.running is not None
    await pair.ar.running.sender.witness.idle()

    assert pair.ar.gw.blocked_peers == {"au.ag"}
    async with pair.ar.gw.engine.connect() as conn:
        alarms = await WitnessState.open_alarms(conn)
    assert [(a.peer, a.reason) for a in alarms] == [("au.ag", "ledger-rewritten")]
    alarm_entries = await rows(pair.ar, select(ledger_entries.c.entry).where(ledger_entries.c.type == "peer.alarm"))
    assert json.loads(alarm_entries[0].entry)["from"] == "au.ag"
    assert 'comity_peer_alarms_total{peer="au.ag"} 1.0' in await pair.ar.metrics()
    # no further exchange with the blocked peer, in either direction
    status, problem = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 403 and problem["code"] == "peer-blocked"

    # the blocked peer's envelopes are refused too (its outbox keeps them: peer-blocked is transient)
    status, inbox = await pair.ar.call("GET", "/v1/messages?box=outbox")
    request_id = inbox["messages"][-1]["id"]
    status, _ = await pair.au.call(
        "POST", f"/v1/messages/{request_id}/acknowledge", json={"confidentiality": "can-comply"}
    )
    assert status == 202
    for _ in range(50):
        refused = await rows(pair.ar, select(ledger_entries.c.entry).where(ledger_entries.c.type == "message.refused"))
        if refused:
            break
        await asyncio.sleep(0.05)
    assert json.loads(refused[0].entry)["reason"] == "peer-blocked"

    # an operator investigates, accepts au.ag's rewritten history and clears the alarm: exchanges resume within
    # about a second, and the next checkpoint from au.ag is the new starting point (no second alarm)
    await asyncio.to_thread(
        comity,
        "peer",
        "clear",
        "au.ag",
        "--operator",
        "oscar",
        "--forget-history",
        "--config",
        str(pair.ar.provisioned.config),
    )
    for _ in range(60):
        if not pair.ar.gw.blocked_peers:
            break
        await asyncio.sleep(0.05)
    assert not pair.ar.gw.blocked_peers
    cleared = await rows(pair.ar, select(ledger_entries.c.entry).where(ledger_entries.c.type == "peer.alarm_cleared"))
    assert json.loads(cleared[0].entry)["actor"] == "user:oscar"
    assert await rows(pair.ar, select(peer_checkpoints)) == []
    await exchange(pair)
    assert not pair.ar.gw.blocked_peers
    assert len(await rows(pair.ar, select(peer_checkpoints))) == 1


async def test_a_checkpoint_of_the_empty_tree_is_consistent_exactly_when_its_root_is_the_empty_root(
    pair: Pair,
) -> None:
    """9.5 step 3: there is no consistency proof from size 0 (RFC 9162 has none; verify_consistency refuses one),
    so none is asked. The empty tree is the start of every tree: a size-0 checkpoint held and a larger one are
    consistent when the size-0 root is the empty tree's root, and a ``ledger-rewritten`` alarm otherwise. The
    witness used to verify an empty proof from size 0, and raised a false alarm at the peer's next checkpoint."""
    assert pair.ar.running is not None
    witness = pair.ar.running.sender.witness
    empty = pair.au.gw.sign_checkpoint(Checkpoint("comity-ledger/au.ag", 0, merkle.EMPTY_ROOT).to_text())
    await witness.check("au.ag", empty)  # nothing held: first use
    await exchange(pair)  # the receipt's checkpoint, checked against the size-0 one
    async with pair.ar.gw.engine.connect() as conn:
        assert not await WitnessState.open_alarms(conn)
    held = await rows(pair.ar, select(peer_checkpoints.c.size).order_by(peer_checkpoints.c.size))
    assert [row.size for row in held][:1] == [0] and len(held) == 2
    await witness.check("au.ag", empty)  # older than the one held, and consistent with it: nothing to keep
    assert not pair.ar.gw.blocked_peers
    async with pair.ar.gw.engine.connect() as conn:
        assert not await WitnessState.open_alarms(conn)

    # a size-0 checkpoint with any other root is of no tree at all
    bogus = pair.au.gw.sign_checkpoint(Checkpoint("comity-ledger/au.ag", 0, bytes(32)).to_text())
    await witness.check("au.ag", bogus)
    async with pair.ar.gw.engine.connect() as conn:
        alarms = await WitnessState.open_alarms(conn)
    assert [(a.peer, a.reason) for a in alarms] == [("au.ag", "ledger-rewritten")]


async def test_an_auditor_reading_the_ledger_does_not_block_deliveries(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An auditor that stops reading `GET /v1/ledger/entries` mid-way holds its socket, and no database connection:
    the stream held one across every write, so clients that stalled (a socket's buffers full) could take the whole
    pool and stop every commit (decision 170). Deliveries and their ledger entries carry on meanwhile."""
    from aiohttp import web

    from gateway import ledger_api

    await exchange(pair)
    gw = pair.au.gw
    monkeypatch.setattr(ledger_api, "ENTRIES_PAGE", 1)
    real, stalled, resume = web.StreamResponse.write, asyncio.Event(), asyncio.Event()

    async def write(self: web.StreamResponse, data: bytes) -> None:
        if data and not stalled.is_set():  # the client stops reading after the first page
            stalled.set()
            await resume.wait()
        await real(self, data)

    monkeypatch.setattr(web.StreamResponse, "write", write)
    reading = asyncio.create_task(pair.au.call("GET", "/v1/ledger/entries?start=0&end=10000"))
    await asyncio.wait_for(stalled.wait(), 10)
    held = [engine.sync_engine.pool.checkedout() for engine in {gw.engine, gw.reader}]  # type: ignore[attr-defined]
    message_id = await asyncio.wait_for(exchange(pair), timeout=20)  # received, committed, ledgered, receipted
    async with gw.reader.connect() as other:
        query = select(ledger_entries.c.type).where(ledger_entries.c.message_id == message_id)
        assert "message.received" in [r.type for r in await other.execute(query)]
    resume.set()
    status, body = await reading
    assert held == [0] * len(held), held
    assert status == 200 and all(json.loads(line)["type"] for line in body.decode().splitlines())


@pytest.mark.parametrize("how", ["proof-refused", "connection-dropped"])
async def test_a_peer_that_will_not_back_its_checkpoints_is_blocked(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Not cooperating must not hide a rewrite: after MAX_PROOF_FAILURES checks in a row that fail by the peer's
    doing (a proof answered 500, a connection dropped), an alarm; for dropped connections alone, only once the
    failures have lasted TRANSPORT_GRACE. (A checkpoint that does not verify is caught before its receipt is
    recorded: the next test.)"""
    from gateway import witness

    await exchange(pair)  # the first checkpoint is held without a proof

    async def refused(self: witness.Witness, peer: str, size1: int, size2: int) -> list[bytes]:
        if how == "connection-dropped":
            raise aiohttp.ServerDisconnectedError()
        raise witness.WitnessError(f"{peer} answered HTTP 500 to a consistency proof request")

    monkeypatch.setattr(witness.Witness, "_fetch_consistency", refused)
    for _ in range(witness.MAX_PROOF_FAILURES - 1):
        await exchange(pair)
    assert not pair.ar.gw.blocked_peers
    if how == "connection-dropped":  # a busy or restarting peer: not before the failures have lasted a while
        await exchange(pair)
        assert not pair.ar.gw.blocked_peers
        monkeypatch.setattr(witness, "TRANSPORT_GRACE", 0.0)
    await exchange(pair)
    assert pair.ar.gw.blocked_peers == {"au.ag"}
    async with pair.ar.gw.engine.connect() as conn:
        alarms = await WitnessState.open_alarms(conn)
    assert [(a.peer, a.reason) for a in alarms] == [("au.ag", "proof-unavailable")]


@pytest.mark.parametrize("lie", ["checkpoint-unverifiable", "index-beyond-its-checkpoint"])
async def test_a_receipt_whose_checkpoint_does_not_back_it_is_not_recorded(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, lie: str
) -> None:
    """Decision 88: the sender opens a receipt's checkpoint before it records the receipt. au.ag, lying, signs
    receipts whose checkpoint is signed by a key it does not list, or which name an entry beyond their own
    checkpoint. Neither is recorded: the message stays in the outbox, not delivered, with no "sent" or "receipt
    recorded" entry. The first lie counts toward ``proof-unavailable`` (MAX_PROOF_FAILURES in a row); the second is
    signed evidence against itself, an alarm at once (``receipt-unbacked``)."""
    first = await exchange(pair)  # an honest receipt first: its checkpoint is held
    forger = NoteSigner("comity-ledger/au.ag", os.urandom(32))

    def lying(receipt: Receipt, key: Any) -> str:
        if lie == "checkpoint-unverifiable":
            body = receipt.checkpoint.split("\n\n", 1)[0] + "\n"  # origin, size and root: signed by another key
            receipt = receipt.model_copy(update={"checkpoint": sign_note(body, [forger])})
        else:
            receipt = receipt.model_copy(update={"ledger_index": int(receipt.checkpoint.split("\n")[1])})
        return sign_receipt(receipt, key)

    monkeypatch.setattr("gateway.receiving.sign_receipt", lying)
    failures = pair.ar.gw.metrics.delivery_failures.labels(peer="au.ag")
    before = failures._value.get()
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202, body
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while failures._value.get() == before:  # its first attempt
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    expected = "receipt-unbacked" if lie == "index-beyond-its-checkpoint" else "proof-unavailable"
    if expected == "proof-unavailable":  # one failure is not yet an alarm; more lying receipts add up to one
        assert not pair.ar.gw.blocked_peers
        for _ in range(MAX_PROOF_FAILURES - 1):
            assert (await pair.ar.call("POST", "/v1/messages", json=REQUEST))[0] == 202
    while pair.ar.gw.blocked_peers != {"au.ag"}:
        assert loop.time() < deadline, "the lying peer was never blocked"
        await asyncio.sleep(0.05)
    async with pair.ar.gw.engine.connect() as conn:
        alarms = await WitnessState.open_alarms(conn)
    assert [(a.peer, a.reason) for a in alarms] == [("au.ag", expected)]
    state = await rows(pair.ar, select(messages.c.state).where(messages.c.id == body["id"]))
    assert [row.state for row in state] != ["delivered"]
    waiting = await rows(pair.ar, select(outbox.c.message_id))
    assert body["id"] in {row.message_id for row in waiting}
    sent = len(waiting)  # every message sent since the lie began waits, none delivered
    assert sent == (MAX_PROOF_FAILURES if expected == "proof-unavailable" else 1)
    assert await rows(pair.ar, select(messages.c.id).where(messages.c.state == "delivered")) == [(first,)]
    entries = await rows(pair.ar, select(ledger_entries.c.type).where(ledger_entries.c.message_id == body["id"]))
    assert [row.type for row in entries] == ["message.submitted"]


@pytest.mark.parametrize("ahead", [timedelta(days=3_000_000), timedelta(days=31), timedelta(minutes=10)])
async def test_a_receipt_dated_after_our_clock_is_recorded_only_within_the_message_age(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, ahead: timedelta
) -> None:
    """Decision 91: a receipt's time is held to the message's life. A receiver whose clock runs ahead still takes
    the envelope (it refuses only what is dated in its future), so a receipt dated ten minutes ahead is recorded; one
    dated past the message age limit (30 days), or at the end of the calendar (its key valid without end, the
    witness's key window overflowed), is not: the message waits in the outbox, and the witness is not handed it."""
    first = await exchange(pair)

    def fast_clock(receipt: Receipt, key: Any) -> str:
        now = parse_time(receipt.received_at)
        when = "9999-12-31T23:59:59.000000Z" if ahead.days > 3_000 else format_time(now + ahead)
        return sign_receipt(receipt.model_copy(update={"received_at": when}), key)

    monkeypatch.setattr("gateway.receiving.sign_receipt", fast_clock)
    failures = pair.ar.gw.metrics.delivery_failures.labels(peer="au.ag")
    before = failures._value.get()
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202, body
    if ahead < timedelta(days=30):
        await wait_for(pair.ar, body["id"], "delivered")
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while failures._value.get() == before:
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    assert await rows(pair.ar, select(messages.c.id).where(messages.c.state == "delivered")) == [(first,)]
    entries = await rows(pair.ar, select(ledger_entries.c.type).where(ledger_entries.c.message_id == body["id"]))
    assert [row.type for row in entries] == ["message.submitted"]
    assert not pair.ar.gw.blocked_peers


async def test_a_receipt_dated_before_the_submission_is_not_recorded(pair: Pair) -> None:
    """The other bound of decision 91, on a genuine receipt handed to the sender as if its message had been
    submitted more than the skew after the receipt's time (a peer's clock cannot be that far behind honestly)."""
    from gateway.outbox import OutboxSender
    from store.outbox import OutboxItem

    message_id = await exchange(pair)
    async with pair.ar.gw.engine.connect() as conn:
        row = (
            await conn.execute(
                select(messages.c.receipt, messages.c.envelope_sha256).where(messages.c.id == message_id)
            )
        ).one()
    received = parse_time((await _held_receipt(pair, message_id)).received_at)
    assert pair.ar.running is not None
    sender: OutboxSender = pair.ar.running.sender
    peer = pair.ar.gw.peer("au.ag")
    # the bound is the most any receiver may allow (300 s) and a minute for rounding and the commit (decision 157)
    for submitted, refused in ((received + timedelta(seconds=359), False), (received + timedelta(seconds=361), True)):
        item = OutboxItem(message_id, "au.ag", 0, submitted)
        if refused:
            with pytest.raises(DeliveryError, match="out of the message's life"):
                await sender._record_receipt(peer, row.envelope_sha256, item, row.receipt, received)
        else:  # within the skew: recorded, which here finds the message delivered already and changes nothing
            await sender._record_receipt(peer, row.envelope_sha256, item, row.receipt, received)


async def test_a_receipt_a_receiver_signs_within_its_skew_is_one_the_sender_records(pair: Pair) -> None:
    """Decision 157: the receiver compares iat (whole seconds) with its clock in whole seconds, and the sender
    compared the receipt's time with the exact commit of the submission, with the same 300 s: with the sender's
    clock 300.2 s ahead, most envelopes were received and receipted, and their receipts refused by the sender for
    ever (retried, each time the same receipt), the peer holding what our ledger says never arrived. Every
    envelope is now either refused as stale or delivered; none is received there and queued here."""
    from datetime import UTC, datetime

    await pair.ar.stop()
    await pair.ar.start(outbox_initial_backoff=0.1, outbox_max_backoff=0.2)
    pair.ar.gw.clock = lambda: datetime.now(UTC) + timedelta(seconds=300.2)
    ids = []
    for _ in range(6):
        status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
        assert status == 202, body
        ids.append(body["id"])
        await asyncio.sleep(0.17)  # spread over a second: iat rounds into the receiver's window 4 times in 5

    async def settled() -> dict[str, str]:
        async with pair.ar.gw.engine.connect() as conn:
            found = select(messages.c.id, messages.c.state).where(messages.c.id.in_(ids))
            return {row.id: row.state for row in await conn.execute(found)}

    for _ in range(100):
        ours = await settled()
        if all(state in ("delivered", "refused") for state in ours.values()):
            break
        await asyncio.sleep(0.1)
    async with pair.au.gw.engine.connect() as conn:
        theirs = set((await conn.execute(select(messages.c.id).where(messages.c.id.in_(ids)))).scalars())
    assert {i: ours[i] for i in ids} == {i: "delivered" if i in theirs else "refused" for i in ids}
    assert theirs, "none passed the receiver's check: the case this test is about did not happen"


async def test_the_witness_counts_what_it_cannot_parse_or_hold_against_the_peer(pair: Pair) -> None:
    """A proof answer nested past the parser's recursion limit, and a checkpoint signed by the peer's own key for
    a size no database column holds, used to escape as "our own" errors, never counted toward an alarm."""
    from gateway import witness as witness_module

    await exchange(pair)
    assert pair.ar.running is not None
    witness = pair.ar.running.sender.witness

    async def nested(peer: str, path_and_query: str) -> tuple[int, bytes]:
        return 200, b"[" * 100_000

    witness._get = nested  # type: ignore[method-assign]
    with pytest.raises(witness_module.WitnessError, match="malformed consistency proof"):
        await witness._fetch_consistency("au.ag", 1, 2)
    with pytest.raises(witness_module.WitnessError, match="malformed receipt proof"):
        await witness._fetch_receipt_proof("au.ag", 1, 2)
    assert witness_module._problem_code(b"[" * 100_000) is None

    huge = pair.au.gw.sign_checkpoint(f"comity-ledger/au.ag\n{2**63 + 5}\n{base64.b64encode(bytes(32)).decode()}\n")
    with pytest.raises(witness_module.WitnessError, match="beyond any real ledger"):
        await witness.check("au.ag", huge)
    assert issubclass(witness_module.WitnessError, witness_module._UNCOOPERATIVE)  # so counted by _drain


async def test_the_witness_keeps_and_cosigns_only_checkpoints_of_the_peers_own_ledger(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A note signed under au.ag's key name whose body names another log (``comity-ledger/zz.other``), or carries
    an extension line, is not a checkpoint of au.ag's ledger (10.2): ar.mj cosigned the body as received, so its
    cosignature vouched for a log it never checked. Now it is a checkpoint that does not verify, polled or brought
    by a receipt: not kept, not cosigned, the receipt not recorded, and counted toward ``proof-unavailable``."""
    message_id = await exchange(pair)
    receipt = await _held_receipt(pair, message_id)
    real, _ = open_checkpoint(receipt.checkpoint, note_verifiers(pair.ar.gw, "au.ag"))
    async with pair.ar.gw.engine.begin() as conn:  # nothing held, as after peer clear --forget-history: first use
        await conn.execute(delete(peer_checkpoints))
    assert pair.ar.running is not None
    witness = pair.ar.running.sender.witness
    cosigned: list[Checkpoint] = []

    async def cosign(peer: str, checkpoint: Checkpoint) -> None:
        cosigned.append(checkpoint)

    monkeypatch.setattr(witness, "_cosign", cosign)
    notes = [
        pair.au.gw.sign_checkpoint(Checkpoint(origin, real.size, real.root_hash, extensions).to_text())
        for origin, extensions in (("comity-ledger/zz.other", ()), ("comity-ledger/au.ag", ("extra ext line",)))
    ]
    for note in notes:
        with pytest.raises(CheckpointError):
            await witness.check("au.ag", note)
        lying = receipt.model_copy(update={"checkpoint": note})
        with pytest.raises(CheckpointError):  # counted, like a checkpoint that does not verify
            await witness.receipt_checkpoint("au.ag", lying, parse_time(receipt.received_at))
        witness.observe("au.ag", note, lying)  # counted by the drain
        await witness.idle()
    assert await rows(pair.ar, select(peer_checkpoints)) == [] and cosigned == []
    assert witness._failures == {"au.ag": 4} and not pair.ar.gw.blocked_peers
    witness.observe("au.ag", notes[0])  # the fifth in a row
    await witness.idle()
    async with pair.ar.gw.engine.connect() as conn:
        alarms = await WitnessState.open_alarms(conn)
    assert [(a.peer, a.reason) for a in alarms] == [("au.ag", "proof-unavailable")]


async def test_each_peer_is_checked_at_most_once_per_interval_whatever_the_receipt_rate() -> None:
    """Checks that finish before the next receipt arrives must not run once per receipt (they did: the interval
    only applied when a checkpoint arrived during a check), and each check takes the newest checkpoint."""
    from gateway.witness import Witness

    witness = Witness(object(), session_for=None)  # type: ignore[arg-type]
    witness.min_interval = 0.2
    checked: list[tuple[str, int, float]] = []
    loop = asyncio.get_running_loop()

    async def check(peer: str, note: str, receipt: object = None) -> None:
        checked.append((peer, int(note.split("\n")[1]), loop.time()))
        await asyncio.sleep(0.001)  # quicker than the receipts' spacing

    witness.check = check  # type: ignore[method-assign]
    start = loop.time()
    for size in range(1, 61):  # receipts every 10 ms for 0.6 s, from two peers
        witness.observe("au.ag", f"origin\n{size}\nroot\n")
        witness.observe("fr.mj", f"origin\n{size}\nroot\n")
        await asyncio.sleep(0.01)
    await witness.idle()  # the last checkpoints are checked at once, not after the interval

    elapsed = loop.time() - start
    for peer in ("au.ag", "fr.mj"):
        times = [at for name, _, at in checked if name == peer]
        # one every 0.2 s from the first, and the last one at idle() (however slowly this machine ran the loop)
        assert 3 <= len(times) <= elapsed / witness.min_interval + 2, (times, elapsed)
        assert all(b - a >= 0.19 for a, b in itertools.pairwise(times[:-1]))  # the last one: idle()
        sizes = [size for name, size, _ in checked if name == peer]
        assert sizes[0] == 1 and sizes[-1] == 60 and sizes == sorted(sizes)
    assert loop.time() - start < elapsed + witness.min_interval  # idle() did not wait for the interval


async def test_a_checkpoint_observed_as_a_drain_returns_is_still_checked() -> None:
    """A drain that has returned, but whose done callback has not run yet, takes nothing more: a checkpoint observed
    then starts a new one (it used to wait for the next receipt, and a shutdown never checked it)."""
    from gateway.witness import Witness

    witness = Witness(object(), session_for=None)  # type: ignore[arg-type]
    checked: list[str] = []

    async def check(peer: str, note: str, receipt: object = None) -> None:
        checked.append(note)

    async def returned() -> None:
        return None

    witness.check = check  # type: ignore[method-assign]
    finished = asyncio.create_task(returned())
    await finished
    witness._running["au.ag"] = finished  # its callback not yet run
    witness.observe("au.ag", "origin\n7\nroot\n")
    with contextlib.suppress(TimeoutError):  # before the fix, idle() waited on the returned drain forever
        await asyncio.wait_for(witness.idle(), timeout=2)
    assert checked == ["origin\n7\nroot\n"]


async def test_the_witness_endpoints_take_only_what_sections_9_2_and_9_4_allow(pair: Pair) -> None:
    """9.2 serves the latest checkpoint with the cosignatures held, to a peer in good standing only; 9.4 takes
    exactly ``{"size": <integer>, "line": <string>}`` in at most 8 KiB, and refuses anything else before reading
    the line (``invalid-message``, not ``note-invalid``), and a cosignature dated outside the clock skew
    (``stale-message``), storing nothing."""
    await exchange(pair)
    peer = hostile_towards(pair.ar, pair.au)  # ar.mj's real TLS identity
    async with peer.session() as session:
        async with session.get(peer.url + "/federation/v1/checkpoint") as response:
            assert response.status == 200, await response.text()
            note = await response.text()
        opened = open_note(note, [*note_verifiers(pair.au.gw, "au.ag"), *cosignature_verifiers(pair.au.gw, "ar.mj")])
        assert {signature.name for signature in opened.verified} == {"comity-ledger/au.ag", "comity-witness/ar.mj"}

        held = await rows(pair.au, select(cosignatures))
        size = held[0].size
        valid = json.dumps({"size": size, "line": "— comity-witness/ar.mj AAAA"})
        for body in (
            json.dumps({"size": size, "line": "— comity-witness/ar.mj AAAA", "extra": 1}),
            json.dumps({"size": True, "line": "— comity-witness/ar.mj AAAA"}),
            json.dumps({"size": float(size), "line": "— comity-witness/ar.mj AAAA"}),
            valid + " " * 8192,  # a valid object followed by padding: cut at 8 KiB it would still parse
        ):
            async with session.post(peer.url + "/federation/v1/cosignatures", data=body) as response:
                problem = await response.json(content_type=None)
                assert (response.status, problem["code"]) == (400, "invalid-message"), (body[:80], problem)
        async with session.post(peer.url + "/federation/v1/cosignatures", data=valid) as response:
            problem = await response.json(content_type=None)
            assert (response.status, problem["code"]) == (400, "note-invalid"), problem  # the shape was fine
        # a real cosignature by ar.mj, but dated an hour ago: kept back, or made up
        an_hour_ago = int(pair.ar.gw.clock().timestamp()) - 3600
        line = pair.ar.gw.cosigner(pair.ar.gw.clock()).sign(opened.text, an_hour_ago)
        size = int(opened.text.splitlines()[1])
        assert await post_cosignature(session, peer, size, line) == (400, "stale-message")
        assert await rows(pair.au, select(cosignatures)) == held

        pair.au.gw.blocked_peers.add("ar.mj")  # as an open witness alarm about ar.mj does
        try:
            async with session.get(peer.url + "/federation/v1/checkpoint") as response:
                problem = await response.json(content_type=None)
                assert (response.status, problem["code"]) == (403, "peer-blocked"), problem
        finally:
            pair.au.gw.blocked_peers.discard("ar.mj")


async def post_cosignature(session: aiohttp.ClientSession, peer: Any, size: int, line: str) -> tuple[int, Any]:
    """POST a cosignature line to the target's 9.4 endpoint: the status and the problem's code (None on success)."""
    async with session.post(peer.url + "/federation/v1/cosignatures", json={"size": size, "line": line}) as response:
        if response.status == 204:
            return 204, None
        return response.status, (await response.json(content_type=None))["code"]


async def test_a_cosignature_of_a_size_beyond_a_signed_64_bit_integer_is_a_typed_problem(pair: Pair) -> None:
    """9.4: ``size`` is a tree size from 0 to 2^63 - 1 (the database's signed 64-bit column); anything else is
    ``invalid-message`` before any query (decision 93). 2^63 was a 500 (an overflow in the database driver)."""
    line = "— comity-witness/ar.mj AAAA"
    peer = hostile_towards(pair.ar, pair.au)
    async with peer.session() as session:
        for size in (2**63, 2**64, 10**30, -1):
            assert await post_cosignature(session, peer, size, line) == (400, "invalid-message"), size
        assert await post_cosignature(session, peer, 2**63 - 1, line) == (404, "not-found")  # asked, none signed
    assert await rows(pair.au, select(cosignatures)) == []


async def test_integer_query_parameters_are_ascii_decimal_only(pair: Pair) -> None:
    """The federation proofs (9.3, 9.6) and the auditor API take sizes and indexes as ASCII decimal, no leading
    zero, up to 2^63 - 1. Python's int() also reads fullwidth and other Unicode digits, '1_0', ' 1 ' and '+1': each
    such parameter was answered as the number a strict client would not read in it; now it is ``invalid-message``."""
    message_id = await exchange(pair)
    await exchange(pair)
    index = (await _held_receipt(pair, message_id)).ledger_index  # our message's reception on au.ag
    size = index + 1

    def disguised(value: str) -> list[str]:
        """``value`` in forms int() reads (and two it does not), none of them ASCII decimal without a leading zero."""
        fullwidth = "".join(chr(0xFF10 + int(digit)) for digit in value)
        arabic_indic = "".join(chr(0x0660 + int(digit)) for digit in value)
        forms = [fullwidth, arabic_indic, f" {value}", f"{value} ", f"+{value}", f"0{value}", f"{value}.0", ""]
        return [*forms, f"{value[0]}_{value[1:]}"] if len(value) > 1 else forms

    too_large = [str(2**63), "9" * 20]
    peer = hostile_towards(pair.ar, pair.au)
    async with peer.session() as session:
        for path, params, name in (
            ("/federation/v1/consistency", {"from": size, "to": size}, "from"),
            (RECEIPT_PROOF_PATH, {"index": index, "size": size}, "size"),
        ):
            valid = str(params[name])
            for value in (valid, *disguised(valid), *too_large):
                async with session.get(peer.url + path, params={**params, name: value}) as response:
                    answer = response.status, (await response.json(content_type=None)).get("code")
                assert answer == ((200, None) if value == valid else (400, "invalid-message")), (path, value)

    auditor = await asyncio.to_thread(issue_token, pair.au.provisioned.config, "audrey", "auditor")
    headers = {"Authorization": f"Bearer {auditor}"}
    for path, params, name in (
        ("/v1/ledger/proofs/consistency", {"from": size, "to": size}, "from"),
        ("/v1/ledger/proofs/inclusion", {"index": index, "size": size}, "size"),
        ("/v1/ledger/entries", {"start": index, "end": size}, "end"),
        ("/v1/ledger/checkpoints", {"after": index}, "after"),
    ):
        valid = str(params[name])
        for value in (valid, *disguised(valid), *too_large):
            status, body = await pair.au.call("GET", path, params={**params, name: value}, headers=headers)
            if value == valid:
                assert status == 200, (path, body)
            else:
                assert_problem(status, body, code="invalid-message")


async def test_checkpoints_and_cosignatures_count_only_under_a_key_valid_when_signed(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 76: a checkpoint is verified under the peer's signing keys valid around the time of the receipt that
    carried it, a cosignature under those valid around its own cosigned time; a key the directory lists, but not
    for then, does not count."""
    message_id = await exchange(pair)
    witness = pair.ar.running.sender.witness if pair.ar.running else None
    assert witness is not None
    # the receipts below are re-dated to probe the keys: their entry, dated by the real one, is not checked
    monkeypatch.setattr(witness, "_check_receipt", lambda *_: _async(None))
    receipt = await _held_receipt(pair, message_id)
    skew = timedelta(seconds=pair.ar.gw.settings.max_clock_skew_seconds)
    (au_key,) = [key for key in pair.ar.gw.peer("au.ag").keys if key.use == "sig"]
    held = await rows(pair.ar, select(peer_checkpoints))
    # the receipt's checkpoint, as if the receipt had been signed before au.ag's key was valid
    early = format_time(parse_time(au_key.not_before) - skew - timedelta(seconds=5))
    with pytest.raises(NoteError):
        await witness.check("au.ag", receipt.checkpoint, receipt.model_copy(update={"received_at": early}))
    assert await rows(pair.ar, select(peer_checkpoints)) == held
    await witness.check("au.ag", receipt.checkpoint, receipt)  # at its real time it verifies
    # and within the margin around it: a key may take over between a receipt's time and its commit
    inside = format_time(parse_time(au_key.not_before) - skew + timedelta(seconds=5))
    await witness.check("au.ag", receipt.checkpoint, receipt.model_copy(update={"received_at": inside}))

    # a cosignature by ar.mj's real key, dated within twice the skew of au.ag's clock, but before that key was valid
    (ar_key,) = [key for key in pair.au.gw.peer("ar.mj").keys if key.use == "sig"]
    stamp = int((parse_time(ar_key.not_before) - skew).timestamp()) - 5
    assert int(pair.au.gw.clock().timestamp()) - stamp < 2 * skew.total_seconds()  # not stale-message
    peer = hostile_towards(pair.ar, pair.au)
    async with peer.session() as session:
        async with session.get(peer.url + "/federation/v1/checkpoint") as response:
            opened = open_note(await response.text(), note_verifiers(pair.au.gw, "au.ag"))
        size = int(opened.text.splitlines()[1])
        before = await rows(pair.au, select(cosignatures))
        line = pair.ar.gw.cosigner(pair.ar.gw.clock()).sign(opened.text, stamp)
        assert await post_cosignature(session, peer, size, line) == (400, "note-invalid")
        assert await rows(pair.au, select(cosignatures)) == before
        for accepted in (stamp + 10, int(pair.ar.gw.clock().timestamp())):  # just inside the margin; now
            line = pair.ar.gw.cosigner(pair.ar.gw.clock()).sign(opened.text, accepted)
            assert await post_cosignature(session, peer, size, line) == (204, None)


async def test_the_verification_margin_is_at_least_a_minute(pair: Pair) -> None:
    """With a clock skew setting of 0 a checkpoint signed when its group commits, after its receipt's time, by a
    key that took over in between, still verifies (the margin's floor); a minute and more before, it does not."""
    message_id = await exchange(pair)
    receipt = await _held_receipt(pair, message_id)
    await pair.ar.stop()
    await pair.ar.start(max_clock_skew_seconds=0)
    witness = pair.ar.running.sender.witness if pair.ar.running else None
    assert witness is not None
    (au_key,) = [key for key in pair.ar.gw.peer("au.ag").keys if key.use == "sig"]
    starts = parse_time(au_key.not_before)
    inside = format_time(starts - timedelta(seconds=55))
    await witness.check("au.ag", receipt.checkpoint, receipt.model_copy(update={"received_at": inside}))
    outside = format_time(starts - timedelta(seconds=65))
    with pytest.raises(NoteError):
        await witness.check("au.ag", receipt.checkpoint, receipt.model_copy(update={"received_at": outside}))


def test_of_two_queued_checkpoints_the_larger_is_checked_and_of_equal_ones_the_one_with_a_receipt() -> None:
    from gateway.witness import _newer

    receipt = Receipt.model_construct()
    small, large = "origin\n5\nroot\n", "origin\n7\nroot\n"
    assert _newer((small, receipt), (large, None)) == (large, None)
    assert _newer((large, None), (small, receipt)) == (large, None)
    assert _newer((large, receipt), (large, None)) == (large, receipt)  # a poll does not displace a receipt
    assert _newer((large, None), (large, receipt)) == (large, receipt)
    assert _newer(None, (small, None)) == (small, None)


async def test_a_gateway_that_only_receives_witnesses_its_peer_too(pair: Pair) -> None:
    """Decision 78: au.ag only receives from ar.mj, so no receipt ever brings it ar.mj's checkpoint; it fetches one
    every witness_poll_seconds, checks it like any other (consistency, cosignature), and catches a rewrite. A peer it
    cannot reach is only logged. A peer it never exchanged with is not polled."""
    assert pair.au.running is not None
    await pair.au.running.sender.witness.poll()
    await pair.au.running.sender.witness.idle()
    served = pair.ar.gw.metrics.requests.labels(listener="federation", route="/federation/v1/checkpoint", status="200")
    assert served._value.get() == 0  # nothing exchanged yet: nothing asked
    await exchange(pair)
    await pair.au.stop()
    await pair.au.start(witness_poll_seconds=1)
    for _ in range(100):  # the poll runs by itself
        held = await rows(pair.au, select(peer_checkpoints).where(peer_checkpoints.c.peer == "ar.mj"))
        if held:
            break
        await asyncio.sleep(0.1)
    assert held, "au.ag never fetched ar.mj's checkpoint"
    witness = pair.au.running.sender.witness if pair.au.running else None
    assert witness is not None
    await witness.idle()
    lines = await rows(pair.ar, select(cosignatures).where(cosignatures.c.witness == "comity-witness/au.ag"))
    assert lines, "au.ag did not cosign what it checked"

    # ar.mj goes away: polling is not delivering, nothing counts against it (a warning: it delivered lately)
    await pair.ar.stop()
    witness._last.clear()
    pair.au.gw.peers_heard["ar.mj"] = pair.au.gw.clock()
    await witness.poll()
    await witness.idle()
    assert not witness._failures and not pair.au.gw.blocked_peers
    assert pair.au.gw.metrics.polls_unanswered.labels(peer="ar.mj")._value.get() == 1

    # ar.mj's history changes under what au.ag holds: caught at the next poll
    await pair.ar.start()
    async with pair.au.gw.engine.begin() as conn:
        await conn.execute(update(peer_checkpoints).values(root=os.urandom(32)))
    await exchange(pair)
    witness._last.clear()
    await witness.poll()
    await witness.idle()
    async with pair.au.gw.engine.connect() as conn:
        alarms = await WitnessState.open_alarms(conn)
    # the same size signed with another root, or a larger one no proof reconciles with it
    assert [a.peer for a in alarms] == ["ar.mj"] and alarms[0].reason in {"ledger-fork", "ledger-rewritten"}
    assert "ar.mj" in pair.au.gw.blocked_peers


async def test_a_peer_that_answers_polls_with_an_old_checkpoint_is_caught(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 78: once a peer delivered to us (and so ledgered our receipt, and signed a larger checkpoint within a
    second), a poll answered with a checkpoint no larger than the one we held before is counted; enough of them, for
    long enough (STALE_PATIENCE), raise an alarm. After `peer clear --forget-history` nothing held is expected."""
    from gateway import witness as witness_module

    monkeypatch.setattr(witness_module, "STALE_GRACE", 0.0)
    assert pair.au.running is not None
    witness = pair.au.running.sender.witness
    await exchange(pair)
    await witness.poll()
    await witness.idle()
    (old,) = await rows(pair.au, select(peer_checkpoints.c.note).where(peer_checkpoints.c.peer == "ar.mj"))

    # an honest peer: after a delivery, its next checkpoint is larger
    await exchange(pair)
    await asyncio.sleep(2.5)  # its checkpointer signs at least every second while the ledger grows
    witness._last.clear()
    await witness.poll()
    await witness.idle()
    assert not witness._failures and not witness._stale_count
    assert len(await rows(pair.au, select(peer_checkpoints).where(peer_checkpoints.c.peer == "ar.mj"))) == 2

    # a peer that keeps serving the old one
    real_get = witness._get

    async def stale_get(peer: str, path: str) -> tuple[int, bytes]:
        return (200, old.note.encode()) if path == witness_module.CHECKPOINT_PATH else await real_get(peer, path)

    monkeypatch.setattr(witness, "_get", stale_get)
    await exchange(pair)
    await asyncio.sleep(0.1)
    for answers in range(1, witness_module.MAX_PROOF_FAILURES + 1):
        witness._last.clear()
        await witness.poll()
        assert witness._stale_count == {"ar.mj": answers}
    assert not pair.au.gw.blocked_peers  # not before STALE_PATIENCE: an honest peer may fail to write for a while
    monkeypatch.setattr(witness_module, "STALE_PATIENCE", 0.0)
    witness._last.clear()
    await witness.poll()
    async with pair.au.gw.engine.connect() as conn:
        alarms = await WitnessState.open_alarms(conn)
    assert [(a.peer, a.reason) for a in alarms] == [("ar.mj", "proof-unavailable")]

    # the operator accepts its changed history: nothing held, so nothing to outgrow
    config = str(pair.au.provisioned.config)
    clear = ("peer", "clear", "ar.mj", "--operator", "oscar", "--forget-history", "--config", config)
    await asyncio.to_thread(comity, *clear)
    for _ in range(50):  # the gateway re-reads open alarms from the database
        if "ar.mj" not in pair.au.gw.blocked_peers:
            break
        await asyncio.sleep(0.1)
    witness._last.clear()
    await witness.poll()
    await witness.idle()
    assert not witness._stale_count and not witness._failures and "ar.mj" not in pair.au.gw.blocked_peers
    assert await rows(pair.au, select(peer_checkpoints.c.note).where(peer_checkpoints.c.peer == "ar.mj")) == [old]


@pytest.fixture
async def dev_pair(databases: DatabaseFactory, tmp_path: Path) -> AsyncIterator[Pair]:
    async for sides in running_pair(databases, tmp_path, plain_http=True):
        yield sides


async def test_cross_witnessing_works_between_gateways_in_development_mode(dev_pair: Pair) -> None:
    """Over plain HTTP there is no certificate to name the caller: the witness sends Comity-Dev-Peer like the
    outbox (it did not, so every proof request and cosignature was refused unknown-peer in development mode)."""
    assert dev_pair.ar.gw.settings.dev_plain_http
    await exchange(dev_pair)
    await exchange(dev_pair)  # the second checkpoint needs a consistency proof from au.ag
    held = await rows(dev_pair.ar, select(peer_checkpoints).order_by(peer_checkpoints.c.size))
    assert len(held) == 2 and held[0].size < held[1].size
    lines = await rows(dev_pair.au, select(cosignatures))
    assert {row.witness for row in lines} == {"comity-witness/ar.mj"} and len(lines) == 2
    assert not dev_pair.ar.gw.blocked_peers


def federation_requests(side: Side) -> float:
    """Every request ``side``'s federation listener answered, whatever its route and status."""
    return sum(
        sample.value
        for metric in side.gw.metrics.requests.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["listener"] == "federation"
    )


async def test_the_witness_does_not_call_a_plain_http_peer_without_the_development_flag(dev_pair: Pair) -> None:
    """Decision 116: only the outbox refused a plain-http endpoint when dev_plain_http is off; the witness, through
    the same session factory, polled checkpoints, asked for proofs and posted cosignatures over plain HTTP (and over
    TLS without a certificate check to an endpoint spelled 'HTTPS://', which the directory now refuses). The session
    factory refuses now, and the witness turns that into a WitnessError before a byte leaves."""
    await exchange(dev_pair)
    (held,) = await rows(dev_pair.ar, select(peer_checkpoints.c.note))
    await dev_pair.ar.stop()
    await dev_pair.ar.start(dev_plain_http=False)  # the same directory, listing au.ag at http://127.0.0.1
    assert dev_pair.ar.running is not None
    sender, witness = dev_pair.ar.running.sender, dev_pair.ar.running.sender.witness
    peer = dev_pair.ar.gw.peer("au.ag")
    assert peer.endpoint.startswith("http://")
    before = federation_requests(dev_pair.au)

    await witness.poll()
    await witness.idle()
    assert dev_pair.ar.gw.metrics.polls_unanswered.labels(peer="au.ag")._value.get() == 1
    assert federation_requests(dev_pair.au) == before  # the poll did not reach au.ag
    checkpoint, _ = open_checkpoint(held.note, note_verifiers(dev_pair.ar.gw, "au.ag"))
    refused = "au.ag has a plain-HTTP endpoint and the development flag is off"
    with pytest.raises(WitnessError, match=refused):
        await witness._cosign("au.ag", checkpoint)
    with pytest.raises(WitnessError, match=refused):
        await witness._get("au.ag", f"{RECEIPT_PROOF_PATH}?index=0&size={checkpoint.size}")
    with pytest.raises(DeliveryError, match=refused):
        sender._session(peer)
    assert federation_requests(dev_pair.au) == before  # nor did any of these
    assert not dev_pair.ar.gw.blocked_peers


async def _held_receipt(pair: Pair, message_id: str) -> Receipt:
    async with pair.ar.gw.engine.connect() as conn:
        token = (await conn.execute(select(messages.c.receipt).where(messages.c.id == message_id))).scalar_one()
    return verify_receipt(token, pair.ar.gw.peer("au.ag").all_signing_keys())


async def test_the_sender_checks_that_a_receipt_names_its_messages_reception(pair: Pair) -> None:
    """9.6: the witness fetches the entry a receipt names and its inclusion proof in the receipt's checkpoint; a
    signed receipt whose index is another message's reception, an entry the peer will not show (not ours), or beyond
    its checkpoint, is an alarm (receipt-unbacked)."""
    first, second = await exchange(pair), await exchange(pair)
    served = pair.au.gw.metrics.requests.labels(listener="federation", route=RECEIPT_PROOF_PATH, status="200")
    assert served._value.get() >= 1  # the honest receipts were checked, and passed
    assert not pair.ar.gw.blocked_peers

    witness = pair.ar.running.sender.witness if pair.ar.running else None
    assert witness is not None
    receipt = await _held_receipt(pair, second)
    elsewhere = (await _held_receipt(pair, first)).ledger_index  # another message's reception, from us too
    beyond = int(receipt.checkpoint.split("\n")[1])
    for index in (elsewhere, 0, beyond):  # entry 0 is au.ag's own (its directory): refused not-a-reception
        await witness.check("au.ag", receipt.checkpoint, receipt.model_copy(update={"ledger_index": index}))
        async with pair.ar.gw.engine.connect() as conn:
            alarms = await WitnessState.open_alarms(conn)
        assert [(a.peer, a.reason) for a in alarms] == [("au.ag", "receipt-unbacked")]
        config = str(pair.ar.provisioned.config)
        await asyncio.to_thread(comity, "peer", "clear", "au.ag", "--operator", "oscar", "--config", config)
        async with pair.ar.gw.engine.connect() as conn:
            assert not await WitnessState.open_alarms(conn)


@pytest.mark.parametrize("dodge", ["once", "always"])
async def test_a_receipt_whose_check_failed_is_checked_again_with_the_next_checkpoint(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, dodge: str
) -> None:
    """A peer that drops the connection when asked for one chosen receipt's entry, and answers everything else, no
    longer leaves that receipt unchecked: it is asked for again with each later checkpoint, and the peer is not
    forgiven its failed checks until it shows it. Before, the failed check dropped the receipt, and the next good
    check wiped the count, so no alarm ever came."""
    from gateway import witness

    await exchange(pair)  # the first checkpoint is held
    sender = pair.ar.running.sender.witness if pair.ar.running else None
    assert sender is not None
    real = witness.Witness._fetch_receipt_proof
    asked: list[int] = []
    target: list[int] = []

    async def fetch(self: witness.Witness, peer: str, index: int, size: int) -> Any:
        asked.append(index)
        target[:] = target or [index]  # the first receipt asked for once armed
        if index == target[0] and (dodge == "always" or asked.count(index) == 1):
            raise aiohttp.ServerDisconnectedError()
        return await real(self, peer, index, size)

    monkeypatch.setattr(witness.Witness, "_fetch_receipt_proof", fetch)
    monkeypatch.setattr(witness, "TRANSPORT_GRACE", 0.0)
    await exchange(pair)
    assert len(await _owed(pair.ar)) == 1 and sender._failures["au.ag"] == 1
    for _ in range(witness.MAX_PROOF_FAILURES - 1):
        await exchange(pair)
    async with pair.ar.gw.engine.connect() as conn:
        alarms = [(a.peer, a.reason) for a in await WitnessState.open_alarms(conn)]
    if dodge == "once":  # asked again with the next checkpoint, shown, and the count wiped
        assert asked.count(target[0]) == 2
        assert not await _owed(pair.ar) and not sender._failures and not alarms
    else:
        assert asked.count(target[0]) == witness.MAX_PROOF_FAILURES
        assert alarms == [("au.ag", "proof-unavailable")] and pair.ar.gw.blocked_peers == {"au.ag"}


@pytest.mark.parametrize("dodge", ["once", "always"])
async def test_an_owed_receipt_beyond_what_the_peer_serves_is_checked_against_its_own_checkpoint(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, dodge: str
) -> None:
    """The peer drops the consistency request of the check its receipt carries (so nothing newer is stored), then
    answers every poll with the checkpoint we hold, smaller than the one it signed in that receipt: the owed
    receipt was skipped at every round, counted nowhere, never asked for again. It is now checked against its own
    checkpoint again: shown once the peer answers, or counted until the alarm."""
    from gateway import witness

    await exchange(pair)  # a first checkpoint of au.ag is held
    sender = pair.ar.running.sender.witness if pair.ar.running else None
    assert sender is not None
    async with pair.ar.gw.engine.connect() as conn:
        held = await WitnessState.latest(conn, "au.ag")
    assert held is not None
    real_get = witness.Witness._get
    dropped: list[str] = []

    async def get(self: witness.Witness, peer: str, path: str) -> Any:
        if path == witness.CHECKPOINT_PATH:
            return 200, held.note.encode()  # never a newer one than we hold
        if path.startswith(witness.CONSISTENCY_PATH) and (dodge == "always" or not dropped):
            dropped.append(path)
            raise aiohttp.ServerDisconnectedError()
        return await real_get(self, peer, path)

    monkeypatch.setattr(witness.Witness, "_get", get)
    monkeypatch.setattr(witness, "TRANSPORT_GRACE", 0.0)
    await exchange(pair)
    (receipt,) = await _owed(pair.ar)
    assert receipt.ledger_index >= held.size and sender._failures["au.ag"] == 1
    for _ in range(witness.MAX_PROOF_FAILURES):  # polls, each answered with what we hold
        sender.observe("au.ag", held.note)
        await sender.idle()
    async with pair.ar.gw.engine.connect() as conn:
        alarms = [(a.peer, a.reason) for a in await WitnessState.open_alarms(conn)]
    if dodge == "once":
        assert not await _owed(pair.ar) and not sender._failures and not alarms
    else:
        assert alarms == [("au.ag", "proof-unavailable")]


async def _owed(side: Side) -> list[Receipt]:
    """The receipts of au.ag that ``side``'s witness keeps to check again."""
    async with side.gw.engine.connect() as conn:
        return [Receipt.parse(item) for item in await WitnessState.owed_receipts(conn, "au.ag")]


async def test_a_receipt_owed_is_checked_again_after_a_restart_and_forgotten_with_the_history(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receipts a peer owes are kept in the database (decision 176): a restart of our gateway between the failed
    check and the next checkpoint no longer forgets them. Forgetting the peer's history forgets them too."""
    from gateway import witness

    await exchange(pair)
    real = witness.Witness._fetch_receipt_proof
    asked: list[int] = []

    async def fetch(self: witness.Witness, peer: str, index: int, size: int) -> Any:
        asked.append(index)
        if len(asked) == 1:
            raise aiohttp.ServerDisconnectedError()
        return await real(self, peer, index, size)

    monkeypatch.setattr(witness.Witness, "_fetch_receipt_proof", fetch)
    await exchange(pair)
    (owed,) = await _owed(pair.ar)
    assert owed.ledger_index == asked[0]
    await pair.ar.stop()
    await pair.ar.start()
    await exchange(pair)  # the next checkpoint: the owed receipt's entry is asked for again, shown, and settled
    assert asked.count(owed.ledger_index) == 2
    assert await _owed(pair.ar) == []

    # owed again, then the operator accepts a changed history: what it owed against the old one goes with it
    asked.clear()
    await exchange(pair)
    assert len(await _owed(pair.ar)) == 1
    async with pair.ar.gw.transaction() as conn:
        await WitnessState.raise_alarm(conn, "au.ag", "fork", "a test", pair.ar.gw.clock())
    config = str(pair.ar.provisioned.config)
    await asyncio.to_thread(
        comity, "peer", "clear", "au.ag", "--operator", "oscar", "--forget-history", "--config", config
    )
    assert await _owed(pair.ar) == []


async def _receipt_and_its_entry(pair: Pair) -> tuple[Any, Receipt, bytes]:
    """After an exchange: the sender's witness, the receipt it holds, and the entry the peer serves for it (9.6)."""
    message = await exchange(pair)
    witness = pair.ar.running.sender.witness if pair.ar.running else None
    assert witness is not None
    receipt = await _held_receipt(pair, message)
    fetched = await witness._fetch_receipt_proof("au.ag", receipt.ledger_index, int(receipt.checkpoint.split("\n")[1]))
    assert isinstance(fetched, tuple)
    return witness, receipt, fetched[0]


async def test_the_entry_backing_a_receipt_is_read_as_the_auditor_reads_it(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """9.6: the entry a receipt names must be a valid ledger entry by the auditor's definition (strict JSON, RFC 8785
    canonical bytes): plain json.loads took a duplicate member's last value, so an entry the peer's auditors refuse,
    or read as another event, backed the receipt."""
    witness, receipt, entry = await _receipt_and_its_entry(pair)
    assert b'"type":"message.received"' in entry
    variants = {
        entry: None,  # the honest entry, alone in a tree of its own: backs the receipt
        entry.replace(b'"type":"message.received"', b'"type":"message.refused","type":"message.received"'): "duplicate",
        entry.replace(b",", b", ", 1): "canonical",
    }
    for served, refused in variants.items():
        monkeypatch.setattr(witness, "_fetch_receipt_proof", lambda *_, served=served: _async((served, [])))
        checkpoint = Checkpoint("comity-ledger/au.ag", 1, merkle.leaf_hash(served))
        await witness._check_receipt("au.ag", checkpoint, receipt.model_copy(update={"ledger_index": 0}))
        async with pair.ar.gw.engine.connect() as conn:
            alarms = await WitnessState.open_alarms(conn)
        if refused is None:
            assert not alarms
            continue
        assert [(a.peer, a.reason) for a in alarms] == [("au.ag", "receipt-unbacked")]
        assert "which is not a valid ledger entry" in alarms[0].detail and refused in alarms[0].detail
        config = str(pair.ar.provisioned.config)
        await asyncio.to_thread(comity, "peer", "clear", "au.ag", "--operator", "oscar", "--config", config)


@pytest.mark.parametrize(
    "change",
    [
        {"time": "2020-01-01T00:00:00.000000Z"},  # ledgered at another time than the receipt's signed received_at
        {"marking": {"caveats": [], "level": "UNCLASSIFIED"}},  # under another marking than the one sent
        {"kind": "consultation"},  # as another kind of message
        {"in_reply_to": "0f8fad5b-d9cb-469f-a165-70867728950e"},  # as a reply to something else
        {"actor": "system"},  # as if nobody had sent it
    ],
)
async def test_a_receipt_backed_by_an_entry_that_records_another_reception_is_an_alarm(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any]
) -> None:
    """9.6: the entry behind a receipt must record our message's reception as we sent it, at the time the receipt
    signs. Before, only its type, id, digest and parties were compared, so a peer could sign "received at T" and
    ledger another time, or a STRICTLY CONFIDENTIAL request as UNCLASSIFIED or as a consultation, unseen."""
    witness, receipt, entry = await _receipt_and_its_entry(pair)
    honest = LedgerEvent.parse(json.loads(entry))
    assert honest.time == receipt.received_at  # an honest receiver ledgers the time it signs
    for served, alarmed in ((entry, False), (LedgerEvent.parse({**honest.to_json(), **change}).to_bytes(), True)):
        monkeypatch.setattr(witness, "_fetch_receipt_proof", lambda *_, served=served: _async((served, [])))
        checkpoint = Checkpoint("comity-ledger/au.ag", 1, merkle.leaf_hash(served))
        await witness._check_receipt("au.ag", checkpoint, receipt.model_copy(update={"ledger_index": 0}))
        async with pair.ar.gw.engine.connect() as conn:
            alarms = await WitnessState.open_alarms(conn)
        assert [(a.peer, a.reason) for a in alarms] == ([("au.ag", "receipt-unbacked")] if alarmed else [])


async def _async(value: Any) -> Any:
    return value


async def test_a_peer_without_the_receipt_proof_is_not_blocked(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway of an earlier version answers 9.6 like any unknown path (404 not-found): logged, not counted, and
    nothing checked; only a refusal that names the entry (not-a-reception) or a wrong entry is an alarm."""
    from gateway import witness

    monkeypatch.setattr(witness, "RECEIPT_PROOF_PATH", "/federation/v1/not-served-here")
    for _ in range(witness.MAX_PROOF_FAILURES + 1):
        await exchange(pair)
    assert not pair.ar.gw.blocked_peers
    assert pair.ar.running is not None and not pair.ar.running.sender.witness._failures


async def test_a_peer_that_served_receipt_proofs_cannot_later_pretend_not_to(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 77: once a peer served a receipt proof, its not-found to a later one counts as a check it failed
    (toward proof-unavailable), as hiding a receipt its ledger does not back would otherwise be free; an operator who
    accepts that it no longer serves them (a downgrade) clears with --forget-receipt-proofs. Like dropped
    connections, it raises the alarm only once the failures have lasted TRANSPORT_GRACE (a rolling upgrade)."""
    from gateway import witness

    await exchange(pair)  # served, and remembered
    async with pair.ar.gw.engine.connect() as conn:
        assert await WitnessState.served_receipt_proofs(conn, "au.ag")
        assert not await WitnessState.served_receipt_proofs(conn, "zz.other")
    monkeypatch.setattr(witness, "RECEIPT_PROOF_PATH", "/federation/v1/not-served-here")
    for _ in range(witness.MAX_PROOF_FAILURES):  # a rolling upgrade, a roll-back: not before it has lasted a while
        await exchange(pair)
    assert not pair.ar.gw.blocked_peers
    monkeypatch.setattr(witness, "TRANSPORT_GRACE", 0.0)
    await exchange(pair)
    async with pair.ar.gw.engine.connect() as conn:
        alarms = await WitnessState.open_alarms(conn)
    assert [(a.peer, a.reason) for a in alarms] == [("au.ag", "proof-unavailable")]

    config = str(pair.ar.provisioned.config)
    clear = ("peer", "clear", "au.ag", "--operator", "oscar", "--forget-receipt-proofs", "--config", config)
    held = await rows(pair.ar, select(peer_checkpoints))
    await asyncio.to_thread(comity, *clear)
    async with pair.ar.gw.engine.connect() as conn:
        assert not await WitnessState.served_receipt_proofs(conn, "au.ag")
    assert await rows(pair.ar, select(peer_checkpoints)) == held  # the history stays held
    for _ in range(50):  # the gateway re-reads open alarms from the database
        if not pair.ar.gw.blocked_peers:
            break
        await asyncio.sleep(0.1)
    for _ in range(witness.MAX_PROOF_FAILURES + 1):  # now like a gateway that never served them
        await exchange(pair)
    assert not pair.ar.gw.blocked_peers


async def test_the_receipt_proof_endpoint_shows_a_peer_only_its_own_receptions(pair: Pair) -> None:
    message_id = await exchange(pair)
    # a refusal of ar.mj's is ledgered with from = ar.mj, but it is no reception
    peer = hostile_towards(pair.ar, pair.au)
    assert (await peer.post(b"not an envelope")).status == 400
    async with pair.au.gw.engine.connect() as conn:
        refused_at = (
            await conn.execute(select(ledger_entries.c.idx).where(ledger_entries.c.type == "message.refused"))
        ).scalar_one()
    await exchange(pair)  # a checkpoint that covers the refusal
    receipt = await _held_receipt(pair, message_id)
    size = int((await _held_receipt(pair, await exchange(pair))).checkpoint.split("\n")[1])
    async with peer.session() as session:
        url = f"{peer.url}{RECEIPT_PROOF_PATH}"
        async with session.get(url, params={"index": receipt.ledger_index, "size": size}) as response:
            assert response.status == 200
            body = await response.json()
        event = json.loads(base64.b64decode(body["entry"]))
        assert (event["type"], event["message_id"], event["from"]) == ("message.received", message_id, "ar.mj")
        # entry 0 is au.ag's own business (its directory), a refusal is no reception, and an index outside the
        # tree is no entry at all
        for params, status, code in (
            ({"index": 0, "size": size}, 404, "not-a-reception"),
            ({"index": refused_at, "size": size}, 404, "not-a-reception"),
            ({"index": size, "size": size}, 400, "invalid-message"),
            ({"index": 0, "size": 10**9}, 400, "invalid-message"),
        ):
            async with session.get(url, params=params) as response:
                problem = await response.json(content_type=None)
                assert (response.status, problem["code"]) == (status, code), (params, problem)


def _tree(leaves: list[bytes]) -> dict[tuple[int, int], bytes]:
    nodes: dict[tuple[int, int], bytes] = {}
    for size, leaf in enumerate(leaves):
        nodes.update(merkle.nodes_created_by_append(size, leaf, nodes))
    return nodes


async def test_two_replicas_checking_two_forks_at_once_keep_one_and_raise_the_alarm(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas of ar.mj (one database) check, at the same moment, two forks au.ag signed that each extend the
    checkpoint they hold: each fork is consistent with that one, not with the other. Both proofs are fetched before
    either replica stores: the second to store must find the first's checkpoint and check against it, not keep and
    cosign a second fork (protocol.md 14.2.19, decision 99)."""
    from gateway.witness import Witness

    await exchange(pair)
    assert pair.ar.running is not None
    first = pair.ar.running.sender.witness
    second = Witness(pair.ar.gw, first._session_for)  # another replica: own memory, same database
    (held,) = await rows(pair.ar, select(peer_checkpoints).where(peer_checkpoints.c.peer == "au.ag"))
    entries = await rows(pair.au, select(ledger_entries.c.entry).order_by(ledger_entries.c.idx))
    leaves = [merkle.leaf_hash(bytes(r.entry)) for r in entries]
    leaves = leaves[: held.size]  # what ar.mj holds
    forks = {}
    for name, extra in (("a", 2), ("b", 3)):
        fork = leaves + [merkle.leaf_hash(f"{name}{i}".encode()) for i in range(extra)]
        nodes = _tree(fork)
        root = merkle.root_hash(len(fork), nodes)
        text = Checkpoint(origin="comity-ledger/au.ag", size=len(fork), root_hash=root).to_text()
        forks[name] = (pair.au.gw.sign_checkpoint(text), len(fork), nodes)
    assert merkle.root_hash(held.size, forks["a"][2]) == bytes(held.root)

    calls: list[int] = []
    both = asyncio.Event()
    by_size = {size: nodes for _, size, nodes in forks.values()}

    async def consistency(peer: str, size1: int, size2: int) -> list[bytes]:
        """au.ag answers from whichever fork the larger checkpoint belongs to."""
        calls.append(size2)
        if len(calls) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), timeout=5)  # both replicas hold a proof before either stores
        return merkle.consistency_proof(size1, size2, by_size[size2])

    cosigned: list[int] = []

    async def cosign(peer: str, checkpoint: Checkpoint) -> None:
        cosigned.append(checkpoint.size)

    for replica in (first, second):
        monkeypatch.setattr(replica, "_fetch_consistency", consistency)
        monkeypatch.setattr(replica, "_cosign", cosign)
    await asyncio.gather(first.check("au.ag", forks["a"][0]), second.check("au.ag", forks["b"][0]))

    kept = await rows(
        pair.ar,
        select(peer_checkpoints.c.size).where(peer_checkpoints.c.peer == "au.ag").order_by(peer_checkpoints.c.size),
    )
    assert len(kept) == 2 and kept[0].size == held.size  # the one held, and one fork
    assert cosigned == [kept[1].size] and len(calls) == 3  # the second to store checked again, against the first
    async with pair.ar.gw.engine.connect() as conn:
        alarms = await WitnessState.open_alarms(conn)
    assert [(a.peer, a.reason) for a in alarms] == [("au.ag", "ledger-rewritten")]
    assert "au.ag" in pair.ar.gw.blocked_peers


async def test_a_fork_checked_while_other_replicas_store_newer_checkpoints_still_meets_the_last(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each attempt to keep the checkpoint found a newer one that another replica stored meanwhile; after the last
    attempt the checkpoint was never compared with the one stored last, so a fork that agreed with every earlier
    one escaped the alarm (decision 145). The peer paces our replicas with the speed of its proofs."""
    await exchange(pair)
    assert pair.ar.running is not None
    witness = pair.ar.running.sender.witness
    (held,) = await rows(pair.ar, select(peer_checkpoints).where(peer_checkpoints.c.peer == "au.ag"))
    entries = await rows(pair.au, select(ledger_entries.c.entry).order_by(ledger_entries.c.idx))
    base = [merkle.leaf_hash(bytes(r.entry)) for r in entries][: held.size]

    def signed(leaves: list[bytes]) -> tuple[str, int, bytes, dict[Any, bytes]]:
        nodes = _tree(leaves)
        root = merkle.root_hash(len(leaves), nodes)
        text = Checkpoint(origin="comity-ledger/au.ag", size=len(leaves), root_hash=root).to_text()
        return pair.au.gw.sign_checkpoint(text), len(leaves), root, nodes

    honest_leaves = [merkle.leaf_hash(f"h{i}".encode()) for i in range(STORE_ATTEMPTS)]
    honest = [signed(base + honest_leaves[: k + 1]) for k in range(STORE_ATTEMPTS)]
    # the fork shares all but the last honest entry, then diverges; larger than every honest checkpoint
    fork = signed(base + honest_leaves[: STORE_ATTEMPTS - 1] + [merkle.leaf_hash(b"f1"), merkle.leaf_hash(b"f2")])
    stored = iter(honest)

    async def consistency(peer: str, size1: int, size2: int) -> list[bytes]:
        shown = next(stored, None)  # meanwhile another replica of ours stores the next honest checkpoint
        if shown is not None:
            note, size, root, _ = shown
            async with pair.ar.gw.transaction() as conn:
                await WitnessState.lock(conn, "au.ag")
                await WitnessState.remember(conn, PeerCheckpoint("au.ag", size, root, note), pair.ar.gw.clock())
        return merkle.consistency_proof(size1, size2, fork[3])

    async def cosign(peer: str, checkpoint: Checkpoint) -> None:
        return None

    monkeypatch.setattr(witness, "_fetch_consistency", consistency)
    monkeypatch.setattr(witness, "_cosign", cosign)
    await witness.check("au.ag", fork[0])
    async with pair.ar.gw.engine.connect() as conn:
        alarms = await WitnessState.open_alarms(conn)
    assert [(a.peer, a.reason) for a in alarms] == [("au.ag", "ledger-rewritten")]


async def test_a_proof_trickled_byte_by_byte_fails_the_check_within_the_poll_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session's read timeout restarts with every byte: a peer answering a consistency proof a byte at a time
    held the witness's check, and every later one of that peer, open with nothing counted (decision 145)."""
    from types import SimpleNamespace

    from aiohttp import web

    from gateway import witness as witness_module
    from gateway.outbox import OutboxSender
    from gateway.witness import Witness

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"proof": [')
        while True:
            await asyncio.sleep(0.1)
            await response.write(b" ")

    app = web.Application()
    app.router.add_get("/federation/v1/consistency", trickle)
    runner, port = await serve_locally(app)
    entry = SimpleNamespace(id="au.ag", endpoint=f"http://127.0.0.1:{port}", tls_pins=("x",))
    settings = SimpleNamespace(dev_plain_http=True, outbox_connections_per_peer=8)
    gw = SimpleNamespace(settings=settings, authority_id="ar.mj", directory=SimpleNamespace(authority=lambda _: entry))
    sender: Any = SimpleNamespace(gw=gw, _sessions={})  # the outbox's own session factory and its timeouts
    witness = Witness(gw, lambda peer: OutboxSender._session(sender, peer))  # type: ignore[arg-type]
    monkeypatch.setattr(witness_module, "POLL_TIMEOUT", 0.5)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(witness._fetch_consistency("au.ag", 1, 2), 10)
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        for session in sender._sessions.values():
            await session.close()
        await runner.cleanup()


async def test_a_peer_whose_store_fails_for_a_few_seconds_is_not_blocked(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An honest peer whose database fails answers proof requests 503 store-unavailable (9.1: not the request's
    fault). Counted without the patience of a dropped connection, five receipts in a row raised proof-unavailable
    and blocked it both ways; now it waits TRANSPORT_GRACE like a dropped connection (decision 145)."""
    from store.errors import StoreUnavailable
    from store.ledger import LedgerReader

    await exchange(pair)  # ar.mj holds au.ag's first checkpoint

    async def outage(*_: Any, **__: Any) -> Any:
        raise StoreUnavailable("no connection in time")

    monkeypatch.setattr(LedgerReader, "consistency", staticmethod(outage))
    for _ in range(MAX_PROOF_FAILURES + 1):
        await exchange(pair)  # delivered and receipted meanwhile: au.ag's writes work
    assert pair.ar.running is not None
    witness = pair.ar.running.sender.witness
    for _ in range(200):  # the checks run behind the receipts
        if witness._failures.get("au.ag", 0) >= MAX_PROOF_FAILURES:
            break
        await asyncio.sleep(0.05)
    assert witness._failures.get("au.ag", 0) >= MAX_PROOF_FAILURES  # counted, each one
    async with pair.ar.gw.engine.connect() as conn:
        assert await WitnessState.open_alarms(conn) == []
    assert "au.ag" not in pair.ar.gw.blocked_peers


async def test_a_receipt_our_database_could_not_keep_still_keeps_the_peer_unforgiven(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer drops the connection whenever asked for one receipt's entry, and our database fails the first write
    of that owed receipt: the receipt waits in memory, is written with the next check, asked for again, and the
    peer's failures keep counting (a review's finding: it used to be lost, and the peer forgiven)."""
    from sqlalchemy.exc import OperationalError

    from gateway import witness

    await exchange(pair)
    sender = pair.ar.running.sender.witness if pair.ar.running else None
    assert sender is not None
    real = witness.Witness._fetch_receipt_proof
    asked: list[int] = []

    async def fetch(self: witness.Witness, peer: str, index: int, size: int) -> Any:
        asked.append(index)
        if index == asked[0]:
            raise aiohttp.ServerDisconnectedError()
        return await real(self, peer, index, size)

    real_owe = WitnessState.owe_receipts
    writes: list[str] = []

    async def owe(conn: Any, peer: str, receipts: Any, limit: int) -> list[str]:
        writes.extend(receipt["message_id"] for receipt in receipts)
        if len(writes) == 1:
            raise OperationalError("UPDATE settings_state", {}, Exception("database is locked"))
        return await real_owe(conn, peer, receipts, limit)

    monkeypatch.setattr(witness.Witness, "_fetch_receipt_proof", fetch)
    monkeypatch.setattr(WitnessState, "owe_receipts", staticmethod(owe))
    monkeypatch.setattr(witness, "TRANSPORT_GRACE", 0.0)
    await exchange(pair)
    assert sender._failures["au.ag"] == 1 and await _owed(pair.ar) == []  # not kept: in memory only
    await exchange(pair)
    (owed,) = await _owed(pair.ar)
    assert owed.ledger_index == asked[0] and asked.count(asked[0]) == 2
    assert sender._failures["au.ag"] == 2 and not sender._unkept


async def test_a_damaged_owed_list_does_not_stop_the_witness(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored entry that is no receipt (a damaged row, another version's format) is dropped with an error log;
    the receipts owed beside it are still checked again, and the peer forgiven once it shows them."""
    from gateway import witness
    from store.facts import write_fact

    await exchange(pair)
    sender = pair.ar.running.sender.witness if pair.ar.running else None
    assert sender is not None
    async with pair.ar.gw.transaction() as conn:
        await write_fact(conn, "witness_owed:au.ag", [{"message_id": "not-a-receipt"}, "garbage", {"no": "id"}])
    real = witness.Witness._fetch_receipt_proof
    asked: list[int] = []

    async def fetch(self: witness.Witness, peer: str, index: int, size: int) -> Any:
        asked.append(index)
        if asked.count(asked[0]) == 1 and index == asked[0]:
            raise aiohttp.ServerDisconnectedError()
        return await real(self, peer, index, size)

    monkeypatch.setattr(witness.Witness, "_fetch_receipt_proof", fetch)
    monkeypatch.setattr(witness, "TRANSPORT_GRACE", 0.0)
    with structlog.testing.capture_logs() as logs:
        await exchange(pair)
        assert sender._failures["au.ag"] == 1
        await exchange(pair)
    assert asked.count(asked[0]) == 2 and not sender._failures
    assert await _owed(pair.ar) == []
    assert any(log["event"] == "witness_owed_malformed" for log in logs)
    async with pair.ar.gw.engine.connect() as conn:
        assert await read_fact(conn, "witness_owed:au.ag") is None
