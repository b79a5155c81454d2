"""Chained records -> ``events`` rows: the column mapping of the Python path.

The fast path (:mod:`processors.sink_avro`) makes ClickHouse compute the same columns from the
Avro itself; tests hold the two equal row for row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from processors.integrity.record import ChainedRecord
from processors.sink.rows import EventRow, pivot
from schemas.codec import decode_audit_event
from sealtrail.infra.errors import DecodeError

__all__ = ["as_columns", "event_columns", "event_row", "event_rows"]


def event_row(record: ChainedRecord) -> tuple[EventRow, str | None]:
    """The ``events`` row of ``record``, and why its payload did not decode (None if it did).

    An undecodable payload still gets its row (``decode_ok = 0``, empty decoded columns, placed
    in time by when the chainer sealed it), so the store holds every seq of every chain."""
    try:
        d = decode_audit_event(record.payload)
    except DecodeError as exc:
        at = record.ingested_at_us
        return EventRow(
            record.chain, record.seq, record.prev_hash, record.hash, record.source_offset, at,
            record.payload, 0, "", "", at, at, "", "", "", "", "", "", [], "", [], "", "", "",
            "", "", "", "", None, {}, "", "", "", "", {},
        ), str(exc)  # fmt: skip
    received = d["received_at"]
    stage_at = d["stage_at"]
    if stage_at is None:
        stage_at = d["request_received_at"]
    return EventRow(
        chain=record.chain,
        seq=record.seq,
        prev_hash=record.prev_hash,
        hash=record.hash,
        source_offset=record.source_offset,
        ingested_at=record.ingested_at_us,
        payload=record.payload,
        decode_ok=1,
        cluster=d["cluster"],
        source=d["source"],
        event_time=received if stage_at is None else stage_at,
        received_at=received,
        audit_id=d["audit_id"],
        stage=d["stage"],
        level=d["level"],
        verb=d["verb"],
        request_uri=d["request_uri"],
        user_name=d["user_name"],
        user_groups=d["user_groups"],
        impersonated_user=d["impersonated_user"] or "",
        source_ips=d["source_ips"],
        user_agent=d["user_agent"],
        resource=d["object_resource"],
        namespace=d["object_namespace"],
        name=d["object_name"],
        subresource=d["object_subresource"],
        api_group=d["object_api_group"],
        api_version=d["object_api_version"],
        response_code=d["response_code"],
        annotations=d["annotations"],
        actor=d["actor"],
        action=d["action"],
        resource_generic=d["resource"],
        outcome=d["outcome"],
        attributes=d["attributes"],
    ), None


def event_rows(
    records: Sequence[ChainedRecord],
) -> tuple[list[EventRow], list[tuple[ChainedRecord, str]]]:
    """The ``events`` rows of ``records``, and the records whose payload did not decode with
    the reason (they still get a ``decode_ok = 0`` row)."""
    rows: list[EventRow] = []
    failed: list[tuple[ChainedRecord, str]] = []
    for record in records:
        row, error = event_row(record)
        rows.append(row)
        if error is not None:
            failed.append((record, error))
    return rows, failed


def as_columns(rows: Sequence[EventRow]) -> list[list[Any]]:
    """``events`` rows -> the columns of a column-oriented insert (``EVENT_COLUMNS`` order)."""
    if not rows:
        return [[] for _ in EventRow._fields]
    return pivot(rows)


def event_columns(
    records: Sequence[ChainedRecord],
) -> tuple[list[list[Any]], list[tuple[ChainedRecord, str]]]:
    """The ``events`` columns (in ``EVENT_COLUMNS`` order) for ``records``, and the records
    whose payload did not decode with the reason (they still get a ``decode_ok = 0`` row)."""
    rows, failed = event_rows(records)
    return as_columns(rows), failed
