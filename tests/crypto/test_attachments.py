"""crypto/attachments.py: secretstream framing, round trips in any split, every tampering caught, constant memory."""

from __future__ import annotations

import hashlib
import itertools
import random
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import (
    crypto_secretstream_xchacha20poly1305_init_pull,
    crypto_secretstream_xchacha20poly1305_pull,
    crypto_secretstream_xchacha20poly1305_state,
    crypto_secretstream_xchacha20poly1305_TAG_FINAL,
    crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
)

from crypto.attachments import (
    ABYTES,
    CHUNK_SIZE,
    HEADER_SIZE,
    AttachmentDecryptor,
    AttachmentEncryptor,
    CiphertextVerifier,
    ciphertext_size,
)
from crypto.errors import AttachmentError
from protocol.errors import InvalidMessage
from protocol.messages import MAX_ATTACHMENTS, AttachmentRef, MessagePayload, check_manifest, new_message_id

SMALL = 16  # a chunk size small enough for exhaustive tampering tests
KEY = bytes(range(32))


def encrypt(
    data: bytes, *, chunk_size: int = CHUNK_SIZE, key: bytes | None = None, piece: int = 0
) -> tuple[bytes, AttachmentRef]:
    """Encrypt ``data``, fed in pieces of ``piece`` bytes (all at once when 0)."""
    enc = AttachmentEncryptor(key, chunk_size=chunk_size)
    parts = [enc.start()]
    step = piece or max(1, len(data))
    for offset in range(0, len(data), step):
        parts.append(enc.push(data[offset : offset + step]))
    parts.append(enc.finish())
    return b"".join(parts), enc.manifest_entry("evidence.pdf", "application/pdf")


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def decrypt(ciphertext: bytes, ref: AttachmentRef, *, chunk_size: int = CHUNK_SIZE, cuts: Iterable[int] = ()) -> bytes:
    dec = AttachmentDecryptor(ref, chunk_size=chunk_size)
    out = [dec.push(part) for part in split(ciphertext, cuts)]
    dec.finish()
    return b"".join(out)


def verify(ciphertext: bytes, ref: AttachmentRef, *, chunk_size: int = CHUNK_SIZE, cuts: Iterable[int] = ()) -> None:
    verifier = CiphertextVerifier(ref, chunk_size=chunk_size)
    for part in split(ciphertext, cuts):
        verifier.push(part)
    verifier.finish()


def chunks(ciphertext: bytes, chunk_size: int) -> tuple[bytes, list[bytes]]:
    block = chunk_size + ABYTES
    body = ciphertext[HEADER_SIZE:]
    return ciphertext[:HEADER_SIZE], [body[i : i + block] for i in range(0, len(body), block)]


def matching_ref(ref: AttachmentRef, ciphertext: bytes, plaintext: bytes) -> AttachmentRef:
    """A manifest entry that describes ``ciphertext`` exactly: what a sender that truncated or extended its own
    stream could sign. Only the stream's own framing (tags, authentication) can catch what it hides."""
    return ref.model_copy(
        update={
            "size": len(plaintext),
            "sha256": hashlib.sha256(plaintext).hexdigest(),
            "ct_size": len(ciphertext),
            "ct_sha256": hashlib.sha256(ciphertext).hexdigest(),
        }
    )


# --- framing ---------------------------------------------------------------------------------------------------------


def test_constants() -> None:
    assert (CHUNK_SIZE, HEADER_SIZE, ABYTES) == (1 << 20, 24, 17)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, 24 + 17),
        (1, 24 + 1 + 17),
        (CHUNK_SIZE - 1, 24 + CHUNK_SIZE - 1 + 17),
        (CHUNK_SIZE, 24 + CHUNK_SIZE + 17),
        (CHUNK_SIZE + 1, 24 + CHUNK_SIZE + 1 + 2 * 17),
        (3 * CHUNK_SIZE, 24 + 3 * CHUNK_SIZE + 3 * 17),
    ],
)
def test_ciphertext_size(size: int, expected: int) -> None:
    assert ciphertext_size(size) == expected


def test_ciphertext_size_refuses_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        ciphertext_size(-1)


@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 2 * SMALL, 3 * SMALL + 5])
def test_framing_with_raw_libsodium(size: int) -> None:
    """Open the stream with the raw bindings: full TAG_MESSAGE chunks, then one TAG_FINAL chunk, no AD."""
    data = random.Random(size).randbytes(size)
    ciphertext, ref = encrypt(data, chunk_size=SMALL, key=KEY, piece=3)
    assert len(ciphertext) == ref.ct_size == ciphertext_size(size, chunk_size=SMALL)
    header, blocks = chunks(ciphertext, SMALL)
    state = crypto_secretstream_xchacha20poly1305_state()
    crypto_secretstream_xchacha20poly1305_init_pull(state, header, KEY)
    opened = [crypto_secretstream_xchacha20poly1305_pull(state, block, None) for block in blocks]
    assert [tag for _, tag in opened] == [crypto_secretstream_xchacha20poly1305_TAG_MESSAGE] * (len(blocks) - 1) + [
        crypto_secretstream_xchacha20poly1305_TAG_FINAL
    ]
    assert all(len(plain) == SMALL for plain, _ in opened[:-1])
    assert 0 <= len(opened[-1][0]) <= SMALL
    assert b"".join(plain for plain, _ in opened) == data


def test_exact_multiple_holds_back_the_last_full_chunk() -> None:
    enc = AttachmentEncryptor(KEY, chunk_size=SMALL)
    assert len(enc.start()) == HEADER_SIZE
    assert enc.push(b"a" * SMALL) == b""  # might be the last chunk: not yet encrypted
    assert len(enc.push(b"b" * SMALL)) == SMALL + ABYTES  # the first is now known not to be last
    assert enc.push(b"") == b""
    assert len(enc.finish()) == SMALL + ABYTES  # the last full chunk, tagged FINAL


def test_empty_attachment_is_one_empty_final_chunk() -> None:
    ciphertext, ref = encrypt(b"")
    assert len(ciphertext) == HEADER_SIZE + ABYTES
    assert (ref.size, ref.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert decrypt(ciphertext, ref) == b""


def test_manifest_entry() -> None:
    data = b"scanned request" * 1000
    ciphertext, ref = encrypt(data, key=KEY)
    assert ref.name == "evidence.pdf"
    assert ref.media_type == "application/pdf"
    assert ref.size == len(data)
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.ct_size == len(ciphertext)
    assert ref.ct_sha256 == hashlib.sha256(ciphertext).hexdigest()
    assert ref.key == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
    assert AttachmentRef.parse(ref.model_dump()) == ref


def test_fresh_key_and_header_per_attachment() -> None:
    one, ref_one = encrypt(b"same bytes")
    two, ref_two = encrypt(b"same bytes")
    assert ref_one.key != ref_two.key
    assert one[:HEADER_SIZE] != two[:HEADER_SIZE]


def test_encryptor_misuse() -> None:
    enc = AttachmentEncryptor(KEY)
    with pytest.raises(AttachmentError, match="start"):
        enc.push(b"x")
    enc.start()
    with pytest.raises(AttachmentError, match="already called"):
        enc.start()
    with pytest.raises(AttachmentError, match="finish"):
        enc.manifest_entry("a", "b")
    enc.finish()
    with pytest.raises(AttachmentError, match="finished"):
        enc.push(b"x")
    with pytest.raises(AttachmentError, match="finished"):
        enc.finish()
    with pytest.raises(AttachmentError, match="name"):
        enc.manifest_entry("", "text/plain")
    with pytest.raises(ValueError, match="32 bytes"):
        AttachmentEncryptor(b"short")
    with pytest.raises(ValueError, match="chunk_size"):
        AttachmentEncryptor(chunk_size=0)


# --- round trips -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE])
def test_round_trip_real_chunk_size(size: int) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    ciphertext, ref = encrypt(data, piece=rng.choice([0, 1000, 65536, CHUNK_SIZE + 7]))
    assert len(ciphertext) == ciphertext_size(size)
    cuts = [rng.randrange(len(ciphertext) + 1) for _ in range(8)] + [HEADER_SIZE, HEADER_SIZE + CHUNK_SIZE + ABYTES]
    assert decrypt(ciphertext, ref, cuts=cuts) == data
    verify(ciphertext, ref, cuts=cuts)


def test_decryptor_returns_each_chunk_as_soon_as_it_is_complete() -> None:
    data = bytes(range(40))
    ciphertext, ref = encrypt(data, chunk_size=SMALL)
    dec = AttachmentDecryptor(ref, chunk_size=SMALL)
    block = SMALL + ABYTES
    assert dec.push(ciphertext[: HEADER_SIZE + block - 1]) == b""
    assert dec.push(ciphertext[HEADER_SIZE + block - 1 : HEADER_SIZE + block]) == data[:SMALL]
    assert dec.push(ciphertext[HEADER_SIZE + block : -1]) == data[SMALL : 2 * SMALL]
    assert dec.push(ciphertext[-1:]) == data[2 * SMALL :]  # the short final chunk: ct_size says it is complete
    dec.finish()


@given(
    data=st.binary(max_size=300),
    chunk_size=st.integers(min_value=1, max_value=64),
    piece=st.integers(min_value=0, max_value=70),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
@settings(max_examples=300, deadline=None)
def test_round_trip_any_split(data: bytes, chunk_size: int, piece: int, cuts: list[int]) -> None:
    ciphertext, ref = encrypt(data, chunk_size=chunk_size, piece=piece)
    assert len(ciphertext) == ciphertext_size(len(data), chunk_size=chunk_size)
    assert decrypt(ciphertext, ref, chunk_size=chunk_size, cuts=cuts) == data
    verify(ciphertext, ref, chunk_size=chunk_size, cuts=cuts)


@given(
    data=st.binary(min_size=1, max_size=120),
    position=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
@settings(max_examples=200, deadline=None)
def test_any_flipped_bit_is_caught(data: bytes, position: int, bit: int, cuts: list[int]) -> None:
    ciphertext, ref = encrypt(data, chunk_size=SMALL)
    tampered = bytearray(ciphertext)
    tampered[position % len(tampered)] ^= 1 << bit
    _assert_refused(bytes(tampered), ref, cuts=cuts)


# --- tampering -------------------------------------------------------------------------------------------------------


def _assert_refused(ciphertext: bytes, ref: AttachmentRef, *, verifier: bool = True, cuts: Iterable[int] = ()) -> None:
    """Both the decryptor and (where the manifest's ciphertext digest can tell) the verifier refuse."""
    cut_list = list(cuts)
    with pytest.raises(AttachmentError):
        decrypt(ciphertext, ref, chunk_size=SMALL, cuts=cut_list)
    if verifier:
        with pytest.raises(AttachmentError):
            verify(ciphertext, ref, chunk_size=SMALL, cuts=cut_list)


@pytest.fixture
def stream() -> tuple[bytes, bytes, AttachmentRef]:
    data = random.Random(7).randbytes(3 * SMALL + 5)  # three full chunks and a short final one
    ciphertext, ref = encrypt(data, chunk_size=SMALL, key=KEY)
    return data, ciphertext, ref


Stream = tuple[bytes, bytes, AttachmentRef]


def test_the_untampered_stream_passes(stream: Stream) -> None:
    data, ciphertext, ref = stream
    assert decrypt(ciphertext, ref, chunk_size=SMALL) == data
    verify(ciphertext, ref, chunk_size=SMALL)


def test_truncated_at_a_chunk_boundary(stream: Stream) -> None:
    data, ciphertext, ref = stream
    header, blocks = chunks(ciphertext, SMALL)
    truncated = header + b"".join(blocks[:-1])
    with pytest.raises(AttachmentError, match="truncated"):
        decrypt(truncated, ref, chunk_size=SMALL)
    _assert_refused(truncated, ref)
    # Even under a manifest that describes the truncated stream, the missing FINAL tag is caught.
    forged = matching_ref(ref, truncated, data[: 3 * SMALL])
    with pytest.raises(AttachmentError, match="wrong tag"):
        decrypt(truncated, forged, chunk_size=SMALL)


def test_only_the_header(stream: Stream) -> None:
    _, ciphertext, ref = stream
    _assert_refused(ciphertext[:HEADER_SIZE], ref)
    _assert_refused(ciphertext[: HEADER_SIZE - 1], ref)
    _assert_refused(b"", ref)


def test_truncated_mid_chunk(stream: Stream) -> None:
    _, ciphertext, ref = stream
    for cut in (HEADER_SIZE + 5, HEADER_SIZE + SMALL + ABYTES + 3, len(ciphertext) - 1):
        _assert_refused(ciphertext[:cut], ref)


def test_truncated_mid_chunk_under_a_matching_manifest(stream: Stream) -> None:
    # ct_size matches but does not follow from size: refused before any decryption.
    data, ciphertext, ref = stream
    truncated = ciphertext[:-1]
    with pytest.raises(AttachmentError, match="inconsistent"):
        AttachmentDecryptor(matching_ref(ref, truncated, data), chunk_size=SMALL)


def test_two_chunks_swapped(stream: Stream) -> None:
    _, ciphertext, ref = stream
    header, blocks = chunks(ciphertext, SMALL)
    blocks[0], blocks[1] = blocks[1], blocks[0]
    swapped = header + b"".join(blocks)
    with pytest.raises(AttachmentError, match="authenticate"):
        decrypt(swapped, ref, chunk_size=SMALL)
    _assert_refused(swapped, ref)


def test_chunk_substituted_from_another_attachment_under_the_same_key(stream: Stream) -> None:
    data, ciphertext, ref = stream
    other_ciphertext, _ = encrypt(bytes(len(data)), chunk_size=SMALL, key=KEY)
    header, blocks = chunks(ciphertext, SMALL)
    _, other_blocks = chunks(other_ciphertext, SMALL)
    for index in range(len(blocks)):
        substituted = header + b"".join(other_blocks[index] if i == index else b for i, b in enumerate(blocks))
        with pytest.raises(AttachmentError, match="authenticate"):
            decrypt(substituted, ref, chunk_size=SMALL)
        _assert_refused(substituted, ref)


def test_header_substituted_from_another_attachment(stream: Stream) -> None:
    data, ciphertext, ref = stream
    other_ciphertext, _ = encrypt(data, chunk_size=SMALL, key=KEY)
    _assert_refused(other_ciphertext[:HEADER_SIZE] + ciphertext[HEADER_SIZE:], ref)


@pytest.mark.parametrize("where", ["header", "first chunk", "tag", "final chunk", "last byte"])
def test_flipped_byte(stream: Stream, where: str) -> None:
    _, ciphertext, ref = stream
    position = {
        "header": 3,
        "first chunk": HEADER_SIZE + 1,  # the encrypted tag byte of the first chunk
        "tag": HEADER_SIZE + SMALL + ABYTES - 1,  # the MAC of the first chunk
        "final chunk": len(ciphertext) - 10,
        "last byte": len(ciphertext) - 1,
    }[where]
    tampered = bytearray(ciphertext)
    tampered[position] ^= 0x80
    _assert_refused(bytes(tampered), ref)


@pytest.mark.parametrize("extra", [b"\x00", b"x" * 17, b"y" * (SMALL + ABYTES)])
def test_extra_bytes_after_final(stream: Stream, extra: bytes) -> None:
    _, ciphertext, ref = stream
    with pytest.raises(AttachmentError, match="longer than its manifest"):
        decrypt(ciphertext + extra, ref, chunk_size=SMALL)
    _assert_refused(ciphertext + extra, ref)
    verifier = CiphertextVerifier(ref, chunk_size=SMALL)
    verifier.push(ciphertext)
    with pytest.raises(AttachmentError, match="longer"):  # refused as soon as ct_size is exceeded
        verifier.push(extra)


def test_chunk_appended_after_final_under_a_matching_manifest() -> None:
    # A full-chunk stream extended by one more chunk of the same stream state cannot be forged without the key,
    # so take the strongest case: the encryptor's own FINAL chunk followed by a chunk from a longer stream.
    data = bytes(2 * SMALL)
    short_ct, ref = encrypt(data, chunk_size=SMALL, key=KEY)
    long_ct, _ = encrypt(bytes(3 * SMALL), chunk_size=SMALL, key=KEY)
    extended = short_ct + chunks(long_ct, SMALL)[1][-1]
    forged = matching_ref(ref, extended, bytes(3 * SMALL))
    with pytest.raises(AttachmentError, match="wrong tag"):
        decrypt(extended, forged, chunk_size=SMALL)


@pytest.mark.parametrize(
    "change",
    [
        {"size": 3 * SMALL + 4, "ct_size": ciphertext_size(3 * SMALL + 4, chunk_size=SMALL)},
        {"size": 3 * SMALL + 6, "ct_size": ciphertext_size(3 * SMALL + 6, chunk_size=SMALL)},
        {"sha256": "0" * 64},
        {"ct_sha256": "0" * 64},
    ],
    ids=["size-smaller", "size-larger", "sha256", "ct_sha256"],
)
def test_wrong_manifest_entry(stream: Stream, change: dict[str, object]) -> None:
    _, ciphertext, ref = stream
    wrong = ref.model_copy(update=change)
    with pytest.raises(AttachmentError):
        decrypt(ciphertext, wrong, chunk_size=SMALL)
    if "sha256" not in change:  # the verifier sees only the ciphertext, so a wrong plaintext digest is not its job
        with pytest.raises(AttachmentError):
            verify(ciphertext, wrong, chunk_size=SMALL)


def test_wrong_plaintext_digest_is_named(stream: Stream) -> None:
    _, ciphertext, ref = stream
    with pytest.raises(AttachmentError, match="plaintext SHA-256"):
        decrypt(ciphertext, ref.model_copy(update={"sha256": "0" * 64}), chunk_size=SMALL)
    with pytest.raises(AttachmentError, match="ciphertext SHA-256"):
        decrypt(ciphertext, ref.model_copy(update={"ct_sha256": "0" * 64}), chunk_size=SMALL)


def test_wrong_key(stream: Stream) -> None:
    _, ciphertext, ref = stream
    wrong = ref.model_copy(update={"key": "B" + ref.key[1:]})
    with pytest.raises(AttachmentError, match="authenticate"):
        decrypt(ciphertext, wrong, chunk_size=SMALL)


def test_malformed_key_in_manifest(stream: Stream) -> None:
    _, _, ref = stream
    for key in ("!" * 43, ref.key[:42] + "_"):  # not base64url; non-canonical trailing bits
        with pytest.raises(AttachmentError, match="key"):
            AttachmentDecryptor(ref.model_copy(update={"key": key}), chunk_size=SMALL)


def test_a_manifest_with_a_key_that_can_never_decrypt_is_refused_when_parsed(stream: Stream) -> None:
    """On receipt (check 15), not only when a user opens the attachment: a peer must not get a receipt for an
    attachment nobody can ever decrypt."""
    _, _, ref = stream
    payload = MessagePayload.parse(
        {"id": new_message_id(), "from": "ar.mj", "to": "au.ag", "kind": "request", "iat": 0,
         "marking": {"level": "CONFIDENTIAL", "caveats": []}, "attachments": [ref.model_dump()]}
    )  # fmt: skip
    check_manifest(payload)
    for key in ("!" * 43, ref.key[:42] + "_", ref.key[:42] + "B", ref.key[:42] + "=", ref.key[:42] + "\u00e9"):
        bad = payload.model_copy(update={"attachments": [ref.model_copy(update={"key": key})]})
        with pytest.raises(InvalidMessage, match=r"^MessagePayload: attachments\.0\.key: must be 32 bytes"):
            check_manifest(bad)
        # a stored payload is parsed again when opened: it still parses, and only its attachment fails then
        assert MessagePayload.parse(bad.model_dump(by_alias=True)).attachments[0].key == key


def test_a_manifest_of_more_than_256_entries_is_refused_on_receipt(stream: Stream) -> None:
    _, _, ref = stream
    payload = MessagePayload.parse(
        {"id": new_message_id(), "from": "ar.mj", "to": "au.ag", "kind": "request", "iat": 0,
         "marking": {"level": "CONFIDENTIAL", "caveats": []}, "attachments": [ref.model_dump()] * MAX_ATTACHMENTS}
    )  # fmt: skip
    check_manifest(payload)
    more = payload.model_copy(update={"attachments": [ref] * (MAX_ATTACHMENTS + 1)})
    with pytest.raises(InvalidMessage, match="at most 256 per message"):
        check_manifest(more)


def test_inconsistent_ct_size(stream: Stream) -> None:
    _, _, ref = stream
    wrong = ref.model_copy(update={"ct_size": ref.ct_size + 1})
    with pytest.raises(AttachmentError, match="inconsistent"):
        AttachmentDecryptor(wrong, chunk_size=SMALL)
    with pytest.raises(AttachmentError, match="inconsistent"):
        CiphertextVerifier(wrong, chunk_size=SMALL)


def test_a_failed_decryptor_stays_failed(stream: Stream) -> None:
    _, ciphertext, ref = stream
    dec = AttachmentDecryptor(ref, chunk_size=SMALL)
    tampered = bytearray(ciphertext)
    tampered[HEADER_SIZE + 2] ^= 1
    with pytest.raises(AttachmentError):
        dec.push(bytes(tampered))
    with pytest.raises(AttachmentError, match="already failed"):
        dec.push(b"")
    with pytest.raises(AttachmentError, match="already failed"):
        dec.finish()


def test_errors_carry_no_plaintext_or_key(stream: Stream) -> None:
    data, ciphertext, ref = stream
    tampered = bytearray(ciphertext)
    tampered[-1] ^= 1
    with pytest.raises(AttachmentError) as info:
        decrypt(bytes(tampered), ref, chunk_size=SMALL)
    text = f"{info.value!s} {info.value!r}"
    assert ref.key not in text
    assert data.hex()[:16] not in text
    assert info.value.code == "attachment-corrupt"


# --- memory ---------------------------------------------------------------------------------------------------------


def _generated(total: int, piece: int) -> Iterator[bytes]:
    """``total`` bytes of varying content, ``piece`` bytes at a time, never all in memory."""
    seed = hashlib.sha256(b"comity attachment memory test").digest()[:24]
    for index in range(total // piece):
        yield (seed + index.to_bytes(8, "big")) * (piece // 32)


def test_memory_stays_constant_for_64_mib(tmp_path: Path) -> None:
    """Encrypt 64 MiB generated on the fly to a file, then verify and decrypt it from the file in unaligned reads."""
    total, piece, read_size = 64 << 20, 64 * 1024, 100_003
    expected = hashlib.sha256()
    for part in _generated(total, piece):
        expected.update(part)
    path = tmp_path / "attachment.bin"

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        enc = AttachmentEncryptor()
        with path.open("wb") as sink:
            sink.write(enc.start())
            for part in _generated(total, piece):
                sink.write(enc.push(part))
            sink.write(enc.finish())
        ref = enc.manifest_entry("big.bin", "application/octet-stream")

        dec, verifier, plain_hash, produced = AttachmentDecryptor(ref), CiphertextVerifier(ref), hashlib.sha256(), 0
        with path.open("rb") as source:
            while ciphertext := source.read(read_size):
                verifier.push(ciphertext)
                plaintext = dec.push(ciphertext)
                plain_hash.update(plaintext)
                produced += len(plaintext)
        verifier.finish()
        dec.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert (ref.size, produced, ref.ct_size) == (total, total, ciphertext_size(total))
    assert path.stat().st_size == ref.ct_size
    assert plain_hash.hexdigest() == expected.hexdigest() == ref.sha256
    assert peak < 8 << 20, f"peak traced memory {peak / (1 << 20):.1f} MiB"
