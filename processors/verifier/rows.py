"""ClickHouse rows against the verified chain, in Python (``verify --recompute-outside``): each
row's hash recomputed from its own columns, links, seq 0..n-1, decoded columns, and the Merkle
root over the row hashes equal to the chain's root at that size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from processors.integrity.errors import ClickHouseMismatch, IntegrityError
from processors.integrity.merkle import CompactRange
from processors.integrity.record import ZERO_HASH, ChainedRecord
from processors.verifier.core import DEFAULT_MAX_FINDINGS, ChainResult

__all__ = ["ChRow", "DecodeFn", "decoded_difference", "mismatch_reporter", "verify_rows"]


@dataclass(frozen=True, slots=True)
class ChRow:
    """One ``events`` row as read back: the chained fields plus the decoded columns."""

    seq: int
    prev_hash: bytes
    hash: bytes
    source_offset: int
    ingested_at_us: int
    payload: bytes
    decoded: Mapping[str, Any]
    part: str = ""  # the data part holding the row (when asked for)


DecodeFn = Callable[["ChRow"], Mapping[str, Any]]


def decoded_difference(row: ChRow, decode: DecodeFn) -> tuple[str, Any, Any] | None:
    """The first decoded column of ``row`` that differs from decoding its payload, as (column,
    expected, found), or None."""
    for column, value in decode(row).items():
        have = row.decoded.get(column)
        if have != value:
            return column, value, have
    return None


Mismatch = Callable[[str, "int | None", Any, Any], None]
"""Reports one ClickHouse finding: (message, seq, expected, found)."""


def mismatch_reporter(result: ChainResult, chain: str, max_findings: int) -> Mismatch:
    """What adds a ``clickhouse_mismatch`` finding about ``chain``'s rows to ``result``."""

    def mismatch(message: str, seq: int | None, expected: Any, found: Any) -> None:
        result.add(
            ClickHouseMismatch(
                f"ClickHouse chain {chain} row {seq}: {message}",
                chain=chain,
                seq=seq,
                expected=_show(expected),
                found=_show(found),
            ),
            max_findings,
        )

    return mismatch


def _show(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return value


def verify_rows(
    chain: str,
    rows: Iterable[ChRow],
    decode: DecodeFn,
    *,
    size: int,
    expected_root: bytes | None,
    max_findings: int = DEFAULT_MAX_FINDINGS,
) -> ChainResult:
    """Check the ClickHouse rows of ``chain`` (in seq order, seq < ``size``).

    Rows must be exactly seq 0..size-1, each linking to the row before, each hash recomputing
    from the row's columns, each decoded column equal to decoding the payload; and the Merkle
    root over the row hashes must equal ``expected_root`` (the root the verified chain has at
    ``size``), which proves every row hash equals the chain record's hash without keeping them.
    """
    result = ChainResult(chain=chain)
    cr = CompactRange()
    prev_hash = ZERO_HASH
    expect = 0

    mismatch = mismatch_reporter(result, chain, max_findings)

    for row in rows:
        if row.seq < expect:
            mismatch("is duplicated or out of order", row.seq, expect, row.seq)
            continue
        if row.seq > expect:
            mismatch(
                f"rows {expect}..{row.seq - 1} are missing (deleted from the table)",
                expect,
                expect,
                row.seq,
            )
            expect = row.seq
            cr = None  # type: ignore[assignment]  # the root can no longer be compared
        if row.prev_hash != prev_hash:
            mismatch(
                "prev_hash does not link to the previous row", row.seq, prev_hash, row.prev_hash
            )
        try:
            computed = ChainedRecord(
                chain,
                row.seq,
                row.prev_hash,
                row.hash,
                row.source_offset,
                row.ingested_at_us,
                row.payload,
            ).recompute()
        except IntegrityError:
            computed = b""
        if computed != row.hash:
            mismatch(
                "hash does not recompute from its columns (a column was altered)",
                row.seq,
                computed,
                row.hash,
            )
        differs = decoded_difference(row, decode)
        if differs is not None:
            column, value, have = differs
            mismatch(
                f"decoded column {column} differs from decoding its payload", row.seq, value, have
            )
        if cr is not None:
            cr.append(row.hash)
        prev_hash = row.hash
        expect = row.seq + 1
        result.records_verified += 1
    if expect < size:
        mismatch(f"rows {expect}..{size - 1} are missing", expect, size, expect)
    result.size = expect
    if result.ok and cr is not None and expected_root is not None and cr.root() != expected_root:
        mismatch(
            f"the rows' hashes do not match the verified chain at size {size} "
            "(rows were rewritten consistently)",
            None,
            expected_root,
            cr.root(),
        )
    return result
