"""processors.verifier.report: the report and its Prometheus textfile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processors.verifier.report import Report, write_metrics
from tests.unit.verifier_support import DEPLOY, build, checkpoint, cps, run, src


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


def test_unsigned_tail_and_empty_chains_are_told(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Records above a chain's newest checkpoint are linked, not signed: one line per such chain
    on stderr, not a finding; the summary says how many chains are empty."""
    from sealtrail.commands.verify import _print_report

    recs = build(5)
    tail = run(src(recs), cps(checkpoint(recs, 2)))  # 3 records above size 2
    covered = run(src(recs[:2]), cps(checkpoint(recs, 2)))
    unanchored = run(src(recs), [])  # warned about as "linked, not anchored" instead
    empty = run([], [])
    broken = run(src(recs[1:]), cps(checkpoint(recs, 2)))  # a finding: no tail line
    report = Report(DEPLOY, chains=[tail, covered, unanchored, empty, broken], finished=5.0)
    assert report.unsigned_tails() == [
        "chain audit.events/0: 3 record(s) above the newest checkpoint (size 2) are linked "
        "but not yet signed"
    ]
    assert report.empty_chains == 1
    _print_report(report)
    out, err = capsys.readouterr()
    assert "3 record(s) above the newest checkpoint (size 2) are linked but not yet signed" in err
    assert err.count("not yet signed") == 1 and "FINDING records_deleted" in err
    assert out.strip().startswith("FAILED (1 finding(s)): 12 records in 5 chain(s) verified, ")
    assert "2 anchored by signed checkpoints, 1 empty, ClickHouse not checked" in out
    assert [f.kind for f in report.findings()] == ["records_deleted"]  # the tail is no finding
    # The JSON report and the metrics file count them too: per chain, and over every chain
    # (an unanchored chain's records are all unsigned).
    doc = report.to_json()
    assert [c["unsigned_records"] for c in doc["chains"]] == [3, 0, 5, 0, 0]
    assert doc["unsigned_records"] == 8
    metrics = tmp_path / "m.prom"
    write_metrics(metrics, report, None)
    assert "sealtrail_verify_unsigned_records 8\n" in metrics.read_text()
    clean = Report(DEPLOY, chains=[tail, covered])
    _print_report(clean)
    out, _err = capsys.readouterr()
    assert out.strip() == (
        "OK: 7 records in 2 chain(s) verified, 2 anchored by signed checkpoints, "
        "ClickHouse not checked"
    )
