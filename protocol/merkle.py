"""RFC 9162 section 2.1 Merkle tree math, sans-IO, over stored perfect-subtree hashes.

The store keeps the hash of every *perfect* subtree as a node ``(level, index)`` covering the leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 nodes are leaf hashes. Every operation here comes in two
halves so that the store fetches what it needs in one query and nothing ever rehashes the log:

- ``*_needs(...)`` plans: it returns the stored nodes the operation reads (O(log n) of them);
- the matching function assembles the answer from a mapping of those nodes.

A non-perfect subtree on the right edge of a tree (which RFC 9162 proofs do contain) is hashed as the fold of the
perfect subtrees under it, all of which are among the planned nodes. Verification follows RFC 9162 sections 2.1.3.2
and 2.1.4.2 step by step and raises :class:`MerkleError`; it never returns a boolean.

Misuse by the caller (a negative size, a proof asked for a leaf outside the tree, a missing node in the mapping)
raises ``ValueError``; only untrusted input handed to a verifier raises :class:`MerkleError`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from protocol.errors import ProtocolError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleError",
    "NodeId",
    "TreeBuilder",
    "append_needs",
    "consistency_needs",
    "consistency_proof",
    "inclusion_needs",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "nodes_created_by_append",
    "root_hash",
    "root_needs",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
NodeId = tuple[int, int]
"""``(level, index)`` of a perfect subtree: leaves ``[index * 2**level, (index + 1) * 2**level)``."""

# RFC 9162 section 2.1.1: the hash of an empty list is the hash of an empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class MerkleError(ProtocolError):
    """An inclusion or consistency proof does not verify against the given root hashes."""

    code = "merkle-proof-invalid"


def leaf_hash(entry: bytes) -> bytes:
    """``MTH({d(0)}) = SHA-256(0x00 || d(0))`` (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || MTH(left) || MTH(right))`` (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


# --- shapes: which perfect subtrees make up what -----------------------------------------------------------------


def _check_size(size: int) -> None:
    if size < 0:
        raise ValueError(f"tree size must be non-negative, got {size}")


def _range_nodes(begin: int, end: int) -> list[NodeId]:
    """The perfect subtrees, largest first, that RFC 9162 splits ``[begin, end)`` into.

    ``begin`` must be a multiple of the largest power of two not exceeding ``end - begin`` (always true for the
    whole tree and for a right-edge sibling), so the decomposition follows the bits of ``end - begin``.
    """
    nodes: list[NodeId] = []
    width = end - begin
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            nodes.append((level, begin >> level))
            begin += 1 << level
    return nodes


def _path_items(level: int, index: int, size: int) -> list[list[NodeId]]:
    """The audit path of perfect node ``(level, index)`` in the tree of ``size`` leaves, deepest sibling first.

    Each item is the list of perfect subtrees whose fold is that sibling's hash: one node for a perfect sibling,
    several for the non-perfect subtree on the right edge. With ``level = 0`` this is RFC 9162 PATH (2.1.3.1).
    """
    first_leaf = index << level
    # Above `inner` the path of `first_leaf` and of the last leaf coincide: only left siblings remain there.
    inner = (first_leaf ^ (size - 1)).bit_length()
    items: list[list[NodeId]] = []
    for lvl in range(level, inner):
        sibling = (first_leaf >> lvl) ^ 1
        begin = sibling << lvl
        end = min(begin + (1 << lvl), size)
        items.append(_range_nodes(begin, end))
    for lvl in range(max(level, inner), first_leaf.bit_length()):
        if first_leaf >> lvl & 1:
            items.append([(lvl, (first_leaf >> lvl) - 1)])
    return items


def _consistency_items(size1: int, size2: int) -> list[list[NodeId]]:
    """RFC 9162 PROOF(size1, D[size2]) (section 2.1.4.1) as lists of perfect subtrees to fold.

    SUBPROOF descends to the last perfect subtree of the old tree, ``(level, size1 / 2**level - 1)`` with ``level``
    the number of trailing zero bits of ``size1``; the proof is that node (omitted when ``size1`` is a power of
    two, as the verifier already holds it as the old root) followed by its audit path in the new tree.
    """
    if size1 == size2:
        return []
    level = (size1 & -size1).bit_length() - 1
    node: NodeId = (level, (size1 >> level) - 1)
    items = [] if size1 == 1 << level else [[node]]
    return items + _path_items(node[0], node[1], size2)


def _flatten(items: Sequence[Sequence[NodeId]]) -> list[NodeId]:
    seen: dict[NodeId, None] = {}
    for item in items:
        for node in item:
            seen.setdefault(node)
    return list(seen)


def _fold(nodes: Sequence[NodeId], hashes: Mapping[NodeId, bytes]) -> bytes:
    """Hash of the (possibly non-perfect) subtree made of ``nodes``, largest first: a right fold."""
    result = _get(hashes, nodes[-1])
    for node in reversed(nodes[:-1]):
        result = node_hash(_get(hashes, node), result)
    return result


def _get(hashes: Mapping[NodeId, bytes], node: NodeId) -> bytes:
    try:
        return hashes[node]
    except KeyError:
        raise ValueError(
            f"node {node} is missing from the mapping; pass every node that the *_needs call lists"
        ) from None


# --- append and root ---------------------------------------------------------------------------------------------


def append_needs(size: int) -> list[NodeId]:
    """The stored left siblings that appending the leaf at index ``size`` combines with, lowest level first."""
    _check_size(size)
    needs: list[NodeId] = []
    index, level = size, 0
    while index & 1:
        needs.append((level, index - 1))
        index >>= 1
        level += 1
    return needs


def nodes_created_by_append(size: int, leaf: bytes, nodes: Mapping[NodeId, bytes]) -> list[tuple[NodeId, bytes]]:
    """The nodes to store when the leaf hash ``leaf`` is appended at index ``size``: ``(0, size)`` and every perfect
    parent it completes. ``nodes`` holds (at least) what ``append_needs(size)`` lists."""
    if len(leaf) != HASH_SIZE:
        raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, got {len(leaf)}; hash the entry with leaf_hash first")
    created: list[tuple[NodeId, bytes]] = [((0, size), leaf)]
    current = leaf
    for level, index in append_needs(size):
        current = node_hash(_get(nodes, (level, index)), current)
        created.append(((level + 1, index >> 1), current))
    return created


def root_needs(size: int) -> list[NodeId]:
    """The perfect subtrees, largest (leftmost) first, whose fold is the root of the tree of ``size`` leaves: the
    frontier, at most ``log2(size) + 1`` nodes."""
    _check_size(size)
    return _range_nodes(0, size)


def root_hash(size: int, nodes: Mapping[NodeId, bytes]) -> bytes:
    """``MTH(D[size])`` (RFC 9162 section 2.1.1) from the nodes that ``root_needs(size)`` lists."""
    frontier = root_needs(size)
    return _fold(frontier, nodes) if frontier else EMPTY_ROOT


# --- proofs ------------------------------------------------------------------------------------------------------


def inclusion_needs(index: int, size: int) -> list[NodeId]:
    """The stored nodes that ``inclusion_proof(index, size, ...)`` reads."""
    return _flatten(_inclusion_items(index, size))


def inclusion_proof(index: int, size: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """RFC 9162 section 2.1.3.1 PATH(index, D[size]): the audit path of leaf ``index``, deepest sibling first."""
    return [_fold(item, nodes) for item in _inclusion_items(index, size)]


def _inclusion_items(index: int, size: int) -> list[list[NodeId]]:
    _check_size(size)
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside the tree of size {size}")
    return _path_items(0, index, size)


def consistency_needs(size1: int, size2: int) -> list[NodeId]:
    """The stored nodes that ``consistency_proof(size1, size2, ...)`` reads."""
    return _flatten(_checked_consistency_items(size1, size2))


def consistency_proof(size1: int, size2: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """RFC 9162 section 2.1.4.1 PROOF(size1, D[size2]). Empty when the sizes are equal."""
    return [_fold(item, nodes) for item in _checked_consistency_items(size1, size2)]


def _checked_consistency_items(size1: int, size2: int) -> list[list[NodeId]]:
    if not 0 < size1 <= size2:
        raise ValueError(f"a consistency proof needs 0 < size1 <= size2, got size1={size1}, size2={size2}")
    return _consistency_items(size1, size2)


# --- verification ------------------------------------------------------------------------------------------------


_MAX_SIZE = 2**64 - 1  # tree sizes and leaf indexes are uint64 in RFC 9162 structures and in checkpoints


def _check_ints(*values: object) -> None:
    # Verifiers take untrusted input, possibly straight from JSON: refuse non-integers instead of failing later.
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SIZE:
            raise MerkleError(f"tree sizes and leaf indexes are integers in [0, 2**64 - 1], got {value!r}")


def _check_proof(proof: Sequence[bytes], expected_length: int, what: str) -> None:
    # Reject a proof of the wrong length up front, as the reference implementation does: padding or truncation must
    # not be absorbed by the bit-walk below.
    if len(proof) != expected_length:
        raise MerkleError(f"{what} proof has {len(proof)} hashes, expected {expected_length}; request a fresh proof")
    if any(len(p) != HASH_SIZE for p in proof):
        raise MerkleError(f"{what} proof contains a hash that is not {HASH_SIZE} bytes")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that leaf hash ``leaf`` sits at ``index`` in the tree of ``size`` leaves with root hash ``root``.

    RFC 9162 section 2.1.3.2. Returns nothing; raises :class:`MerkleError` if the proof does not verify.
    """
    _check_ints(index, size)
    # Step 1: leaf_index < tree_size.
    if not index < size:
        raise MerkleError(f"leaf index {index} is outside the tree of size {size}")
    if len(leaf) != HASH_SIZE:
        raise MerkleError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
    _check_proof(proof, len(_path_items(0, index, size)), "inclusion")
    # Steps 2-3.
    fn, sn = index, size - 1
    r = leaf
    # Step 4.
    for p in proof:
        if sn == 0:
            raise MerkleError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # Step 5.
    if sn != 0:
        raise MerkleError("inclusion proof is shorter than the path to the root")
    if not hmac.compare_digest(r, root):
        raise MerkleError(f"inclusion proof for leaf {index} does not lead to the root of tree size {size}")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Check that the tree of ``size2`` leaves with root ``root2`` extends the tree of ``size1`` with root ``root1``.

    RFC 9162 section 2.1.4.2, plus the edge rules of the reference implementation: ``size1 > size2`` fails, a proof
    from the empty tree always fails (it proves nothing), and equal sizes need an empty proof and equal roots.
    Returns nothing; raises :class:`MerkleError` if the proof does not verify.
    """
    _check_ints(size1, size2)
    if size1 > size2:
        raise MerkleError(f"size1 ({size1}) is larger than size2 ({size2}): a log never shrinks")
    if size1 == 0:
        raise MerkleError("a consistency proof from the empty tree proves nothing; verify size1 >= 1")
    if size1 == size2:
        if proof:
            raise MerkleError("equal tree sizes need an empty consistency proof")
        if not hmac.compare_digest(root1, root2):
            raise MerkleError(f"two different roots for the same tree size {size1}: the log has forked")
        return
    _check_proof(proof, len(_consistency_items(size1, size2)), "consistency")
    # Step 1 holds: an expected length is never zero when size1 < size2. Step 2.
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    # Steps 3-4.
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:
            raise MerkleError("consistency proof is longer than expected")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise MerkleError("consistency proof is shorter than expected")
    if not hmac.compare_digest(fr, root1):
        raise MerkleError(f"consistency proof does not lead to the old root of tree size {size1}")
    if not hmac.compare_digest(sr, root2):
        raise MerkleError(f"consistency proof does not lead to the new root of tree size {size2}")


# --- streaming recomputation -------------------------------------------------------------------------------------


class TreeBuilder:
    """Recompute a root from a stream of leaf hashes in O(log n) memory (for auditors and monitors).

    The state is the frontier: the hashes of the perfect subtrees listed by ``root_needs(size)``, largest first.
    """

    def __init__(self) -> None:
        self.size = 0
        self._frontier: list[bytes] = []

    @classmethod
    def from_frontier(cls, size: int, frontier: Sequence[bytes]) -> TreeBuilder:
        """Resume from a saved ``frontier()`` of a tree of ``size`` leaves."""
        _check_size(size)
        if len(frontier) != size.bit_count():
            raise ValueError(f"a tree of size {size} has a frontier of {size.bit_count()} hashes, got {len(frontier)}")
        if any(len(h) != HASH_SIZE for h in frontier):
            raise ValueError(f"frontier hashes are {HASH_SIZE} bytes each")
        builder = cls()
        builder.size = size
        builder._frontier = list(frontier)
        return builder

    def append_leaf_hash(self, leaf: bytes) -> None:
        """Append the next leaf hash (``leaf_hash(entry)``, not the entry itself)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, got {len(leaf)}; hash the entry with leaf_hash")
        current, index = leaf, self.size
        while index & 1:
            current = node_hash(self._frontier.pop(), current)
            index >>= 1
        self._frontier.append(current)
        self.size += 1

    def frontier(self) -> list[bytes]:
        """The hashes of the perfect subtrees that ``root_needs(self.size)`` lists, in that order."""
        return list(self._frontier)

    def root(self) -> bytes:
        """``MTH`` of the leaves appended so far."""
        if not self._frontier:
            return EMPTY_ROOT
        result = self._frontier[-1]
        for h in reversed(self._frontier[:-1]):
            result = node_hash(h, result)
        return result
