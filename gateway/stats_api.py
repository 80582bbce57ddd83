"""The statistics API (``/v1/stats``): aggregates over the coded facets and milestone times of cases, never content.

``GET /v1/stats`` answers every statistic at once (JSON); ``GET /v1/stats/{name}`` one, as JSON or, with
``format=csv``, as CSV. Both take the filters of :func:`protocol.stats.parse_filters`. The route scope is
``stats:read`` (supervisors and auditors, gateway/auth.py); the per-officer breakdown and the ``officer`` filter name
staff, so they also need ``cases:assign`` (supervisors: who assigns officers sees their figures). A reader who may
not open content (an auditor) gets periods of a year or a month and small cells withheld
(:func:`protocol.stats.suppress`, ``stats_min_cell``, decision 114); a supervisor gets exact figures.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.api import USER
from gateway.auth import check_scope
from gateway.context import Gateway
from gateway.federation import GATEWAY
from gateway.openapi_parts import PROBLEM, json_ok
from protocol.stats import (
    FILTER_NAMES,
    Filters,
    InvalidFilter,
    Statistic,
    StatTable,
    parse_filters,
    parse_statistic,
    suppress,
    to_csv,
)
from store.accounts import CONTENT_OPEN
from store.stats import compute, population
from store.users import User

__all__ = ["OFFICER_SCOPE", "STATS_OPENAPI_PATHS", "stats_routes"]

OFFICER_SCOPE = "cases:assign"
_FORMATS = ("json", "csv")


def _format(request: web.Request) -> str:
    value = request.query.get("format", "json")
    if value not in _FORMATS:
        raise InvalidFilter("'format' must be json or csv")
    return value


def _officer_check(user: User, statistic: Statistic | None, filters: Filters) -> None:
    if statistic is Statistic.BY_OFFICER or filters.officer is not None:
        check_scope(user, OFFICER_SCOPE)


def _min_cell(gw: Gateway, user: User, filters: Filters) -> int:
    """The smallest count ``user`` is shown (decision 114): ``stats_min_cell`` for a reader who may not open
    content (an auditor), who also gets periods no finer than a month; 1 (every count) for a supervisor."""
    if CONTENT_OPEN in user.scopes:
        return 1
    min_cell = gw.settings.stats_min_cell
    if min_cell > 1 and filters.days:
        raise InvalidFilter(
            "'from' and 'to' take a year (YYYY) or a month (YYYY-MM) for a reader who does not open content"
        )
    return min_cell


async def _tables(gw: Gateway, statistics: list[Statistic], filters: Filters, min_cell: int) -> list[StatTable]:
    today, utc_day = gw.today(), gw.clock().date()
    async with gw.reader.connect() as conn:
        tables = [await compute(conn, statistic, filters, today=today, utc_day=utc_day) for statistic in statistics]
        if min_cell > 1:
            cases = await population(conn, filters, utc_day=utc_day)
            tables = [suppress(table, min_cell, cases) for table in tables]
    return tables


async def one_statistic(request: web.Request) -> web.Response:
    gw, user = request.app[GATEWAY], request[USER]
    statistic = parse_statistic(request.match_info["name"])
    output = _format(request)
    filters = parse_filters(request.query, ignore=("format",))
    _officer_check(user, statistic, filters)
    min_cell = _min_cell(gw, user, filters)
    (table,) = await _tables(gw, [statistic], filters, min_cell)
    if output == "csv":
        return web.Response(
            text=to_csv(table),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="comity-{statistic.value}.csv"'},
        )
    body = {**table.to_json(), "columns": list(table.columns), "filters": filters.to_json(), "min_cell": min_cell}
    return web.Response(body=json.dumps(body).encode(), content_type="application/json")


async def all_statistics(request: web.Request) -> web.Response:
    gw, user = request.app[GATEWAY], request[USER]
    filters = parse_filters(request.query)
    _officer_check(user, None, filters)
    min_cell = _min_cell(gw, user, filters)
    statistics = [s for s in Statistic if s is not Statistic.BY_OFFICER or OFFICER_SCOPE in user.scopes]
    tables = {
        table.statistic.value: {"columns": list(table.columns), "rows": table.to_json()["rows"]}
        for table in await _tables(gw, statistics, filters, min_cell)
    }
    body = {"filters": filters.to_json(), "min_cell": min_cell, "statistics": tables}
    return web.Response(body=json.dumps(body).encode(), content_type="application/json")


def stats_routes() -> list[web.RouteDef]:
    return [web.get("/v1/stats", all_statistics), web.get("/v1/stats/{name}", one_statistic)]


# --- OpenAPI (gateway/openapi.py merges these) ---------------------------------------------------------------------


def _openapi_paths() -> dict[str, Any]:
    """Statistics (gateway/stats_api.py; docs/requests.md "Statistics"): aggregates of codes, never content."""
    filters = [{"name": name, "in": "query", "schema": {"type": "string"}} for name in FILTER_NAMES]
    table = {
        "type": "object",
        "properties": {
            "statistic": {"type": "string"},
            "columns": {"type": "array", "items": {"type": "string"}},
            "rows": {"type": "array", "items": {"type": "object"}},
            "filters": {"type": "object"},
            "min_cell": {
                "type": "integer",
                "description": "counts under it are withheld (null), with what derives from them (decision 114)",
            },
        },
    }
    denied = {"400": PROBLEM, "401": PROBLEM, "403": PROBLEM}
    return {
        "/v1/stats": {
            "get": {
                "summary": "Every statistic under the filters (by-officer only with cases:assign)",
                "parameters": filters,
                "responses": {"200": json_ok("Statistics", {"type": "object"}), **denied},
            }
        },
        "/v1/stats/{name}": {
            "get": {
                "summary": "One statistic under the filters, as JSON or CSV",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"enum": [s.value for s in Statistic]}},
                    {"name": "format", "in": "query", "schema": {"enum": ["json", "csv"]}},
                    *filters,
                ],
                "responses": {
                    "200": {
                        "description": "The statistic's table",
                        "content": {"application/json": {"schema": table}, "text/csv": {}},
                    },
                    **denied,
                },
            }
        },
    }


STATS_OPENAPI_PATHS: dict[str, Any] = _openapi_paths()
