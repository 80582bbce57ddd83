"""Garbage in gives a clean typed error, never a crash: random bytes and random mutations of a valid envelope,
a valid inner JWS and a valid receipt always raise a ``ComityError`` subclass (and only when the bytes changed)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jwk import OKPKey

from crypto.envelope import OpenedEnvelope, open_envelope, read_routing_header, seal_envelope
from crypto.jose_profile import encrypt_jwe
from crypto.receipts import sign_receipt, verify_receipt, verify_refusal
from protocol.errors import ComityError
from tests.crypto.test_envelope import Authority, make_payload
from tests.crypto.test_envelope_refusals import jwe_header
from tests.crypto.test_receipts import make_receipt

SENDER = Authority("ar.mjdh")
RECIPIENT = Authority("es.mj")
PAYLOAD = make_payload(SENDER, RECIPIENT)
SEALED = seal_envelope(PAYLOAD, SENDER.signing, RECIPIENT.encryption_public)
RECEIPT_SIGNER = OKPKey.generate_key("Ed25519")
RECEIPT = sign_receipt(make_receipt(), RECEIPT_SIGNER)
RECEIPT_KEYS = {RECEIPT_SIGNER.thumbprint(): RECEIPT_SIGNER}

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def open_it(sealed: bytes | str) -> OpenedEnvelope:
    return open_envelope(
        sealed,
        recipient_keys={RECIPIENT.encryption.thumbprint(): RECIPIENT.encryption},
        sender_keys=SENDER.directory_keys(),
        expected_recipient=RECIPIENT.id,
    )


def refused(call: Any, *args: Any) -> None:
    """Run ``call``; it must raise a specific ComityError subclass, and nothing else."""
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is asserted below, to report any other
        call(*args)
    assert isinstance(info.value, ComityError), f"{call.__name__} raised {type(info.value).__name__}"
    assert type(info.value) is not ComityError
    assert info.value.code
    assert info.value.message


def seal_inner(inner: bytes) -> str:
    """Seal arbitrary inner bytes under a correct routing header, to fuzz the inner layer behind a valid JWE."""
    header = jwe_header(PAYLOAD, RECIPIENT.encryption)
    return encrypt_jwe(header, inner, RECIPIENT.encryption_public, 1 << 22)


B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@st.composite
def mutations(draw: st.DrawFn, original: str) -> str:
    """A changed copy of a compact token: byte flips, truncation, part swaps/drops/duplicates, base64 garbage."""
    data = original.encode("ascii")
    parts = original.split(".")
    how = draw(st.sampled_from(["flip", "truncate", "swap", "drop", "duplicate", "garbage", "insert", "reencode"]))
    if how == "flip":
        at = draw(st.integers(0, len(data) - 1))
        bit = draw(st.integers(0, 7))
        return (data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]).decode("latin-1")
    if how == "truncate":
        return original[: draw(st.integers(0, len(original) - 1))]
    if how == "swap":
        i, j = draw(st.lists(st.integers(0, len(parts) - 1), min_size=2, max_size=2, unique=True))
        parts[i], parts[j] = parts[j], parts[i]
    elif how == "drop":
        del parts[draw(st.integers(0, len(parts) - 1))]
    elif how == "duplicate":
        at = draw(st.integers(0, len(parts) - 1))
        parts.insert(at, parts[at])
    elif how == "garbage":
        parts[draw(st.integers(0, len(parts) - 1))] = draw(st.text(B64_CHARS + "=+/. \n\x00é", max_size=80))
    elif how == "insert":
        at = draw(st.integers(0, len(original)))
        return original[:at] + draw(st.text(min_size=1, max_size=4)) + original[at:]
    else:  # decode a part and re-encode it with padding or the standard alphabet
        at = draw(st.integers(0, len(parts) - 1))
        raw = base64.urlsafe_b64decode(parts[at] + "=" * (-len(parts[at]) % 4))
        parts[at] = base64.b64encode(raw).decode() if draw(st.booleans()) else parts[at] + "=" * (-len(parts[at]) % 4)
    return ".".join(parts)


def test_the_originals_are_valid() -> None:
    assert open_it(SEALED.compact).payload == PAYLOAD
    assert open_it(seal_inner(SEALED.signed.encode())).payload == PAYLOAD
    assert verify_receipt(RECEIPT, RECEIPT_KEYS) == make_receipt()


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    refused(open_it, data)
    refused(read_routing_header, data)
    refused(verify_receipt, data, RECEIPT_KEYS)
    refused(verify_refusal, data, RECEIPT_KEYS)


@FUZZ
@given(st.text(max_size=512))
def test_random_text(text: str) -> None:
    refused(open_it, text)
    refused(verify_receipt, text, RECEIPT_KEYS)


@FUZZ
@given(st.lists(st.text(B64_CHARS, max_size=120), min_size=1, max_size=7).map(".".join))
def test_random_compact_shaped_text(text: str) -> None:
    refused(open_it, text)
    refused(verify_receipt, text, RECEIPT_KEYS)


@FUZZ
@given(mutations(SEALED.compact))
def test_mutated_envelope(mutated: str) -> None:
    if mutated != SEALED.compact:
        refused(open_it, mutated)
        refused(open_it, mutated.encode("utf-8", "surrogatepass"))


@FUZZ
@given(mutations(SEALED.signed))
def test_mutated_inner_jws_behind_a_valid_jwe(mutated: str) -> None:
    if mutated != SEALED.signed:
        refused(open_it, seal_inner(mutated.encode("utf-8", "surrogatepass")))


@FUZZ
@given(st.binary(max_size=1024))
def test_random_inner_bytes_behind_a_valid_jwe(inner: bytes) -> None:
    refused(open_it, seal_inner(inner))


@FUZZ
@given(mutations(RECEIPT))
def test_mutated_receipt(mutated: str) -> None:
    if mutated != RECEIPT:
        refused(verify_receipt, mutated, RECEIPT_KEYS)
        refused(verify_refusal, mutated, RECEIPT_KEYS)
