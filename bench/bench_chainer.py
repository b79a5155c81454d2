"""Chainer throughput against its baselines, on one broker in one run.

``python -m bench.bench_chainer --records N`` or ``run(records=N)`` (returns a dict):

(a) plain relay: consume -> produce the same bytes, idempotent, no transactions;
(b) no-op transactional relay: the same in transactions of the chainer's batch size, offsets
    sent to the transaction (the exactly-once floor);
(c) the chainer without checkpoints; (d) the chainer with checkpoints every 1000 records / 1 s.

Rates count from the first batch to the last commit (group join and start-up excluded). Peak
RSS is that of a ``sealtrail chain --once`` subprocess chaining N records, and 2N records.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import (
    KEEP_HELP,
    PeakRss,
    bench_broker,
    fresh_settings,
    machine,
    run_directory,
    sample_payloads,
)
from processors.chainer import Chainer, ChainerOptions
from processors.integrity.keys import write_keypair
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import consumer_conf, producer_conf
from sealtrail.infra.service import StopFlag

BATCH_RECORDS = 5000
WARM_UP_RECORDS = 2 * BATCH_RECORDS
BATCH_MS = 200


def prefill(settings: Settings, records: int, payloads: list[bytes]) -> None:
    producer = Producer(producer_conf(settings, **{"linger.ms": 20}))
    for i in range(records):
        while True:
            try:
                producer.produce(settings.topics.raw, payloads[i % len(payloads)], b"bench")
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60) != 0:
        raise RuntimeError("prefill did not complete")


def relay(settings: Settings, records: int, transactional: bool) -> float:
    """Consume the raw topic and produce the same bytes to the chain topic; return events/s."""
    group = f"bench-relay-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(consumer_conf(settings, group))
    extra = {"transactional.id": f"bench-{uuid.uuid4().hex[:8]}"} if transactional else {}
    producer = Producer(producer_conf(settings, **extra))
    if transactional:
        producer.init_transactions(30)
    consumer.subscribe([settings.topics.raw])
    done = 0
    first: float | None = None
    try:
        while done < records:
            batch: list[Any] = []
            deadline: float | None = None
            while len(batch) < BATCH_RECORDS:
                timeout = 0.2 if deadline is None else deadline - time.monotonic()
                if timeout <= 0:
                    break
                got = [
                    m
                    for m in consumer.consume(BATCH_RECORDS - len(batch), timeout)
                    if not m.error()
                ]
                if got and deadline is None:
                    deadline = time.monotonic() + BATCH_MS / 1000
                batch.extend(got)
                if not got and batch and done + len(batch) >= records:
                    break
            if not batch:
                continue
            if first is None:
                first = time.monotonic()
            if transactional:
                producer.begin_transaction()
            offsets: dict[int, int] = {}
            for m in batch:
                while True:
                    try:
                        producer.produce(
                            settings.topics.chain, m.value(), m.key(), partition=m.partition()
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
                offsets[m.partition()] = m.offset() + 1
            positions = [TopicPartition(settings.topics.raw, p, o) for p, o in offsets.items()]
            if transactional:
                producer.send_offsets_to_transaction(
                    positions, consumer.consumer_group_metadata(), 30
                )
                producer.commit_transaction(30)
            else:
                producer.flush(30)
                consumer.commit(offsets=positions, asynchronous=False)
            done += len(batch)
        assert first is not None
        return done / (time.monotonic() - first)
    finally:
        consumer.close()


def chainer_rate(settings: Settings, records: int, signing_key: Path | None) -> float:
    options = ChainerOptions(
        once=True,
        instance_id=f"bench-{uuid.uuid4().hex[:6]}",
        signing_key=signing_key,
        batch_records=BATCH_RECORDS,
        batch_ms=BATCH_MS,
        checkpoint_records=1000,
        checkpoint_seconds=1.0,
    )
    stats = Chainer(settings, options, StopFlag()).run()
    if stats.records != records or stats.first_batch_at is None or stats.last_commit_at is None:
        raise RuntimeError(f"the chainer chained {stats.records} of {records} records")
    return stats.records / (stats.last_commit_at - stats.first_batch_at)


def chainer_rss_mb(settings: Settings, signing_key: Path) -> float:
    """Peak RSS of a ``sealtrail chain --once`` subprocess over the current raw topic."""
    env = dict(os.environ)
    env.update(
        {
            "SEALTRAIL_KAFKA": settings.kafka,
            "SEALTRAIL_TOPIC_PREFIX": settings.topic_prefix,
            "SEALTRAIL_SIGNING_KEY": str(signing_key),
            "SEALTRAIL_INSTANCE_ID": "bench-rss",
            "SEALTRAIL_LOG_LEVEL": "warning",
        }
    )
    exe = Path(sys.executable).with_name("sealtrail")
    proc = subprocess.Popen([str(exe), "chain", "--once"], env=env, stdout=subprocess.DEVNULL)
    with PeakRss([proc.pid]) as peak:
        code = proc.wait(600)
    if code != 0:
        raise RuntimeError(f"sealtrail chain --once exited {code}")
    return peak.mb(proc.pid)


def run(records: int = 20000, bootstrap: str | None = None) -> dict[str, Any]:
    payloads = sample_payloads()
    avg = sum(map(len, payloads)) / len(payloads)
    keys = Path(tempfile.mkdtemp(prefix="sealtrail-bench-keys-"))
    signing_key, _public = write_keypair("bench", keys)
    results: dict[str, Any] = {"records": records, "avg_payload_bytes": round(avg)}
    with bench_broker(bootstrap=bootstrap) as kafka:
        stages = {
            "a_plain_relay": lambda s: relay(s, records, transactional=False),
            "b_txn_relay": lambda s: relay(s, records, transactional=True),
            "c_chainer": lambda s: chainer_rate(s, records, None),
            "d_chainer_checkpoints": lambda s: chainer_rate(s, records, signing_key),
        }
        # One short unmeasured run first: the process's first Chainer pays one-time costs
        # (lazy imports, the first transactional producer) inside its window, which made
        # "no checkpoints" (the first) read 0.55 of the relay in one run and 1.05 in the next.
        warm_up = min(WARM_UP_RECORDS, records)
        settings = fresh_settings(kafka)
        prefill(settings, warm_up, payloads)
        chainer_rate(settings, warm_up, signing_key)
        for name, stage in stages.items():
            settings = fresh_settings(kafka)
            prefill(settings, records, payloads)
            results[name] = round(stage(settings))
        # memory: one chainer run over N records and one over 2N records, checkpoints on
        settings = fresh_settings(kafka)
        prefill(settings, records, payloads)
        rss_n = chainer_rss_mb(settings, signing_key)
        settings = fresh_settings(kafka)
        prefill(settings, 2 * records, payloads)
        rss_2n = chainer_rss_mb(settings, signing_key)
    results["ratio_chainer_vs_txn_relay"] = round(results["c_chainer"] / results["b_txn_relay"], 3)
    results["ratio_checkpoints_vs_chainer"] = round(
        results["d_chainer_checkpoints"] / results["c_chainer"], 3
    )
    results["peak_rss_mb_N"] = round(rss_n, 1)
    results["peak_rss_mb_2N"] = round(rss_2n, 1)
    results["machine"] = machine()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--kafka", default=None, help="bootstrap (default: a throwaway broker)")
    parser.add_argument("--keep", action="store_true", help=KEEP_HELP)
    args = parser.parse_args()
    with run_directory(args.keep):
        print(json.dumps(run(args.records, args.kafka), indent=2))


if __name__ == "__main__":
    main()
