"""The published RFC 9162 Merkle vectors (transparency-dev/merkle testdata, ../shared/vectors/rfc9162-merkle).

Every case of ``probes_hex.jsonl`` and every inclusion/consistency file of ``testdata/`` must agree with
``wantErr``: rejected cases raise :class:`MerkleError`, all others verify. The ``subtree*`` folders of the testdata
cover subtree proofs (draft-ietf-plants-merkle-tree-certs), which Comity does not implement.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocol.merkle import (
    EMPTY_ROOT,
    MerkleError,
    NodeId,
    append_needs,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    nodes_created_by_append,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.vectors_path import VECTORS_DIR, vectors_path

MERKLE_DIR = VECTORS_DIR / "rfc9162-merkle"
EXPECTED_CASES = 196
LEAF_INPUTS = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
ROOT_8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def _probe_cases() -> list[dict[str, Any]]:
    path = MERKLE_DIR / "probes_hex.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _testdata_files() -> list[Path]:
    root = MERKLE_DIR / "testdata"
    return sorted(p for kind in ("inclusion", "consistency") for p in (root / kind).rglob("*.json"))


PROBES = _probe_cases()
FILES = _testdata_files()


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


def _check(case: dict[str, Any], decode: Callable[[str], bytes]) -> None:
    proof = [decode(p) for p in case["proof"] or []]

    def verify() -> None:
        if "leafIdx" in case:
            verify_inclusion(decode(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, decode(case["root"]))
        else:
            verify_consistency(case["size1"], case["size2"], proof, decode(case["root1"]), decode(case["root2"]))

    if case["wantErr"]:
        with pytest.raises(MerkleError):
            verify()
    else:
        verify()


def test_all_published_cases_are_present() -> None:
    vectors_path("rfc9162-merkle", "probes_hex.jsonl")
    assert len(PROBES) == EXPECTED_CASES
    assert len(FILES) == EXPECTED_CASES
    assert {c["file"] for c in PROBES} == {str(p.relative_to(MERKLE_DIR / "testdata")) for p in FILES}


@pytest.mark.parametrize("case", PROBES, ids=[c["file"] for c in PROBES])
def test_probe(case: dict[str, Any]) -> None:
    _check(case, bytes.fromhex)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(MERKLE_DIR)) for p in FILES])
def test_testdata_file(path: Path) -> None:
    _check(json.loads(path.read_text(encoding="utf-8")), _b64)


def _eight_leaf_nodes() -> dict[NodeId, bytes]:
    nodes: dict[NodeId, bytes] = {}
    for index, entry in enumerate(LEAF_INPUTS):
        nodes.update(nodes_created_by_append(index, leaf_hash(bytes.fromhex(entry)), nodes))
    return nodes


def test_root_of_the_eight_leaf_tree() -> None:
    assert root_hash(8, _eight_leaf_nodes()).hex() == ROOT_8


def test_root_of_the_empty_tree() -> None:
    assert root_hash(0, {}) == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_our_proofs_reproduce_the_happy_paths() -> None:
    """The happy-path proofs over the eight-leaf tree are exactly what our stored-node proofs produce."""
    vectors_path("rfc9162-merkle", "probes_hex.jsonl")
    nodes = _eight_leaf_nodes()
    leaves = [nodes[(0, i)] for i in range(8)]
    happy = [c for c in PROBES if not c["wantErr"] and "/additional/" not in c["file"]]
    happy = [c for c in happy if "single-entry" not in c["file"]]
    assert happy
    for case in happy:
        proof = [bytes.fromhex(p) for p in case["proof"] or []]
        if "leafIdx" in case:
            assert bytes.fromhex(case["leafHash"]) == leaves[case["leafIdx"]]
            assert inclusion_proof(case["leafIdx"], case["treeSize"], nodes) == proof
            assert root_hash(case["treeSize"], nodes).hex() == case["root"]
        else:
            assert consistency_proof(case["size1"], case["size2"], nodes) == proof
            assert root_hash(case["size2"], nodes).hex() == case["root2"]


def test_append_reads_only_what_it_plans() -> None:
    nodes = _eight_leaf_nodes()
    planned = {k: nodes[k] for k in append_needs(7)}
    assert [node for node, _ in nodes_created_by_append(7, nodes[(0, 7)], planned)] == [(0, 7), (1, 3), (2, 1), (3, 0)]
