"""The floor under the flat-out target: a lower bound on what the libraries DESIGN.md mandates cost an envelope,
measured on the machine of the run, against the CPU the target allows.

The throughput target is a flat-out rate of at least a tenth of the raw aiohttp round trip on PostgreSQL. On a
machine with ``cpus`` cores that rate allows ``cpus / (0.1 * raw rate)`` seconds of CPU per envelope, for every
process together (both gateways, PostgreSQL, the load driver). Two parts of that are not Comity's to spend:

* **JOSE**, with joserfc as DESIGN.md requires, through the product's wrappers and registries: each envelope is
  signed, sealed to the recipient and sealed again to the sender's archive key; the receiver decrypts it, verifies
  it and signs a receipt; the sender verifies the receipt. Seven operations, timed here (``time.process_time``) on
  the bytes of a real payload with the bench's 2 KiB of content and of a real receipt;
* **HTTP**: an envelope makes two round trips (the officer's POST to the sender, the sender's POST to the
  receiver), each costing at least what one raw round trip costs client and server together in the same run.
  Mutual TLS on the federation hop is mandated too but not counted, so the floor is a lower bound.

The rest of the budget is what Comity's own work may cost: parsing and every check, the ledger, the statistics,
the database (its writes are Comity's schema and statements, so PostgreSQL's CPU counts here, named apart), the
driver calls, logging, the event loops. :func:`floor` reports the budget, the floor and, from a flat-out phase,
what that own work took, so a run shows where the target is missed, not only that it is.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import OKPKey

from bench.load import content_text
from bench.report import TARGETS
from crypto.envelope import DEFAULT_MAX_ENVELOPE_BYTES as _MAX
from crypto.envelope import encrypt_signed, sign_payload
from crypto.jose_profile import (
    MESSAGE_TYP,
    RECEIPT_TYP,
    decrypt_jwe,
    encrypt_jwe,
    parse_jwe,
    parse_jws,
    sign_jws,
    verify_jws,
)
from crypto.receipts import MAX_RECEIPT_BYTES, sign_receipt
from protocol.messages import MessagePayload
from protocol.receipts import Receipt

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
    """Time the seven JOSE operations of one envelope as the product makes them: on the bytes of its payload and
    receipt models, through its JOSE wrappers (joserfc with the product's registries and limits), with the envelope
    header its sealing builds. Serialising the models and the product's own strict parsing of tokens happen outside
    the timed calls: they are Comity's work, not the JOSE library's. What the verifying and decrypting operations
    give back is checked once first, so that a wrong key or token fails here rather than timing an error."""
    signing, receiver_signing = OKPKey.generate_key("Ed25519"), OKPKey.generate_key("Ed25519")
    recipient, archive = OKPKey.generate_key("X25519"), OKPKey.generate_key("X25519")
    verifying = OKPKey.import_key(signing.as_dict(private=False))
    receiver_verifying = OKPKey.import_key(receiver_signing.as_dict(private=False))
    payload = MessagePayload.model_validate(
        {
            "id": str(uuid.uuid4()),
            "from": "ar.mj",
            "to": "au.ag",
            "kind": "request",
            "iat": int(time.time()),
            "marking": {"level": "CONFIDENTIAL", "caveats": []},
            "content": {"text": content_text(content_bytes)},
        }
    )
    payload_bytes = payload.to_bytes()
    signed = sign_payload(payload, signing)
    # the header the product's sealing writes, without the ephemeral key joserfc adds to each seal
    header = dict(parse_jwe(encrypt_signed(signed, payload, recipient).encode(), "envelope").header)
    del header["epk"]
    sealed = encrypt_jwe(header, signed.encode(), recipient, _MAX)
    receipt = Receipt.model_validate(
        {
            "message_id": payload.id,
            "from": "au.ag",
            "to": "ar.mj",
            "envelope_sha256": hashlib.sha256(sealed.encode()).hexdigest(),
            "received_at": "2026-11-29T07:00:00.000000Z",
            "ledger_index": 1,
            "checkpoint": "comity-ledger/au.ag\n2\n" + "A" * 44 + "\n\n\u2014 comity-ledger/au.ag " + "B" * 92 + "\n",
        }
    )
    receipt_bytes = receipt.to_bytes()
    signed_receipt = sign_receipt(receipt, receiver_signing)
    parsed_envelope = parse_jwe(sealed.encode(), "envelope")
    parsed_message = parse_jws(signed.encode(), MESSAGE_TYP, "message")
    parsed_receipt = parse_jws(signed_receipt.encode(), RECEIPT_TYP, "receipt")
    operations: dict[str, Callable[[], object]] = {
        "sender: sign the message": lambda: sign_jws(payload_bytes, signing, MESSAGE_TYP, _MAX),
        "sender: seal to the recipient": lambda: encrypt_jwe(header, signed.encode(), recipient, _MAX),
        "sender: seal the archive copy": lambda: encrypt_jwe(header, signed.encode(), archive, _MAX),
        "receiver: decrypt": lambda: decrypt_jwe(parsed_envelope, recipient, _MAX),
        "receiver: verify the message": lambda: verify_jws(parsed_message, verifying, MESSAGE_TYP, "message", _MAX),
        "receiver: sign the receipt": lambda: sign_jws(receipt_bytes, receiver_signing, RECEIPT_TYP, MAX_RECEIPT_BYTES),
        "sender: verify the receipt": lambda: verify_jws(
            parsed_receipt, receiver_verifying, RECEIPT_TYP, "receipt", MAX_RECEIPT_BYTES
        ),
    }
    expected = {
        "receiver: decrypt": signed.encode(),
        "receiver: verify the message": payload_bytes,
        "sender: verify the receipt": receipt_bytes,
    }
    for name, value in expected.items():
        if operations[name]() != value:
            raise RuntimeError(f"bench.floor: '{name}' did not give back what was sealed or signed")
    costs = {name: round(_time(operation, rounds), 3) for name, operation in operations.items()}
    return JoseCost(costs, round(sum(costs.values()), 3))


@dataclass(frozen=True)
class Floor:
    """The CPU budget per envelope that the target allows, the share the mandated libraries take of it, and what
    the rest (Comity's own work, its database's included) took flat out."""

    cpus: int
    ratio: float  # the target: flat-out rate / raw rate
    target_rate: float  # envelopes/s: ratio times the raw rate
    budget_ms: float  # CPU ms per envelope, all processes, at target_rate on every core
    jose_ms: float
    http_ms: float  # two raw round trips, client and server, without TLS
    floor_ms: float  # jose_ms + http_ms
    left_ms: float  # budget_ms - floor_ms: what all of Comity's own work may cost
    measured_ms: float | None  # what every process of the exchange took per envelope flat out
    own_ms: float | None  # measured_ms - floor_ms: what Comity's own work took
    postgres_ms: float | None  # of which PostgreSQL's own CPU (its share of own_ms; None: not measured)


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
    floor_ms = jose.total_ms + http_ms
    measured = postgres = None
    if flat_cpu_ms:  # every process of the exchange, not the rest of the machine ("others") nor its total
        measured = sum(value for name, value in flat_cpu_ms.items() if name in _EXCHANGE)
        postgres = flat_cpu_ms.get("postgres")
    return Floor(
        cpus=cores,
        ratio=ratio,
        target_rate=round(target_rate, 1),
        budget_ms=round(budget_ms, 3),
        jose_ms=jose.total_ms,
        http_ms=round(http_ms, 3),
        floor_ms=round(floor_ms, 3),
        left_ms=round(budget_ms - floor_ms, 3),
        measured_ms=None if measured is None else round(measured, 3),
        own_ms=None if measured is None else round(measured - floor_ms, 3),
        postgres_ms=postgres,
    )
