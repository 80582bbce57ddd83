"""Pieces every part of the OpenAPI document shares (gateway/openapi.py and the API modules that document their own
routes: auth, case work, ledger, statistics).

Each such module exports ``<NAME>_OPENAPI_PATHS``, which gateway/openapi.py merges into the document it serves.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ID_PARAMETER", "PROBLEM", "json_ok"]

# every error is RFC 9457 problem+json (gateway/problems.py), described once under components/responses
PROBLEM = {"$ref": "#/components/responses/Problem"}
# a message or case id in the path
ID_PARAMETER = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}


def json_ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A response with a JSON body of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}
