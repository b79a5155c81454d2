"""The raw pipeline the end-to-end bench is compared with: the least work that moves the same bytes.

Two processes, like the real pipeline, so their CPU is measured the same way:

* ``python -m bench.raw_pipeline produce``: a plain idempotent confluent-kafka producer (the
  project's producer settings: acks=all, idempotence, linger 5 ms, lz4) sends each event's exact
  JSON bytes, keyed by cluster, to one topic. Load has the webhook bench's shape: batches of
  ``--batch`` events, one cluster per batch, at most ``--inflight`` batches unacknowledged (as 8
  clients each waiting for their 200). A batch is acknowledged when its last record is: with
  idempotence, a partition's records are acknowledged in order.
* ``python -m bench.raw_pipeline consume``: one consumer (read_committed, no auto-commit) takes
  up to ``--batch-rows`` records or ``--batch-ms`` (the sink's defaults), inserts (cluster,
  time, body) rows into embedded ClickHouse with clickhouse-connect, then commits the offsets.
  ``time`` is the record's Kafka timestamp: the raw pipeline parses nothing.

Both write a ready file once set up, do their work, then wait for stdin to close (so the bench can
read their CPU times and peak RSS while they are still alive).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from bench.observer import MARK, MARK_DIGITS

RAW_TABLE = "bench_raw.events"
RAW_COLUMNS = ["cluster", "time", "body"]


def _stdin_closed() -> threading.Event:
    closed = threading.Event()

    def wait() -> None:
        sys.stdin.read()
        closed.set()

    threading.Thread(target=wait, daemon=True).start()
    return closed


def produce(args: argparse.Namespace) -> dict[str, Any]:
    events = Path(args.events).read_bytes().splitlines()
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
    clusters = [f"cluster-{i}".encode() for i in range(args.clusters)]
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    # Metadata and the idempotent producer id before the clock starts (the webhook has both by
    # the time it answers): one record to another topic the consumer does not read.
    producer.list_topics(args.topic, timeout=30)
    producer.produce(args.warmup_topic, b"warm-up")
    if producer.flush(60) != 0:
        raise SystemExit("raw producer: the warm-up record was not acknowledged within 60 s")
    acked: dict[str, float] = {}
    errors: list[str] = []
    inflight = 0

    def on_last(mark: str) -> Any:
        def callback(error: KafkaError | None, _message: object) -> None:
            nonlocal inflight
            inflight -= 1
            if error is not None:
                errors.append(str(error))
            else:
                acked[mark] = time.monotonic()

        return callback

    Path(args.ready).write_text("ready")
    sys.stdin.readline()  # "go"
    started = time.monotonic()
    for number, items in enumerate(batches):
        key = clusters[number % len(clusters)]
        last = items[-1]
        at = last.find(MARK)
        mark = last[at : at + len(MARK) + MARK_DIGITS].decode()
        while inflight >= args.inflight:
            producer.poll(0.1)
        inflight += 1
        for i, value in enumerate(items):
            callback = on_last(mark) if i == len(items) - 1 else None
            while True:
                try:
                    producer.produce(args.topic, value, key, on_delivery=callback)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    finished = time.monotonic()
    return {
        "started": started,
        "finished": finished,
        "events": len(events),
        "acked": acked,
        "errors": errors[:5],
        "unflushed": left,
    }


def consume(args: argparse.Namespace) -> dict[str, Any]:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{args.chdb}")
    client.command("CREATE DATABASE IF NOT EXISTS bench_raw")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {RAW_TABLE} (cluster LowCardinality(String), "
        "time DateTime64(3), body String) ENGINE = MergeTree ORDER BY (cluster, time)"
    )
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 52428800,
        }
    )
    parts = [TopicPartition(args.topic, p, 0) for p in range(args.partitions)]
    # Find the group coordinator before the clock starts (a new broker may still be loading it).
    deadline = time.monotonic() + 60
    while True:
        try:
            consumer.committed(parts, timeout=10)
            break
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    consumer.assign(parts)
    closed = _stdin_closed()
    inserted = 0
    Path(args.ready).write_text("ready")
    while not closed.is_set():
        messages = consumer.consume(args.batch_rows, timeout=args.batch_ms / 1000)
        clusters, times, bodies = [], [], []
        ends: dict[int, int] = {}
        for message in messages:
            if message.error():
                continue
            clusters.append(message.key())
            times.append(message.timestamp()[1])
            bodies.append(message.value())
            ends[cast(int, message.partition())] = cast(int, message.offset()) + 1
        if not bodies:
            continue
        client.insert(
            RAW_TABLE, [clusters, times, bodies], column_names=RAW_COLUMNS, column_oriented=True
        )
        consumer.commit(
            offsets=[TopicPartition(args.topic, p, end) for p, end in ends.items()],
            asynchronous=False,
        )
        inserted += len(bodies)
    consumer.close()
    return {"inserted": inserted}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("produce", "consume"):
        p = sub.add_parser(role)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topic", required=True)
        p.add_argument("--ready", required=True)
        p.add_argument("--out", required=True)
    producer = sub.choices["produce"]
    producer.add_argument("--events", required=True, help="one event's JSON per line")
    producer.add_argument("--warmup-topic", required=True, help="a topic for one warm-up record")
    producer.add_argument("--batch", type=int, default=400)
    producer.add_argument("--inflight", type=int, default=8)
    producer.add_argument("--clusters", type=int, default=3)
    consumer = sub.choices["consume"]
    consumer.add_argument("--group", required=True)
    consumer.add_argument("--partitions", type=int, required=True)
    consumer.add_argument("--chdb", required=True, help="embedded ClickHouse data path")
    consumer.add_argument("--batch-rows", type=int, default=10000)
    consumer.add_argument("--batch-ms", type=int, default=500)
    args = parser.parse_args(argv)
    if args.role == "produce":
        result = produce(args)
        Path(args.out).write_text(json.dumps(result))
        sys.stdin.read()  # stay alive until the bench has read our CPU times
    else:
        Path(args.out).write_text(json.dumps(consume(args)))


if __name__ == "__main__":
    main()
