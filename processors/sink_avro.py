"""The sink's fast path into embedded ClickHouse: the engine decodes the AuditEvent payloads.

A chain-topic value is ``C3 01 | ChainedEvent fingerprint | ChainedEvent datum``, and that datum
ends with ``payload`` (bytes), itself ``C3 01 | AuditEvent fingerprint | AuditEvent datum``. So
``value[10:] + payload[10:]`` is one Avro datum of a record holding the ChainedEvent fields and
then the AuditEvent fields. Binary Avro ignores field names, so that combined record names its
fields after the ``events`` columns. A batch is written as an Avro object container file and
loaded with one ``INSERT INTO events ... SELECT ... FROM file(..., 'Avro')``: ClickHouse's C++
parser replaces fastavro and the Python column lists (about 40 us a row).

Only rows whose value and payload carry the current fingerprints come here (decided in Python);
the sink sends any other batch, and any batch this insert fails on, through
:func:`processors.sink.event_columns` as before. Loaded rows must equal what ``event_columns``
gives, so the insert refuses (``throwIf``, nothing is written) a batch holding a row that fastavro
would not read the same way:

* bytes after an AuditEvent datum (fastavro refuses them): every row ends with a random 16-byte
  ``fixed`` marker, so a datum followed by extra bytes reads some of them as its marker;
* invalid UTF-8 in any string (fastavro decodes strings strictly, ClickHouse keeps the bytes);
* a repeated map key (a Python dict keeps one entry, a ClickHouse Map keeps both).

Each row is also its own container block: the reader realigns on every block, so a row that
parses wrongly cannot shift the rows after it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

from processors.clickhouse_schema import EVENT_COLUMNS
from schemas.codec import AUDIT_EVENT, CHAINED_EVENT, HEADER_SIZE, avro_long
from sealtrail.infra.clickhouse import quote

__all__ = [
    "AUDIT_HEADER",
    "AUDIT_STRUCTURE",
    "AVAILABLE",
    "BAD_DATA_CODES",
    "MAX_BATCH_BYTES",
    "REFUSED",
    "audit_fields",
    "column_expression",
    "different_sql",
    "insert_sql",
    "new_marker",
    "parse_chained",
    "write_container",
]

# Written for exactly these schema versions (fingerprints): a new version must be mapped here,
# and pass the equivalence tests, before its records take this path.
_CHAINED_V1 = "70f7ac85db78a10f"
_AUDIT_V1 = "b596f5040d9fcf06"
AVAILABLE: bool = (
    CHAINED_EVENT.fingerprint.hex() == _CHAINED_V1 and AUDIT_EVENT.fingerprint.hex() == _AUDIT_V1
)
AUDIT_HEADER: bytes = AUDIT_EVENT.header
_CHAINED_HEADER: bytes = CHAINED_EVENT.header

REFUSED = "sealtrail: a row differs from the Python decoder"
"""The message of the insert's own refusal (the block then goes the Python way)."""

# ClickHouse error codes that mean "these bytes do not parse": the batch goes the Python way
# at once. FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (the refusal), AVRO_EXCEPTION, INCORRECT_DATA,
# CANNOT_READ_ALL_DATA.
BAD_DATA_CODES = frozenset({395, 748, 117, 33})

# ---------------------------------------------------------------------------------------------
# reading the chain-topic value (about 2 us; fastavro plus the record take about 14)

# After the chain string: seq, prev_hash and hash (32 bytes each, length 32 zigzagged = 0x40),
# source_offset, ingested_at, payload length. Varints of at most 9 bytes (|n| < 2**62);
# anything longer or otherwise unusual goes to the full decoder.
_VARINT = rb"[\x80-\xff]{0,8}[\x00-\x7f]"
_AFTER_CHAIN = re.compile(
    rb"(%s)\x40.{32}\x40.{32}(%s)%s(%s)" % (_VARINT, _VARINT, _VARINT, _VARINT), re.S
)


def _long(raw: bytes) -> int:
    if len(raw) == 2:  # most payload lengths
        n = (raw[0] & 0x7F) | (raw[1] << 7)
    else:
        n = shift = 0
        for byte in raw:
            n |= (byte & 0x7F) << shift
            shift += 7
    return (n >> 1) ^ -(n & 1)


def parse_chained(value: bytes) -> tuple[str, int, int] | None:
    """``(chain, seq, where the payload starts)`` for a chain-topic value that ClickHouse can
    load: the current ChainedEvent version, the plain case, a payload of the current AuditEvent
    version. ``None`` for anything else: then ``decode_chained`` decides, as before.

    Whatever it accepts, the sink's Python path (``storable(value_record(value))``) accepts
    with the same chain, seq and payload (the unit tests check that on mutated values).
    """
    if value[:HEADER_SIZE] != _CHAINED_HEADER or len(value) <= HEADER_SIZE:
        return None
    size = value[HEADER_SIZE]
    if size >= 0x80 or size & 1:  # chain names are short: one-byte, non-negative length
        return None
    end = HEADER_SIZE + 1 + (size >> 1)
    try:
        chain = value[HEADER_SIZE + 1 : end].decode()
    except UnicodeDecodeError:
        return None
    match = _AFTER_CHAIN.match(value, end)
    if match is None:
        return None
    seq_raw, offset_raw, length_raw = match.groups()
    if seq_raw[0] & 1 or offset_raw[0] & 1:  # negative: decode_chained's error message
        return None
    start = match.end()
    if _long(length_raw) != len(value) - start:  # short or trailing bytes: likewise
        return None
    if value[start : start + HEADER_SIZE] != AUDIT_HEADER:
        return None
    return chain, seq_raw[0] >> 1 if len(seq_raw) == 1 else _long(seq_raw), start


# ---------------------------------------------------------------------------------------------
# the container file

# AuditEvent field -> its name in the combined record. A field named like an ``events`` column
# fills that column; the "x_" ones are read only to be checked, as fastavro reads them too.
_AUDIT_NAMES = {
    "api_version": "x_event_api_version",
    "original": "x_original",
    "user_uid": "x_user_uid",
    "user_extra": "x_user_extra",
    "object_resource": "resource",
    "object_namespace": "namespace",
    "object_name": "name",
    "object_subresource": "subresource",
    "object_api_group": "api_group",
    "object_api_version": "api_version",
    "object_uid": "x_object_uid",
    "resource": "resource_generic",
}
_MARKER_SIZE = 16


def audit_fields() -> list[dict[str, Any]]:
    """The AuditEvent schema's fields renamed as in the combined record (Avro schema JSON)."""
    return [
        {"name": _AUDIT_NAMES.get(f["name"], f["name"]), "type": f["type"]}
        for f in AUDIT_EVENT.schema["fields"]
    ]


def _combined_schema() -> dict[str, Any]:
    fields = [{"name": f["name"], "type": f["type"]} for f in CHAINED_EVENT.schema["fields"]]
    fields += audit_fields()
    marker = {"type": "fixed", "name": "Marker", "size": _MARKER_SIZE}
    fields.append({"name": "x_marker", "type": marker})
    return {"type": "record", "name": "SinkRow", "namespace": "dev.sealtrail", "fields": fields}


def _avro_bytes(data: bytes) -> bytes:
    return avro_long(len(data)) + data


_SCHEMA_JSON = json.dumps(_combined_schema(), separators=(",", ":")).encode()
# Magic, then the metadata map (schema, null codec) ending in a zero count.
_FILE_START = b"".join(
    [
        b"Obj\x01",
        avro_long(2),
        _avro_bytes(b"avro.schema"),
        _avro_bytes(_SCHEMA_JSON),
        _avro_bytes(b"avro.codec"),
        _avro_bytes(b"null"),
        b"\x00",
    ]
)
_ONE_ROW = avro_long(1)
_SIZES = [_ONE_ROW + avro_long(n) for n in range(1 << 14)]  # row count and size of most blocks


def new_marker() -> bytes:
    return os.urandom(_MARKER_SIZE)


def write_container(fd: int, rows: Sequence[tuple[bytes, int]], marker: bytes) -> int:
    """Write ``rows`` to the file ``fd`` (from its start, truncating the rest) as an Avro object
    container file with one block per row; return its size.

    ``rows`` are (chain-topic value, payload start) pairs from :func:`parse_chained`. A row's
    datum is the ChainedEvent datum (payload field included), the AuditEvent datum once more,
    then ``marker``, which is also the file's sync marker. Written with ``os.pwritev`` from
    views of the values (no copy in Python) over the previous batch's pages (no new page-cache
    pages, which cost more than the copy on small VMs).
    """
    parts: list[bytes | memoryview] = [_FILE_START, marker]
    want = len(_FILE_START) + len(marker)
    offset = 0
    tail = marker + marker  # the row's marker field, then the block's sync marker
    sizes = _SIZES
    for i, (value, start) in enumerate(rows, 1):
        view = memoryview(value)
        size = 2 * len(value) - start - 2 * HEADER_SIZE + _MARKER_SIZE
        head = sizes[size] if size < len(sizes) else _ONE_ROW + avro_long(size)
        parts += (head, view[HEADER_SIZE:], view[start + HEADER_SIZE :], tail)
        want += len(head) + size + _MARKER_SIZE
        if i % _ROWS_PER_WRITE == 0 or i == len(rows):
            offset = _write_all(fd, parts, offset, want)
            parts, want = [], 0
    if not rows:
        offset = _write_all(fd, parts, offset, want)
    os.ftruncate(fd, offset)
    return offset


_ROWS_PER_WRITE = 255  # four iovecs a row, within IOV_MAX (1024)


def _write_all(fd: int, parts: list[bytes | memoryview], offset: int, want: int) -> int:
    done = os.pwritev(fd, parts, offset)
    if done < want:  # pwritev may stop early: write the rest plainly
        rest = memoryview(b"".join(parts))[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done)
            rest, done = rest[n:], done + n
    return offset + want


# ---------------------------------------------------------------------------------------------
# the insert

# Types of the fields read from the file: the ``events`` types for columns, plain ones for the
# fields only checked. ClickHouse maps fields by name and skips the ones not listed.
_CHAINED_STRUCTURE = (
    "chain String, seq UInt64, prev_hash FixedString(32), hash FixedString(32), "
    "source_offset UInt64, ingested_at DateTime64(6, 'UTC'), payload String, "
)
AUDIT_STRUCTURE = (
    "cluster String, source String, received_at DateTime64(6, 'UTC'), "
    "x_event_api_version String, audit_id String, stage String, level String, verb String, "
    "request_uri String, user_name String, x_user_uid String, user_groups Array(String), "
    "x_user_extra Map(String, Array(String)), impersonated_user Nullable(String), "
    "source_ips Array(String), user_agent String, resource String, namespace String, "
    "name String, subresource String, api_group String, api_version String, "
    "x_object_uid String, response_code Nullable(Int32), "
    "request_received_at Nullable(DateTime64(6, 'UTC')), "
    "stage_at Nullable(DateTime64(6, 'UTC')), annotations Map(String, String), "
    "actor String, action String, resource_generic String, outcome String, "
    "attributes Map(String, String)"
)
"""The AuditEvent fields as the combined record names and types them (the verifier's SQL
check decodes payloads with the same names and types, so it and the sink cannot disagree)."""
_STRUCTURE = f"{_CHAINED_STRUCTURE}{AUDIT_STRUCTURE}, x_marker FixedString(16)"

# events column -> expression over the file's fields, as event_columns() fills it.
_EXPRESSIONS = {
    "decode_ok": "1",
    "event_time": "coalesce(stage_at, request_received_at, received_at)",
    "impersonated_user": "ifNull(impersonated_user, '')",
}
_SELECT = ", ".join(_EXPRESSIONS.get(c, c) for c in EVENT_COLUMNS)


def column_expression(column: str) -> str:
    """The expression over the file's fields that fills ``events`` column ``column``."""
    return _EXPRESSIONS.get(column, column)


_STRINGS = (
    "cluster source x_event_api_version audit_id stage level verb request_uri user_name "
    "x_user_uid user_agent resource namespace name subresource api_group api_version "
    "x_object_uid actor action resource_generic outcome"
).split()
_STRING_ARRAYS = (
    "user_groups",
    "source_ips",
    "mapKeys(x_user_extra)",
    "arrayFlatten(mapValues(x_user_extra))",
    "mapKeys(annotations)",
    "mapValues(annotations)",
    "mapKeys(attributes)",
    "mapValues(attributes)",
)
_MAPS = ("x_user_extra", "annotations", "attributes")
# Every string, array element and map key or value joined by an ASCII byte: an ASCII byte never
# falls inside a multi-byte sequence, so the joined string is valid UTF-8 exactly when every part
# is. One isValidUTF8 call and no lambda (instead of 30 calls and 8 lambdas): ClickHouse plans
# each insert in 9.7 ms of CPU instead of 12.5 (median of 30 EXPLAINs each, alternated), a cost
# every insert pays whatever its size.
_TEXTS = [
    "ifNull(impersonated_user, '')",
    *_STRINGS,
    *(f"arrayStringConcat({a}, '\\n')" for a in _STRING_ARRAYS),
]
_JOINED = "concat(" + ", '\\n', ".join(_TEXTS) + ")"


def _different(utf8: list[str]) -> str:
    return " OR ".join(
        [
            # hex: a binary constant would end up, as is, in the error message.
            "hex(x_marker) != '{marker}'",
            *utf8,
            *(f"length(mapKeys({m})) != length(arrayDistinct(mapKeys({m})))" for m in _MAPS),
        ]
    )


_DIFFERENT = _different([f"NOT isValidUTF8({_JOINED})"])
# The same condition with one isValidUTF8 per text instead of one over their concatenation:
# more to plan, less to run (no copy of every string), for the verifier's pages of 100,000
# rows (0.09 -> 0.05 CPU-s a page).
_DIFFERENT_PER_TEXT = _different([f"NOT isValidUTF8({t})" for t in _TEXTS])


# Largest batch (bytes of its rows' values, about half the file) for this path. The check
# runs before the rows reach the table, and ClickHouse squashes the rows of an insert into one
# block up to min_insert_block_size_bytes (256 MiB): below that, a refused insert writes nothing,
# and the block (hence its parts' dedup ids) is the one the Python path's insert makes.
MAX_BATCH_BYTES = 48 << 20


def different_sql(marker: bytes, *, per_text: bool = False) -> str:
    """A condition over the file's fields: true for a row that fastavro would not read the way
    ClickHouse did (see the module docstring). ``per_text``: the same condition, cheaper to run
    on many rows and dearer to plan (see :data:`_DIFFERENT_PER_TEXT`)."""
    return (_DIFFERENT_PER_TEXT if per_text else _DIFFERENT).format(marker=marker.hex().upper())


def insert_sql(db: str, path: str, marker: bytes, token: str) -> str:
    """The insert of a container file into ``events``, refused whole if a row differs (see
    :data:`MAX_BATCH_BYTES` for why nothing is written then)."""
    columns = ", ".join(EVENT_COLUMNS)
    different = different_sql(marker)
    return (
        f"INSERT INTO {db}.events ({columns}) "
        f"SETTINGS insert_deduplication_token = {quote(token)} "
        f"SELECT {_SELECT} FROM file({quote(path)}, 'Avro', {quote(_STRUCTURE)}) "
        f"WHERE throwIf({different}, {quote(REFUSED)}) = 0"
    )
