"""The floor under the flat-out target: what the libraries DESIGN.md mandates cost an envelope before any of Comity's
own work, measured on the machine of the run.

The throughput target is a flat-out rate of at least a tenth of the raw aiohttp round trip on PostgreSQL. On a
machine with ``cpus`` cores that rate allows ``cpus / (0.1 * raw rate)`` seconds of CPU per envelope, for every
process together (both gateways, PostgreSQL, the load driver). Three parts of that are not Comity's to spend:

* **JOSE**, with joserfc as DESIGN.md requires and configured as the product configures it (its registries): each
  envelope is signed, sealed to the recipient and sealed again to the sender's archive key; the receiver decrypts
  it, verifies it and signs a receipt; the sender verifies the receipt. Seven operations, timed here
  (``time.process_time``) on a payload the size the bench sends;
* **HTTP**: an envelope makes two round trips (the officer's POST to the sender, the sender's POST to the
  receiver), each costing at least what one raw round trip costs client and server together in the same run
  (without TLS, which the federation hop adds on top);
* **PostgreSQL's own CPU** per envelope in the flat-out phase, for the writes of the group commits.

What is left of the budget after these is what everything else may cost: parsing and checking, the ledger, the
driver calls, logging, the event loops. :func:`floor` reports both, so a run shows how far the target is from what
the mandated stack leaves, not only that it is missed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc import jwe, jws
from joserfc.jwk import OKPKey

from bench.report import TARGETS
from crypto.envelope import DEFAULT_MAX_ENVELOPE_BYTES as _MAX
from crypto.jose_profile import (
    ENVELOPE_TYP,
    JWE_ALG,
    JWE_ENC,
    JWS_ALG,
    MESSAGE_TYP,
    RECEIPT_TYP,
    jwe_registry,
    jws_registry,
)
from crypto.keys import key_id

__all__ = ["Floor", "JoseCost", "floor", "jose_cost"]

_EXCHANGE = frozenset({"sender", "receiver", "postgres", "bench"})


@dataclass(frozen=True)
class JoseCost:
    """CPU milliseconds of each JOSE operation one envelope needs (sender's and receiver's), and their sum."""

    operations_ms: dict[str, float]
    total_ms: float


def _time(operation: Callable[[], object], rounds: int) -> float:
    operation()  # warm: registries, key objects, the first call's imports
    started = time.process_time()
    for _ in range(rounds):
        operation()
    return (time.process_time() - started) * 1000 / rounds


def jose_cost(content_bytes: int = 2048, rounds: int = 200) -> JoseCost:
    """Time the seven JOSE operations of one envelope with joserfc and the product's registries."""
    signing, receiver_signing = OKPKey.generate_key("Ed25519"), OKPKey.generate_key("Ed25519")
    recipient, archive = OKPKey.generate_key("X25519"), OKPKey.generate_key("X25519")
    verifying = OKPKey.import_key(signing.as_dict(private=False))
    receiver_verifying = OKPKey.import_key(receiver_signing.as_dict(private=False))
    message_id = str(uuid.uuid4())
    # about the size of the signed payload the bench's 2 KiB of content makes (members, marking, empty manifest)
    payload = json.dumps(
        {"id": message_id, "from": "ar.mj", "to": "au.ag", "kind": "request", "content": {"text": "x" * content_bytes}}
    ).encode()
    message_registry, receipt_registry = jws_registry(MESSAGE_TYP, _MAX), jws_registry(RECEIPT_TYP, _MAX)
    envelope_registry = jwe_registry(_MAX)

    def sign_message() -> str:
        header = {"alg": JWS_ALG, "kid": key_id(signing), "typ": MESSAGE_TYP}
        return jws.serialize_compact(header, payload, signing, registry=message_registry)

    signed = sign_message()

    def seal(to: OKPKey) -> Callable[[], str]:
        def run() -> str:
            header = {
                "alg": JWE_ALG,
                "enc": JWE_ENC,
                "kid": key_id(to),
                "typ": ENVELOPE_TYP,
                "cty": MESSAGE_TYP,
                "id": message_id,
                "from": "ar.mj",
                "to": "au.ag",
                "kind": "request",
                "marking": {"level": "CONFIDENTIAL", "caveats": []},
            }
            return jwe.encrypt_compact(header, signed.encode(), to, registry=envelope_registry)

        return run

    sealed = seal(recipient)()
    receipt_payload = json.dumps({"id": message_id, "envelope_sha256": "0" * 64, "ledger_index": 1, "note": "x" * 400})

    def sign_receipt() -> str:
        header = {"alg": JWS_ALG, "kid": key_id(receiver_signing), "typ": RECEIPT_TYP}
        return jws.serialize_compact(header, receipt_payload.encode(), receiver_signing, registry=receipt_registry)

    receipt = sign_receipt()
    operations: dict[str, Callable[[], Any]] = {
        "sender: sign the message": sign_message,
        "sender: seal to the recipient": seal(recipient),
        "sender: seal the archive copy": seal(archive),
        "receiver: decrypt": lambda: jwe.decrypt_compact(sealed, recipient, registry=envelope_registry),
        "receiver: verify the message": lambda: jws.deserialize_compact(signed, verifying, registry=message_registry),
        "receiver: sign the receipt": sign_receipt,
        "sender: verify the receipt": lambda: jws.deserialize_compact(
            receipt, receiver_verifying, registry=receipt_registry
        ),
    }
    costs = {name: round(_time(operation, rounds), 3) for name, operation in operations.items()}
    return JoseCost(costs, round(sum(costs.values()), 3))


@dataclass(frozen=True)
class Floor:
    """The CPU budget per envelope that the target allows, and how much of it the mandated stack takes."""

    cpus: int
    target_rate: float  # envelopes/s: the ratio target times the raw rate
    budget_ms: float  # CPU ms per envelope, all processes, at target_rate on every core
    jose_ms: float
    http_ms: float  # two raw round trips, client and server
    postgres_ms: float | None  # PostgreSQL's CPU per envelope flat out (None: not measured)
    floor_ms: float  # the sum of the three
    left_ms: float  # budget - floor: what all of Comity's own work may cost
    measured_ms: float | None  # what every process took per envelope flat out, for comparison


def floor(
    *,
    raw: dict[str, Any],
    jose: JoseCost,
    cpus: int | None = None,
    ratio: float = TARGETS["ratio"],
    flat_cpu_ms: dict[str, float] | None = None,
) -> Floor:
    """Combine a raw baseline (``bench.raw.RawResult`` as a dict), the JOSE cost and, if given, a flat-out phase's
    CPU per envelope by process (``LoadResult.cpu_ms_per_message``) into the floor of the throughput target."""
    cores = cpus or os.cpu_count() or 1
    target_rate = ratio * float(raw["rate"])
    budget_ms = cores * 1000 / target_rate
    round_trip_ms = (float(raw["server_cpu_s"]) + float(raw["client_cpu_s"])) * 1000 / int(raw["requests"])
    http_ms = 2 * round_trip_ms
    postgres_ms = None if not flat_cpu_ms or "postgres" not in flat_cpu_ms else float(flat_cpu_ms["postgres"])
    floor_ms = jose.total_ms + http_ms + (postgres_ms or 0.0)
    measured = None
    if flat_cpu_ms:  # every process of the exchange, not the rest of the machine ("others")
        measured = sum(value for name, value in flat_cpu_ms.items() if name in _EXCHANGE)
    return Floor(
        cpus=cores,
        target_rate=round(target_rate, 1),
        budget_ms=round(budget_ms, 3),
        jose_ms=jose.total_ms,
        http_ms=round(http_ms, 3),
        postgres_ms=postgres_ms,
        floor_ms=round(floor_ms, 3),
        left_ms=round(budget_ms - floor_ms, 3),
        measured_ms=None if measured is None else round(measured, 3),
    )
