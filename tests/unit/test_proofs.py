"""processors.proofs: inclusion and consistency proofs, made and checked."""

from __future__ import annotations

import json

import pytest

from processors.integrity.checkpoint import parse_checkpoint_note
from processors.proofs import LeafHashes, make_consistency, make_inclusion, verify_proof
from sealtrail.infra.errors import IntegrityError
from tests.unit.verifier_support import CHAIN, build, checkpoint, ring, signer


def test_proofs_round_trip_and_tampering() -> None:
    recs = build(13)
    leaves = LeafHashes.from_records(CHAIN, recs, 13, keep=(7,))
    note13, note5 = checkpoint(recs, 13), checkpoint(recs, 5)
    cp13 = parse_checkpoint_note(note13).checkpoint
    cp5 = parse_checkpoint_note(note5).checkpoint
    inc = make_inclusion(CHAIN, 7, note13, cp13, leaves)
    assert "record seq 7" in verify_proof(json.dumps(inc), ring()).statement
    con = make_consistency(CHAIN, (note5, cp5), (note13, cp13), leaves)
    assert "append-only extension" in verify_proof(json.dumps(con), ring()).statement
    bad = dict(inc, record_hash=recs[6].hash.hex())
    with pytest.raises(IntegrityError) as err:
        verify_proof(json.dumps(bad), ring())
    assert err.value.kind == "proof_invalid"
    bad_con = dict(con, proof=[bytes(32).hex()] + con["proof"][1:])
    with pytest.raises(IntegrityError):
        verify_proof(json.dumps(bad_con), ring())
    with pytest.raises(IntegrityError) as unknown:
        verify_proof(json.dumps(inc), ring(signer("other")))
    assert unknown.value.kind == "unknown_key"


def test_fast_proofs_equal_the_reference_merkle_code() -> None:
    import hashlib

    from processors.integrity import merkle
    from processors.proofs import fast_consistency_proof, fast_inclusion_proof, range_root

    leaves = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(70))

    def get(i: int) -> bytes:
        return leaves[32 * i : 32 * i + 32]

    for size in (1, 2, 3, 5, 8, 13, 32, 33, 70):
        assert range_root(leaves, 0, size) == merkle.subtree_root(get, 0, size)
        for index in {0, size // 2, size - 1}:
            assert fast_inclusion_proof(index, size, leaves) == merkle.inclusion_proof(
                index, size, get
            )
        for old in {0, 1, size // 3, size - 1, size}:
            assert fast_consistency_proof(old, size, leaves) == merkle.consistency_proof(
                old, size, get
            )
