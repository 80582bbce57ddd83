"""The OpenAPI 3.1 document of the local API, served at ``/v1/openapi.json``.

Kept by hand beside the handlers: the login, case-work, ledger and statistics modules document their own routes
(``AUTH_OPENAPI_PATHS``, ``CASEWORK_OPENAPI_PATHS``, ``LEDGER_OPENAPI_PATHS``, ``STATS_OPENAPI_PATHS``, with the
shared pieces of gateway/openapi_parts.py), merged here with the rest (messages, consultations, probes).
tests/gateway/test_api.py fails when a route is served but not documented, or documented but not served.
"""

from __future__ import annotations

import copy
from typing import Any

from gateway.auth import AUTH_OPENAPI_PATHS
from gateway.casework_api import CASEWORK_OPENAPI_PATHS
from gateway.ledger_api import LEDGER_OPENAPI_PATHS
from gateway.openapi_parts import ID_PARAMETER as _ID
from gateway.openapi_parts import PROBLEM as _PROBLEM
from gateway.openapi_parts import json_ok as _json_ok
from gateway.stats_api import STATS_OPENAPI_PATHS
from protocol.messages import MessageKind

__all__ = ["openapi_document"]

_MARKING = {
    "type": "object",
    "required": ["level"],
    "properties": {"level": {"type": "string"}, "caveats": {"type": "array", "items": {"type": "string"}}},
    "additionalProperties": False,
}
# the members of a message's metadata as gateway/api.py _summary serves it
_SUMMARY: dict[str, Any] = {
    "id": {"type": "string"},
    "direction": {"enum": ["in", "out"]},
    "peer": {"type": "string"},
    "kind": {"type": "string"},
    "in_reply_to": {"type": ["string", "null"]},
    "marking": _MARKING,
    "state": {"type": "string"},
    "envelope_sha256": {"type": "string"},
    "created_at": {"type": "string", "format": "date-time"},
    "received_at": {"type": ["string", "null"], "format": "date-time"},
    "case_id": {"type": ["string", "null"]},
    "confidentiality_answer": {"enum": ["can-comply", "cannot-comply", None]},
}
_SUBMITTED = {
    "202": {
        "description": "Persisted in the outbox; delivery follows",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Submitted"}}},
    },
    "400": _PROBLEM,
    "401": _PROBLEM,
    "403": _PROBLEM,
    "404": _PROBLEM,  # a message, case or thread it names that does not exist or that the caller may not know of
    "413": _PROBLEM,
}
_DRAFT_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Draft"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "message": {"$ref": "#/components/schemas/Draft"},
                    "attachment": {
                        "type": "array",
                        "items": {"type": "string", "contentMediaType": "application/octet-stream"},
                    },
                },
            },
            "encoding": {"message": {"contentType": "application/json"}},
        },
    },
}


def _consultation_paths() -> dict[str, Any]:
    """Informal consultations (gateway/consultations_api.py; docs/requests.md, "Consultations")."""
    obj = {"type": "object"}
    thread = {"$ref": "#/components/schemas/Consultation"}
    submitted = {**_SUBMITTED, "404": _PROBLEM, "409": _PROBLEM, "422": _PROBLEM}

    def body(required: list[str], properties: dict[str, Any], *, files: bool = False) -> dict[str, Any]:
        schema = {"type": "object", "required": required, "properties": properties, "additionalProperties": False}
        content: dict[str, Any] = {"application/json": {"schema": schema}}
        if files:  # as for POST /v1/messages: a "message" JSON part, then "attachment" file parts
            form = _DRAFT_BODY["content"]["multipart/form-data"]  # type: ignore[index]
            content["multipart/form-data"] = {
                "schema": {**form["schema"], "properties": {**form["schema"]["properties"], "message": schema}},
                "encoding": form["encoding"],
            }
        return {"required": True, "content": content}

    return {
        "/v1/consultations": {
            "post": {
                "summary": "Start an informal consultation thread with a peer authority (sealed, ledgered)",
                "requestBody": body(
                    ["to"],
                    {
                        "to": {"type": "string"},
                        "marking": _MARKING,
                        "content": obj,
                        "about": {"type": ["string", "null"], "format": "uuid"},
                        "draft_request": obj,
                    },
                    files=True,
                ),
                "responses": submitted,
            },
            "get": {
                "summary": "The caller's consultation threads (metadata)",
                "parameters": [
                    {"name": "about", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                    {"name": "state", "in": "query", "schema": {"enum": ["open", "converted"]}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 1000, "default": 100}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}},
                ],
                "responses": {
                    "200": _json_ok(
                        "Threads",
                        {"type": "object", "properties": {"consultations": {"type": "array", "items": thread}}},
                    ),
                    "401": _PROBLEM,
                },
            },
        },
        "/v1/consultations/{id}": {
            "get": {
                "summary": "A thread and its messages' metadata, with the checklist of each shared draft",
                "parameters": [_ID],
                "responses": {"200": _json_ok("Thread", thread), "403": _PROBLEM, "404": _PROBLEM},
            }
        },
        "/v1/consultations/{id}/messages": {
            "post": {
                "summary": "Reply in a thread (optionally sharing a draft request for review)",
                "parameters": [_ID],
                "requestBody": body(
                    [],
                    {
                        "in_reply_to": {"type": "string", "format": "uuid"},
                        "marking": _MARKING,
                        "content": obj,
                        "draft_request": obj,
                        "downgrade_reason": {"type": "string"},
                    },
                    files=True,
                ),
                "responses": submitted,
            }
        },
        "/v1/consultations/{id}/convert": {
            "post": {
                "summary": "Turn a thread into a formal request that keeps the link (request.consultation_id)",
                "parameters": [_ID],
                "requestBody": body(
                    [],
                    {
                        "request": obj,
                        "from_draft": {"type": "string", "format": "uuid"},
                        "marking": _MARKING,
                        "override_reason": {"type": "string"},
                    },
                ),
                "responses": submitted,
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    return _rate_limited(_document())


def _rate_limited(document: dict[str, Any]) -> dict[str, Any]:
    """Every operation that takes a bearer token may answer 429 ``rate-limited`` (decision 177). On a copy: the
    paths of other modules are shared constants."""
    document = copy.deepcopy(document)
    for operations in document["paths"].values():
        for operation in operations.values():
            if operation.get("security") != []:
                operation["responses"].setdefault("429", _PROBLEM)
    return document


def _document() -> dict[str, Any]:
    message_ref = {"$ref": "#/components/schemas/MessageSummary"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Comity local API",
            "version": "1",
            "description": "Officers draft, send, read, acknowledge and answer requests through their own gateway.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/me": {
                "get": {
                    "summary": "The authenticated user",
                    "responses": {"200": _json_ok("User", {"type": "object"}), "401": _PROBLEM},
                }
            },
            "/v1/messages": {
                "post": {
                    "summary": "Draft and send a message (request, consultation, ...)",
                    "requestBody": _DRAFT_BODY,
                    "responses": _SUBMITTED,
                },
                "get": {
                    "summary": "List the inbox or the outbox",
                    "parameters": [
                        {"name": "box", "in": "query", "schema": {"enum": ["inbox", "outbox"], "default": "inbox"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "maximum": 1000, "default": 100},
                        },
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}},
                    ],
                    "responses": {
                        "200": _json_ok(
                            "Messages",
                            {"type": "object", "properties": {"messages": {"type": "array", "items": message_ref}}},
                        ),
                        "401": _PROBLEM,
                    },
                },
            },
            "/v1/messages/{id}": {
                "get": {
                    "summary": "Metadata of a message (no content)",
                    "parameters": [_ID],
                    "responses": {"200": _json_ok("Message", message_ref), "404": _PROBLEM},
                }
            },
            "/v1/messages/{id}/open": {
                "post": {
                    "summary": "Decrypt a message in memory and return its content; the opening is ledgered",
                    "parameters": [_ID],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"purpose": {"type": "string"}}}
                            }
                        }
                    },
                    "responses": {
                        "200": _json_ok("Opened message", {"type": "object"}),
                        "403": _PROBLEM,
                        "404": _PROBLEM,
                    },
                }
            },
            "/v1/messages/{id}/attachments/{position}": {
                "get": {
                    "summary": "Stream one attachment, decrypted and authenticated chunk by chunk",
                    "parameters": [
                        _ID,
                        {
                            "name": "position",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": {"description": "The plaintext", "content": {"application/octet-stream": {}}},
                        "403": _PROBLEM,
                        "404": _PROBLEM,
                    },
                }
            },
            "/v1/messages/{id}/acknowledge": {
                "post": {
                    "summary": "Acknowledge a received message (sends a signed acknowledgement)",
                    "parameters": [_ID],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "note": {"type": "string"},
                                        # UNCAC art. 46(20); required when the request's marking asks it
                                        "confidentiality": {"enum": ["can-comply", "cannot-comply"]},
                                    },
                                }
                            }
                        }
                    },
                    "responses": {**_SUBMITTED, "422": _PROBLEM},
                }
            },
            "/v1/messages/{id}/respond": {
                "post": {
                    "summary": "Answer a received message",
                    "parameters": [_ID],
                    "requestBody": _DRAFT_BODY,
                    "responses": _SUBMITTED,
                }
            },
            "/v1/messages/{id}/consent": {
                "post": {
                    "summary": "As originator, consent to a message's content travelling on to a third authority",
                    "parameters": [_ID],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["recipient"],
                                    "properties": {"recipient": {"type": "string"}},
                                }
                            }
                        }
                    },
                    "responses": _SUBMITTED,
                }
            },
            "/v1/cases/{id}/assign": {
                "post": {
                    "summary": "A supervisor assigns or reassigns an officer to a case (ledgered)",
                    "parameters": [_ID],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["username"],
                                    "properties": {"username": {"type": "string"}, "replace": {"type": "boolean"}},
                                }
                            }
                        }
                    },
                    "responses": {"200": _json_ok("Assigned", {"type": "object"}), "403": _PROBLEM, "404": _PROBLEM},
                }
            },
            "/v1/cases/{id}/events": {
                "post": {
                    "summary": "Apply a life-cycle event to a case; ledgered and reported to the counterpart",
                    "parameters": [_ID],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["event"],
                                    "properties": {
                                        "event": {"type": "string"},
                                        "refusal": {"type": "object"},
                                        "postponement": {"type": "object"},
                                        "consultation_id": {"type": "string"},
                                    },
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": _json_ok("Moved", {"type": "object"}),
                        "403": _PROBLEM,
                        "404": _PROBLEM,
                        "409": _PROBLEM,
                        "422": _PROBLEM,
                    },
                }
            },
            "/v1/cases/{id}/status-query": {
                "post": {
                    "summary": "Ask the requested gateway where a request stands (art. 46(24)); it answers by itself",
                    "parameters": [_ID],
                    "responses": _SUBMITTED,
                }
            },
            "/v1/messages/{id}/timeline": {
                "get": {
                    "summary": "Acknowledgement timeline from the ledger",
                    "parameters": [_ID],
                    "responses": {"200": _json_ok("Timeline", {"type": "object"}), "404": _PROBLEM},
                }
            },
            **_consultation_paths(),
            **LEDGER_OPENAPI_PATHS,
            **STATS_OPENAPI_PATHS,
            **AUTH_OPENAPI_PATHS,
            **CASEWORK_OPENAPI_PATHS,
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": _json_ok("OpenAPI", {"type": "object"})},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "security": [],
                    "responses": {"200": _json_ok("Alive", {"type": "object"})},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness (directory valid, database reachable)",
                    "security": [],
                    "responses": {"200": _json_ok("Ready", {"type": "object"}), "503": _PROBLEM},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (scope metrics:read)",
                    "responses": {
                        "200": {"description": "Metrics", "content": {"text/plain": {}}},
                        "401": _PROBLEM,
                        "403": _PROBLEM,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Problem": {
                    "description": "RFC 9457 problem details",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                }
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "code", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string", "format": "uri"},
                        "code": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                    },
                },
                "Draft": {
                    "type": "object",
                    "required": ["to"],
                    "additionalProperties": False,
                    "properties": {
                        "to": {"type": "string", "pattern": "^[a-z]{2}\\.[a-z0-9][a-z0-9-]{0,30}$"},
                        # a status report is the gateway's own (case events, status queries), never a draft
                        "kind": {"enum": [kind.value for kind in MessageKind if kind is not MessageKind.STATUS_REPORT]},
                        "marking": _MARKING,
                        "content": {"type": "object"},
                        "in_reply_to": {"type": ["string", "null"], "format": "uuid"},
                        "forwards": {"type": "array", "items": {"type": "string", "format": "uuid"}},
                        "downgrade_reason": {"type": "string"},
                        "override_reason": {"type": "string"},
                    },
                },
                "Consultation": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "format": "uuid"},
                        "peer": {"type": "string"},
                        "direction": {"enum": ["in", "out"]},
                        "about": {"type": ["string", "null"]},
                        "state": {"enum": ["open", "converted"]},
                        "converted_request_id": {"type": ["string", "null"]},
                        "marking": _MARKING,
                        "unit": {"type": ["string", "null"]},
                        "created_at": {"type": "string", "format": "date-time"},
                        "last_message_at": {"type": "string", "format": "date-time"},
                        "messages": {"type": "array", "items": {"$ref": "#/components/schemas/ThreadMessage"}},
                    },
                },
                "Submitted": {"type": "object", "properties": {"id": {"type": "string"}, "state": {"type": "string"}}},
                "MessageSummary": {"type": "object", "properties": _SUMMARY, "additionalProperties": False},
                # a message of a thread, with the checklist of a draft it shares (gateway/consultations_api.py)
                "ThreadMessage": {
                    "type": "object",
                    "properties": {
                        **_SUMMARY,
                        "draft_check": {
                            "type": "object",
                            "properties": {
                                "request_type": {"type": "string"},
                                "complete": {"type": "boolean"},
                                "blocking": {"type": "array", "items": {"type": "string"}},
                                "warnings": {"type": "array", "items": {"type": "string"}},
                            },
                            "additionalProperties": False,
                        },
                    },
                    "additionalProperties": False,
                },
            },
        },
    }
