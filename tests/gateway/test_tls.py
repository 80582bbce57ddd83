"""The outbox's side of mutual TLS (gateway/tls.py ``client_context``): it trusts exactly the certificate the
directory lists for the peer it calls, so a server presenting any other certificate, even one for the same name on
the same address, fails the handshake before a byte of the envelope leaves."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from crypto.tls import generate_tls_identity
from gateway.tls import client_context
from tests.gateway.conftest import Pair, serve_locally


async def _serve(identity_dir: Path, cert: bytes, key: bytes) -> tuple[web.AppRunner, int, list[bytes]]:
    """A TLS server on loopback with ``cert``; it records every request body it is handed."""
    (identity_dir / "cert.pem").write_bytes(cert)
    (identity_dir / "key.pem").write_bytes(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(identity_dir / "cert.pem"), str(identity_dir / "key.pem"))
    bodies: list[bytes] = []

    async def accept(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.json_response({"receipt": "not a receipt"})

    app = web.Application()
    app.router.add_post("/federation/v1/envelopes", accept)
    runner, port = await serve_locally(app, server)
    return runner, port, bodies


async def test_the_outbox_client_refuses_a_server_the_directory_does_not_pin(pair: Pair, tmp_path: Path) -> None:
    settings, gw = pair.ar.gw.settings, pair.ar.gw
    context = client_context(gw.peer("au.ag"), str(settings.tls_cert_path), str(settings.tls_key_path), gw.tls_password)
    impostor = generate_tls_identity("au.ag", ["127.0.0.1"], None)  # au.ag's name, another key
    runner, port, bodies = await _serve(tmp_path, impostor.cert_pem, impostor.key_pem)
    try:
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector) as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.post(f"https://127.0.0.1:{port}/federation/v1/envelopes", data=b"sealed envelope")
    finally:
        await runner.cleanup()
    assert bodies == []

    # the same client reaches the real au.ag: the refusal above was the certificate
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"https://127.0.0.1:{pair.au.provisioned.federation_port}/healthz"
        async with session.get(url) as response:
            assert response.status == 200
