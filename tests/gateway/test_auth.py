"""Password login and logout over HTTP, throttling with Retry-After on an injected clock, and token scopes enforced
with the API's own auth middleware. The routes run in small aiohttp apps around the Gateway of a real pair."""

from __future__ import annotations

import asyncio
import io
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
    client_address,
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
from tests.gateway.test_logs_no_secrets import log_buffer  # noqa: F401 (a fixture)

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
        ["user", "create", username, "--role", role, "--from-env", "--config", str(pair.ar.provisioned.config)],
        env={"COMITY_USER_PASSWORD": PASSWORD, "COMITY_OPERATOR": "system"},
    )
    assert result.exit_code == 0, result.output


async def post_login(client: Client, body: Any) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    response = await client.post("/v1/auth/login", json=body)
    return response.status, await response.json(content_type=None), response


async def test_login_throttling_and_logout(pair: Pair, log_buffer: io.StringIO) -> None:  # noqa: F811
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
        # a right password is not told from a wrong one by the scopes asked for: those are checked first...
        for guess in ("a wrong password", PASSWORD):
            for scopes in (["bogus"], []):
                status, problem, _ = await post_login(client, {"username": "olga", "password": guess, "scopes": scopes})
                assert status == 400 and problem["code"] == "invalid-message", problem
        # ...and a right password that gets no token (scopes beyond the role) is in the log
        assert '"event": "login_refused_after_password"' in log_buffer.getvalue()

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
    served.add(("GET", "/metrics"))  # served beside the API's routes (gateway/app.py)
    assert served == set(ROUTE_SCOPES) | {("POST", path) for path in PUBLIC_AUTH_PATHS}  # login needs no token
    assert {scope for scope in ROUTE_SCOPES.values() if scope} == set(store.users.SCOPES) - {"admin"}


def test_the_address_a_login_is_throttled_by() -> None:
    """Only a trusted proxy's X-Forwarded-For is believed, read from the near end; IPv6 counts by /64."""
    from aiohttp.test_utils import make_mocked_request

    def address(remote: str, forwarded: str | None, trusted: tuple[str, ...]) -> str:
        headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
        request = make_mocked_request("POST", "/v1/auth/login", headers=headers)
        request._cache["remote"] = remote  # what aiohttp reads from the connection's peer name
        return client_address(request, trusted)

    proxy = ("127.0.0.1/32", "10.0.0.0/24")
    assert address("127.0.0.1", "203.0.113.5", ()) == "127.0.0.1"  # no trusted proxy: the header is ignored
    assert address("198.51.100.9", "203.0.113.5", proxy) == "198.51.100.9"  # not from a proxy: ignored
    assert address("127.0.0.1", "203.0.113.5", proxy) == "203.0.113.5"
    # the client wrote the far end itself; the near end is what our proxies saw
    assert address("127.0.0.1", "192.0.2.66, 203.0.113.5, 10.0.0.7", proxy) == "203.0.113.5"
    assert address("127.0.0.1", "10.0.0.7, 10.0.0.8", proxy) == "10.0.0.7"  # only proxies: the farthest
    assert address("127.0.0.1", "not-an-address, 203.0.113.5", proxy) == "203.0.113.5"
    assert address("127.0.0.1", "203.0.113.5, junk", proxy) == "127.0.0.1"  # unreadable next hop: stop there
    assert address("::ffff:127.0.0.1", "203.0.113.5", proxy) == "203.0.113.5"  # a dual-stack listener
    assert address("2001:db8:1:2:aaaa::1", None, ()) == "2001:db8:1:2::/64"
    assert address("2001:db8:1:2:bbbb::9", None, ()) == address("2001:db8:1:2:aaaa::1", None, ())
    assert address("unix-socket", None, proxy) == "unix-socket"


async def test_behind_a_trusted_proxy_one_client_cannot_lock_everyone_out(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every officer reaches a gateway behind a reverse proxy from the proxy's address: without the forwarded
    address, twenty failures from anyone would refuse every login, right passwords included."""
    await asyncio.to_thread(create_user, pair, "olga")
    gw = pair.ar.gw
    monkeypatch.setattr(gw, "settings", gw.settings.model_copy(update={"api_trusted_proxies": ("127.0.0.1/32",)}))
    clock = Clock()
    async with serve(gw, clock=clock) as client:

        async def attempt(name: str, password: str, forwarded: str) -> int:
            response = await client.post(
                "/v1/auth/login",
                json={"username": name, "password": password},
                headers={"X-Forwarded-For": forwarded},
            )
            response.release()
            return response.status

        for number in range(20):  # different names, so only the per-address limit applies
            assert await attempt(f"nobody{number}", "wrong password", "203.0.113.5") == 401
        assert await attempt("nobody99", "wrong password", "203.0.113.5") == 429
        assert await attempt("olga", PASSWORD, "198.51.100.7") == 200  # another officer, through the same proxy
        assert await attempt("olga", PASSWORD, "203.0.113.5") == 429  # the address that failed is still held
