"""processors.sink.fast_path: two container files, one written while the other is inserted, in
real chdb (no Kafka: the batches are built here)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from processors import sink_avro
from processors.integrity.record import ChainHead, link
from processors.sink.fast_path import AVRO_FILE_NAMES, FastPath, Offset
from processors.sink.options import SinkStats
from processors.sink.rows import ChainBatch, ChainItem, EventsInsert, events_insert
from processors.sink.writer import Writer
from schemas.chained import record_value
from schemas.codec import encode_audit_event
from sealtrail.infra.config import Settings
from sealtrail.infra.service import StopFlag
from tests.integration.sink_support import sample_events

CHAIN = "audit.events/0"


def _batches(sizes: list[int], chain: str = CHAIN) -> list[ChainBatch]:
    payloads = [encode_audit_event(e) for e in sample_events()]
    head, out, seq = ChainHead(chain), [], 0
    for size in sizes:
        items = []
        for _ in range(size):
            value = record_value(link(head, seq, 1_700_000_000_000_000 + seq, payloads[seq % 7]))
            parsed = sink_avro.parse_chained(value)
            assert parsed is not None
            items.append(ChainItem(seq, None, value, parsed[2]))
            seq += 1
        token = f"{chain}:{items[0].seq}-{items[-1].seq}"
        out.append(ChainBatch(chain, 0, items, token, 0))
    return out


def _inserts(sizes: list[int]) -> list[EventsInsert]:
    return [events_insert([batch]) for batch in _batches(sizes)]


@pytest.fixture
def writer(chdb_dsn: str) -> Writer:
    db = f"fast_path_{uuid.uuid4().hex[:10]}"
    settings = Settings(kafka="127.0.0.1:1", clickhouse=chdb_dsn, clickhouse_database=db)
    return Writer(settings, SinkStats(), StopFlag())


def _stored(writer: Writer) -> tuple[Any, ...]:
    sql = f"SELECT count(), uniqExact(seq) FROM {writer.db}.events"
    return tuple(writer.client.query(sql).result_rows[0])


def test_the_next_batch_is_written_while_an_insert_runs_and_each_commits_once_stored(
    writer: Writer, tmp_path: Path
) -> None:
    commits: list[list[Offset]] = []
    fast = FastPath(writer, tmp_path, lambda b: writer.insert_decoded(b, "chain"), commits.append)
    first, second, third = _inserts([30, 20, 25])
    fast.start(first)
    fast.defer_commit([Offset("chain", 0, 29)])
    fast.start(second)  # written into the other file while the first may still be inserted
    assert commits == [[Offset("chain", 0, 29)]]  # start() finished the first before the second
    fast.defer_commit([Offset("chain", 0, 49)])
    fast.start(third)
    fast.finish()
    assert commits == [[Offset("chain", 0, 29)], [Offset("chain", 0, 49)]]
    assert writer.stats.fast_batches == 3 and writer.stats.fast_fallbacks == 0
    assert _stored(writer) == (75, 75)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(AVRO_FILE_NAMES)
    fast.shutdown()
    assert not list(tmp_path.iterdir())  # a clean stop removes both files


def test_a_failed_insert_leaves_the_next_batch_on_the_fast_path(
    writer: Writer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The insert in flight fails (not about the data) after the next batch's file is written:
    it goes the Python way and its file is replaced, while the next batch's file is kept and
    inserted by ClickHouse."""
    sql = sink_avro.insert_sql
    calls = {"n": 0}

    def first_fails(db: str, path: str, marker: bytes, token: str) -> str:
        calls["n"] += 1
        return sql("no_such_database" if calls["n"] == 1 else db, path, marker, token)

    monkeypatch.setattr(sink_avro, "insert_sql", first_fails)
    python: list[str] = []

    def python_insert(insert: EventsInsert) -> float:
        python.append(insert.token)
        return writer.insert_decoded(insert, "chain")

    fast = FastPath(writer, tmp_path, python_insert, lambda _offsets: None)
    first, second = _inserts([30, 20])
    _ = writer.client  # migrated before the clock of the first insert starts
    fast.start(first)
    fast.start(second)  # written before the first insert's failure is seen
    fast.finish()
    assert python == [first.token]
    assert writer.stats.fast_fallbacks == 1 and writer.stats.fast_batches == 1
    assert _stored(writer) == (50, 50)
    fast.shutdown()


def test_a_file_that_cannot_be_written_sends_its_batch_the_python_way(
    writer: Writer, tmp_path: Path
) -> None:
    python: list[str] = []

    def python_insert(insert: EventsInsert) -> float:
        python.append(insert.token)
        return writer.insert_decoded(insert, "chain")

    fast = FastPath(writer, tmp_path / "missing", python_insert, lambda _offsets: None)
    (batch,) = _inserts([10])
    fast.start(batch)
    fast.finish()
    assert python == [batch.token] and writer.stats.fast_fallbacks == 1
    assert _stored(writer) == (10, 10)
    fast.shutdown()


def test_one_insert_stores_several_chains_and_commits_all_their_offsets(
    writer: Writer, tmp_path: Path
) -> None:
    """A round's batches of several chains are one insert with one token naming each range;
    the same insert redone the Python way (same token) stores nothing twice."""
    commits: list[list[Offset]] = []
    fast = FastPath(writer, tmp_path, lambda b: writer.insert_decoded(b, "chain"), commits.append)
    batches = [_batches([40], f"audit.events/{p}")[0] for p in range(3)]
    insert = events_insert(batches)
    assert insert.token == "audit.events/0:0-39+audit.events/1:0-39+audit.events/2:0-39"
    assert insert.rows == 120
    fast.start(insert)
    offsets = [Offset("chain", p, 39) for p in range(3)]
    fast.defer_commit(offsets)
    fast.finish()
    assert commits == [offsets]
    assert writer.stats.fast_batches == 1 and writer.stats.inserted == 120
    per_chain = f"SELECT chain, count(), min(seq), max(seq) FROM {writer.db}.events GROUP BY chain"
    rows = sorted(tuple(r) for r in writer.client.query(per_chain).result_rows)
    assert rows == [(f"audit.events/{p}", 40, 0, 39) for p in range(3)]
    # A retry of the same insert the Python way (e.g. after a crash before the commit) is
    # deduplicated by its token.
    writer.insert_decoded(insert, "chain")
    assert _stored(writer) == (120, 40)
    fast.shutdown()


def test_a_round_refused_for_one_chains_rows_keeps_the_other_chains_on_the_fast_path(
    writer: Writer, tmp_path: Path
) -> None:
    """A payload ClickHouse refuses (bytes after the datum: the Python path stores it with
    decode_ok = 0 and a reject) in one chain of a round: the round is redone chain by chain,
    the good chains by ClickHouse, only the bad chain the Python way; nothing twice."""
    python: list[str] = []

    def python_insert(insert: EventsInsert) -> float:
        python.append(insert.token)
        return writer.insert_decoded(insert, "chain")

    fast = FastPath(writer, tmp_path, python_insert, lambda _offsets: None)
    good_a = _batches([20], "audit.events/0")[0]
    good_c = _batches([15], "audit.events/2")[0]
    # Chain 1's seq 4 carries bytes after its AuditEvent datum.
    head = ChainHead("audit.events/1")
    payloads = [encode_audit_event(e) for e in sample_events()]
    items = []
    for seq in range(10):
        payload = payloads[seq % 7] + (b"\x00\x02\x04" if seq == 4 else b"")
        record_bytes = record_value(link(head, seq, 1_700_000_000_000_000 + seq, payload))
        parsed = sink_avro.parse_chained(record_bytes)
        assert parsed is not None  # ClickHouse is to decode it, and refuses
        items.append(ChainItem(seq, None, record_bytes, parsed[2]))
    bad = ChainBatch("audit.events/1", 0, items, "audit.events/1:0-9", 0)
    # Five rows of chain 0 are stored already (as a partial earlier attempt would leave them):
    # chain 0 on its own, under another token, must not store them twice.
    first_five = good_a._replace(items=good_a.items[:5], token="audit.events/0:0-4")
    writer.insert_decoded(events_insert([first_five]), "chain")
    fast.start(events_insert([good_a, bad, good_c]))
    fast.finish()
    assert python == ["audit.events/1:0-9"]
    assert writer.stats.fast_fallbacks == 2  # the round, then chain 1 on its own
    assert writer.stats.fast_batches == 2 and writer.stats.python_batches == 2
    assert writer.stats.skipped == 5
    per_chain = f"SELECT chain, count(), uniqExact(seq) FROM {writer.db}.events GROUP BY chain"
    rows = sorted(tuple(r) for r in writer.client.query(per_chain).result_rows)
    assert rows == [
        ("audit.events/0", 20, 20),
        ("audit.events/1", 10, 10),
        ("audit.events/2", 15, 15),
    ]
    bad_rows = f"SELECT seq FROM {writer.db}.events WHERE decode_ok = 0"
    assert writer.client.query(bad_rows).result_rows == [(4,)]
    fast.shutdown()
