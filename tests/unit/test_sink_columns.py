"""processors.sink.columns and rows: records -> named ``events`` rows, in column order."""

from __future__ import annotations

from processors.clickhouse_schema import CHECKPOINT_COLUMNS, EVENT_COLUMNS, REJECT_COLUMNS
from processors.integrity.record import ChainHead, link
from processors.sink.columns import event_columns
from processors.sink.rows import CheckpointRow, EventRow, RejectRow
from producers.k8s import parse_line
from schemas.codec import encode_audit_event
from tests.conftest import K8S_SAMPLES


def test_row_types_name_the_table_columns_in_order() -> None:
    assert EventRow._fields == EVENT_COLUMNS
    assert RejectRow._fields == REJECT_COLUMNS
    assert CheckpointRow._fields == CHECKPOINT_COLUMNS


def test_event_columns_decode_and_mark_undecodable() -> None:
    line = (K8S_SAMPLES / "delete_deployment.json").read_bytes()
    event = parse_line(line, "c1", 1_700_000_000_000_000)
    head = ChainHead("audit.events/0")
    good = link(head, 0, 5, encode_audit_event(event))
    bad = link(head, 1, 6, b"junk")
    columns, failed = event_columns([good, bad])
    row = dict(zip(EVENT_COLUMNS, (col[0] for col in columns), strict=True))
    assert row["decode_ok"] == 1 and row["user_name"] == "minikube-user"
    assert row["resource"] == "deployments" and row["response_code"] == 200
    assert row["event_time"] == event["stage_at"] and row["hash"] == good.hash
    other = dict(zip(EVENT_COLUMNS, (col[1] for col in columns), strict=True))
    assert other["decode_ok"] == 0 and other["user_name"] == "" and other["event_time"] == 6
    assert [(r.seq, "single-object" in e) for r, e in failed] == [(1, True)]
