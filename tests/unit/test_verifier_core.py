"""The pure verifier core on chains built in memory: clean chains pass, each tamper is named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from processors.integrity.checkpoint import Checkpoint, KeyRing, origin_for, sign_checkpoint
from processors.integrity.merkle import CompactRange
from processors.integrity.note import Signer, generate_key
from processors.integrity.record import ChainedRecord, ChainHead, link
from processors.proofs import LeafHashes, make_consistency, make_inclusion, verify_proof
from processors.verifier import offsite
from processors.verifier.core import (
    ChainResult,
    ChRow,
    SourceCheckpoint,
    SourceRecord,
    verify_chain,
    verify_chain_fields,
    verify_rows,
)
from processors.verifier.report import Report, write_metrics
from processors.verifier.state import (
    ClickHouseState,
    load_clickhouse_state,
    load_state,
    save_state,
)
from sealtrail.errors import ConfigError, IntegrityError

CHAIN = "audit.events/0"
DEPLOY = "sealtrail.test"
ORIGIN = origin_for(DEPLOY, CHAIN)


def signer(name: str = "chainer") -> Signer:
    return Signer.from_private_key(generate_key(name)[0])


SIGNER = signer()


def ring(*signers: Signer, lo: int = 0, hi: int | None = None) -> KeyRing:
    r = KeyRing()
    for s in signers or (SIGNER,):
        r.add(s.verifier, lo, hi)
    return r


def build(n: int, tag: bytes = b"e") -> list[ChainedRecord]:
    head = ChainHead(CHAIN)
    return [link(head, 100 + i, 1_700_000_000_000_000 + i, tag + str(i).encode()) for i in range(n)]


def checkpoint(records: list[ChainedRecord], size: int, by: Signer = SIGNER) -> str:
    cr = CompactRange()
    for r in records[:size]:
        cr.append(r.hash)
    head = records[size - 1].hash if size else bytes(32)
    return sign_checkpoint(Checkpoint(ORIGIN, size, cr.root(), head, 1_700_000_000_000_000), by)


def src(records: list[ChainedRecord], start: int = 0) -> list[SourceRecord]:
    return [SourceRecord(start + i, r) for i, r in enumerate(records)]


def cps(*notes: str, source: str = "topic") -> list[SourceCheckpoint]:
    return [SourceCheckpoint(n, i, source) for i, n in enumerate(notes)]


def run(records: list[SourceRecord], notes: list[SourceCheckpoint], **kw: object) -> ChainResult:
    keyring = kw.pop("keyring", None) or ring()
    return verify_chain(CHAIN, records, notes, keyring, origin=ORIGIN, **kw)  # type: ignore[arg-type]


def kinds(result: ChainResult) -> set[str]:
    return {f.kind for f in result.findings}


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
        items[4] = SourceRecord(4, dataclasses.replace(recs[4], payload=b"evil"))
    elif tamper == "prev_hash":
        forged = dataclasses.replace(recs[4], prev_hash=bytes(32))
        items[4] = SourceRecord(4, dataclasses.replace(forged, hash=forged.recompute()))
    elif tamper == "duplicate":
        items.append(SourceRecord(10, recs[9]))
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


def test_fields_and_objects_give_the_same_result() -> None:
    recs = build(2500)
    notes = cps(checkpoint(recs, 1000), checkpoint(recs, 2000))
    a = run(src(recs), notes, probe_size=1500)
    items = [
        (i, (r.chain, r.seq, r.prev_hash, r.hash, r.source_offset, r.ingested_at_us, r.payload))
        for i, r in enumerate(recs)
    ]
    b = verify_chain_fields(CHAIN, items, notes, ring(), origin=ORIGIN, probe_size=1500)
    assert a.ok and b.ok and a.checkpoints_verified == b.checkpoints_verified == 2
    assert (a.root, a.probe_root, a.state) == (b.root, b.probe_root, b.state)
    assert a.probe_root == checkpoint_root(recs, 1500)


def checkpoint_root(records: list[ChainedRecord], size: int) -> bytes:
    cr = CompactRange()
    for r in records[:size]:
        cr.append(r.hash)
    return cr.root()


def test_undecodable_record_is_reported_with_its_offset() -> None:
    recs = build(3)
    problem = IntegrityError("bad bytes")
    result = run([*src(recs), SourceRecord(7, problem=problem)], [])
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


def _row(r: ChainedRecord) -> ChRow:
    return ChRow(
        r.seq,
        r.prev_hash,
        r.hash,
        r.source_offset,
        r.ingested_at_us,
        r.payload,
        {"verb": r.payload.decode()},
    )


def _decode(row: ChRow) -> dict[str, object]:
    return {"verb": row.payload.decode()}


@pytest.mark.parametrize(
    "tamper", ["clean", "column", "payload", "deleted", "duplicated", "inserted", "rewritten"]
)
def test_clickhouse_rows(tamper: str) -> None:
    recs = build(10)
    root = run(src(recs), []).root
    rows = [_row(r) for r in recs]
    if tamper == "column":
        rows[3] = dataclasses.replace(rows[3], decoded={"verb": "delete"})
    elif tamper == "payload":
        rows[3] = dataclasses.replace(rows[3], payload=b"e99", decoded={"verb": "e99"})
    elif tamper == "deleted":
        del rows[4]
    elif tamper == "duplicated":
        rows.insert(5, rows[4])
    elif tamper == "inserted":
        fake = dataclasses.replace(rows[4], payload=b"fake", decoded={"verb": "fake"})
        rows.insert(5, fake)
    elif tamper == "rewritten":
        other = build(10, b"x")
        rows = [_row(r) for r in other]
    res = verify_rows(CHAIN, rows, _decode, size=10, expected_root=root)
    if tamper == "clean":
        assert res.ok and res.records_verified == 10
    else:
        assert {f.kind for f in res.findings} == {"clickhouse_mismatch"}
        if tamper != "rewritten":
            assert res.findings[0].seq is not None


def test_offsite_files_round_trip(tmp_path: Path) -> None:
    recs = build(5)
    notes = [checkpoint(recs, 2), checkpoint(recs, 5)]
    assert offsite.append_notes(tmp_path, CHAIN, notes) == 2
    assert offsite.append_notes(tmp_path, CHAIN, notes) == 0
    assert offsite.read_notes(tmp_path, CHAIN) == notes
    assert offsite.chains_in(tmp_path) == [CHAIN]
    # the chainer's --export-checkpoints writes the same format without re-reading the file
    offsite.write_notes(tmp_path, "audit.events/1", notes)
    assert offsite.read_notes(tmp_path, "audit.events/1") == notes
    (tmp_path / offsite.chain_file(tmp_path, CHAIN).name).write_text("junk\n")
    with pytest.raises(ConfigError):
        offsite.read_notes(tmp_path, CHAIN)


def test_state_round_trip_and_bad_file(tmp_path: Path) -> None:
    recs = build(7)
    st = run(src(recs), cps(checkpoint(recs, 7))).state
    assert st is not None
    path = tmp_path / "state.json"
    save_state(path, DEPLOY, {CHAIN: st})
    assert load_state(path, DEPLOY) == {CHAIN: st}
    with pytest.raises(ConfigError):
        load_state(path, "other")
    path.write_text("{not json")
    with pytest.raises(ConfigError):
        load_state(path, DEPLOY)


def test_state_remembers_clickhouse_parts(tmp_path: Path) -> None:
    recs = build(7)
    st = run(src(recs), cps(checkpoint(recs, 7))).state
    assert st is not None
    path = tmp_path / "state.json"
    assert load_clickhouse_state(path) is None  # a first run
    save_state(path, DEPLOY, {CHAIN: st})
    assert load_clickhouse_state(path) is None  # none saved: the next check is a full one
    ch = ClickHouseState("8a1c", {"201810_1_1_0": (7, "63d0")}, {CHAIN: 7}, {CHAIN: st.compact})
    save_state(path, DEPLOY, {CHAIN: st}, ch)
    assert load_state(path, DEPLOY) == {CHAIN: st}
    assert load_clickhouse_state(path) == ch
    doc = json.loads(path.read_text())
    doc["clickhouse"]["parts"] = {"x": "not a pair"}
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="clickhouse section"):
        load_clickhouse_state(path)


def test_metrics_file(tmp_path: Path) -> None:
    recs = build(3)
    report = Report(DEPLOY, chains=[run(src(recs), []), run(src(recs[1:]), [])], finished=5.0)
    path = tmp_path / "m.prom"
    write_metrics(path, report, 4.0)
    text = path.read_text()
    assert "sealtrail_verify_last_success_timestamp_seconds 4.0" in text
    assert 'sealtrail_verify_findings{kind="records_deleted"} 1' in text
    assert 'sealtrail_verify_findings{kind="hash_mismatch"} 0' in text
    assert (
        "sealtrail_verify_chains 2" in text and "sealtrail_verify_records_verified_total 3" in text
    )
    assert json.loads(json.dumps(report.to_json()))["findings_total"] == 1
    write_metrics(path, report, 4.0)  # the counter adds up across runs
    assert "sealtrail_verify_records_verified_total 6" in path.read_text()
    assert "sealtrail_verify_last_run_records 3" in path.read_text()


def test_proofs_round_trip_and_tampering() -> None:
    recs = build(13)
    leaves = LeafHashes.from_records(CHAIN, recs, 13, keep=(7,))
    note13, note5 = checkpoint(recs, 13), checkpoint(recs, 5)
    cp13 = Checkpoint.parse(note13.split("\n\n")[0] + "\n")
    cp5 = Checkpoint.parse(note5.split("\n\n")[0] + "\n")
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


def test_full_replay_checks_the_remembered_head() -> None:
    recs = build(20)
    st = run(src(recs[:10]), []).state
    assert st is not None
    assert run(src(recs), [], state_check=st).ok
    rebuilt = build(20, b"x")
    assert "history_rewritten" in kinds(run(src(rebuilt), [], state_check=st))
    assert "truncated" in kinds(run(src(recs[:6]), [], state_check=st))


def test_keyring_from_file_or_key_string(tmp_path: Path) -> None:
    import sealtrail.cli  # noqa: F401 - loads the command modules in their normal order
    from sealtrail.commands.verify import load_keyring
    from sealtrail.errors import KeyFileError

    pub = SIGNER.verifier.verifier_key()
    assert load_keyring(pub).verifiers() == [SIGNER.verifier]
    (tmp_path / "k.pub").write_text(pub + "\n")
    assert load_keyring(str(tmp_path / "k.pub")).verifiers() == [SIGNER.verifier]
    for bad in (None, str(tmp_path / "missing.pub"), "x+deadbeef+AAAA"):
        with pytest.raises(KeyFileError) as err:
            load_keyring(bad)
        assert "AAAA" not in str(err.value)


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
