"""processors.verifier.replay: one chain's records and checkpoints replayed, findings named."""

from __future__ import annotations

import dataclasses

import pytest

from processors.integrity.checkpoint import Checkpoint, sign_checkpoint
from processors.integrity.merkle import CompactRange
from processors.integrity.record import ChainedRecord
from processors.verifier.replay import verify_chain_fields
from sealtrail.infra.errors import IntegrityError
from tests.unit.verifier_support import (
    CHAIN,
    ORIGIN,
    SIGNER,
    build,
    checkpoint,
    cps,
    item,
    kinds,
    ring,
    run,
    signer,
    src,
)


def test_clean_chain_verifies_and_is_anchored() -> None:
    recs = build(20)
    result = run(src(recs), cps(checkpoint(recs, 8), checkpoint(recs, 20), checkpoint(recs, 0)))
    assert result.ok and result.anchored
    assert result.records_verified == 20 and result.checkpoints_verified == 3
    assert result.state is not None and result.state.size == 20 and result.state.offset == 19


def test_chain_without_checkpoint_is_linked_not_anchored() -> None:
    recs = build(5)
    result = run(src(recs), [])
    assert result.ok and not result.anchored
    assert any("not anchored" in w for w in result.warnings)
    strict = run(src(recs), [], require_anchored=True)
    assert kinds(strict) == {"not_anchored"}


@pytest.mark.parametrize(
    ("tamper", "kind"),
    [
        ("payload", "hash_mismatch"),
        ("prev_hash", "chain_broken"),
        ("duplicate", "seq_repeat"),
        ("gap", "seq_gap"),
        ("first_deleted", "records_deleted"),
    ],
)
def test_record_tampering_is_named(tamper: str, kind: str) -> None:
    recs = build(10)
    items = src(recs)
    if tamper == "payload":
        items[4] = item(4, dataclasses.replace(recs[4], payload=b"evil"))
    elif tamper == "prev_hash":
        forged = dataclasses.replace(recs[4], prev_hash=bytes(32))
        items[4] = item(4, dataclasses.replace(forged, hash=forged.recompute()))
    elif tamper == "duplicate":
        items.append(item(10, recs[9]))
    elif tamper == "gap":
        del items[5]
    else:
        items = items[3:]
    result = run(items, [])
    assert kind in kinds(result)
    finding = result.findings[0]
    assert finding.chain == CHAIN and finding.seq is not None and finding.offset is not None
    assert result.state is None


@pytest.mark.parametrize(
    ("tamper", "kind"),
    [
        ("other_chain", "malformed_record"),
        ("short_hash", "malformed_record"),
        ("seq_too_big", "seq_gap"),
        ("ingested_out_of_range", "malformed_record"),
        ("hash", "hash_mismatch"),
    ],
)
def test_records_the_fast_path_rejects_get_the_reference_finding(tamper: str, kind: str) -> None:
    # verify_chain_fields checks records inline and hands any it does not pass to check_record.
    recs = build(6)
    fields = [
        (r.chain, r.seq, r.prev_hash, r.hash, r.source_offset, r.ingested_at_us, r.payload)
        for r in recs
    ]
    c, seq, prev, h, off, ts, payload = fields[3]
    fields[3] = {
        "other_chain": ("audit.events/9", seq, prev, h, off, ts, payload),
        "short_hash": (c, seq, prev, h[:31], off, ts, payload),
        "seq_too_big": (c, 1 << 64, prev, h, off, ts, payload),
        "ingested_out_of_range": (c, seq, prev, h, off, 1 << 63, payload),
        "hash": (c, seq, prev, bytes(32), off, ts, payload),
    }[tamper]
    items = [(i, f) for i, f in enumerate(fields)]
    result = verify_chain_fields(CHAIN, items, [], ring(), origin=ORIGIN)  # type: ignore[arg-type]
    assert [f.kind for f in result.findings] == [kind]
    assert result.findings[0].offset == 3 and result.records_verified == 3


def test_undecodable_record_is_reported_with_its_offset() -> None:
    recs = build(3)
    problem = IntegrityError("bad bytes")
    result = run([*src(recs), (7, problem)], [])
    assert result.findings[0] is problem and problem.offset == 7


def test_low_watermark_above_zero_means_records_deleted() -> None:
    recs = build(3)
    assert "records_deleted" in kinds(run(src(recs), [], low_offset=5))
    st = run(src(recs), []).state
    assert st is not None  # deleted below the remembered head: still found incrementally
    assert kinds(run(src(recs[2:], start=2), [], state=st, low_offset=1)) == {"records_deleted"}


def test_checkpoint_problems_are_named() -> None:
    recs = build(12)
    stranger = signer("stranger")
    edited = checkpoint(recs, 6).replace("\n6\n", "\n7\n", 1)
    wrong_root = sign_checkpoint(Checkpoint(ORIGIN, 6, b"\x01" * 32, recs[5].hash, 1), SIGNER)
    r = run(src(recs), cps(checkpoint(recs, 4, stranger), edited, wrong_root))
    assert kinds(r) == {"unknown_key", "bad_signature", "checkpoint_mismatch"}
    limited = run(src(recs), cps(checkpoint(recs, 12)), keyring=ring(lo=0, hi=10))
    assert kinds(limited) == {"key_out_of_range"}


def test_fork_and_truncation() -> None:
    recs = build(12)
    other = build(12, b"x")
    r = run(src(recs), cps(checkpoint(recs, 6), checkpoint(other, 6)))
    assert "fork" in kinds(r)
    cut = run(src(recs[:8]), cps(checkpoint(recs, 12)))
    assert kinds(cut) == {"truncated"}
    assert cut.findings[0].expected == 12 and cut.findings[0].found == 8


def test_offsite_checkpoint_catches_a_rebuilt_chain() -> None:
    old = build(10)
    rebuilt = build(10, b"x")  # re-chained, internally consistent, re-signed
    r = run(
        src(rebuilt), [*cps(checkpoint(rebuilt, 10)), *cps(checkpoint(old, 10), source="offsite")]
    )
    assert {"fork", "history_rewritten"} <= kinds(r)


def test_incremental_run_extends_the_remembered_head() -> None:
    recs = build(30)
    first = run(src(recs[:10]), cps(checkpoint(recs, 10)))
    assert first.state is not None
    second = run(
        src(recs[9:], start=9), cps(checkpoint(recs, 10), checkpoint(recs, 30)), state=first.state
    )
    assert second.ok, second.findings
    assert second.records_verified == 20 and second.state is not None and second.state.size == 30
    assert second.root == first.root or second.size == 30


def test_incremental_run_detects_rewrite_and_truncation() -> None:
    recs = build(20)
    st = run(src(recs[:10]), []).state
    assert st is not None
    rebuilt = build(20, b"x")
    rewritten = run(src(rebuilt[9:], start=9), cps(checkpoint(rebuilt, 20)), state=st)
    assert "history_rewritten" in kinds(rewritten)
    assert "truncated" in kinds(run([], [], state=st))


def test_full_replay_checks_the_remembered_head() -> None:
    recs = build(20)
    st = run(src(recs[:10]), []).state
    assert st is not None
    assert run(src(recs), [], state_check=st).ok
    rebuilt = build(20, b"x")
    assert "history_rewritten" in kinds(run(src(rebuilt), [], state_check=st))
    assert "truncated" in kinds(run(src(recs[:6]), [], state_check=st))


def test_probe_root_and_checkpoints_over_many_records() -> None:
    recs = build(2500)
    notes = cps(checkpoint(recs, 1000), checkpoint(recs, 2000))
    result = run(src(recs), notes, probe_size=1500)
    assert result.ok and result.checkpoints_verified == 2 and result.records_verified == 2500
    assert result.probe_root == checkpoint_root(recs, 1500)
    assert result.root == checkpoint_root(recs, 2500)


def checkpoint_root(records: list[ChainedRecord], size: int) -> bytes:
    cr = CompactRange()
    for r in records[:size]:
        cr.append(r.hash)
    return cr.root()
