"""Password login and logout for the local API (``/v1/auth/...``), and the scope every API route needs.

``POST /v1/auth/login`` takes ``{"username", "password"}`` (and optionally ``"scopes"``, a subset of what the role
allows) and returns ``{"token", "token_id", "expires_at", "scopes", "username", "role"}``: a bearer token that expires
after 12 hours. Failures are ``unauthenticated`` whatever went wrong (unknown name, wrong password, disabled or
password-less account); repeated failures for a name or from an address are refused with ``login-throttled``
(HTTP 429 with ``Retry-After``). ``POST /v1/auth/logout`` revokes the bearer token it is called with.

Scopes: :data:`ROUTE_SCOPES` names the scope each API route needs; :func:`required_scope` looks it up for a request
(refusing a route that has none, so that a new route is closed until it is given one), :func:`check_scope` refuses a
user whose token lacks it, and :func:`authorise` does both for a handler.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, TypeAlias

from aiohttp import web

from gateway.federation import GATEWAY
from gateway.logs import get_logger
from gateway.openapi_parts import PROBLEM as _PROBLEM
from gateway.problems import problem_response
from protocol.errors import ComityError, InvalidMessage
from protocol.messages import parse_strict_json
from protocol.timefmt import format_time
from store.accounts import SCOPES, InvalidAccount
from store.users import LOGIN_TOKEN_TTL, MAX_PASSWORD_LENGTH, LoginFailed, LoginThrottled, Throttle, User, Users

__all__ = [
    "AUTH_OPENAPI_PATHS",
    "LOGIN_PATH",
    "LOGIN_POLICY",
    "LOGOUT_PATH",
    "PUBLIC_AUTH_PATHS",
    "ROUTE_SCOPES",
    "LoginPolicy",
    "ScopeMissing",
    "auth_routes",
    "authorise",
    "client_address",
    "check_scope",
    "required_scope",
    "scope_middleware",
]

LOGIN_PATH = "/v1/auth/login"
LOGOUT_PATH = "/v1/auth/logout"
PUBLIC_AUTH_PATHS = frozenset({LOGIN_PATH})  # reachable without a bearer token
MAX_LOGIN_BODY = 8192

# (method, canonical route path) -> the scope it needs; None: any valid token
ROUTE_SCOPES: Mapping[tuple[str, str], str | None] = MappingProxyType(
    {
        ("GET", "/v1/me"): None,
        ("POST", LOGOUT_PATH): None,
        ("GET", "/v1/messages"): "messages:read",
        ("GET", "/v1/messages/{id}"): "messages:read",
        ("GET", "/v1/messages/{id}/timeline"): "messages:read",
        ("POST", "/v1/messages"): "messages:write",
        ("POST", "/v1/messages/{id}/acknowledge"): "messages:write",
        ("POST", "/v1/messages/{id}/respond"): "messages:write",
        ("POST", "/v1/messages/{id}/open"): "content:open",
        ("POST", "/v1/messages/{id}/consent"): "messages:write",
        ("POST", "/v1/cases/{id}/assign"): "cases:assign",
        ("POST", "/v1/cases/{id}/events"): "messages:write",
        ("POST", "/v1/cases/{id}/status-query"): "messages:write",
        # case work (gateway/casework_api.py): reading shows notes, so it needs what opening content needs
        ("GET", "/v1/cases/{id}/work"): "content:open",
        ("PUT", "/v1/cases/{id}/next-action"): "messages:write",
        ("POST", "/v1/cases/{id}/flags"): "messages:write",
        ("DELETE", "/v1/cases/{id}/flags/{flag}"): "messages:write",
        ("POST", "/v1/cases/{id}/dates"): "messages:write",
        ("POST", "/v1/cases/{id}/dates/{item}/done"): "messages:write",
        ("POST", "/v1/cases/{id}/unassign"): "cases:assign",
        ("POST", "/v1/work/oral-requests"): "messages:write",
        ("GET", "/v1/work/overdue"): "content:open",
        ("GET", "/v1/work/upcoming"): "content:open",
        ("GET", "/v1/consultations"): "messages:read",
        ("GET", "/v1/consultations/{id}"): "messages:read",
        ("POST", "/v1/consultations"): "messages:write",
        ("POST", "/v1/consultations/{id}/messages"): "messages:write",
        ("POST", "/v1/consultations/{id}/convert"): "messages:write",
        ("GET", "/v1/messages/{id}/attachments/{position}"): "content:open",
        ("GET", "/v1/ledger/checkpoint"): "ledger:read",
        ("GET", "/v1/ledger/checkpoints"): "ledger:read",
        ("GET", "/v1/ledger/entries"): "ledger:read",
        ("GET", "/v1/ledger/proofs/inclusion"): "ledger:read",
        ("GET", "/v1/ledger/proofs/consistency"): "ledger:read",
        ("GET", "/v1/stats"): "stats:read",
        ("GET", "/v1/stats/{name}"): "stats:read",
        # per-peer backlog and failures tell that requests with a counterpart exist (decision 122)
        ("GET", "/metrics"): "metrics:read",
    }
)

# the routes that change a case (its work, its assignments) -> what a refused call tried: a refusal, by the scope
# check or by the case's access rules, is ledgered as case.refused with this state (gateway/api.py auth_middleware)
CASE_CHANGES: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("PUT", "/v1/cases/{id}/next-action"): "next-action",
        ("POST", "/v1/cases/{id}/flags"): "flag-set",
        ("DELETE", "/v1/cases/{id}/flags/{flag}"): "flag-cleared",
        ("POST", "/v1/cases/{id}/dates"): "date-added",
        ("POST", "/v1/cases/{id}/dates/{item}/done"): "date-done",
        ("POST", "/v1/cases/{id}/assign"): "assigned",
        ("POST", "/v1/cases/{id}/unassign"): "unassigned",
    }
)


class ScopeMissing(ComityError):
    code = "forbidden"


class _Unauthenticated(ComityError):
    code = "unauthenticated"


@dataclass(frozen=True)
class LoginPolicy:
    """Login settings of an API app (``app[LOGIN_POLICY]``); ``clock`` overrides the gateway's (tests)."""

    throttle: Throttle = field(default_factory=Throttle)
    ttl: timedelta = LOGIN_TOKEN_TTL
    clock: Callable[[], datetime] | None = None


LOGIN_POLICY = web.AppKey("comity_login_policy", LoginPolicy)


# --- scopes ---------------------------------------------------------------------------------------------------


def required_scope(request: web.Request) -> str | None:
    """The scope the matched route needs (None: any valid token, or no route matched and a 404/405 follows)."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    key = (method, resource.canonical)
    if key not in ROUTE_SCOPES:
        raise ScopeMissing(f"{method} {resource.canonical} has no scope in gateway/auth.py ROUTE_SCOPES; refused")
    return ROUTE_SCOPES[key]


def check_scope(user: User, scope: str | None) -> None:
    if scope is not None and scope not in user.scopes:
        raise ScopeMissing(f"this token does not carry the {scope!r} scope")


def authorise(request: web.Request, scope: str | None = None) -> User:
    """The request's authenticated user, refused unless its token carries ``scope`` (default: the route's)."""
    from gateway.api import USER  # here, so that gateway.api may import this module

    user = request[USER]
    check_scope(user, scope if scope is not None else required_scope(request))
    return user


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def scope_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Enforce the route's scope for a request that gateway.api's auth_middleware authenticated (place it after
    that one); public paths, which carry no user, pass."""
    from gateway.api import USER

    if request.get(USER) is not None:
        authorise(request)
    return await handler(request)


# --- routes ---------------------------------------------------------------------------------------------------


def _json(data: object, status: int = 200) -> web.Response:
    # a token in the body: never cached
    return web.Response(
        status=status,
        body=json.dumps(data).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _login_body(request: web.Request) -> tuple[str, str, list[str] | None]:
    if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
        raise InvalidMessage("the login body is too large")
    raw = await request.content.read(MAX_LOGIN_BODY + 1)
    if len(raw) > MAX_LOGIN_BODY:
        raise InvalidMessage("the login body is too large")
    body: Any = parse_strict_json(raw) if raw else None
    if not isinstance(body, dict):
        raise InvalidMessage('send {"username": ..., "password": ...}')
    if unknown := set(body) - {"username", "password", "scopes"}:
        raise InvalidMessage(f"unknown member(s): {', '.join(sorted(unknown))}")
    username, password, scopes = body.get("username"), body.get("password"), body.get("scopes")
    if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
        raise InvalidMessage("'username' and 'password' must be non-empty strings")
    if len(username) > 256 or len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidMessage("'username' or 'password' is too long")
    if scopes is not None and (not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes)):
        raise InvalidMessage("'scopes' must be a list of scope names")
    # before the password is tried: answered after it, these would tell a right guess from a wrong one
    if scopes is not None and (not scopes or not set(scopes) <= set(SCOPES)):
        raise InvalidMessage(f"'scopes' must name at least one scope, each one of: {', '.join(SCOPES)}")
    return username, password, scopes


IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def _networks(trusted: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in trusted)


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address  # ::ffff:10.0.0.5 (a dual-stack listener) is 10.0.0.5


def client_address(request: web.Request, trusted: tuple[str, ...]) -> str:
    """The address logins from this request are throttled by: the connection's, or, where that is a trusted reverse
    proxy (``api_trusted_proxies``), the nearest address in ``X-Forwarded-For`` that is not one (a client writes what
    it likes at the far end of the header, so it is read from the near end, and only past proxies we trust). An IPv6
    address counts as its /64, the share one host gets."""
    address = _address(request.remote or "")
    networks = _networks(trusted)
    if address is not None and any(address in network for network in networks):
        hops = ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")
        for hop in reversed(hops):
            forwarded = _address(hop)
            if forwarded is None:
                break  # a hop we cannot read: the last address we could stands
            address = forwarded
            if not any(forwarded in network for network in networks):
                break
    if address is None:
        return (request.remote or "unknown")[:64]
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


async def login(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    policy = request.app.get(LOGIN_POLICY) or LoginPolicy()
    username, password, scopes = await _login_body(request)
    source = client_address(request, gw.settings.api_trusted_proxies)
    now = (policy.clock or gw.clock)()
    try:
        user, issued = await Users.login(
            gw.engine, username, password, source, now, ttl=policy.ttl, scopes=scopes, throttle=policy.throttle
        )
    except LoginThrottled as exc:
        get_logger().warning("login_throttled", source=source)
        response = problem_response(exc.code, exc.message, status=429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except LoginFailed:
        # the attempted name is not logged: people type their password into the wrong field
        get_logger().info("login_failed", source=source)
        raise
    except InvalidAccount:
        # the password was right, but no token was issued (scopes beyond the role, an account disabled meanwhile):
        # said in the log, where a right guess would otherwise leave no trace
        get_logger().warning("login_refused_after_password", source=source)
        raise
    get_logger().info("login_succeeded", user=user.username, login_id=issued.token_id, source=source)
    return _json(
        {
            "token": issued.token,
            "token_id": issued.token_id,
            "expires_at": format_time(issued.expires_at),
            "scopes": sorted(issued.scopes),
            "username": user.username,
            "role": user.role,
        }
    )


async def logout(request: web.Request) -> web.Response:
    """Revoke the bearer token of this request (checked here too, so the route is safe in any app)."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise _Unauthenticated("send 'Authorization: Bearer <token>' with the token to revoke")
    gw = request.app[GATEWAY]
    policy = request.app.get(LOGIN_POLICY) or LoginPolicy()
    async with gw.engine.begin() as conn:
        user = await Users.revoke_presented(conn, presented.strip(), (policy.clock or gw.clock)())
    if user is None:
        raise _Unauthenticated("the token is unknown, expired or revoked")
    get_logger().info("logout", user=user.username, login_id=user.token_id)
    return web.Response(status=204, headers={"Cache-Control": "no-store"})


def auth_routes() -> list[web.RouteDef]:
    return [web.post(LOGIN_PATH, login), web.post(LOGOUT_PATH, logout)]


# for gateway/openapi.py: document.paths.update(AUTH_OPENAPI_PATHS)
AUTH_OPENAPI_PATHS: dict[str, Any] = {
    LOGIN_PATH: {
        "post": {
            "summary": "Log in with a password; returns a bearer token valid 12 hours",
            "security": [],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["username", "password"],
                            "properties": {
                                "username": {"type": "string"},
                                "password": {"type": "string", "format": "password"},
                                "scopes": {"type": "array", "items": {"type": "string"}},
                            },
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "A new bearer token (shown once)",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "token": {"type": "string"},
                                    "token_id": {"type": "string"},
                                    "expires_at": {"type": "string", "format": "date-time"},
                                    "scopes": {"type": "array", "items": {"type": "string"}},
                                    "username": {"type": "string"},
                                    "role": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "400": _PROBLEM,
                "401": _PROBLEM,
                "429": _PROBLEM,
            },
        }
    },
    LOGOUT_PATH: {
        "post": {
            "summary": "Revoke the bearer token of this request",
            "responses": {"204": {"description": "Revoked"}, "401": _PROBLEM},
        }
    },
}
