"""The federation endpoint: ``POST /federation/v1/envelopes`` (see docs/protocol.md for every byte).

The body is either the envelope alone (``application/jose``, no attachments) or ``multipart/mixed`` whose first
part is the envelope and whose following parts are the attachment ciphertexts in manifest order. The answer is
``{"receipt": "<JWS>"}`` with status 200, or a problem document with a signed ``refusal``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from typing import TypeVar

from aiohttp import BodyPartReader, ClientPayloadError, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from crypto.errors import OversizedEnvelope
from crypto.note import NoteError, add_signatures, open_note
from gateway.context import Gateway
from gateway.limits import BodyStalled, Busy, TooManyRefusals
from gateway.logs import get_logger
from gateway.params import MAX_INDEX, int_param
from gateway.problems import problem_response
from gateway.receiving import AttachmentParts, EnvelopeRefused, PeerError, receive_envelope, refuse
from gateway.tls import peer_pin
from gateway.witness import RECEIPT_PROOF_PATH, cosignature_verifiers
from protocol.errors import ComityError, InvalidMessage, StaleMessage
from protocol.events import EventType
from protocol.messages import AUTHORITY_ID_RE, parse_strict_json
from protocol.timefmt import format_time
from store.errors import NotFound
from store.ledger import LedgerReader

__all__ = ["GATEWAY", "federation_routes"]

GATEWAY = web.AppKey("gateway", Gateway)
READ_SIZE = 1 << 16
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
BUSY_RETRY_AFTER = 1  # seconds
COSIGNATURE_MAX_BYTES = 8192
_T = TypeVar("_T")


async def _read_limited(chunks: AsyncIterator[bytes], limit: int, into: bytearray) -> bytes:
    """Read the envelope into ``into``; past ``limit`` bytes, stop. What was read stays in ``into``: a refusal names
    the digest of the bytes read so far (docs/protocol.md section 10)."""
    async for chunk in chunks:
        into += chunk
        if len(into) > limit:
            raise OversizedEnvelope(f"the envelope exceeds {limit} bytes")
    return bytes(into)


# what aiohttp's multipart reader raises on a broken body (broken chunked framing aiohttp answers 400 itself:
# tests/gateway/test_federation_limits.py::test_broken_chunked_framing_is_answered_at_once_and_nothing_is_kept)
BODY_ERRORS = (ValueError, ClientPayloadError, HttpProcessingError)


def malformed_body(exc: Exception) -> InvalidMessage:
    # aiohttp's multipart reader raises ValueError / ClientPayloadError on a broken body: a typed refusal instead
    return InvalidMessage(f"the multipart body is malformed ({type(exc).__name__})")


async def _in_time(read: Awaitable[_T], seconds: float | None) -> _T:
    """``await read``, or :class:`BodyStalled` when no bytes came for ``seconds`` (None: a deadline around the
    caller bounds it already, no timer of its own)."""
    if seconds is None:
        return await read
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await read
    except TimeoutError:
        if deadline.expired():  # ours, not a TimeoutError of the connection's (ETIMEDOUT) passed on by the read
            raise BodyStalled(f"no bytes of the body arrived for {seconds:g} s") from None
        raise


async def _part_chunks(part: BodyPartReader, idle: float | None) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await _in_time(part.read_chunk(READ_SIZE), idle)
        except BODY_ERRORS as exc:
            raise malformed_body(exc) from None
        if not chunk:
            return
        yield chunk


async def _stream_chunks(request: web.Request) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await request.content.read(READ_SIZE)
        except BODY_ERRORS as exc:  # as on the multipart path
            raise malformed_body(exc) from None
        if not chunk:
            return
        yield chunk


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


async def _no_more_parts() -> AsyncIterator[bytes] | None:
    return None


def _identify_peer(gw: Gateway, request: web.Request) -> str | None:
    pin = peer_pin(request.transport)
    if pin is None:
        # plain HTTP exists only behind the development flag, on loopback (config/settings.py refuses otherwise)
        claimed = request.headers.get("Comity-Dev-Peer", "")
        return claimed if gw.settings.dev_plain_http and AUTHORITY_ID_RE.fullmatch(claimed) else None
    entry = gw.directory.by_tls_pin(pin)
    return None if entry is None else entry.id


def _turned_away(gw: Gateway, peer_id: str) -> web.Response | None:
    """None once a token of the peer's refusal budget is taken (gateway/limits.py); else 429: the body is not
    parsed, nothing is signed or ledgered, and its outbox tries again."""
    wait = gw.refusal_budget.take(peer_id)
    if wait <= 0:
        return None
    gw.metrics.limited.labels(peer=peer_id).inc()
    if gw.refusal_budget.starts_limit(peer_id):
        get_logger(peer=peer_id).warning("peer_refusals_limited", retry_after=math.ceil(wait))
    response = problem_response(
        TooManyRefusals.code, f"too many of your envelopes were refused; try again in {math.ceil(wait)} s"
    )
    response.headers["Retry-After"] = str(math.ceil(wait))
    response.force_close()  # not kept alive: its body is discarded, not read
    return response


async def post_envelope(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    peer_id = _identify_peer(gw, request)
    if peer_id is None:
        return await _refuse_unread(gw, PeerError("the client certificate matches no authority in the directory"))
    if (limited := _turned_away(gw, peer_id)) is not None:
        return limited
    refused = False  # the token taken pays for a (ledgered) refusal of the peer, and only for one
    try:
        try:
            gw.peer(peer_id)  # an expired directory, a blocked peer: refused before its body is read
        except ComityError as error:
            response = await _refuse_unread(gw, error, peer_id=peer_id)
            refused = True
            return response
        async with gw.delivery_slots.hold(peer_id):
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("the client left while its delivery waited for a slot")
            response, refused = await _receive(gw, request, peer_id)
        return response
    except Busy as busy:
        gw.metrics.busy.labels(peer=peer_id).inc()
        response = problem_response(busy.code, busy.message)
        response.headers["Retry-After"] = str(BUSY_RETRY_AFTER)
        response.force_close()  # not kept alive: its body is discarded, not read
        return response
    except BodyStalled as stalled:  # answered by gateway/problems.py
        gw.metrics.stalled.labels(peer=peer_id).inc()
        stalled.peer = peer_id
        raise
    finally:
        if not refused:
            gw.refusal_budget.give_back(peer_id)


async def _refuse_unread(gw: Gateway, error: ComityError, *, peer_id: str | None = None) -> web.Response:
    """A signed refusal sent before a byte of the body is read (docs/protocol.md section 9.1): it names the digest
    of the empty string and no message id, and is ledgered for an authenticated peer only. The connection is not
    kept alive: aiohttp discards what of the body still arrives for at most its lingering time (10 s), then closes."""
    refusal = await refuse(gw, error, EMPTY_SHA256, peer_id=peer_id, claimed=None, message_id=None)
    response = problem_response(error.code, error.message, refusal=refusal)
    response.force_close()
    return response


async def _receive(gw: Gateway, request: web.Request, peer_id: str) -> tuple[web.Response, bool]:
    """The answer, and whether it is a signed (and ledgered) refusal."""
    limit, seconds = gw.settings.max_envelope_bytes, gw.settings.body_read_seconds
    read = bytearray()  # the envelope's bytes as they arrive
    try:
        try:
            deadline = asyncio.timeout(seconds)  # the whole envelope, however it trickles
            try:
                async with deadline:
                    sealed, next_part = await _read_envelope(request, limit, seconds, read)
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise BodyStalled(f"the envelope did not arrive within {seconds:g} s") from None
            read.clear()  # ``sealed`` holds the bytes: one copy, not two, while the delivery goes on
        except ComityError as error:
            digest = hashlib.sha256(read).hexdigest()  # of the bytes read so far: none, some, or past the limit
            refusal = await refuse(gw, error, digest, peer_id=peer_id, claimed=None, message_id=None)
            raise EnvelopeRefused(error, refusal) from None
        received = await receive_envelope(gw, peer_id=peer_id, sealed=sealed, next_part=next_part)
    except EnvelopeRefused as refused:
        return problem_response(refused.error.code, refused.error.message, refusal=refused.refusal), True
    if peer_id is not None and not received.duplicate:  # its ledger will record our receipt (decision 78)
        gw.peers_heard[peer_id] = gw.clock()
    body = json.dumps({"receipt": received.receipt}).encode()
    return web.Response(body=body, content_type="application/json"), False


async def _read_envelope(
    request: web.Request, limit: int, idle: float, read: bytearray
) -> tuple[bytes, AttachmentParts]:
    """The envelope's bytes (also left in ``read``), and how to get the attachment parts that follow it. The
    caller's deadline bounds the envelope's reads; ``idle`` bounds each read of the parts after it."""
    codings = [c.strip().lower() for h in request.headers.getall("Content-Encoding", []) for c in h.split(",")]
    if any(coding != "identity" for coding in codings):
        raise InvalidMessage("send the body without a Content-Encoding")  # no decompression on our side
    if request.content_type == "application/jose":
        return await _read_limited(_stream_chunks(request), limit, read), _no_more_parts
    if request.content_type != "multipart/mixed":
        raise InvalidMessage("send application/jose, or multipart/mixed with attachments")
    try:
        reader = await request.multipart()
        first = await reader.next()
    except BODY_ERRORS as exc:
        raise malformed_body(exc) from None
    if not isinstance(first, BodyPartReader) or _media_type(first.headers.get("Content-Type")) != "application/jose":
        raise InvalidMessage("the first part must be the envelope, of type application/jose")
    return await _read_limited(_part_chunks(first, None), limit, read), _parts(reader, idle)


def _parts(reader: MultipartReader, idle: float) -> AttachmentParts:
    async def next_part() -> AsyncIterator[bytes] | None:
        try:
            part = await _in_time(reader.next(), idle)
        except BODY_ERRORS as exc:
            raise malformed_body(exc) from None
        if part is None:
            return None
        if not isinstance(part, BodyPartReader):
            raise InvalidMessage("nested multipart bodies are not allowed")
        return _part_chunks(part, idle)

    return next_part


def _authenticated_peer(request: web.Request) -> str:
    gw = request.app[GATEWAY]
    peer_id = _identify_peer(gw, request)
    if peer_id is None:
        raise PeerError("the client certificate matches no authority in the directory")
    gw.peer(peer_id)  # refuses an expired directory and a blocked peer
    return peer_id


async def get_consistency(request: web.Request) -> web.Response:
    """A consistency proof between two sizes of our ledger, for a witnessing peer."""
    _authenticated_peer(request)
    gw = request.app[GATEWAY]
    size1, size2 = int_param(request.query, "from"), int_param(request.query, "to")
    async with gw.reader.connect() as conn:
        head = await gw.events.head(conn)
        if not 0 < size1 <= size2 <= head.size:
            raise InvalidMessage(f"sizes must satisfy 0 < from <= to <= {head.size}")
        proof = await LedgerReader.consistency(conn, size1, size2)
    body = {"from": size1, "to": size2, "proof": [base64.b64encode(node).decode() for node in proof]}
    return web.json_response(body)


class NotAReception(ComityError):
    """9.6: the entry asked for is not our reception of a message from the caller (told apart from an unknown path,
    which a gateway without 9.6 answers ``not-found``)."""

    code = "not-a-reception"


async def get_receipt_proof(request: web.Request) -> web.Response:
    """The entry at ``index``, if it records our reception of a message from the caller, with its inclusion proof in
    the tree of ``size``: what the sender needs to check that a receipt's ``ledger_index`` is its message (9.6)."""
    peer_id = _authenticated_peer(request)
    gw = request.app[GATEWAY]
    index, size = int_param(request.query, "index"), int_param(request.query, "size")
    async with gw.reader.connect() as conn:
        head = await gw.events.head(conn)
        if not index < size <= head.size:
            raise InvalidMessage(f"index and size must satisfy index < size <= {head.size}")
        found = await LedgerReader.entry(conn, index)
        # another authority's entries, or ours about something else, are none of the caller's business
        if found is None or found[0] != EventType.RECEIVED.value or json.loads(found[1]).get("from") != peer_id:
            raise NotAReception(f"the entry at {index} does not record a message received from {peer_id}")
        _, proof, _ = await LedgerReader.inclusion(conn, index, size)
    body = {
        "index": index,
        "size": size,
        "entry": base64.b64encode(found[1]).decode(),
        "proof": [base64.b64encode(node).decode() for node in proof],
    }
    return web.json_response(body)


async def _read_small(request: web.Request, limit: int, seconds: float) -> bytes:
    """The body, or its first ``limit`` + 1 bytes if it is longer, all within ``seconds`` (:class:`BodyStalled`)."""
    read = bytearray()
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            while len(read) <= limit and (chunk := await request.content.read(limit + 1 - len(read))):
                read += chunk
    except TimeoutError:
        if not deadline.expired():
            raise
        raise BodyStalled(f"the body did not arrive within {seconds:g} s") from None
    return bytes(read)


async def post_cosignature(request: web.Request) -> web.Response:
    """A peer's tlog-cosignature of one of our checkpoints; kept beside the checkpoint."""
    peer_id = _authenticated_peer(request)
    gw = request.app[GATEWAY]
    try:
        raw = await _read_small(request, COSIGNATURE_MAX_BYTES, gw.settings.body_read_seconds)
    except BodyStalled as stalled:  # answered by gateway/problems.py
        gw.metrics.stalled.labels(peer=peer_id).inc()
        stalled.peer = peer_id
        raise
    body = parse_strict_json(raw) if len(raw) <= COSIGNATURE_MAX_BYTES else None
    if (
        not isinstance(body, dict)
        or set(body) != {"size", "line"}
        or type(body["size"]) is not int
        or not isinstance(body["line"], str)
    ):
        raise InvalidMessage('send exactly {"size": <checkpoint size>, "line": "<cosignature line>"}, at most 8 KiB')
    if not 0 <= body["size"] <= MAX_INDEX:  # before any query: the database takes no larger one (decision 93)
        raise InvalidMessage(f"size must be an integer from 0 to {MAX_INDEX}")
    async with gw.reader.connect() as conn:
        text = await LedgerReader.checkpoint_text(conn, body["size"])
    if text is None:
        raise NotFound(f"no checkpoint of size {body['size']}")
    note = add_signatures(text, [body["line"]])
    verified = open_note(note, cosignature_verifiers(gw, peer_id))  # NoteError unless the peer's key signed it
    stamps = [(sig.timestamp, sig.key_id) for sig in verified.verified if sig.timestamp is not None]
    if not stamps:
        raise InvalidMessage("the line is not a cosignature")
    stamp, key_id = stamps[0]
    # the witness signs and posts at once: a cosignature dated far from our clock was kept back, or made up (twice
    # the skew: each of two honest clocks may be off by it)
    off, allowed = abs(stamp - int(gw.clock().timestamp())), 2 * gw.settings.max_clock_skew_seconds
    if off > allowed:
        raise StaleMessage(f"the cosignature is dated {off} s from our clock; at most {allowed} s is allowed")
    # by a key valid when it says it cosigned (decision 76), not merely one the directory lists
    when = datetime.fromtimestamp(stamp, UTC)
    if key_id not in {verifier.key_id for verifier in cosignature_verifiers(gw, peer_id, when)}:
        raise NoteError(f"the cosignature's key is not valid for {peer_id} at its time {format_time(when)}")
    async with gw.transaction() as conn:
        await LedgerReader.add_cosignature(conn, body["size"], f"comity-witness/{peer_id}", body["line"], gw.clock())
    return web.Response(status=204)


async def get_checkpoint(request: web.Request) -> web.Response:
    """The latest signed checkpoint of this gateway's ledger (a C2SP signed note)."""
    gw = request.app[GATEWAY]
    _authenticated_peer(request)
    async with gw.reader.connect() as conn:
        latest = await LedgerReader.latest_checkpoint_note(conn)
    if latest is None:
        return problem_response("not-found", "no checkpoint has been signed yet")
    return web.Response(text=latest[1], content_type="text/plain")  # with the cosignatures peers returned


def federation_routes() -> list[web.RouteDef]:
    return [
        web.post("/federation/v1/envelopes", post_envelope),
        web.get("/federation/v1/checkpoint", get_checkpoint),
        web.get("/federation/v1/consistency", get_consistency),
        web.post("/federation/v1/cosignatures", post_cosignature),
        web.get(RECEIPT_PROOF_PATH, get_receipt_proof),
    ]
