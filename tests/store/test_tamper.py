"""Tampering with the ledger in the database, on SQLite and PostgreSQL: ``comity audit verify`` catches each change
and names the entry or checkpoint.

The ledger is built with the product code (``EventLog.append_many``, ``record_checkpoint`` signed as the gateway
signs, cosignatures stored as the witness code stores them), then changed behind its back with plain SQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.ledger_workload import events
from config.directory import Directory, directory_entry_for, sign_directory
from crypto.keys import generate_authority_keys, generate_signing_key, public_jwk
from crypto.note import CosignatureSigner, NoteSigner, sign_note
from crypto.tls import generate_tls_identity
from gateway.audit import AuditFailure, AuditState, DatabaseSource, Trust, trust_from_directory, verify_ledger
from gateway.audit.sources import SourceError
from gateway.audit.state import Verified
from gateway.audit.trust import ledger_origin, witness_name
from protocol import merkle
from protocol.checkpoint import Checkpoint
from protocol.events import LedgerEvent
from protocol.timefmt import format_time, parse_time
from store.db import is_sqlite, make_engine, run_migrations
from store.events import EventLog
from store.tables import checkpoints, cosignatures, ledger_entries, ledger_head, ledger_nodes
from tests.conftest import DatabaseFactory

NOW = datetime(2026, 11, 28, 7, 40, tzinfo=UTC)
CHECKPOINTS = (50, 100, 150, 200)
SIZE = 230  # 30 entries after the newest checkpoint


@dataclass
class Keys:
    ar: Any
    au: Any
    directory_key: Any
    directory: Directory


def _make_keys() -> Keys:
    ar, au = generate_authority_keys(), generate_authority_keys()
    entries = []
    for authority_id, country, keys, port in (("ar.mj", "AR", ar, 8443), ("au.ag", "AU", au, 9443)):
        tls = generate_tls_identity(authority_id, ["127.0.0.1"], None, now=NOW)
        entries.append(
            directory_entry_for(
                authority_id=authority_id,
                name=f"Central authority {authority_id}",
                country=country,
                endpoint=f"https://127.0.0.1:{port}",
                keys=keys,
                tls_cert_pem=tls.cert_pem,
                not_before=NOW - timedelta(days=30),
            )
        )
    directory = Directory.model_validate(
        {
            "v": 1,
            "serial": 3,
            "issued_at": format_time(NOW - timedelta(days=1)),
            "expires_at": format_time(datetime.now(UTC) + timedelta(days=365)),
            "authorities": [entry.to_json() for entry in entries],
        }
    )
    return Keys(ar, au, generate_signing_key(), directory)


KEYS = _make_keys()


def trust() -> Trust:
    return trust_from_directory(KEYS.directory, "test-directory-kid", "ar.mj")


def sign(text: str) -> str:
    return sign_note(text, [NoteSigner(ledger_origin("ar.mj"), KEYS.ar.signing)])


def cosign(note: str) -> str:
    text = note[: note.index("\n\n") + 1]
    return CosignatureSigner(witness_name("au.ag"), KEYS.au.signing).sign(text, 1_795_000_000)


async def append(engine: AsyncEngine, log: EventLog, batch: list[LedgerEvent], *, checkpoint: bool) -> None:
    async with engine.begin() as conn:
        await log.append_many(conn, batch)
        if checkpoint:
            note = await log.record_checkpoint(conn, ledger_origin("ar.mj"), sign, NOW)
            size = Checkpoint.from_text(note[: note.index("\n\n") + 1]).size
            await conn.execute(
                insert(cosignatures).values(
                    size=size, witness=witness_name("au.ag"), line=cosign(note), received_at=NOW
                )
            )


async def build(url: str, size: int = SIZE, *, seed: int = 7) -> tuple[AsyncEngine, EventLog]:
    await run_migrations(url)
    engine = make_engine(url)
    log = EventLog(for_update=not is_sqlite(url))
    all_events = list(events(size, seed=seed))
    done = 0
    for stop in (*CHECKPOINTS, size):
        await append(engine, log, all_events[done:stop], checkpoint=stop in CHECKPOINTS)
        done = stop
    return engine, log


async def audit(url: str, state: Path | None = None, *, max_unwitnessed: int | None = None) -> str:
    source = DatabaseSource(url)
    await source.open()
    try:
        summary = await verify_ledger(source, trust(), AuditState(state), max_unwitnessed=max_unwitnessed)
    finally:
        await source.close()
    return "\n".join(summary.lines())


async def fails(url: str, state: Path | None = None, *, max_unwitnessed: int | None = None) -> AuditFailure:
    with pytest.raises(AuditFailure) as caught:
        await audit(url, state, max_unwitnessed=max_unwitnessed)
    return caught.value


async def entry_bytes(engine: AsyncEngine, index: int) -> bytes:
    async with engine.connect() as conn:
        value = (await conn.execute(select(ledger_entries.c.entry).where(ledger_entries.c.idx == index))).scalar_one()
    return bytes(value)


async def move(engine: AsyncEngine, index: int, to: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(ledger_entries).where(ledger_entries.c.idx == index).values(idx=to))


# --- the untampered ledger ---------------------------------------------------------------------------------------


async def test_untampered_ledger_passes(db_url: str, tmp_path: Path) -> None:
    engine, _ = await build(db_url)
    await engine.dispose()
    report = await audit(db_url, tmp_path / "state.json")
    assert f"entries      {SIZE}" in report
    assert "checkpoints  4 signatures verified, newest at size 200" in report
    assert "cosignatures 4 verified (comity-witness/au.ag: 4)" in report
    assert "30 entries after the newest checkpoint are not signed yet" in report
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["logs"]["comity-ledger/ar.mj"]["size"] == 200
    # a second run checks against the first
    assert "consistent with size 200 verified on an earlier run" in await audit(db_url, tmp_path / "state.json")


# --- rows changed, deleted, inserted, reordered ------------------------------------------------------------------


async def test_changed_entry(db_url: str) -> None:
    engine, _ = await build(db_url)
    try:
        # a valid, canonical event with another time: only the tree can tell
        event = json.loads(await entry_bytes(engine, 70))
        event["time"] = event["time"][:-2] + "9Z"
        forged = LedgerEvent.parse(event).to_bytes()
        async with engine.begin() as conn:
            await conn.execute(update(ledger_entries).where(ledger_entries.c.idx == 70).values(entry=forged))
    finally:
        await engine.dispose()
    failure = await fails(db_url)
    assert failure.index == 70
    assert str(failure).startswith("entry 70: leaf does not match checkpoint at size 100 (entries 50..99 changed")


async def test_changed_entry_not_canonical(db_url: str) -> None:
    engine, _ = await build(db_url)
    try:
        original = await entry_bytes(engine, 120)
        async with engine.begin() as conn:
            await conn.execute(
                update(ledger_entries).where(ledger_entries.c.idx == 120).values(entry=original.replace(b",", b", ", 1))
            )
    finally:
        await engine.dispose()
    failure = await fails(db_url)
    assert str(failure) == (
        "entry 120: is not the RFC 8785 canonical JSON of its event (bytes differ from the re-encoding)"
    )


async def message_ids(url: str) -> list[tuple[int, str | None]]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(ledger_entries.c.idx, ledger_entries.c.message_id))).all()
    finally:
        await engine.dispose()
    return [(row.idx, row.message_id) for row in rows]


async def set_message_id(url: str, index: int, message_id: str | None) -> None:
    """Change one row's message_id column (the index timelines select on) behind the ledger code's back."""
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                update(ledger_entries).where(ledger_entries.c.idx == index).values(message_id=message_id)
            )
    finally:
        await engine.dispose()


async def test_an_index_column_changed_to_hide_an_entry_from_timelines(db_url: str) -> None:
    """The message_id column is not hashed, and timelines select on it: an entry unlisted there (or listed under
    another message) would vanish from a message's timeline while every hash still holds."""
    await (await build(db_url))[0].dispose()
    rows = await message_ids(db_url)
    index, message_id = next((idx, value) for idx, value in rows if idx > 60 and value)
    other = next(value for _, value in rows if value and value != message_id)
    await set_message_id(db_url, index, None)
    failure = await fails(db_url)
    assert failure.index == index
    assert str(failure) == (
        f"entry {index}: the message_id column (the index timelines select on) does not match the entry: it was "
        "changed outside the ledger code"
    )
    # filed under another message instead: the audit fails the same way, and that message's timeline refuses it
    await set_message_id(db_url, index, other)
    assert (await fails(db_url)).index == index
    source = DatabaseSource(db_url)
    await source.open()
    try:
        with pytest.raises(SourceError, match=f"entry {index}: the message_id column names a message"):
            _ = [item async for item in source.entries_of(other)]
    finally:
        await source.close()
    if is_sqlite(db_url):
        # SQLite stores a BLOB in a text column: the same bytes as the entry's, yet `message_id = ?` never selects it
        engine = make_engine(db_url)
        try:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(
                    "UPDATE ledger_entries SET message_id = CAST(? AS BLOB) WHERE idx = ?", (message_id, index)
                )
                hidden = await conn.execute(
                    select(ledger_entries.c.idx).where(ledger_entries.c.message_id == message_id)
                )
                assert index not in {row.idx for row in hidden}
        finally:
            await engine.dispose()
        assert (await fails(db_url)).index == index


async def test_tampering_far_into_a_log_read_in_many_batches(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source reads 16 entries at a time here, fetching the next batch while this one is checked: a changed
    index column in a later batch is found, and naming a changed entry reads the log again while a fetch may be
    under way (on PostgreSQL, one connection: the second query waits for the first)."""
    monkeypatch.setattr("gateway.audit.sources.BATCH", 16)
    await (await build(db_url))[0].dispose()
    index = next(idx for idx, value in await message_ids(db_url) if idx > 180 and value)
    await set_message_id(db_url, index, None)
    assert (await fails(db_url)).index == index
    engine = make_engine(db_url)
    try:
        event = json.loads(await entry_bytes(engine, 130))
        event["time"] = event["time"][:-2] + "9Z"
        async with engine.begin() as conn:
            await conn.execute(
                update(ledger_entries)
                .where(ledger_entries.c.idx == 130)
                .values(entry=LedgerEvent.parse(event).to_bytes())
            )
    finally:
        await engine.dispose()
    failure = await fails(db_url)
    assert str(failure).startswith("entry 130: leaf does not match checkpoint at size 150 (entries 100..149 changed")


async def test_deleted_row(db_url: str) -> None:
    engine, _ = await build(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(ledger_entries).where(ledger_entries.c.idx == 70))
    finally:
        await engine.dispose()
    assert str(await fails(db_url)) == "entry 70: missing (the source has no entry at this index)"


async def test_inserted_row(db_url: str) -> None:
    engine, _ = await build(db_url)
    try:
        extra = await entry_bytes(engine, 69)
        async with engine.begin() as conn:  # shift 70.. up by one (through negatives: the key is checked per row)
            await conn.execute(
                update(ledger_entries).where(ledger_entries.c.idx >= 70).values(idx=-ledger_entries.c.idx - 1)
            )
            await conn.execute(update(ledger_entries).where(ledger_entries.c.idx < 0).values(idx=-ledger_entries.c.idx))
            await conn.execute(
                insert(ledger_entries).values(idx=70, entry=extra, message_id=None, type="message.opened", time=NOW)
            )
    finally:
        await engine.dispose()
    failure = await fails(db_url)
    assert failure.index == 70 and str(failure).startswith("entry 70: ")


async def test_inserted_row_at_the_end(db_url: str) -> None:
    engine, _ = await build(db_url)
    try:
        extra = await entry_bytes(engine, SIZE - 1)
        message_id = json.loads(extra).get("message_id")  # the row's index as the ledger code would write it
        async with engine.begin() as conn:
            await conn.execute(
                insert(ledger_entries).values(
                    idx=SIZE, entry=extra, message_id=message_id, type="message.opened", time=NOW
                )
            )
    finally:
        await engine.dispose()
    assert str(await fails(db_url)).startswith(f"entry {SIZE}: beyond the stored tree head (ledger_head.size = {SIZE})")


async def test_reordered_rows(db_url: str) -> None:
    engine, _ = await build(db_url)
    try:
        await move(engine, 70, -1)
        await move(engine, 80, 70)
        await move(engine, -1, 80)
    finally:
        await engine.dispose()
    failure = await fails(db_url)
    assert str(failure).startswith("entry 70: leaf does not match checkpoint at size 100")


async def test_changed_entry_in_the_unsigned_tail(db_url: str) -> None:
    engine, _ = await build(db_url)
    try:
        await move(engine, 210, -1)
        await move(engine, 220, 210)
        await move(engine, -1, 220)
    finally:
        await engine.dispose()
    failure = await fails(db_url)
    assert str(failure).startswith(f"entry 210: leaf does not match the stored tree head (ledger_head, size {SIZE})")


# --- truncate and grow again, consistently ---------------------------------------------------------------------


async def truncate_and_regrow(url: str, keep: int, *, resign: bool) -> None:
    """What a careful operator would do: cut the log at ``keep``, fix nodes and head, append other events, and (if
    ``resign``) drop the old checkpoints and sign new ones with the real key."""
    engine = make_engine(url)
    log = EventLog(for_update=not is_sqlite(url))
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(ledger_entries).where(ledger_entries.c.idx >= keep))
            nodes = {(r.level, r.idx): bytes(r.hash) for r in await conn.execute(select(ledger_nodes))}
            for level, index in nodes:
                if (index + 1) << level > keep:
                    await conn.execute(
                        delete(ledger_nodes).where(ledger_nodes.c.level == level, ledger_nodes.c.idx == index)
                    )
            frontier = b"".join(nodes[node] for node in merkle.root_needs(keep))
            await conn.execute(update(ledger_head).where(ledger_head.c.id == 1).values(size=keep, frontier=frontier))
            if resign:
                await conn.execute(delete(cosignatures).where(cosignatures.c.size > keep))
                await conn.execute(delete(checkpoints).where(checkpoints.c.size > keep))
        # the same lives a microsecond later: every invariant still holds, only the tree tells
        other = [
            e.model_copy(update={"time": format_time(parse_time(e.time) + timedelta(microseconds=1))})
            for e in list(events(SIZE))[keep:]
        ]
        await append(engine, log, other, checkpoint=resign)
    finally:
        await engine.dispose()


async def test_truncated_and_regrown_against_the_signed_checkpoints(db_url: str) -> None:
    await (await build(db_url))[0].dispose()
    await truncate_and_regrow(db_url, 120, resign=False)
    failure = await fails(db_url)
    assert str(failure) == (
        "checkpoint at size 150: the entries give another root (entries 100..149 changed since it was signed)"
    )


async def test_truncated_regrown_and_resigned_against_the_state_file(db_url: str, tmp_path: Path) -> None:
    await (await build(db_url))[0].dispose()
    state = tmp_path / "state.json"
    await audit(db_url, state)  # an earlier run saw size 200
    await truncate_and_regrow(db_url, 120, resign=True)
    # every signature is genuine and the tree is consistent: only history tells
    await audit(db_url, None)
    failure = await fails(db_url, state)
    assert failure.size == 200
    assert "checkpoint at size 200: this auditor verified root" in str(failure)
    assert "the log was rewritten or forked" in str(failure)


async def test_a_first_audit_of_a_resigned_rewrite_sees_how_much_no_witness_vouches_for(
    db_url: str, tmp_path: Path
) -> None:
    """An auditor with no earlier run cannot tell a rewrite signed afresh from the original, but the witnesses'
    cosignatures, which the operator cannot make, stop where the rewrite starts: the summary says so, and
    --max-unwitnessed turns it into a failure."""
    await (await build(db_url))[0].dispose()
    # a policy failure, after everything verified: the state file still remembers what this run verified
    await fails(db_url, tmp_path / "strict.json", max_unwitnessed=29)
    assert json.loads((tmp_path / "strict.json").read_text())["logs"]["comity-ledger/ar.mj"]["size"] == 200
    report = await audit(db_url, tmp_path / "first.json")
    assert "witnessed    up to size 200 (comity-witness/au.ag: size 200 at 2026-11-18T" in report
    assert "30 entries after it no witness has cosigned" in report
    assert f"warning: no earlier run for comity-ledger/ar.mj in {tmp_path / 'first.json'}" in report
    assert "no earlier run" not in await audit(db_url, tmp_path / "first.json")  # the second run has one
    await truncate_and_regrow(db_url, 120, resign=True)
    engine = make_engine(db_url)
    try:  # the test helper cosigns with the witness's own key: an operator has no such key
        async with engine.begin() as conn:
            await conn.execute(delete(cosignatures).where(cosignatures.c.size > 120))
    finally:
        await engine.dispose()
    report = await audit(db_url, None)  # every signature genuine, the tree consistent
    assert "witnessed    up to size 100 (comity-witness/au.ag: size 100 at " in report
    assert "130 entries after it no witness has cosigned" in report
    failure = await fails(db_url, None, max_unwitnessed=129)
    assert failure.size == 100
    assert str(failure).startswith(
        "witnesses: 130 entries after size 100, the largest any witness cosigned, more than --max-unwitnessed 129"
    )
    await audit(db_url, None, max_unwitnessed=130)


async def test_deleting_the_newer_checkpoints_does_not_roll_the_state_file_back(db_url: str, tmp_path: Path) -> None:
    """The state file holds the largest checkpoint this auditor saw signed. An operator who deletes the checkpoints
    after size 50 (no key needed) must not make it forget size 200, and so cannot then rewrite entries 60.. and
    re-sign them: the run after the deletion fails, and so does every later one."""
    await (await build(db_url))[0].dispose()
    state = tmp_path / "state.json"
    await audit(db_url, state)  # size 200 seen
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(cosignatures).where(cosignatures.c.size > 50))
            await conn.execute(delete(checkpoints).where(checkpoints.c.size > 50))
    finally:
        await engine.dispose()
    failure = await fails(db_url, state)
    assert failure.size == 200
    assert str(failure).endswith(
        "the newest signed checkpoint the log now holds is the one at size 50: signed checkpoints were deleted"
    )
    assert json.loads(state.read_text())["logs"]["comity-ledger/ar.mj"]["size"] == 200
    await truncate_and_regrow(db_url, 60, resign=True)
    assert "this auditor verified root" in str(await fails(db_url, state))


async def test_a_state_file_never_shrinks(tmp_path: Path) -> None:
    state = AuditState(tmp_path / "state.json")
    state.remember("comity-ledger/ar.mj", Verified(200, b"\x01" * 32, "note 200", "t1"), "kid", 3)
    state.remember("comity-ledger/ar.mj", Verified(50, b"\x02" * 32, "note 50", "t2"), "kid", 3)
    assert state.last("comity-ledger/ar.mj") == Verified(200, b"\x01" * 32, "note 200", "t1")
    state.remember("comity-ledger/ar.mj", Verified(201, b"\x03" * 32, "note 201", "t3"), "kid", 3)
    assert state.last("comity-ledger/ar.mj") == Verified(201, b"\x03" * 32, "note 201", "t3")


async def test_no_checkpoint_at_all_is_said_plainly(db_url: str) -> None:
    """Without a state file an auditor cannot know what was signed before; what it verified against a signature,
    and what not, the summary says, with a warning when nothing is signed."""
    engine, _ = await build(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(cosignatures))
            await conn.execute(delete(checkpoints))
    finally:
        await engine.dispose()
    lines = await audit(db_url)
    assert f"{SIZE:,} entries after the newest checkpoint are not signed yet" in lines
    assert f"warning: no signed checkpoint: none of the {SIZE:,} entries is covered by a signature" in lines


async def test_a_deleted_tree_head_fails_the_audit(db_url: str) -> None:
    """The head row would have shown a row appended by SQL; deleting it too is itself the evidence."""
    engine, _ = await build(db_url)
    extra = await entry_bytes(engine, 5)
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(ledger_head))
            await conn.execute(
                insert(ledger_entries).values(idx=SIZE, entry=extra, message_id=None, type="message.opened", time=NOW)
            )
    finally:
        await engine.dispose()
    assert "the tree head row (ledger_head) is missing" in str(await fails(db_url))


async def test_a_text_idx_fails_the_audit_with_one_line(tmp_path: Path) -> None:
    """SQLite only: its table is not STRICT, so it keeps a text idx, which no ledger code writes (PostgreSQL's
    bigint column cannot hold one)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    engine, _ = await build(url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("UPDATE ledger_entries SET idx = 'zz' WHERE idx = 229")
    finally:
        await engine.dispose()
    assert "a row whose idx is not an integer" in str(await fails(url))


@pytest.mark.parametrize(
    ("sql", "verdict"),
    [
        ("UPDATE ledger_entries SET entry = 1.5 WHERE idx = 3", "entry 3: stored as float, not bytes"),
        # an integer n once became bytes(n), n zero bytes: memory exhaustion for a large n
        ("UPDATE ledger_entries SET entry = 1000000 WHERE idx = 3", "entry 3: stored as int, not bytes"),
        # text that is not UTF-8: the driver refused to decode it
        ("UPDATE ledger_entries SET entry = CAST(x'ff' AS TEXT) WHERE idx = 3", "entry 3: is not strict UTF-8 JSON"),
        (
            "UPDATE ledger_head SET size = -1, frontier = x''",
            "ledger_head: the stored size is not an integer >= 0 (-1)",
        ),
        ("UPDATE ledger_head SET size = 'abc'", "ledger_head: the stored size is not an integer >= 0 (str)"),
        ("UPDATE ledger_head SET frontier = 'abc'", "ledger_head: the stored frontier is not bytes (str)"),
        ("UPDATE ledger_head SET frontier = 64", "ledger_head: the stored frontier is not bytes (int)"),
        (
            "INSERT INTO checkpoints (size, note, created_at) VALUES ('x', 'n', '2026-11-28 07:40:00')",
            "checkpoints: a row whose size is not an integer (str)",
        ),
        (
            "UPDATE checkpoints SET size = 100.5 WHERE size = 100",
            "checkpoints: a row whose size is not an integer (100.5)",
        ),
        ("UPDATE checkpoints SET note = x'00' WHERE size = 100", "checkpoint at size 100: the stored note is not text"),
    ],
)
async def test_a_malformed_row_gets_a_one_line_verdict(tmp_path: Path, sql: str, verdict: str) -> None:
    """SQLite only (its tables keep any type in any column; PostgreSQL's columns cannot hold these): a value no
    ledger code writes is named, never an unexpected error, and an integer entry is not made into that many bytes."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    engine, _ = await build(url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()
    directory = tmp_path / "directory.jws"
    directory.write_text(sign_directory(KEYS.directory, KEYS.directory_key))
    key = tmp_path / "directory-key.jwk"
    key.write_text(json.dumps(public_jwk(KEYS.directory_key)))
    args = ["verify", "--database", url, "--directory", str(directory), "--directory-key", str(key)]
    result = await asyncio.to_thread(_cli, [*args, "--authority", "ar.mj", "--no-state", "--no-progress"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"comity: {verdict}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_truncated_below_what_the_auditor_saw(db_url: str, tmp_path: Path) -> None:
    await (await build(db_url))[0].dispose()
    state = tmp_path / "state.json"
    await audit(db_url, state)
    engine = make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(delete(ledger_entries).where(ledger_entries.c.idx >= 180))
            await conn.execute(delete(cosignatures).where(cosignatures.c.size > 180))
            await conn.execute(delete(checkpoints).where(checkpoints.c.size > 180))
            nodes = {(r.level, r.idx): bytes(r.hash) for r in await conn.execute(select(ledger_nodes))}
            frontier = b"".join(nodes[node] for node in merkle.root_needs(180))
            await conn.execute(update(ledger_head).where(ledger_head.c.id == 1).values(size=180, frontier=frontier))
    finally:
        await engine.dispose()
    assert "the log now holds only 180 entries: it was truncated" in str(await fails(db_url, state))


# --- forged checkpoints ------------------------------------------------------------------------------------------


async def test_checkpoint_signed_by_another_key(db_url: str) -> None:
    engine, log = await build(db_url)
    try:
        async with engine.begin() as conn:
            head = await log.head(conn)
            text = Checkpoint(ledger_origin("ar.mj"), head.size, head.root).to_text()
            forged = sign_note(text, [NoteSigner(ledger_origin("ar.mj"), generate_signing_key())])
            await conn.execute(insert(checkpoints).values(size=head.size, note=forged, created_at=NOW))
    finally:
        await engine.dispose()
    assert str(await fails(db_url)) == (
        f"checkpoint at size {SIZE}: signed note carries no valid signature from a trusted key"
    )


async def test_a_checkpoint_with_extension_lines_is_refused(db_url: str) -> None:
    """The format has no extension lines (docs/ledger.md): a note with one, even signed with the real key, claims
    something nothing checks."""
    engine, log = await build(db_url)
    try:
        async with engine.begin() as conn:
            head = await log.head(conn)
            text = Checkpoint(ledger_origin("ar.mj"), head.size, head.root, ("witnessed-by-everyone",)).to_text()
            await conn.execute(insert(checkpoints).values(size=head.size, note=sign(text), created_at=NOW))
    finally:
        await engine.dispose()
    assert str(await fails(db_url)) == (
        f"checkpoint at size {SIZE}: the signed note has extension lines, which this ledger's format has not"
    )


async def test_checkpoint_with_a_modified_root(db_url: str) -> None:
    engine, _ = await build(db_url)
    try:
        async with engine.begin() as conn:
            note = (await conn.execute(select(checkpoints.c.note).where(checkpoints.c.size == 100))).scalar_one()
            lines = note.split("\n")
            lines[2] = base64.b64encode(b"\x01" * 32).decode()
            await conn.execute(update(checkpoints).where(checkpoints.c.size == 100).values(note="\n".join(lines)))
    finally:
        await engine.dispose()
    assert str(await fails(db_url)).startswith("checkpoint at size 100: signature by comity-ledger/ar.mj (")


async def test_forged_cosignature(db_url: str) -> None:
    engine, _ = await build(db_url)
    try:
        async with engine.begin() as conn:
            line = (await conn.execute(select(cosignatures.c.line).where(cosignatures.c.size == 150))).scalar_one()
            name, blob = line.rsplit(" ", 1)
            raw = bytearray(base64.b64decode(blob))
            raw[-1] ^= 1
            await conn.execute(
                update(cosignatures)
                .where(cosignatures.c.size == 150)
                .values(line=f"{name} {base64.b64encode(bytes(raw)).decode()}")
            )
    finally:
        await engine.dispose()
    assert str(await fails(db_url)).startswith("checkpoint at size 150: signature by comity-witness/au.ag (")


async def test_correctly_signed_fork(db_url: str) -> None:
    """The operator signs, with its real key, a checkpoint of a tree the entries do not make."""
    engine, _ = await build(db_url)
    try:
        text = Checkpoint(ledger_origin("ar.mj"), SIZE, b"\x07" * 32).to_text()
        async with engine.begin() as conn:
            await conn.execute(insert(checkpoints).values(size=SIZE, note=sign(text), created_at=NOW))
    finally:
        await engine.dispose()
    assert str(await fails(db_url)) == (
        f"checkpoint at size {SIZE}: the entries give another root (entries 200..229 changed since it was signed)"
    )


# --- the command line --------------------------------------------------------------------------------------------


def _cli(args: list[str]) -> Any:
    from gateway.cli import main

    return CliRunner().invoke(main, ["audit", *args])


async def test_command_line_exit_codes(databases: DatabaseFactory, tmp_path: Path) -> None:
    url = await databases.new()
    await (await build(url))[0].dispose()
    directory = tmp_path / "directory.jws"
    directory.write_text(sign_directory(KEYS.directory, KEYS.directory_key))
    key = tmp_path / "directory-key.jwk"
    key.write_text(json.dumps(public_jwk(KEYS.directory_key)))
    args = ["verify", "--database", url, "--directory", str(directory), "--directory-key", str(key)]
    args += ["--authority", "ar.mj", "--state", str(tmp_path / "state.json"), "--no-progress"]
    ok = await asyncio.to_thread(_cli, args)
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("ok: comity-ledger/ar.mj from ")
    strict = await asyncio.to_thread(_cli, [*args, "--max-unwitnessed", "29"])
    assert strict.exit_code == 1 and strict.stderr.startswith("comity: witnesses: 30 entries after size 200"), strict
    assert (await asyncio.to_thread(_cli, [*args, "--max-unwitnessed", "30"])).exit_code == 0
    engine = make_engine(url)
    try:
        await move(engine, 70, -1)
        await move(engine, 80, 70)
        await move(engine, -1, 80)
    finally:
        await engine.dispose()
    bad = await asyncio.to_thread(_cli, args)
    assert bad.exit_code == 1
    assert bad.stderr.startswith("comity: entry 70: leaf does not match checkpoint at size 100 (entries 50..99 changed")
    assert len(bad.stderr.strip().splitlines()) == 1
    # the state file was not advanced by the failed run, and another authority's keys do not verify this log
    other = await asyncio.to_thread(_cli, [*args[:-5], "--authority", "au.ag", "--no-state", "--no-progress"])
    assert other.exit_code == 1 and "checkpoint at size 50" in other.stderr
