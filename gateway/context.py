"""The running gateway: settings, unsealed keys, the verified directory, the database and the ledger.

Everything a handler or the outbox needs is reached through one :class:`Gateway` object, built by
:meth:`Gateway.load` when the server starts (or by tests). Private keys live only in this object's memory.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Any, TypeVar

from joserfc.jwk import OKPKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from config.directory import AuthorityEntry, Directory, read_directory
from config.directory_model import DirectoryKey
from config.errors import ConfigError, DirectoryExpired, DirectoryRolledBack
from config.settings import Settings
from crypto.errors import ProfileViolation
from crypto.keys import (
    DEFAULT_KDF,
    AuthorityKeys,
    import_public_jwk,
    key_id,
    public_jwk,
    sealed_kdf_params,
    tls_key_passwords,
)
from crypto.note import CosignatureSigner, NoteSigner, sign_note
from crypto.tls import key_pem_password
from gateway.coalesce import Coalescer
from gateway.committer import Committer, Finish, Tx, Unit, done
from gateway.limits import DELIVERY_WAIT_SECONDS, DeliverySlots, TokenBuckets
from gateway.logs import get_logger
from gateway.metrics import Metrics
from protocol.checkpoint import ledger_origin
from protocol.errors import ComityError
from protocol.events import EventType
from protocol.markings import MarkingScheme
from protocol.timefmt import parse_time
from store.db import is_sqlite, make_engine, make_reader
from store.events import EventLog
from store.facts import claim_fact, read_fact, read_facts, write_fact
from store.ledger import WitnessState
from store.messages import Messages, Seen
from store.outbox import Outbox
from store.tokens import Tokens

__all__ = ["Gateway", "PeerBlocked", "utcnow"]

HEAD_REVISION = "0014"
T = TypeVar("T")


class PeerBlocked(ComityError):
    code = "peer-blocked"


def utcnow() -> datetime:
    return datetime.now(UTC)


# (message id, peer, sealed envelope, its SHA-256): a message committed to the outbox under a direct lease
DirectDelivery = Callable[[str, str, bytes, str, datetime], None]


@dataclass
class Gateway:
    settings: Settings
    keys: AuthorityKeys
    directory: Directory
    engine: AsyncEngine
    clock: Callable[[], datetime] = utcnow
    tls_password: bytes = field(default=b"", repr=False)
    scheme: MarkingScheme = field(default_factory=MarkingScheme)
    outbox_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # set by a running outbox sender: hand it a message just committed, to send at once (gateway/outbox.py)
    direct_delivery: DirectDelivery | None = None
    # messages of ours that a queued one follows (decision 112): when a direct delivery of one of them ends, the
    # claim loop wakes at once instead of at its next poll (gateway/outbox.py)
    outbox_awaited: set[str] = field(default_factory=set)
    metrics: Metrics = field(default_factory=Metrics)
    # counterparts whose ledger forked or was rewritten: no exchange until an operator clears the alarm
    blocked_peers: set[str] = field(default_factory=set)
    # our signing keys that an earlier installed directory did not list: not before then, if another key can sign
    signing_earliest: dict[str, datetime] = field(default_factory=dict)
    # peer -> every signing key (by kid) a directory installed here listed for it (decision 152)
    signing_ever: dict[str, dict[str, OKPKey]] = field(default_factory=dict)
    # peer -> when we last receipted a new envelope of its (whom the witness polls and what it expects, decision 78)
    peers_heard: dict[str, datetime] = field(default_factory=dict)
    # message id -> set when the delivery of it now being received ends: a second one waits (gateway/receiving.py)
    receiving_ids: dict[str, asyncio.Event] = field(default_factory=dict)

    def await_delivery_of(self, message_id: str) -> None:
        """A message just queued follows ``message_id``: wake the claim loop as soon as its direct delivery here
        ends. Bounded: past a thousand (ones another replica delivers are never removed) it starts afresh, and
        the loop's poll covers what it forgot."""
        if len(self.outbox_awaited) >= 1000:
            self.outbox_awaited.clear()
        self.outbox_awaited.add(message_id)

    def __post_init__(self) -> None:
        sqlite = is_sqlite(self.settings.database_dsn)
        self.events = EventLog(for_update=not sqlite)
        self.outbox = Outbox(skip_locked=not sqlite)
        self.origin = ledger_origin(self.settings.authority_id)
        self.witness_name = f"comity-witness/{self.settings.authority_id}"
        # every signing key we hold, newest first, each with its note signer and cosigner: which one signs depends
        # on the time (signing_key)
        self._signing_keys = self.keys.signing_keys()
        self._current_kid = next(iter(self._signing_keys))
        self._note_signers = {kid: NoteSigner(self.origin, key) for kid, key in self._signing_keys.items()}
        self._cosigners = {kid: CosignatureSigner(self.witness_name, key) for kid, key in self._signing_keys.items()}
        self.committer = Committer(self)
        self.archive_public = import_public_jwk(public_jwk(self.keys.archive), use="enc")
        self._recipient_keys = MappingProxyType(self.keys.decryption_keys("encryption"))
        self._encryption_kid = key_id(self.keys.encryption)
        self._archive_keys = MappingProxyType(self.keys.decryption_keys("archive"))
        # reads that need no transaction (store/db.py)
        self.reader = make_reader(self.settings.database_dsn, self.engine, pool_size=self.settings.db_pool_size)
        # the two reads of every API call and every incoming envelope, gathered when concurrent (gateway/coalesce.py)
        self.tokens_seen: Coalescer[str, Mapping[str, Any]] = Coalescer(self._tokens_by_digest)
        self.ids_seen: Coalescer[str, Seen] = Coalescer(self._messages_seen)
        # how many ledgered refusals each peer may still cost us (gateway/limits.py)
        self.refusal_budget = TokenBuckets(self.settings.peer_refusals_per_minute, self.settings.peer_refusal_burst)
        rate, burst = self.settings.api_requests_per_minute, self.settings.api_request_burst
        self.api_budget = TokenBuckets(rate, burst) if rate else None  # per user (decision 177)
        # how many of each peer's deliveries are read and checked at once (gateway/limits.py)
        self.delivery_slots = DeliverySlots(self.settings.peer_deliveries_at_once, DELIVERY_WAIT_SECONDS)

    # --- identity -----------------------------------------------------------------------------------------------

    @property
    def authority_id(self) -> str:
        return self.settings.authority_id

    def today(self, now: datetime | None = None) -> date:
        """The date in the authority's own calendar (``time_zone``, decision 119), now or at ``now``: what case dates
        and tasks, due lists and notifications count from."""
        return self.settings.today(now or self.clock())

    def peer(self, authority_id: str) -> AuthorityEntry:
        """A counterpart from the directory; refuses an expired directory and a peer under a ledger alarm."""
        self.check_directory()
        entry = self.directory.authority(authority_id)
        if authority_id in self.blocked_peers:
            raise PeerBlocked(
                f"{authority_id} is blocked: its ledger was found forked or rewritten; "
                f"an operator must investigate and run 'comity peer clear {authority_id}'"
            )
        return entry

    def stored_sender_keys(self, peer: str) -> dict[str, OKPKey]:
        """The keys to check a stored envelope of ``peer`` against: every signing key a directory installed here
        listed for it. Received, it was verified under the directory of its day; a later one that drops the key, or
        the authority, must not make what was received unreadable (decision 152)."""
        keys = dict(self.signing_ever.get(peer, {}))
        listed = self.directory.get(peer)
        return keys if listed is None else keys | listed.all_signing_keys()

    def check_directory(self) -> None:
        if parse_time(self.directory.expires_at) <= self.clock():
            raise DirectoryExpired(
                f"directory serial {self.directory.serial} expired at {self.directory.expires_at}; "
                "install a newer signed directory"
            )

    def recipient_keys(self) -> Mapping[str, OKPKey]:
        """Our encryption keys by kid: the current one and every one retired by ``comity keys rotate`` (to open what
        we stored)."""
        return self._recipient_keys

    def receiving_keys(self, when: datetime) -> Mapping[str, OKPKey]:
        """The encryption keys an incoming envelope may be sealed to at ``when``: those our directory entry lists as
        valid then (a retired one during a rotation's overlap, never after), and the current one until the directory
        lists it (a rotation not yet published)."""
        listed = [key for key in self.directory.authority(self.authority_id).keys if key.use == "enc"]
        valid = {key.kid for key in listed if key.valid_at(when)}
        if all(key.kid != self._encryption_kid for key in listed):  # not yet published: no say on it yet
            valid.add(self._encryption_kid)
        return {kid: key for kid, key in self._recipient_keys.items() if kid in valid}

    def signing_key_valid(self, when: datetime) -> bool:
        """Whether our directory entry lists one of our signing keys as valid at ``when`` (receipts must be signed
        by such a key, decision 71)."""
        entry = self.directory.authority(self.authority_id)
        return any(key.kid in self._signing_keys and key.valid_at(when) for key in entry.keys if key.use == "sig")

    def signing_key(self, when: datetime) -> OKPKey:
        """The key we sign with at ``when`` (decision 73): of ours, the one our directory entry lists as valid from
        ``max_clock_skew_seconds`` before ``when`` to as long after (so that a peer whose clock is that far off finds
        it valid too) with the latest ``not_before`` (the current one among equals: rotated twice before publishing,
        both new keys start together); else the same among those valid at ``when``; else the current one (and then
        we receipt nothing, ``not-ready``). A rotated key takes over only once the directory says so,
        with that margin; a key in ``signing_earliest`` (deferred past a directory that did not list it) only from
        that margin after its time, unless no other key qualifies."""
        return self._signing_keys[self._signing_kid(when)]

    def _signing_kid(self, when: datetime) -> str:
        if len(self._signing_keys) == 1:  # never rotated: nothing to choose
            return self._current_kid
        listed = [
            key
            for key in self.directory.authority(self.authority_id).keys
            if key.use == "sig" and key.kid in self._signing_keys
        ]
        margin = timedelta(seconds=self.settings.max_clock_skew_seconds)
        # a key deferred past a directory that did not list it signs only when no other key can (decision 73), and
        # from a skew margin after that directory's expiry, as a new key does after its not_before
        ready = [key for key in listed if when - margin >= self.signing_earliest.get(key.kid, when - margin)]
        for candidates in (ready, listed):
            for earliest, latest in ((when - margin, when + margin), (when, when)):
                valid = [key for key in candidates if key.valid_at(earliest) and key.valid_at(latest)]
                if valid:  # the newest: the latest start of validity, and our current key among equals
                    return max(valid, key=lambda key: (parse_time(key.not_before), key.kid == self._current_kid)).kid
        return self._current_kid

    def archive_keys(self) -> Mapping[str, OKPKey]:
        return self._archive_keys

    def own_signing_keys(self) -> dict[str, OKPKey]:
        return dict(self._signing_keys)

    def sign_checkpoint(self, body: str) -> str:
        return sign_note(body, [self._note_signers[self._signing_kid(self.clock())]])

    def note_verifier_key(self) -> str:
        """The verifier key of the checkpoints we sign now (C2SP signed-note ``vkey``)."""
        return self._note_signers[self._signing_kid(self.clock())].verifier_key()

    def cosigner(self, when: datetime) -> CosignatureSigner:
        """Our witness signer at ``when``: the one of :meth:`signing_key`."""
        return self._cosigners[self._signing_kid(when)]

    # --- storage ------------------------------------------------------------------------------------------------

    async def _tokens_by_digest(self, digests: Sequence[str]) -> dict[str, Mapping[str, Any]]:
        async with self.reader.connect() as conn:
            return await Tokens.by_digest(conn, digests)

    async def _messages_seen(self, message_ids: Sequence[str]) -> dict[str, Seen]:
        async with self.reader.connect() as conn:
            return await Messages.seen_many(conn, message_ids)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    async def commit(self, unit: Unit[T]) -> T:
        """Run ``unit`` in the next group commit (gateway/committer.py): its rows and events commit together."""
        return await self.committer.run(unit)

    # --- life cycle ---------------------------------------------------------------------------------------------

    @classmethod
    async def load(cls, settings: Settings, passphrase: bytes, *, clock: Callable[[], datetime] = utcnow) -> Gateway:
        """Unseal the keys, open the database, verify the directory (no roll-back) and record a new serial."""
        try:
            sealed = settings.keys_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the key file {exc.filename}: {exc.strerror}; run 'comity init'") from None
        keys = AuthorityKeys.unseal(sealed, passphrase)
        _warn_if_weakly_sealed(sealed)
        engine = make_engine(settings.database_dsn, pool_size=settings.db_pool_size)
        try:
            async with engine.connect() as conn:
                await _check_schema(conn)
                seen = int(await read_fact(conn, DIRECTORY_SERIAL) or 0)
            directory = read_directory(settings, now=clock(), min_serial=seen)
            gateway = cls(
                settings=settings,
                keys=keys,
                directory=directory,
                engine=engine,
                clock=clock,
                tls_password=_tls_password(settings, keys),
            )
            if directory.serial > seen:
                await gateway._install_directory()
            else:
                await gateway._remember_directory()  # the same serial: the same document, or a refusal
            gateway.signing_ever = await gateway._remember_peer_keys()
            async with engine.connect() as conn:
                gateway.blocked_peers = {alarm.peer for alarm in await WitnessState.open_alarms(conn)}
                earliest = await read_fact(conn, SIGNING_EARLIEST) or {}
            gateway.signing_earliest = {kid: parse_time(at) for kid, at in earliest.items()}
            return gateway
        except BaseException:
            await engine.dispose()
            raise

    async def _install_directory(self) -> None:
        serial = str(self.directory.serial)
        own, facts = self._directory_facts()

        async def unit(tx: Tx) -> Finish[tuple[dict[str, str], dict[str, str]] | None]:
            # read again in the installing transaction: another replica may have installed one since we looked
            current = int(await read_fact(tx.conn, DIRECTORY_SERIAL) or 0)
            if current > self.directory.serial:
                raise DirectoryRolledBack(
                    f"directory serial {serial} is lower than {current}, which another replica installed meanwhile; "
                    "install that directory here too"
                )
            if current == self.directory.serial:  # another replica installed this serial meanwhile: the same document?
                await _same_document(tx.conn, self.directory.serial, _digest(self.directory))
                return await done(None)
            await write_fact(tx.conn, DIRECTORY_SERIAL, self.directory.serial)
            await write_fact(
                tx.conn, DIRECTORY_DIGEST, {"serial": self.directory.serial, "sha256": _digest(self.directory)}
            )
            prior = await read_fact(tx.conn, DIRECTORY_FACTS)
            before = await read_fact(tx.conn, SIGNING_EARLIEST) or {}
            earliest = defer_new_signing_keys(prior, facts["signing"], before)
            await write_fact(tx.conn, DIRECTORY_FACTS, facts)
            await write_fact(tx.conn, SIGNING_EARLIEST, earliest)
            tx.record(EventType.DIRECTORY_INSTALLED, "system", subject=f"serial:{serial}")
            return await done((before, earliest))

        installed = await self.commit(unit)
        if installed is None:
            return
        before, earliest = installed
        for key in own:  # deferred by this directory, from a time it says the key is valid
            deferred = key.kid in earliest and earliest[key.kid] != before.get(key.kid)
            if deferred and parse_time(key.not_before) < parse_time(earliest[key.kid]):
                get_logger().error(
                    "signing_key_published_late", kid=key.kid, valid_from=key.not_before, deferred_to=earliest[key.kid]
                )

    def _directory_facts(self) -> tuple[list[DirectoryKey], dict[str, Any]]:
        """Our entry's keys in the installed directory, and what to remember of it: its expiry and our signing kids
        (``None`` when it does not list us: counterparts holding it cannot reach us anyway)."""
        entry = self.directory.get(self.authority_id)
        own = entry.keys if entry is not None else []
        signing = sorted(key.kid for key in own if key.use == "sig") if own else None
        return own, {"expires_at": self.directory.expires_at, "signing": signing}

    async def _remember_peer_keys(self) -> dict[str, dict[str, OKPKey]]:
        """Add the peers' signing keys of the directory we run with to those remembered from every directory
        installed before (one fact per peer, merged under its row lock, so replicas starting at once lose none),
        and return them all."""
        listed = {
            entry.id: {key.kid: key.jwk for key in entry.keys if key.use == "sig"}
            for entry in self.directory.authorities
            if entry.id != self.authority_id
        }
        async with self.reader.connect() as conn:
            remembered: dict[str, dict[str, Any]] = await read_facts(conn, PEER_SIGNING_KEYS)
        for peer, keys in listed.items():
            if keys.keys() <= remembered.get(peer, {}).keys():
                continue
            async with self.transaction() as conn:
                await claim_fact(conn, PEER_SIGNING_KEYS + peer, {})
                merged = {**await read_fact(conn, PEER_SIGNING_KEYS + peer, lock=True), **keys}
                await write_fact(conn, PEER_SIGNING_KEYS + peer, merged)
            remembered[peer] = merged
        return {
            peer: {kid: import_public_jwk(jwk, use="sig") for kid, jwk in keys.items()}
            for peer, keys in remembered.items()
        }

    async def _remember_directory(self) -> None:
        """The serial installed already: the document must be the one installed under it (decision 97), and the
        facts of a directory installed before this version kept them are written once, at the next start."""
        _, facts = self._directory_facts()
        serial, digest = self.directory.serial, _digest(self.directory)

        async def unit(tx: Tx) -> Finish[None]:
            installed = await _same_document(tx.conn, serial, digest)
            if installed is None:  # installed before this version kept its digest
                await write_fact(tx.conn, DIRECTORY_DIGEST, {"serial": serial, "sha256": digest})
            if await read_fact(tx.conn, DIRECTORY_FACTS) is None:
                await write_fact(tx.conn, DIRECTORY_FACTS, facts)
            return await done(None)

        await self.commit(unit)

    async def close(self) -> None:
        await self.committer.close()
        if self.reader.sync_engine is not self.engine.sync_engine:
            await self.reader.dispose()
        await self.engine.dispose()


async def _same_document(conn: AsyncConnection, serial: int, digest: str) -> Any:
    """Raise unless the directory document recorded as installed under ``serial`` (if any) is the one of ``digest``
    (decision 97); the record, or None if none is kept."""
    installed = await read_fact(conn, DIRECTORY_DIGEST)
    if isinstance(installed, dict) and installed.get("serial") == serial and installed.get("sha256") != digest:
        raise DirectoryRolledBack(
            f"directory serial {serial} differs from the directory installed under serial {serial}: a "
            f"directory changes only under a new serial; ask the directory operator for serial {serial + 1}"
        )
    return installed


async def _check_schema(conn: AsyncConnection) -> None:
    try:
        revision = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one_or_none()
    except Exception:
        revision = None
    if revision != HEAD_REVISION:
        raise ConfigError(
            f"database schema is at {revision or 'nothing'}, not {HEAD_REVISION}; run 'comity db upgrade'"
        )


def _warn_if_weakly_sealed(sealed: bytes) -> None:
    """A key file sealed with ``--kdf-fast`` (tests, the benchmark) opens like any other; a gateway must not run on one
    unnoticed, since a stolen copy's passphrase is then far cheaper to guess. The parameters only: no secret."""
    params = sealed_kdf_params(sealed)
    if params.weaker_than(DEFAULT_KDF):
        get_logger().warning(
            "keys_sealed_with_weak_kdf",
            time_cost=params.time_cost,
            memory_kib=params.memory_kib,
            parallelism=params.parallelism,
            expected_time_cost=DEFAULT_KDF.time_cost,
            expected_memory_kib=DEFAULT_KDF.memory_kib,
        )


def _tls_password(settings: Settings, keys: AuthorityKeys) -> bytes:
    """The password our TLS key PEM opens with: the current signing key's, or a retired one's if a signing key
    rotation stopped before re-encrypting the PEM (the next start then still serves)."""
    candidates = tls_key_passwords(keys)
    try:
        pem = settings.tls_key_path.read_bytes()
    except OSError:  # serving TLS reports it, as before (a development gateway on plain HTTP needs none)
        return candidates[0]
    try:
        return key_pem_password(pem, candidates)
    except ProfileViolation:
        raise ConfigError(f"the TLS key {settings.tls_key_path} does not open with any of our signing keys") from None


DIRECTORY_SERIAL = "directory_serial"  # the highest directory serial installed (no roll-back below it)
DIRECTORY_DIGEST = "directory_sha256"  # {"serial", "sha256"}: the document installed under that serial
PEER_SIGNING_KEYS = "peer_signing_keys:"  # + a peer's id: {kid: public JWK} of its signing keys ever listed here


def _digest(directory: Directory) -> str:
    """SHA-256 of the directory's signed payload (its RFC 8785 bytes): one per document, whoever signed it when."""
    return hashlib.sha256(directory.to_bytes()).hexdigest()


DIRECTORY_FACTS = "directory_facts"  # the installed directory's expiry and the signing kids of our entry in it
SIGNING_EARLIEST = "signing_earliest"  # our signing kid -> the time before which it signs only if no other can


def defer_new_signing_keys(
    prior: Mapping[str, Any] | None, signing: Sequence[str] | None, earliest: Mapping[str, str]
) -> dict[str, str]:
    """``earliest`` with every kid of ``signing`` (our entry's signing keys in a directory being installed) that the
    previously installed directory (``prior``: its ``expires_at`` and ``signing`` kids) did not list deferred to
    that directory's expiry: counterparts may hold it until then, and it does not know the key (decision 73). No
    deferral when that directory did not list us at all (``signing`` None: no one could reach us with it); a
    deferral only ever grows."""
    result = dict(earliest)
    if prior is None or prior["signing"] is None:
        return result
    for kid in signing or ():
        if kid not in prior["signing"]:
            result[kid] = max(result.get(kid, prior["expires_at"]), prior["expires_at"], key=parse_time)
    return result
