"""protocol.merkle against a naive, recursive transcription of RFC 9162 section 2.1 (MTH, PATH, PROOF).

The tree under test is a dict of every perfect node, built only through ``append_needs`` and
``nodes_created_by_append``; each proof is assembled from exactly the nodes its ``*_needs`` call plans.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleError,
    NodeId,
    TreeBuilder,
    append_needs,
    consistency_needs,
    consistency_proof,
    inclusion_needs,
    inclusion_proof,
    leaf_hash,
    node_hash,
    nodes_created_by_append,
    root_hash,
    root_needs,
    verify_consistency,
    verify_inclusion,
)

# --- the naive reference: RFC 9162 2.1.1, 2.1.3.1, 2.1.4.1 word for word (memoised on the leaf range) -------------


class Reference:
    def __init__(self, entries: list[bytes]) -> None:
        self.entries = entries
        self._mth: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        if (lo, hi) not in self._mth:
            n = hi - lo
            if n == 0:
                value = hashlib.sha256(b"").digest()
            elif n == 1:
                value = hashlib.sha256(b"\x00" + self.entries[lo]).digest()
            else:
                k = _largest_power_of_two_below(n)
                value = hashlib.sha256(b"\x01" + self.mth(lo, lo + k) + self.mth(lo + k, hi)).digest()
            self._mth[(lo, hi)] = value
        return self._mth[(lo, hi)]

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _largest_power_of_two_below(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def proof(self, m: int, n: int) -> list[bytes]:
        return self._subproof(m, 0, n, True)

    def _subproof(self, m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if b else [self.mth(lo, hi)]
        k = _largest_power_of_two_below(n)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, b), self.mth(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


# --- the tree under test: every perfect node, built by appending -------------------------------------------------


def build_store(entries: list[bytes]) -> dict[NodeId, bytes]:
    store: dict[NodeId, bytes] = {}
    for size, entry in enumerate(entries):
        planned = {node: store[node] for node in append_needs(size)}
        for node, value in nodes_created_by_append(size, leaf_hash(entry), planned):
            assert node not in store
            store[node] = value
    return store


def only(store: dict[NodeId, bytes], needs: list[NodeId]) -> dict[NodeId, bytes]:
    assert len(needs) == len(set(needs))
    return {node: store[node] for node in needs}


def entries_of(size: int) -> list[bytes]:
    return [i.to_bytes(4, "big") * (i % 3) for i in range(size)]


def check_tree(entries: list[bytes], pairs: Callable[[int], range] | None = None) -> None:
    size = len(entries)
    ref = Reference(entries)
    store = build_store(entries)
    # A tree of n leaves has 2n - popcount(n) perfect nodes.
    assert len(store) == 2 * size - size.bit_count()
    log_bound = 2 * size.bit_length() + 2
    for n in range(size + 1):
        needs = root_needs(n)
        assert len(needs) == n.bit_count()
        root = root_hash(n, only(store, needs))
        assert root == ref.mth(0, n)
        for m in range(n):
            needs = inclusion_needs(m, n)
            assert len(needs) <= log_bound
            path = inclusion_proof(m, n, only(store, needs))
            assert path == ref.path(m, 0, n)
            verify_inclusion(store[(0, m)], m, n, path, root)
        for m in range(1, n + 1):
            needs = consistency_needs(m, n)
            assert len(needs) <= log_bound
            proof = consistency_proof(m, n, only(store, needs))
            assert proof == ref.proof(m, n)
            verify_consistency(m, n, proof, ref.mth(0, m), root)


def test_every_size_and_pair_up_to_70() -> None:
    check_tree(entries_of(70))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=0, max_size=300))
def test_random_trees_agree_with_the_reference(entries: list[bytes]) -> None:
    ref = Reference(entries)
    store = build_store(entries)
    size = len(entries)
    assert root_hash(size, only(store, root_needs(size))) == ref.mth(0, size)
    for m in range(size):
        assert inclusion_proof(m, size, only(store, inclusion_needs(m, size))) == ref.path(m, 0, size)
    for m in range(1, size + 1):
        assert consistency_proof(m, size, only(store, consistency_needs(m, size))) == ref.proof(m, size)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_pairs_in_a_large_tree(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, len(LARGE_ENTRIES)), label="n")
    m = data.draw(st.integers(0, n - 1), label="m")
    root = LARGE_REF.mth(0, n)
    path = inclusion_proof(m, n, only(LARGE_STORE, inclusion_needs(m, n)))
    assert path == LARGE_REF.path(m, 0, n)
    verify_inclusion(LARGE_STORE[(0, m)], m, n, path, root)
    proof = consistency_proof(m + 1, n, only(LARGE_STORE, consistency_needs(m + 1, n)))
    assert proof == LARGE_REF.proof(m + 1, n)
    verify_consistency(m + 1, n, proof, LARGE_REF.mth(0, m + 1), root)


LARGE_ENTRIES = entries_of(1500)
LARGE_REF = Reference(LARGE_ENTRIES)
LARGE_STORE = build_store(LARGE_ENTRIES)


# --- tampering is caught ---------------------------------------------------------------------------------------


def _flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_tampered_inclusion_proof_is_rejected(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 300), label="n")
    m = data.draw(st.integers(0, n - 1), label="m")
    path = inclusion_proof(m, n, LARGE_STORE)
    root, leaf = LARGE_REF.mth(0, n), LARGE_STORE[(0, m)]
    # Not the size: a root is not bound to a size (the signed checkpoint does that), and a path in a tree of n
    # leaves may have the same shape in a tree of n + 1 leaves (leaf 0 of 65 and of 66).
    choice = data.draw(st.sampled_from(["leaf", "root", "proof", "index", "drop", "extend"]))
    bit = data.draw(st.integers(0, 255), label="bit")
    if choice == "proof" and not path:
        choice = "extend"
    if choice == "leaf":
        leaf = _flip(leaf, bit)
    elif choice == "root":
        root = _flip(root, bit)
    elif choice == "proof":
        i = data.draw(st.integers(0, len(path) - 1))
        path[i] = _flip(path[i], bit)
    elif choice == "index":
        m = data.draw(st.integers(-1, 400).filter(lambda x: x != m), label="other m")
    elif choice == "drop" and path:
        path.pop(data.draw(st.integers(0, len(path) - 1)))
    else:
        path.insert(data.draw(st.integers(0, len(path))), bytes(HASH_SIZE))
    with pytest.raises(MerkleError):
        verify_inclusion(leaf, m, n, path, root)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_tampered_consistency_proof_is_rejected(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 300), label="n")
    m = data.draw(st.integers(1, n - 1), label="m")
    proof = consistency_proof(m, n, LARGE_STORE)
    root1, root2 = LARGE_REF.mth(0, m), LARGE_REF.mth(0, n)
    choice = data.draw(st.sampled_from(["root1", "root2", "proof", "drop", "extend", "swap"]))
    bit = data.draw(st.integers(0, 255), label="bit")
    if choice == "root1":
        root1 = _flip(root1, bit)
    elif choice == "root2":
        root2 = _flip(root2, bit)
    elif choice == "proof":
        i = data.draw(st.integers(0, len(proof) - 1))
        proof[i] = _flip(proof[i], bit)
    elif choice == "drop":
        proof.pop(data.draw(st.integers(0, len(proof) - 1)))
    elif choice == "extend":
        proof.insert(data.draw(st.integers(0, len(proof))), bytes(HASH_SIZE))
    else:
        root1, root2 = root2, root1
    with pytest.raises(MerkleError):
        verify_consistency(m, n, proof, root1, root2)


# --- edge rules and misuse -------------------------------------------------------------------------------------


def test_edge_rules() -> None:
    h = leaf_hash(b"x")
    verify_consistency(1, 1, [], h, h)
    with pytest.raises(MerkleError, match="empty tree"):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(MerkleError, match="empty tree"):
        verify_consistency(0, 1, [], EMPTY_ROOT, h)
    with pytest.raises(MerkleError, match="never shrinks"):
        verify_consistency(2, 1, [], h, h)
    with pytest.raises(MerkleError, match="forked"):
        verify_consistency(3, 3, [], h, EMPTY_ROOT)
    with pytest.raises(MerkleError, match="empty consistency proof"):
        verify_consistency(3, 3, [h], h, h)
    with pytest.raises(MerkleError, match="outside the tree"):
        verify_inclusion(h, 0, 0, [], EMPTY_ROOT)
    with pytest.raises(MerkleError, match="32 bytes"):
        verify_inclusion(h[:31], 0, 1, [], h[:31])
    with pytest.raises(MerkleError, match="not 32 bytes"):
        verify_inclusion(h, 0, 2, [h + b"\x00"], node_hash(h, h + b"\x00"))
    verify_inclusion(h, 0, 1, [], h)
    for bad in (-1, 1.0, True, "1", 2**64):
        with pytest.raises(MerkleError, match="integers"):
            verify_inclusion(h, bad, 2, [h], h)  # type: ignore[arg-type]
        with pytest.raises(MerkleError, match="integers"):
            verify_consistency(1, bad, [h], h, h)  # type: ignore[arg-type]


def test_misuse_raises_value_error() -> None:
    with pytest.raises(ValueError, match="outside the tree"):
        inclusion_needs(3, 3)
    with pytest.raises(ValueError, match="0 < size1 <= size2"):
        consistency_needs(0, 3)
    with pytest.raises(ValueError, match="0 < size1 <= size2"):
        consistency_needs(4, 3)
    with pytest.raises(ValueError, match="non-negative"):
        root_needs(-1)
    with pytest.raises(ValueError, match="missing from the mapping"):
        root_hash(3, {})
    with pytest.raises(ValueError, match="32 bytes"):
        nodes_created_by_append(0, b"entry", {})


def test_plans_are_logarithmic_at_scale() -> None:
    size = 2**40 + 2**20 + 12345
    assert len(root_needs(size)) == size.bit_count()
    assert len(append_needs(2**40 - 1)) == 40
    assert len(inclusion_needs(size // 3, size)) <= 2 * 41
    assert len(consistency_needs(size // 3, size)) <= 2 * 41


# --- TreeBuilder -------------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 300), st.integers(0, 300))
def test_tree_builder_matches_and_resumes(first: int, more: int) -> None:
    entries = LARGE_ENTRIES[: first + more]
    builder = TreeBuilder()
    for entry in entries[:first]:
        builder.append_leaf_hash(leaf_hash(entry))
    assert builder.size == first
    assert builder.root() == LARGE_REF.mth(0, first)
    assert builder.frontier() == [LARGE_STORE[node] for node in root_needs(first)]
    resumed = TreeBuilder.from_frontier(first, builder.frontier())
    for entry in entries[first:]:
        resumed.append_leaf_hash(leaf_hash(entry))
    assert resumed.root() == LARGE_REF.mth(0, first + more)


def test_tree_builder_rejects_a_wrong_frontier() -> None:
    with pytest.raises(ValueError, match="frontier of 2 hashes"):
        TreeBuilder.from_frontier(5, [EMPTY_ROOT])
    with pytest.raises(ValueError, match="32 bytes"):
        TreeBuilder().append_leaf_hash(b"entry")
    assert TreeBuilder().root() == EMPTY_ROOT
