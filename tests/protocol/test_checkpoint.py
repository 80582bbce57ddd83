"""protocol.checkpoint: the C2SP tlog-checkpoint body, with the published examples (../shared/vectors/signed-note)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.checkpoint import MAX_TREE_SIZE, Checkpoint, CheckpointError
from protocol.merkle import EMPTY_ROOT
from tests.vectors_path import VECTORS_DIR, vectors_path

ROOT_B64 = base64.b64encode(EMPTY_ROOT).decode()
URLSAFE_ROOT_B64 = base64.urlsafe_b64encode(b"\xff" * 32).decode()


def _vectors() -> dict[str, Any]:
    path = VECTORS_DIR / "signed-note" / "vectors.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


VECTORS = _vectors()
EXAMPLES: list[dict[str, Any]] = VECTORS.get("checkpoint_examples", [])
INVALID_BODIES: list[str] = VECTORS.get("checkpoint_invalid_bodies", [])


def test_published_checkpoint_vectors_are_present() -> None:
    vectors_path("signed-note", "vectors.json")
    assert len(EXAMPLES) == 1
    assert len(INVALID_BODIES) == 7


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["desc"] for e in EXAMPLES])
def test_published_example_parses_and_round_trips(example: dict[str, Any]) -> None:
    checkpoint = Checkpoint.from_text(example["text"])
    assert checkpoint.origin == example["origin"]
    assert checkpoint.size == example["size"]
    assert checkpoint.root_hash.hex() == example["root_hex"]
    assert checkpoint.extensions == ()
    assert checkpoint.to_text() == example["text"]


@pytest.mark.parametrize("body", INVALID_BODIES)
def test_published_invalid_bodies_are_rejected(body: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.from_text(body)


# Each rule on its own, with an otherwise valid body (the published invalid bodies also carry a short hash).
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("log\n5\n", "3 lines|2 lines"),
        (f"\n5\n{ROOT_B64}\n", "origin is empty"),
        (f"log\n5\n{ROOT_B64}", "end with a newline"),
        (f"log\n05\n{ROOT_B64}\n", "leading zeroes"),
        (f"log\n00\n{ROOT_B64}\n", "leading zeroes"),
        (f"log\n+5\n{ROOT_B64}\n", "decimal digits"),
        (f"log\n 5\n{ROOT_B64}\n", "decimal digits"),
        (f"log\n5_0\n{ROOT_B64}\n", "decimal digits"),
        (f"log\n\u0665\n{ROOT_B64}\n", "decimal digits"),
        (f"log\n-1\n{ROOT_B64}\n", "decimal digits"),
        (f"log\n{2**64}\n{ROOT_B64}\n", r"2\*\*64"),
        (f"log\n{10**20}\n{ROOT_B64}\n", "decimal digits"),
        (f"log\n5\n{ROOT_B64[:-1]}\n", "base64"),
        (f"log\n5\n {ROOT_B64}\n", "base64"),
        (f"log\n5\n{base64.b64encode(EMPTY_ROOT[:31]).decode()}\n", "32 bytes"),
        (f"log\n5\n{URLSAFE_ROOT_B64}\n", "base64"),
        (f"log\n5\n{ROOT_B64}\n\n", "extension line is empty"),
        (f"log\n5\n{ROOT_B64}\nfine\n\nafter-empty\n", "extension line is empty"),
        (f"log\n5\n{ROOT_B64}\ntab\there\n", "control character"),
        (f"log\r\n5\n{ROOT_B64}\n", "control character"),
        (f"my log\n5\n{ROOT_B64}\n", "space or"),
        (f"log+1\n5\n{ROOT_B64}\n", "space or"),
        (f"log\u00a0x\n5\n{ROOT_B64}\n", "space or"),
    ],
)
def test_each_rule_rejects(text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.from_text(text)


def test_non_canonical_base64_is_rejected() -> None:
    # "=" padding with non-zero trailing bits decodes to the same 32 bytes under a lax decoder.
    canonical = ROOT_B64
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".index(canonical[-2])
    lax = canonical[:-2] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[last + 1] + "="
    assert base64.b64decode(lax) == EMPTY_ROOT
    with pytest.raises(CheckpointError, match="canonical"):
        Checkpoint.from_text(f"log\n5\n{lax}\n")


def test_construction_validates() -> None:
    with pytest.raises(CheckpointError, match="32 bytes"):
        Checkpoint("log", 1, b"short")
    with pytest.raises(CheckpointError, match="tree size"):
        Checkpoint("log", -1, EMPTY_ROOT)
    with pytest.raises(CheckpointError, match="tree size"):
        Checkpoint("log", MAX_TREE_SIZE + 1, EMPTY_ROOT)
    with pytest.raises(CheckpointError, match="newline"):
        Checkpoint("log", 1, EMPTY_ROOT, ("two\nlines",))
    assert Checkpoint("log", MAX_TREE_SIZE, EMPTY_ROOT).size == MAX_TREE_SIZE


def test_extensions_and_empty_tree_round_trip() -> None:
    checkpoint = Checkpoint("comity.example/ledger", 0, EMPTY_ROOT, ("ext one", "— two"))
    text = checkpoint.to_text()
    assert text == f"comity.example/ledger\n0\n{ROOT_B64}\next one\n— two\n"
    assert Checkpoint.from_text(text) == checkpoint


ORIGINS = st.text(
    st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="+"), min_size=1
).filter(lambda s: not any(c.isspace() for c in s))


@given(
    ORIGINS,
    st.integers(0, MAX_TREE_SIZE),
    st.binary(min_size=32, max_size=32),
    st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1), max_size=3),
)
def test_round_trip(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    assert Checkpoint.from_text(checkpoint.to_text()) == checkpoint


@given(st.text())
def test_garbage_gives_a_clean_error(text: str) -> None:
    try:
        checkpoint = Checkpoint.from_text(text)
    except CheckpointError:
        return
    assert checkpoint.to_text() == text
