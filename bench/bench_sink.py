"""Sink throughput into embedded ClickHouse beside a raw clickhouse-connect insert of the same rows.

``python -m bench.bench_sink --rows N``: fills the chain topic of a throwaway (or
``SEALTRAIL_KAFKA``) broker with N chained Falco sample events, runs ``Sink(...).run()`` with
``--once`` and compares its rows/s with inserting the same rows, already decoded and pivoted in
memory, into a table of the same schema (same process, same chdb store). Also reports the sink's
insert path alone (decode + column build + insert, without Kafka) against the same baseline.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import (
    KEEP_HELP,
    Result,
    bench_broker,
    fresh_settings,
    print_table,
    run_directory,
    sample_payloads,
    write_json,
)
from processors.integrity.record import ChainedRecord, ChainHead, link
from processors.sink import Sink, SinkOptions, event_columns
from schemas.chained import record_value
from sealtrail.infra import clickhouse
from sealtrail.infra.kafka import consumer_conf, producer_conf
from sealtrail.infra.service import tune_gc


def _fill(settings: Any, rows: int, partitions: int) -> list[ChainedRecord]:
    payloads = sample_payloads()
    producer = Producer(producer_conf(settings, **{"transactional.id": f"bench-{uuid.uuid4()}"}))
    producer.init_transactions(30)
    heads = [ChainHead(f"{settings.topics.raw}/{p}") for p in range(partitions)]
    records: list[ChainedRecord] = []
    producer.begin_transaction()
    for i in range(rows):
        p = i % partitions
        record = link(
            heads[p], i // partitions, time.time_ns() // 1000, payloads[i % len(payloads)]
        )
        records.append(record)
        value = record_value(record)
        while True:
            try:
                producer.produce(
                    settings.topics.chain, key=record.chain.encode(), value=value, partition=p
                )
                break
            except BufferError:
                producer.poll(0.05)
    producer.commit_transaction(120)
    return records


def _warm_group(settings: Any, sink: Sink, partitions: int) -> None:
    """Ask the group coordinator for the sink's offsets once, as the sink does (retrying while
    the broker loads it). A running cluster has it loaded; a fresh bench broker creates
    __consumer_offsets on the first group request, which took 0.2-1 s here: a one-time cost of
    the cluster that the sink's first offset lookup paid inside the clock, and the baseline
    (no Kafka) never does."""
    consumer = Consumer(consumer_conf(settings, sink.group))
    try:
        sink._committed(
            consumer, [TopicPartition(settings.topics.chain, p) for p in range(partitions)]
        )
    finally:
        consumer.close()


def _settle(client: Any, db: str, limit_s: float = 60.0) -> None:
    """Wait for the background merges of ``db``'s tables to end, so that the next measurement
    does not share the cores with the previous one's merges."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        (running,) = client.query(
            "SELECT count() FROM system.merges WHERE database = {db:String}", parameters={"db": db}
        ).result_rows[0]
        if not running:
            return
        time.sleep(0.1)


def run(
    rows: int = 100_000, batch_rows: int = 10_000, partitions: int = 3, bootstrap: str | None = None
) -> dict[str, Any]:
    store = Path(tempfile.mkdtemp(prefix="sealtrail-bench-sink-"))
    with bench_broker(bootstrap=bootstrap) as kafka:
        settings = fresh_settings(
            kafka, partitions, clickhouse=f"chdb://{store}", clickhouse_database="bench_sink"
        )
        records = _fill(settings, rows, partitions)

        sink = Sink(settings, SinkOptions(once=True, batch_rows=batch_rows))
        # Open the embedded engine and migrate before the clock starts: the baseline below
        # inserts into an open store too, so both measure steady-state rows/s. Likewise the
        # cluster's group coordinator (_warm_group).
        _ = sink.client
        _warm_group(settings, sink, partitions)
        # The garbage collector as `sealtrail sink` sets it; the baselines run with
        # CPython's defaults, as a plain clickhouse-connect program does.
        thresholds = gc.get_threshold()
        tune_gc()
        started = time.perf_counter()
        stats = sink.run()
        sink_s = time.perf_counter() - started
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        assert stats.inserted == rows, stats

        client = clickhouse.connect(settings)
        db = settings.clickhouse_database
        _settle(client, db)
        by_chain: dict[str, list[ChainedRecord]] = {}
        for record in records:
            by_chain.setdefault(record.chain, []).append(record)
        chunks = [
            chain_records[i : i + batch_rows]
            for chain_records in by_chain.values()
            for i in range(0, len(chain_records), batch_rows)
        ]

        # Baseline: rows decoded and pivoted beforehand, plain inserts into the same schema.
        client.command(f"CREATE TABLE {db}.events_raw AS {db}.events")
        from processors.clickhouse_schema import EVENT_COLUMNS

        prepared = [event_columns(chunk)[0] for chunk in chunks]
        started = time.perf_counter()
        for columns in prepared:
            client.insert(
                f"{db}.events_raw", columns, column_names=list(EVENT_COLUMNS), column_oriented=True
            )
        raw_s = time.perf_counter() - started
        _settle(client, db)

        # The sink's insert path without Kafka: decode + pivot + insert with dedup tokens.
        client.command(f"CREATE TABLE {db}.events_path AS {db}.events")
        started = time.perf_counter()
        for chunk in chunks:
            columns, _ = event_columns(chunk)
            client.insert(
                f"{db}.events_path",
                columns,
                column_names=list(EVENT_COLUMNS),
                column_oriented=True,
                settings={"insert_deduplication_token": f"{chunk[0].chain}:{chunk[0].seq}"},
            )
        path_s = time.perf_counter() - started

    sink_rate, raw_rate, path_rate = rows / sink_s, rows / raw_s, rows / path_s
    return {
        "rows": rows,
        "batch_rows": batch_rows,
        "sink_rows_per_s": sink_rate,
        "raw_insert_rows_per_s": raw_rate,
        "sink_insert_path_rows_per_s": path_rate,
        "ratio_sink_vs_raw": sink_rate / raw_rate,
        "ratio_insert_path_vs_raw": path_rate / raw_rate,
        "sink_seconds": sink_s,
        "sink_decode_seconds": stats.decode_seconds,
        "sink_insert_seconds": stats.insert_seconds,
        "sink_subtree_seconds": stats.subtree_seconds,
        "sink_kafka_and_other_seconds": sink_s - stats.decode_seconds - stats.insert_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help=KEEP_HELP)
    args = parser.parse_args()
    with run_directory(args.keep):
        result = run(args.rows, args.batch_rows, args.partitions)
    print(json.dumps(result, indent=2))
    lines = [
        Result(
            "sink: chain topic -> chdb (--once)",
            result["sink_rows_per_s"],
            "rows/s",
            "raw clickhouse-connect insert",
            result["raw_insert_rows_per_s"],
        ),
        Result(
            "sink insert path (decode+insert, no Kafka)",
            result["sink_insert_path_rows_per_s"],
            "rows/s",
            "raw clickhouse-connect insert",
            result["raw_insert_rows_per_s"],
        ),
    ]
    print_table(lines)
    write_json("sink", lines, {"sink": result})


if __name__ == "__main__":
    main()
