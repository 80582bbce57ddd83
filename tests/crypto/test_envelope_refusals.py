"""Every way an envelope must be refused, each with its typed error.

Hostile envelopes are built two ways: with joserfc directly (permissive registries, as an attacker with the same
library would), and with ``craft_jwe`` / ``craft_jws`` below, a small independent implementation on top of
``cryptography`` that puts arbitrary header bytes under a valid ECDH-ES+A256KW / A256GCM encryption or a valid
Ed25519 signature, so each refusal is shown to come from the profile check and not from a broken ciphertext.
"""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwe, jws
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from crypto.envelope import encrypt_signed, open_envelope, read_routing_header, seal_envelope, sign_payload
from crypto.errors import (
    BadSignature,
    DecryptionFailed,
    HeaderMismatch,
    OversizedEnvelope,
    ProfileViolation,
    UnknownKey,
    WrongRecipient,
)
from crypto.jose_profile import ENVELOPE_TYP, JWE_ALG, JWE_ENC, MESSAGE_TYP, b64url_decode
from protocol.errors import InvalidMessage
from protocol.messages import MessagePayload
from tests.crypto.test_envelope import Authority, make_payload, open_as

# -- crafting tools ---------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _raw_public(key: OKPKey) -> bytes:
    public = key.public_key
    assert isinstance(public, X25519PublicKey)
    return public.public_bytes_raw()


def craft_jwe(header: dict[str, Any] | str, plaintext: bytes, recipient: OKPKey, *, alg: str = JWE_ALG) -> str:
    """ECDH-ES+A256KW / A256GCM (RFC 7518 sections 4.6 and 5.3) under exactly the header bytes given.

    ``header`` is a dict (``epk`` added when absent) or JSON text with the placeholder ``<EPK>`` for the epk object
    or ``<EPK_MEMBERS>`` for its members.
    """
    ephemeral = X25519PrivateKey.generate()
    epk = {"crv": "X25519", "kty": "OKP", "x": b64(ephemeral.public_key().public_bytes_raw())}
    if isinstance(header, dict):
        text = json.dumps({"epk": epk} | header if "epk" not in header else header, separators=(",", ":"))
    else:
        members = json.dumps(epk, separators=(",", ":"))[1:-1]
        text = header.replace("<EPK_MEMBERS>", members).replace("<EPK>", "{" + members + "}")
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(_raw_public(recipient)))

    def field(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    other_info = field(alg.encode()) + field(b"") + field(b"") + (256).to_bytes(4, "big")
    kek = ConcatKDFHash(hashes.SHA256(), 32, other_info).derive(shared)
    cek, iv = os.urandom(32), os.urandom(12)
    protected = b64(text.encode("utf-8"))
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    return ".".join([protected, b64(aes_key_wrap(kek, cek)), b64(iv), b64(sealed[:-16]), b64(sealed[-16:])])


def craft_jws(header: dict[str, Any] | str, payload: bytes, signing_key: OKPKey) -> str:
    """An Ed25519 signature over exactly the header and payload bytes given."""
    text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    signing_input = f"{b64(text.encode('utf-8'))}.{b64(payload)}"
    private = signing_key.private_key
    assert isinstance(private, Ed25519PrivateKey)
    return f"{signing_input}.{b64(private.sign(signing_input.encode('ascii')))}"


def jwe_header(payload: MessagePayload, recipient_key: OKPKey, **changes: Any) -> dict[str, Any]:
    """The profile's JWE header for ``payload`` (without epk), with ``changes`` applied (None removes a member)."""
    header: dict[str, Any] = {
        "alg": JWE_ALG,
        "enc": JWE_ENC,
        "kid": recipient_key.thumbprint(),
        "typ": ENVELOPE_TYP,
        "cty": MESSAGE_TYP,
        "id": payload.id,
        "from": payload.from_,
        "to": payload.to,
        "kind": payload.kind.value,
        "marking": payload.marking.to_json(),
    }
    header.update(changes)
    return {k: v for k, v in header.items() if v is not None}


def jws_header(signing_key: OKPKey, **changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": "Ed25519", "kid": signing_key.thumbprint(), "typ": MESSAGE_TYP} | changes
    return {k: v for k, v in header.items() if v is not None}


# joserfc with every check relaxed: what an attacker using the same library can produce.
PERMISSIVE_JWE = jwe.JWERegistry(
    algorithms=list(jwe.JWERegistry.algorithms["alg"]) + list(jwe.JWERegistry.algorithms["enc"]) + ["DEF"],
    strict_check_header=False,
)


@pytest.fixture
def sender() -> Authority:
    return Authority("ar.mjdh")


@pytest.fixture
def recipient() -> Authority:
    return Authority("es.mj")


@pytest.fixture
def payload(sender: Authority, recipient: Authority) -> MessagePayload:
    return make_payload(sender, recipient)


def test_the_crafting_tools_make_envelopes_the_product_accepts(
    sender: Authority, recipient: Authority, payload: MessagePayload
) -> None:
    signed = craft_jws(jws_header(sender.signing), payload.to_bytes(), sender.signing)
    assert signed == sign_payload(payload, sender.signing)
    sealed = craft_jwe(jwe_header(payload, recipient.encryption), signed.encode(), recipient.encryption_public)
    assert open_as(recipient, sealed, sender).payload == payload


# -- signatures -------------------------------------------------------------------------------------------------


def test_flipped_signature_byte(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    header, body, signature = sign_payload(payload, sender.signing).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0x01
    tampered = f"{header}.{body}.{b64(bytes(raw))}"
    sealed = encrypt_signed(tampered, payload, recipient.encryption_public)
    with pytest.raises(BadSignature, match="does not verify"):
        open_as(recipient, sealed, sender)


def test_valid_signature_by_another_key_claiming_the_senders_kid(
    sender: Authority, recipient: Authority, payload: MessagePayload
) -> None:
    impostor = OKPKey.generate_key("Ed25519")
    signed = jws.serialize_compact(jws_header(sender.signing), payload.to_bytes(), impostor, algorithms=["Ed25519"])
    sealed = encrypt_signed(signed, payload, recipient.encryption_public)
    with pytest.raises(BadSignature, match="does not verify"):
        open_as(recipient, sealed, sender)


def test_signature_over_another_payload(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    header, _, signature = sign_payload(make_payload(sender, recipient), sender.signing).split(".")
    spliced = f"{header}.{b64(payload.to_bytes())}.{signature}"
    with pytest.raises(BadSignature, match="does not verify"):
        open_as(recipient, encrypt_signed(spliced, payload, recipient.encryption_public), sender)


# -- recipient and routing --------------------------------------------------------------------------------------


def test_addressed_to_another_authority(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    third = Authority("fr.mj")
    sealed = seal_envelope(payload, sender.signing, third.encryption_public).compact
    with pytest.raises(WrongRecipient, match=r"addressed to 'es\.mj', not to 'fr\.mj'"):
        open_as(third, sealed, sender)


def test_sealed_to_a_key_that_is_not_ours(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    sealed = seal_envelope(payload, sender.signing, OKPKey.generate_key("X25519")).compact
    with pytest.raises(WrongRecipient, match="not ours"):
        open_as(recipient, sealed, sender)


def test_a_signed_message_forwarded_to_a_third_party(
    sender: Authority, recipient: Authority, payload: MessagePayload
) -> None:
    # The recipient re-seals what the sender signed for it to a third authority, with an honest-looking header.
    third = Authority("fr.mj")
    signed = sign_payload(payload, sender.signing)
    header = jwe_header(payload, third.encryption, to=third.id)
    forwarded = jwe.encrypt_compact(header, signed, third.encryption_public, registry=PERMISSIVE_JWE)
    with pytest.raises(HeaderMismatch, match="'to' differs"):
        open_as(third, forwarded, sender)


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("id", "0b9e5d1c-3f47-4a2b-8c6d-7e8f9a0b1c2d"),
        ("from", "br.pgr"),
        ("kind", "withdrawal"),
        ("marking", {"level": "UNCLASSIFIED", "caveats": []}),
        ("marking", {"level": "CONFIDENTIAL", "caveats": ["art46-20"]}),
    ],
)
def test_routing_header_differs_from_the_signed_payload(
    sender: Authority, recipient: Authority, payload: MessagePayload, member: str, value: Any
) -> None:
    signed = sign_payload(payload, sender.signing)
    header = jwe_header(payload, recipient.encryption, **{member: value})
    sealed = jwe.encrypt_compact(header, signed, recipient.encryption_public, registry=PERMISSIVE_JWE)
    assert read_routing_header(sealed).kid == recipient.encryption.thumbprint()  # in profile, just lying
    with pytest.raises(HeaderMismatch, match=f"'{member}' differs from the signed payload"):
        open_as(recipient, sealed, sender)


def test_signed_payload_addressed_elsewhere_under_a_header_naming_us(sender: Authority, recipient: Authority) -> None:
    elsewhere = make_payload(sender, Authority("fr.mj"))
    signed = sign_payload(elsewhere, sender.signing)
    header = jwe_header(elsewhere, recipient.encryption, to=recipient.id)
    sealed = jwe.encrypt_compact(header, signed, recipient.encryption_public, registry=PERMISSIVE_JWE)
    with pytest.raises(HeaderMismatch, match="'to' differs"):
        open_as(recipient, sealed, sender)


# -- sender keys ------------------------------------------------------------------------------------------------


def test_kid_not_listed_for_the_sender(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public).compact
    other = Authority("br.pgr")
    with pytest.raises(UnknownKey, match=r"not listed for 'ar\.mjdh'"):
        open_as(recipient, sealed, sender, sender_keys=other.directory_keys())
    with pytest.raises(UnknownKey, match="not listed"):
        open_as(recipient, sealed, sender, sender_keys={})


def test_kid_listed_with_a_key_that_is_not_ed25519(
    sender: Authority, recipient: Authority, payload: MessagePayload
) -> None:
    sealed = seal_envelope(payload, sender.signing, recipient.encryption_public).compact
    wrong_type = {sender.signing.thumbprint(): sender.encryption_public}
    with pytest.raises(UnknownKey, match="not listed"):
        open_as(recipient, sealed, sender, sender_keys=wrong_type)


# -- algorithms -------------------------------------------------------------------------------------------------


# joserfc rightly warns about EdDSA, RSA1_5 and short PBES2 passwords while we build these hostile inputs.
@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")
@pytest.mark.parametrize(
    ("alg", "make_key"),
    [
        ("ES256", lambda: ECKey.generate_key("P-256")),
        ("HS256", lambda: OctKey.generate_key(256)),
        ("RS256", lambda: RSAKey.generate_key(2048)),
        ("EdDSA", lambda: OKPKey.generate_key("Ed25519")),
        ("Ed448", lambda: OKPKey.generate_key("Ed448")),
    ],
)
def test_inner_jws_algorithm_outside_the_profile(
    sender: Authority, recipient: Authority, payload: MessagePayload, alg: str, make_key: Any
) -> None:
    key = make_key()
    signed = jws.serialize_compact(jws_header(sender.signing, alg=alg), payload.to_bytes(), key, algorithms=[alg])
    sealed = encrypt_signed(signed, payload, recipient.encryption_public)
    with pytest.raises(ProfileViolation, match="'alg' must be 'Ed25519'"):
        open_as(recipient, sealed, sender)


def test_inner_jws_alg_none(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    unsigned = f"{b64(json.dumps(jws_header(sender.signing, alg='none')).encode())}.{b64(payload.to_bytes())}."
    sealed = encrypt_signed(unsigned, payload, recipient.encryption_public)
    with pytest.raises(ProfileViolation, match="alg 'none' is refused"):
        open_as(recipient, sealed, sender)


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")
@pytest.mark.parametrize(
    ("alg", "enc", "make_key", "match"),
    [
        ("ECDH-ES+A256KW", "A128GCM", None, "'enc' must be 'A256GCM'"),
        ("ECDH-ES+A256KW", "A256CBC-HS512", None, "'enc' must be 'A256GCM'"),
        ("ECDH-ES", "A256GCM", None, "'alg' must be 'ECDH-ES\\+A256KW'"),
        ("ECDH-ES+A128KW", "A256GCM", None, "'alg' must be"),
        ("RSA-OAEP", "A256GCM", lambda: RSAKey.generate_key(2048), "'alg' must be"),
        ("RSA1_5", "A256GCM", lambda: RSAKey.generate_key(2048), "'alg' must be"),
        ("dir", "A256GCM", lambda: OctKey.generate_key(256), "'alg' must be"),
        ("A256KW", "A256GCM", lambda: OctKey.generate_key(256), "'alg' must be"),
        ("PBES2-HS512+A256KW", "A256GCM", lambda: OctKey.import_key("correct horse"), "'alg' must be"),
    ],
)
def test_outer_jwe_algorithm_outside_the_profile(
    sender: Authority, recipient: Authority, payload: MessagePayload, alg: str, enc: str, make_key: Any, match: str
) -> None:
    key = make_key() if make_key else recipient.encryption_public
    header = jwe_header(payload, recipient.encryption, alg=alg, enc=enc)
    sealed = jwe.encrypt_compact(header, sign_payload(payload, sender.signing), key, registry=PERMISSIVE_JWE)
    with pytest.raises(ProfileViolation, match=match):
        open_as(recipient, sealed, sender)
    with pytest.raises(ProfileViolation, match=match):
        read_routing_header(sealed)


def test_outer_jwe_alg_none(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    header = b64(json.dumps(jwe_header(payload, recipient.encryption, alg="none")).encode())
    signed = sign_payload(payload, sender.signing)
    with pytest.raises(ProfileViolation, match="alg 'none' is refused"):
        open_as(recipient, f"{header}..{b64(os.urandom(12))}.{b64(signed.encode())}.", sender)


# -- members ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "value"),
    [
        ("jku", "https://attacker.example/keys.json"),
        ("jwk", {"kty": "OKP", "crv": "X25519", "x": "AAAA"}),
        ("x5u", "https://attacker.example/cert.pem"),
        ("apu", "QWxpY2U"),
        ("apv", "Qm9i"),
        ("skid", "abc"),
        ("b64", False),
        ("iat", 1795851600),
        ("in_reply_to", None),
        ("note", "unregistered"),
    ],
)
def test_outer_header_member_outside_the_profile(
    sender: Authority, recipient: Authority, payload: MessagePayload, extra: str, value: Any
) -> None:
    header = jwe_header(payload, recipient.encryption) | {extra: value}
    sealed = craft_jwe(header, sign_payload(payload, sender.signing).encode(), recipient.encryption_public)
    with pytest.raises(ProfileViolation, match=f"members outside the profile: '{extra}'"):
        open_as(recipient, sealed, sender)


@pytest.mark.parametrize("missing", ["kid", "typ", "cty", "id", "from", "to", "kind", "marking"])
def test_outer_header_member_missing(
    sender: Authority, recipient: Authority, payload: MessagePayload, missing: str
) -> None:
    header = jwe_header(payload, recipient.encryption, **{missing: None})
    sealed = craft_jwe(header, sign_payload(payload, sender.signing).encode(), recipient.encryption_public)
    with pytest.raises(ProfileViolation, match=f"missing members: {missing}"):
        open_as(recipient, sealed, sender)


@pytest.mark.parametrize(
    ("member", "value", "match"),
    [
        ("typ", "JWT", "'typ' must be 'comity-envelope\\+jwe'"),
        ("cty", "JWT", "'cty' must be 'comity-message\\+jws'"),
        ("kid", "short", "'kid' must be an RFC 7638"),
        ("id", "not-a-uuid", "'id' message id must be"),
        ("from", "Attacker", "'from' authority id"),
        ("kind", "invoice", "'kind' must be a message kind"),
        ("marking", {"level": "CONFIDENTIAL"}, "'marking' must be an object with exactly"),
        ("marking", {"level": "CONFIDENTIAL", "caveats": ["b", "a"]}, "'marking' Marking: caveats"),
        ("marking", {"level": 3, "caveats": []}, "'marking' Marking: level"),
        ("epk", {"crv": "X25519", "kty": "OKP", "x": "AAAA"}, "'epk' x must be 32 bytes"),
        ("epk", {"crv": "Ed25519", "kty": "OKP", "x": b64(bytes(32))}, "'epk' must be an X25519"),
        ("epk", {"crv": "X25519", "kty": "OKP", "x": b64(bytes(32)), "d": b64(bytes(32))}, "'epk' must be a public"),
        ("epk", {"crv": "X25519", "kty": "OKP", "x": b64(bytes(32)), "kid": "k"}, "'epk' must be a public"),
    ],
)
def test_outer_header_member_value_outside_the_profile(
    sender: Authority, recipient: Authority, payload: MessagePayload, member: str, value: Any, match: str
) -> None:
    header = jwe_header(payload, recipient.encryption, **{member: value})
    sealed = craft_jwe(header, sign_payload(payload, sender.signing).encode(), recipient.encryption_public)
    with pytest.raises(ProfileViolation, match=match):
        open_as(recipient, sealed, sender)


@pytest.mark.parametrize("extra", ["jku", "x5c", "cty", "b64", "crit", "zip", "note"])
def test_inner_header_member_outside_the_profile(
    sender: Authority, recipient: Authority, payload: MessagePayload, extra: str
) -> None:
    value: Any = {"b64": False, "crit": ["b64"], "x5c": ["AAAA"]}.get(extra, "x")
    signed = craft_jws(jws_header(sender.signing) | {extra: value}, payload.to_bytes(), sender.signing)
    sealed = encrypt_signed(signed, payload, recipient.encryption_public)
    with pytest.raises(ProfileViolation, match=f"signed message header: .*'{extra}'"):
        open_as(recipient, sealed, sender)


def test_inner_header_typ_and_missing_kid(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    for header, match in [
        (jws_header(sender.signing, typ="JWT"), "'typ' must be 'comity-message\\+jws'"),
        (jws_header(sender.signing, kid=None), "missing members: kid"),
    ]:
        signed = craft_jws(header, payload.to_bytes(), sender.signing)
        with pytest.raises(ProfileViolation, match=match):
            open_as(recipient, encrypt_signed(signed, payload, recipient.encryption_public), sender)


def test_duplicate_member_in_outer_header(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    # Two parsers that keep different duplicates would route on one value and decrypt under the other.
    header = json.dumps(jwe_header(payload, recipient.encryption), separators=(",", ":"))
    text = header[:-1] + ',"to":"fr.mj","epk":<EPK>}'
    sealed = craft_jwe(text, sign_payload(payload, sender.signing).encode(), recipient.encryption_public)
    with pytest.raises(ProfileViolation, match="duplicate member 'to'"):
        open_as(recipient, sealed, sender)


def test_duplicate_member_in_epk(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    header = json.dumps(jwe_header(payload, recipient.encryption), separators=(",", ":"))
    text = header[:-1] + ',"epk":{<EPK_MEMBERS>,"crv":"X448"}}'
    sealed = craft_jwe(text, sign_payload(payload, sender.signing).encode(), recipient.encryption_public)
    with pytest.raises(ProfileViolation, match="duplicate member 'crv'"):
        open_as(recipient, sealed, sender)


def test_duplicate_member_in_inner_header(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    text = '{"alg":"none","alg":"Ed25519","kid":"' + sender.signing.thumbprint() + '","typ":"comity-message+jws"}'
    signed = craft_jws(text, payload.to_bytes(), sender.signing)
    with pytest.raises(ProfileViolation, match="duplicate member 'alg'"):
        open_as(recipient, encrypt_signed(signed, payload, recipient.encryption_public), sender)


def test_zip(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    header = jwe_header(payload, recipient.encryption, zip="DEF")
    sealed = jwe.encrypt_compact(
        header, sign_payload(payload, sender.signing), recipient.encryption_public, registry=PERMISSIVE_JWE
    )
    with pytest.raises(ProfileViolation, match="compression \\('zip'\\) is refused"):
        open_as(recipient, sealed, sender)


def test_crit(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    header = jwe_header(payload, recipient.encryption, crit=["kind"])
    sealed = craft_jwe(header, sign_payload(payload, sender.signing).encode(), recipient.encryption_public)
    with pytest.raises(ProfileViolation, match="'crit' is refused"):
        open_as(recipient, sealed, sender)


# -- serialisation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["flattened", "general"])
def test_json_serialisation_with_unprotected_members(
    sender: Authority, recipient: Authority, payload: MessagePayload, form: str
) -> None:
    protected = jwe_header(payload, recipient.encryption)
    routing = {k: protected.pop(k) for k in ("id", "from", "to", "kind", "marking")}
    obj: jwe.FlattenedJSONEncryption | jwe.GeneralJSONEncryption
    if form == "flattened":
        obj = jwe.FlattenedJSONEncryption(protected, sign_payload(payload, sender.signing).encode(), routing)
    else:
        obj = jwe.GeneralJSONEncryption(protected, sign_payload(payload, sender.signing).encode(), routing)
    obj.add_recipient(None, recipient.encryption_public)
    serialised = json.dumps(jwe.encrypt_json(obj, None, registry=PERMISSIVE_JWE))
    assert '"unprotected"' in serialised
    with pytest.raises(ProfileViolation, match="JSON serialisation"):
        open_as(recipient, serialised, sender)
    with pytest.raises(ProfileViolation, match="JSON serialisation"):
        open_as(recipient, "\n " + serialised, sender)


def test_oversized_body_is_refused_before_parsing(sender: Authority, recipient: Authority) -> None:
    with pytest.raises(OversizedEnvelope, match="larger than the limit of 4194304 bytes"):
        open_as(recipient, b"{" * (4 * 1024 * 1024 + 1), sender)
    with pytest.raises(OversizedEnvelope, match="limit of 100 bytes"):
        open_as(recipient, "é" * 60, sender, max_bytes=100)  # 60 characters, 120 bytes


def test_non_ascii_text(sender: Authority, recipient: Authority) -> None:
    with pytest.raises(ProfileViolation, match="protected header is not unpadded base64url"):
        open_as(recipient, "eyJ\u00e9.a.b.c.d", sender)
    with pytest.raises(ProfileViolation, match="protected header is not unpadded base64url"):
        open_as(recipient, "eyJ\ud800.a.b.c.d", sender)


def _sealed(sender: Authority, recipient: Authority, payload: MessagePayload) -> str:
    return seal_envelope(payload, sender.signing, recipient.encryption_public).compact


@pytest.mark.parametrize(
    ("cut", "error", "match"),
    [
        (lambda s: s[: s.rindex(".")], ProfileViolation, "5 dot-separated parts"),
        (lambda s: s[: len(s) // 2], ProfileViolation, "5 dot-separated parts"),
        (lambda s: s[:-1], ProfileViolation, "tag is not unpadded base64url"),
        (lambda s: s[:-2], DecryptionFailed, "cannot be decrypted"),
        (lambda s: s[: s.rindex(".") + 1], DecryptionFailed, "cannot be decrypted"),
        (lambda s: "", ProfileViolation, "5 dot-separated parts"),
        (lambda s: s + ".", ProfileViolation, "5 dot-separated parts"),
    ],
)
def test_truncated_compact_string(
    sender: Authority, recipient: Authority, payload: MessagePayload, cut: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        open_as(recipient, cut(_sealed(sender, recipient, payload)), sender)


@pytest.mark.parametrize(
    ("part", "change", "match"),
    [
        (0, lambda seg: seg + "=", "protected header is not unpadded base64url"),
        (2, lambda seg: seg.replace(seg[0], "+", 1), "iv is not unpadded base64url"),
        (3, lambda seg: seg + "\n", "ciphertext is not unpadded base64url"),
        (4, lambda seg: seg[:-1] + chr(ord(seg[-1]) + 1), "tag is not canonical base64url"),
    ],
)
def test_base64url_must_be_unpadded_and_canonical(
    sender: Authority, recipient: Authority, payload: MessagePayload, part: int, change: Any, match: str
) -> None:
    parts = _sealed(sender, recipient, payload).split(".")
    if part == 4:  # a 16-byte tag leaves 4 unused bits in the last character; make one of them non-zero
        assert parts[4][-1] in "AQgw"
    parts[part] = change(parts[part])
    with pytest.raises(ProfileViolation, match=match):
        open_as(recipient, ".".join(parts), sender)


_URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=_URL_ALPHABET, max_size=12),
        st.text(alphabet=_URL_ALPHABET + "+/= \n.\x00é", max_size=12),
    ).map(lambda text: text.encode("utf-8"))
)
def test_base64url_decoding_is_the_profile_definition(segment: bytes) -> None:
    """b64url_decode (fast: binascii strict mode, the last group re-encoded) agrees with the definition: only
    base64url characters, no length 1 mod 4, and the one canonical encoding of what it decodes to."""
    if not re.fullmatch(rb"[A-Za-z0-9_-]*", segment) or len(segment) % 4 == 1:
        expected: bytes | str = "not unpadded base64url"
    else:
        decoded = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
        canonical = base64.urlsafe_b64encode(decoded).rstrip(b"=") == segment
        expected = decoded if canonical else "not canonical base64url"
    try:
        got: bytes | str = b64url_decode(segment, "segment")
    except ProfileViolation as refused:
        got = str(refused).removeprefix("segment is ")
    assert got == expected


# -- decryption -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("part", [1, 2, 3, 4])
def test_flipped_bit_in_encrypted_key_iv_ciphertext_or_tag(
    sender: Authority, recipient: Authority, payload: MessagePayload, part: int
) -> None:
    parts = _sealed(sender, recipient, payload).split(".")
    raw = bytearray(base64.urlsafe_b64decode(parts[part] + "=" * (-len(parts[part]) % 4)))
    raw[0] ^= 0x80
    parts[part] = b64(bytes(raw))
    with pytest.raises(DecryptionFailed, match="cannot be decrypted"):
        open_as(recipient, ".".join(parts), sender)


def test_routing_header_edited_after_sealing(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    # The header is the AEAD's additional data: an in-profile edit is caught by decryption, before any mismatch.
    parts = _sealed(sender, recipient, payload).split(".")
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    parts[0] = b64(json.dumps(header | {"kind": "withdrawal"}, separators=(",", ":")).encode())
    assert read_routing_header(".".join(parts)).kind == "withdrawal"
    with pytest.raises(DecryptionFailed, match="cannot be decrypted"):
        open_as(recipient, ".".join(parts), sender)


def test_low_order_ephemeral_key(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    header = jwe_header(payload, recipient.encryption) | {"epk": {"crv": "X25519", "kty": "OKP", "x": b64(bytes(32))}}
    parts = craft_jwe(header, b"x", recipient.encryption_public).split(".")
    with pytest.raises(DecryptionFailed, match="cannot be decrypted"):
        open_as(recipient, ".".join(parts), sender)


def test_checks_run_in_order(sender: Authority, recipient: Authority, payload: MessagePayload) -> None:
    parts = _sealed(sender, recipient, payload).split(".")
    parts[3] = b64(b"garbage")
    broken = ".".join(parts)
    with pytest.raises(OversizedEnvelope):
        open_as(recipient, broken, sender, max_bytes=10)
    with pytest.raises(WrongRecipient):
        open_as(recipient, broken, sender, expected_recipient="fr.mj")
    with pytest.raises(WrongRecipient):
        open_as(recipient, broken, sender, recipient_keys={})
    with pytest.raises(DecryptionFailed):
        open_as(recipient, broken, sender, sender_keys={})


# -- the inner layer --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plaintext", "match"),
    [
        (b"hello", "3 dot-separated parts"),
        (b'{"payload":"e30","signatures":[]}', "JSON serialisation"),
        (b"a.b.c.d.e", "3 dot-separated parts"),
        ("é.b.c".encode(), "not unpadded base64url"),
        (b"\xff\xfe", "3 dot-separated parts"),
    ],
)
def test_inner_layer_is_not_a_compact_jws(
    sender: Authority, recipient: Authority, payload: MessagePayload, plaintext: bytes, match: str
) -> None:
    sealed = craft_jwe(jwe_header(payload, recipient.encryption), plaintext, recipient.encryption_public)
    with pytest.raises(ProfileViolation, match=match):
        open_as(recipient, sealed, sender)


@pytest.mark.parametrize(
    ("render", "match"),
    [
        (lambda p: json.dumps(p.to_json(), indent=1).encode(), "not RFC 8785 canonical"),
        (lambda p: json.dumps(p.to_json(), sort_keys=True, separators=(",", ":")).encode(), "not RFC 8785"),
        (lambda p: p.to_bytes()[:-1] + b',"to":"fr.mj"}', "duplicate member 'to'"),
        (lambda p: p.to_bytes()[:-1] + b',"extra":1}', r"\(member\): Extra inputs"),
        (lambda p: b"[]", "MessagePayload"),
    ],
)
def test_signed_payload_that_is_not_a_canonical_message(
    sender: Authority, recipient: Authority, payload: MessagePayload, render: Any, match: str
) -> None:
    data = render(payload)
    assert data != payload.to_bytes()
    signed = craft_jws(jws_header(sender.signing), data, sender.signing)
    sealed = craft_jwe(jwe_header(payload, recipient.encryption), signed.encode(), recipient.encryption_public)
    with pytest.raises(InvalidMessage, match=match):
        open_as(recipient, sealed, sender)


def test_opener_does_not_accept_wrong_key_types_as_recipient_keys(
    sender: Authority, recipient: Authority, payload: MessagePayload
) -> None:
    sealed = _sealed(sender, recipient, payload)
    with pytest.raises(DecryptionFailed):
        open_as(recipient, sealed, sender, recipient_keys={recipient.encryption.thumbprint(): recipient.signing})


def test_open_envelope_requires_keywords() -> None:
    with pytest.raises(TypeError):
        open_envelope("a.b.c.d.e", {}, {}, "es.mj")  # type: ignore[call-arg]
