"""The ClickHouse cross-check run by ClickHouse itself: SQL that recomputes, links and decodes.

Only findings and small aggregates come back to Python (the default check; ``verify
--recompute-outside`` reads every row into Python instead, see docs/SECURITY.md for which
attacker each covers). Every function takes a clickhouse-connect-like ``client`` (``.query(sql,
parameters=...).result_rows``) and builds plain SQL strings; the checks themselves are:

* the record hash of every row, recomputed from its own columns with ``SHA256`` exactly as
  docs/FORMAT.md section 2 defines it (:func:`record_hash_sql`, byte equality with
  :func:`processors.integrity.record.record_hash` is tested on the format's vectors);
* seq exactly 0..n-1 and ``prev_hash`` equal to the previous row's ``hash``, with window
  functions over the chain's rows ordered by seq (:func:`row_problems`);
* the RFC 6962 Merkle root of the row hashes, computed in SQL level by level (one ``GROUP BY``
  per level over half the rows of the one below), compared with the root the verified Kafka
  chain has at the same size (:func:`merkle_root`);
* the decoded columns against the payload decoded by ClickHouse's Avro reader with the sink's own
  field names, types and column expressions (:mod:`processors.sink_avro`), so the check and the
  sink's fast path cannot disagree (:func:`decoded_problems`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processors.clickhouse_schema import DECODED_COLUMNS
from processors.integrity.merkle import CompactRange
from processors.integrity.record import HASH_SIZE, VERSION_TAG, ZERO_HASH
from processors.sink_avro import (
    AUDIT_HEADER,
    AUDIT_STRUCTURE,
    AVAILABLE,
    audit_fields,
    column_expression,
    different_sql,
)
from processors.verifier.clickhouse_source import expected_columns, iter_rows, query
from processors.verifier.core import DEFAULT_MAX_FINDINGS, ChainResult
from processors.verifier.rows import decoded_difference, mismatch_reporter
from schemas.codec import HEADER_SIZE, avro_long
from sealtrail.infra.clickhouse import quote, validate_identifier
from sealtrail.infra.errors import ClickHouseError, WriteRefused
from sealtrail.infra.reader import SocketReader
from sealtrail.infra.scratch_session import Append, ScratchSession

__all__ = [
    "DECODE_CHECK",
    "DECODE_PAGE_BYTES",
    "DECODE_PAGE_ROWS",
    "FILES_PER_PAGE",
    "ChainCounts",
    "DecodedProblem",
    "OddRows",
    "RowChecks",
    "RowProblem",
    "Remembered",
    "TableParts",
    "chain_counts",
    "changed_parts",
    "part_filter",
    "table_parts",
    "check_chain",
    "decode_pages",
    "decoded_problems",
    "leaf_hashes",
    "merkle_root",
    "merkle_root_sql",
    "record_hash_sql",
    "row_problems",
    "serve_decoded_problems",
]

DECODE_PAGE_ROWS = 100_000
"""Rows decoded per query (their payloads are in the scratch files, or in memory for format())."""
FILES_PER_PAGE = 2
"""Scratch files a page is written to: ClickHouse parses one file per thread."""


def _be64(expr: str) -> str:
    # reinterpret keeps all 8 bytes (reinterpretAsString drops trailing zero bytes); the host
    # order is little-endian, so reverse gives the big-endian encoding FORMAT.md asks for.
    return f"reverse(reinterpret({expr}, 'FixedString(8)'))"


def record_hash_sql(
    chain: str = "chain",
    seq: str = "seq",
    prev_hash: str = "prev_hash",
    source_offset: str = "source_offset",
    ingested_at_us: str = "toUnixTimestamp64Micro(ingested_at)",
    payload: str = "payload",
) -> str:
    """A ClickHouse expression giving the 32-byte record hash (docs/FORMAT.md section 2) from
    the given column expressions (defaults: the ``events`` columns)."""
    tag = (len(VERSION_TAG).to_bytes(8, "big") + VERSION_TAG).hex()
    parts = [
        f"unhex('{tag}')",
        _be64(f"toUInt64(length(CAST({chain} AS String)))"),
        f"CAST({chain} AS String)",
        _be64(f"toUInt64({seq})"),
        f"unhex('{HASH_SIZE.to_bytes(8, 'big').hex()}')",
        f"toFixedString({prev_hash}, {HASH_SIZE})",  # CAST to String would drop zero bytes
        _be64(f"toUInt64({source_offset})"),
        _be64(f"toInt64({ingested_at_us})"),
        _be64(f"toUInt64(length({payload}))"),
        payload,
    ]
    return f"SHA256(concat({', '.join(parts)}))"


# --------------------------------------------------------------------------------------------
# counts, seq and links


@dataclass(frozen=True, slots=True)
class ChainCounts:
    """Per chain: rows held, max(seq) + 1."""

    rows: int
    size: int


def chain_counts(client: Any, database: str, where: str = "1") -> dict[str, ChainCounts]:
    db = validate_identifier(database)
    rows = query(
        client,
        f"SELECT chain, count(), max(seq) + 1 FROM {db}.events WHERE {where} GROUP BY chain",
    )
    return {str(r[0]): ChainCounts(int(r[1]), int(r[2])) for r in rows}


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A row the seq/link/hash check flagged: what it holds and what came before it."""

    seq: int
    first: bool  # the chain's first row (of those checked)
    prev_seq: int  # the previous row's seq (undefined when first)
    prev_hash: bytes  # this row's prev_hash column
    before_hash: bytes  # the previous row's hash
    hash: bytes
    computed: bytes


@dataclass(frozen=True, slots=True)
class OddRows:
    """Rows whose payload ClickHouse does not decode for the check (not ``SQL_DECODABLE``):
    how many, and the lowest and highest seq among them (0 when there are none)."""

    count: int
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class RowChecks:
    """What :func:`row_problems` found: the rows flagged, first ``limit`` by seq, and the rows
    left to Python's decoding."""

    problems: list[RowProblem]
    odd: OddRows


def row_problems(
    client: Any,
    database: str,
    chain: str,
    *,
    below: int,
    limit: int,
    where: str = "1",
    link_from_zero: bool = True,
) -> RowChecks:
    """Rows of ``chain`` with seq < ``below`` whose hash does not recompute, whose seq is not
    the previous row's plus one, or whose prev_hash is not the previous row's hash; and, from
    the same read of the payloads, the rows whose decoded columns ClickHouse cannot check.

    ``where`` narrows the rows checked (incremental runs pass the changed parts and their
    neighbours); with ``link_from_zero`` the first row checked must be seq 0 linking to zeros.
    """
    db = validate_identifier(database)
    zero = "0" * (2 * HASH_SIZE)
    first_ok = f"(seq = 0 AND hex(prev_hash) = '{zero}')" if link_from_zero else "(seq = seq)"
    rows = f"""
    SELECT seq, prev_hash, hash FROM {db}.events
    WHERE chain = {{chain:String}} AND seq < {{below:UInt64}} AND ({where})"""
    # Two queries: the hash over the payloads runs on all threads, the window (seq and links,
    # 80 bytes a row) on the sorted rows; in one query the hash was computed 3x slower.
    links = f"""
SELECT seq, rn = 1, pseq, hex(prev_hash), hex(phash), hex(hash) FROM (
  SELECT seq, prev_hash, hash,
         row_number() OVER w AS rn,
         lagInFrame(seq) OVER w AS pseq,
         lagInFrame(hash) OVER w AS phash
  FROM ({rows})
  WINDOW w AS (ORDER BY seq ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
)
WHERE (rn = 1 AND NOT {first_ok})
   OR (rn > 1 AND seq != pseq + 1 AND {"1" if link_from_zero else "seq = pseq"})
   OR (rn > 1 AND seq = pseq + 1 AND prev_hash != phash)
ORDER BY seq
LIMIT {int(limit)}
"""
    # One pass over the payloads: the rows whose hash does not recompute (compared as bytes,
    # FixedString(32) both; hex only for the few kept: the arguments of an -If aggregate are
    # computed for every row), and which rows ClickHouse cannot decode for
    # the decoded-columns check (Python decodes them; see check_chain).
    hashes = f"""
SELECT arrayMap(r -> (r.1, hex(r.2), hex(r.3), hex(r.4)),
         groupArraySortedIf({2 * int(limit)})((seq, prev_hash, hash, computed), computed != hash)),
       countIf(NOT decodable), minIf(seq, NOT decodable), maxIf(seq, NOT decodable)
FROM (
  SELECT seq, prev_hash, hash, ({record_hash_sql()}) AS computed, {SQL_DECODABLE} AS decodable
  FROM {db}.events
  WHERE chain = {{chain:String}} AND seq < {{below:UInt64}} AND ({where})
)
"""
    params = {"chain": chain, "below": below}
    out: dict[int, RowProblem] = {}
    for r in query(client, links, params):
        h = bytes.fromhex(r[5])
        p = RowProblem(
            seq=int(r[0]),
            first=bool(r[1]),
            prev_seq=int(r[2]),
            prev_hash=bytes.fromhex(r[3]),
            before_hash=bytes.fromhex(r[4]),
            hash=h,
            computed=h,
        )
        if p.first or p.seq != p.prev_seq:  # a repeated seq keeps its first row's entry
            out[p.seq] = p
        else:
            out.setdefault(-1 - p.seq, p)  # the copy: reported as a duplicate
    [(wrong, odd, odd_lo, odd_hi)] = query(client, hashes, params)
    seen: set[int] = set()
    for r in wrong:
        seq = int(r[0])
        if seq in seen:
            continue  # a repeated seq: its first row stands for it, as in the link check
        seen.add(seq)
        had = out.get(seq)
        prev, h, computed = bytes.fromhex(r[1]), bytes.fromhex(r[2]), bytes.fromhex(r[3])
        if had is not None:
            out[seq] = dataclasses.replace(had, computed=computed)
        else:  # links fine: only the hash is wrong
            out[seq] = RowProblem(seq, False, seq - 1, prev, prev, h, computed)
    found = sorted(out.values(), key=lambda p: (p.seq, p.first or p.seq != p.prev_seq))
    return RowChecks(found[:limit], OddRows(int(odd), int(odd_lo), int(odd_hi)))


# --------------------------------------------------------------------------------------------
# Merkle root


def merkle_root_sql(database: str, size: int) -> str:
    """SQL giving the RFC 6962 root of the hashes of rows seq 0..size-1 of ``{chain:String}``.

    Level by level: level 0 is SHA256(0x00 || hash) per row, level k+1 groups level k by
    index / 2 and hashes SHA256(0x01 || left || right); a lone last node moves up unchanged,
    which gives the RFC 6962 split at the largest power of two (tested against the pure code).
    Assumes seq is unique below ``size`` (the seq check runs first).
    """
    db = validate_identifier(database)
    sql = (
        f"SELECT seq AS i0, SHA256(concat(unhex('00'), hash)) AS h0 FROM {db}.events "
        f"WHERE chain = {{chain:String}} AND seq < {int(size)}"
    )
    level, width = 0, max(size, 1)
    while width > 1:
        i, h, j = f"i{level}", f"h{level}", f"i{level + 1}"
        sql = (
            f"SELECT intDiv({i}, 2) AS {j}, if(count() = 2, "
            f"SHA256(concat(unhex('01'), argMin({h}, {i}), argMax({h}, {i}))), any({h})) "
            f"AS h{level + 1} FROM ({sql}) GROUP BY {j}"
        )
        level += 1
        width = (width + 1) // 2
    return f"SELECT h{level} FROM ({sql})"


def merkle_root(client: Any, database: str, chain: str, size: int) -> bytes:
    """The Merkle root of the first ``size`` row hashes of ``chain``, computed by ClickHouse."""
    if size == 0:
        return CompactRange().root()
    rows = query(
        client, f"SELECT hex(h) FROM ({merkle_root_sql(database, size)}) AS r(h)", {"chain": chain}
    )
    return bytes.fromhex(rows[0][0]) if rows else b""


def leaf_hashes(client: Any, database: str, chain: str, lo: int, hi: int) -> Iterable[bytes]:
    """Row hashes of seq lo..hi-1 in seq order, as one binary blob (32 bytes a row): for
    extending a remembered compact range by the rows an incremental run found new."""
    db = validate_identifier(database)
    rows = query(
        client,
        # hex of each hash: toString of a FixedString drops trailing zero bytes.
        f"SELECT arrayStringConcat(arrayMap(x -> hex(x.2), "
        f"arraySort(groupArray((seq, hash))))) FROM {db}.events "
        "WHERE chain = {chain:String} AND seq >= {lo:UInt64} AND seq < {hi:UInt64}",
        {"chain": chain, "lo": lo, "hi": hi},
    )
    blob = bytes.fromhex(rows[0][0]) if rows else b""
    return (blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE))


# --------------------------------------------------------------------------------------------
# decoded columns

_MARKER = bytes.fromhex("5ea17a11" * 4)  # fixed: it is not a secret, only a parse check
_CHECK_FIELDS: list[dict[str, Any]] = [
    {"name": "x_seq", "type": {"type": "fixed", "name": "Seq", "size": 8}},
    *audit_fields(),
    {"name": "x_marker", "type": {"type": "fixed", "name": "Marker", "size": len(_MARKER)}},
]
_CHECK_SCHEMA = json.dumps(
    {"type": "record", "name": "CheckRow", "namespace": "dev.sealtrail", "fields": _CHECK_FIELDS},
    separators=(",", ":"),
).encode()


def _avro_bytes(data: bytes) -> bytes:
    return avro_long(len(data)) + data


_FILE_START = b"".join(
    [
        b"Obj\x01",
        avro_long(2),
        _avro_bytes(b"avro.schema"),
        _avro_bytes(_CHECK_SCHEMA),
        _avro_bytes(b"avro.codec"),
        _avro_bytes(b"null"),
        b"\x00",
        _MARKER,
    ]
)
_CHECK_STRUCTURE = f"x_seq FixedString(8), {AUDIT_STRUCTURE}, x_marker FixedString(16)"
SQL_DECODABLE = (
    f"(decode_ok = 1 AND startsWith(payload, unhex('{AUDIT_HEADER.hex()}')) "
    "AND length(payload) < 1000000000)"  # the block size fits the five-byte varint
    if AVAILABLE
    else "0"
)
"""Rows whose payload ClickHouse decodes for the check; the others are decoded in Python (rows
that did not decode, or that carry an older AuditEvent version: few in a healthy store)."""


def _varint_sql(v: str) -> str:
    """Avro long bytes of ``v`` (already zigzagged, below 2**35) in a fixed five bytes: a
    varint with continuation bits on the first four reads the same in any Avro decoder, and
    one char() call per row is much cheaper than building the shortest form with arrays."""
    groups = [f"bitAnd(bitShiftRight({v}, {7 * k}), 127)" for k in range(5)]
    return "char(" + ", ".join(f"bitOr({g}, 128)" for g in groups[:4]) + f", {groups[4]})"


@dataclass(frozen=True, slots=True)
class DecodedProblem:
    """A row whose decoded columns are not what its payload decodes to."""

    seq: int
    column: str
    expected: str
    found: str


def _rows_where(where: str, decodable: str = SQL_DECODABLE) -> str:
    return (
        "chain = {chain:String} AND seq >= {lo:UInt64} AND seq < {hi:UInt64} "
        f"AND {decodable} AND ({where})"
    )


# The stored side of the decode join: decode_ok = 1 only, so it reads no payload. A row the
# page left out (not SQL_DECODABLE) has no partner in the inner join; check_chain has Python
# decode those rows (row_problems counts them in its own read of the payloads).
_STORED_DECODED = "decode_ok = 1"


def _blocks_sql(database: str, where: str) -> str:
    """The page's rows as Avro container blocks, one block per row (so a row that parses
    wrongly cannot shift the rows after it), in no particular order (each carries its seq);
    the file's start (:data:`_FILE_START`, which ends with the marker) goes before them."""
    db = validate_identifier(database)
    marker = _MARKER.hex()
    size = f"(2 * (8 + length(payload) - {HEADER_SIZE} + {len(_MARKER)}))"
    block = (
        f"concat(unhex('02'), {_varint_sql(size)}, {_be64('seq')}, "
        f"substring(payload, {HEADER_SIZE + 1}), unhex('{marker}'), unhex('{marker}'))"
    )
    return f"SELECT {block} AS b FROM {db}.events WHERE {_rows_where(where)}"


def decoded_sql(database: str, where: str = "1", scratch: str | None = None) -> str:
    """SQL comparing the decoded columns of ``{chain:String}`` rows seq in [lo, hi) with their
    payloads decoded by ClickHouse's Avro reader. Returns one row per differing row.

    The payloads are read from ``scratch`` (a glob of Avro files that :func:`decoded_problems`
    has ClickHouse write with :func:`_blocks_sql`; ClickHouse parses the files in parallel) or,
    without one, from a ``format()`` table function over the same blocks built in the query (no
    file, but ClickHouse evaluates that constant more than once: several times slower).
    """
    db = validate_identifier(database)
    if scratch is not None:
        source = f"file({quote(scratch)}, 'Avro', {quote(_CHECK_STRUCTURE)})"
    else:
        header = f"unhex('{_FILE_START.hex()}')"
        container = (
            f"SELECT concat({header}, arrayStringConcat(groupArray(b))) "
            f"FROM ({_blocks_sql(db, where)})"
        )
        source = f"format('Avro', {quote(_CHECK_STRUCTURE)}, ({container}))"
    columns = [c for c in DECODED_COLUMNS if c != "decode_ok"]
    bad = different_sql(_MARKER, per_text=True)
    decoded = ", ".join(f"{column_expression(c)} AS d_{c}" for c in columns)
    differs = [(c, f"NOT isNotDistinctFrom(t.{c}, d_{c})") for c in columns]
    which = "multiIf(" + ", ".join(f"{cond}, '{c}'" for c, cond in differs) + ", '')"
    # Evidence for the flagged rows only (the outer SELECT runs after the WHERE).
    expected = "multiIf(" + ", ".join(f"{w}, toString(tuple(d_{c}))" for c, w in differs) + ", '')"
    found = "multiIf(" + ", ".join(f"{w}, toString(tuple(t.{c}))" for c, w in differs) + ", '')"
    return f"""
SELECT t.seq, if(d_bad, 'payload', {which}) AS col, {expected}, {found}
FROM (
  SELECT seq, {", ".join(columns)} FROM {db}.events WHERE {_rows_where(where, _STORED_DECODED)}
) AS t
INNER JOIN (
  SELECT reinterpretAsUInt64(reverse(x_seq)) AS seq, ({bad}) AS d_bad, {decoded}
  FROM {source}
) AS d ON t.seq = d.seq
WHERE col != ''
ORDER BY t.seq
LIMIT {{limit:UInt64}}
"""


DECODE_CHECK = "decoded_problems"
"""The name the embedded store's owner serves :func:`serve_decoded_problems` under."""


def decoded_problems(
    client: Any,
    database: str,
    chain: str,
    lo: int,
    hi: int,
    *,
    limit: int,
    where: str = "1",
    parts: Sequence[str] | None = None,
    scratch: ScratchSession | SocketReader | None = None,
) -> list[DecodedProblem]:
    """Rows of seq in [lo, hi) of ``chain`` whose decoded columns differ from their payload.

    ``scratch``: a session of the embedded store with a directory of the verifier's own, where
    ClickHouse writes the page's payloads as Avro files (:data:`FILES_PER_PAGE` of them, parsed
    in parallel) and reads them back; the files are removed after the query. A socket reader:
    the store's owner runs the same check (:func:`serve_decoded_problems`; ``parts``, the data
    parts ``where`` selects, is sent instead of ``where``). Without it (a server), ``format()``
    on ``client``.

    Raises :class:`~sealtrail.infra.errors.ClickHouseError` if ClickHouse cannot parse a payload of
    the page; callers then decode that page in Python (which names the row).
    """
    if isinstance(scratch, SocketReader):
        arguments = {
            "database": database,
            "chain": chain,
            "lo": lo,
            "hi": hi,
            "limit": limit,
            "parts": None if parts is None else list(parts),
        }
        answer = scratch.check(DECODE_CHECK, arguments)
        return [
            DecodedProblem(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in answer.result_rows
        ]
    params = {"chain": chain, "lo": lo, "hi": hi, "limit": limit}
    if scratch is None:
        rows = query(client, decoded_sql(database, where), params)
    else:
        files: list[Path] = []
        try:
            step = max(1, -(-(hi - lo) // FILES_PER_PAGE))
            appends = []
            for flo in range(lo, hi, step):
                path = scratch.new_file(_FILE_START)
                files.append(path)
                fparams = {**params, "lo": flo, "hi": min(hi, flo + step)}
                appends.append(Append(path, _blocks_sql(database, where), fparams))
            # Written at once, each on a session of its own (ScratchSession.append_all).
            scratch.append_all(appends)
            rows = []
            if files:
                names = ",".join(p.stem for p in files)
                one = len(files) == 1
                pattern = str(files[0]) if one else f"{scratch.directory}/{{{names}}}.avro"
                sql = decoded_sql(database, where, pattern)
                rows = list(scratch.query(sql, params).result_rows)
        finally:
            for path in files:
                path.unlink(missing_ok=True)
    out: list[DecodedProblem] = []
    for r in rows:
        column = str(r[1])
        if column == "payload":
            out.append(DecodedProblem(int(r[0]), column, "decode_ok = 0", "decode_ok = 1"))
        else:
            out.append(DecodedProblem(int(r[0]), column, str(r[2]), str(r[3])))
    return out


_MAX_CHECK_FINDINGS = 100_000


def serve_decoded_problems(
    scratch: ScratchSession, arguments: Mapping[str, Any]
) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    """The owner's side of :func:`decoded_problems` for a socket reader (registered with the
    live-read server as :data:`DECODE_CHECK`). Takes values only, checked here: a database
    name, a chain, a seq range of at most :data:`DECODE_PAGE_ROWS`, a findings limit and
    optional data part names; raises :class:`ValueError` for anything else."""
    database = validate_identifier(str(arguments.get("database")))
    chain, lo, hi, limit = (arguments.get(k) for k in ("chain", "lo", "hi", "limit"))
    parts = arguments.get("parts")
    if not isinstance(chain, str) or not all(type(v) is int for v in (lo, hi, limit)):
        raise ValueError("chain must be a string and lo, hi, limit integers")
    assert isinstance(lo, int) and isinstance(hi, int) and isinstance(limit, int)
    if not (0 <= lo <= hi and hi - lo <= DECODE_PAGE_ROWS and 0 < limit <= _MAX_CHECK_FINDINGS):
        raise ValueError(
            f"lo..hi must be a seq range of at most {DECODE_PAGE_ROWS} rows and limit "
            f"1..{_MAX_CHECK_FINDINGS}"
        )
    if parts is not None and not (
        isinstance(parts, list) and all(isinstance(p, str) for p in parts)
    ):
        raise ValueError("parts must be a list of data part names")
    where = "1" if parts is None else part_filter(parts)
    found = decoded_problems(
        scratch.client, database, chain, lo, hi, limit=limit, where=where, scratch=scratch
    )
    rows = [(d.seq, d.column, d.expected, d.found) for d in found]
    return ["seq", "column", "expected", "found"], ["UInt64", "String", "String", "String"], rows


DECODE_PAGE_BYTES = 256 << 20
"""Payload bytes a decode page holds at most (its scratch files, or format()'s constant)."""
_BUCKET_ROWS = 1000


def decode_pages(
    client: Any,
    database: str,
    chain: str,
    lo: int,
    hi: int,
    where: str = "1",
    *,
    rows: int = DECODE_PAGE_ROWS,
    max_bytes: int = DECODE_PAGE_BYTES,
    bucket: int = _BUCKET_ROWS,
) -> list[tuple[int, int]]:
    """Seq ranges covering [lo, hi) of ``chain``, each of at most ``rows`` seqs and, unless one
    bucket of ``bucket`` seqs is bigger, ``max_bytes`` payload bytes of the rows ``where``
    selects (large events make short pages: the scratch files stay bounded). Only the payloads'
    lengths are read."""
    if hi <= lo:
        return []
    db = validate_identifier(database)
    sizes = query(
        client,
        f"SELECT intDiv(seq, {int(bucket)}) AS b, sum(length(payload)) FROM {db}.events "
        "WHERE chain = {chain:String} AND seq >= {lo:UInt64} AND seq < {hi:UInt64} "
        f"AND ({where}) GROUP BY b ORDER BY b",
        {"chain": chain, "lo": lo, "hi": hi},
    )
    pages: list[tuple[int, int]] = []
    start, held = lo, 0
    for index, nbytes in sizes:
        b_lo = max(lo, int(index) * bucket)
        b_hi = min(hi, b_lo - b_lo % bucket + bucket)
        if b_lo > start and (held + int(nbytes) > max_bytes or b_hi - start > rows):
            pages.append((start, b_lo))
            start, held = b_lo, 0
        held += int(nbytes)
    for plo in range(start, hi, rows):  # the rest, in pages of at most ``rows``
        pages.append((plo, min(hi, plo + rows)))
    return pages


# --------------------------------------------------------------------------------------------
# one chain, as findings


def _show(value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Remembered:
    """What an earlier clean check proved of a chain: rows 0..size-1 with this compact range."""

    size: int
    compact: bytes


def check_chain(
    client: Any,
    database: str,
    chain: str,
    *,
    size: int,
    expected_root: bytes | None,
    max_findings: int = DEFAULT_MAX_FINDINGS,
    scratch: ScratchSession | SocketReader | None = None,
    changed_parts: Sequence[str] | None = None,
    remembered: Remembered | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> ChainResult:
    """The rows of ``chain`` with seq < ``size`` checked in ClickHouse, as the findings
    :func:`processors.verifier.core.verify_rows` gives for the same rows (kind
    ``clickhouse_mismatch``, same messages and evidence).

    Incremental (``changed_parts`` and ``remembered`` given; the caller checked that every
    other active part is one an earlier clean check saw, unchanged): only the rows in the
    changed parts are recomputed and decoded, and linked to their neighbours by seq; seq is
    0..size-1 by the row count, max(seq) and no duplicate among the changed rows (the others
    were unique); the root is the remembered compact range extended by the new rows' hashes
    when all changed rows are new (seq >= remembered size), else computed again in SQL.
    A chain whose row count is not its size is checked in full (that names the gap).

    ``on_rows(n)`` is told the seqs of each page once its decoded columns are checked.
    """
    result = ChainResult(chain=chain)
    db = validate_identifier(database)

    mismatch = mismatch_reporter(result, chain, max_findings)

    params = {"chain": chain, "size": size}
    scope = "1" if changed_parts is None else part_filter(changed_parts)
    # No payload is read here (row_problems reads them once, for the hashes and the odd rows).
    stats = query(
        client,
        f"SELECT count(), countIf({scope}), minIf(seq, {scope}), maxIf(seq, {scope}) "
        f"FROM {db}.events WHERE chain = {{chain:String}} AND seq < {{size:UInt64}}",
        params,
    )[0]
    total, rows, lo_seq, hi_seq = (int(v) for v in stats)
    incremental = changed_parts is not None and remembered is not None
    if incremental and total != size:
        # Rows are missing or repeated somewhere: the full check names where.
        return check_chain(
            client,
            database,
            chain,
            size=size,
            expected_root=expected_root,
            max_findings=max_findings,
            scratch=scratch,
            on_rows=on_rows,
        )
    gaps = False
    if incremental:
        where = (
            f"({scope}) OR seq IN (SELECT seq + 1 FROM {db}.events WHERE chain = "
            f"{{chain:String}} AND {scope}) OR seq IN (SELECT seq - 1 FROM {db}.events "
            f"WHERE chain = {{chain:String}} AND {scope})"
        )
        dups = query(
            client,
            f"SELECT seq, count() FROM {db}.events WHERE chain = {{chain:String}} AND seq IN "
            f"(SELECT seq FROM {db}.events WHERE chain = {{chain:String}} AND {scope}) "
            f"GROUP BY seq HAVING count() > 1 ORDER BY seq LIMIT {int(max_findings)}",
            params,
        )
        for seq, copies in dups:
            mismatch("is duplicated or out of order", int(seq), 1, int(copies))
            rows -= int(copies) - 1
        if rows and lo_seq == 0:
            first = query(
                client,
                f"SELECT hex(prev_hash) FROM {db}.events WHERE chain = {{chain:String}} "
                "AND seq = 0",
                params,
            )
            if first and bytes.fromhex(first[0][0]) != ZERO_HASH:
                mismatch(
                    "prev_hash does not link to the previous row",
                    0,
                    ZERO_HASH,
                    bytes.fromhex(first[0][0]),
                )
    else:
        where = "1"
    checks = (
        row_problems(
            client, db, chain, below=size, limit=max_findings, where=where, link_from_zero=False
        )
        if incremental and rows
        else RowChecks([], OddRows(0, 0, 0))
        if incremental
        else row_problems(client, db, chain, below=size, limit=max_findings)
    )
    for p in checks.problems:
        expect = 0 if p.first else p.prev_seq + 1
        if not p.first and p.seq == p.prev_seq:
            if not incremental:
                mismatch("is duplicated or out of order", p.seq, expect, p.seq)
                rows -= 1  # as the Python check: a copy is not a verified row
            continue
        if p.seq > expect and not incremental:
            gaps = True
            mismatch(
                f"rows {expect}..{p.seq - 1} are missing (deleted from the table)",
                expect,
                expect,
                p.seq,
            )
        if not (incremental and (p.first or p.seq != p.prev_seq + 1)):
            link = ZERO_HASH if p.first else p.before_hash
            if p.prev_hash != link:
                mismatch("prev_hash does not link to the previous row", p.seq, link, p.prev_hash)
        if p.computed != p.hash:
            mismatch(
                "hash does not recompute from its columns (a column was altered)",
                p.seq,
                p.computed,
                p.hash,
            )
    pages = decode_pages(client, db, chain, lo_seq, hi_seq + 1, scope) if rows else []
    sql_decode = True
    # Seq ranges [lo, hi) whose decoded columns Python compares, with the sink's own decoder
    # (fastavro): the rows ClickHouse cannot decode (row_problems counted them; an incremental
    # run's count takes in the changed rows' neighbours, and only the changed parts' rows are
    # compared), the pages ClickHouse could not check, and the rows it would read otherwise
    # than fastavro (they are fastavro's to judge: the sink stores a payload with a repeated
    # map key as fastavro reads it, decode_ok = 1).
    to_python: list[tuple[int, int]] = []
    if checks.odd.count:
        to_python.append((checks.odd.lo, checks.odd.hi + 1))
    for plo, phi in pages:
        if not sql_decode:
            to_python.append((plo, phi))
            continue
        try:
            found = decoded_problems(
                client,
                db,
                chain,
                plo,
                phi,
                limit=max_findings,
                where=scope,
                parts=changed_parts,
                scratch=scratch,
            )
        except WriteRefused:
            # A read-only connection (readonly=1) refuses the format() table function: the
            # decoded columns are then compared in Python, every page (hashes, links and root
            # stay in SQL).
            sql_decode = False
            to_python.append((plo, phi))
            found = []
        except ClickHouseError:
            # ClickHouse could not parse a payload stored as decoded: Python names the row.
            to_python.append((plo, phi))
            found = []
        if len(found) >= max_findings:
            # The limit may have cut off rows that are Python's to judge: it takes the page.
            to_python.append((plo, phi))
            found = []
        if on_rows is not None:
            on_rows(phi - plo)
        for d in found:
            if d.column == "payload":
                to_python.append((d.seq, d.seq + 1))
            else:
                mismatch(
                    f"decoded column {d.column} differs from decoding its payload",
                    d.seq,
                    d.expected,
                    d.found,
                )
    if to_python:
        decode = expected_columns(chain)
        allowed = None if changed_parts is None else set(changed_parts)
        for lo, hi in _merged(to_python):
            for row in iter_rows(client, db, chain, hi, lo=lo, with_part=True):
                if allowed is not None and row.part not in allowed:
                    continue
                differs = decoded_difference(row, decode)
                if differs is not None:
                    column, value, have = differs
                    mismatch(
                        f"decoded column {column} differs from decoding its payload",
                        row.seq,
                        value,
                        have,
                    )
    result.records_verified = rows
    result.size = size
    if result.ok and not gaps and expected_root is not None:
        if incremental and remembered is not None and (not rows or lo_seq >= remembered.size):
            # Only new rows: the remembered range, extended by their hashes, gives the root.
            cr = CompactRange.from_bytes(remembered.size, remembered.compact)
            for h in leaf_hashes(client, db, chain, remembered.size, size):
                cr.append(h)
            root = cr.root() if cr.size == size else b""
        else:
            root = merkle_root(client, db, chain, size)
        if root != expected_root:
            mismatch(
                f"the rows' hashes do not match the verified chain at size {size} "
                "(rows were rewritten consistently)",
                None,
                expected_root,
                root,
            )
    return result


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` ([lo, hi) each) sorted, overlapping and adjoining ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


# --------------------------------------------------------------------------------------------
# data parts

_PART_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def part_filter(names: Iterable[str]) -> str:
    """A condition selecting the rows of the named data parts (names checked, then quoted)."""
    names = sorted(names)
    for name in names:
        if not _PART_NAME.match(name):
            raise ClickHouseError(f"ClickHouse reported an unexpected part name {name!r}")
    return f"_part IN ({', '.join(repr(n) for n in names)})" if names else "0"


@dataclass(frozen=True, slots=True)
class TableParts:
    """The ``events`` table's identity and its active data parts (name -> rows, checksum)."""

    uuid: str
    parts: dict[str, tuple[int, str]]


def table_parts(client: Any, database: str) -> TableParts:
    db = validate_identifier(database)
    uuid_rows = query(
        client,
        "SELECT toString(uuid) FROM system.tables WHERE database = {db:String} AND name = 'events'",
        {"db": db},
    )
    rows = query(
        client,
        "SELECT name, rows, hash_of_all_files FROM system.parts WHERE database = {db:String} "
        "AND table = 'events' AND active",
        {"db": db},
    )
    return TableParts(
        uuid=str(uuid_rows[0][0]) if uuid_rows else "",
        parts={str(r[0]): (int(r[1]), str(r[2])) for r in rows},
    )


def changed_parts(before: dict[str, tuple[int, str]], now: dict[str, tuple[int, str]]) -> list[str]:
    """Active parts that an earlier check did not see as they are now (inserts, merges,
    mutations, attached partitions). Parts that went away show in the row counts."""
    return sorted(name for name, info in now.items() if before.get(name) != info)
