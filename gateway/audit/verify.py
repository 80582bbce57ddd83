"""``comity audit verify``: recompute the whole ledger and check everything an untrusting auditor can.

One pass over the entries in index order, memory independent of the size of the log:

1. every entry is the RFC 8785 canonical JSON of a valid ``LedgerEvent`` (:mod:`gateway.audit.entries`);
2. the entries' leaf hashes are appended to a recomputed RFC 9162 tree (:class:`gateway.audit.tree.BatchTree`);
3. when the tree reaches the size of a signed checkpoint, that checkpoint must carry a valid signature by a key the
   signed directory lists for the authority (origin ``comity-ledger/<id>``), every cosignature from a witness the
   directory knows must verify, and its root must be the recomputed root;
4. at the size of the newest checkpoint this auditor verified on an earlier run (the state file), the recomputed
   root must be the one it saw then: a log rewritten consistently, with fresh signatures, fails here;
5. the timeline invariants hold (:mod:`gateway.audit.invariants`);
6. with a database source, the stored tree head must match the entries too, and so must each row's ``message_id``
   column, the index that timelines (the gateway's and ``comity audit timeline --database``) select on.

The first problem stops the audit with an :class:`AuditFailure` naming the entry index or checkpoint size. With a
database source, a root mismatch is pinpointed: the recomputed leaf hashes are compared with the stored level-0
nodes, which names the changed entry exactly unless the operator rewrote those as well.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from crypto.note import NoteError, Verifier, open_note
from gateway.audit.entries import G_MESSAGE_ID, EntryError, check_entry
from gateway.audit.invariants import InvariantError, TimelineChecker
from gateway.audit.sources import CheckpointRecord, Source, SourceError, UnreadableEntry
from gateway.audit.state import AuditState, Verified
from gateway.audit.tree import BatchTree
from gateway.audit.trust import Trust
from protocol.checkpoint import Checkpoint, CheckpointError, check_ledger_checkpoint
from protocol.merkle import MerkleError, verify_consistency
from protocol.timefmt import format_time

SEGMENT = 2048  # entries checked between two chances for the prefetch to run

__all__ = ["AuditFailure", "Progress", "Summary", "verify_ledger"]

Progress = Callable[[int, int, float], None]  # done, total, seconds elapsed


class _IndexMismatch(Exception):
    """An entry's row has a message_id column other than the entry's own."""


class AuditFailure(Exception):
    """Something does not hold. ``str()`` is one line naming the entry or checkpoint and what is wrong."""

    def __init__(self, line: str, *, index: int | None = None, size: int | None = None) -> None:
        super().__init__(line)
        self.line = line
        self.index = index
        self.size = size


@dataclass
class Summary:
    origin: str
    source: str
    entries: int = 0
    checkpoints: int = 0
    cosignatures: Counter[str] = field(default_factory=Counter)  # witness name -> verified cosignatures
    # witness name -> (the largest size it cosigned, when it says it cosigned it: POSIX seconds)
    witnessed: dict[str, tuple[int, int]] = field(default_factory=dict)
    unknown_witnesses: Counter[str] = field(default_factory=Counter)  # name -> lines from keys nobody listed
    newest_size: int = 0
    newest_root: bytes = b""
    unsigned_tail: int = 0
    previous_size: int | None = None  # the state file's size, checked
    seconds: float = 0.0
    open_messages: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def witnessed_size(self) -> int:
        """The largest size any witness cosigned: what the log's history rests on beyond the operator's word."""
        return max((size for size, _ in self.witnessed.values()), default=0)

    @property
    def rate(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        cosigned = sum(self.cosignatures.values())
        out = [
            f"ok: {self.origin} from {self.source}",
            f"  entries      {self.entries:,} verified in {self.seconds:.2f} s ({self.rate:,.0f} entries/s)",
            f"  checkpoints  {self.checkpoints:,} signatures verified, newest at size {self.newest_size:,} "
            f"root {base64.b64encode(self.newest_root).decode()}",
            f"  cosignatures {cosigned:,} verified"
            + (
                f" ({', '.join(f'{name}: {n:,}' for name, n in sorted(self.cosignatures.items()))})" if cosigned else ""
            ),
        ]
        if self.witnessed:
            each = ", ".join(
                f"{name}: size {size:,} at {_when(at)}" for name, (size, at) in sorted(self.witnessed.items())
            )
            out.append(
                f"  witnessed    up to size {self.witnessed_size:,} ({each}); {self.entries - self.witnessed_size:,} "
                "entries after it no witness has cosigned"
            )
        if self.unknown_witnesses:
            names = ", ".join(f"{name}: {n:,}" for name, n in sorted(self.unknown_witnesses.items()))
            out.append(f"  unknown witnesses (lines not checked, not counted): {names}")
        if self.previous_size is not None:
            out.append(f"  consistent with size {self.previous_size:,} verified on an earlier run")
        if self.unsigned_tail:
            out.append(f"  {self.unsigned_tail:,} entries after the newest checkpoint are not signed yet")
        out.extend(f"  warning: {warning}" for warning in self.warnings)
        return out


_sha256 = hashlib.sha256


def _when(seconds: int) -> str:
    """A cosignature's time as RFC 3339 UTC, or as the number it is when no calendar holds it."""
    try:
        return format_time(datetime.fromtimestamp(seconds, UTC))
    except (OverflowError, ValueError, OSError):
        return f"{seconds} s after the epoch"


class _Audit:
    def __init__(
        self,
        source: Source,
        trust: Trust,
        state: AuditState,
        progress: Progress | None,
        max_unwitnessed: int | None = None,
    ) -> None:
        self.source = source
        self.max_unwitnessed = max_unwitnessed
        self.trust = trust
        self.state = state
        self.progress = progress
        self.origin = trust.origin
        self.tree = BatchTree()
        self.checker = TimelineChecker()
        self.summary = Summary(self.origin, source.name)
        self.verifiers: list[Verifier] = [*trust.note_verifiers, *trust.cosignature_verifiers]
        self.good = 0  # the largest size at which a root was confirmed (for naming the range that changed)
        self.newest: CheckpointRecord | None = None

    # --- the pass ------------------------------------------------------------------------------------------------

    async def run(self) -> Summary:
        started = time.perf_counter()
        trust, state = self.trust, self.state
        seen_serial = state.directory_serial(trust.directory_kid)
        if trust.directory_serial < seen_serial:
            raise AuditFailure(
                f"directory: serial {trust.directory_serial} is older than serial {seen_serial} this auditor used "
                "before; use the current signed directory"
            )
        if trust.expired(datetime.now(UTC)):
            self.summary.warnings.append(
                f"the directory (serial {trust.directory_serial}) expired at {trust.directory_expires_at}"
            )
        snapshot = await self.source.snapshot()
        if snapshot.extra_rows:
            raise AuditFailure(f"ledger: {snapshot.extra_rows}")
        total = snapshot.total
        previous = state.last(self.origin)
        if previous is not None and previous.size > total:
            raise AuditFailure(
                f"checkpoint at size {previous.size}: verified by this auditor at {previous.verified_at}, but the log "
                f"now holds only {total} entries: it was truncated",
                size=previous.size,
            )
        head = snapshot.head
        checkpoints = aiter(self.source.checkpoints())
        pending = await anext(checkpoints, None)
        previous_pending = previous is not None and previous.size > 0
        head_pending = head is not None
        tree = self.tree
        feed, check = self.checker.feed, check_entry
        last_report = time.perf_counter()

        async def boundaries() -> None:
            nonlocal pending, previous_pending, head_pending
            size = tree.size
            while pending is not None and pending.size <= size:
                if pending.size < size:  # cannot happen: segments stop at every checkpoint size
                    raise AssertionError("checkpoint skipped")
                await self._checkpoint(pending)
                pending = await anext(checkpoints, None)
            if previous_pending and previous is not None and previous.size == size:
                previous_pending = False
                await self._previous(previous)
            if head_pending and head is not None and head[0] == size:
                head_pending = False
                await self._head(head)

        entries = self._entries(total)
        try:
            async for start, batch in entries:
                if start != tree.size:
                    raise AssertionError("source returned a batch out of order")
                ids = self.source.message_ids(start)  # the database's index column, None for the API
                if ids is None and self.source.has_stored_tree:
                    raise AssertionError("a database source gave a batch without its message_id column")
                offset = 0
                while offset < len(batch):
                    await boundaries()
                    # segments of at most SEGMENT entries, yielding to the loop between them (the source prefetches)
                    stops = [start + len(batch), tree.size + SEGMENT]
                    if pending is not None:
                        stops.append(pending.size)
                    if previous_pending and previous is not None:
                        stops.append(previous.size)
                    if head_pending and head is not None:
                        stops.append(head[0])
                    end = min(stop for stop in stops if stop > tree.size)
                    segment = batch[offset : offset + end - tree.size]
                    index = tree.size
                    try:
                        if ids is None:
                            for entry in segment:
                                feed(index, check(entry))
                                index += 1
                        else:
                            for entry in segment:
                                fields = check(entry)
                                feed(index, fields)
                                if fields.group(G_MESSAGE_ID) != ids[index - start]:
                                    raise _IndexMismatch
                                index += 1
                    except EntryError as exc:
                        await self._fail(f"entry {index}: {exc}", index)
                    except InvariantError as exc:
                        await self._fail(str(exc), index)
                    except _IndexMismatch:
                        await self._fail(
                            f"entry {index}: the message_id column (the index timelines select on) does not match "
                            "the entry: it was changed outside the ledger code",
                            index,
                        )
                    tree.extend([_sha256(b"\x00" + entry).digest() for entry in segment])
                    offset += len(segment)
                    await asyncio.sleep(0)
                now = time.perf_counter()
                if self.progress is not None and now - last_report >= 1.0:
                    last_report = now
                    self.progress(tree.size, total, now - started)
            await boundaries()
        except UnreadableEntry as exc:
            await self._fail(str(exc), exc.index)
        if pending is not None:
            raise AuditFailure(
                f"checkpoint at size {pending.size}: beyond the end of the log ({total} entries): the log was "
                "truncated after it was signed",
                size=pending.size,
            )
        if head is not None and head[0] != total:
            await self._fail(
                f"entry {head[0]}: beyond the stored tree head (ledger_head.size = {head[0]}): a row was added "
                "outside the ledger code",
                head[0],
            )
        if previous is not None and (self.newest is None or self.newest.size < previous.size):
            # the log still holds the entries (their root at that size was checked above), but no longer the signed
            # checkpoint this auditor saw: deleted, so that what follows it could be changed without a signature
            newest = "none" if self.newest is None else f"the one at size {self.newest.size}"
            raise AuditFailure(
                f"checkpoint at size {previous.size}: verified by this auditor at {previous.verified_at}, but the "
                f"newest signed checkpoint the log now holds is {newest}: signed checkpoints were deleted",
                size=previous.size,
            )
        summary = self.summary
        summary.entries = tree.size
        summary.open_messages = self.checker.open_messages
        summary.newest_size = 0 if self.newest is None else self.newest.size
        summary.unsigned_tail = total - summary.newest_size
        if self.newest is None:  # an empty log too: no signature says it is empty
            what = f"none of the {total:,} entries is covered by a signature" if total else "the log is empty, unsigned"
            summary.warnings.append(
                f"no signed checkpoint: {what} (a running gateway signs one as it starts and at least every second "
                "while its ledger grows)"
            )
        if self.state.path is not None and previous is None and total:
            summary.warnings.append(
                f"no earlier run for {self.origin} in {self.state.path}: this log's history is checked against its "
                "own signatures and its witnesses' only (a missing, misnamed or older state file looks the same)"
            )
        await self._check_served_consistency(previous)
        summary.seconds = time.perf_counter() - started
        if self.progress is not None:
            self.progress(tree.size, total, summary.seconds)
        if self.newest is not None:
            state.remember(
                self.origin,
                Verified(self.newest.size, summary.newest_root, self.newest.note, format_time(datetime.now(UTC))),
                trust.directory_kid,
                trust.directory_serial,
            )
            state.save()
        # a policy on what the log holds, checked once all of it verified (and remembered: the next run is checked
        # against this one whatever the witnesses' pace)
        unwitnessed = total - summary.witnessed_size
        if self.max_unwitnessed is not None and unwitnessed > self.max_unwitnessed:
            raise AuditFailure(
                f"witnesses: {unwitnessed:,} entries after size {summary.witnessed_size:,}, the largest any witness "
                f"cosigned, more than --max-unwitnessed {self.max_unwitnessed:,}: the operator's signatures alone "
                "vouch for them (cosignatures deleted, or witnesses not polling)",
                size=summary.witnessed_size,
            )
        return summary

    async def _entries(self, total: int) -> AsyncIterator[tuple[int, list[bytes]]]:
        try:
            async for item in self.source.entries(0, total):
                yield item
        except UnreadableEntry:
            raise
        except SourceError as exc:
            raise AuditFailure(f"source: {exc}") from None

    # --- checks at boundaries ------------------------------------------------------------------------------------

    async def _checkpoint(self, record: CheckpointRecord) -> None:
        size = record.size
        where = f"checkpoint at size {size}"
        try:
            opened = open_note(record.note, self.verifiers)
        except NoteError as exc:
            raise AuditFailure(f"{where}: {exc.message}", size=size) from None
        signed = [sig for sig in opened.verified if sig.name == self.origin and sig.timestamp is None]
        if not signed:
            raise AuditFailure(
                f"{where}: not signed by a key that the directory lists for {self.trust.authority_id} "
                f"(expected a signature by {self.origin}): forged",
                size=size,
            )
        try:
            checkpoint = Checkpoint.from_text(opened.text)
        except CheckpointError as exc:
            raise AuditFailure(f"{where}: {exc.message}", size=size) from None
        try:  # its origin, and no extension lines: the rule the witnesses apply too
            check_ledger_checkpoint(checkpoint, self.origin)
        except CheckpointError as exc:
            raise AuditFailure(f"{where}: {exc.message}", size=size) from None
        if checkpoint.size != size:
            raise AuditFailure(f"{where}: the signed note says size {checkpoint.size}", size=size)
        root = self.tree.root()
        if checkpoint.root_hash != root:
            await self._root_mismatch(
                size, f"leaf does not match checkpoint at size {size}", where, "since it was signed"
            )
        for sig in opened.verified:
            if sig.timestamp is not None:
                self.summary.cosignatures[sig.name] += 1
                self.summary.witnessed[sig.name] = (size, sig.timestamp)  # checkpoints come in size order
        for line in opened.unverified:
            self.summary.unknown_witnesses[line[2:].split(" ", 1)[0]] += 1
        self.summary.checkpoints += 1
        self.summary.newest_root = root
        self.newest = record
        self.good = size

    async def _previous(self, previous: Verified) -> None:
        root = self.tree.root()
        if root != previous.root:
            raise AuditFailure(
                f"checkpoint at size {previous.size}: this auditor verified root "
                f"{base64.b64encode(previous.root).decode()} there at {previous.verified_at}; the log now has root "
                f"{base64.b64encode(root).decode()} at that size: the log was rewritten or forked",
                size=previous.size,
            )
        self.summary.previous_size = previous.size
        self.good = max(self.good, previous.size)

    async def _head(self, head: tuple[int, bytes]) -> None:
        if self.tree.root() != head[1]:
            await self._root_mismatch(
                head[0],
                f"leaf does not match the stored tree head (ledger_head, size {head[0]})",
                f"ledger_head at size {head[0]}",
                "after the newest checkpoint",
            )

    async def _check_served_consistency(self, previous: Verified | None) -> None:
        newest = self.newest
        if previous is None or newest is None or not 0 < previous.size < newest.size:
            return
        try:
            proof = await self.source.consistency_proof(previous.size, newest.size)
        except SourceError as exc:
            self.summary.warnings.append(f"could not fetch a consistency proof: {exc}")
            return
        if proof is None:
            return
        try:
            verify_consistency(previous.size, newest.size, proof, previous.root, self.summary.newest_root)
        except MerkleError as exc:
            raise AuditFailure(
                f"checkpoint at size {newest.size}: the consistency proof the gateway serves from size "
                f"{previous.size} does not verify ({exc.message})",
                size=newest.size,
            ) from None

    # --- failures ------------------------------------------------------------------------------------------------

    async def _first_changed(self, start: int, end: int) -> int | None:
        """The first index in [start, end) whose entry does not hash to its stored level-0 node, if the source
        keeps a tree; None if they all match (or it keeps none)."""
        if not self.source.has_stored_tree or start >= end:
            return None
        stored = aiter(self.source.stored_leaves(start, end))
        try:
            async for first, batch in self.source.entries(start, end):
                _, nodes = await anext(stored)
                for offset, entry in enumerate(batch):
                    if nodes[offset] != _sha256(b"\x00" + entry).digest():
                        return first + offset
        except UnreadableEntry as exc:
            return exc.index
        return None

    async def _root_mismatch(self, size: int, what: str, subject: str, when: str) -> None:
        """The recomputed root at ``size`` is not the one ``subject`` states: name the entry if the stored tree can,
        else the range since the last confirmed root."""
        changed = await self._first_changed(self.good, size)
        span = f"entries {self.good}..{size - 1} changed {when}"
        if changed is not None:
            raise AuditFailure(
                f"entry {changed}: {what} ({span}; its leaf hash differs from the stored node (0, {changed}))",
                index=changed,
            )
        raise AuditFailure(f"{subject}: the entries give another root ({span})", size=size)

    async def _fail(self, line: str, index: int) -> None:
        """Fail at entry ``index``, unless an earlier entry since the last confirmed root was changed."""
        changed = await self._first_changed(self.good, index)
        if changed is not None and changed < index:
            raise AuditFailure(
                f"entry {changed}: its leaf hash differs from the stored node (0, {changed}): the entry was changed "
                "after it was appended",
                index=changed,
            )
        raise AuditFailure(line, index=index)


async def verify_ledger(
    source: Source,
    trust: Trust,
    state: AuditState,
    *,
    progress: Progress | None = None,
    max_unwitnessed: int | None = None,
) -> Summary:
    """Run the audit; return the summary or raise :class:`AuditFailure` (saving the state only when the log
    verified). With ``max_unwitnessed``, more entries than that after the largest size a witness cosigned is a
    failure, raised after the state was saved."""
    return await _Audit(source, trust, state, progress, max_unwitnessed).run()
