"""processors.verifier.report: the report and its Prometheus textfile."""

from __future__ import annotations

import json
from pathlib import Path

from processors.verifier.report import Report, write_metrics
from tests.unit.verifier_support import DEPLOY, build, run, src


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
