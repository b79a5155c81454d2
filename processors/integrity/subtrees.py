"""Stored Merkle subtrees: RFC 6962 proofs in O(log n) reads instead of reading the whole chain.

A *stored node* is the hash of a perfect, aligned subtree of height ``h >= min_height`` (default
8: 256 leaves), leaves ``[index * 2**h, (index + 1) * 2**h)``. The sink stores every such node
once its leaves are stored (:class:`NodeBuilder` emits them in order, about two per 256 leaves).
Every range an inclusion or consistency proof needs splits into at most ``2 log2 n`` aligned
perfect subtrees (:func:`perfect_cover`): the tall ones are stored nodes, the short ones hash at
most 256 leaves of one *block* (leaves ``[b * 256, (b + 1) * 256)``). So a proof reads
O(log n) nodes and at most a few blocks, whatever the chain's length.

Pure: no storage here. Callers fetch what :func:`needed` names and pass it to
:func:`subtree_hash`, or to :func:`inclusion_proof` / :func:`consistency_proof`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from processors.integrity import merkle

__all__ = [
    "MIN_HEIGHT",
    "MissingNode",
    "Node",
    "NodeBuilder",
    "consistency_proof",
    "consistency_ranges",
    "inclusion_proof",
    "inclusion_ranges",
    "needed",
    "perfect_cover",
    "perfect_root",
    "subtree_hash",
]

MIN_HEIGHT = 8
_sha256 = hashlib.sha256
LeafHash = Callable[[int], bytes]


@dataclass(frozen=True, slots=True, order=True)
class Node:
    """The perfect subtree of ``2**height`` leaves starting at leaf ``index * 2**height``."""

    height: int
    index: int

    @property
    def start(self) -> int:
        return self.index << self.height

    @property
    def end(self) -> int:
        return (self.index + 1) << self.height


class MissingNode(LookupError):  # noqa: N818 - a lookup, not an integrity finding
    """A stored node a proof needs is not in the store (yet)."""

    def __init__(self, node: Node) -> None:
        super().__init__(f"stored node height {node.height} index {node.index} is missing")
        self.node = node


def perfect_cover(lo: int, hi: int) -> list[Node]:
    """The maximal aligned perfect subtrees covering leaves ``[lo, hi)``, left to right."""
    if not 0 <= lo <= hi:
        raise ValueError(f"no leaf range [{lo}, {hi})")
    out: list[Node] = []
    while lo < hi:
        height = (hi - lo).bit_length() - 1
        if lo:
            height = min(height, (lo & -lo).bit_length() - 1)
        out.append(Node(height, lo >> height))
        lo += 1 << height
    return out


def perfect_root(leaf_hashes: list[bytes]) -> bytes:
    """The root of a perfect tree (a power-of-two count of leaf hashes)."""
    level = leaf_hashes
    while len(level) > 1:
        level = [
            _sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)
        ]
    return level[0]


def _rfc_cover(lo: int, hi: int) -> list[Node]:
    """The cover of a range whose RFC 6962 tree is its cover folded from the right: each part
    at least as large as everything after it (true of every range proofs ask for)."""
    cover = perfect_cover(lo, hi)
    for left, right in zip(cover, cover[1:], strict=False):
        if left.height <= right.height:
            raise ValueError(f"[{lo}, {hi}) is not a subtree of an RFC 6962 tree")
    return cover


def _node_hash(node: Node, nodes: Mapping[Node, bytes], leaf: LeafHash, min_height: int) -> bytes:
    if node.height >= min_height:
        value = nodes.get(node)
        if value is None:
            raise MissingNode(node)
        return value
    return perfect_root([leaf(i) for i in range(node.start, node.end)])


def subtree_hash(
    lo: int,
    hi: int,
    nodes: Mapping[Node, bytes],
    leaf: LeafHash,
    min_height: int = MIN_HEIGHT,
) -> bytes:
    """RFC 6962 ``MTH(D[lo:hi])`` from stored nodes and leaf hashes (``leaf(i)``)."""
    if hi <= lo:
        return merkle.EMPTY_ROOT
    hashes = [_node_hash(n, nodes, leaf, min_height) for n in _rfc_cover(lo, hi)]
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = _sha256(b"\x01" + h + acc).digest()
    return acc


def _recorded(run: Callable[[merkle.SubtreeRoot], object]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []

    def record(lo: int, hi: int) -> bytes:
        ranges.append((lo, hi))
        return b""

    run(record)
    return ranges


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes make the inclusion proof of ``index`` in tree ``size``."""
    return _recorded(lambda sub: merkle.inclusion_path(index, size, sub))


def consistency_ranges(size1: int, size2: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes make the consistency proof from ``size1`` to ``size2``."""
    return _recorded(lambda sub: merkle.consistency_path(size1, size2, sub))


def needed(
    ranges: Iterable[tuple[int, int]], min_height: int = MIN_HEIGHT
) -> tuple[set[Node], set[int]]:
    """What hashing ``ranges`` reads: stored nodes, and blocks (of ``2**min_height`` leaves)."""
    nodes: set[Node] = set()
    blocks: set[int] = set()
    for lo, hi in ranges:
        for node in _rfc_cover(lo, hi):
            if node.height >= min_height:
                nodes.add(node)
            else:
                blocks.add(node.start >> min_height)
    return nodes, blocks


def inclusion_proof(
    index: int,
    size: int,
    nodes: Mapping[Node, bytes],
    leaf: LeafHash,
    min_height: int = MIN_HEIGHT,
) -> list[bytes]:
    """RFC 6962 ``PATH(index, D[0:size])`` from stored nodes and leaf hashes."""
    return merkle.inclusion_path(
        index, size, lambda lo, hi: subtree_hash(lo, hi, nodes, leaf, min_height)
    )


def consistency_proof(
    size1: int,
    size2: int,
    nodes: Mapping[Node, bytes],
    leaf: LeafHash,
    min_height: int = MIN_HEIGHT,
) -> list[bytes]:
    """RFC 6962 ``PROOF(size1, D[0:size2])`` from stored nodes and leaf hashes."""
    return merkle.consistency_path(
        size1, size2, lambda lo, hi: subtree_hash(lo, hi, nodes, leaf, min_height)
    )


class NodeBuilder:
    """Appends leaf hashes in order and emits every stored node as soon as it is complete."""

    __slots__ = ("_block", "_stack", "min_height", "size")

    def __init__(self, min_height: int = MIN_HEIGHT) -> None:
        self.min_height = min_height
        self.size = 0
        self._block: list[bytes] = []
        self._stack: list[tuple[Node, bytes]] = []  # complete nodes awaiting their right sibling

    @classmethod
    def resume(
        cls, size: int, nodes: Mapping[Node, bytes], min_height: int = MIN_HEIGHT
    ) -> NodeBuilder:
        """Continue after ``size`` leaves (a whole number of blocks) given the nodes covering
        ``[0, size)``; raises :class:`MissingNode` if one is not there."""
        if size % (1 << min_height):
            raise ValueError(f"{size} leaves is not a whole number of blocks")
        builder = cls(min_height)
        for node in perfect_cover(0, size):
            value = nodes.get(node)
            if value is None:
                raise MissingNode(node)
            builder._stack.append((node, value))
        builder.size = size
        return builder

    def append(self, leaf_hash: bytes) -> list[tuple[Node, bytes]]:
        """Add the next leaf; the stored nodes it completes, lowest first."""
        self._block.append(leaf_hash)
        self.size += 1
        if len(self._block) < 1 << self.min_height:
            return []
        value = perfect_root(self._block)
        self._block = []
        self.size -= 1 << self.min_height
        return self.append_block(value)

    def append_block(self, block_root: bytes) -> list[tuple[Node, bytes]]:
        """Add a whole block at once given its root (the subtree of its ``2**min_height``
        leaves, e.g. hashed by the store); the stored nodes it completes, lowest first."""
        if self._block:
            raise ValueError("a block can only be appended at a block boundary")
        node = Node(self.min_height, self.size >> self.min_height)
        value = block_root
        self.size += 1 << self.min_height
        emitted = [(node, value)]
        stack = self._stack
        while stack and stack[-1][0].height == node.height:
            left, left_value = stack.pop()
            node = Node(node.height + 1, left.index >> 1)
            value = _sha256(b"\x01" + left_value + value).digest()
            emitted.append((node, value))
        stack.append((node, value))
        return emitted
