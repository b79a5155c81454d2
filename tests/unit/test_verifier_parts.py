"""processors.verifier's offsite files, state file, report metrics and proofs, and the CLI's key
ring loading (the pieces around the replay)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processors.integrity.checkpoint import parse_checkpoint_note
from processors.proofs import LeafHashes, make_consistency, make_inclusion, verify_proof
from processors.verifier import offsite
from processors.verifier.report import Report, write_metrics
from processors.verifier.state import (
    ClickHouseState,
    load_clickhouse_state,
    load_state,
    save_state,
)
from sealtrail.infra.errors import ConfigError, IntegrityError
from tests.unit.verifier_support import (
    CHAIN,
    DEPLOY,
    SIGNER,
    build,
    checkpoint,
    cps,
    ring,
    run,
    signer,
    src,
)


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


def test_keyring_from_file_or_key_string(tmp_path: Path) -> None:
    import sealtrail.cli  # noqa: F401 - loads the command modules in their normal order
    from sealtrail.commands.verify import load_keyring
    from sealtrail.infra.errors import KeyFileError

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
