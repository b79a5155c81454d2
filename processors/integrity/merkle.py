"""RFC 6962 / RFC 9162 Merkle tree hashing, compact ranges and proofs.

Vocabulary used throughout (and in docs/FORMAT.md):

* **leaf data** - the bytes a leaf commits to. In sealtrail that is a chained record's 32-byte
  ``hash``; leaf ``i`` is the record with ``seq == i``.
* **leaf hash** - ``SHA-256(0x00 || leaf data)``, see :func:`leaf_hash`.
* **node hash** - ``SHA-256(0x01 || left || right)``, see :func:`node_hash`.

Proof *generation* takes a callable returning the leaf hash of leaf ``i``, and computes every
needed subtree with a compact range: O(n) hashing per proof, O(log n) memory, so proofs over
millions of records can be streamed from storage. Verification raises :class:`ProofInvalid`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from processors.integrity.errors import MalformedCheckpoint, ProofInvalid

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_of",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256
GetLeafHash = Callable[[int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``: the Merkle hash of one leaf (data = a record hash)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the Merkle hash of an interior node."""
    return _sha256(b"\x01" + left + right).digest()


class CompactRange:
    """The roots of the perfect subtrees covering leaves ``[0, size)``, largest first.

    There is one hash per set bit of ``size``; appending costs amortised O(1) hashes and
    :meth:`root` costs O(log n). ``to_bytes()`` is the concatenation of :attr:`hashes`.
    """

    __slots__ = ("hashes", "size")

    def __init__(self) -> None:
        self.size = 0
        self.hashes: list[bytes] = []

    def append(self, leaf_data: bytes) -> None:
        """Append one leaf given its data (a record hash); hashes it with :func:`leaf_hash`."""
        self.append_leaf_hash(_sha256(b"\x00" + leaf_data).digest())

    def extend(self, leaves: list[bytes]) -> None:
        """Append many leaves given their data (record hashes): :meth:`append` in one loop."""
        hashes, size, sha = self.hashes, self.size, _sha256
        for data in leaves:
            hashes.append(sha(b"\x00" + data).digest())
            n = size
            while n & 1:
                right = hashes.pop()
                hashes[-1] = sha(b"\x01" + hashes[-1] + right).digest()
                n >>= 1
            size += 1
        self.size = size

    def append_leaf_hash(self, hash_: bytes) -> None:
        """Append one leaf given its already computed leaf hash."""
        hashes = self.hashes
        hashes.append(hash_)
        n = self.size
        while n & 1:
            right = hashes.pop()
            hashes[-1] = _sha256(b"\x01" + hashes[-1] + right).digest()
            n >>= 1
        self.size += 1

    def root(self) -> bytes:
        """The RFC 6962 Merkle tree hash of leaves ``[0, size)`` (EMPTY_ROOT when empty)."""
        hashes = self.hashes
        if not hashes:
            return EMPTY_ROOT
        acc = hashes[-1]
        for h in reversed(hashes[:-1]):
            acc = _sha256(b"\x01" + h + acc).digest()
        return acc

    def copy(self) -> CompactRange:
        """An independent copy."""
        other = CompactRange()
        other.size = self.size
        other.hashes = list(self.hashes)
        return other

    def to_bytes(self) -> bytes:
        """The hashes concatenated (``32 * popcount(size)`` bytes)."""
        return b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> CompactRange:
        """Rebuild a range from :meth:`to_bytes`; raises MalformedCheckpoint if inconsistent."""
        if size < 0:
            raise MalformedCheckpoint(
                f"compact range size {size} is negative; the stored range is corrupt",
                found=size,
            )
        want = HASH_SIZE * size.bit_count()
        if len(data) != want:
            raise MalformedCheckpoint(
                f"compact range for size {size} must be {want} bytes, got {len(data)}; "
                "the stored range is corrupt, rebuild it by replaying the chain",
                expected=want,
                found=len(data),
            )
        cr = cls()
        cr.size = size
        cr.hashes = [bytes(data[i : i + HASH_SIZE]) for i in range(0, want, HASH_SIZE)]
        return cr

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactRange):
            return NotImplemented
        return self.size == other.size and self.hashes == other.hashes

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CompactRange(size={self.size}, root={self.root().hex()})"


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of a list of leaf data (record hashes)."""
    cr = CompactRange()
    for data in leaves:
        cr.append(data)
    return cr.root()


def subtree_root(get_leaf_hash: GetLeafHash, start: int, end: int) -> bytes:
    """Merkle tree hash of leaves ``[start, end)``, fetching leaf hashes from the callable."""
    if end <= start:
        return EMPTY_ROOT
    cr = CompactRange()
    for i in range(start, end):
        cr.append_leaf_hash(get_leaf_hash(i))
    return cr.root()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


SubtreeRoot = Callable[[int, int], bytes]


def inclusion_path(index: int, size: int, subtree: SubtreeRoot) -> list[bytes]:
    """RFC 6962 ``PATH(index, D[0:size])`` with ``subtree(start, end)`` giving subtree hashes,
    leaf-side sibling first. How subtrees are hashed (callable, array) is the caller's choice."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    path: list[bytes] = []
    lo, hi, m = 0, size, index
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def consistency_path(size1: int, size2: int, subtree: SubtreeRoot) -> list[bytes]:
    """RFC 6962 ``PROOF(size1, D[0:size2])`` (empty when size1 is 0 or equals size2)."""
    if not 0 <= size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to size {size2}")
    if size1 == 0 or size1 == size2:
        return []
    path: list[bytes] = []
    lo, hi, m, complete = 0, size2, size1, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        path.append(subtree(lo, hi))
    path.reverse()
    return path


def inclusion_proof(index: int, size: int, get_leaf_hash: GetLeafHash) -> list[bytes]:
    """RFC 6962 ``PATH(index, D[0:size])``, leaf-side sibling first."""
    return inclusion_path(index, size, lambda lo, hi: subtree_root(get_leaf_hash, lo, hi))


def consistency_proof(size1: int, size2: int, get_leaf_hash: GetLeafHash) -> list[bytes]:
    """RFC 6962 ``PROOF(size1, D[0:size2])`` (empty when size1 is 0 or equals size2)."""
    return consistency_path(size1, size2, lambda lo, hi: subtree_root(get_leaf_hash, lo, hi))


def _check_hashes(what: str, hashes: Sequence[bytes]) -> None:
    for i, h in enumerate(hashes):
        if len(h) != HASH_SIZE:
            raise ProofInvalid(
                f"{what} element {i} is {len(h)} bytes, not {HASH_SIZE}; the proof is corrupt",
                expected=HASH_SIZE,
                found=len(h),
            )


def verify_inclusion(
    leaf: bytes,
    index: int,
    size: int,
    proof: Sequence[bytes],
    root: bytes,
    *,
    prehashed: bool = False,
) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` with ``root`` (RFC 9162).

    ``leaf`` is leaf *data* (a record hash) unless ``prehashed`` is true, in which case it is
    the leaf hash. Raises ProofInvalid on any mismatch.
    """
    if not 0 <= index < size:
        raise ProofInvalid(
            f"leaf index {index} is outside a tree of size {size}",
            seq=index,
            expected=size,
            found=index,
        )
    _check_hashes("inclusion proof", [leaf, root, *proof] if prehashed else [root, *proof])
    fn, sn = index, size - 1
    acc = leaf if prehashed else leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            raise ProofInvalid(f"inclusion proof for leaf {index} of {size} is too long", seq=index)
        if fn & 1 or fn == sn:
            acc = node_hash(p, acc)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            acc = node_hash(acc, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofInvalid(f"inclusion proof for leaf {index} of {size} is too short", seq=index)
    if acc != root:
        raise ProofInvalid(
            f"inclusion proof for leaf {index} of tree size {size} does not lead to the "
            "expected root; the leaf or the tree was altered",
            seq=index,
            expected=root,
            found=acc,
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree (size2, root2) extends the tree (size1, root1) (RFC 9162 2.1.4.2).

    Stricter than RFC 9162 in one place: for ``size1 == 0`` ``root1`` must be EMPTY_ROOT.
    Raises ProofInvalid on any mismatch.
    """

    def fail(why: str, expected: object = None, found: object = None) -> ProofInvalid:
        return ProofInvalid(
            f"consistency proof from size {size1} to {size2} {why}; "
            "the log history was rewritten or the proof is corrupt",
            expected=expected,
            found=found,
        )

    if not 0 <= size1 <= size2:
        raise fail("goes backwards", expected=size1, found=size2)
    _check_hashes("consistency proof", [root1, root2, *proof])
    if size1 == size2 or size1 == 0:
        if proof:
            raise fail("must be empty", expected=0, found=len(proof))
        want1 = root2 if size1 == size2 else EMPTY_ROOT
        if root1 != want1:
            raise fail("has mismatched roots", expected=want1, found=root1)
        return
    if not proof:
        raise fail("is empty")
    hashes = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is a node of tree 2
        hashes.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = hashes[0]
    for c in hashes[1:]:
        if sn == 0:
            raise fail("is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise fail("is too short")
    if fr != root1:
        raise fail("does not match the old root", expected=root1, found=fr)
    if sr != root2:
        raise fail("does not match the new root", expected=root2, found=sr)
