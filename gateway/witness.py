"""Cross-witnessing: every receipt carries the counterpart's latest signed checkpoint; we check it against the last
one we hold from that counterpart, with a consistency proof fetched from it, remember it, and return a C2SP
tlog-cosignature that the counterpart keeps beside its checkpoint. An operator who rewrites or forks its ledger is
caught by any counterpart it exchanges with.

Witnessing runs beside the message flow, never in it: each peer has at most one check in flight, and checkpoints
that arrive meanwhile coalesce into the newest one. An inconsistency raises an alarm: a ledger event, an error log
line, a metric, and a block on the peer (no sending, no receiving) until an operator clears it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from joserfc.jwk import OKPKey

from crypto.errors import CryptoError
from crypto.note import CosignatureVerifier, NoteVerifier, open_checkpoint
from gateway.audit.entries import EntryError, parse_entry
from gateway.committer import Finish, Tx, done
from gateway.context import Gateway
from gateway.limits import read_capped
from gateway.logs import get_logger
from gateway.loops import stop_if_cancelled
from protocol.checkpoint import Checkpoint, CheckpointError, check_ledger_checkpoint, ledger_origin
from protocol.errors import ComityError, InvalidMessage, error_code
from protocol.events import EventType
from protocol.merkle import EMPTY_ROOT, MerkleError, leaf_hash, verify_consistency, verify_inclusion
from protocol.receipts import Receipt
from protocol.timefmt import parse_time
from store.ledger import PeerCheckpoint, WitnessState
from store.messages import Messages

__all__ = [
    "CONSISTENCY_PATH",
    "COSIGNATURE_PATH",
    "ReceiptUnbacked",
    "Witness",
    "cosignature_verifiers",
    "note_verifiers",
]

CONSISTENCY_PATH = "/federation/v1/consistency"
CHECKPOINT_PATH = "/federation/v1/checkpoint"
RECEIPT_PROOF_PATH = "/federation/v1/receipt-proof"
MAX_PROOF_FAILURES = 5  # consecutive checks failed by a peer (unverifiable checkpoint, proof not given) before an alarm
MIN_INTERVAL = 1.0  # seconds from the start of one check of a peer's checkpoints to the start of the next
MIN_KEY_MARGIN = 60  # seconds: the least verification margin around a receipt's or a cosignature's time
POLL_CONCURRENCY = 8  # checkpoint polls in flight at once
POLL_TIMEOUT = 30.0  # seconds for one poll, connection and answer
STALE_GRACE = 10.0  # seconds for a peer to ledger our receipt and sign a checkpoint that includes it
STALE_PATIENCE = 3600.0  # seconds of polls answered with an outgrown checkpoint before they raise an alarm
SERVED_REFRESH = 60.0  # seconds between two records that a peer serves receipt proofs (9.6)
# seconds a run of failed checks must last before failures to connect or to answer in time alone raise the alarm: a
# busy or restarting peer drops connections for a while; a peer that answers with a refusal, a malformed proof or a
# checkpoint that does not verify is counted at once
TRANSPORT_GRACE = 300.0
COSIGNATURE_PATH = "/federation/v1/cosignatures"
MAX_HELD_SIZE = 2**63 - 1  # peer_checkpoints.size is a signed 64-bit integer
# checks of one checkpoint against what another replica stored meanwhile before giving it up to a newer one
STORE_ATTEMPTS = 4
RECEIPT_NOTES_HELD = 256  # checkpoint notes opened for receipts and remembered (a peer's group commit shares one)
RECEIPTS_OWED = 256  # receipts per peer whose check failed, kept to check again with the next checkpoint


class WitnessError(ComityError):
    code = "witness-failed"


class PeerUnavailable(WitnessError):
    """A peer that answered 429 or 503 (busy, or its own store failing, protocol.md 9.1): transient, counted with
    the patience of a dropped connection (decision 145)."""


class ProofWithdrawn(WitnessError):
    """A peer that served receipt proofs answers ``not-found`` (decision 77): a downgrade, or hiding a receipt."""


class ReceiptUnbacked(WitnessError):
    """A receipt names a ledger entry its own signed checkpoint does not hold (decision 88): signed evidence that the
    peer's receipt and its ledger disagree."""


# what makes a check fail by the peer's doing: a checkpoint that does not verify under its keys, does not parse or
# is not one of its ledger's, a proof refused, malformed, or not answered at all (the peer has just receipted a
# delivery over the same channel)
_TRANSPORT = (aiohttp.ClientError, TimeoutError)
_UNCOOPERATIVE = (WitnessError, CryptoError, CheckpointError, *_TRANSPORT)


def _raw(key: OKPKey) -> bytes:
    return base64.urlsafe_b64decode(str(key.as_dict()["x"]) + "==")


def _signing_keys_about(gw: Gateway, authority_id: str, when: datetime | None) -> list[OKPKey]:
    """``authority_id``'s signing keys valid at some time within the verification margin of ``when`` (decision 76):
    the clock skew, and at least a minute (the checkpoint is signed when its group commits, after the receipt's
    time); every one it lists when ``when`` is None."""
    entry = gw.directory.authority(authority_id)
    if when is None:
        return list(entry.all_signing_keys().values())
    margin = timedelta(seconds=max(gw.settings.max_clock_skew_seconds, MIN_KEY_MARGIN))
    try:
        start, end = when - margin, when + margin
    except OverflowError:  # a time at the end of the calendar, signed by a peer: no key is valid then
        return []
    return list(entry.signing_keys_during(start, end).values())


def note_verifiers(gw: Gateway, authority_id: str, when: datetime | None = None) -> list[NoteVerifier]:
    """Verifiers of ``authority_id``'s checkpoints under its ledger origin: its signing keys valid around ``when``
    (the time of the receipt that carried the checkpoint), or every one listed (a polled checkpoint carries no
    time)."""
    keys = _signing_keys_about(gw, authority_id, when)
    return [NoteVerifier(ledger_origin(authority_id), _raw(key)) for key in keys]


def _open(note: str, peer: str, verifiers: list[NoteVerifier]) -> Checkpoint:
    """``note`` opened with ``peer``'s ``verifiers``, and a checkpoint of ``peer``'s own ledger (10.2): the key name
    says who signed the note, not which log its body is about, and the body is what we keep and cosign. A body that
    names another origin or has extension lines raises :class:`CheckpointError`, as a note that does not verify
    does, and is handled as one: neither kept nor cosigned, its receipt not recorded, counted as a check the peer
    failed (``proof-unavailable`` after MAX_PROOF_FAILURES in a row). Not an alarm at once: those are for evidence
    of two histories of the peer's ledger, and this body says nothing about its ledger."""
    checkpoint, _ = open_checkpoint(note, verifiers)
    check_ledger_checkpoint(checkpoint, ledger_origin(peer))
    return checkpoint


def cosignature_verifiers(gw: Gateway, authority_id: str, when: datetime | None = None) -> list[CosignatureVerifier]:
    """Verifiers of ``authority_id``'s cosignatures: its signing keys valid around ``when`` (the cosigned time), or
    every one listed."""
    keys = _signing_keys_about(gw, authority_id, when)
    return [CosignatureVerifier(f"comity-witness/{authority_id}", _raw(key)) for key in keys]


class Witness:
    def __init__(self, gw: Gateway, session_for: Any) -> None:
        self.gw = gw
        self._session_for = session_for  # peer entry -> aiohttp.ClientSession (mutual TLS)
        self._pending: dict[str, Pending] = {}  # peer -> newest checkpoint, and its receipt
        self._running: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}  # consecutive checks a peer could not back with a consistency proof
        self._since: dict[str, float] = {}  # loop time of the first of those failures
        self._last: dict[str, float] = {}  # loop time at which each peer's last check started
        self._served: dict[str, float] = {}  # loop time at which we last recorded that a peer serves 9.6
        self._stale_count: dict[str, int] = {}  # polls in a row a peer answered with a checkpoint it had outgrown
        self._stale_since: dict[str, float] = {}  # loop time of the first of them
        self._senders: set[str] | None = None  # peers we had received from when polling began (decision 78)
        self._hurry = asyncio.Event()  # set while an idle() runs: checks waiting for their interval run now
        self._hurrying = 0  # idle() calls running
        self.min_interval = MIN_INTERVAL
        # (peer, note, kids of the keys it may be signed by) -> its checkpoint, opened and verified
        self._receipt_notes: dict[tuple[str, str, tuple[str, ...]], Checkpoint] = {}
        # peer -> owed receipts our database has not taken yet, by message id (decision 176): the peer is not
        # forgiven while any is left
        self._unkept: dict[str, dict[str, Receipt]] = {}
        self.log = get_logger(component="witness")

    async def receipt_checkpoint(self, peer: str, receipt: Receipt, signed_about: datetime) -> Checkpoint:
        """The checkpoint ``receipt`` (of ``peer``, verified) carries, checked before the receipt is recorded
        (decision 88): signed by a key of the peer valid around the receipt's time, as :meth:`check` asks, and
        holding the entry the receipt names. A checkpoint that does not open counts as a check failed by the peer's
        doing (``proof-unavailable`` after MAX_PROOF_FAILURES in a row) and raises; a receipt beyond its own
        checkpoint raises an alarm (``receipt-unbacked``) and :class:`ReceiptUnbacked`. The receipts of one group
        commit carry one note, which is opened once. ``signed_about`` is the receipt's ``received_at``, parsed."""
        kids = tuple(sorted(str(key.kid) for key in _signing_keys_about(self.gw, peer, signed_about)))
        cache_key = (peer, receipt.checkpoint, kids)
        checkpoint = self._receipt_notes.get(cache_key)
        if checkpoint is None:
            try:
                checkpoint = _open(receipt.checkpoint, peer, note_verifiers(self.gw, peer, signed_about))
            except (CryptoError, CheckpointError) as exc:
                await self._failed(peer, exc)
                raise
            if len(self._receipt_notes) >= RECEIPT_NOTES_HELD:
                del self._receipt_notes[next(iter(self._receipt_notes))]  # the oldest
            self._receipt_notes[cache_key] = checkpoint
        if receipt.ledger_index >= checkpoint.size:
            detail = f"the receipt for {receipt.message_id} names entry {receipt.ledger_index}"
            detail += f", beyond its own checkpoint of size {checkpoint.size}"
            await self._alarm(peer, "receipt-unbacked", detail)
            raise ReceiptUnbacked(detail)
        return checkpoint

    def observe(self, peer: str, checkpoint_note: str, receipt: Receipt | None = None) -> None:
        """Queue ``checkpoint_note`` (from ``receipt``, verified, of ``peer``) for checking; never blocks."""
        self._pending[peer] = _newer(self._pending.get(peer), (checkpoint_note, receipt))
        running = self._running.get(peer)
        if running is None or running.done():  # a drain that has returned takes nothing more
            task = asyncio.create_task(self._drain(peer))
            self._running[peer] = task
            task.add_done_callback(lambda done: self._forget(peer, done))

    def _forget(self, peer: str, task: asyncio.Task[None]) -> None:
        if self._running.get(peer) is task:  # not a drain started after it returned
            del self._running[peer]

    async def idle(self) -> None:
        """Check every queued checkpoint now, without waiting for its interval, and return when done (tests,
        shutdown)."""
        self._hurrying += 1
        self._hurry.set()
        try:
            while self._running:
                await asyncio.gather(*list(self._running.values()), return_exceptions=True)
        finally:
            self._hurrying -= 1
            if not self._hurrying:
                self._hurry.clear()

    async def _drain(self, peer: str) -> None:
        # receipts bring a new checkpoint with every batch: each peer is checked at most once per min_interval, on
        # the newest checkpoint that arrived meanwhile (a fork is caught all the same, a moment later). The interval
        # runs from the start of the last check, whether or not more arrived during it: checks that finish before
        # the next receipt must not run once per receipt.
        loop = asyncio.get_running_loop()
        while True:
            wait = self._last.get(peer, -self.min_interval) + self.min_interval - loop.time()
            if wait > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), timeout=wait)
            pending = self._pending.pop(peer, None)
            if pending is None:
                return
            self._last[peer] = loop.time()
            try:
                checkpoint = await self.check(peer, *pending)
            except _UNCOOPERATIVE as exc:
                await self._owe(peer, pending[1])
                await self._failed(peer, exc)
            except Exception as exc:  # our own database or directory: nothing to hold against the peer
                await self._owe(peer, pending[1])
                self.log.warning("witness_check_failed", peer=peer, error=error_code(exc))
            else:
                # a peer is forgiven its failed checks only once it has backed every receipt it owes: failing the
                # check of one chosen receipt, whatever else it answers, must not leave that receipt unchecked
                if checkpoint is None or await self._settle_owed(peer, checkpoint):  # None: the alarm is raised
                    self._forgive(peer)

    async def _owe(self, peer: str, receipt: Receipt | None) -> None:
        """Keep ``receipt``, whose check failed, to check again, in the database, so that a restart does not forget
        it (decision 176); the oldest goes beyond RECEIPTS_OWED (a peer that fails that many is counted toward
        ``proof-unavailable`` all the while)."""
        if receipt is None:
            return
        unkept = self._unkept.setdefault(peer, {})
        unkept.pop(receipt.message_id, None)
        unkept[receipt.message_id] = receipt
        if len(unkept) > RECEIPTS_OWED:
            dropped = unkept.pop(next(iter(unkept)))
            self.log.warning("witness_receipt_dropped", peer=peer, message_id=dropped.message_id)
        await self._keep(peer)

    async def _keep(self, peer: str) -> bool:
        """Write the receipts owed by ``peer`` that the database has not taken yet; whether none is left. Until then
        they wait in memory, and the peer is not forgiven."""
        unkept = self._unkept.get(peer)
        if not unkept:
            return True
        owed = [json.loads(receipt.to_bytes()) for receipt in unkept.values()]
        try:
            async with self.gw.transaction() as conn:
                dropped = await WitnessState.owe_receipts(conn, peer, owed, RECEIPTS_OWED)
        except Exception as exc:  # our own database: tried again with the next check of the peer
            self.log.error("witness_receipt_not_kept", peer=peer, receipts=len(unkept), error=error_code(exc))
            return False
        del self._unkept[peer]
        for message_id in dropped:
            self.log.warning("witness_receipt_dropped", peer=peer, message_id=message_id)
        return True

    async def _settle_owed(self, peer: str, checkpoint: Checkpoint) -> bool:
        """Check the receipts ``peer`` owes against ``checkpoint`` (verified, consistent with what we hold), or, for
        one beyond it (the peer serving less than it signed in that receipt), against the receipt's own checkpoint
        again, consistency proof and all; in the order they failed. Whether none is owed any more. The first that
        fails again is counted and ends the round; those checked before it are settled. Receipts not yet written
        keep the peer unforgiven."""
        if not await self._keep(peer):
            return False
        try:
            async with self.gw.reader.connect() as conn:
                stored = await WitnessState.owed_receipts(conn, peer)
        except Exception as exc:  # our own database: tried again next round, not held against the peer
            self.log.warning("witness_check_failed", peer=peer, error=error_code(exc))
            return False
        if not stored:
            return True
        settled: list[str] = []
        owed: list[Receipt] = []
        for item in stored:
            try:
                owed.append(Receipt.parse(item))
            except InvalidMessage:  # a damaged row, or a format of another version: left out, not a wedge
                self.log.error("witness_owed_malformed", peer=peer)
                settled.append(item["message_id"])
        backed = True
        for receipt in owed:
            try:
                if receipt.ledger_index < checkpoint.size:
                    await self._check_receipt(peer, checkpoint, receipt)
                else:  # the peer serves less than the receipt's own checkpoint: check that one again, proofs and all
                    await self.check(peer, receipt.checkpoint, receipt)
            except _UNCOOPERATIVE as exc:
                await self._failed(peer, exc)
                backed = False
                break
            except Exception as exc:  # our own database: tried again next round, not held against the peer
                self.log.warning("witness_check_failed", peer=peer, error=error_code(exc))
                backed = False
                break
            settled.append(receipt.message_id)  # checked: backed, or the alarm is raised
        if not settled:
            return False
        try:
            async with self.gw.transaction() as conn:
                remaining = await WitnessState.settle_receipts(conn, peer, settled)
        except Exception as exc:
            self.log.warning("witness_check_failed", peer=peer, error=error_code(exc))
            return False
        return backed and not remaining

    async def _failed(self, peer: str, exc: Exception) -> None:
        """A check failed by the peer's doing. A peer that keeps failing to back its checkpoints is treated like one
        that forked: sending checkpoints that do not verify, or refusing, garbling or dropping proof requests, must
        not be a way to hide a rewrite."""
        loop = asyncio.get_running_loop()
        failures = self._failures[peer] = self._failures.get(peer, 0) + 1
        lasted = loop.time() - self._since.setdefault(peer, loop.time())
        self.log.warning("witness_check_failed", peer=peer, error=error_code(exc), failures=failures)
        # a dropped connection, or a replica of an earlier version answering during a rolling upgrade or a
        # roll-back (decision 77): only once it has lasted
        patient = isinstance(exc, (*_TRANSPORT, ProofWithdrawn, PeerUnavailable)) and lasted < TRANSPORT_GRACE
        if failures >= MAX_PROOF_FAILURES and not patient:
            await self._unavailable(peer, f"{failures} checks failed in a row by its doing")

    async def _unavailable(self, peer: str, detail: str) -> None:
        """Alarm ``proof-unavailable`` and start counting afresh; if the alarm cannot be written, the count stands
        and the next failure raises it again."""
        try:
            await self._alarm(peer, "proof-unavailable", detail)
        except Exception as failed:
            self.log.error("witness_alarm_failed", peer=peer, error=type(failed).__name__)
        else:
            self._forgive(peer)

    def _forgive(self, peer: str) -> None:
        for counts in (self._failures, self._since, self._stale_count, self._stale_since):
            counts.pop(peer, None)

    async def check(self, peer: str, note: str, receipt: Receipt | None = None) -> Checkpoint | None:
        """Check ``note`` (and ``receipt``, which carried it) of ``peer``; the checkpoint, verified and consistent
        with what we hold, or None once an alarm is raised."""
        gw = self.gw
        # signed in the group commit that signed the receipt, by a key valid then (decision 76); a polled checkpoint
        # carries no time and may be as old as the peer's last append: any listed key
        signed_about = None if receipt is None else parse_time(receipt.received_at)
        checkpoint = _open(note, peer, note_verifiers(gw, peer, signed_about))
        if checkpoint.size > MAX_HELD_SIZE:  # valid in a note, but not a size we can hold (a signed 64-bit column)
            raise WitnessError(f"{peer} signed a checkpoint of size {checkpoint.size}, beyond any real ledger")
        async with gw.reader.connect() as conn:
            held = await WitnessState.latest(conn, peer)
        for _ in range(STORE_ATTEMPTS):
            if not await self._consistent(peer, checkpoint, held):
                return None
            if held is not None and checkpoint.size <= held.size:
                break  # nothing new to keep
            # new: keep it and cosign it, whatever its receipt shows, unless another replica kept a checkpoint of
            # this peer meanwhile (it may be another fork that was consistent with the same one): then check against
            # that one. The check of what is held and the insert are one transaction, one replica at a time.
            async with gw.transaction() as conn:
                await WitnessState.lock(conn, peer)
                latest = await WitnessState.latest(conn, peer)
                if _same(latest, held):
                    await WitnessState.remember(
                        conn, PeerCheckpoint(peer, checkpoint.size, checkpoint.root_hash, note), gw.clock()
                    )
            if _same(latest, held):
                try:
                    await self._cosign(peer, checkpoint)
                except (WitnessError, *_TRANSPORT) as exc:  # the check held: only logged
                    self.log.warning("cosignature_not_accepted", peer=peer, error=error_code(exc))
                break
            held = latest
        else:  # our own replicas kept storing newer ones: they check those; the receipt is still this one's to check
            self.log.warning("witness_check_overtaken", peer=peer)
            # but this one is still checked against the last of them: a fork that agreed with every earlier one
            # must not pass because the one it contradicts was stored last (decision 145)
            if not await self._consistent(peer, checkpoint, held):
                return None
        await self._check_receipt(peer, checkpoint, receipt)
        return checkpoint

    async def _consistent(self, peer: str, checkpoint: Checkpoint, held: PeerCheckpoint | None) -> bool:
        """Whether ``checkpoint`` (verified) is consistent with the one we hold of ``peer``; if not, the alarm is
        raised."""
        if held is None:
            return True
        if checkpoint.size == held.size:
            if checkpoint.root_hash == held.root:
                return True
            await self._alarm(peer, "ledger-fork", f"two different roots signed for size {held.size}")
            return False
        older, newer = (held.size, held.root), (checkpoint.size, checkpoint.root_hash)
        if checkpoint.size < held.size:
            older, newer = newer, older
        if older[0] == 0:
            # the empty tree starts every tree, and RFC 9162 has no proof from it (verify_consistency refuses one,
            # as the published vectors require): nothing to ask the peer, only the empty tree's root to compare
            consistent = older[1] == EMPTY_ROOT
        else:
            proof = await self._fetch_consistency(peer, older[0], newer[0])
            try:
                verify_consistency(older[0], newer[0], proof, older[1], newer[1])
                consistent = True
            except MerkleError:
                consistent = False
        if not consistent:
            detail = f"checkpoint of size {checkpoint.size} is not consistent with the one of size {held.size} we hold"
            await self._alarm(peer, "ledger-rewritten", detail)
        return consistent

    async def _check_receipt(self, peer: str, checkpoint: Checkpoint, receipt: Receipt | None) -> None:
        """The entry the receipt names is in its (verified) checkpoint and records our message's reception as the
        receipt says: a signed receipt pointing at anything else is an alarm (9.6)."""
        if receipt is None:
            return
        index, what = receipt.ledger_index, f"the receipt for {receipt.message_id} names entry {receipt.ledger_index}"
        if index >= checkpoint.size:
            await self._alarm(peer, "receipt-unbacked", f"{what}, beyond its checkpoint of size {checkpoint.size}")
            return
        fetched = await self._fetch_receipt_proof(peer, index, checkpoint.size)
        if fetched is None:  # a gateway without 9.6: nothing to hold against it, and nothing checked
            async with self.gw.reader.connect() as conn:
                served = await WitnessState.served_receipt_proofs(conn, peer)
            if served:  # ... unless it served them before: then it hides this one (decision 77)
                raise ProofWithdrawn(f"{peer} answered not-found to a receipt proof, which it served before")
            self.log.warning("receipt_proof_unsupported", peer=peer)
            return
        if isinstance(fetched, str):  # it refuses to show the entry its own signed receipt names
            await self._alarm(peer, "receipt-unbacked", f"{what}; asked for it, the peer answered {fetched}")
            return
        entry, proof = fetched
        try:
            verify_inclusion(leaf_hash(entry), index, checkpoint.size, proof, checkpoint.root_hash)
        except MerkleError:
            await self._alarm(peer, "receipt-unbacked", f"{what}; the entry served is not in that checkpoint")
            return
        try:  # the auditor's definition of an entry: duplicate members or other bytes than the canonical ones would
            # let two readers of the peer's ledger see two different events in the one signed entry
            event = parse_entry(entry)
        except EntryError as exc:
            await self._alarm(peer, "receipt-unbacked", f"{what}, which is not a valid ledger entry: it {exc}")
            return
        async with self.gw.reader.connect() as conn:  # its metadata, not its envelopes
            (sent,) = await Messages.find_many(conn, [receipt.message_id])
        us = self.gw.authority_id
        # the reception of our message as we sent it, at the time the receipt signs: an entry dated otherwise, or
        # recording another kind, marking or reply link, would give the peer's auditors another account of it
        expected = (
            EventType.RECEIVED,
            receipt.message_id,
            receipt.envelope_sha256,
            us,
            peer,
            f"peer:{us}",
            parse_time(receipt.received_at),
            sent.kind,
            sent.marking.to_json(),
            sent.in_reply_to,
        )
        recorded = (
            event.type,
            event.message_id,
            event.envelope_sha256,
            event.from_,
            event.to,
            event.actor,
            parse_time(event.time),
            None if event.kind is None else event.kind.value,
            None if event.marking is None else event.marking.to_json(),
            event.in_reply_to,
        )
        if recorded != expected:
            await self._alarm(peer, "receipt-unbacked", f"{what}, which records something else")
            return
        await self._remember_served(peer)

    async def watch(self) -> None:
        """:meth:`poll` every ``witness_poll_seconds``, plus up to a fifth at random (replicas sharing a database do
        not all poll at once), until cancelled."""
        interval = self.gw.settings.witness_poll_seconds
        while True:
            await asyncio.sleep(interval * (1 + 0.2 * random.random()))  # noqa: S311 (spread, not a secret)
            try:
                await self.poll()
            except Exception:  # our database or directory: the next round tries again
                self.log.exception("witness_poll_failed")
            stop_if_cancelled()

    async def poll(self) -> None:
        """Fetch the latest checkpoint (9.2) of each peer we exchanged with (one we hold a checkpoint of, or one we
        received a message from) whose ledger was not checked within ``witness_poll_seconds``, and queue it
        like one a receipt brought, without its receipt (decision 78): a peer we only receive from sends us no
        receipts, and would otherwise never be witnessed. At most ``POLL_CONCURRENCY`` at a time, each within
        ``POLL_TIMEOUT``."""
        gw = self.gw
        async with gw.reader.connect() as conn:
            peers = await WitnessState.witnessed(conn)
            if self._senders is None:  # once per process: later ones are in peers_heard
                self._senders = await Messages.senders(conn)
        peers |= self._senders | set(gw.peers_heard)
        listed = {entry.id for entry in gw.directory.authorities}
        slots = asyncio.Semaphore(POLL_CONCURRENCY)
        await asyncio.gather(*(self._poll(peer, slots) for peer in sorted(peers & listed - {gw.authority_id})))

    def _due(self, peer: str) -> bool:
        interval = self.gw.settings.witness_poll_seconds
        recent = asyncio.get_running_loop().time() - self._last.get(peer, -interval) < interval
        return not (recent or peer in self._pending or peer in self.gw.blocked_peers)

    async def _poll(self, peer: str, slots: asyncio.Semaphore) -> None:
        if not self._due(peer):
            return  # a receipt brought one lately, or one waits
        async with slots:
            asked = self.gw.clock()
            try:
                self.gw.peer(peer)  # an expired directory: nothing to ask anyone
                status, raw = await asyncio.wait_for(self._get(peer, CHECKPOINT_PATH), timeout=POLL_TIMEOUT)
            except (*_TRANSPORT, ComityError) as exc:
                self._unanswered(peer, error_code(exc))
                return
        if status != 200:
            self._unanswered(peer, f"HTTP {status}")
            return
        if not self._due(peer):
            return  # a receipt's checkpoint, with its receipt to check, came meanwhile
        note = raw.decode("utf-8", "replace")
        if await self._stale(peer, note, asked):
            await self._stale_answer(peer)
        else:
            self.observe(peer, note)

    async def _stale(self, peer: str, note: str, asked: datetime) -> bool:
        """Whether a polled checkpoint is no larger than the largest we held of ``peer`` before it delivered a new
        envelope to us, that delivery at least ``STALE_GRACE`` before we asked: by then its ledger should have
        recorded our receipt and signed a larger checkpoint (it signs at least every second while it grows)."""
        heard = self.gw.peers_heard.get(peer)
        grace = timedelta(seconds=STALE_GRACE)
        if heard is None or asked < heard + grace:
            return False
        async with self.gw.reader.connect() as conn:
            held = await WitnessState.largest_held(conn, peer)  # forgotten by peer clear --forget-history
        if held is None or held[1] + grace > heard:
            return False
        try:
            return _size(note) <= held[0]
        except (ValueError, IndexError):
            return False  # malformed: the check says so

    async def _stale_answer(self, peer: str) -> None:
        """Counted apart from other failures, and patient: an honest peer whose database refuses writes, or which
        cannot verify our receipts, does not ledger them either (it keeps re-delivering). An alarm once the peer
        has answered ``MAX_PROOF_FAILURES`` polls in a row so over at least ``STALE_PATIENCE``."""
        now = asyncio.get_running_loop().time()
        since = self._stale_since.setdefault(peer, now)
        count = self._stale_count[peer] = self._stale_count.get(peer, 0) + 1
        self.log.warning("witness_poll_stale", peer=peer, polls=count)
        if count >= MAX_PROOF_FAILURES and now - since >= STALE_PATIENCE:
            detail = f"{count} polls over {round(now - since)} s answered with a checkpoint it had since outgrown"
            await self._unavailable(peer, detail)

    def _unanswered(self, peer: str, why: str) -> None:
        """Not counted toward an alarm (a peer we do not send to, down for maintenance, has done nothing wrong);
        a warning when the peer delivered to us within the interval, so is up."""
        self.gw.metrics.polls_unanswered.labels(peer=peer).inc()
        heard = self.gw.peers_heard.get(peer)
        if heard is not None and self.gw.clock() - heard < timedelta(seconds=self.gw.settings.witness_poll_seconds):
            self.log.warning("witness_poll_unanswered", peer=peer, error=why, delivering=True)
        else:
            self.log.info("witness_poll_unanswered", peer=peer, error=why)

    async def _remember_served(self, peer: str) -> None:
        """Record that ``peer`` serves 9.6, at most once a minute (the record outlives a restart; an operator's
        ``comity peer clear --forget-receipt-proofs`` drops it, and it is written again at the next proof served)."""
        now = asyncio.get_running_loop().time()
        if now - self._served.get(peer, -SERVED_REFRESH) < SERVED_REFRESH:
            return
        async with self.gw.transaction() as conn:
            await WitnessState.remember_receipt_proofs(conn, peer)
        self._served[peer] = now

    async def _fetch_receipt_proof(self, peer: str, index: int, size: int) -> tuple[bytes, list[bytes]] | str | None:
        """The entry and its proof; or the refusal code when the peer says the entry is not our reception; or None
        when it does not serve 9.6 at all (an unknown path: a gateway of an earlier version)."""
        status, raw = await self._get(peer, f"{RECEIPT_PROOF_PATH}?index={index}&size={size}")
        if status == 404:
            code = _problem_code(raw)
            if code == "not-a-reception":
                return code
            if code == "not-found":
                return None
        if status != 200:
            raise WitnessError(f"{peer} answered HTTP {status} to a receipt proof request")
        try:
            body = json.loads(raw)
            served = base64.b64decode(body["entry"], validate=True)
            proof = [base64.b64decode(item, validate=True) for item in body["proof"]]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise WitnessError(f"{peer} answered a malformed receipt proof") from None
        return served, proof

    async def _fetch_consistency(self, peer: str, size1: int, size2: int) -> list[bytes]:
        status, raw = await self._get(peer, f"{CONSISTENCY_PATH}?from={size1}&to={size2}")
        if status != 200:
            raise WitnessError(f"{peer} answered HTTP {status} to a consistency proof request")
        try:
            body = json.loads(raw)
            proof = [base64.b64decode(item, validate=True) for item in body["proof"]]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise WitnessError(f"{peer} answered a malformed consistency proof") from None
        return proof

    async def _get(self, peer: str, path_and_query: str) -> tuple[int, bytes]:
        """GET one of the peer's federation endpoints: the status and the whole body (an entry and O(log n) hashes,
        or a problem document: a few KiB; refused past 64 KiB)."""
        entry = self.gw.directory.authority(peer)
        url = f"{entry.endpoint.rstrip('/')}{path_and_query}"
        # one deadline for the whole request: the session's read timeout restarts with every byte, so a peer that
        # trickled its answer held the check, and every later one, open without a failure counted (decision 145)
        async with (
            asyncio.timeout(POLL_TIMEOUT),
            self._session(entry).get(url, headers=self._headers(entry)) as response,
        ):
            body = await read_capped(response, 1 << 16)
        if body is None:
            raise WitnessError(f"an answer of more than {1 << 16} bytes")
        if response.status in (429, 503):
            raise PeerUnavailable(f"{peer} answered HTTP {response.status}: busy, or its store unavailable")
        return response.status, body

    async def _cosign(self, peer: str, checkpoint: Checkpoint) -> None:
        now = self.gw.clock()
        line = self.gw.cosigner(now).sign(checkpoint.to_text(), int(now.timestamp()))
        entry = self.gw.directory.authority(peer)
        url = f"{entry.endpoint.rstrip('/')}{COSIGNATURE_PATH}"
        body = {"size": checkpoint.size, "line": line}
        async with (
            asyncio.timeout(POLL_TIMEOUT),
            self._session(entry).post(url, json=body, headers=self._headers(entry)) as response,
        ):
            if response.status not in (200, 204):
                raise WitnessError(f"{peer} answered HTTP {response.status} to our cosignature")

    def _session(self, entry: Any) -> Any:
        """The sender's session for ``entry``; its refusal of a plain-HTTP endpoint without the development flag
        (decision 116) as a WitnessError, so that nothing is asked or posted without a pinned certificate."""
        try:
            return self._session_for(entry)
        except ComityError as exc:
            raise WitnessError(exc.message) from None

    def _headers(self, entry: Any) -> dict[str, str]:
        # plain HTTP (development only) has no certificate to name us
        plain = self.gw.settings.dev_plain_http and not entry.endpoint.startswith("https://")
        return {"Comity-Dev-Peer": self.gw.authority_id} if plain else {}

    async def _alarm(self, peer: str, reason: str, detail: str) -> None:
        gw = self.gw

        async def unit(tx: Tx) -> Finish[None]:
            await WitnessState.raise_alarm(tx.conn, peer, reason, detail, tx.clock())
            tx.record(EventType.PEER_ALARM, "system", from_=peer, reason=reason)
            return await done(None)

        await gw.commit(unit)
        gw.blocked_peers.add(peer)
        gw.metrics.peer_alarms.labels(peer=peer).inc()
        self.log.error("peer_ledger_alarm", peer=peer, reason=reason, detail=detail)


Pending = tuple[str, Receipt | None]


def _problem_code(raw: bytes) -> str | None:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):  # a peer's body: deeply nested JSON too
        return None
    code = document.get("code") if isinstance(document, dict) else None
    return code if isinstance(code, str) else None


def _newer(current: Pending | None, candidate: Pending) -> Pending:
    """Of two checkpoint notes from one peer (each with its receipt), the one with the larger tree (compared before
    verification)."""
    if current is None:
        return candidate
    try:
        new, old = _size(candidate[0]), _size(current[0])
        # of equal trees, the one whose receipt is still to be checked (a polled note has none)
        return candidate if new > old or (new == old and (candidate[1] is not None or current[1] is None)) else current
    except (ValueError, IndexError):
        return candidate


def _same(a: PeerCheckpoint | None, b: PeerCheckpoint | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and (a.size, a.root) == (b.size, b.root))


def _size(note: str) -> int:
    return int(note.split("\n", 2)[1])
