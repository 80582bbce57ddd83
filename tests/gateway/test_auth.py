"""Password login and logout over HTTP, throttling with Retry-After on an injected clock, and token scopes enforced
with the API's own auth middleware. The routes run in small aiohttp apps around the Gateway of a real pair."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher, Type
from click.testing import CliRunner

import store.users
from gateway.api import api_routes, auth_middleware
from gateway.auth import (
    LOGIN_POLICY,
    PUBLIC_AUTH_PATHS,
    ROUTE_SCOPES,
    LoginPolicy,
    auth_routes,
    scope_middleware,
)
from gateway.cli import main
from gateway.consultations_api import consultation_routes
from gateway.context import Gateway
from gateway.federation import GATEWAY
from gateway.ledger_api import ledger_routes
from gateway.problems import problem_middleware
from gateway.stats_api import stats_routes
from protocol.timefmt import format_time
from store.users import ROLE_SCOPES, Users
from tests.gateway.conftest import Pair
from tests.gateway.test_exchange import REQUEST

PASSWORD = "correct horse battery staple"
Client = TestClient[web.Request, web.Application]
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=16, type=Type.ID)


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store.users, "PASSWORD_HASHER", CHEAP)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


@asynccontextmanager
async def serve(gw: Gateway, *middlewares: Any, clock: Callable[[], datetime] | None = None) -> AsyncIterator[Client]:
    app = web.Application(middlewares=[problem_middleware, *middlewares])
    app[GATEWAY] = gw
    app[LOGIN_POLICY] = LoginPolicy(clock=clock)
    app.add_routes(auth_routes())
    app.add_routes(api_routes())
    app.add_routes(ledger_routes())
    async with TestClient(TestServer(app)) as client:
        yield client


def create_user(pair: Pair, username: str, role: str = "officer") -> None:
    result = CliRunner().invoke(
        main,
        ["user", "create", username, "--role", role, "--config", str(pair.ar.provisioned.config)],
        env={"COMITY_USER_PASSWORD": PASSWORD, "COMITY_OPERATOR": "system"},
    )
    assert result.exit_code == 0, result.output


async def post_login(client: Client, body: Any) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    response = await client.post("/v1/auth/login", json=body)
    return response.status, await response.json(content_type=None), response


async def test_login_throttling_and_logout(pair: Pair) -> None:
    await asyncio.to_thread(create_user, pair, "olga")
    clock = Clock()
    async with serve(pair.ar.gw, clock=clock) as client:
        problems = []
        for name in ("olga", "olga", "nobody", "olga", "olga", "olga"):
            status, problem, _ = await post_login(client, {"username": name, "password": "wrong password"})
            assert status == 401 and problem["code"] == "unauthenticated"
            problems.append(problem)
        assert all(p == problems[0] for p in problems)  # an unknown name fails exactly like a wrong password
        for _ in range(4):
            await post_login(client, {"username": "nobody", "password": "wrong password"})

        # the sixth failure for a name: refused, even with the right password, until the delay has passed
        status, problem, response = await post_login(client, {"username": "olga", "password": PASSWORD})
        assert status == 429 and problem["code"] == "login-throttled" and problem["type"].endswith("login-throttled")
        assert response.headers["Retry-After"] == "30"
        status, problem, _ = await post_login(client, {"username": "nobody", "password": PASSWORD})
        assert status == 429  # the same for a name that does not exist

        clock.now += timedelta(seconds=31)
        status, body, response = await post_login(client, {"username": "olga", "password": PASSWORD})
        assert status == 200, body
        assert response.headers["Cache-Control"] == "no-store"
        assert body["expires_at"] == format_time(clock.now + timedelta(hours=12))
        assert body["scopes"] == sorted(ROLE_SCOPES["officer"]) and body["username"] == "olga"
        token = body["token"]
        status, narrow, _ = await post_login(
            client, {"username": "olga", "password": PASSWORD, "scopes": ["messages:read"]}
        )
        assert status == 200 and narrow["scopes"] == ["messages:read"]
        status, problem, _ = await post_login(client, {"username": "olga", "password": PASSWORD, "scopes": ["admin"]})
        assert status == 400 and "cannot hold admin" in problem["detail"]

        # the login token works on the running gateway's API, until logout revokes it
        status, me = await pair.ar.call("GET", "/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and me["username"] == "olga"
        response = await client.post("/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 204
        response = await client.post("/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 401
        status, _ = await pair.ar.call("GET", "/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert status == 401
        response = await client.post("/v1/auth/logout")
        assert response.status == 401

        for bad in (
            b"not json",
            b'{"username": "olga", "password": "x", "password": "y"}',
            b'{"username": "olga"}',
            b'{"username": "olga", "password": "x", "remember": true}',
            b'["olga", "x"]',
            b'{"username": "olga", "password": 1}',
        ):
            response = await client.post("/v1/auth/login", data=bad, headers={"Content-Type": "application/json"})
            assert response.status == 400, bad
            assert (await response.json(content_type=None))["code"] == "invalid-message"
        response = await client.post("/v1/auth/login", data=b"{" + b" " * 9000 + b"}")
        assert response.status == 400

    async with pair.ar.gw.engine.connect() as conn:
        states = [t.label for t in await Users.tokens_of(conn, "olga") if not t.active(datetime.now(UTC))]
    assert states == ["login"]  # the one that logged out; the narrow one is still active


async def test_scopes_are_enforced_after_the_api_auth_middleware(pair: Pair) -> None:
    await asyncio.to_thread(create_user, pair, "audrey", "auditor")
    now = datetime.now(UTC)
    async with pair.ar.gw.engine.begin() as conn:
        alice = await Users.by_name(conn, "alice")
        audrey = await Users.by_name(conn, "audrey")
        reader = await Users.issue(
            conn, alice, now, label="reader", expires_at=now + timedelta(hours=1), scopes=["messages:read"]
        )
        auditor = await Users.issue(conn, audrey, now, label="cli", expires_at=now + timedelta(hours=1))
    status, body = await pair.ar.call("POST", "/v1/messages", json=REQUEST)
    assert status == 202
    message = body["id"]

    async with serve(pair.ar.gw, auth_middleware, scope_middleware) as client:

        async def call(token: str, method: str, path: str, **kwargs: Any) -> tuple[int, str | None]:
            response = await client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
            if response.content_type == "application/problem+json":
                return response.status, (await response.json(content_type=None))["code"]
            return response.status, None

        full = pair.ar.token  # alice's token from the fixture: every officer scope
        assert await call(full, "GET", f"/v1/messages/{message}") == (200, None)
        assert await call(full, "GET", "/v1/ledger/checkpoint") == (403, "forbidden")  # not an officer's scope

        assert await call(reader.token, "GET", "/v1/messages?box=outbox") == (200, None)
        assert await call(reader.token, "GET", f"/v1/messages/{message}/timeline") == (200, None)
        assert await call(reader.token, "GET", "/v1/me") == (200, None)
        assert await call(reader.token, "POST", "/v1/messages", json=REQUEST) == (403, "forbidden")
        assert await call(reader.token, "POST", f"/v1/messages/{message}/open", json={}) == (403, "forbidden")
        assert await call(reader.token, "GET", f"/v1/messages/{message}/attachments/0") == (403, "forbidden")
        assert await call(reader.token, "GET", "/v1/nothing-here") == (404, "not-found")

        assert await call(auditor.token, "GET", "/v1/ledger/checkpoint") == (200, None)
        assert await call(auditor.token, "GET", "/v1/messages?box=outbox") == (200, None)
        assert await call(auditor.token, "POST", f"/v1/messages/{message}/open", json={}) == (403, "forbidden")
        assert await call(auditor.token, "POST", f"/v1/messages/{message}/acknowledge", json={}) == (403, "forbidden")


def test_every_served_route_has_a_scope() -> None:
    app = web.Application()
    app.add_routes([*api_routes(), *consultation_routes(), *ledger_routes(), *auth_routes(), *stats_routes()])
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert served == set(ROUTE_SCOPES) | {("POST", path) for path in PUBLIC_AUTH_PATHS}  # login needs no token
    assert {scope for scope in ROUTE_SCOPES.values() if scope} == set(store.users.SCOPES) - {"admin"}
