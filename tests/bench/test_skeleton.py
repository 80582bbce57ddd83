"""bench.skeleton: the least the benchmarked exchange can cost with the mandated stack, and that it does that work."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from joserfc import jwe, jws
from joserfc.jwk import OKPKey

from bench.procs import CpuMeter
from bench.schemas import PG_ADMIN_DSN, create_schema, drop_schemas
from bench.skeleton import create_tables, provision, receiver_app, run_skeleton
from crypto.envelope import DEFAULT_MAX_ENVELOPE_BYTES
from crypto.jose_profile import (
    ENVELOPE_TYP,
    JWE_ALG,
    JWE_ENC,
    MESSAGE_TYP,
    RECEIPT_TYP,
    jwe_registry,
    jws_registry,
    sign_jws,
)
from crypto.keys import key_id
from crypto.receipts import MAX_RECEIPT_BYTES
from tests.conftest import require_postgres

pytestmark = pytest.mark.postgres


def _key(directory: Path, name: str) -> OKPKey:
    return OKPKey.import_key(json.loads((directory / f"{name}.jwk").read_text()))


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    require_postgres()
    name = await create_schema("skeleton_test")
    await create_tables(name)
    yield name
    await drop_schemas([name])


async def _rows(schema: str) -> tuple[int, int]:
    connection = await asyncpg.connect(PG_ADMIN_DSN, server_settings={"search_path": schema})
    try:
        messages = await connection.fetchval("SELECT count(*) FROM messages")
        ledger = await connection.fetchval("SELECT count(*) FROM ledger")
    finally:
        await connection.close()
    return int(messages), int(ledger)


def _envelope(directory: Path, signing: OKPKey) -> tuple[str, bytes]:
    message_id = str(uuid.uuid4())
    payload = {"id": message_id, "from": "ar.mj", "to": "au.ag", "kind": "request", "content": {"text": "x"}}
    signed = sign_jws(json.dumps(payload).encode(), signing, MESSAGE_TYP, DEFAULT_MAX_ENVELOPE_BYTES)
    recipient = OKPKey.import_key(_key(directory, "receiver_encryption").as_dict(private=False))
    header: dict[str, object] = {"alg": JWE_ALG, "enc": JWE_ENC, "kid": key_id(recipient), "typ": ENVELOPE_TYP}
    header |= {"cty": MESSAGE_TYP, "id": message_id, "from": "ar.mj", "to": "au.ag", "kind": "request"}
    header["marking"] = {"level": "CONFIDENTIAL", "caveats": []}
    sealed = jwe.encrypt_compact(header, signed.encode(), recipient, registry=jwe_registry(DEFAULT_MAX_ENVELOPE_BYTES))
    return message_id, sealed.encode()


async def test_the_receiver_stores_and_receipts_only_what_the_known_sender_signed(tmp_path: Path, schema: str) -> None:
    provision(tmp_path)
    async with TestClient(TestServer(receiver_app(tmp_path, PG_ADMIN_DSN, schema))) as client:
        _, forged = _envelope(tmp_path, OKPKey.generate_key("Ed25519"))  # sealed to the receiver, signed by a stranger
        response = await client.post("/v1/envelopes", data=forged)
        assert response.status == 500
        assert await _rows(schema) == (0, 0)

        message_id, sealed = _envelope(tmp_path, _key(tmp_path, "sender_signing"))
        response = await client.post("/v1/envelopes", data=sealed)
        assert response.status == 200
        receiver = OKPKey.import_key(_key(tmp_path, "receiver_signing").as_dict(private=False))
        receipt = jws.deserialize_compact(
            await response.read(), receiver, registry=jws_registry(RECEIPT_TYP, MAX_RECEIPT_BYTES)
        )
        assert json.loads(receipt.payload)["message_id"] == message_id
        assert await _rows(schema) == (1, 1)


async def test_a_small_run_seals_sends_stores_receipts_and_ledgers_every_envelope_on_both_sides() -> None:
    require_postgres()
    result = await run_skeleton(messages=40, clients=4, raw_seconds=0.5)
    # the 40 measured envelopes and one warm-up envelope per client, each stored and ledgered on both sides
    assert result.stored == {
        "sender_envelopes": 44,
        "sender_ledger": 88,
        "receiver_envelopes": 44,
        "receiver_ledger": 44,
    }
    assert result.messages == 40 and result.rate > 0 and result.raw_rate > 0
    assert result.ratio == pytest.approx(result.rate / result.raw_rate, rel=0.01)
    # every process of the exchange was measured, and together they cost more than the JOSE they run
    assert {"sender", "receiver", "postgres", "bench"} <= set(result.cpu_ms_per_message)
    assert result.exchange_ms > result.jose_ms > 0
    assert result.capacity == pytest.approx((os.cpu_count() or 1) * 1000 / result.exchange_ms, rel=0.01)


async def test_the_warm_up_is_not_metered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The meter starts after each client's first envelope, as bench.run meters its flat-out phase after a warm-up
    (a review's finding: the warm-up's connections and handshakes were counted per envelope)."""
    require_postgres()
    submitted: list[str] = []
    at_start: list[int] = []
    real_post, real_start = aiohttp.ClientSession.post, CpuMeter.start

    def post(self: aiohttp.ClientSession, url: Any, **kwargs: Any) -> Any:
        if str(url).endswith("/v1/messages"):
            submitted.append(str(url))
        return real_post(self, url, **kwargs)

    def start(self: CpuMeter) -> None:
        at_start.append(len(submitted))
        real_start(self)

    monkeypatch.setattr(aiohttp.ClientSession, "post", post)
    monkeypatch.setattr(CpuMeter, "start", start)
    result = await run_skeleton(messages=40, clients=4, raw_seconds=0.5)
    assert result.stored["sender_envelopes"] == 44 and len(submitted) == 44
    assert at_start == [4]  # metered from the first envelope after the four of the warm-up
