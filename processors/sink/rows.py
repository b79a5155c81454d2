"""The rows the sink writes, as named types: one field per ClickHouse column, in column order
(``processors.clickhouse_schema``'s ``*_COLUMNS``; a test holds them equal)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from processors.integrity.record import HASH_SIZE, ChainedRecord
from sealtrail.infra.errors import DecodeError

_MAX_I64 = (1 << 63) - 1


class EventRow(NamedTuple):
    """One ``events`` row: the chained record exactly, then the payload's decoded columns."""

    chain: str
    seq: int
    prev_hash: bytes
    hash: bytes
    source_offset: int
    ingested_at: int
    payload: bytes
    decode_ok: int
    cluster: str
    source: str
    event_time: int
    received_at: int
    audit_id: str
    stage: str
    level: str
    verb: str
    request_uri: str
    user_name: str
    user_groups: list[str]
    impersonated_user: str
    source_ips: list[str]
    user_agent: str
    resource: str
    namespace: str
    name: str
    subresource: str
    api_group: str
    api_version: str
    response_code: int | None
    annotations: dict[str, str]
    actor: str
    action: str
    resource_generic: str
    outcome: str
    attributes: dict[str, str]


class RejectRow(NamedTuple):
    """One ``rejects`` row: a chain-topic value or payload the sink could not decode."""

    chain: str
    seq: int | None
    hash: bytes
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    error: str
    payload: bytes
    at: int


class CheckpointRow(NamedTuple):
    """One ``checkpoints`` row: a signed note as read from the checkpoint topic."""

    chain: str
    origin: str
    size: int
    root_hash: bytes
    head_hash: bytes
    timestamp: int
    key_name: str
    note: str
    parse_error: str
    kafka_partition: int
    kafka_offset: int
    loaded_at: int


class ChainItem(NamedTuple):
    """One record of a chain batch: its seq, the record (None while ClickHouse is to decode
    it on the fast path), the chain-topic value and where the payload starts in it (-1 when
    the record was decoded in Python)."""

    seq: int
    record: ChainedRecord | None
    value: bytes
    payload_start: int


class ChainBatch(NamedTuple):
    """A chain's fresh records from one partition batch, with the token that names them
    (``<chain>:<first>-<last>``)."""

    chain: str
    partition: int
    items: list[ChainItem]
    token: str
    now_us: int


# A longer joined token is replaced by its SHA-256: it is a setting sent with every insert.
MAX_JOINED_TOKEN = 512


class EventsInsert(NamedTuple):
    """One insert into ``events``: the batches of one or more chains (all those flushed in one
    round, so the cost ClickHouse pays per insert is paid once), with the insert's
    deduplication token (:func:`events_insert`)."""

    batches: list[ChainBatch]
    token: str

    @property
    def rows(self) -> int:
        return sum(len(batch.items) for batch in self.batches)


def events_insert(batches: list[ChainBatch]) -> EventsInsert:
    """The insert of ``batches``. Its token names every chain's range (``+``-joined, or the
    SHA-256 of that when long): a retry of the same insert, on either path, is stored once,
    and no other insert can carry it."""
    token = "+".join(batch.token for batch in batches)
    if len(token) > MAX_JOINED_TOKEN:
        token = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    return EventsInsert(batches, token)


def pivot(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows -> columns, for a column-oriented insert."""
    return [list(column) for column in zip(*rows, strict=True)]


def storable(record: ChainedRecord) -> ChainedRecord:
    """``record`` if the ``events`` columns can hold it (UInt64 seq and offset, FixedString(32)
    hashes), else ``DecodeError`` (the value then goes to ``rejects``)."""
    seq, offset = record.seq, record.source_offset
    if not 0 <= seq <= _MAX_I64 or not 0 <= offset <= _MAX_I64:
        raise DecodeError(f"chained record has a negative seq ({seq}) or source_offset ({offset})")
    if len(record.prev_hash) != HASH_SIZE or len(record.hash) != HASH_SIZE:
        raise DecodeError(
            f"chained record hashes are {len(record.prev_hash)} and {len(record.hash)} bytes, "
            f"not {HASH_SIZE}"
        )
    return record
