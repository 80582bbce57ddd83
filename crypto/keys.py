"""Authority keys: Ed25519 / X25519 as joserfc ``OKPKey``, RFC 7638 ``kid``, private keys sealed at rest.

Every key this module hands out carries ``kid`` (the RFC 7638 thumbprint), ``use`` and ``alg`` as the pinned
profile fixes them: Ed25519 keys sign (``use`` ``sig``, ``alg`` ``Ed25519``, RFC 9864), X25519 keys receive
(``use`` ``enc``, ``alg`` ``ECDH-ES+A256KW``), so joserfc itself refuses a key used for the other purpose.

Sealed key file (``comity-keys/1``), a JSON document::

    {"format": "comity-keys/1",
     "kdf": {"alg": "argon2id", "t": 3, "m": 65536, "p": 1, "salt": "<b64url>"},
     "aead": "xchacha20poly1305-ietf",
     "nonce": "<b64url, 24 bytes>",
     "ciphertext": "<b64url>"}

The AEAD key is argon2id(passphrase, salt, t, m, p), 32 bytes. The plaintext is the RFC 8785 canonical JSON of
``{name: private JWK}``. The associated data is the canonical JSON of ``{"format", "kdf", "aead"}``, so changing a
KDF parameter or the salt makes authentication fail rather than silently weakening the file. The CLI writes
``DEFAULT_KDF`` unless given the hidden ``--kdf-fast`` flag (``comity init``, ``comity directory keygen``: tests and
the benchmark), which writes cheaper parameters; ``unseal_keys`` accepts those (down to 1 MiB) so that tests stay fast,
and a gateway that starts on such a file logs ``keys_sealed_with_weak_kdf`` (``KdfParams.weaker_than``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from joserfc.jwk import OKPKey
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_core_ed25519_is_valid_point,
)

from crypto.errors import KeyStoreError, ProfileViolation
from protocol.errors import InvalidMessage
from protocol.messages import canonical_json, parse_strict_json

__all__ = [
    "DEFAULT_KDF",
    "KEYS_FORMAT",
    "AuthorityKeys",
    "KdfParams",
    "generate_authority_keys",
    "generate_encryption_key",
    "generate_signing_key",
    "import_public_jwk",
    "key_id",
    "public_jwk",
    "sealed_kdf_params",
    "tls_key_password",
    "tls_key_passwords",
    "seal_keys",
    "unseal_keys",
]

KEYS_FORMAT: Final = "comity-keys/1"
_KDF_ALG: Final = "argon2id"
_AEAD: Final = "xchacha20poly1305-ietf"
_SALT_BYTES: Final = 16
_NONCE_BYTES: Final = 24
_KEY_BYTES: Final = 32
_UNSEAL_FAILED: Final = "wrong passphrase or corrupt key file"

# Bounds on argon2id parameters. The upper ones stop a crafted key file from making us burn minutes of CPU or
# gigabytes of memory before the tag check; the lower ones refuse files that offer no real protection.
_MIN_TIME, _MAX_TIME = 1, 20
_MIN_MEMORY_KIB, _MAX_MEMORY_KIB = 1024, 4 * 1024 * 1024
_MIN_PARALLELISM, _MAX_PARALLELISM = 1, 16

# The pinned profile: which curve serves which use, and with which algorithm.
_PROFILE: Final[dict[str, tuple[Literal["sig", "enc"], str]]] = {
    "Ed25519": ("sig", "Ed25519"),
    "X25519": ("enc", "ECDH-ES+A256KW"),
}
_CURVE_FOR_USE: Final[dict[str, str]] = {"sig": "Ed25519", "enc": "X25519"}
_PUBLIC_MEMBERS: Final = frozenset({"kty", "crv", "x", "kid", "use", "alg"})
_PRIVATE_MEMBERS: Final = _PUBLIC_MEMBERS | {"d"}


@dataclass(frozen=True)
class KdfParams:
    """argon2id cost parameters: iterations, memory in KiB, lanes."""

    time_cost: int
    memory_kib: int
    parallelism: int

    def in_bounds(self) -> bool:
        return (
            _MIN_TIME <= self.time_cost <= _MAX_TIME
            and _MIN_MEMORY_KIB <= self.memory_kib <= _MAX_MEMORY_KIB
            and _MIN_PARALLELISM <= self.parallelism <= _MAX_PARALLELISM
        )

    def weaker_than(self, other: KdfParams) -> bool:
        """Whether fewer passes or less memory than ``other`` make a guess cheaper (more lanes cost an attacker
        nothing, fewer save nothing: lanes are not compared)."""
        return self.time_cost < other.time_cost or self.memory_kib < other.memory_kib


DEFAULT_KDF: Final = KdfParams(time_cost=3, memory_kib=65536, parallelism=1)


# --- base64url -------------------------------------------------------------------------------------------------------


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: object) -> bytes:
    """Strict base64url without padding; ValueError on anything else (including a non-canonical encoding)."""
    if not isinstance(text, str) or "=" in text:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not unpadded base64url") from None
    if _b64e(data) != text:
        raise ValueError("not canonical base64url")
    return data


# --- keys and JWKs ---------------------------------------------------------------------------------------------------

_RawPrivate = Ed25519PrivateKey | X25519PrivateKey
_RawPublic = Ed25519PublicKey | X25519PublicKey


def _curve_of(raw: _RawPrivate | _RawPublic) -> str:
    if isinstance(raw, Ed25519PrivateKey | Ed25519PublicKey):
        return "Ed25519"
    if isinstance(raw, X25519PrivateKey | X25519PublicKey):
        return "X25519"
    raise ProfileViolation("only Ed25519 and X25519 keys are in the profile")


@functools.lru_cache(maxsize=256)
def _thumbprint(crv: str, x: str) -> str:
    # RFC 7638 section 3.2: the required members only, sorted, no whitespace; RFC 8785 output is exactly that here.
    return _b64e(hashlib.sha256(canonical_json({"crv": crv, "kty": "OKP", "x": x})).digest())


def _wrap(raw: _RawPrivate | _RawPublic) -> OKPKey:
    """An ``OKPKey`` carrying the profile's ``kid``, ``use`` and ``alg``."""
    crv = _curve_of(raw)
    use, alg = _PROFILE[crv]
    public = raw.public_key() if isinstance(raw, Ed25519PrivateKey | X25519PrivateKey) else raw
    x = _b64e(public.public_bytes(Encoding.Raw, PublicFormat.Raw))
    return OKPKey.import_key(raw, {"kid": _thumbprint(crv, x), "use": use, "alg": alg})


def generate_signing_key() -> OKPKey:
    """A fresh Ed25519 private key (an authority's signing key, or the directory signing key)."""
    return _wrap(Ed25519PrivateKey.generate())


def generate_encryption_key() -> OKPKey:
    """A fresh X25519 private key (an authority's encryption or archive key)."""
    return _wrap(X25519PrivateKey.generate())


def key_id(key: OKPKey) -> str:
    """RFC 7638 thumbprint (base64url of SHA-256) of the public part of ``key``."""
    raw = key.public_key
    if not isinstance(raw, Ed25519PublicKey | X25519PublicKey):
        raise ProfileViolation("only Ed25519 and X25519 keys are in the profile")
    return _thumbprint(_curve_of(raw), _b64e(raw.public_bytes(Encoding.Raw, PublicFormat.Raw)))


def public_jwk(key: OKPKey) -> dict[str, str]:
    """The public JWK of ``key`` as published in the directory: kty, crv, x, kid, use, alg."""
    raw = key.public_key
    if not isinstance(raw, Ed25519PublicKey | X25519PublicKey):
        raise ProfileViolation("only Ed25519 and X25519 keys are in the profile")
    crv = _curve_of(raw)
    use, alg = _PROFILE[crv]
    x = _b64e(raw.public_bytes(Encoding.Raw, PublicFormat.Raw))
    return {"kty": "OKP", "crv": crv, "x": x, "kid": _thumbprint(crv, x), "use": use, "alg": alg}


def _check_jwk_members(jwk: Mapping[str, Any], allowed: frozenset[str]) -> tuple[str, str]:
    """Checks shared by public and private JWKs; returns (crv, x). Messages name members, never values."""
    unknown = sorted(str(name) for name in jwk if name not in allowed)
    if unknown:
        raise ProfileViolation(f"JWK has members outside the profile: {unknown}")
    if jwk.get("kty") != "OKP":
        raise ProfileViolation("JWK kty must be 'OKP'")
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in _PROFILE:
        raise ProfileViolation("JWK crv must be 'Ed25519' or 'X25519'")
    x = jwk.get("x")
    try:
        if len(_b64d(x)) != _KEY_BYTES:
            raise ValueError("wrong length")
    except ValueError:
        raise ProfileViolation("JWK x must be 32 bytes in unpadded base64url") from None
    assert isinstance(x, str)
    use, alg = _PROFILE[crv]
    if "use" in jwk and jwk["use"] != use:
        raise ProfileViolation(f"JWK use must be {use!r} for {crv}")
    if "alg" in jwk and jwk["alg"] != alg:
        raise ProfileViolation(f"JWK alg must be {alg!r} for {crv}")
    if "kid" in jwk and jwk["kid"] != _thumbprint(crv, x):
        raise ProfileViolation("JWK kid is not its RFC 7638 thumbprint")
    return crv, x


def import_public_jwk(jwk: Mapping[str, Any], *, use: Literal["sig", "enc"]) -> OKPKey:
    """Import a published public key for ``use``, refusing anything outside the profile.

    Refused: private members (``d``), members other than kty/crv/x/kid/use/alg, a curve that does not serve
    ``use`` (Ed25519 for "sig", X25519 for "enc"), a ``use`` or ``alg`` other than the profile's, and a ``kid``
    that is not the key's RFC 7638 thumbprint. ``kid``, ``use`` and ``alg`` may be absent; the returned key
    always carries them.
    """
    if not isinstance(jwk, Mapping):
        raise ProfileViolation("JWK must be a JSON object")
    if "d" in jwk:
        raise ProfileViolation("JWK carries a private member ('d'); publish only public keys")
    crv, x = _check_jwk_members(jwk, _PUBLIC_MEMBERS)
    if crv != _CURVE_FOR_USE[use]:
        raise ProfileViolation(f"a key for use {use!r} must be {_CURVE_FOR_USE[use]}, not {crv}")
    raw: _RawPublic
    data = _b64d(x)
    try:
        raw = (Ed25519PublicKey if crv == "Ed25519" else X25519PublicKey).from_public_bytes(data)
    except ValueError:
        raise ProfileViolation("JWK x is not a valid public key") from None
    if isinstance(raw, Ed25519PublicKey):
        # a small-order point verifies forged signatures (R = identity, s = 0) over any message: a peer publishing
        # one could disown everything "it" signed. libsodium refuses those, non-canonical encodings and points
        # outside the prime-order subgroup, none of which an honest key generator yields.
        if not crypto_core_ed25519_is_valid_point(data):
            raise ProfileViolation("JWK x is not a valid Ed25519 public key (small order, or not canonical)")
    elif data[31] & 0x80 or int.from_bytes(data, "little") >= _X25519_P:
        # RFC 7748 5 ignores bit 255 and reduces modulo p, so such bytes are a second spelling of another key, with
        # another RFC 7638 kid: the directory's one-key-one-authority check would not see the same key twice
        raise ProfileViolation("JWK x is not the canonical encoding of an X25519 public key (bit 255 set, or >= p)")
    elif _agrees_to_nothing(raw):
        raise ProfileViolation("JWK x is a low-order X25519 public key: every shared secret with it is zero")
    return _wrap(raw)


_X25519_P = 2**255 - 19


@functools.cache
def _probe() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def _agrees_to_nothing(public: X25519PublicKey) -> bool:
    """Whether ``public`` is a low-order point: a clamped scalar times such a point is the point at infinity, for
    every private key, and OpenSSL refuses the all-zero result."""
    try:
        _probe().exchange(public)
    except ValueError:
        return True
    return False


def _import_private_jwk(jwk: object) -> OKPKey:
    """A private JWK read from a sealed key file; ValueError / ProfileViolation when it is malformed."""
    if not isinstance(jwk, dict):
        raise ValueError("not an object")
    crv, x = _check_jwk_members(jwk, _PRIVATE_MEMBERS)
    d = _b64d(jwk.get("d"))
    if len(d) != _KEY_BYTES:
        raise ValueError("wrong private key length")
    raw: _RawPrivate
    raw = (Ed25519PrivateKey if crv == "Ed25519" else X25519PrivateKey).from_private_bytes(d)
    key = _wrap(raw)
    if key.get("x") != x:
        raise ValueError("public part does not match the private key")
    return key


def _private_jwk(key: OKPKey) -> dict[str, str]:
    raw = key.private_key
    if not isinstance(raw, Ed25519PrivateKey | X25519PrivateKey):
        raise KeyStoreError("only Ed25519 and X25519 private keys can be sealed")
    jwk = public_jwk(key)
    jwk["d"] = _b64e(raw.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    return jwk


# --- sealing ---------------------------------------------------------------------------------------------------------


def _derive(passphrase: bytes, salt: bytes, params: KdfParams) -> bytes:
    return hash_secret_raw(
        secret=passphrase,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=_KEY_BYTES,
        type=Type.ID,
    )


def _header(params: KdfParams, salt: bytes) -> dict[str, Any]:
    kdf = {"alg": _KDF_ALG, "t": params.time_cost, "m": params.memory_kib, "p": params.parallelism, "salt": _b64e(salt)}
    return {"format": KEYS_FORMAT, "kdf": kdf, "aead": _AEAD}


def seal_keys(
    keys: Mapping[str, OKPKey],
    passphrase: bytes,
    params: KdfParams = DEFAULT_KDF,
    *,
    salt: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt named private keys under ``passphrase`` (a ``comity-keys/1`` document).

    ``salt`` and ``nonce`` are random unless given (known-answer tests only: never reuse a nonce).
    """
    if not isinstance(passphrase, bytes):
        raise TypeError("passphrase must be bytes")
    if not passphrase:
        raise KeyStoreError("refusing to seal keys under an empty passphrase")
    if not params.in_bounds():
        raise KeyStoreError(
            f"KDF parameters out of range: t {_MIN_TIME}..{_MAX_TIME}, m {_MIN_MEMORY_KIB}..{_MAX_MEMORY_KIB} KiB, "
            f"p {_MIN_PARALLELISM}..{_MAX_PARALLELISM}"
        )
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    nonce = secrets.token_bytes(_NONCE_BYTES) if nonce is None else nonce
    if len(salt) < _SALT_BYTES or len(nonce) != _NONCE_BYTES:
        raise ValueError(f"salt must be at least {_SALT_BYTES} bytes and nonce exactly {_NONCE_BYTES}")
    for name in keys:
        if not isinstance(name, str) or not name:
            raise KeyStoreError("key names must be non-empty strings")
    plaintext = canonical_json({name: _private_jwk(key) for name, key in keys.items()})
    header = _header(params, salt)
    ciphertext: bytes = crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, canonical_json(header), nonce, _derive(passphrase, salt, params)
    )
    return canonical_json({**header, "nonce": _b64e(nonce), "ciphertext": _b64e(ciphertext)})


def _int_member(obj: Mapping[str, Any], name: str) -> int:
    value = obj.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    return value


def _parse_sealed(data: bytes) -> tuple[dict[str, Any], KdfParams, bytes, bytes, bytes]:
    """Header checks before any expensive work: (header, params, salt, nonce, ciphertext)."""
    try:
        doc = parse_strict_json(data)
    except InvalidMessage:
        raise KeyStoreError(f"{_UNSEAL_FAILED} (not JSON)") from None
    if not isinstance(doc, dict) or set(doc) != {"format", "kdf", "aead", "nonce", "ciphertext"}:
        raise KeyStoreError(f"{_UNSEAL_FAILED} (unexpected members)")
    if doc["format"] != KEYS_FORMAT:
        raise KeyStoreError(f"{_UNSEAL_FAILED} (format is not {KEYS_FORMAT})")
    kdf = doc["kdf"]
    if doc["aead"] != _AEAD or not isinstance(kdf, dict) or set(kdf) != {"alg", "t", "m", "p", "salt"}:
        raise KeyStoreError(f"{_UNSEAL_FAILED} (unsupported algorithms)")
    if kdf["alg"] != _KDF_ALG:
        raise KeyStoreError(f"{_UNSEAL_FAILED} (unsupported algorithms)")
    try:
        params = KdfParams(_int_member(kdf, "t"), _int_member(kdf, "m"), _int_member(kdf, "p"))
        salt, nonce, ciphertext = _b64d(kdf["salt"]), _b64d(doc["nonce"]), _b64d(doc["ciphertext"])
    except ValueError:
        raise KeyStoreError(f"{_UNSEAL_FAILED} (malformed header)") from None
    if not params.in_bounds():
        raise KeyStoreError(f"{_UNSEAL_FAILED} (KDF parameters out of range)")
    if len(salt) < _SALT_BYTES or len(nonce) != _NONCE_BYTES:
        raise KeyStoreError(f"{_UNSEAL_FAILED} (malformed header)")
    header = {"format": doc["format"], "kdf": kdf, "aead": doc["aead"]}
    return header, params, salt, nonce, ciphertext


def unseal_keys(data: bytes, passphrase: bytes) -> dict[str, OKPKey]:
    """Decrypt a ``comity-keys/1`` document. ``KeyStoreError`` on any failure, with no detail about the keys."""
    if not isinstance(passphrase, bytes):
        raise TypeError("passphrase must be bytes")
    header, params, salt, nonce, ciphertext = _parse_sealed(data)
    try:
        plaintext: bytes = crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, canonical_json(header), nonce, _derive(passphrase, salt, params)
        )
    except Exception:  # nacl's CryptoError, argon2's HashingError: all mean the same to the caller
        raise KeyStoreError(_UNSEAL_FAILED) from None
    try:
        doc = parse_strict_json(plaintext)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        return {str(name): _import_private_jwk(jwk) for name, jwk in doc.items()}
    except (InvalidMessage, ProfileViolation, ValueError):
        # authenticated but malformed: written by something else than seal_keys
        raise KeyStoreError(f"{_UNSEAL_FAILED} (malformed contents)") from None


# --- an authority's key set ------------------------------------------------------------------------------------------


# retired X25519 keys in a key file: their role and kid in the name, so that a swapped key is refused on unsealing
_RETIRED_NAME = re.compile(r"retired-(signing|encryption|archive)-([A-Za-z0-9_-]{43})")
Decrypting = Literal["encryption", "archive"]
Rotating = Literal["signing", "encryption", "archive"]
_CURVES = {"signing": "Ed25519", "encryption": "X25519", "archive": "X25519"}


@dataclass(frozen=True)
class AuthorityKeys:
    """An authority's private keys: ``signing`` (Ed25519), ``encryption`` (X25519, published in the directory) and
    ``archive`` (X25519, never published: the sender's own sealed copy of what it sent), and the keys retired by
    :meth:`rotated`: encryption and archive keys kept to open what was sealed to them, signing keys kept to sign
    with until the directory makes the new one valid (docs/operations.md)."""

    signing: OKPKey
    encryption: OKPKey
    archive: OKPKey
    retired_encryption: tuple[OKPKey, ...] = ()
    retired_archive: tuple[OKPKey, ...] = ()
    retired_signing: tuple[OKPKey, ...] = ()

    def __post_init__(self) -> None:
        for name, crv in _CURVES.items():
            key: OKPKey = getattr(self, name)
            if not isinstance(key, OKPKey) or not key.is_private or key.curve_name != crv:
                raise KeyStoreError(f"the {name} key must be a private {crv} key")
            for key in getattr(self, f"retired_{name}"):
                if not isinstance(key, OKPKey) or not key.is_private or key.curve_name != crv:
                    raise KeyStoreError(f"a retired {name} key must be a private {crv} key")
        decrypting = [self.encryption, self.archive, *self.retired_encryption, *self.retired_archive]
        if len({key_id(key) for key in decrypting}) != len(decrypting):
            raise KeyStoreError("an encryption or archive key appears twice in the key set")
        if len(self.signing_keys()) != 1 + len(self.retired_signing):
            raise KeyStoreError("a signing key appears twice in the key set")

    def __repr__(self) -> str:
        return (
            f"AuthorityKeys(signing={key_id(self.signing)}, encryption={key_id(self.encryption)}, "
            f"archive={key_id(self.archive)}, "
            f"retired={len(self.retired_signing) + len(self.retired_encryption) + len(self.retired_archive)})"
        )

    def signing_keys(self) -> dict[str, OKPKey]:
        """Every signing key by kid, the current one first (which one signs is the directory's say: gateway/context.py
        ``signing_key``)."""
        return {key_id(key): key for key in (self.signing, *self.retired_signing)}

    def decryption_keys(self, role: Decrypting) -> dict[str, OKPKey]:
        """The current key of ``role`` and the retired ones, by kid: what may open an envelope (``encryption``) or
        an archive copy (``archive``)."""
        current = self.encryption if role == "encryption" else self.archive
        retired = self.retired_encryption if role == "encryption" else self.retired_archive
        return {key_id(key): key for key in (current, *retired)}

    def rotated(self, role: Rotating) -> AuthorityKeys:
        """A new key set whose ``role`` key is fresh; the one it replaces is kept among the retired keys."""
        if role == "signing":
            return replace(self, signing=generate_signing_key(), retired_signing=(*self.retired_signing, self.signing))
        fresh = generate_encryption_key()
        if role == "encryption":
            return replace(self, encryption=fresh, retired_encryption=(*self.retired_encryption, self.encryption))
        return replace(self, archive=fresh, retired_archive=(*self.retired_archive, self.archive))

    def _named(self) -> dict[str, OKPKey]:
        named = {"signing": self.signing, "encryption": self.encryption, "archive": self.archive}
        for role in _CURVES:
            for key in getattr(self, f"retired_{role}"):
                named[f"retired-{role}-{key_id(key)}"] = key
        return named

    def seal(self, passphrase: bytes, params: KdfParams = DEFAULT_KDF) -> bytes:
        return seal_keys(self._named(), passphrase, params)

    @classmethod
    def unseal(cls, data: bytes, passphrase: bytes) -> AuthorityKeys:
        keys = unseal_keys(data, passphrase)
        current = {"signing", "encryption", "archive"}
        if not current <= set(keys):
            raise KeyStoreError("key file does not hold an authority's keys (signing, encryption, archive)")
        retired: dict[str, list[OKPKey]] = {role: [] for role in _CURVES}
        for name in sorted(set(keys) - current):
            match = _RETIRED_NAME.fullmatch(name)
            if match is None or match.group(2) != key_id(keys[name]):
                raise KeyStoreError("key file holds a key that is neither current nor a retired one under its kid")
            retired[match.group(1)].append(keys[name])
        return cls(
            signing=keys["signing"],
            encryption=keys["encryption"],
            archive=keys["archive"],
            retired_encryption=tuple(retired["encryption"]),
            retired_archive=tuple(retired["archive"]),
            retired_signing=tuple(retired["signing"]),
        )


def sealed_kdf_params(data: bytes) -> KdfParams:
    """The argon2id parameters a key file was sealed with (to seal its next version alike)."""
    return _parse_sealed(data)[1]


def generate_authority_keys() -> AuthorityKeys:
    return AuthorityKeys(
        signing=generate_signing_key(), encryption=generate_encryption_key(), archive=generate_encryption_key()
    )


def tls_key_password(keys: AuthorityKeys) -> bytes:
    """The password that encrypts the gateway's TLS private key PEM, derived from the current signing key.

    The PEM encryption that TLS libraries read (PKCS#8 with PBKDF2) is far cheaper to attack than argon2id; keyed
    with 256 bits derived from the signing key instead of the passphrase, it cannot be used to guess the passphrase,
    and it opens only after keys.sealed has been unsealed. Rotating the signing key re-encrypts the PEM.
    """
    return _tls_password(keys.signing)


def tls_key_passwords(keys: AuthorityKeys) -> list[bytes]:
    """The passwords the TLS key PEM may be under: the current signing key's, then each retired one's (a rotation
    stopped between writing the key file and re-encrypting the PEM leaves it under the previous one)."""
    return [_tls_password(key) for key in keys.signing_keys().values()]


def _tls_password(signing: OKPKey) -> bytes:
    seed = base64.urlsafe_b64decode(str(signing.as_dict(private=True)["d"]) + "==")
    digest = hashlib.sha256(b"comity tls key password v1\x00" + seed).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=")
