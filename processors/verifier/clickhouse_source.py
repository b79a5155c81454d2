"""Read the sink's ``events`` rows back for the verifier, one chain at a time in seq order.

Rows are fetched in pages by seq range (served by the table's (chain, seq) projection), so memory
stays bounded however long the chain is. Expected decoded columns come from the sink's own
:func:`processors.sink.event_columns`, so the check follows the sink's mapping exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

from processors.clickhouse_schema import DECODED_COLUMNS, EVENT_COLUMNS
from processors.integrity.record import ChainedRecord
from processors.verifier.rows import ChRow
from sealtrail.infra.clickhouse import first_line, validate_identifier
from sealtrail.infra.errors import ClickHouseError

__all__ = [
    "PAGE_ROWS",
    "chain_sizes",
    "query",
    "events_table_exists",
    "expected_columns",
    "iter_rows",
]

PAGE_ROWS = 20000
_TIME_COLUMNS = {"event_time", "received_at"}


def query(client: Client, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    try:
        return list(client.query(sql, parameters=params or {}).result_rows)
    except DriverError as exc:
        raise ClickHouseError(f"ClickHouse refused a verifier query: {first_line(exc)}") from None


def events_table_exists(client: Client, database: str) -> bool:
    db = validate_identifier(database)
    rows = query(
        client,
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'events'",
        {"db": db},
    )
    return bool(rows and rows[0][0])


def chain_sizes(client: Client, database: str) -> dict[str, int]:
    """Per chain: max(seq) + 1, the number of rows the table should hold for it."""
    db = validate_identifier(database)
    rows = query(client, f"SELECT chain, max(seq) + 1 FROM {db}.events GROUP BY chain")
    return {str(r[0]): int(r[1]) for r in rows}


def _select_list() -> str:
    parts = [
        "seq",
        "hex(prev_hash)",
        "hex(hash)",
        "source_offset",
        "toUnixTimestamp64Micro(ingested_at)",
        "hex(payload)",
    ]
    for col in DECODED_COLUMNS:
        parts.append(f"toUnixTimestamp64Micro({col})" if col in _TIME_COLUMNS else col)
    return ", ".join(parts)


def iter_rows(
    client: Client, database: str, chain: str, size: int, *, lo: int = 0, with_part: bool = False
) -> Iterator[ChRow]:
    """Rows of ``chain`` with ``lo`` <= seq < ``size`` ordered by seq (duplicates included)."""
    db = validate_identifier(database)
    sql = (
        f"SELECT {_select_list()}{', _part' if with_part else ''} FROM {db}.events "
        "WHERE chain = {chain:String} AND seq >= {lo:UInt64} AND seq < {hi:UInt64} ORDER BY seq"
    )
    while lo < size:
        hi = min(size, lo + PAGE_ROWS)
        for r in query(client, sql, {"chain": chain, "lo": lo, "hi": hi}):
            yield ChRow(
                seq=int(r[0]),
                prev_hash=bytes.fromhex(r[1]),
                hash=bytes.fromhex(r[2]),
                source_offset=int(r[3]),
                ingested_at_us=int(r[4]),
                payload=bytes.fromhex(r[5]),
                decoded=dict(zip(DECODED_COLUMNS, r[6 : 6 + len(DECODED_COLUMNS)], strict=True)),
                part=str(r[-1]) if with_part else "",
            )
        lo = hi


def expected_columns(chain: str) -> Any:
    """A function giving the decoded columns the sink would store for a row's payload."""
    from processors.sink import event_columns  # the sink's mapping is the reference

    def decode(row: ChRow) -> Mapping[str, Any]:
        rec = ChainedRecord(
            chain,
            row.seq,
            row.prev_hash,
            row.hash,
            row.source_offset,
            row.ingested_at_us,
            row.payload,
        )
        cols, _failed = event_columns([rec])
        return {
            name: _norm(values[0])
            for name, values in zip(EVENT_COLUMNS, cols, strict=True)
            if name in DECODED_COLUMNS
        }

    return decode


def _norm(value: Any) -> Any:
    # ClickHouse gives back lists for arrays and dicts for maps; the sink builds the same types.
    if isinstance(value, tuple):
        return list(value)
    return value
