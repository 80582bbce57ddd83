"""A user's API requests are limited per user (decision 177): a bucket of ``api_request_burst`` tokens, refilled at
``api_requests_per_minute``, shared by all her tokens. Beyond it the API answers 429 ``rate-limited`` with
``Retry-After`` before it looks at the route: nothing is done, nothing ledgered (not even a refused opening)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import structlog

from config.settings import load_settings
from gateway.limits import TokenBuckets
from gateway.openapi import openapi_document
from gateway.openapi_parts import PROBLEM
from tests.gateway.conftest import Pair, issue_token, ledger
from tests.gateway.test_refusal_budget import Clock


async def test_a_user_beyond_her_burst_is_answered_429_until_her_bucket_refills(pair: Pair) -> None:
    clock = Clock()
    pair.ar.gw.api_budget = TokenBuckets(per_minute=6, burst=3, clock=clock)  # a token every 10 s
    for _ in range(3):
        status, _ = await pair.ar.call("GET", "/v1/messages")
        assert status == 200
    before = await ledger(pair.ar.gw)
    with structlog.testing.capture_logs() as logs:
        async with pair.ar.session.get(pair.ar.api + "/v1/messages") as response:  # type: ignore[union-attr]
            assert response.status == 429 and response.headers["Retry-After"] == "10"
            assert response.content_type == "application/problem+json"
            problem = await response.json()
        # an attempt to open content beyond the limit: 429 as well, and nothing ledgered
        status, again = await pair.ar.call("POST", f"/v1/messages/{uuid.uuid4()}/open", json={"purpose": "review"})
    assert problem["code"] == "rate-limited" and "6 requests a minute" in problem["detail"]
    assert status == 429 and again["code"] == "rate-limited"
    assert await ledger(pair.ar.gw) == before
    assert [log["event"] for log in logs if log["event"] == "api_rate_limited"] == ["api_rate_limited"]  # once

    # another user keeps her own bucket; alice's refills with time
    other = await asyncio.to_thread(issue_token, pair.ar.provisioned.config, "carol")
    headers = {"Authorization": f"Bearer {other}"}
    async with aiohttp.ClientSession(headers=headers) as session, session.get(pair.ar.api + "/v1/messages") as response:
        assert response.status == 200
    clock.now += 10
    status, _ = await pair.ar.call("GET", "/v1/messages")
    assert status == 200
    status, _ = await pair.ar.call("GET", "/v1/messages")
    assert status == 429


async def test_the_limit_is_on_by_default_off_at_zero_and_documented(pair: Pair) -> None:
    settings = load_settings(pair.ar.provisioned.config)
    assert (settings.api_requests_per_minute, settings.api_request_burst) == (6000.0, 600)
    assert pair.ar.gw.api_budget is not None
    off = settings.model_copy(update={"api_requests_per_minute": 0})
    assert off.api_requests_per_minute == 0
    document = openapi_document()
    assert document["paths"]["/v1/messages"]["get"]["responses"]["429"] == PROBLEM
    assert "429" not in document["paths"]["/healthz"]["get"]["responses"]  # no token, no limit
