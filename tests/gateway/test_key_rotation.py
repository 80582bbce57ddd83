"""Keys over time. Rotating with ``comity keys rotate``: what was sealed to a retired key still opens, envelopes
sealed to the old key during the overlap are accepted and refused after it, and once the new directory is out,
senders seal to the new key. Signing keys out of their period: the receiver accepts nothing while its own is not
valid, and the sender records no receipt signed by a key not valid at its time (decision 71)."""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from click.testing import CliRunner
from sqlalchemy import delete, select

from config.directory import load_authority_entry
from crypto.envelope import read_routing_header
from crypto.keys import AuthorityKeys, generate_signing_key, key_id, public_jwk, tls_key_passwords
from crypto.receipts import verify_refusal
from crypto.tls import certificate_pin, key_pem_password
from gateway.cli import main
from gateway.cli.common import CommandError
from gateway.cli.keys import _locked, keys_in_use
from gateway.context import DIRECTORY_FACTS, SIGNING_EARLIEST, defer_new_signing_keys
from gateway.provision import comity
from gateway.reading import decrypt_row
from gateway.tls import client_context
from protocol.timefmt import format_time, parse_time
from store.facts import read_fact
from store.messages import MessageRow
from store.tables import messages, settings_state
from tests.gateway.conftest import PASSPHRASE, Pair, Side, ledger
from tests.gateway.test_exchange import REQUEST, wait_for


def run_keys(side: Side, *args: str) -> str:
    return run_comity(side, "keys", *args)


def run_comity(side: Side, *args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--config", str(side.provisioned.config)])
    assert result.exit_code == 0, result.output
    return result.output


async def send_and_open(pair: Pair, text: str) -> str:
    """ar sends a request; au's supervisor opens it; return its id."""
    content = {"subject": "Bank records of a company", "text": text}
    status, body = await pair.ar.call("POST", "/v1/messages", json={**REQUEST, "content": content})
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "delivered")
    status, opened = await pair.au.call("POST", f"/v1/messages/{body['id']}/open", json={"purpose": "review"})
    assert status == 200 and opened["content"]["text"] == text
    return str(body["id"])


async def sealed_to(side: Side, message_id: str) -> str:
    """The kid of the encryption key the stored envelope is sealed to."""
    async with side.gw.engine.connect() as conn:
        sealed = (await conn.execute(select(messages.c.sealed).where(messages.c.id == message_id))).scalar_one()
    return read_routing_header(bytes(sealed)).kid


def publish(pair: Pair, entry_path: Path, to: tuple[Side, ...], days: int = 90, serial: int = 2) -> None:
    """The directory operator's next directory (``serial``, from the one before it) with ``entry_path`` in it,
    installed on ``to``."""
    operator = pair.workdir / "work" / "directory-operator"
    draft, signed = operator / f"draft-{serial}.json", operator / f"directory-{serial}.jws"
    public = operator / "directory-key.sealed.pub.jwk"
    before = operator / ("directory.jws" if serial == 2 else f"directory-{serial - 1}.jws")
    comity(
        "directory",
        "new",
        "--out",
        str(draft),
        "--expires-in-days",
        str(days),
        "--from",
        str(before),
        "--key",
        str(public),
    )
    comity("directory", "add", str(draft), str(entry_path), "--replace")
    comity("directory", "sign", str(draft), "--key", str(operator / "directory-key.sealed"), "--out", str(signed))
    for side in to:
        shutil.copyfile(signed, side.provisioned.data_dir / "directory.jws")


async def restart(side: Side) -> None:
    await side.stop()
    await side.start()


@pytest.fixture(autouse=True)
def passphrases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMITY_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("COMITY_DIRECTORY_PASSPHRASE", PASSPHRASE)


async def test_rotating_the_encryption_key(pair: Pair) -> None:
    before = await send_and_open(pair, "sealed to the first key")
    old_kid = await sealed_to(pair.ar, before)
    expires = parse_time(pair.au.gw.directory.expires_at)  # the installed directory, which counterparts hold
    entry_path = pair.au.provisioned.data_dir / "entry.json"

    await pair.au.stop()
    output = await asyncio.to_thread(run_keys, pair.au, "rotate", "encryption", "--overlap-days", "7")
    assert f"retired {old_kid}" in output
    assert (pair.au.provisioned.data_dir / "keys.sealed").stat().st_mode & 0o777 == 0o600
    listed = await asyncio.to_thread(run_keys, pair.au, "list")
    assert f"encryption  retired  {old_kid}" in listed
    new_kid = next(line.split()[-1] for line in listed.splitlines() if line.startswith("encryption  current"))
    assert new_kid != old_kid and '"d"' not in listed
    entry = load_authority_entry(entry_path.read_bytes())
    enc = {key.jwk["kid"]: key for key in entry.keys if key.use == "enc"}
    assert set(enc) == {old_kid, new_kid} and enc[new_kid].not_after is None
    # the old key stays valid 7 days, or as long as the installed directory if longer (here: 90 days)
    cutoff = max(parse_time(enc[new_kid].not_before) + timedelta(days=7), expires)
    assert parse_time(enc[old_kid].not_after or "") == cutoff == expires
    await pair.au.start()
    assert set(pair.au.gw.recipient_keys()) == {old_kid, new_kid}

    # what was received before still opens, and during the overlap ar (old directory) still seals to the old key
    status, opened = await pair.au.call("POST", f"/v1/messages/{before}/open", json={"purpose": "review"})
    assert status == 200 and opened["content"]["text"] == "sealed to the first key"
    during = await send_and_open(pair, "sealed to the old key after the rotation")
    assert await sealed_to(pair.ar, during) == old_kid

    # the directory operator publishes the new entry; ar now seals to the new key
    await asyncio.to_thread(publish, pair, entry_path, (pair.ar, pair.au))
    await restart(pair.ar)
    await restart(pair.au)
    after = await send_and_open(pair, "sealed to the new key")
    assert await sealed_to(pair.ar, after) == new_kid
    # an envelope may be sealed to the old key while the directory lists it, never after
    now = pair.au.gw.clock()
    assert set(pair.au.gw.receiving_keys(now)) == {old_kid, new_kid}
    assert set(pair.au.gw.receiving_keys(expires - timedelta(seconds=1))) == {old_kid, new_kid}
    assert set(pair.au.gw.receiving_keys(expires)) == {new_kid}
    assert set(pair.au.gw.recipient_keys()) == {old_kid, new_kid}  # what was stored still opens
    for message_id in (before, during):  # and everything before it still opens
        status, _ = await pair.au.call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "review"})
        assert status == 200


async def test_rotating_the_archive_key_keeps_what_was_sent_readable(pair: Pair) -> None:
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202
    await wait_for(pair.ar, body["id"], "delivered")
    entry_before = (pair.ar.provisioned.data_dir / "entry.json").read_bytes()
    await pair.ar.stop()
    await asyncio.to_thread(run_keys, pair.ar, "rotate", "archive")
    assert (pair.ar.provisioned.data_dir / "entry.json").read_bytes() == entry_before  # never published
    await pair.ar.start()
    assert len(pair.ar.gw.archive_keys()) == 2
    status, opened = await pair.ar.call("POST", f"/v1/messages/{body['id']}/open", json={})
    assert status == 200 and opened["content"] == REQUEST["content"]
    status, later = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    await wait_for(pair.ar, later["id"], "delivered")
    status, opened = await pair.ar.call("POST", f"/v1/messages/{later['id']}/open", json={})
    assert status == 200 and opened["content"] == REQUEST["content"]


def test_a_wrong_passphrase_changes_nothing(pair: Pair, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys_file = pair.au.provisioned.data_dir / "keys.sealed"
    entry_file = pair.au.provisioned.data_dir / "entry.json"
    before = (keys_file.read_bytes(), entry_file.read_bytes())
    monkeypatch.setenv("COMITY_PASSPHRASE", "not the passphrase")
    result = CliRunner().invoke(main, ["keys", "rotate", "encryption", "--config", str(pair.au.provisioned.config)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == "comity: wrong passphrase or corrupt key file"
    assert (keys_file.read_bytes(), entry_file.read_bytes()) == before
    assert keys_file.stat().st_mode & 0o777 == 0o600


def test_no_rotation_while_a_gateway_serves_with_the_keys(pair: Pair) -> None:
    """A running gateway keeps the keys and the TLS password it read at start: 'comity serve' holds the key file's
    lock shared, and a rotation, which takes it exclusively, refuses and writes nothing."""
    data_dir = pair.au.provisioned.data_dir
    files = [data_dir / "keys.sealed", data_dir / "entry.json", data_dir / "tls" / "key.pem"]
    before = [path.read_bytes() for path in files]
    with keys_in_use(files[0]), keys_in_use(files[0]):  # two replicas on this host
        result = CliRunner().invoke(main, ["keys", "rotate", "signing", "--config", str(pair.au.provisioned.config)])
    assert result.exit_code == 1 and "a gateway is serving with these keys" in result.output, result.output
    assert [path.read_bytes() for path in files] == before
    run_keys(pair.au, "rotate", "archive")  # once it has stopped


def test_a_rotation_run_again_after_a_crash_between_its_writes_publishes_a_consistent_entry(pair: Pair) -> None:
    """keys.sealed is written first: if the entry was not, the next rotation still closes every old key's period."""
    entry_path = pair.au.provisioned.data_dir / "entry.json"
    first_entry = entry_path.read_bytes()
    old_kid = next(key.kid for key in load_authority_entry(first_entry).keys if key.use == "enc")
    run_keys(pair.au, "rotate", "encryption")
    entry_path.write_bytes(first_entry)  # as if the process died after writing keys.sealed
    result = CliRunner().invoke(main, ["keys", "rotate", "encryption", "--config", str(pair.au.provisioned.config)])
    assert result.exit_code == 0, result.output
    assert "did not list the current encryption key" in result.output
    listed = run_keys(pair.au, "list")
    current = next(line.split()[-1] for line in listed.splitlines() if line.startswith("encryption  current"))
    assert listed.count("encryption  retired") == 2  # the key never published is kept too
    enc = {key.kid: key for key in load_authority_entry(entry_path.read_bytes()).keys if key.use == "enc"}
    assert set(enc) == {old_kid, current}
    assert enc[old_kid].not_after is not None and enc[current].not_after is None


async def test_after_the_overlap_an_envelope_sealed_to_the_old_key_is_refused(pair: Pair) -> None:
    entry_path = pair.au.provisioned.data_dir / "entry.json"
    await pair.au.stop()
    await asyncio.to_thread(run_keys, pair.au, "rotate", "encryption", "--overlap-days", "1")
    old_kid = key_id(pair.ar.gw.peer("au.ag").encryption_key_at(pair.ar.gw.clock()))
    # au installs the new directory (valid 200 days); ar still holds the old one and seals to the old key
    await asyncio.to_thread(publish, pair, entry_path, (pair.au,), 200)
    await pair.au.start(max_message_age_seconds=365 * 86400)  # only the key may refuse what ar sends below
    enc = {key.kid: key for key in load_authority_entry(entry_path.read_bytes()).keys if key.use == "enc"}
    cutoff = parse_time(enc[old_kid].not_after or "")
    real_clock = pair.au.gw.clock
    pair.au.gw.clock = lambda: real_clock() + (cutoff - real_clock()) + timedelta(days=1)
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202, body
    await wait_for(pair.ar, body["id"], "refused")
    failed = [e for e in await ledger(pair.ar.gw) if e["type"] == "message.delivery_failed"]
    assert [(e["message_id"], e["reason"]) for e in failed] == [(body["id"], "wrong-recipient")]
    async with pair.ar.gw.engine.connect() as conn:  # the signed refusal is kept beside the message (decision 98)
        token = (await conn.execute(select(messages.c.receipt).where(messages.c.id == body["id"]))).scalar_one()
    refusal = verify_refusal(token, pair.ar.gw.peer("au.ag").all_signing_keys())
    assert (refusal.message_id, refusal.code, refusal.from_) == (body["id"], "wrong-recipient", "au.ag")
    assert await sealed_to(pair.ar, body["id"]) == old_kid
    async with pair.au.gw.engine.connect() as conn:
        stored = (await conn.execute(select(messages.c.id).where(messages.c.id == body["id"]))).all()
    assert stored == []


def _kid_of(compact_jws: str) -> str:
    header = json.loads(base64.urlsafe_b64decode(compact_jws.split(".")[0] + "=="))
    return str(header["kid"])


async def receipted_by(sender: Side, message_id: str) -> str:
    """The kid of the key that signed the receipt ``sender`` holds for ``message_id``."""
    async with sender.gw.engine.connect() as conn:
        receipt = (await conn.execute(select(messages.c.receipt).where(messages.c.id == message_id))).scalar_one()
    return _kid_of(receipt)


async def shift_clocks(pair: Pair, to: datetime) -> None:
    """Both gateways' clocks (not TLS's) run from ``to`` on; each officer gets a token valid then."""
    offset = to - pair.au.gw.clock()
    for side, user in ((pair.ar, "alice"), (pair.au, "bruce")):
        real = side.gw.clock
        side.gw.clock = lambda real=real: real() + offset  # type: ignore[misc]
        output = await asyncio.to_thread(run_comity, side, "user", "token", user, "--days", "366")
        side.token = output.strip().splitlines()[-1]
        assert side.session is not None
        await side.session.close()
        side.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {side.token}"})


async def test_rotating_the_signing_key(pair: Pair) -> None:
    """The new signing key takes over when the installed directory expires (counterparts verify us under the one
    they hold until then), plus the clock-skew margin; the TLS key is re-encrypted under the new key's password and
    its certificate, so the pin in the directory, stays."""
    old_kid = key_id(pair.au.gw.keys.signing)
    before = await send_and_open(pair, "receipted under the first key")
    assert await receipted_by(pair.ar, before) == old_kid
    expires = parse_time(pair.au.gw.directory.expires_at)
    data_dir = pair.au.provisioned.data_dir
    cert_before = (data_dir / "tls" / "cert.pem").read_bytes()
    pem_before = (data_dir / "tls" / "key.pem").read_bytes()

    await pair.au.stop()
    output = await asyncio.to_thread(run_keys, pair.au, "rotate", "signing")
    assert f"retired {old_kid}" in output and f"takes over at {format_time(expires)}" in output
    listed = await asyncio.to_thread(run_keys, pair.au, "list")
    new_kid = next(line.split()[-1] for line in listed.splitlines() if line.startswith("signing     current"))
    assert f"signing     retired  {old_kid}" in listed and new_kid != old_kid
    entry_path = data_dir / "entry.json"
    sig = {key.kid: key for key in load_authority_entry(entry_path.read_bytes()).keys if key.use == "sig"}
    assert set(sig) == {old_kid, new_kid} and sig[new_kid].not_after is None
    assert parse_time(sig[new_kid].not_before) == expires
    # the old key stays valid as long as an envelope it signed just before may wait in an outbox, and some skew
    assert parse_time(sig[old_kid].not_after or "") == expires + timedelta(days=31)
    assert (data_dir / "tls" / "cert.pem").read_bytes() == cert_before
    assert (data_dir / "tls" / "key.pem").read_bytes() != pem_before
    assert (data_dir / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600

    # not yet published: au holds both keys and signs with the old one, which ar's directory lists
    await pair.au.start()
    held = AuthorityKeys.unseal((data_dir / "keys.sealed").read_bytes(), PASSPHRASE.encode())
    assert pair.au.gw.tls_password == tls_key_passwords(held)[0]  # the PEM is under the new key's password
    during = await send_and_open(pair, "still the first key: the new one is not published")
    assert await receipted_by(pair.ar, during) == old_kid

    # published, and installed on both: still the old key until the new one is valid, with the skew margin
    await asyncio.to_thread(publish, pair, entry_path, (pair.ar, pair.au), 365)
    await restart(pair.ar)
    await restart(pair.au)
    margin = timedelta(seconds=pair.au.gw.settings.max_clock_skew_seconds)
    assert key_id(pair.au.gw.signing_key(expires + margin - timedelta(seconds=1))) == old_kid
    assert key_id(pair.au.gw.signing_key(expires + margin)) == new_kid
    published = await send_and_open(pair, "the old key until the new one's time")
    assert await receipted_by(pair.ar, published) == old_kid

    await shift_clocks(pair, expires + margin + timedelta(minutes=1))
    after = await send_and_open(pair, "under the new key")
    assert await receipted_by(pair.ar, after) == new_kid
    # au's own envelopes too: ar verifies them under the new key
    status, body = await pair.au.call("POST", "/v1/messages", json={**REQUEST, "to": "ar.mj"})
    assert status == 202, body
    await wait_for(pair.au, body["id"], "delivered")
    async with pair.ar.gw.engine.connect() as conn:
        row = (await conn.execute(select(messages).where(messages.c.id == body["id"]))).one()
    assert _kid_of(decrypt_row(pair.ar.gw, MessageRow.from_row(row)).signed) == new_kid


async def test_a_signing_key_published_after_a_directory_without_it_waits_for_that_one(pair: Pair) -> None:
    """The rotation fixed the switch at the then-installed directory's expiry, but the operator issued another
    directory without the new key (expiring later) before publishing it: counterparts may hold that one until it
    expires. The gateway defers the new key to then while the old one can still sign, logs the lateness, and signs
    with the new key only when no other key can."""
    data_dir = pair.au.provisioned.data_dir
    entry_path = data_dir / "entry.json"
    old_entry = pair.workdir / "entry-before-rotation.json"
    old_entry.write_bytes(entry_path.read_bytes())
    old_kid, switch = key_id(pair.au.gw.keys.signing), parse_time(pair.au.gw.directory.expires_at)
    await pair.au.stop()
    await asyncio.to_thread(run_keys, pair.au, "rotate", "signing")
    new_kid = key_id(AuthorityKeys.unseal((data_dir / "keys.sealed").read_bytes(), PASSPHRASE.encode()).signing)

    await asyncio.to_thread(publish, pair, old_entry, (pair.au,), 200)  # serial 2: without the new key
    await pair.au.start()
    between = parse_time(pair.au.gw.directory.expires_at)
    await pair.au.stop()
    await asyncio.to_thread(publish, pair, entry_path, (pair.au,), 365, 3)  # serial 3: with it
    with structlog.testing.capture_logs() as logged:
        await pair.au.start()
    late = [line for line in logged if line["event"] == "signing_key_published_late"]
    assert [(line["kid"], line["log_level"]) for line in late] == [(new_kid, "error")]

    margin = timedelta(seconds=pair.au.gw.settings.max_clock_skew_seconds)
    assert pair.au.gw.signing_earliest == {new_kid: between}
    assert key_id(pair.au.gw.signing_key(switch + margin + timedelta(minutes=1))) == old_kid  # deferred
    old_end = switch + timedelta(days=31)  # the old key's not_after: after it, only the new key can sign
    assert key_id(pair.au.gw.signing_key(old_end + timedelta(minutes=1))) == new_kid
    assert key_id(pair.au.gw.signing_key(between + margin)) == new_kid
    # a deferral that ends while the old key is still valid: the new key takes over a skew margin after it
    ends = switch + timedelta(days=10)
    pair.au.gw.signing_earliest = {new_kid: ends}
    assert key_id(pair.au.gw.signing_key(ends + margin - timedelta(seconds=1))) == old_kid
    assert key_id(pair.au.gw.signing_key(ends + margin)) == new_kid

    # the next directory changes nothing about the key: no deferral added, nothing logged again
    await pair.au.stop()
    await asyncio.to_thread(publish, pair, entry_path, (pair.au,), 365, 4)
    with structlog.testing.capture_logs() as logged:
        await pair.au.start()
    assert not [line for line in logged if line["event"] == "signing_key_published_late"]
    assert pair.au.gw.signing_earliest == {new_kid: between}


async def test_a_signing_rotation_interrupted_then_run_again(pair: Pair) -> None:
    """keys.sealed is written first: if the TLS key was not re-encrypted (a crash between the writes), the gateway
    opens it with the retired signing key's password and serves as before, and the rotation can be run again. Run
    twice before the entry is published, both new keys start together: the newer one signs. Ended signing keys stay
    in the entry (what they signed is verified under it)."""
    data_dir = pair.au.provisioned.data_dir
    pem, entry_path = data_dir / "tls" / "key.pem", data_dir / "entry.json"
    first_kid = key_id(pair.au.gw.keys.signing)
    old_pem = pem.read_bytes()
    await pair.au.stop()
    await asyncio.to_thread(run_keys, pair.au, "rotate", "signing")
    pem.write_bytes(old_pem)  # as if the last write had not happened
    await pair.au.start()
    message_id = await send_and_open(pair, "served with the TLS key under the retired key's password")
    assert await receipted_by(pair.ar, message_id) == first_kid  # the first key signs still

    # an ended signing key in the entry (as if from long ago), then the rotation again
    entry = json.loads(entry_path.read_bytes())
    ended = {**entry["keys"][0], "jwk": public_jwk(generate_signing_key()), "not_after": "2026-01-01T00:00:00.000000Z"}
    ended["not_before"] = "2025-01-01T00:00:00.000000Z"
    entry["keys"].append({**ended, "use": "sig"})
    entry_path.write_text(json.dumps(entry))
    await pair.au.stop()
    await asyncio.to_thread(run_keys, pair.au, "rotate", "signing")
    held = AuthorityKeys.unseal((data_dir / "keys.sealed").read_bytes(), PASSPHRASE.encode())
    assert key_pem_password(pem.read_bytes(), tls_key_passwords(held)) == tls_key_passwords(held)[0]
    sig = {key.kid: key for key in load_authority_entry(entry_path.read_bytes()).keys if key.use == "sig"}
    assert ended["jwk"]["kid"] in sig and len(sig) == 4 and len(held.signing_keys()) == 3

    await asyncio.to_thread(publish, pair, entry_path, (pair.ar, pair.au), 365)
    await restart(pair.ar)
    await pair.au.start()
    starts = {sig[kid].not_before for kid in held.signing_keys() if kid != first_kid}
    assert len(starts) == 1  # the two new keys start together
    takes_over = parse_time(starts.pop()) + timedelta(seconds=pair.au.gw.settings.max_clock_skew_seconds)
    assert key_id(pair.au.gw.signing_key(takes_over)) == key_id(held.signing)  # the newest of the two
    assert key_id(pair.au.gw.signing_key(pair.au.gw.clock())) == first_kid


async def _au_signing_key_from_tomorrow(pair: Pair) -> None:
    """au's directory entry says its signing key is valid only from tomorrow (installed on both, restarted)."""
    entry_path = pair.au.provisioned.data_dir / "entry.json"
    entry = json.loads(entry_path.read_bytes())
    tomorrow = format_time(pair.au.gw.clock() + timedelta(days=1))
    entry["keys"] = [{**key, "not_before": tomorrow} if key["use"] == "sig" else key for key in entry["keys"]]
    entry_path.write_text(json.dumps(entry))
    await pair.ar.stop()
    await pair.au.stop()
    await asyncio.to_thread(publish, pair, entry_path, (pair.ar, pair.au))
    await pair.ar.start(outbox_initial_backoff=0.05, outbox_max_backoff=0.2)
    await pair.au.start()


async def _fails_twice_undelivered(pair: Pair) -> str:
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202, body
    failures = pair.ar.gw.metrics.delivery_failures.labels(peer="au.ag")
    deadline = asyncio.get_running_loop().time() + 20
    while failures._value.get() < 2:
        assert asyncio.get_running_loop().time() < deadline, "no failed delivery"
        await asyncio.sleep(0.05)
    status, message = await pair.ar.call("GET", f"/v1/messages/{body['id']}")
    assert status == 200 and message["state"] != "delivered"
    assert not [e for e in await ledger(pair.ar.gw) if e["type"] == "message.receipt_recorded"]
    return str(body["id"])


async def test_a_gateway_whose_signing_key_is_not_valid_accepts_nothing_for_now(pair: Pair) -> None:
    """Its receipts would be refused by the sender and stored for every redelivery: it refuses (not-ready, which
    the sender retries) and stores nothing until its directory entry and its key agree."""
    await _au_signing_key_from_tomorrow(pair)
    message_id = await _fails_twice_undelivered(pair)
    async with pair.au.gw.engine.connect() as conn:
        assert (await conn.execute(select(messages.c.id).where(messages.c.id == message_id))).all() == []


async def test_a_receipt_signed_by_a_key_not_valid_at_its_time_is_not_recorded(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender's own check (decision 71), with the receiver's check above switched off: a receipt signed by a
    key the directory says is not valid at its received_at is refused and the delivery retried, where before any
    listed key was accepted."""
    await _au_signing_key_from_tomorrow(pair)
    monkeypatch.setattr(pair.au.gw, "signing_key_valid", lambda when: True)
    await _fails_twice_undelivered(pair)


def test_a_signing_key_is_deferred_past_the_directory_before_only_if_that_one_did_not_list_it() -> None:
    prior = {"expires_at": "2027-03-01T00:00:00.000000Z", "signing": ["old"]}
    assert defer_new_signing_keys(None, ["old", "new"], {}) == {}  # the first directory: nothing before it
    assert defer_new_signing_keys(prior, ["old", "new"], {}) == {"new": prior["expires_at"]}
    # a directory that did not list us at all: no one could have reached us with it
    assert defer_new_signing_keys({**prior, "signing": None}, ["old", "new"], {}) == {}
    # a deferral only grows: an earlier, longer one stays
    longer = {"new": "2027-06-01T00:00:00.000000Z"}
    assert defer_new_signing_keys(prior, ["new"], longer) == longer


async def test_a_gateway_upgraded_from_before_the_directory_facts_records_them_at_start(pair: Pair) -> None:
    """Directories installed by an earlier version left no facts: the next start writes them for the directory in
    use, so that the next install can defer what it adds."""
    async with pair.au.gw.engine.begin() as conn:
        await conn.execute(delete(settings_state).where(settings_state.c.key.in_([DIRECTORY_FACTS, SIGNING_EARLIEST])))
    await restart(pair.au)
    async with pair.au.gw.engine.connect() as conn:
        facts = await read_fact(conn, DIRECTORY_FACTS)
    assert facts == {"expires_at": pair.au.gw.directory.expires_at, "signing": [key_id(pair.au.gw.keys.signing)]}


def test_serving_keys_from_a_read_only_directory_goes_on_without_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only secrets mount: 'comity serve' cannot make the lock file beside the keys, and serves without it
    (warning once); any other failure to open the lock file is still an error."""
    keys_file = tmp_path / "keys.sealed"
    lock = tmp_path / ".keys.sealed.lock"
    real_open = os.open

    def read_only(code: int) -> Callable[..., int]:
        def opener(path: Any, flags: int, *args: Any) -> int:
            if Path(path) == lock and flags & os.O_CREAT:  # cannot be made; reading one that is not there fails anyway
                raise OSError(code, os.strerror(code), str(path))
            return real_open(path, flags, *args)

        return opener

    for code in (errno.EROFS, errno.EACCES, errno.EPERM):
        monkeypatch.setattr(os, "open", read_only(code))
        with structlog.testing.capture_logs() as logs, keys_in_use(keys_file):
            pass
        assert [entry["event"] for entry in logs] == ["keys_lock_unavailable"]
        assert logs[0]["error"] == errno.errorcode[code]
    monkeypatch.setattr(os, "open", read_only(errno.EIO))
    with pytest.raises(OSError, match="Input/output error"), keys_in_use(keys_file):
        pass


def test_a_lock_file_another_user_made_still_keeps_a_rotation_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """root once rotated (the lock file is root's); the gateway's user may not write it, but locks it through a
    read-only descriptor: a rotation while it serves is refused. It used to serve unlocked on EACCES."""
    keys_file = tmp_path / "keys.sealed"
    lock = tmp_path / ".keys.sealed.lock"
    lock.write_bytes(b"")
    real_open = os.open

    def not_ours(path: Any, flags: int, *args: Any) -> int:
        if Path(path) == lock and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", not_ours)
    with structlog.testing.capture_logs() as logs, keys_in_use(keys_file):
        assert logs == []
        monkeypatch.setattr(os, "open", real_open)
        with pytest.raises(CommandError, match="is held"), _locked(keys_file):
            pass


def test_serving_keys_from_an_immutable_directory(tmp_path: Path) -> None:
    mount = tmp_path / "ro-secrets"
    mount.mkdir()
    (mount / "keys.sealed").write_bytes(b"sealed")
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(mount)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here (needs root on a file system that has it)")
    try:
        with structlog.testing.capture_logs() as logs, keys_in_use(mount / "keys.sealed"):
            pass
        assert [entry["event"] for entry in logs] == ["keys_lock_unavailable"]
    finally:
        subprocess.run(["chattr", "-i", str(mount)], check=True)


async def test_what_was_received_stays_readable_when_a_later_directory_drops_its_key_or_its_sender(
    pair: Pair,
) -> None:
    """A stored envelope is verified again when it is opened. Against the directory installed now alone, a serial
    that replaced the sender's signing key (the only way to revoke one, security.md section 2), or no longer lists
    the sender at all, made everything received before unreadable: 401 unknown-key, 404 unknown-authority. The
    keys every directory installed here listed are remembered (decision 152)."""
    from config.directory_model import Directory, _parse

    message_id = await send_and_open(pair, "verified and receipted under the first key")
    entry = load_authority_entry((pair.ar.provisioned.data_dir / "entry.json").read_bytes()).to_json()
    entry["keys"] = [key for key in entry["keys"] if key["use"] != "sig"] + [
        {
            "use": "sig",
            "jwk": public_jwk(generate_signing_key()),
            "not_before": format_time(pair.au.gw.clock()),
            "not_after": None,
        }
    ]
    path = pair.workdir / "ar-entry-2.json"
    path.write_text(json.dumps(entry))
    await asyncio.to_thread(publish, pair, path, (pair.au,), 90)
    await restart(pair.au)
    assert pair.au.gw.directory.serial == 2
    assert (
        pair.au.gw.directory.authority("ar.mj")
        .all_signing_keys()
        .keys()
        .isdisjoint(pair.ar.gw.own_signing_keys().keys())
    )
    status, body = await pair.au.call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "review"})
    assert status == 200 and body["content"]["text"] == "verified and receipted under the first key", body

    directory = pair.au.gw.directory.to_json()  # a later serial without ar.mj at all, as a restart would install it
    directory["authorities"] = [entry for entry in directory["authorities"] if entry["id"] != "ar.mj"]
    pair.au.gw.directory = _parse(Directory, directory)
    status, body = await pair.au.call("POST", f"/v1/messages/{message_id}/open", json={"purpose": "review"})
    assert status == 200, body
    async with pair.au.gw.engine.connect() as conn:  # what is remembered: public keys, by peer
        remembered = await read_fact(conn, "peer_signing_keys:ar.mj")
    assert set(pair.ar.gw.own_signing_keys()) < set(remembered) and all("d" not in jwk for jwk in remembered.values())


async def _presented_pin(client: Side, server: Side) -> str:
    """The pin of the certificate ``server`` presents to ``client``'s outbox context (its installed directory)."""
    settings, gw = client.gw.settings, client.gw
    context = client_context(
        gw.peer(server.gw.authority_id), str(settings.tls_cert_path), str(settings.tls_key_path), gw.tls_password
    )
    _, writer = await asyncio.open_connection("127.0.0.1", server.provisioned.federation_port, ssl=context)
    try:
        return certificate_pin(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
    finally:
        writer.close()


async def test_replacing_the_tls_certificate_without_a_break(pair: Pair) -> None:
    settings = pair.au.gw.settings
    entry_path = settings.data_dir / "entry.json"
    cert_next = settings.tls_cert_path.with_name("cert.next.pem")
    old_pin = certificate_pin(settings.tls_cert_path.read_bytes())

    # prepared while au serves: the next certificate beside the current one, listed in the entry as its next
    output = await asyncio.to_thread(run_keys, pair.au, "rotate-tls")
    new_pin = certificate_pin(cert_next.read_bytes())
    assert new_pin in output and new_pin != old_pin
    assert cert_next.with_name("key.next.pem").stat().st_mode & 0o777 == 0o600
    assert load_authority_entry(entry_path.read_bytes()).tls_pins == (old_pin, new_pin)
    again = CliRunner().invoke(main, ["keys", "rotate-tls", "--config", str(pair.au.provisioned.config)])
    assert again.exit_code == 1 and "a rollover is prepared already" in again.stderr

    # activating before the installed directory pins it is refused, and writes nothing
    await pair.au.stop()
    early = CliRunner().invoke(main, ["keys", "rotate-tls", "--activate", "--config", str(pair.au.provisioned.config)])
    assert early.exit_code == 1 and "does not pin the next certificate" in early.stderr
    assert certificate_pin(settings.tls_cert_path.read_bytes()) == old_pin and cert_next.exists()

    # the directory operator publishes the entry; with it installed, ar accepts either certificate of au's
    await asyncio.to_thread(publish, pair, entry_path, (pair.ar, pair.au))
    await pair.au.start()
    await restart(pair.ar)
    assert await _presented_pin(pair.ar, pair.au) == old_pin
    await send_and_open(pair, "before the switch")

    await pair.au.stop()
    output = await asyncio.to_thread(run_keys, pair.au, "rotate-tls", "--activate")
    assert f"TLS certificate {new_pin} in place of {old_pin}" in output
    assert certificate_pin(settings.tls_cert_path.read_bytes()) == new_pin and not cert_next.exists()
    assert load_authority_entry(entry_path.read_bytes()).tls_pins == (new_pin,)
    await pair.au.start()

    # au now presents the new certificate; ar, which never restarted since, delivers to it and takes au's deliveries
    assert await _presented_pin(pair.ar, pair.au) == new_pin
    await send_and_open(pair, "after the switch")
    status, body = await pair.au.call("POST", "/v1/messages", json={**REQUEST, "to": "ar.mj"})
    assert status == 202, body
    await wait_for(pair.au, body["id"], "delivered")
