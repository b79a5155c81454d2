"""Stored subtrees give exactly the proofs and roots of the reference Merkle code."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.integrity import merkle
from processors.integrity.subtrees import (
    MissingNode,
    Node,
    NodeBuilder,
    consistency_proof,
    consistency_ranges,
    inclusion_proof,
    inclusion_ranges,
    needed,
    perfect_cover,
    subtree_hash,
)


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(hashlib.sha256(i.to_bytes(8, "big")).digest()) for i in range(n)]


def _nodes(leaves: list[bytes], min_height: int) -> dict[Node, bytes]:
    builder = NodeBuilder(min_height)
    out: dict[Node, bytes] = {}
    for leaf in leaves:
        for node, value in builder.append(leaf):
            assert node not in out, "a node is emitted once"
            out[node] = value
    return out


def test_cover_is_aligned_and_maximal() -> None:
    assert perfect_cover(0, 13) == [Node(3, 0), Node(2, 2), Node(0, 12)]
    assert perfect_cover(5, 16) == [Node(0, 5), Node(1, 3), Node(3, 1)]
    assert perfect_cover(7, 7) == []


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(0, 3), st.data())
def test_builder_nodes_are_the_subtree_roots(n: int, min_height: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    nodes = _nodes(leaves, min_height)
    block = 1 << min_height
    # Exactly the perfect aligned subtrees of height >= min_height inside [0, n).
    expected = {Node(h, k) for h in range(min_height, n.bit_length()) for k in range(n >> h)}
    assert set(nodes) == expected
    for node, value in nodes.items():
        assert value == merkle.subtree_root(leaves.__getitem__, node.start, node.end)
    # Resuming at a block boundary emits the same nodes as one run.
    cut = data.draw(st.integers(0, n // block)) * block
    resumed = NodeBuilder.resume(cut, nodes, min_height)
    later = {node: value for leaf in leaves[cut:] for node, value in resumed.append(leaf)}
    assert later == {node: v for node, v in nodes.items() if node.end > cut}
    # Whole blocks given by their roots (as the store hashes them) emit the same nodes.
    by_block = NodeBuilder(min_height)
    blocks = {
        node: value
        for b in range(n // block)
        for node, value in by_block.append_block(
            merkle.subtree_root(leaves.__getitem__, b * block, (b + 1) * block)
        )
    }
    assert blocks == nodes


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 600), st.integers(0, 4), st.data())
def test_proofs_equal_the_reference(n: int, min_height: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    nodes = _nodes(leaves, min_height)
    size = data.draw(st.integers(1, n))
    index = data.draw(st.integers(0, size - 1))
    get = leaves.__getitem__
    proof = inclusion_proof(index, size, nodes, get, min_height)
    assert proof == merkle.inclusion_proof(index, size, get)
    root = merkle.subtree_root(get, 0, size)
    assert subtree_hash(0, size, nodes, get, min_height) == root
    merkle.verify_inclusion(leaves[index], index, size, proof, root, prehashed=True)
    size1 = data.draw(st.integers(0, size))
    assert consistency_proof(size1, size, nodes, get, min_height) == merkle.consistency_proof(
        size1, size, get
    )


def test_reads_are_logarithmic() -> None:
    # 10M leaves, 256-leaf blocks: a proof needs at most two blocks and ~2 log2(n) nodes.
    for index, size in [(0, 10_000_000), (9_999_999, 10_000_000), (4_321_987, 9_876_543)]:
        nodes, blocks = needed(inclusion_ranges(index, size))
        assert len(blocks) <= 2 and len(nodes) <= 2 * 24, (len(nodes), blocks)
        nodes, blocks = needed(consistency_ranges(index + 1, size))
        assert len(blocks) <= 3 and len(nodes) <= 3 * 24


def test_missing_node_is_named() -> None:
    leaves = _leaves(40)
    nodes = _nodes(leaves, 2)
    del nodes[Node(3, 1)]
    with pytest.raises(MissingNode) as info:
        inclusion_proof(0, 40, nodes, leaves.__getitem__, 2)
    assert info.value.node == Node(3, 1)
