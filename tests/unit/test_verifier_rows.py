"""processors.verifier.rows: ClickHouse rows checked in Python against the verified chain."""

from __future__ import annotations

import dataclasses

import pytest

from processors.integrity.record import ChainedRecord
from processors.verifier.rows import ChRow, verify_rows
from tests.unit.verifier_support import (
    CHAIN,
    build,
    run,
    src,
)


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
