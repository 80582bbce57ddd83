"""The signed directory: round trip, every refusal, key validity windows, drafts and entries."""

from __future__ import annotations

import base64
import copy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import OctKey, OKPKey

from config.directory import (
    Directory,
    directory_entry_for,
    dump_directory_draft,
    format_time,
    load_authority_entry,
    load_directory_draft,
    load_directory_key,
    parse_time,
    read_directory,
    sign_directory,
    verify_directory,
    verify_directory_signature,
)
from config.errors import (
    ConfigError,
    DirectoryBadSignature,
    DirectoryError,
    DirectoryExpired,
    DirectoryInvalid,
    DirectoryRolledBack,
    DirectoryUnsigned,
    UnknownAuthority,
)
from config.settings import Settings
from crypto.errors import UnknownKey
from crypto.keys import generate_authority_keys, generate_encryption_key, generate_signing_key, key_id, public_jwk
from crypto.tls import cert_der, certificate_pin, generate_tls_identity
from protocol.messages import canonical_json

NOW = datetime(2026, 11, 28, 7, 40, tzinfo=UTC)
DIRECTORY_KEY = generate_signing_key()
OTHER_KEY = generate_signing_key()


def make_entry(authority_id: str, country: str, *, host: str = "127.0.0.1", port: int = 8443) -> dict[str, Any]:
    tls = generate_tls_identity(authority_id, [host], None, now=NOW)
    entry = directory_entry_for(
        authority_id=authority_id,
        name=f"Central authority {authority_id}",
        country=country,
        endpoint=f"https://{host}:{port}",
        keys=generate_authority_keys(),
        tls_cert_pem=tls.cert_pem,
        roles=["mla-central-authority", "asset-recovery-focal-point"],
        languages=["es", "en"],
        max_level="STRICTLY CONFIDENTIAL",
        caveats=["no-onward", "uncac-46-20"],
        not_before=NOW - timedelta(days=30),
    )
    return entry.to_json()


AR = make_entry("ar.mj", "AR")
ES = make_entry("es.mj", "ES", port=9443)


def make_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "v": 1,
        "serial": 5,
        "issued_at": format_time(NOW - timedelta(days=1)),
        "expires_at": format_time(NOW + timedelta(days=90)),
        "authorities": copy.deepcopy([AR, ES]),
    }
    document.update(changes)
    return document


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_by_hand(header: dict[str, Any], payload: bytes, key: OKPKey = DIRECTORY_KEY) -> str:
    """A JWS made without joserfc, for headers joserfc itself would refuse to write."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload)}"
    private = key.private_key
    assert isinstance(private, Ed25519PrivateKey)
    return f"{signing_input}.{b64url(private.sign(signing_input.encode()))}"


def sign_raw(payload: bytes | dict[str, Any], key: Any = DIRECTORY_KEY, header: dict[str, Any] | None = None) -> str:
    """Sign anything, bypassing the model: how an attacker or a buggy tool would make a token."""
    body = payload if isinstance(payload, bytes) else canonical_json(payload)
    if header is None:
        header = {"alg": "Ed25519", "kid": key_id(DIRECTORY_KEY), "typ": "comity-directory+jws"}
    return jws.serialize_compact(header, body, key, algorithms=[header["alg"]])


def verify(token: str | bytes, **kwargs: Any) -> Directory:
    return verify_directory(token, public_key(DIRECTORY_KEY), now=kwargs.pop("now", NOW), **kwargs)


def public_key(key: OKPKey) -> OKPKey:
    return load_directory_key(json.dumps(public_jwk(key)).encode())


# --- round trip -------------------------------------------------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    directory = Directory.model_validate(make_document())
    token = sign_directory(directory, DIRECTORY_KEY)
    header_b64, payload_b64, _ = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(header_b64 + "==")) == {
        "alg": "Ed25519",
        "kid": key_id(DIRECTORY_KEY),
        "typ": "comity-directory+jws",
    }
    assert base64.urlsafe_b64decode(payload_b64 + "==") == canonical_json(make_document())
    verified = verify(token, min_serial=5)
    assert verified == directory
    assert verify(token.encode("ascii") + b"\n") == directory
    assert [a.id for a in verified.authorities] == ["ar.mj", "es.mj"]
    assert verified.authority("es.mj").endpoint == "https://127.0.0.1:9443"
    assert verified.by_tls_pin(AR["tls_pin"]) == verified.authority("ar.mj")
    assert verified.by_tls_pin("sha256:" + "0" * 64) is None


def test_an_entry_in_a_tls_rollover_pins_both_certificates() -> None:
    later = generate_tls_identity("ar.mj", ["127.0.0.1"], None, now=NOW + timedelta(days=300)).cert_pem
    rollover = {"tls_next_cert": base64.b64encode(cert_der(later)).decode(), "tls_next_pin": certificate_pin(later)}
    document = with_ar(**rollover)
    token = sign_directory(Directory.model_validate(document), DIRECTORY_KEY)
    assert base64.urlsafe_b64decode(token.split(".")[1] + "==") == canonical_json(document)
    verified = verify(token)
    ar = verified.authority("ar.mj")
    assert ar.tls_pins == (AR["tls_pin"], rollover["tls_next_pin"])
    assert ar.tls_certs == (AR["tls_cert"], rollover["tls_next_cert"])
    # a peer presenting either certificate is ar.mj; the next certificate is valid 300 days longer
    assert verified.by_tls_pin(AR["tls_pin"]) == ar == verified.by_tls_pin(rollover["tls_next_pin"])
    assert ar.tls_not_after - verified.authority("es.mj").tls_not_after == timedelta(days=300)
    assert load_authority_entry(ar.to_file()) == ar
    # the entry without its rollover: the members are left out, not null
    plain = verified.authority("es.mj")
    assert "tls_next_cert" not in plain.to_json() and b"tls_next" not in plain.to_file()
    assert plain.tls_pins == (ES["tls_pin"],)


def test_a_directory_of_every_state_party_signs_and_verifies() -> None:
    """UNCAC has over 190 States parties, some with several authorities: 250 entries, over joserfc's default
    payload limit of 128,000 bytes, sign and verify."""
    entries = [make_entry(f"ar.a{number:03d}", "AR") for number in range(250)]
    directory = Directory.model_validate(make_document(authorities=entries))
    assert len(directory.to_bytes()) > 128_000
    token = sign_directory(directory, DIRECTORY_KEY)
    assert len(verify(token).authorities) == 250


def test_unknown_authority() -> None:
    directory = verify(sign_raw(make_document()))
    with pytest.raises(UnknownAuthority, match=r"lists no authority 'fr.mj'") as caught:
        directory.authority("fr.mj")
    assert caught.value.code == "unknown-authority"


def test_entry_holds_public_keys_only_and_a_matching_pin() -> None:
    keys = generate_authority_keys()
    tls = generate_tls_identity("ar.mj", ["127.0.0.1"], None, now=NOW)
    entry = directory_entry_for(
        authority_id="ar.mj",
        name="MJ",
        country="AR",
        endpoint="https://127.0.0.1:8443",
        keys=keys,
        tls_cert_pem=tls.cert_pem,
        not_before=NOW,
    )
    text = json.dumps(entry.to_json())
    assert '"d"' not in text
    assert key_id(keys.archive) not in text
    assert [k.kid for k in entry.keys] == [key_id(keys.signing), key_id(keys.encryption)]
    assert entry.tls_pin == certificate_pin(tls.cert_pem)
    assert load_authority_entry(text.encode()) == entry


# --- refusals ---------------------------------------------------------------------------------------------------------


def test_plain_json_is_unsigned() -> None:
    with pytest.raises(DirectoryUnsigned, match="not a signed JWS") as caught:
        verify(canonical_json(make_document()))
    assert caught.value.code == "directory-unsigned"


def test_alg_none_is_unsigned() -> None:
    header = b64url(json.dumps({"alg": "none", "kid": key_id(DIRECTORY_KEY), "typ": "comity-directory+jws"}).encode())
    token = f"{header}.{b64url(canonical_json(make_document()))}."
    with pytest.raises(DirectoryUnsigned, match="alg 'none'"):
        verify(token)


def test_hs256_is_refused() -> None:
    secret = OctKey.import_key(b"0123456789abcdef0123456789abcdef")
    header = {"alg": "HS256", "kid": key_id(DIRECTORY_KEY), "typ": "comity-directory+jws"}
    with pytest.raises(DirectoryBadSignature, match="alg 'HS256'; only Ed25519") as caught:
        verify(sign_raw(make_document(), secret, header))
    assert caught.value.code == "directory-bad-signature"


def test_eddsa_alg_name_is_refused() -> None:
    header = {"alg": "EdDSA", "kid": key_id(DIRECTORY_KEY), "typ": "comity-directory+jws"}
    with pytest.raises(DirectoryBadSignature, match="alg 'EdDSA'"):
        verify(sign_by_hand(header, canonical_json(make_document())))


def test_signed_by_another_key() -> None:
    token = sign_directory(Directory.model_validate(make_document()), OTHER_KEY)
    with pytest.raises(DirectoryBadSignature, match="not the pinned directory key"):
        verify(token)


def test_another_key_claiming_the_pinned_kid() -> None:
    with pytest.raises(DirectoryBadSignature, match="signature does not verify"):
        verify(sign_raw(make_document(), OTHER_KEY))


def test_tampered_payload() -> None:
    header, _, signature = sign_raw(make_document()).split(".")
    forged = make_document()
    forged["authorities"][0]["endpoint"] = "https://127.0.0.1:6666"
    with pytest.raises(DirectoryBadSignature, match="signature does not verify"):
        verify(f"{header}.{b64url(canonical_json(forged))}.{signature}")


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "Ed25519", "kid": key_id(DIRECTORY_KEY)},
        {"alg": "Ed25519", "kid": key_id(DIRECTORY_KEY), "typ": "JWT"},
        {"alg": "Ed25519", "kid": key_id(DIRECTORY_KEY), "typ": "comity-directory+jws", "crit": ["exp"], "exp": 1},
        {"alg": "Ed25519", "kid": key_id(DIRECTORY_KEY), "typ": "comity-directory+jws", "jku": "https://x"},
    ],
)
def test_header_members_are_pinned(header: dict[str, Any]) -> None:
    with pytest.raises(DirectoryBadSignature, match="exactly alg, kid and typ"):
        verify(sign_by_hand(header, canonical_json(make_document())))


def test_expired() -> None:
    token = sign_raw(make_document(issued_at="2026-08-01T00:00:00.000000Z", expires_at="2026-11-01T00:00:00.000000Z"))
    message = "directory serial 5 expired at 2026-11-01T00:00:00.000000Z; install a newer signed directory"
    with pytest.raises(DirectoryExpired, match=re.escape(message)):
        verify(token)
    with pytest.raises(DirectoryExpired, match="expired"):
        verify(sign_raw(make_document()), now=parse_time(make_document()["expires_at"]))
    assert verify_directory_signature(token, DIRECTORY_KEY).serial == 5  # the operator may still extend it


def test_rolled_back() -> None:
    with pytest.raises(DirectoryRolledBack, match="serial 3 is lower than 5 already seen") as caught:
        verify(sign_raw(make_document(serial=3)), min_serial=5)
    assert caught.value.code == "directory-rolled-back"


def test_duplicate_member() -> None:
    text = canonical_json(make_document()).decode()
    duplicated = text.replace('"serial":5', '"serial":5,"serial":9', 1).encode()
    with pytest.raises(DirectoryInvalid, match="duplicate member 'serial'"):
        verify(sign_raw(duplicated))


def test_non_canonical_payload() -> None:
    with pytest.raises(DirectoryInvalid, match="not RFC 8785 canonical"):
        verify(sign_raw(json.dumps(make_document(), indent=1).encode()))


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(sign_raw(make_document()), now=datetime(2026, 11, 28))


def with_ar(**changes: Any) -> dict[str, Any]:
    document = make_document()
    document["authorities"][0].update(changes)
    return document


def ar_key(index: int, **changes: Any) -> dict[str, Any]:
    document = make_document()
    document["authorities"][0]["keys"][index].update(changes)
    return document


def private_jwk_document() -> dict[str, Any]:
    document = make_document()
    document["authorities"][0]["keys"][0]["jwk"]["d"] = b64url(b"\x01" * 32)
    return document


OTHER_CERT = generate_tls_identity("ar.mj", ["127.0.0.1"], None, now=NOW).cert_pem
NEXT = {"tls_next_cert": base64.b64encode(cert_der(OTHER_CERT)).decode(), "tls_next_pin": certificate_pin(OTHER_CERT)}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (with_ar(roles=["mla-central-authority", "secret-police"]), r"roles\.1: Input should be 'mla-central-auth"),
        (with_ar(roles=[]), "roles: List should have at least 1 item"),
        (with_ar(roles=["mla-central-authority", "asset-recovery-focal-point"]), "roles must be sorted and unique"),
        (with_ar(tls_pin=certificate_pin(OTHER_CERT)), "tls_pin does not match tls_cert"),
        (with_ar(tls_pin="sha1:abcd"), "tls_pin must be 'sha256:'"),
        (with_ar(tls_cert="bm90IGEgY2VydA=="), "tls_cert must be a DER X.509 certificate"),
        (with_ar(tls_next_cert=NEXT["tls_next_cert"]), "tls_next_cert and tls_next_pin go together"),
        (with_ar(tls_next_pin=NEXT["tls_next_pin"]), "tls_next_cert and tls_next_pin go together"),
        (with_ar(tls_next_cert=None, tls_next_pin=None), "tls_next_cert: must be left out, not null"),
        (with_ar(**NEXT | {"tls_next_pin": AR["tls_pin"]}), "tls_next_pin does not match tls_next_cert"),
        (with_ar(tls_next_cert=AR["tls_cert"], tls_next_pin=AR["tls_pin"]), "must be another certificate than"),
        (with_ar(tls_next_cert="bm90IGEgY2VydA==", tls_next_pin=AR["tls_pin"]), "tls_next_cert must be a DER X.509"),
        (with_ar(tls_next_cert=ES["tls_cert"], tls_next_pin=ES["tls_pin"]), "two authorities share a TLS cert"),
        (private_jwk_document(), "private key member"),
        (with_ar(country="ES"), "country must be 'AR', the prefix of the authority id"),
        (with_ar(country="ar"), "country must be an ISO 3166-1 alpha-2 code in upper case"),
        (with_ar(id="AR.MJ"), "authority id must look like"),
        (with_ar(endpoint="http://gateway.example.org:8443"), "plain http only on a loopback host"),
        (with_ar(endpoint="ftp://127.0.0.1/"), "endpoint must be a URL"),
        (with_ar(endpoint="https://user:pw@gw.example.org"), "must not carry credentials"),
        (with_ar(languages=["Spanish"]), "BCP 47"),
        (with_ar(languages=["es", "es"]), "languages must be unique"),
        (with_ar(accreditation={"max_level": "CONFIDENTIAL", "caveats": ["b", "a"]}), "caveats must be sorted"),
        (with_ar(accreditation={"max_level": "SECRET", "caveats": []}), "unknown marking level 'SECRET'; known levels"),
        (with_ar(accreditation={"max_level": "STRICTLY-CONFIDENTIAL"}), "unknown marking level 'STRICTLY-CONFIDENT"),
        (with_ar(accreditation={"max_level": "CONFIDENTIAL", "caveats": ["noforn"]}), "unknown caveat 'noforn'"),
        (with_ar(extra="x"), "extra: Extra inputs are not permitted"),
        (with_ar(name="Ministerio\n  zz.fake  ZZ  Fake authority"), "name: must not contain control characters"),
        (with_ar(notes="see \x1b[2Jhere"), "notes: must not contain control characters or line breaks"),
        (with_ar(notes="line\u2028break"), "notes: must not contain control characters or line breaks"),
        (ar_key(0, use="enc"), "a key for use 'enc' must be X25519"),
        (ar_key(1, jwk=public_jwk(generate_signing_key()), use="sig"), "one encryption"),
        (ar_key(0, jwk={**AR["keys"][0]["jwk"], "kid": "not-the-thumbprint"}), "kid is not its RFC 7638 thumbprint"),
        (ar_key(0, not_after="2020-01-01T00:00:00.000000Z"), "not_after must be later than not_before"),
        (ar_key(0, not_before="2026-11-28T07:40:00Z"), "time must be RFC 3339 UTC with microseconds"),
        (make_document(authorities=[ES, AR]), "authorities must be sorted by id"),
        (make_document(authorities=[AR, AR]), "authorities must be sorted by id, each id once"),
        (make_document(authorities=[AR, {**ES, "tls_cert": AR["tls_cert"], "tls_pin": AR["tls_pin"]}]), "share"),
        (make_document(serial=0), "serial: Input should be greater than or equal to 1"),
        (make_document(serial="5"), "serial: Input should be a valid integer"),
        (make_document(v=2), "unsupported directory version"),
        (make_document(expires_at=format_time(NOW - timedelta(days=2))), "expires_at must be later than issued_at"),
    ],
)
def test_schema_violations(document: dict[str, Any], message: str) -> None:
    with pytest.raises(DirectoryInvalid, match=message) as caught:
        verify(sign_raw(document))
    assert caught.value.code == "directory-invalid"
    assert 'd": ' not in caught.value.message  # never echoes key material


@pytest.mark.parametrize(
    "endpoint",
    [
        "HTTPS://gw.example.org:8443",
        "Https://gw.example.org:8443",
        "HTTP://127.0.0.1:8443",
        " https://gw.example.org:8443",
        "\thttps://gw.example.org:8443",
        "\x00https://gw.example.org:8443",
        "https://gw.example.org:8443 ",
        "https://gw.exam\tple.org:8443",
        "https://gw.example.org:8443/fede\nration",
        "https://gw.example.org\u00a0:8443",
        "https://gw.example.org:8443/\u200b",
    ],
)
def test_an_endpoint_urlsplit_would_normalise_is_refused(endpoint: str) -> None:
    """urlsplit lowercases the scheme, strips leading whitespace and drops tabs and newlines anywhere; the sender
    decides TLS on the string itself (``startswith("https://")``), so each of these would have been called without a
    certificate check (decision 116)."""
    with pytest.raises(DirectoryInvalid, match=r"endpoint: endpoint must (be a URL starting with 'https://'|not con)"):
        verify(sign_raw(with_ar(endpoint=endpoint)))
    with pytest.raises(DirectoryInvalid, match="endpoint must"):
        load_authority_entry(json.dumps({**AR, "endpoint": endpoint}).encode())
    assert verify(sign_raw(with_ar(endpoint="https://gw.example.org:8443/comity"))).authorities[0].endpoint == (
        "https://gw.example.org:8443/comity"
    )


def test_a_key_listed_under_two_authorities_is_refused() -> None:
    """Otherwise a directory could make senders to es.mj seal to ar.mj's encryption key, or take ar.mj's signatures
    as es.mj's (decision 116)."""
    for index in (0, 1):  # the signing key, the encryption key
        es = copy.deepcopy(ES)
        es["keys"][index] = copy.deepcopy(AR["keys"][index])
        kid = AR["keys"][index]["jwk"]["kid"]
        message = f"ar.mj and es.mj list the same key {kid}; each authority needs its own"
        with pytest.raises(DirectoryInvalid, match=re.escape(message)):
            verify(sign_raw(make_document(authorities=[AR, es])))
        with pytest.raises(DirectoryInvalid, match="list the same key"):
            Directory.model_validate(make_document(authorities=[ES])).with_entry(
                load_authority_entry(json.dumps({**AR, "keys": es["keys"]}).encode())
            )


def with_x509_version(der: bytes, version: int) -> bytes:
    """``der`` with the version of its TBSCertificate (``[0] EXPLICIT INTEGER``, v3 is 2) set to ``version``."""
    at = der.index(bytes.fromhex("a003020102"))
    assert at < 16  # the first field of the TBSCertificate, not a byte pattern further in
    return der[: at + 4] + bytes([version]) + der[at + 5 :]


def test_a_certificate_with_an_invalid_x509_version_is_a_typed_refusal() -> None:
    """cryptography raises InvalidVersion, no ValueError, for a version other than v1 to v3: it escaped as
    'unexpected error (InvalidVersion)' from 'comity directory add'."""
    patched = with_x509_version(base64.b64decode(AR["tls_cert"]), 7)
    changed = {"tls_cert": base64.b64encode(patched).decode("ascii"), "tls_pin": "sha256:" + "0" * 64}
    with pytest.raises(DirectoryInvalid, match=r"tls_cert must be a DER X\.509 certificate"):
        verify(sign_raw(with_ar(**changed)))
    with pytest.raises(DirectoryInvalid, match=r"tls_cert must be a DER X\.509 certificate"):
        load_authority_entry(json.dumps({**AR, **changed}).encode())


def test_a_signed_serial_beyond_2_53_is_invalid_not_an_encoding_error() -> None:
    """A correctly signed payload whose serial RFC 8785 cannot encode: DirectoryInvalid like any other malformed
    directory (it raised InvalidMessage), and a draft is held to the same bound."""
    payload = canonical_json(make_document()).replace(b'"serial":5', b'"serial":9007199254740993', 1)
    with pytest.raises(DirectoryInvalid, match="the directory payload: value cannot be encoded as RFC 8785"):
        verify(sign_raw(payload))
    with pytest.raises(DirectoryInvalid, match="serial: Input should be less than or equal to 9007199254740991"):
        load_directory_draft(json.dumps(make_document(serial=2**53)).encode())
    assert load_directory_draft(json.dumps(make_document(serial=2**53 - 1)).encode()).serial == 2**53 - 1


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(alphabet='abcAZ09-_.{}"', max_size=300)))
def test_garbage_gives_a_directory_error(garbage: str | bytes) -> None:
    with pytest.raises(DirectoryError):
        verify(garbage)


# --- key validity windows ---------------------------------------------------------------------------------------------


def key_entry(key: OKPKey, use: str, not_before: datetime, not_after: datetime | None = None) -> dict[str, Any]:
    return {
        "use": use,
        "jwk": public_jwk(key),
        "not_before": format_time(not_before),
        "not_after": None if not_after is None else format_time(not_after),
    }


def test_keys_outside_their_window_are_not_returned_and_rotation_overlaps() -> None:
    old_sig, new_sig = generate_signing_key(), generate_signing_key()
    old_enc, new_enc = generate_encryption_key(), generate_encryption_key()
    t0 = NOW - timedelta(days=400)
    rotation = NOW - timedelta(days=10)
    keys = [
        key_entry(old_sig, "sig", t0, NOW + timedelta(days=5)),
        key_entry(new_sig, "sig", rotation),
        key_entry(old_enc, "enc", t0, NOW + timedelta(days=5)),
        key_entry(new_enc, "enc", rotation),
    ]
    entry = verify(sign_raw(with_ar(keys=keys))).authority("ar.mj")

    assert set(entry.signing_keys_at(NOW)) == {key_id(old_sig), key_id(new_sig)}
    assert key_id(entry.encryption_key_at(NOW)) == key_id(new_enc)
    # before the rotation: only the old keys
    before = rotation - timedelta(microseconds=1)
    assert set(entry.signing_keys_at(before)) == {key_id(old_sig)}
    assert key_id(entry.encryption_key_at(before)) == key_id(old_enc)
    # not_after is exclusive
    after = NOW + timedelta(days=5)
    assert set(entry.signing_keys_at(after)) == {key_id(new_sig)}
    # before any key
    assert entry.signing_keys_at(t0 - timedelta(days=1)) == {}
    with pytest.raises(UnknownKey, match=r"no encryption key of ar.mj valid at"):
        entry.encryption_key_at(t0 - timedelta(days=1))
    assert set(entry.all_signing_keys()) == {key_id(old_sig), key_id(new_sig)}
    # what is returned is the public key, with the profile's kid
    returned = entry.signing_keys_at(NOW)[key_id(new_sig)]
    assert not returned.is_private
    assert returned.kid == key_id(new_sig)

    # valid at some time of a closed interval: the start of validity counts, its (exclusive) end does not
    one_second = timedelta(seconds=1)
    assert set(entry.signing_keys_during(rotation - 2 * one_second, rotation - one_second)) == {key_id(old_sig)}
    assert set(entry.signing_keys_during(rotation - one_second, rotation)) == {key_id(old_sig), key_id(new_sig)}
    assert set(entry.signing_keys_during(after, after + one_second)) == {key_id(new_sig)}
    assert set(entry.signing_keys_during(after - one_second, after)) == {key_id(old_sig), key_id(new_sig)}
    assert entry.signing_keys_during(t0 - 2 * one_second, t0 - one_second) == {}


# --- drafts, entries, key files, settings ---------------------------------------------------------------------------


def test_draft_round_trip_and_entry_replacement() -> None:
    directory = Directory.model_validate(make_document(authorities=[ES]))
    draft = dump_directory_draft(directory)
    assert load_directory_draft(draft) == directory
    added = directory.with_entry(load_authority_entry(json.dumps(AR).encode()))
    assert [a.id for a in added.authorities] == ["ar.mj", "es.mj"]
    with pytest.raises(DirectoryInvalid, match=r"es.mj is already in the directory; use --replace"):
        added.with_entry(added.authority("es.mj"))
    renamed = added.authority("es.mj").model_copy(update={"notes": "moved"})
    assert added.with_entry(renamed, replace=True).authority("es.mj").notes == "moved"


def test_draft_refusals() -> None:
    with pytest.raises(DirectoryInvalid, match="duplicate member"):
        load_directory_draft(b'{"v": 1, "v": 1}')
    with pytest.raises(DirectoryInvalid, match="serial: Field required"):
        load_directory_draft(b'{"v": 1}')
    with pytest.raises(DirectoryInvalid, match="the entry: not valid JSON"):
        load_authority_entry(b"{")


def test_directory_key_file() -> None:
    assert load_directory_key(json.dumps(public_jwk(DIRECTORY_KEY)).encode()).kid == key_id(DIRECTORY_KEY)
    with pytest.raises(ConfigError, match="private"):
        load_directory_key(json.dumps(DIRECTORY_KEY.as_dict(private=True)).encode())
    with pytest.raises(ConfigError, match="must be Ed25519"):
        load_directory_key(json.dumps(public_jwk(generate_encryption_key())).encode())
    with pytest.raises(ConfigError, match="not an Ed25519 public JWK"):
        load_directory_key(b"[1")


def test_sign_requires_an_ed25519_private_key() -> None:
    directory = Directory.model_validate(make_document())
    with pytest.raises(ConfigError, match="Ed25519 private key"):
        sign_directory(directory, public_key(DIRECTORY_KEY))


def test_read_directory_from_settings(tmp_path: Path) -> None:
    settings_ = Settings(authority_id="ar.mj", data_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"cannot read .*directory-key.jwk"):
        read_directory(settings_, now=NOW)
    settings_.directory_key_path.write_text(json.dumps(public_jwk(DIRECTORY_KEY)))
    settings_.directory_path.write_text(sign_raw(make_document()))
    assert read_directory(settings_, now=NOW, min_serial=4).serial == 5


def test_times() -> None:
    assert format_time(NOW) == "2026-11-28T07:40:00.000000Z"
    assert parse_time("2026-11-28T07:40:00.000000Z") == NOW
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2026, 1, 1))


def test_names_in_any_script_are_kept_whole() -> None:
    """Only control characters and line breaks are refused in name and notes: a no-break space or a zero-width
    non-joiner (Persian) is part of how an authority writes its name."""
    name, notes = (
        "Ministère de la Justice\u00a0: Entraide",
        "\u0648\u0632\u0627\u0631\u062a\u200c\u062f\u0627\u062f",
    )  # Persian, with a ZWNJ
    signed = verify(sign_raw(with_ar(name=name, notes=notes)))
    assert (signed.authority("ar.mj").name, signed.authority("ar.mj").notes) == (name, notes)
