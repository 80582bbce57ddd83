"""crypto/keys.py: JWKs with RFC 7638 kids, the pinned use/curve profile, and the sealed key file."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import OKPKey

from crypto.errors import KeyStoreError, ProfileViolation
from crypto.keys import (
    DEFAULT_KDF,
    AuthorityKeys,
    Decrypting,
    KdfParams,
    generate_authority_keys,
    generate_encryption_key,
    generate_signing_key,
    import_public_jwk,
    key_id,
    public_jwk,
    seal_keys,
    sealed_kdf_params,
    tls_key_password,
    tls_key_passwords,
    unseal_keys,
)

CHEAP = KdfParams(time_cost=1, memory_kib=1024, parallelism=1)
PASSPHRASE = b"correct horse battery staple"

# RFC 8037 appendix A.1 (Ed25519 private key) and A.3 (its RFC 7638 thumbprint).
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_thumbprint(crv: str, x: str) -> str:
    """RFC 7638 computed by hand: the required members in lexicographic order, no whitespace."""
    text = '{"crv":"' + crv + '","kty":"OKP","x":"' + x + '"}'
    return b64e(hashlib.sha256(text.encode()).digest())


def private_d(key: OKPKey) -> str:
    d = key.as_dict(private=True)["d"]
    assert isinstance(d, str)
    return d


@pytest.fixture(scope="module")
def authority() -> AuthorityKeys:
    return generate_authority_keys()


@pytest.fixture(scope="module")
def sealed(authority: AuthorityKeys) -> bytes:
    return authority.seal(PASSPHRASE, CHEAP)


# --- kid and public JWKs ---------------------------------------------------------------------------------------------


def test_rfc8037_thumbprint() -> None:
    assert hand_thumbprint("Ed25519", RFC8037_X) == RFC8037_THUMBPRINT
    key = OKPKey.import_key(Ed25519PrivateKey.from_private_bytes(b64d(RFC8037_D)))
    assert public_jwk(key)["x"] == RFC8037_X
    assert key_id(key) == RFC8037_THUMBPRINT
    imported = import_public_jwk({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}, use="sig")
    assert imported.kid == RFC8037_THUMBPRINT


@pytest.mark.parametrize("key", [generate_signing_key(), generate_encryption_key()], ids=["Ed25519", "X25519"])
def test_kid_is_the_rfc7638_thumbprint(key: OKPKey) -> None:
    jwk = public_jwk(key)
    assert jwk["kid"] == key_id(key) == hand_thumbprint(jwk["crv"], jwk["x"]) == key.kid
    assert len(b64d(jwk["x"])) == 32


def test_public_jwk_members(authority: AuthorityKeys) -> None:
    assert public_jwk(authority.signing) == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": public_jwk(authority.signing)["x"],
        "kid": key_id(authority.signing),
        "use": "sig",
        "alg": "Ed25519",
    }
    enc = public_jwk(authority.encryption)
    assert (enc["crv"], enc["use"], enc["alg"]) == ("X25519", "enc", "ECDH-ES+A256KW")
    assert "d" not in enc
    assert private_d(authority.encryption) not in json.dumps(enc)


def test_public_jwk_round_trip(authority: AuthorityKeys) -> None:
    for key, use in ((authority.signing, "sig"), (authority.encryption, "enc")):
        imported = import_public_jwk(public_jwk(key), use=use)  # type: ignore[arg-type]
        assert not imported.is_private
        assert public_jwk(imported) == public_jwk(key)
        assert imported.kid == key_id(key)


def test_minimal_public_jwk_is_accepted(authority: AuthorityKeys) -> None:
    jwk = {k: v for k, v in public_jwk(authority.encryption).items() if k in {"kty", "crv", "x"}}
    assert public_jwk(import_public_jwk(jwk, use="enc")) == public_jwk(authority.encryption)


def _refused(jwk: dict[str, Any], use: str, match: str) -> None:
    with pytest.raises(ProfileViolation, match=match):
        import_public_jwk(jwk, use=use)  # type: ignore[arg-type]


def test_import_refuses_private_member(authority: AuthorityKeys) -> None:
    jwk: dict[str, Any] = {**public_jwk(authority.signing), "d": private_d(authority.signing)}
    with pytest.raises(ProfileViolation, match="private member") as info:
        import_public_jwk(jwk, use="sig")
    assert private_d(authority.signing) not in str(info.value)


def test_import_refuses_wrong_curve_for_use(authority: AuthorityKeys) -> None:
    _refused(public_jwk(authority.signing), "enc", "must be X25519")
    _refused(public_jwk(authority.encryption), "sig", "must be Ed25519")
    # a signing curve relabelled as an encryption key is refused too
    _refused({**public_jwk(authority.signing), "use": "enc"}, "sig", "use must be 'sig'")


def test_import_refuses_kid_mismatch(authority: AuthorityKeys) -> None:
    other = key_id(generate_signing_key())
    _refused({**public_jwk(authority.signing), "kid": other}, "sig", "thumbprint")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"kty": "EC"}, "kty"),
        ({"crv": "Ed448"}, "crv"),
        ({"crv": ["Ed25519"]}, "crv"),
        ({"alg": "EdDSA"}, "alg"),
        ({"x5c": "MIIB"}, "outside the profile"),
        ({"key_ops": ["sign"]}, "outside the profile"),
        ({"x": "AAAA"}, "32 bytes"),
        ({"x": 12}, "32 bytes"),
    ],
)
def test_import_refuses_profile_violations(authority: AuthorityKeys, change: dict[str, Any], match: str) -> None:
    _refused({**public_jwk(authority.signing), **change}, "sig", match)


def test_import_refuses_non_canonical_x(authority: AuthorityKeys) -> None:
    jwk = public_jwk(authority.signing)
    _refused({**jwk, "x": jwk["x"] + "="}, "sig", "base64url")


@given(st.dictionaries(st.sampled_from(["kty", "crv", "x", "kid", "use", "alg", "d", "n"]), st.text(max_size=50)))
@settings(max_examples=200)
def test_import_garbage_gives_a_clean_error(jwk: dict[str, Any]) -> None:
    with contextlib.suppress(ProfileViolation):
        import_public_jwk(jwk, use="sig")


# --- sealed key files ------------------------------------------------------------------------------------------------


def test_seal_round_trip(authority: AuthorityKeys, sealed: bytes) -> None:
    opened = AuthorityKeys.unseal(sealed, PASSPHRASE)
    assert opened == authority
    for name in ("signing", "encryption", "archive"):
        assert private_d(getattr(opened, name)) == private_d(getattr(authority, name))
        assert getattr(opened, name).kid == key_id(getattr(authority, name))


def test_sealed_format(sealed: bytes) -> None:
    doc = json.loads(sealed)
    assert set(doc) == {"format", "kdf", "aead", "nonce", "ciphertext"}
    assert doc["format"] == "comity-keys/1"
    assert doc["aead"] == "xchacha20poly1305-ietf"
    assert doc["kdf"]["alg"] == "argon2id"
    assert (doc["kdf"]["t"], doc["kdf"]["m"], doc["kdf"]["p"]) == (1, 1024, 1)
    assert len(b64d(doc["nonce"])) == 24
    assert len(b64d(doc["kdf"]["salt"])) == 16


def test_default_kdf_is_written(authority: AuthorityKeys) -> None:
    doc = json.loads(authority.seal(PASSPHRASE))
    assert (doc["kdf"]["t"], doc["kdf"]["m"], doc["kdf"]["p"]) == (3, 65536, 1)
    assert KdfParams(time_cost=3, memory_kib=65536, parallelism=1) == DEFAULT_KDF


def test_private_keys_never_appear_in_sealed_bytes(authority: AuthorityKeys, sealed: bytes) -> None:
    for name in ("signing", "encryption", "archive"):
        d = private_d(getattr(authority, name))
        assert d.encode() not in sealed
        assert b64d(d) not in sealed
    assert PASSPHRASE not in sealed


def test_sealing_is_randomised(authority: AuthorityKeys, sealed: bytes) -> None:
    again = authority.seal(PASSPHRASE, CHEAP)
    assert json.loads(again)["nonce"] != json.loads(sealed)["nonce"]
    assert json.loads(again)["kdf"]["salt"] != json.loads(sealed)["kdf"]["salt"]


def test_fixed_salt_and_nonce_are_deterministic(authority: AuthorityKeys) -> None:
    keys = {"signing": authority.signing}
    one = seal_keys(keys, PASSPHRASE, CHEAP, salt=bytes(16), nonce=bytes(24))
    assert one == seal_keys(keys, PASSPHRASE, CHEAP, salt=bytes(16), nonce=bytes(24))
    assert unseal_keys(one, PASSPHRASE) == keys


def _assert_unseal_fails(data: bytes, authority: AuthorityKeys, passphrase: bytes = PASSPHRASE) -> None:
    with pytest.raises(KeyStoreError, match="wrong passphrase or corrupt key file") as info:
        unseal_keys(data, passphrase)
    text = f"{info.value} {info.value!r}"
    for name in ("signing", "encryption", "archive"):
        assert private_d(getattr(authority, name)) not in text
    assert PASSPHRASE.decode() not in text


def test_wrong_passphrase(authority: AuthorityKeys, sealed: bytes) -> None:
    _assert_unseal_fails(sealed, authority, b"wrong horse battery staple")
    _assert_unseal_fails(sealed, authority, b"")


def _tampered(sealed: bytes, path: tuple[str, ...], value: Any) -> bytes:
    doc = json.loads(sealed)
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("kdf", "t"), 2),  # in range, but not what was sealed: the header is associated data
        (("kdf", "m"), 2048),
        (("kdf", "p"), 2),
        (("kdf", "salt"), b64e(bytes(16))),
        (("kdf", "t"), 21),  # absurd: refused before any work
        (("kdf", "m"), 4 * 1024 * 1024 + 1),
        (("kdf", "m"), 512),  # too weak
        (("kdf", "t"), True),
        (("kdf", "alg"), "argon2i"),
        (("aead",), "chacha20poly1305-ietf"),
        (("format",), "comity-keys/2"),
        (("nonce",), b64e(bytes(24))),
        (("nonce",), b64e(bytes(12))),
        (("ciphertext",), "AAAA"),
        (("ciphertext",), "not base64!"),
        (("extra",), 1),
    ],
)
def test_tampered_header_is_refused(authority: AuthorityKeys, sealed: bytes, path: tuple[str, ...], value: Any) -> None:
    _assert_unseal_fails(_tampered(sealed, path, value), authority)


def test_flipped_ciphertext_byte_is_refused(authority: AuthorityKeys, sealed: bytes) -> None:
    doc = json.loads(sealed)
    raw = bytearray(b64d(doc["ciphertext"]))
    for index in (0, len(raw) // 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[index] ^= 0x01
        _assert_unseal_fails(_tampered(sealed, ("ciphertext",), b64e(bytes(flipped))), authority)


@pytest.mark.parametrize("data", [b"", b"{}", b"[]", b"\xff", b'{"format":"comity-keys/1","format":"x"}', b"null"])
def test_garbage_is_refused(authority: AuthorityKeys, data: bytes) -> None:
    _assert_unseal_fails(data, authority)


def test_authenticated_but_malformed_contents_are_refused(authority: AuthorityKeys) -> None:
    # A file sealed correctly whose plaintext is not a key map (written by hand, not by seal_keys).
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

    from crypto import keys as module
    from protocol.messages import canonical_json

    salt, nonce = bytes(16), bytes(24)
    header = module._header(CHEAP, salt)
    key = module._derive(PASSPHRASE, salt, CHEAP)
    jwk = {**public_jwk(authority.signing), "d": private_d(authority.encryption)}  # d does not match x
    for plaintext in (b"[]", json.dumps({"signing": jwk}).encode()):
        ciphertext = crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, canonical_json(header), nonce, key)
        data = json.dumps({**header, "nonce": b64e(nonce), "ciphertext": b64e(ciphertext)}).encode()
        _assert_unseal_fails(data, authority)


def test_seal_refuses_weak_or_absurd_parameters(authority: AuthorityKeys) -> None:
    for params in (KdfParams(1, 512, 1), KdfParams(21, 1024, 1), KdfParams(1, 1024, 0)):
        with pytest.raises(KeyStoreError, match="out of range"):
            authority.seal(PASSPHRASE, params)
    with pytest.raises(KeyStoreError, match="empty passphrase"):
        authority.seal(b"", CHEAP)


def test_seal_refuses_public_keys(authority: AuthorityKeys) -> None:
    public = import_public_jwk(public_jwk(authority.signing), use="sig")
    with pytest.raises(KeyStoreError, match="private"):
        seal_keys({"signing": public}, PASSPHRASE, CHEAP)


def test_unseal_of_a_file_without_authority_keys(authority: AuthorityKeys) -> None:
    data = seal_keys({"directory": authority.signing}, PASSPHRASE, CHEAP)
    assert set(unseal_keys(data, PASSPHRASE)) == {"directory"}
    with pytest.raises(KeyStoreError, match="signing, encryption, archive"):
        AuthorityKeys.unseal(data, PASSPHRASE)


def test_authority_keys_check_curves(authority: AuthorityKeys) -> None:
    with pytest.raises(KeyStoreError, match="signing key must be a private Ed25519"):
        AuthorityKeys(signing=authority.encryption, encryption=authority.encryption, archive=authority.archive)
    public = import_public_jwk(public_jwk(authority.encryption), use="enc")
    with pytest.raises(KeyStoreError, match="encryption key must be a private X25519"):
        AuthorityKeys(signing=authority.signing, encryption=public, archive=authority.archive)


def test_repr_shows_kids_only(authority: AuthorityKeys) -> None:
    text = repr(authority)
    assert key_id(authority.signing) in text
    for name in ("signing", "encryption", "archive"):
        assert private_d(getattr(authority, name)) not in text


def test_rfc8037_private_key_survives_sealing() -> None:
    key = OKPKey.import_key(Ed25519PrivateKey.from_private_bytes(b64d(RFC8037_D)))
    opened = unseal_keys(seal_keys({"k": key}, PASSPHRASE, CHEAP), PASSPHRASE)["k"]
    raw = opened.private_key
    assert isinstance(raw, Ed25519PrivateKey)
    assert b64e(raw.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())) == RFC8037_D
    assert opened.kid == RFC8037_THUMBPRINT


# --- rotation -------------------------------------------------------------------------------------------------------


def test_a_rotated_key_set_keeps_the_retired_keys_through_sealing(authority: AuthorityKeys) -> None:
    once = authority.rotated("encryption")
    twice = once.rotated("encryption").rotated("archive")
    assert once.signing is authority.signing and once.archive is authority.archive
    assert key_id(once.encryption) != key_id(authority.encryption)
    assert set(twice.decryption_keys("encryption")) == {
        key_id(authority.encryption),
        key_id(once.encryption),
        key_id(twice.encryption),
    }
    assert set(twice.decryption_keys("archive")) == {key_id(authority.archive), key_id(twice.archive)}
    data = twice.seal(PASSPHRASE, CHEAP)
    assert sealed_kdf_params(data) == CHEAP
    back = AuthorityKeys.unseal(data, PASSPHRASE)
    roles: tuple[Decrypting, ...] = ("encryption", "archive")
    for role in roles:
        assert {kid: private_d(key) for kid, key in back.decryption_keys(role).items()} == {
            kid: private_d(key) for kid, key in twice.decryption_keys(role).items()
        }
    assert key_id(back.encryption) == key_id(twice.encryption) and key_id(back.archive) == key_id(twice.archive)
    assert "retired=3" in repr(back) and private_d(twice.encryption) not in repr(back)


def test_a_rotated_signing_key_is_kept_newest_first_and_the_tls_password_follows_it(authority: AuthorityKeys) -> None:
    twice = authority.rotated("signing").rotated("signing")
    assert twice.encryption is authority.encryption and twice.archive is authority.archive
    kids = list(twice.signing_keys())
    assert len(set(kids)) == 3 and kids[0] == key_id(twice.signing) and key_id(authority.signing) in kids
    back = AuthorityKeys.unseal(twice.seal(PASSPHRASE, CHEAP), PASSPHRASE)
    assert {kid: private_d(key) for kid, key in back.signing_keys().items()} == {
        kid: private_d(key) for kid, key in twice.signing_keys().items()
    }
    assert next(iter(back.signing_keys())) == key_id(twice.signing)
    passwords = tls_key_passwords(back)
    assert passwords[0] == tls_key_password(back) and tls_key_password(authority) in passwords[1:]
    assert "retired=2" in repr(back)
    with pytest.raises(KeyStoreError, match="signing key appears twice"):
        AuthorityKeys(authority.signing, authority.encryption, authority.archive, retired_signing=(authority.signing,))


def test_a_key_file_with_a_foreign_or_mislabelled_key_is_refused(authority: AuthorityKeys) -> None:
    stranger = generate_encryption_key()
    named = {"signing": authority.signing, "encryption": authority.encryption, "archive": authority.archive}
    for extra in (
        {"backup": stranger},  # not a retired key's name
        {f"retired-encryption-{key_id(authority.archive)}": stranger},  # the kid in the name is not its own
        {f"retired-verifying-{key_id(stranger)}": stranger},  # no such role
    ):
        with pytest.raises(KeyStoreError, match="neither current nor a retired one"):
            AuthorityKeys.unseal(seal_keys({**named, **extra}, PASSPHRASE, CHEAP), PASSPHRASE)
    mislabelled = {**named, f"retired-signing-{key_id(stranger)}": stranger}  # an X25519 key as a signing key
    with pytest.raises(KeyStoreError, match="retired signing key must be a private Ed25519"):
        AuthorityKeys.unseal(seal_keys(mislabelled, PASSPHRASE, CHEAP), PASSPHRASE)
    with pytest.raises(KeyStoreError, match="appears twice"):
        AuthorityKeys(authority.signing, authority.encryption, authority.archive, (authority.encryption,))
    with pytest.raises(KeyStoreError, match="retired encryption key must be a private X25519"):
        AuthorityKeys(authority.signing, authority.encryption, authority.archive, (authority.signing,))


# Small-order Ed25519 points (RFC 8032 encodings): the identity, the point of order 2 and the two of order 4, and
# the identity and order-4 point encoded with y + p (not canonical). Any of them verifies the all-zero "signature"
# R = identity, s = 0 over every message with OpenSSL.
_ED25519_SMALL_ORDER = [
    "01" + "00" * 31,  # identity (0, 1)
    "ec" + "ff" * 30 + "7f",  # (0, -1), order 2
    "00" * 32,  # (sqrt(-1), 0), order 4
    "00" * 31 + "80",  # (-sqrt(-1), 0), order 4
    "ee" + "ff" * 30 + "7f",  # y = p + 1: the identity, not canonical
    "ed" + "ff" * 30 + "7f",  # y = p: (sqrt(-1), 0), not canonical
]
# Low-order X25519 u-coordinates: 0 and 1 (orders 4 and 1 on the curve or its twist); u = p, p + 1 are the same,
# not canonical, and refused as such first (decision 143)
_X25519_LOW_ORDER = ["00" * 32, "01" + "00" * 31]


@pytest.mark.parametrize("point", _ED25519_SMALL_ORDER)
def test_import_refuses_small_order_signing_keys(point: str) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = bytes.fromhex(point)
    if point == "01" + "00" * 31:  # the reason: OpenSSL takes the empty forgery under the identity
        Ed25519PublicKey.from_public_bytes(raw).verify(b"\x01" + b"\x00" * 63, b"any message at all")
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    _refused({"kty": "OKP", "crv": "Ed25519", "x": x}, "sig", "not a valid Ed25519 public key")


@pytest.mark.parametrize("point", _X25519_LOW_ORDER)
def test_import_refuses_low_order_encryption_keys(point: str) -> None:
    x = base64.urlsafe_b64encode(bytes.fromhex(point)).rstrip(b"=").decode()
    _refused({"kty": "OKP", "crv": "X25519", "x": x}, "enc", "low-order X25519")


@pytest.mark.parametrize("point", ["ed" + "ff" * 30 + "7f", "ee" + "ff" * 30 + "7f", "honest key, bit 255 set"])
def test_import_refuses_a_second_spelling_of_an_encryption_key(point: str) -> None:
    """RFC 7748 ignores bit 255 and reduces modulo p: such bytes name another key under another kid, which let a
    directory list one authority's encryption key under a second authority (decision 143)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    if point.startswith("honest"):
        raw = bytearray(X25519PrivateKey.generate().public_key().public_bytes_raw())
        canonical = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
        assert import_public_jwk({"kty": "OKP", "crv": "X25519", "x": canonical}, use="enc") is not None
        raw[31] |= 0x80
        data = bytes(raw)
    else:
        data = bytes.fromhex(point)
    x = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    _refused({"kty": "OKP", "crv": "X25519", "x": x}, "enc", "not the canonical encoding")


def test_honest_keys_pass_the_point_checks() -> None:
    for _ in range(50):
        keys = generate_authority_keys()
        import_public_jwk(public_jwk(keys.signing), use="sig")
        import_public_jwk(public_jwk(keys.encryption), use="enc")
