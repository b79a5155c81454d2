"""Helpers for the chainer tests (no tests here): raw input, reading chains and checkpoints
back, running a chainer in-process or as a process."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer

from processors.chainer import Chainer, ChainerOptions, chain_id
from processors.integrity.checkpoint import Checkpoint, KeyRing, open_checkpoint, origin_for
from processors.integrity.merkle import CompactRange
from processors.integrity.record import ChainedRecord, ChainHead, check_record
from schemas.chained import value_record
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import producer_conf
from sealtrail.infra.kafka_read import read_range, reader
from sealtrail.infra.samples import K8S_AUDIT_SAMPLES
from sealtrail.infra.service import StopFlag

PARTITIONS = 3
REPO = Path(__file__).resolve().parents[2]
K8S_SAMPLES = K8S_AUDIT_SAMPLES


def produce_raw(settings: Settings, items: Iterable[tuple[int, bytes | None]]) -> None:
    """Produce (partition, value) pairs to the raw topic, acknowledged before returning."""
    producer = Producer(producer_conf(settings))
    errors: list[object] = []
    for partition, value in items:
        while True:
            try:
                producer.produce(
                    settings.topics.raw,
                    value,
                    b"test",
                    partition=partition,
                    on_delivery=lambda err, _m: errors.append(err) if err else None,
                )
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(30) == 0
    assert errors == []


def raw_values(settings: Settings, partition: int) -> list[tuple[int, bytes]]:
    consumer = reader(settings)
    try:
        return [
            (m.offset(), m.value() or b"")
            for m in read_range(consumer, settings.topics.raw, partition)
        ]
    finally:
        consumer.close()


def chain_records(settings: Settings, partition: int) -> list[ChainedRecord]:
    consumer = reader(settings)
    try:
        out = []
        for m in read_range(consumer, settings.topics.chain, partition):
            assert m.key() == chain_id(settings.topics.raw, partition).encode()
            out.append(value_record(m.value() or b""))
        return out
    finally:
        consumer.close()


@dataclass
class StoredCheckpoint:
    note: str
    compact_range: bytes


def checkpoints(settings: Settings, partition: int) -> list[StoredCheckpoint]:
    consumer = reader(settings)
    try:
        out = []
        for m in read_range(consumer, settings.topics.checkpoints, partition):
            assert m.key() == chain_id(settings.topics.raw, partition).encode()
            headers = dict(m.headers() or [])
            out.append(StoredCheckpoint(m.value().decode(), headers["sealtrail-compact-range"]))
        return out
    finally:
        consumer.close()


def check_chain(settings: Settings, partition: int) -> list[ChainedRecord]:
    """Every raw record chained exactly once, in source order, with valid links and hashes."""
    raw = raw_values(settings, partition)
    # commit markers reach the partitions just after commit_transaction returns
    deadline = time.monotonic() + 5
    records = chain_records(settings, partition)
    while len(records) < len(raw) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = chain_records(settings, partition)
    head = ChainHead(chain_id(settings.topics.raw, partition))
    for record in records:
        check_record(record, head)
        head.advance(record)
    assert [(r.source_offset, r.payload) for r in records] == raw
    return records


def check_checkpoints(
    settings: Settings, partition: int, records: list[ChainedRecord], keyring: KeyRing
) -> list[Checkpoint]:
    """Every checkpoint verifies and matches the Merkle root of the chain at its size."""
    chain = chain_id(settings.topics.raw, partition)
    opened = []
    tree = CompactRange()
    roots = {0: tree.root()}
    for record in records:
        tree.append(record.hash)
        roots[tree.size] = tree.root()
    last_size = 0
    for stored in checkpoints(settings, partition):
        cp = open_checkpoint(stored.note, keyring, origin=origin_for(settings.deployment, chain))
        assert 0 < cp.size <= len(records)
        assert cp.size >= last_size
        last_size = cp.size
        assert cp.root_hash == roots[cp.size]
        assert cp.head_hash == records[cp.size - 1].hash
        assert CompactRange.from_bytes(cp.size, stored.compact_range).root() == cp.root_hash
        opened.append(cp)
    return opened


def chainer_failures_logged(error: BaseException) -> bool:
    """The stop message names the last Kafka error, in one line."""
    text = str(error)
    return "\n" not in text and "last error:" in text


def run_chainer(settings: Settings, **options: object) -> Chainer:
    """Run a chainer in-process with --once semantics unless told otherwise."""
    opts: dict[str, object] = {"once": True, "instance_id": "t-once", "session_timeout_ms": 6000}
    opts.update(options)
    chainer = Chainer(settings, ChainerOptions(**opts), StopFlag())  # type: ignore[arg-type]
    chainer.run()
    return chainer


def chainer_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SEALTRAIL_KAFKA": settings.kafka,
            "SEALTRAIL_TOPIC_PREFIX": settings.topic_prefix,
            "SEALTRAIL_DEPLOYMENT": settings.deployment,
            "SEALTRAIL_HOME": str(settings.home),
            "SEALTRAIL_CLICKHOUSE": settings.clickhouse,
        }
    )
    env.update(extra)
    return env


def sealtrail_bin() -> str:
    return str(REPO / ".venv" / "bin" / "sealtrail")


def kill9(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def mixed_payloads(start: int, count: int) -> list[tuple[int, bytes | None]]:
    """Realistic, garbage, empty and None values spread over the partitions."""
    samples = sorted(K8S_SAMPLES.glob("*.json"))
    out: list[tuple[int, bytes | None]] = []
    for i in range(start, start + count):
        kind = i % 7
        value: bytes | None
        if kind == 0:
            value = None
        elif kind == 1:
            value = b"\xc3\x01not avro at all \xff\xfe" + bytes([i % 256])
        elif kind == 2:
            value = b""
        else:
            value = samples[i % len(samples)].read_bytes()[:2000] + str(i).encode()
        out.append((i % PARTITIONS, value))
    return out


def cli_args(settings: Settings, *args: str) -> list[str]:
    return [
        "--kafka",
        settings.kafka,
        "--topic-prefix",
        settings.topic_prefix,
        "--deployment",
        settings.deployment,
        "--home",
        str(settings.home),
        *args,
    ]
