"""The federation endpoint: ``POST /federation/v1/envelopes`` (see docs/protocol.md for every byte).

The body is either the envelope alone (``application/jose``, no attachments) or ``multipart/mixed`` whose first
part is the envelope and whose following parts are the attachment ciphertexts in manifest order. The answer is
``{"receipt": "<JWS>"}`` with status 200, or a problem document with a signed ``refusal``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

from aiohttp import BodyPartReader, MultipartReader, web

from crypto.errors import OversizedEnvelope
from gateway.context import Gateway
from gateway.problems import problem_response
from gateway.receiving import EnvelopeRefused, receive_envelope, refuse
from gateway.tls import peer_pin
from protocol.errors import ComityError, InvalidMessage

__all__ = ["GATEWAY", "federation_routes"]

GATEWAY = web.AppKey("gateway", Gateway)
READ_SIZE = 1 << 16


async def _read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise OversizedEnvelope(f"the envelope exceeds {limit} bytes")
    return bytes(data)


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(READ_SIZE):
        yield chunk


async def _stream_chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(READ_SIZE):
        yield chunk


async def _no_more_parts() -> AsyncIterator[bytes] | None:
    return None


def _identify_peer(gw: Gateway, request: web.Request) -> str | None:
    pin = peer_pin(request.transport)
    if pin is None:
        # plain HTTP exists only behind the development flag, on loopback (config/settings.py refuses otherwise)
        return request.headers.get("Comity-Dev-Peer") if gw.settings.dev_plain_http else None
    entry = gw.directory.by_tls_pin(pin)
    return None if entry is None else entry.id


async def post_envelope(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    peer_id = _identify_peer(gw, request)
    limit = gw.settings.max_envelope_bytes
    sealed = b""
    try:
        try:
            if request.content_type == "application/jose":
                sealed = await _read_limited(_stream_chunks(request), limit)
                next_part = _no_more_parts
            elif request.content_type == "multipart/mixed":
                reader = await request.multipart()
                first = await reader.next()
                if not isinstance(first, BodyPartReader) or first.headers.get("Content-Type") != "application/jose":
                    raise InvalidMessage("the first part must be the envelope, of type application/jose")
                sealed = await _read_limited(_part_chunks(first), limit)
                next_part = _parts(reader)
            else:
                raise InvalidMessage("send application/jose, or multipart/mixed with attachments")
        except ComityError as error:
            digest = hashlib.sha256(sealed).hexdigest()
            raise EnvelopeRefused(error, await refuse(gw, error, digest, None, None)) from None
        received = await receive_envelope(gw, peer_id=peer_id, sealed=sealed, next_part=next_part)
    except EnvelopeRefused as refused:
        return problem_response(refused.error.code, refused.error.message, refusal=refused.refusal)
    return web.Response(body=json.dumps({"receipt": received.receipt}).encode(), content_type="application/json")


def _parts(reader: MultipartReader):  # type: ignore[no-untyped-def]
    async def next_part() -> AsyncIterator[bytes] | None:
        part = await reader.next()
        if part is None:
            return None
        if not isinstance(part, BodyPartReader):
            raise InvalidMessage("nested multipart bodies are not allowed")
        return _part_chunks(part)

    return next_part


async def get_checkpoint(request: web.Request) -> web.Response:
    """The latest signed checkpoint of this gateway's ledger (a C2SP signed note)."""
    gw = request.app[GATEWAY]
    async with gw.engine.connect() as conn:
        note = await gw.events.latest_checkpoint(conn)
    if note is None:
        return problem_response("not-found", "no checkpoint has been signed yet")
    return web.Response(text=note, content_type="text/plain")


def federation_routes() -> list[web.RouteDef]:
    return [
        web.post("/federation/v1/envelopes", post_envelope),
        web.get("/federation/v1/checkpoint", get_checkpoint),
    ]
