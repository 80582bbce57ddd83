"""RFC 9457 problem details: the one place where error codes become HTTP statuses.

Every error response of both the federation endpoint and the local API is ``application/problem+json`` with a
stable ``type`` (``urn:comity:problem:<code>``), the ``code`` itself, a ``title`` and a ``detail`` that never
contains content, keys or tokens. A federation refusal also carries the signed refusal (``refusal``).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.files import FileStoreFailed
from gateway.limits import BodyStalled
from gateway.logs import get_logger
from protocol.checklist import IncompleteRequest
from protocol.errors import ComityError
from store.errors import outage_name

__all__ = ["PROBLEM_BASE", "STATUS", "problem_middleware", "problem_response", "status_for"]

PROBLEM_BASE = "urn:comity:problem:"
CONTENT_TYPE = "application/problem+json"
STORE_RETRY_AFTER = 1  # seconds: a database that failed over or restarted is usually back within a few

# code -> (HTTP status, title)
STATUS: dict[str, tuple[int, str]] = {
    "invalid-message": (400, "Invalid message"),
    "invalid-request": (400, "Invalid request"),
    "profile-violation": (400, "JOSE profile violation"),
    "header-mismatch": (400, "Routing header differs from the signed payload"),
    "attachment-corrupt": (400, "Attachment does not match its manifest"),
    "bad-signature": (401, "Bad signature"),
    "decryption-failed": (400, "Envelope cannot be decrypted"),
    "unknown-key": (401, "Key not listed in the directory for the sender"),
    "unauthenticated": (401, "Authentication required"),
    "forbidden": (403, "Not allowed"),
    "unknown-peer": (403, "Peer not listed in the directory"),
    "peer-blocked": (403, "Peer blocked after a ledger alarm"),
    "sender-mismatch": (403, "Envelope sender is not the authenticated peer"),
    "wrong-recipient": (421, "Envelope is addressed to another authority"),
    "marking-refused": (403, "Marking refused"),
    "not-found": (404, "Not found"),
    "conflict": (409, "Conflict"),
    "replayed-message": (409, "Message id already used for another envelope"),
    "stale-message": (400, "Message time outside the allowed clock skew"),
    "envelope-too-large": (413, "Envelope too large"),
    "attachment-too-large": (413, "Attachment too large"),
    "unknown-authority": (404, "Authority not in the directory"),
    "directory-expired": (503, "Directory expired"),
    "directory-invalid": (503, "Directory invalid"),
    "not-ready": (503, "Gateway not ready"),
    "incomplete-request": (422, "Request incomplete under UNCAC art. 46(15)"),
    "illegal-transition": (409, "Illegal case transition"),
    "transition-wrong-side": (409, "Transition belongs to the other side"),
    "refusal-ground-required": (422, "A refusal needs a ground (UNCAC art. 46(21))"),
    "invalid-refusal-ground": (422, "Not a ground for refusal (UNCAC art. 46(8), 46(22))"),
    "refusal-reasons-required": (422, "A refusal needs reasons (UNCAC art. 46(23))"),
    "consultation-required": (409, "Consult before refusing or postponing (UNCAC art. 46(26))"),
    "consultation-converted": (409, "Consultation already converted into a formal request"),
    "postponement-reason-required": (422, "A postponement needs the proceeding it would interfere with (art. 46(25))"),
    "login-throttled": (429, "Too many failed logins"),
    "rate-limited": (429, "Too many requests from this user"),
    "too-many-refusals": (429, "Too many refused envelopes from this peer"),
    "busy": (503, "Too many deliveries from this peer at once"),
    "read-timeout": (408, "The body did not arrive in time"),
    "unknown-work-kind": (400, "Unknown kind of case-work date or flag"),
    "invalid-work-date": (400, "Invalid case-work date"),
    "embargoed": (403, "Content under embargo"),
    "consent-required": (403, "The originator's consent is required"),
    "confidentiality-answer-required": (422, "Say whether the request can be kept confidential (art. 46(20))"),
    "delivery-failed": (502, "Delivery to the peer failed"),
    "transition-refused": (409, "Case transition refused"),
    "note-invalid": (400, "Invalid signed note"),
    "checkpoint-invalid": (400, "Invalid checkpoint"),
    "merkle-proof-invalid": (400, "Invalid Merkle proof"),
    "witness-failed": (502, "Witnessing the peer's ledger failed"),
    "not-a-reception": (404, "Not a reception of a message from you"),
    "directory-unsigned": (503, "Directory unsigned"),
    "directory-bad-signature": (503, "Directory badly signed"),
    "directory-rolled-back": (503, "Directory rolled back"),
    "notify-failed": (502, "Case-work notification failed"),
    "protocol-error": (400, "Protocol error"),
    "crypto-error": (400, "Cryptographic check failed"),
    "comity-error": (500, "Comity error"),
    "internal-error": (500, "Internal error"),
    "store-error": (500, "Storage error"),
    "store-unavailable": (503, "Storage unavailable"),
    "config-error": (503, "Gateway misconfigured"),
    "keystore-error": (503, "Key store unavailable"),
    "directory-error": (503, "Directory unusable"),
}


def status_for(code: str) -> tuple[int, str]:
    return STATUS.get(code, (400, code.replace("-", " ").capitalize()))


def problem_response(code: str, detail: str, *, status: int | None = None, **extra: Any) -> web.Response:
    default_status, title = status_for(code)
    http_status = status or default_status
    body: dict[str, Any] = {"type": PROBLEM_BASE + code, "code": code, "title": title, "status": http_status}
    body["detail"] = detail
    body.update(extra)
    return web.Response(status=http_status, body=json.dumps(body).encode(), content_type=CONTENT_TYPE)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ShownAs:
    """Mixed into an error that is recorded under its own code (the ledger's refusal entry) but answered with
    ``shown_code`` and ``shown_detail``: the answer a caller gets for something that does not exist, because it must
    not learn that what it named exists, nor how it is marked (decisions 94, 100)."""

    shown_code: str
    shown_detail: str


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except IncompleteRequest as exc:  # the checklist says what to add (it never quotes the request's content)
        return problem_response(exc.code, exc.message, checklist=exc.checklist.to_json())
    except ComityError as exc:
        if isinstance(exc, ShownAs):
            return problem_response(exc.shown_code, exc.shown_detail)
        return problem_response(exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not-found", 405: "invalid-request", 413: "envelope-too-large"}.get(exc.status, "invalid-request")
        return problem_response(code, exc.reason, status=exc.status)
    except BodyStalled as exc:  # not a refusal of the bytes: the sender sends them again
        get_logger(peer=exc.peer).warning("body_stalled", path=request.path, method=request.method)
        response = problem_response("read-timeout", str(exc))
        response.force_close()  # not kept alive: what of the body still comes is discarded (aiohttp lingers)
        return response
    except FileStoreFailed as exc:  # a full disk while storing an attachment, say
        return _store_unavailable(request, exc.reason)
    except Exception as exc:
        if (outage := outage_name(exc)) is not None:
            return _store_unavailable(request, outage)
        if isinstance(exc, ConnectionError | ssl.SSLError) and (
            request.transport is None or request.transport.is_closing()
        ):
            # the client left mid-request (a reset, a TLS error on the lost connection): nobody reads an answer
            get_logger().info("client_disconnected", path=request.path, method=request.method)
            return problem_response("invalid-request", "the connection was closed before the request was read")
        get_logger().exception("unhandled_error", path=request.path, method=request.method)
        return problem_response("internal-error", "the gateway failed to handle this request; see its logs")


def _store_unavailable(request: web.Request, outage: str) -> web.Response:
    """The database or the disk failed, not the request: say so, and when to try again (peers' outboxes retry
    anyway). Logged by the failing error's type or errno name only (``outage``): a driver's message may quote the
    values of a row, an OSError's a file name."""
    get_logger().warning("store_unavailable", path=request.path, method=request.method, error=outage)
    response = problem_response("store-unavailable", "the gateway's storage is unavailable; try again")
    response.headers["Retry-After"] = str(STORE_RETRY_AFTER)
    return response
