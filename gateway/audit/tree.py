"""Recompute the RFC 9162 tree from a stream of leaf hashes, a batch at a time.

:class:`protocol.merkle.TreeBuilder` appends one leaf per call; an auditor re-hashing millions of entries spends
most of its time in that Python loop. :class:`BatchTree` keeps the same frontier (the perfect subtrees whose fold
is the root, largest first) but extends it by a whole list of leaf hashes at once, level by level, so that the
hashing runs in list comprehensions. ``tests/gateway/test_audit.py`` checks it against ``TreeBuilder``.
"""

from __future__ import annotations

import hashlib

from protocol.merkle import EMPTY_ROOT, node_hash

__all__ = ["BatchTree"]

_sha256 = hashlib.sha256


class BatchTree:
    def __init__(self) -> None:
        self.size = 0
        self._frontier: list[bytes] = []  # one hash per set bit of size, largest subtree first

    def extend(self, leaves: list[bytes]) -> None:
        """Append leaf hashes (SHA-256(0x00 || entry)) in order."""
        if not leaves:
            return
        frontier = self._frontier
        count = len(leaves)
        level_nodes = list(leaves)
        start = self.size  # index, at the current level, of level_nodes[0]
        pending: list[bytes] = []  # right-edge nodes left unpaired, one per level, lowest level first
        while level_nodes:
            if start & 1:
                # the left sibling of the first node is the smallest subtree of the frontier
                level_nodes = [frontier.pop(), *level_nodes]
                start -= 1
            if len(level_nodes) & 1:
                pending.append(level_nodes.pop())
            else:
                pending.append(b"")
            it = iter(level_nodes)
            level_nodes = [_sha256(b"\x01" + left + right).digest() for left, right in zip(it, it, strict=True)]
            start >>= 1
        # the frontier of the new size: what remains (higher levels) then the unpaired nodes, highest level first
        frontier.extend(node for node in reversed(pending) if node)
        self.size += count

    def root(self) -> bytes:
        if not self._frontier:
            return EMPTY_ROOT
        result = self._frontier[-1]
        for digest in reversed(self._frontier[:-1]):
            result = node_hash(digest, result)
        return result

    def frontier(self) -> list[bytes]:
        return list(self._frontier)
