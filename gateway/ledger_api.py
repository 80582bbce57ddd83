"""The read-only auditor API over this gateway's ledger (``/v1/ledger/...``): checkpoints with cosignatures,
entries as they are hashed, and inclusion and consistency proofs read from stored subtree hashes.

Auditors see ledger metadata, never content: nothing here touches a message body (docs/ledger.md).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from aiohttp import web

from gateway.api import USER
from gateway.federation import GATEWAY
from gateway.openapi_parts import PROBLEM, json_ok
from gateway.params import int_param
from gateway.reading import Forbidden
from protocol.errors import InvalidMessage
from protocol.messages import validate_message_id
from store.errors import NotFound
from store.ledger import LedgerReader

__all__ = ["LEDGER_OPENAPI_PATHS", "LEDGER_ROLES", "ledger_routes"]

LEDGER_ROLES = {"auditor", "supervisor", "admin"}
MAX_ENTRIES = 100_000
ENTRIES_PAGE = 2_000  # entries read per database connection, then written to the client (about 1 MB)
MAX_CHECKPOINTS = 1000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_role(request: web.Request) -> None:
    user = request[USER]
    if user.role not in LEDGER_ROLES:
        raise Forbidden(f"the {user.role} role cannot read the ledger; auditors, supervisors and admins can")


async def _size(request: web.Request) -> int:
    gw = request.app[GATEWAY]
    async with gw.reader.connect() as conn:
        head = (await gw.events.head(conn)).size
    size = int_param(request.query, "size", head)
    if size > head:
        raise InvalidMessage(f"size {size} is beyond the ledger's {head} entries")
    return size


async def latest_checkpoint(request: web.Request) -> web.Response:
    _check_role(request)
    gw = request.app[GATEWAY]
    async with gw.reader.connect() as conn:
        latest = await LedgerReader.latest_checkpoint_note(conn)
        if latest is None:
            raise NotFound("no checkpoint has been signed yet")
        size, note = latest
        root = await LedgerReader.root(conn, size)
    return web.json_response({"size": size, "root": _b64(root), "note": note})


async def list_checkpoints(request: web.Request) -> web.Response:
    _check_role(request)
    after = int_param(request.query, "after", 0)
    limit = min(int_param(request.query, "limit", MAX_CHECKPOINTS), MAX_CHECKPOINTS)
    async with request.app[GATEWAY].reader.connect() as conn:
        notes = await LedgerReader.checkpoint_notes(conn, after, limit)
    return web.json_response({"checkpoints": [{"size": size, "note": note} for size, note in notes]})


async def entries(request: web.Request) -> web.StreamResponse:
    """NDJSON: line k is exactly the entry bytes of index start + k (canonical JSON holds no raw newline)."""
    _check_role(request)
    gw = request.app[GATEWAY]
    start, end = int_param(request.query, "start", 0), int_param(request.query, "end")
    if end < start or end - start > MAX_ENTRIES:
        raise InvalidMessage(f"ask for start <= end, at most {MAX_ENTRIES} entries per call")
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    # a page at a time, each read on a connection given back before the page is written: a client that stops
    # reading holds its socket, never a database connection the group commit needs (decision 170); entries never
    # change, so the pages need no common snapshot
    low = start
    while low < end:
        async with gw.reader.connect() as conn:
            page = await LedgerReader.entry_page(conn, low, min(low + ENTRIES_PAGE, end))
        await response.write(b"".join(entry + b"\n" for entry in page))
        if len(page) < min(ENTRIES_PAGE, end - low):  # the ledger ends here: its entries have no gaps
            break
        low += ENTRIES_PAGE
    await response.write_eof()
    return response


async def inclusion_proof(request: web.Request) -> web.Response:
    _check_role(request)
    gw = request.app[GATEWAY]
    size = await _size(request)
    async with gw.reader.connect() as conn:
        if "message_id" in request.query:
            message_id = request.query["message_id"]
            try:  # anything but a message id names no message (and may not reach PostgreSQL)
                found = await LedgerReader.index_of_message(conn, validate_message_id(message_id))
            except InvalidMessage:
                found = None
            if found is None:
                raise NotFound("no ledger entry names that message")
            index = found
        else:
            index = int_param(request.query, "index")
        if index >= size:
            raise InvalidMessage(f"index {index} is not in a tree of size {size}")
        leaf, proof, root = await LedgerReader.inclusion(conn, index, size)
    body = {
        "index": index,
        "size": size,
        "leaf_hash": _b64(leaf),
        "proof": [_b64(p) for p in proof],
        "root": _b64(root),
    }
    return web.json_response(body)


async def consistency_proof(request: web.Request) -> web.Response:
    _check_role(request)
    gw = request.app[GATEWAY]
    size1, size2 = int_param(request.query, "from"), int_param(request.query, "to")
    async with gw.reader.connect() as conn:
        head = (await gw.events.head(conn)).size
        if not 0 < size1 <= size2 <= head:
            raise InvalidMessage(f"sizes must satisfy 0 < from <= to <= {head}")
        proof = await LedgerReader.consistency(conn, size1, size2)
    return web.Response(
        body=json.dumps({"from": size1, "to": size2, "proof": [_b64(p) for p in proof]}).encode(),
        content_type="application/json",
    )


def ledger_routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/ledger/checkpoint", latest_checkpoint),
        web.get("/v1/ledger/checkpoints", list_checkpoints),
        web.get("/v1/ledger/entries", entries),
        web.get("/v1/ledger/proofs/inclusion", inclusion_proof),
        web.get("/v1/ledger/proofs/consistency", consistency_proof),
    ]


# --- OpenAPI (gateway/openapi.py merges these) ---------------------------------------------------------------------


def _openapi_paths() -> dict[str, Any]:
    """The read-only auditor API (gateway/ledger_api.py; formats in docs/ledger.md)."""
    size = {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 0}}
    proof = {
        "type": "object",
        "properties": {"proof": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}}},
    }
    denied = {"401": PROBLEM, "403": PROBLEM}
    return {
        "/v1/ledger/checkpoint": {
            "get": {
                "summary": "Latest signed checkpoint, with the cosignatures counterparts returned",
                "responses": {"200": json_ok("Checkpoint", {"type": "object"}), "404": PROBLEM, **denied},
            }
        },
        "/v1/ledger/checkpoints": {
            "get": {
                "summary": "Signed checkpoints after a size, ascending",
                "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 1000}},
                ],
                "responses": {"200": json_ok("Checkpoints", {"type": "object"}), **denied},
            }
        },
        "/v1/ledger/entries": {
            "get": {
                "summary": "Entries start..end-1, one canonical JSON entry per line, exactly the hashed bytes",
                "parameters": [
                    {"name": "start", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "end", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 0}},
                ],
                "responses": {"200": {"description": "NDJSON", "content": {"application/x-ndjson": {}}}, **denied},
            }
        },
        "/v1/ledger/proofs/inclusion": {
            "get": {
                "summary": "RFC 9162 inclusion proof of an entry (by index or by message id)",
                "parameters": [
                    {"name": "index", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "message_id", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                    size,
                ],
                "responses": {"200": json_ok("Inclusion proof", proof), "400": PROBLEM, "404": PROBLEM, **denied},
            }
        },
        "/v1/ledger/proofs/consistency": {
            "get": {
                "summary": "RFC 9162 consistency proof between two tree sizes",
                "parameters": [
                    {"name": "from", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 1}},
                    {"name": "to", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 1}},
                ],
                "responses": {"200": json_ok("Consistency proof", proof), "400": PROBLEM, **denied},
            }
        },
    }


LEDGER_OPENAPI_PATHS: dict[str, Any] = _openapi_paths()
