"""jwcrypto, an independent JOSE implementation, must open what Comity writes; what it writes within the profile
must open with Comity, and what it writes outside the profile must be refused (DESIGN.md, "Envelopes")."""

from __future__ import annotations

import json
from typing import Any

import pytest
from joserfc.jwk import OKPKey
from jwcrypto import jwe as jc_jwe
from jwcrypto import jwk as jc_jwk
from jwcrypto import jws as jc_jws

from crypto.envelope import encrypt_signed, seal_envelope
from crypto.errors import ProfileViolation
from crypto.receipts import sign_receipt, sign_refusal, verify_receipt, verify_refusal
from protocol.messages import MessagePayload
from tests.crypto.test_envelope import Authority, make_payload, open_as
from tests.crypto.test_envelope_refusals import jwe_header
from tests.crypto.test_receipts import listed, make_receipt, make_refusal


def jc_key(key: OKPKey, *, private: bool) -> jc_jwk.JWK:
    return jc_jwk.JWK(**key.as_dict(private=private))


def jc_decrypt(compact: str, key: OKPKey) -> tuple[dict[str, Any], bytes]:
    token = jc_jwe.JWE()
    token.allowed_algs = ["ECDH-ES+A256KW", "A256GCM"]
    token.deserialize(compact, jc_key(key, private=True))
    return dict(token.jose_header), bytes(token.payload)


def jc_verify(compact: str, key: OKPKey) -> tuple[dict[str, Any], bytes]:
    token = jc_jws.JWS()
    token.allowed_algs = ["Ed25519"]
    token.deserialize(compact)
    token.verify(jc_key(key, private=False), alg="Ed25519")
    return dict(token.jose_header), bytes(token.payload)


def jc_sign(payload: bytes, key: OKPKey, header: dict[str, Any]) -> str:
    token = jc_jws.JWS(payload)
    token.allowed_algs = [header["alg"]]
    token.add_signature(jc_key(key, private=True), alg=header["alg"], protected=json.dumps(header))
    return str(token.serialize(compact=True))


def jc_encrypt(plaintext: bytes, key: OKPKey, header: dict[str, Any], **kwargs: Any) -> str:
    token = jc_jwe.JWE(plaintext, protected=json.dumps(header), **kwargs)
    token.allowed_algs = [header["alg"], header["enc"]]
    token.add_recipient(jc_key(key, private=False))
    return str(token.serialize(compact=True))


@pytest.fixture
def sender() -> Authority:
    return Authority("ar.mjdh")


@pytest.fixture
def recipient() -> Authority:
    return Authority("es.mj")


@pytest.fixture
def payload(sender: Authority, recipient: Authority) -> MessagePayload:
    return make_payload(sender, recipient)


def test_jwcrypto_opens_what_comity_seals(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)

    outer_header, signed = jc_decrypt(sealed.compact, recipient.encryption)
    inner_header, signed_payload = jc_verify(signed.decode("ascii"), sender.signing_public)

    assert signed.decode("ascii") == sealed.signed
    assert signed_payload == payload.to_bytes()
    assert MessagePayload.from_bytes(signed_payload) == payload
    assert inner_header == {"alg": "Ed25519", "kid": sender.signing.thumbprint(), "typ": "comity-message+jws"}
    assert outer_header["to"] == recipient.id
    assert outer_header["marking"] == payload.marking.to_json()


def test_jwcrypto_opens_the_archive_copy(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public)
    archive_copy = encrypt_signed(sealed.signed, payload, sender.archive_public)
    header, signed = jc_decrypt(archive_copy, sender.archive)
    assert signed.decode("ascii") == sealed.signed
    assert header["kid"] == sender.archive.thumbprint()


def test_jwcrypto_verifies_receipts_and_refusals() -> None:
    signer = OKPKey.generate_key("Ed25519")
    public = OKPKey.import_key(signer.as_dict(private=False))
    _, receipt = jc_verify(sign_receipt(make_receipt(), signer), public)
    _, refusal = jc_verify(sign_refusal(make_refusal(), signer), public)
    assert receipt == make_receipt().to_bytes()
    assert refusal == make_refusal().to_bytes()


def test_comity_opens_what_jwcrypto_seals_within_the_profile(
    sender: Authority, recipient: Authority, payload: MessagePayload
) -> None:
    header = {"alg": "Ed25519", "kid": sender.signing.thumbprint(), "typ": "comity-message+jws"}
    signed = jc_sign(payload.to_bytes(), sender.signing, header)
    sealed = jc_encrypt(signed.encode(), recipient.encryption_public, jwe_header(payload, recipient.encryption))
    opened = open_as(recipient, sealed, sender)
    assert opened.payload == payload
    assert opened.signed == signed


def test_comity_verifies_jwcrypto_receipts() -> None:
    signer = OKPKey.generate_key("Ed25519")
    header = {"alg": "Ed25519", "kid": signer.thumbprint(), "typ": "comity-receipt+jws"}
    assert verify_receipt(jc_sign(make_receipt().to_bytes(), signer, header), listed(signer)) == make_receipt()
    header["typ"] = "comity-refusal+jws"
    assert verify_refusal(jc_sign(make_refusal().to_bytes(), signer, header), listed(signer)) == make_refusal()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jwcrypto warns that EdDSA is deprecated, rightly
@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"alg": "EdDSA"}, "'alg' must be 'Ed25519'"),
        ({"x5u": "https://attacker.example/c.pem"}, "members outside the profile: 'x5u'"),
        ({"cty": "JWT"}, "members outside the profile: 'cty'"),
        ({"typ": "JWT"}, "'typ' must be"),
    ],
)
def test_jwcrypto_receipts_outside_the_profile_are_refused(header: dict[str, Any], match: str) -> None:
    signer = OKPKey.generate_key("Ed25519")
    full = {"alg": "Ed25519", "kid": signer.thumbprint(), "typ": "comity-receipt+jws"} | header
    token = jc_sign(make_receipt().to_bytes(), signer, full)
    with pytest.raises(ProfileViolation, match=match):
        verify_receipt(token, listed(signer))


def test_jwcrypto_json_serialised_receipt_is_refused() -> None:
    signer = OKPKey.generate_key("Ed25519")
    token = jc_jws.JWS(make_receipt().to_bytes())
    token.add_signature(
        jc_key(signer, private=True),
        alg="Ed25519",
        protected=json.dumps({"alg": "Ed25519", "typ": "comity-receipt+jws"}),
        header=json.dumps({"kid": signer.thumbprint()}),
    )
    with pytest.raises(ProfileViolation, match="JSON serialisation"):
        verify_receipt(token.serialize(compact=False), listed(signer))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"enc": "A256CBC-HS512"}, "'enc' must be 'A256GCM'"),
        ({"enc": "A128GCM"}, "'enc' must be 'A256GCM'"),
        ({"alg": "ECDH-ES"}, "'alg' must be"),
        ({"zip": "DEF"}, "'zip'"),
        ({"apu": "QWxpY2U", "apv": "Qm9i"}, "members outside the profile: 'apu', 'apv'"),
    ],
)
def test_jwcrypto_envelopes_outside_the_profile_are_refused(
    sender: Authority, recipient: Authority, payload: MessagePayload, changes: dict[str, Any], match: str
) -> None:
    signed = seal_envelope(payload, sender.signing, recipient.encryption_public).signed
    header = jwe_header(payload, recipient.encryption, **changes)
    sealed = jc_encrypt(signed.encode(), recipient.encryption_public, header)
    with pytest.raises(ProfileViolation, match=match):
        open_as(recipient, sealed, sender)


def test_jwcrypto_envelope_with_unprotected_routing_is_refused(
    sender: Authority, recipient: Authority, payload: MessagePayload
) -> None:
    signed = seal_envelope(payload, sender.signing, recipient.encryption_public).signed
    protected = jwe_header(payload, recipient.encryption)
    routing = {k: protected.pop(k) for k in ("id", "from", "to", "kind", "marking")}
    token = jc_jwe.JWE(signed.encode(), protected=json.dumps(protected), unprotected=json.dumps(routing))
    token.add_recipient(jc_key(recipient.encryption_public, private=False))
    with pytest.raises(ProfileViolation, match="JSON serialisation"):
        open_as(recipient, token.serialize(compact=False), sender)
