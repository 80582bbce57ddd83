"""The auditor: its fast paths agree with the definitions, the invariants, timeline and export, and the whole
``comity audit`` against two live gateways through the auditor API and through their databases."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import random
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from sqlalchemy import func, select, update

from bench.ledger_workload import events, raw_events
from gateway.audit import AuditFailure, AuditState, DatabaseSource, HttpSource, load_trust, verify_ledger
from gateway.audit.entries import (
    _FAST,
    G_ACTOR,
    G_ENVELOPE,
    G_IN_REPLY_TO,
    G_KIND,
    G_MESSAGE_ID,
    G_PEER_TIME,
    G_TIME,
    G_TO,
    G_TYPE,
    EntryError,
    check_entry,
    check_entry_slow,
)
from gateway.audit.invariants import InvariantError, TimelineChecker
from gateway.audit.sources import RATE_LIMITED_ATTEMPTS, SourceError
from gateway.audit.tree import BatchTree
from protocol.checkpoint import Checkpoint, ledger_origin
from protocol.events import LedgerEvent
from protocol.merkle import EMPTY_ROOT, TreeBuilder, leaf_hash
from protocol.messages import MessageKind
from store.db import run_migrations
from store.tables import checkpoints, ledger_entries, ledger_head
from tests.conftest import DatabaseFactory
from tests.gateway.conftest import Pair, Side, issue_token
from tests.gateway.test_exchange import REQUEST, wait_for
from tests.store.test_tamper import build, sign, trust

# --- the batch tree is the RFC 9162 tree ---------------------------------------------------------------------------


def test_batch_tree_matches_tree_builder() -> None:
    rng = random.Random(3)
    for _ in range(60):
        leaves = [leaf_hash(rng.randbytes(8)) for _ in range(rng.randrange(0, 300))]
        reference, batch, done = TreeBuilder(), BatchTree(), 0
        assert batch.root() == reference.root()
        while done < len(leaves):
            chunk = leaves[done : done + rng.randrange(1, 70)]
            for leaf in chunk:
                reference.append_leaf_hash(leaf)
            batch.extend(chunk)
            done += len(chunk)
            assert batch.size == reference.size
            assert batch.root() == reference.root() and batch.frontier() == reference.frontier()


# --- the fast entry check agrees with the slow one ------------------------------------------------------------------


def _verdict(check: Any, entry: bytes) -> tuple[bytes | None, ...] | str:
    try:
        fields = check(entry)
    except EntryError:
        return "refused"
    groups = (G_ACTOR, G_ENVELOPE, G_IN_REPLY_TO, G_KIND, G_MESSAGE_ID, G_PEER_TIME, G_TIME, G_TO, G_TYPE)
    return tuple(fields.group(i) for i in groups)


EXTRA_EVENTS = [
    {"type": "peer.alarm", "time": "2026-11-28T07:40:00.000000Z", "actor": "system", "from": "au.ag", "reason": "fork"},
    {"type": "user.changed", "time": "2026-11-28T07:40:00.000000Z", "actor": "user:root", "subject": "user:bob"},
    {"type": "directory.installed", "time": "2026-11-28T07:40:00.000000Z", "actor": "system", "subject": "serial:3"},
    {  # informal consultations: a thread converted into a formal request, a thread joining its case's officers
        "type": "consultation.converted",
        "time": "2026-11-28T07:40:00.000000Z",
        "actor": "peer:ar.mj",
        "message_id": "6f1c1f7e-8d4a-4b4e-9c1a-2f5d3e7a9b10",
        "related_id": "0b9e4c1d-2a3f-4e5d-8c7b-6a5f4e3d2c1b",
    },
    {"type": "case.assigned", "time": "2026-11-28T07:40:00.000000Z", "actor": "system", "related_id": "x"},
    {  # outside the fast path (non-ASCII, escapes), still valid
        "type": "message.received",
        "time": "2026-11-28T07:40:00.000000Z",
        "actor": "peer:au.ag",
        "message_id": 'odd "id"\\',
        "marking": {"level": "CONFIDENCIAL — reservado", "caveats": ["a", "b:X"]},
    },
    {
        "type": "message.refused",
        "time": "2026-11-28T07:40:00.000000Z",
        "actor": "system",
        "reason": "bad-signature",
        "peer_ledger_index": 123456789,
        "v": 1,
    },
]


def _mutations(entry: bytes, rng: random.Random) -> list[bytes]:
    out = [
        entry.replace(b",", b", ", 1),
        entry.replace(b'"v":1', b'"v":01'),
        entry.replace(b'"v":1', b'"v":1.0'),
        entry.replace(b'"actor"', b'"actor","actor"', 1),
        entry[:-1] + b',"zzz":1}',
        entry.upper(),
        entry.replace(b"Z", b"+00:00", 1),
        entry.replace(b'"caveats":["', b'"caveats":["zzz","', 1),
        entry.replace(b'"caveats":[', b'"caveats":["a","a",', 1),
        entry + b"\n",
        b" " + entry,
        entry.replace(b"message.", b"message.x", 1),
        entry.replace(b"e", b"\\u0065", 1),
        entry.replace(b'"time"', b'"time":"x","time"', 1),
        entry.replace(b"-28T", b"-30T", 1),
        entry.replace(b"-11-28T", b"-02-29T", 1),
        entry.replace(b"2026-11-28T", b"2024-02-29T", 1),
        entry.replace(b"2026-11-28T", b"0000-01-01T", 1),
        entry.replace(b"-11-28T", b"-04-31T", 1),
        entry.replace(b"T07:", b"T24:", 1),
    ]
    for _ in range(6):
        position = rng.randrange(len(entry))
        out.append(entry[:position] + bytes([rng.randrange(32, 127)]) + entry[position + 1 :])
        out.append(entry[:position] + entry[position + 1 :])
    return out


def test_every_event_type_takes_the_fast_path() -> None:
    """The fast path's types were a hand-written list: fifteen of them (every case event, refusals of opening and
    submission, consents, consultations) took the slow path, ten times slower per entry."""
    from protocol.events import EventType

    for event_type in EventType:
        entry = LedgerEvent.parse(
            {"type": event_type.value, "time": "2026-11-28T07:40:00.000000Z", "actor": "system"}
        ).to_bytes()
        assert _FAST(entry) is not None, event_type


def test_fast_path_agrees_with_the_definition() -> None:
    rng = random.Random(5)
    valid = [event.to_bytes() for event in events(400)]
    valid += [LedgerEvent.parse(document).to_bytes() for document in EXTRA_EVENTS]
    accepted = 0
    for entry in valid:
        assert _verdict(check_entry, entry) == _verdict(check_entry_slow, entry) != "refused"
        for mutated in _mutations(entry, rng):
            fast, slow = _verdict(check_entry, mutated), _verdict(check_entry_slow, mutated)
            assert fast == slow, mutated
            accepted += fast != "refused"
    assert accepted > 0  # some mutations are valid events too (another digit in a time, ...)


def test_the_fast_path_admits_every_message_kind() -> None:
    """A kind the gateway ledgers (consent, art. 46(19)) but the expression did not list went to the slow path for
    every such entry; the expression now takes the kinds from the enum."""
    for kind in MessageKind:
        document = {**_event("message.submitted", 1), "kind": kind.value, "from": "ar.mj", "to": "au.ag"}
        entry = LedgerEvent.parse(document).to_bytes()
        assert _FAST(entry) is not None, kind
        assert _verdict(check_entry, entry) == _verdict(check_entry_slow, entry) != "refused"
        assert check_entry(entry).group(G_KIND) == kind.value.encode()


def test_slow_path_reasons() -> None:
    with pytest.raises(EntryError, match="not strict UTF-8 JSON"):
        check_entry(b"\xff")
    with pytest.raises(EntryError, match="not a valid ledger event"):
        check_entry(b'{"actor":"system","time":"2026-11-28T07:40:00.000000Z","type":"nope","v":1}')
    with pytest.raises(EntryError, match="not the RFC 8785 canonical JSON"):
        check_entry(b'{"time":"2026-11-28T07:40:00.000000Z","actor":"system","type":"user.changed","v":1}')
    # the schema version is 1: another one, or 1 spelt otherwise, is refused by both paths alike
    for version in (b"2", b"0", b"-0", b"-7", b"999999999999999", b"1.0"):
        entry = b'{"actor":"system","time":"2026-11-28T07:40:00.000000Z","type":"user.changed","v":' + version + b"}"
        assert _verdict(check_entry, entry) == _verdict(check_entry_slow, entry) == "refused", version
    # a peer actor is an authority id as documented: its name starts with a letter or digit
    for actor, verdict in ((b"peer:ar.-x", "refused"), (b"peer:ar.x-", "accepted")):
        entry = b'{"actor":"' + actor + b'","time":"2026-11-28T07:40:00.000000Z","type":"user.changed","v":1}'
        assert _verdict(check_entry, entry) == _verdict(check_entry_slow, entry), actor
        assert (_verdict(check_entry, entry) == "refused") == (verdict == "refused"), actor


# --- the auditor API source: what a hostile or broken gateway answers --------------------------------------------


@pytest.mark.parametrize("stall", [False, True])
async def test_an_entries_body_cut_short_or_stalled_is_a_source_error(stall: bool) -> None:
    """A gateway that drops the connection in the middle of /v1/ledger/entries, or stops sending, is a SourceError
    (a one-line verdict), not an unexpected ClientPayloadError or TimeoutError."""
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n{}\n")
        await writer.drain()
        if stall:
            await release.wait()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source = HttpSource(f"http://127.0.0.1:{port}", "t", timeout=0.5)
    await source.open()
    try:
        with pytest.raises(SourceError, match=r"^GET /v1/ledger/entries: reading the answer: \w+"):
            async for _ in source.entries(0, 5):
                pass
    finally:
        release.set()
        await source.close()
        server.close()
        await server.wait_closed()


async def _audit_hostile(latest: Any, listed: list[Any] | None = None, served: list[bytes] | None = None) -> Any:
    """verify_ledger through the auditor API of a gateway serving ``latest`` as its newest checkpoint, ``listed`` as
    its list, and the entries ``served``."""

    async def checkpoint(request: web.Request) -> web.Response:
        return web.json_response(latest)

    async def checkpoints(request: web.Request) -> web.Response:
        return web.json_response({"checkpoints": listed or []})

    async def entries(request: web.Request) -> web.Response:
        start, end = int(request.query["start"]), int(request.query["end"])
        lines = (served or [])[start:end]
        return web.Response(body=b"".join(line + b"\n" for line in lines), content_type="application/x-ndjson")

    app = web.Application()
    app.router.add_get("/v1/ledger/checkpoint", checkpoint)
    app.router.add_get("/v1/ledger/checkpoints", checkpoints)
    app.router.add_get("/v1/ledger/entries", entries)
    async with _api_source(app) as source:
        return await verify_ledger(source, trust(), AuditState(None))


@contextlib.asynccontextmanager
async def _api_source(app: web.Application) -> AsyncIterator[HttpSource]:
    """An API source opened on ``app``, served on loopback for the block."""
    server = TestServer(app)
    await server.start_server()
    source = HttpSource(str(server.make_url("")), "token")
    await source.open()
    try:
        yield source
    finally:
        await source.close()
        await server.close()


def _note(size: int = 0, root: bytes = EMPTY_ROOT) -> str:
    return sign(Checkpoint(ledger_origin("ar.mj"), size, root).to_text())


@pytest.mark.parametrize("size", [-5, "0", 1.0, True, None])
async def test_the_served_size_must_be_an_integer_of_at_least_zero(size: Any) -> None:
    with pytest.raises(SourceError, match=r"^GET /v1/ledger/checkpoint: expected \{size: an integer >= 0"):
        await _audit_hostile({"size": size, "root": "", "note": _note()})


async def test_the_newest_note_is_opened_at_size_zero_too() -> None:
    """The size is the unsigned member of GET /v1/ledger/checkpoint: at 0 the note was never opened, and a gateway
    answering junk got "ok" with nothing verified and no warning."""
    with pytest.raises(AuditFailure, match=r"^checkpoint at size 0: "):
        await _audit_hostile({"size": 0, "root": "", "note": "not a signed note at all"})
    # a genuine note of a larger log, served as if the log were empty: its signed size is not the size served
    note = sign(Checkpoint(ledger_origin("ar.mj"), 200, b"\x01" * 32).to_text())
    with pytest.raises(AuditFailure, match=r"^checkpoint at size 0: the signed note says size 200"):
        await _audit_hostile({"size": 0, "root": "", "note": note})
    # the newest note is opened even when the list has one of that size (its text may differ from the list's)
    served = [event.to_bytes() for event in events(3)]
    tree = BatchTree()
    tree.extend([leaf_hash(entry) for entry in served])
    good = _note(3, tree.root())
    assert (await _audit_hostile({"size": 3, "note": good}, [{"size": 3, "note": good}], served)).checkpoints == 1
    with pytest.raises(AuditFailure, match=r"^checkpoint at size 3: "):
        await _audit_hostile({"size": 3, "root": "", "note": "junk"}, [{"size": 3, "note": good}], served)
    # an empty log, signed: one signature verified, no warning
    summary = await _audit_hostile({"size": 0, "root": "", "note": _note()})
    assert summary.checkpoints == 1 and summary.newest_size == 0 and not summary.warnings


async def test_an_empty_unsigned_log_is_warned_about(databases: DatabaseFactory) -> None:
    url = await databases.new()
    await run_migrations(url)
    source = DatabaseSource(url)
    await source.open()
    try:
        summary = await verify_ledger(source, trust(), AuditState(None))
    finally:
        await source.close()
    assert summary.checkpoints == 0
    assert "warning: no signed checkpoint: the log is empty, unsigned" in "\n".join(summary.lines())


# --- invariants ------------------------------------------------------------------------------------------------


def _feed(documents: list[dict[str, Any]]) -> None:
    checker = TimelineChecker()
    for index, document in enumerate(documents):
        checker.feed(index, check_entry(LedgerEvent.parse(document).to_bytes()))


M, R = "0b0d8a3e-6c35-4c5d-9a4b-4f1c2b7d3e01", "9f3c1d2e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"


def _event(type_: str, second: int, actor: str = "system", **fields: Any) -> dict[str, Any]:
    return {"type": type_, "time": f"2026-11-28T07:40:{second:02d}.000000Z", "actor": actor, "message_id": M, **fields}


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        ([_event("message.sent", 1)], "entry 0: message .* sent, but never submitted"),
        ([_event("message.submitted", 5), _event("message.sent", 4)], "entry 1: .* sent at .*, before its submission"),
        (
            [_event("message.submitted", 1), _event("message.sent", 2), _event("message.receipt_recorded", 1)],
            "entry 2: .* receipt recorded at .* before it was sent",
        ),
        (
            [
                _event("message.submitted", 1),
                _event("message.sent", 2),
                _event("message.receipt_recorded", 3, peer_time="2026-11-28T07:30:00.000000Z"),
            ],
            "entry 2: .* more than 360 s before it was submitted",
        ),
        ([_event("message.received", 1), _event("message.received", 2)], "entry 1: .* received a second time"),
        ([_event("message.submitted", 1), _event("message.submitted", 2)], "entry 1: .* submitted a second time"),
        # an id is ours or a peer's: a reception of it in between hid a reply ledgered before its message (171)
        ([_event("message.received", 1), _event("message.submitted", 2)], "entry 1: .* submitted here, but received"),
        ([_event("message.submitted", 1), _event("message.received", 2)], "entry 1: .* received here, but submitted"),
        ([_event("message.acknowledged", 1, "user:bob")], "entry 0: .* acknowledged by user:bob, but never received"),
        (
            [_event("message.received", 5), _event("message.opened", 4, "user:bob")],
            "entry 1: .* opened by user:bob at .*, before it arrived",
        ),
        ([_event("message.answered", 1, "peer:au.ag")], "entry 0: .* answered by peer:au.ag, but never submitted"),
        (
            [
                _event("message.submitted", 5),
                {**_event("message.received", 4, "peer:au.ag", in_reply_to=M, kind="response"), "message_id": R},
            ],
            "entry 1: message 9f3c.* received at .*, before the message it answers .* was submitted",
        ),
    ],
)
def test_invariant_violations(documents: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(InvariantError, match=message):
        _feed(documents)


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"envelope_sha256": "2" * 64}, "sent with envelope 2{64}, not the 1{64} it was submitted with"),
        ({"to": "zz.other"}, "sent with recipient zz.other, not the au.ag it was submitted with"),
    ],
)
def test_a_message_is_sent_as_and_to_what_it_was_submitted_as(changed: dict[str, Any], message: str) -> None:
    """An operator who swaps a submitted message's stored envelope, or its outbox row's peer, before it goes has the
    honest gateway ledger the substitute as sent and receipted: the ledger holds the contradiction, and the audit
    now reads it (invariant 2). Before, it compared only times."""
    submitted = _event("message.submitted", 1, "user:olga", kind="request", to="au.ag", envelope_sha256="1" * 64)
    submitted |= {"from": "ar.mj", "marking": {"caveats": [], "level": "CONFIDENTIAL"}}
    common = {"to": "au.ag", "envelope_sha256": "1" * 64}
    receipt = _event("message.receipt_recorded", 3, peer_time="2026-11-28T07:40:02.000000Z", **common)
    _feed([submitted, _event("message.sent", 2, **common), receipt])  # as submitted: holds
    with pytest.raises(InvariantError, match=message):
        _feed([submitted, _event("message.sent", 2, **(common | changed))])
    with pytest.raises(InvariantError, match=message.replace("sent", "receipt recorded", 1)):
        _feed([submitted, _event("message.sent", 2, **common), {**receipt, **changed}])


def _at(document: dict[str, Any], time: str) -> dict[str, Any]:
    return {**document, "time": f"2026-11-28T{time}.000000Z"}


def test_an_entry_back_dated_beyond_the_clock_skew_fails_and_a_sending_may_be_older() -> None:
    """The ledger is appended in time order, give or take the clock skew; a late acknowledgement appended with the
    time it should have had fails, while ``message.sent`` is dated when its transmission began (decision 106)."""
    received = _at(_event("message.received", 0, "peer:au.ag"), "07:40:00")
    other = {**_at(_event("message.submitted", 0), "09:00:00"), "message_id": R}
    on_time = _at(_event("message.acknowledged", 0, "user:bob"), "08:54:59")  # 5 min 1 s before the entry before it
    with pytest.raises(
        InvariantError,
        match=r"entry 2: dated 2026-11-28T08:54:59.000000Z, more than 300 s before entry 1 \(2026-11-28T09:00:00",
    ):
        _feed([received, other, on_time])
    _feed([received, other, _at(on_time, "08:55:00")])  # within the skew: replicas' clocks, a clock stepped back
    # a sending that began an hour before it was recorded (a large attachment), and the entries after it
    submitted = {**_at(_event("message.submitted", 0), "07:00:00"), "message_id": R}
    _feed(
        [
            submitted,
            {**_at(_event("message.sent", 0), "07:00:01"), "message_id": R},
            _at(_event("message.received", 0, "peer:au.ag"), "08:00:00"),
            {**_at(_event("message.sent", 0), "07:00:02"), "message_id": R},
            {
                **_at(_event("message.receipt_recorded", 0, peer_time="2026-11-28T07:59:00.000000Z"), "08:00:03"),
                "message_id": R,
            },
            _at(_event("message.acknowledged", 0, "user:bob"), "08:00:04"),
        ]
    )


def test_a_message_event_without_its_message_id_fails() -> None:
    received = _event("message.received", 1, "peer:au.ag")
    del received["message_id"]
    with pytest.raises(InvariantError, match=r"^entry 0: a message.received event names no message_id$"):
        _feed([received])


def test_a_closed_messages_id_is_not_used_again() -> None:
    closed = [_event("message.received", 1, "peer:au.ag"), _event("message.closed", 2)]
    with pytest.raises(InvariantError, match=r"entry 2: message .* received again after it was closed \(entry 1\)"):
        _feed([*closed, _event("message.received", 3, "peer:au.ag")])
    with pytest.raises(InvariantError, match=r"entry 2: message .* submitted again after it was closed"):
        _feed([*closed, _event("message.submitted", 3)])


def test_a_reply_ledgered_before_the_message_it_answers_fails() -> None:
    """Invariant 6 looked backward only: a reply received before (in index order, and here in time too) the
    submission of the message it answers passed, although a gateway ledgers a submission before it sends anything."""
    reply = {**_event("message.received", 4, "peer:au.ag", in_reply_to=M, kind="response"), "message_id": R}
    match = rf"entry 1: message {M} submitted after entry 0 received message {R} in reply to it"
    with pytest.raises(InvariantError, match=match):
        _feed([reply, _event("message.submitted", 5)])
    with pytest.raises(InvariantError, match=match):  # dated before the reply: index order is what tells
        _feed([reply, _event("message.submitted", 3)])
    with pytest.raises(InvariantError, match=rf"entry 2: message {M} submitted after entry 0 "):
        _feed(
            [
                reply,
                {**reply, "message_id": "c" * 8, "time": "2026-11-28T07:40:04.500000Z"},
                _event("message.submitted", 5),
            ]
        )
    # honest ledgers still pass: a reply to a message this ledger never saw (sent elsewhere, before Comity), and a
    # peer's message answering its own earlier message that reaches us after it (deliveries retried out of order)
    reply = {**reply, "kind": "withdrawal"}
    _feed([reply])
    _feed([reply, _event("message.received", 5, "peer:au.ag"), _event("message.opened", 6, "user:bob")])
    _feed([_event("message.submitted", 3), reply])  # the usual order
    closed = [_event("message.received", 1, "peer:au.ag"), _event("message.closed", 2)]
    _feed([*closed, reply])  # answers a closed message: remembered by its id already


def test_a_redelivery_receipt_may_be_older_than_its_sending() -> None:
    """The first delivery was received and receipted but its answer was lost; the redelivery an hour later gets the
    first receipt, dated then: long before this "sent", not before the submission (decision 91)."""

    def life(submitted: str, peer_time: str) -> list[dict[str, Any]]:
        return [
            {**_event("message.submitted", 0), "time": submitted},
            {**_event("message.sent", 0), "time": "2026-11-28T08:40:00.000000Z"},
            {**_event("message.receipt_recorded", 0, peer_time=peer_time), "time": "2026-11-28T08:40:01.000000Z"},
        ]

    _feed(life("2026-11-28T07:40:00.000000Z", "2026-11-28T07:40:02.000000Z"))
    _feed(life("2026-11-28T07:40:00.000000Z", "2026-11-28T07:35:00.000000Z"))  # its clock 5 min behind ours
    # and a minute more: iat's whole seconds, and the time from sealing to the commit (decision 157)
    _feed(life("2026-11-28T07:40:00.000000Z", "2026-11-28T07:34:00.000000Z"))
    with pytest.raises(InvariantError, match="more than 360 s before it was submitted"):
        _feed(life("2026-11-28T07:40:00.000000Z", "2026-11-28T07:33:59.999999Z"))


def test_workload_holds_and_closed_messages_are_forgotten() -> None:
    checker = TimelineChecker()
    for index, document in enumerate(raw_events(5000)):
        checker.feed(index, check_entry(LedgerEvent.parse(document).to_bytes()))
    assert 0 < checker.open_messages < 400  # 50 lives in flight, a few messages each


# --- export and timeline on a database ---------------------------------------------------------------------------


def _cli(args: list[str]) -> Any:
    from gateway.cli import main

    return CliRunner().invoke(main, ["audit", *args])


async def test_export_and_timeline(databases: DatabaseFactory, tmp_path: Path) -> None:
    url = await databases.new()
    await (await build(url))[0].dispose()
    out = tmp_path / "events.csv"
    result = await asyncio.to_thread(_cli, ["export", "--database", url, "--format", "csv", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert (len(rows) == 230 and rows[0]["index"] == "0" and rows[0]["type"] == "message.submitted") or rows
    received = [row for row in rows if row["type"] == "message.received"]
    assert received and received[0]["marking_level"] == "CONFIDENTIAL" and received[0]["from"] == "au.ag"
    result = await asyncio.to_thread(
        _cli, ["export", "--database", url, "--format", "jsonl", "--kind", "response", "--counterpart", "au.ag"]
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines and all(line["kind"] == "response" for line in lines)
    assert {"index", "type", "time", "actor"} <= set(lines[0])
    none = await asyncio.to_thread(_cli, ["export", "--database", url, "--since", "2030-01-01", "--format", "jsonl"])
    assert none.exit_code == 0 and none.stdout == ""
    day = await asyncio.to_thread(_cli, ["export", "--database", url, "--until", "2026-11-28", "--format", "jsonl"])
    assert len(day.stdout.splitlines()) == 230
    cased = await asyncio.to_thread(_cli, ["export", "--database", url, "--case", "C-1", "--format", "jsonl"])
    assert cased.stdout == ""  # no entry has a case member yet
    message = received[0]["message_id"]
    shown = await asyncio.to_thread(_cli, ["timeline", message, "--database", url])
    assert shown.exit_code == 0, shown.output
    assert f"message {message}" in shown.stdout and "received" in shown.stdout


async def test_export_out_replaces_the_file_only_when_complete(databases: DatabaseFactory, tmp_path: Path) -> None:
    """--out is written beside the file and renamed over it at the end: an export that fails part-way (here an entry
    that is not JSON, past the first rows) leaves yesterday's complete export as it was, and no temporary file."""
    url = await databases.new()
    engine, _ = await build(url)
    exports = tmp_path / "exports"
    exports.mkdir()
    out = exports / "events.csv"
    args = ["export", "--database", url, "--format", "csv", "--out", str(out)]
    try:
        out.write_text("yesterday's complete export\n")
        result = await asyncio.to_thread(_cli, args)
        assert result.exit_code == 0, result.output
        assert len(out.read_text().splitlines()) == 231  # the header and every entry
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        complete = out.read_bytes()
        async with engine.begin() as conn:
            await conn.execute(update(ledger_entries).where(ledger_entries.c.idx == 200).values(entry=b"not json"))
        result = await asyncio.to_thread(_cli, args)
        assert result.exit_code == 1 and "not valid JSON" in result.output, result.output
        assert out.read_bytes() == complete
        assert os.listdir(exports) == ["events.csv"]
    finally:
        await engine.dispose()


# --- two live gateways: the auditor API and the databases --------------------------------------------------------


async def _signed_up_to_head(side: Side, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with side.gw.engine.connect() as conn:
            head = (await conn.execute(select(ledger_head.c.size))).scalar_one()
            signed = (await conn.execute(select(func.max(checkpoints.c.size)))).scalar_one_or_none()
        if signed == head:
            return
        assert asyncio.get_running_loop().time() < deadline, f"no checkpoint at size {head} (newest {signed})"
        await asyncio.sleep(0.1)


async def test_audit_two_live_gateways(pair: Pair, tmp_path: Path) -> None:
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202, body
    message = body["id"]
    await wait_for(pair.ar, message, "delivered")
    status, _ = await pair.au.call(
        "POST", f"/v1/messages/{message}/acknowledge", json={"confidentiality": "can-comply"}
    )
    assert status == 202
    await wait_for(pair.ar, message, "acknowledged")
    for side in (pair.ar, pair.au):  # gateways sign a checkpoint every second: wait for one covering everything
        await _signed_up_to_head(side)

    data = pair.ar.provisioned.data_dir
    directory, key = data / "directory.jws", data / "directory-key.jwk"
    state = AuditState(tmp_path / "state.json")
    summaries = {}
    for name, side in (("ar.mj", pair.ar), ("au.ag", pair.au)):
        token = await asyncio.to_thread(issue_token, side.provisioned.config, f"aud-{name[:2]}", "auditor")
        trust = load_trust(directory, key, name)
        http = HttpSource(side.api, token)
        await http.open()
        try:
            summaries[name] = await verify_ledger(http, trust, state)
            # a second run checks the served consistency proof and the earlier root
            again = await verify_ledger(http, trust, state)
            assert again.previous_size == summaries[name].newest_size
        finally:
            await http.close()
        db = DatabaseSource(side.gw.settings.database_dsn)
        await db.open()
        try:
            await verify_ledger(db, trust, state)
        finally:
            await db.close()
        # the other authority's keys do not sign this log
        wrong = load_trust(directory, key, "au.ag" if name == "ar.mj" else "ar.mj")
        http = HttpSource(side.api, token)
        await http.open()
        try:
            with pytest.raises(AuditFailure, match="checkpoint at size"):
                await verify_ledger(http, wrong, AuditState(None))
        finally:
            await http.close()
    assert summaries["ar.mj"].entries >= 4 and summaries["au.ag"].entries >= 3
    assert sum(summaries["ar.mj"].cosignatures.values()) + sum(summaries["au.ag"].cosignatures.values()) >= 1

    # the timeline from both databases, through the command line
    urls = [pair.ar.gw.settings.database_dsn, pair.au.gw.settings.database_dsn]
    shown = await asyncio.to_thread(_cli, ["timeline", message, "--database", urls[0], "--database", urls[1]])
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert "comity-ledger/ar.mj" in text and "comity-ledger/au.ag" in text and "both sides, in time order" in text
    for milestone in ("submitted", "sent", "received", "receipted", "acknowledged"):
        assert milestone in text
    # the command line through the API, exit code 0
    token = await asyncio.to_thread(issue_token, pair.ar.provisioned.config, "aud-cli", "auditor")
    args = ["verify", "--url", pair.ar.api, "--token", token, "--directory", str(directory)]
    args += ["--directory-key", str(key), "--authority", "ar.mj", "--no-state", "--no-progress"]
    ok = await asyncio.to_thread(_cli, args)
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith(f"ok: comity-ledger/ar.mj from {pair.ar.api}")
    # both sides' timelines through their APIs, the tokens read from files rather than the command line
    files = [tmp_path / "ar.token", tmp_path / "au.token"]
    files[0].write_text(token)
    files[1].write_text(await asyncio.to_thread(issue_token, pair.au.provisioned.config, "aud-cli", "auditor"))
    args = ["timeline", message, "--url", pair.ar.api, "--url", pair.au.api]
    shown = await asyncio.to_thread(_cli, [*args, "--token-file", str(files[0]), "--token-file", str(files[1])])
    assert shown.exit_code == 0, shown.output
    assert "comity-ledger/ar.mj" in shown.stdout and "comity-ledger/au.ag" in shown.stdout


def test_overlapping_runs_never_roll_the_state_file_back(tmp_path: Path) -> None:
    """Two runs of `comity audit verify` at once (cron jobs overlapping on a large log): the one that started
    earlier, with the smaller log, saved last and put the state file back to it, after which a log truncated and
    regrown past it passed. Saving now merges with the file under a lock (decision 172)."""
    from gateway.audit import AuditState
    from gateway.audit.state import StateError, Verified

    path = tmp_path / "audit-state.json"
    origin, at = "comity-ledger/ar.mj", "2026-11-28T07:40:00.000000Z"
    early, late = AuditState(path), AuditState(path)  # both read the file before either saves
    early.remember(origin, Verified(100, b"\x01" * 32, "note 100", at), "kid", 1)
    late.remember(origin, Verified(200, b"\x02" * 32, "note 200", at), "kid", 2)
    late.save()
    early.save()
    kept = AuditState(path).last(origin)
    assert kept is not None and (kept.size, kept.root) == (200, b"\x02" * 32)
    assert AuditState(path).directory_serial("kid") == 2
    other = AuditState(tmp_path / "elsewhere.json")  # a run that saw another root at the same size: a fork
    other.path = path
    other.remember(origin, Verified(200, b"\x03" * 32, "note 200'", at), "kid", 2)
    with pytest.raises(StateError, match=r"different root for comity-ledger/ar\.mj at size 200"):
        other.save()
    assert AuditState(path).last(origin) == kept


@pytest.mark.parametrize(
    ("retry_after", "limited", "answered"),
    [("0", 2, 200), ("0", 99, 429), ("3600", 1, 429), ("soon", 1, 429), ("\u00b2", 1, 429), ("9" * 5000, 1, 429)],
)
async def test_the_api_source_waits_out_a_rate_limit_it_is_told_how_long_to_wait_for(
    retry_after: str, limited: int, answered: int
) -> None:
    """The gateway limits each user's API requests (decision 177): an audit through the API waits as long as a 429's
    Retry-After says, up to a minute and eight answers, rather than failing a long audit half way."""
    calls: list[int] = []

    async def checkpoint(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) <= limited:
            return web.json_response({"code": "rate-limited"}, status=429, headers={"Retry-After": retry_after})
        return web.json_response({"size": 0, "note": _note()})

    app = web.Application()
    app.router.add_get("/v1/ledger/checkpoint", checkpoint)
    async with _api_source(app) as source:
        if answered == 200:
            assert (await source.snapshot()).total == 0
            assert len(calls) == limited + 1
        else:
            with pytest.raises(SourceError, match="answered HTTP 429"):
                await source.snapshot()
            assert len(calls) == min(limited, RATE_LIMITED_ATTEMPTS)
