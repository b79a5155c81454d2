"""Inclusion and consistency proofs against signed checkpoints, as self-contained JSON files.

Generating reads the chain's record hashes from Kafka into a compact array (32 bytes per
record: 320 MB for 10 million records); verifying needs only the proof file and a key ring.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from processors.integrity import merkle
from processors.integrity.chains import origin_names_chain
from processors.integrity.checkpoint import Checkpoint, KeyRing, open_checkpoint
from processors.integrity.errors import (
    ChainBroken,
    IntegrityError,
    ProofInvalid,
    SequenceGap,
    Truncated,
)
from processors.integrity.merkle import EMPTY_ROOT, verify_consistency, verify_inclusion
from processors.integrity.note import open_note
from processors.integrity.record import ZERO_HASH, ChainedRecord
from sealtrail.infra.errors import ConfigError

__all__ = [
    "CONSISTENCY",
    "INCLUSION",
    "LeafHashes",
    "Proven",
    "make_consistency",
    "make_inclusion",
    "verify_proof",
]

INCLUSION = "sealtrail-inclusion-proof"
CONSISTENCY = "sealtrail-consistency-proof"
VERSION = 1


class LeafHashes:
    """Merkle leaf hashes of leaves 0..n-1 in one bytearray (32 bytes each), plus the record
    hashes of the few seqs asked for (``keep``)."""

    __slots__ = ("keep", "kept", "leaves", "size")

    def __init__(self, keep: Iterable[int] = ()) -> None:
        self.leaves = bytearray()
        self.size = 0
        self.keep = set(keep)
        self.kept: dict[int, bytes] = {}

    def append(self, record_hash: bytes) -> None:
        if self.size in self.keep:
            self.kept[self.size] = record_hash
        self.leaves += hashlib.sha256(b"\x00" + record_hash).digest()
        self.size += 1

    def record_hash(self, i: int) -> bytes:
        return self.kept[i]

    def leaf(self, i: int) -> bytes:
        return bytes(self.leaves[32 * i : 32 * i + 32])

    def root(self, size: int) -> bytes:
        return range_root(self.leaves, 0, size)

    @classmethod
    def from_records(
        cls, chain: str, records: Iterable[ChainedRecord], size: int, keep: Iterable[int] = ()
    ) -> LeafHashes:
        """Collect hashes of seq 0..size-1, checking seq and links on the way."""
        out = cls(keep)
        prev = ZERO_HASH
        for rec in records:
            if out.size >= size:
                break
            if rec.seq != out.size:
                raise SequenceGap(
                    f"chain {chain} has seq {rec.seq} where {out.size} was expected; run "
                    "'sealtrail verify' to see what is wrong",
                    chain=chain,
                    seq=rec.seq,
                    expected=out.size,
                    found=rec.seq,
                )
            if rec.prev_hash != prev:
                raise ChainBroken(
                    f"record {rec.seq} of chain {chain} does not link to the one before; run "
                    "'sealtrail verify'",
                    chain=chain,
                    seq=rec.seq,
                )
            out.append(rec.hash)
            prev = rec.hash
        if out.size < size:
            raise Truncated(
                f"chain {chain} holds {out.size} records, fewer than the {size} the checkpoint "
                "vouches for",
                chain=chain,
                expected=size,
                found=out.size,
            )
        return out


_sha256 = hashlib.sha256
_CHUNK = 1 << 16


def range_root(leaves: bytes | bytearray | memoryview, lo: int, hi: int) -> bytes:
    """RFC 6962 root of leaf hashes ``[lo, hi)`` of a 32-bytes-per-leaf array.

    Level by level, an odd last node is carried up unchanged: the same tree as the RFC's split at
    the largest power of two, computed with one SHA-256 per node and no per-leaf Python objects.
    """
    if hi <= lo:
        return EMPTY_ROOT
    level: bytes | bytearray = bytes(memoryview(leaves)[32 * lo : 32 * hi])
    n = hi - lo
    while n > 1:
        pairs = n // 2
        mv = memoryview(level)
        nxt = bytearray()
        # In chunks: a list of millions of digests would cost ~3x the array it builds.
        for start in range(0, pairs, _CHUNK):
            stop = min(pairs, start + _CHUNK)
            nxt += b"".join(
                [
                    _sha256(b"\x01" + mv[i : i + 64]).digest()
                    for i in range(64 * start, 64 * stop, 64)
                ]
            )
        if n & 1:
            nxt += mv[-32:]
        mv.release()
        level, n = nxt, pairs + (n & 1)
    return bytes(level)


def fast_inclusion_proof(index: int, size: int, leaves: bytes | bytearray) -> list[bytes]:
    """RFC 6962 ``PATH(index, D[0:size])`` over a leaf-hash array (same result as
    :func:`processors.integrity.merkle.inclusion_proof`, several times faster)."""
    return merkle.inclusion_path(index, size, lambda lo, hi: range_root(leaves, lo, hi))


def fast_consistency_proof(size1: int, size2: int, leaves: bytes | bytearray) -> list[bytes]:
    """RFC 6962 ``PROOF(size1, D[0:size2])`` over a leaf-hash array."""
    return merkle.consistency_path(size1, size2, lambda lo, hi: range_root(leaves, lo, hi))


def _hex_list(hashes: list[bytes]) -> list[str]:
    return [h.hex() for h in hashes]


def _check_root(chain: str, leaves: LeafHashes, cp: Checkpoint) -> None:
    if leaves.root(cp.size) != cp.root_hash:
        raise IntegrityError(
            f"the records of chain {chain} do not give the root of checkpoint {cp.size}; "
            "run 'sealtrail verify' before proving anything",
            chain=chain,
            seq=cp.size,
            expected=cp.root_hash,
        )


def make_inclusion(
    chain: str, seq: int, note: str, cp: Checkpoint, leaves: LeafHashes
) -> dict[str, Any]:
    """The inclusion proof of record ``seq`` in checkpoint ``cp`` (whose note is ``note``)."""
    _check_root(chain, leaves, cp)
    proof = fast_inclusion_proof(seq, cp.size, leaves.leaves)
    return {
        "type": INCLUSION,
        "version": VERSION,
        "chain": chain,
        "seq": seq,
        "record_hash": leaves.record_hash(seq).hex(),
        "tree_size": cp.size,
        "proof": _hex_list(proof),
        "checkpoint": note,
    }


def make_consistency(
    chain: str,
    old: tuple[str, Checkpoint],
    new: tuple[str, Checkpoint],
    leaves: LeafHashes,
) -> dict[str, Any]:
    """The consistency proof from checkpoint ``old`` to ``new`` (each ``(note, parsed)``)."""
    _check_root(chain, leaves, old[1])
    _check_root(chain, leaves, new[1])
    proof = fast_consistency_proof(old[1].size, new[1].size, leaves.leaves)
    return {
        "type": CONSISTENCY,
        "version": VERSION,
        "chain": chain,
        "from_size": old[1].size,
        "to_size": new[1].size,
        "proof": _hex_list(proof),
        "checkpoint_from": old[0],
        "checkpoint_to": new[0],
    }


@dataclass(frozen=True, slots=True)
class Proven:
    """What a proof file proved, in one sentence."""

    statement: str


def _hashes(doc: dict[str, Any], key: str) -> list[bytes]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(h, str) for h in value):
        raise ProofInvalid(
            f"proof field {key!r} must be a list of hex strings; the file is corrupt"
        )
    try:
        return [bytes.fromhex(h) for h in value]
    except ValueError:
        raise ProofInvalid(
            f"proof field {key!r} holds a non-hex value; the file is corrupt"
        ) from None


def _int(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if type(value) is not int or value < 0:
        raise ProofInvalid(
            f"proof field {key!r} must be a non-negative integer; the file is corrupt"
        )
    return value


def _open(note: Any, ring: KeyRing, chain: str) -> tuple[Checkpoint, str]:
    if not isinstance(note, str):
        raise ProofInvalid("the proof carries no checkpoint note; the file is corrupt")
    cp = open_checkpoint(note, ring)
    if not origin_names_chain(cp.origin, chain):
        raise ProofInvalid(
            f"the checkpoint is for {cp.origin!r}, not chain {chain!r}; "
            "the proof was tampered with",
            chain=chain,
            expected=chain,
            found=cp.origin,
        )
    _, signers = open_note(note, ring.verifiers())
    return cp, ", ".join(v.key_label for v in signers)


def _when(us: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat().replace("+00:00", "Z")


def verify_proof(text: str, ring: KeyRing) -> Proven:
    """Verify a proof file's content offline; raises an IntegrityError saying why not."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise ConfigError(
            "the proof file is not JSON; pass a file written by 'sealtrail prove'"
        ) from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ConfigError(
            "the file is not a version 1 sealtrail proof; re-create it with 'sealtrail prove'"
        )
    chain = doc.get("chain")
    if not isinstance(chain, str):
        raise ProofInvalid("proof field 'chain' is missing; the file is corrupt")
    if doc.get("type") == INCLUSION:
        seq, size = _int(doc, "seq"), _int(doc, "tree_size")
        (leaf,) = _hashes({"h": [doc.get("record_hash")]}, "h")
        cp, signers = _open(doc.get("checkpoint"), ring, chain)
        if cp.size != size:
            raise ProofInvalid(
                f"the proof claims tree size {size} but its checkpoint is for {cp.size}",
                chain=chain,
                seq=seq,
                expected=cp.size,
                found=size,
            )
        verify_inclusion(leaf, seq, size, _hashes(doc, "proof"), cp.root_hash)
        if seq == size - 1 and leaf != cp.head_hash:
            raise ProofInvalid(
                "the record is the checkpoint's head but its hash differs from the head hash",
                chain=chain,
                seq=seq,
                expected=cp.head_hash,
                found=leaf,
            )
        return Proven(
            f"record seq {seq} of chain {chain} with hash {leaf.hex()} is included in the log "
            f"at size {size}, root {cp.root_hash.hex()}, signed by {signers} at "
            f"{_when(cp.timestamp_us)}"
        )
    if doc.get("type") == CONSISTENCY:
        s1, s2 = _int(doc, "from_size"), _int(doc, "to_size")
        cp1, signers1 = _open(doc.get("checkpoint_from"), ring, chain)
        cp2, signers2 = _open(doc.get("checkpoint_to"), ring, chain)
        if (cp1.size, cp2.size) != (s1, s2) or cp1.origin != cp2.origin:
            raise ProofInvalid(
                f"the proof claims sizes {s1} -> {s2} but its checkpoints are for "
                f"{cp1.origin} {cp1.size} -> {cp2.origin} {cp2.size}",
                chain=chain,
                expected=(s1, s2),
                found=(cp1.size, cp2.size),
            )
        verify_consistency(s1, s2, _hashes(doc, "proof"), cp1.root_hash, cp2.root_hash)
        return Proven(
            f"the log of chain {chain} at size {s2}, root {cp2.root_hash.hex()} (signed by "
            f"{signers2} at {_when(cp2.timestamp_us)}) is an append-only extension of size {s1}, "
            f"root {cp1.root_hash.hex()} (signed by {signers1} at {_when(cp1.timestamp_us)})"
        )
    raise ConfigError(
        "the file is not a sealtrail proof (unknown 'type'); re-create it with 'sealtrail prove'"
    )
