"""Two gateways on loopback, provisioned with the real commands, talking mutual TLS, on either backend."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from config.settings import load_settings
from gateway.app import RunningGateway, start_gateway
from gateway.context import Gateway
from gateway.provision import AuthoritySpec, Provisioned, comity, provision
from store.tables import ledger_entries
from tests.conftest import DatabaseFactory

PASSPHRASE = "correct horse battery staple"
AR = AuthoritySpec("ar.mj", "Ministerio de Justicia y Derechos Humanos", "AR", ("es", "en"))
AU = AuthoritySpec("au.ag", "Attorney-General's Department", "AU", ("en",))


@dataclass
class Side:
    provisioned: Provisioned
    token: str
    running: RunningGateway | None = None
    session: aiohttp.ClientSession | None = None
    metrics_token: str | None = None

    @property
    def gw(self) -> Gateway:
        assert self.running is not None
        return self.running.gw

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.provisioned.api_port}"

    async def start(self, **overrides: Any) -> None:
        settings = load_settings(self.provisioned.config, **overrides)
        gw = await Gateway.load(settings, PASSPHRASE.encode())
        self.running = await start_gateway(gw)
        self.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"})

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.running is not None:
            await self.running.stop()
            self.running = None

    async def metrics(self) -> str:
        """The gateway's ``/metrics`` text, read as a scraper would: with a token that carries ``metrics:read`` and
        nothing else (decision 122), issued on first use."""
        if self.metrics_token is None:
            self.metrics_token = await asyncio.to_thread(metrics_token, self.provisioned.config)
        headers = {"Authorization": f"Bearer {self.metrics_token}"}
        async with aiohttp.ClientSession() as session, session.get(self.api + "/metrics", headers=headers) as response:
            assert response.status == 200, await response.text()
            return await response.text()

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.request(method, self.api + path, **kwargs) as response:
            if response.content_type in {"application/json", "application/problem+json"}:
                return response.status, await response.json(content_type=None)
            return response.status, await response.read()


@dataclass
class Pair:
    ar: Side
    au: Side
    workdir: Path
    extra: dict[str, Any] = field(default_factory=dict)


ALL_CAVEATS = ("embargo", "no-onward", "uncac-46-19", "uncac-46-20")


def attachment_files(gw: Gateway) -> tuple[str, ...]:
    """The attachment files a gateway holds on disk, relative to its attachments directory."""
    root = gw.settings.attachments_path
    if not root.exists():
        return ()
    return tuple(sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()))


async def ledger(gw: Gateway, since: int = 0) -> list[dict[str, Any]]:
    """Ledger entries from index ``since``, as stored (the bytes the Merkle tree hashes), with their index."""
    async with gw.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(ledger_entries.c.idx, ledger_entries.c.entry)
                .where(ledger_entries.c.idx >= since)
                .order_by(ledger_entries.c.idx)
            )
        ).all()
    return [{"idx": row.idx, **json.loads(bytes(row.entry))} for row in rows]


def issue_token(
    config: Path,
    username: str,
    role: str = "officer",
    *,
    clearance: str = "STRICTLY CONFIDENTIAL",
    caveats: tuple[str, ...] = ALL_CAVEATS,
    unit: str = "mla",
) -> str:
    """Create a user (fully cleared by default) with the real command and return a one-day token."""
    from click.testing import CliRunner

    from gateway.cli import main

    args = ["user", "create", username, "--role", role, "--clearance", clearance, "--unit", unit]
    for caveat in caveats:
        args += ["--caveat", caveat]
    result = CliRunner().invoke(main, [*args, "--token-days", "1", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


async def serve_locally(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    """``app`` served on a free loopback port: its runner (clean it up) and the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def metrics_token(config: Path) -> str:
    """A scraper's account (an auditor) and a token of it limited to ``metrics:read``, with the real commands."""
    from click.testing import CliRunner

    from gateway.cli import main

    result = CliRunner().invoke(main, ["user", "create", "prometheus", "--role", "auditor", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return scoped_token(config, "prometheus", "metrics:read")


def scoped_token(config: Path, username: str, *scopes: str) -> str:
    """A one-day token of an existing user limited to ``scopes``, with the real command."""
    from click.testing import CliRunner

    from gateway.cli import main

    args = ["user", "token", username, "--days", "1", "--config", str(config)]
    for scope in scopes:
        args += ["--scope", scope]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
async def pair(databases: DatabaseFactory, tmp_path: Path) -> AsyncIterator[Pair]:
    async for sides in running_pair(databases, tmp_path):
        yield sides


async def running_pair(databases: DatabaseFactory, tmp_path: Path, *, plain_http: bool = False) -> AsyncIterator[Pair]:
    """ar.mj and au.ag provisioned and running (mutual TLS, or plain HTTP on loopback in development mode)."""
    urls = [await databases.new("ar"), await databases.new("au")]
    # the commands run their own event loop, so they run in a thread beside the test's loop
    ar, au = await asyncio.to_thread(
        provision, tmp_path / "work", [AR, AU], passphrase=PASSPHRASE, database_urls=urls, plain_http=plain_http
    )
    # alice, an officer, opens the cases she starts; bruce supervises au.ag's unit, so he may open incoming cases
    tokens = [
        await asyncio.to_thread(issue_token, ar.config, "alice"),
        await asyncio.to_thread(issue_token, au.config, "bruce", "supervisor"),
    ]
    sides = Pair(Side(ar, tokens[0]), Side(au, tokens[1]), tmp_path)
    await sides.ar.start()
    await sides.au.start()
    try:
        yield sides
    finally:
        await sides.ar.stop()
        await sides.au.stop()


__all__ = [
    "ALL_CAVEATS",
    "AR",
    "AU",
    "PASSPHRASE",
    "Pair",
    "Side",
    "attachment_files",
    "comity",
    "issue_token",
    "ledger",
    "running_pair",
]
