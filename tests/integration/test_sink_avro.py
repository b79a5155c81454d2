"""The sink's fast path (processors/sink_avro.py) against the Python path, in real chdb.

The same records are loaded both ways into two databases and every ``events`` column is compared
row by row, as ClickHouse prints it (so Map order and exact timestamps count). Crafted payloads
that fastavro reads differently from ClickHouse must make the fast insert refuse, writing nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from confluent_kafka import Consumer

from processors import sink_avro
from processors.clickhouse_schema import EVENT_COLUMNS, migrate
from processors.integrity.record import ChainedRecord, ChainHead, link
from processors.sink import Sink, SinkOptions, event_columns
from processors.sink.rows import storable
from producers.k8s import generic_event
from schemas.chained import value_record
from schemas.codec import encode_audit_event, encode_chained
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import consumer_conf
from sealtrail.infra.service import StopFlag
from tests.integration.sink_support import ChainWriter, sample_events

I64_MAX = (1 << 63) - 1


@pytest.fixture
def client(chdb_dsn: str) -> Client:
    return clickhouse.connect(Settings(kafka="127.0.0.1:1", clickhouse=chdb_dsn))


@pytest.fixture
def dbs(client: Client) -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:10]
    fast, slow = f"fast_{tag}", f"slow_{tag}"
    migrate(client, fast)
    migrate(client, slow)
    yield fast, slow
    client.command(f"DROP DATABASE IF EXISTS {fast}")
    client.command(f"DROP DATABASE IF EXISTS {slow}")


def _value(r: ChainedRecord) -> bytes:
    return encode_chained(
        {
            "chain": r.chain,
            "seq": r.seq,
            "prev_hash": r.prev_hash,
            "hash": r.hash,
            "source_offset": r.source_offset,
            "ingested_at": r.ingested_at_us,
            "payload": r.payload,
        }
    )


def _chain(payloads: list[bytes], chain: str = "audit.events/0") -> list[bytes]:
    head = ChainHead(chain)
    return [_value(link(head, i, 1_700_000_000_000_000 + i, p)) for i, p in enumerate(payloads)]


def _fast_insert(client: Client, db: str, values: list[bytes], token: str, tmp: Path) -> None:
    rows = []
    for value in values:
        parsed = sink_avro.parse_chained(value)
        assert parsed is not None
        rows.append((value, parsed[2]))
    marker = sink_avro.new_marker()
    path = str(tmp / f"{uuid.uuid4().hex}.avro")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        sink_avro.write_container(fd, rows, marker)
        client.command(sink_avro.insert_sql(db, path, marker, token))
    finally:
        os.close(fd)
        os.unlink(path)


def _slow_insert(client: Client, db: str, values: list[bytes], token: str) -> None:
    columns, failed = event_columns([storable(value_record(v)) for v in values])
    assert not failed, failed
    client.insert(
        f"{db}.events",
        columns,
        column_names=list(EVENT_COLUMNS),
        column_oriented=True,
        settings={"insert_deduplication_token": token},
    )


def _column(client: Client, db: str, column: str) -> list[tuple[Any, ...]]:
    return [
        tuple(row)
        for row in client.query(
            f"SELECT chain, seq, hex(toString({column})), toTypeName({column}) "
            f"FROM {db}.events ORDER BY chain, seq"
        ).result_rows
    ]


def _assert_same(client: Client, fast: str, slow: str, rows: int) -> None:
    for column in EVENT_COLUMNS:
        got, want = _column(client, fast, column), _column(client, slow, column)
        assert len(got) == len(want) == rows, column
        for g, w in zip(got, want, strict=True):
            assert g == w, f"column {column}, row {w[:2]}: fast {g[2:]} != python {w[2:]}"


def _odd_events() -> list[dict[str, Any]]:
    """Generic (SDK) events and k8s events with the edges of every field type."""
    base = dict(sample_events()[0])
    events: list[dict[str, Any]] = [
        generic_event("c1", "alice", "login", "vpn", "success", {"ip": "10.0.0.1"}, 5, "g-1"),
        generic_event("c1", "bob", "rm -rf", "/", "failure", None, 0, "g-2", received_at_us=7),
        generic_event("c2", "ünï ☃ 𝄞", "act'\"\\", "r\x00s", "", {"k\x00": "v\n", "": ""}, -1, "g"),
    ]
    stamps = [
        (None, None, 1),
        (None, 2, 3),
        (4, None, 5),
        (-(1 << 40), -(1 << 40), -1),
        (0, 0, 0),
        (253402300799999999, 1, 1),  # 9999-12-31, beyond DateTime64's range
        ((1 << 62) - 1, -(1 << 62), I64_MAX),
        (-(1 << 63), None, -(1 << 63)),
    ]
    for i, (stage_at, request_at, received) in enumerate(stamps):
        event = dict(base)
        event.update(
            audit_id=f"t-{i}",
            stage_at=stage_at,
            request_received_at=request_at,
            received_at=received,
        )
        events.append(event)
    for i, code in enumerate([None, 0, -1, (1 << 31) - 1, -(1 << 31)]):
        event = dict(base)
        event.update(audit_id=f"c-{i}", response_code=code)
        events.append(event)
    event = dict(base)
    event.update(
        audit_id="many",
        impersonated_user="system:admin",
        user_groups=["a", "", "ü" * 300],
        source_ips=[],
        user_extra={"x": ["1", "2"], "y": []},
        annotations={str(i): "v" * i for i in range(200)},
        user_agent="x" * 70000,  # a length of three varint bytes
        request_uri="/api?q=' OR 1=1; --",
    )
    events.append(event)
    event = dict(base)
    event.update(audit_id="empty-imp", impersonated_user="", annotations={}, user_groups=[])
    events.append(event)
    return events


def test_fast_path_rows_equal_python_rows(
    client: Client, dbs: tuple[str, str], tmp_path: Path
) -> None:
    fast, slow = dbs
    payloads = [encode_audit_event(e) for e in sample_events() + _odd_events()]
    values = _chain(payloads) + _chain(payloads[:7], chain="ünï/☃ 'quoted'")
    _fast_insert(client, fast, values, "t:0-1", tmp_path)
    _slow_insert(client, slow, values, "t:0-1")
    _assert_same(client, fast, slow, len(values))


def test_big_rows_and_sizes(client: Client, dbs: tuple[str, str], tmp_path: Path) -> None:
    """Rows around the block-size varint boundaries and far beyond them."""
    fast, slow = dbs
    base = dict(sample_events()[0])
    payloads = []
    for size in (0, 1, 100, 16000, 16384, 16500, 2_100_000):
        event = dict(base)
        event.update(audit_id=f"s{size}", original=b"o" * size)
        payloads.append(encode_audit_event(event))
    values = _chain(payloads)
    _fast_insert(client, fast, values, "t", tmp_path)
    _slow_insert(client, slow, values, "t")
    _assert_same(client, fast, slow, len(values))


def _with_marker(encoded: bytes, old: bytes, new: bytes) -> bytes:
    assert encoded.count(old) == 1 and len(old) == len(new)
    return encoded.replace(old, new)


def _crafted() -> dict[str, bytes]:
    base = dict(sample_events()[0])
    event = dict(base)
    event.update(
        annotations={"kkkkA": "aaaa1", "kkkkB": "2"},
        user_name="uuuuuu",
        user_uid="vvvvvv",
        user_groups=["gggga", "ggggb"],
    )
    good = encode_audit_event(event)
    # Extra bytes after a valid datum; a second copy of the payload's tail as the extra bytes;
    # a whole second datum as the extra bytes; one extra byte.
    return {
        "trailing": good + b"\x00\x02\x04",
        "trailing-one": good + b"\x00",
        "trailing-long": good + good[10:],
        "bad-utf8": _with_marker(good, b"uuuuuu", b"uu\xff\xfeuu"),
        "surrogate": _with_marker(good, b"uuuuuu", b"u\xed\xa0\x80uu"),
        "overlong": _with_marker(good, b"uuuuuu", b"u\xc0\xafuuu"),
        "dup-key": _with_marker(good, b"kkkkB", b"kkkkA"),
        # Invalid UTF-8 in an array element, a map key and a map value; and sequences split
        # across two strings (each invalid alone, one valid character if the two were joined).
        "bad-utf8-array": _with_marker(good, b"gggga", b"ggg\xffa"),
        "bad-utf8-map-key": _with_marker(good, b"kkkkB", b"kk\xfekB"),
        "bad-utf8-map-value": _with_marker(good, b"aaaa1", b"aa\xff\xfe1"),
        "split-utf8-array": _with_marker(
            _with_marker(good, b"gggga", b"gggg\xc3"), b"ggggb", b"\xa9gggg"
        ),
        "split-utf8-fields": _with_marker(
            _with_marker(good, b"uuuuuu", b"uuuuu\xc3"), b"vvvvvv", b"\xa9vvvvv"
        ),
        "truncated": good[:-5],
        "garbage": sink_avro.AUDIT_HEADER + b"\xff" * 40,
        "bad-union": _with_marker(
            encode_audit_event({**base, "impersonated_user": "iiiiii"}),
            b"\x02\x0ciiiiii",
            b"\x04\x0ciiiiii",
        ),
    }


@pytest.mark.parametrize("kind", sorted(_crafted()))
def test_rows_fastavro_reads_otherwise_are_refused(
    kind: str, client: Client, dbs: tuple[str, str], tmp_path: Path
) -> None:
    fast, _ = dbs
    good = [encode_audit_event(e) for e in sample_events()[:30]]
    crafted = _crafted()[kind]
    values = _chain(good[:15] + [crafted] + good[15:])
    with pytest.raises(DatabaseError) as refused:
        _fast_insert(client, fast, values, "t", tmp_path)
    print(kind, getattr(refused.value, "code", None), str(refused.value).splitlines()[0][:300])
    assert client.query(f"SELECT count() FROM {fast}.events").result_rows == [(0,)]
    # The Python path tells these rows apart (decode_ok = 0, or one entry per map key).
    columns, failed = event_columns([storable(value_record(v)) for v in values])
    assert len(columns[0]) == len(values)
    assert kind == "dup-key" or [r.seq for r, _ in failed] == [15]


def test_same_token_twice_is_stored_once_across_paths(
    client: Client, dbs: tuple[str, str], tmp_path: Path
) -> None:
    fast, _ = dbs
    values = _chain([encode_audit_event(e) for e in sample_events()])
    n = len(values)
    _fast_insert(client, fast, values, "c:0-9", tmp_path)
    _fast_insert(client, fast, values, "c:0-9", tmp_path)
    _slow_insert(client, fast, values, "c:0-9")
    assert client.query(f"SELECT count() FROM {fast}.events").result_rows == [(n,)]
    _slow_insert(client, fast, values, "c:other")
    _fast_insert(client, fast, values, "c:other", tmp_path)
    assert client.query(f"SELECT count() FROM {fast}.events").result_rows == [(2 * n,)]


# ---------------------------------------------------------------------------------------------
# through the Sink, from Kafka


def _sink(settings: Settings, fast: bool, group: str) -> dict[str, float | int]:
    options = SinkOptions(once=True, group=group, batch_rows=40, avro_fast_path=fast)
    return Sink(settings, options).run().as_dict()


def test_sink_fast_and_python_paths_store_the_same(settings: Settings) -> None:
    """Good batches, batches with crafted rows (refused: the Python path finds them), rows of
    another AuditEvent version, garbage: the fast sink stores what the Python sink stores."""
    crafted = _crafted()
    good = [encode_audit_event(e) for e in sample_events()]
    older = b"\xc3\x01" + b"\x00" * 8 + good[0][10:]
    writer = ChainWriter(settings)
    writer.append(0, good)  # fast batches only
    # Batches of 40: each crafted row in a batch of its own.
    writer.append(1, good[:30] + [crafted["trailing"]] + good[30:] + [crafted["dup-key"]])
    writer.append(2, good[:20] + [older, b"junk"] + good[20:] + [crafted["truncated"]])
    client = clickhouse.connect(settings)
    slow = settings.with_(clickhouse_database=settings.clickhouse_database + "_py")
    python = _sink(slow, fast=False, group="py")
    stats = _sink(settings, fast=True, group="fast")
    assert len(good) > 45  # so that the batches are as described
    # How many batches a poll forms varies with timing; what cannot vary: partition 0 (good
    # rows only) is loaded by ClickHouse, and the batches holding a crafted row of partition 1
    # and of partition 2 are refused by it and fall back.
    assert stats["fast_batches"] >= 1 and stats["fast_fallbacks"] >= 2, stats
    assert python["fast_batches"] == 0
    for key in ("inserted", "rejects", "skipped"):
        assert stats[key] == python[key], key
    rows = len(good) * 3 + 5
    _assert_same(client, settings.clickhouse_database, slow.clickhouse_database, rows)
    reject_sql = "SELECT chain, seq, error, hex(payload) FROM {}.rejects ORDER BY chain, seq"
    assert client.query(reject_sql.format(settings.clickhouse_database)).result_rows == (
        client.query(reject_sql.format(slow.clickhouse_database)).result_rows
    )
    trailing = client.query(
        f"SELECT decode_ok FROM {settings.clickhouse_database}.events "
        f"WHERE chain = '{settings.topics.raw}/1' AND seq = 30"
    ).result_rows
    assert trailing == [(0,)]
    # Everything is stored: a new group adds nothing.
    again = _sink(settings, fast=True, group="fast-again")
    assert again["inserted"] == 0 and again["skipped"] == rows


def test_sink_fast_insert_failures_are_retried_by_the_python_path(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that is not about the data (disk full, ClickHouse trouble) is a counted retry
    with backoff, then the Python path stores the batch: nothing lost, nothing marked bad."""
    good = [encode_audit_event(e) for e in sample_events()] * 2  # three batches of 40 or less
    ChainWriter(settings).append(0, good)
    failures = {"write": 1, "sql": 1}
    write, sql = sink_avro.write_container, sink_avro.insert_sql

    def failing_write(fd: int, rows: Any, marker: bytes) -> int:
        if failures["write"]:
            failures["write"] -= 1
            raise OSError(28, "No space left on device")
        return write(fd, rows, marker)

    def failing_sql(db: str, path: str, marker: bytes, token: str) -> str:
        if failures["sql"]:
            failures["sql"] -= 1
            return sql("no_such_database", path, marker, token)
        return sql(db, path, marker, token)

    monkeypatch.setattr(sink_avro, "write_container", failing_write)
    monkeypatch.setattr(sink_avro, "insert_sql", failing_sql)
    stats = _sink(settings, fast=True, group="flaky")
    assert stats["retries"] >= 2 and stats["fast_fallbacks"] == 2, stats
    assert stats["fast_batches"] >= 1 and stats["inserted"] == len(good)
    db = settings.clickhouse_database
    assert client_rows(
        settings, f"SELECT count(), uniqExact(seq), min(decode_ok) FROM {db}.events"
    ) == [(len(good), len(good), 1)]


def client_rows(settings: Settings, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in clickhouse.connect(settings).query(sql).result_rows]


def test_sink_batches_over_the_size_cap_go_the_python_way(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = [encode_audit_event(e) for e in sample_events()]
    ChainWriter(settings).append(0, good)
    monkeypatch.setattr(sink_avro, "MAX_BATCH_BYTES", 5 * min(map(len, good)))  # < 11 rows
    stats = _sink(settings, fast=True, group="big")
    assert stats["fast_batches"] == 0 and stats["inserted"] == len(good), stats


def test_rebalance_with_an_insert_in_flight_stays_exact(settings: Settings) -> None:
    """Another member joins the group while the service sink has inserts in flight: the sink
    finishes and commits the one in flight in its revoke callback; every record once."""
    good = [encode_audit_event(e) for e in sample_events()]
    writer = ChainWriter(settings)
    total = 0
    for p in range(3):
        total += writer.append(p, good * 4)
    stop = StopFlag()
    sink = Sink(settings, SinkOptions(group="rebalanced", batch_rows=20, batch_ms=50), stop)
    revokes_in_flight = 0
    finish = sink.fast.finish

    def counting_finish(commit: bool = True) -> None:
        nonlocal revokes_in_flight
        if sink.fast.busy and any(f.f_code.co_name == "_on_revoke" for f in _frames()):
            revokes_in_flight += 1
        finish(commit)

    sink.fast.finish = counting_finish  # type: ignore[method-assign]
    insert = sink.fast._insert

    def slow_insert(path: str, marker: bytes, token: str, written: float) -> float:
        time.sleep(0.3)  # keep an insert in flight most of the time
        return insert(path, marker, token, written)

    sink.fast._insert = slow_insert  # type: ignore[method-assign]
    thread = threading.Thread(target=sink.run, name="sink-rebalanced")
    thread.start()
    deadline = time.monotonic() + 120
    other = Consumer(consumer_conf(settings, "rebalanced", **{"enable.auto.commit": False}))
    try:
        while sink.stats.fast_batches < 2:
            assert time.monotonic() < deadline, f"no fast batches: {sink.stats}"
            time.sleep(0.01)
        other.subscribe([settings.topics.chain, settings.topics.checkpoints])
        for _ in range(30):  # join, take partitions, read nothing of note
            other.poll(0.2)
    finally:
        other.close()  # and leave: the sink gets every partition back
    for p in range(3):
        total += writer.append(p, good)
    try:
        while sink.stats.inserted + sink.stats.skipped < total:
            assert time.monotonic() < deadline, f"the sink stalled: {sink.stats}"
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
    db = settings.clickhouse_database
    assert client_rows(
        settings, f"SELECT count(), uniqExact(chain, seq), min(decode_ok) FROM {db}.events"
    ) == [(total, total, 1)]
    assert revokes_in_flight >= 1, sink.stats


def _frames() -> Iterator[Any]:
    frame = sys._getframe(1)
    while frame is not None:
        yield frame
        frame = frame.f_back  # type: ignore[assignment]
