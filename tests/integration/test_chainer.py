"""The chainer against the real broker: exactly once, checkpoints, recovery, faults, CLI."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from typer.testing import CliRunner

from processors.chainer import (
    ChainDivergence,
    Chainer,
    ChainerOptions,
    chain_id,
    group_id,
)
from processors.integrity.checkpoint import Checkpoint, KeyRing, open_checkpoint, origin_for
from processors.integrity.errors import KeyFileError
from processors.integrity.keys import load_verifiers, write_keypair
from processors.integrity.merkle import CompactRange
from processors.integrity.record import ChainedRecord, ChainHead, check_record, link
from processors.verifier import offsite
from schemas.codec import decode_chained_fields, encode_chained
from sealtrail.cli import app
from sealtrail.config import Settings
from sealtrail.errors import KafkaUnavailable
from sealtrail.kafka import admin, consumer_conf, producer_conf
from sealtrail.kafka_read import read_range, reader
from sealtrail.samples import K8S_AUDIT_SAMPLES
from sealtrail.service import StopFlag

runner = CliRunner()

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
            out.append(ChainedRecord(*decode_chained_fields(m.value() or b"")))
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


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    return write_keypair("sealtrail.test", tmp_path / "keys")


@pytest.fixture
def keyring(keypair: tuple[Path, Path]) -> KeyRing:
    return load_verifiers(keypair[1])


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """The CLI installs SIGTERM/SIGINT handlers in this (main) thread: put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


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


# ---------------------------------------------------------------------------- tests


def test_once_chains_everything_then_continues_without_fork(
    settings: Settings, keypair: tuple[Path, Path], keyring: KeyRing, tmp_path: Path
) -> None:
    produce_raw(settings, mixed_payloads(0, 300))
    exports = tmp_path / "offsite"
    first = run_chainer(
        settings,
        signing_key=keypair[0],
        checkpoint_records=40,
        batch_records=64,
        export_checkpoints=exports,
    )
    assert first.stats.records == 300
    sizes = {}
    for p in range(PARTITIONS):
        records = check_chain(settings, p)
        assert len(records) == 100
        cps = check_checkpoints(settings, p, records, keyring)
        # every 40 records, plus the one written at clean shutdown for the last 20
        assert [cp.size for cp in cps] == [40, 80, 100]
        sizes[p] = len(records)

    produce_raw(settings, mixed_payloads(300, 150))
    second = run_chainer(
        settings, signing_key=keypair[0], checkpoint_records=40, export_checkpoints=exports
    )
    assert second.stats.records == 150
    for p in range(PARTITIONS):
        records = check_chain(settings, p)
        assert len(records) == sizes[p] + 50
        cps = check_checkpoints(settings, p, records, keyring)
        assert cps[-1].size == len(records)
        # the offsite copy holds the same notes, one per block
        notes = offsite.read_notes(exports, chain_id(settings.topics.raw, p))
        assert [open_checkpoint(n, keyring) for n in notes] == cps

    # a third run with nothing new writes nothing
    third = run_chainer(settings, signing_key=keypair[0])
    assert third.stats.records == 0 and third.stats.checkpoints == 0


def test_without_key_chains_but_writes_no_checkpoints(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    produce_raw(settings, mixed_payloads(0, 60))
    with caplog.at_level(logging.INFO, logger="sealtrail.chainer"):
        chainer = run_chainer(settings)
    assert chainer.stats.records == 60
    assert "no signing key: chains will be linked but not anchored" in caplog.text
    for p in range(PARTITIONS):
        assert len(check_chain(settings, p)) == 20
        assert checkpoints(settings, p) == []


def test_time_based_checkpoints(
    settings: Settings, keypair: tuple[Path, Path], keyring: KeyRing
) -> None:
    produce_raw(settings, [(0, b"a"), (0, b"b")])
    stop = StopFlag()
    chainer = Chainer(
        settings,
        ChainerOptions(
            instance_id="t-time",
            signing_key=keypair[0],
            checkpoint_seconds=0.3,
            session_timeout_ms=6000,
        ),
        stop,
    )
    thread = threading.Thread(target=chainer.run)
    thread.start()
    try:
        wait_until(lambda: len(checkpoints(settings, 0)) >= 1, 30, "a first checkpoint")
        produce_raw(settings, [(0, b"c")])
        wait_until(lambda: len(checkpoints(settings, 0)) >= 2, 30, "a second checkpoint")
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    records = check_chain(settings, 0)
    cps = check_checkpoints(settings, 0, records, keyring)
    assert [cp.size for cp in cps] == [2, 3]


def test_forged_chain_record_stops_with_divergence(
    settings: Settings, restore_signals: None
) -> None:
    produce_raw(settings, mixed_payloads(0, 30))
    run_chainer(settings)
    # someone appends a well-formed record to chain 1 with a transactional producer
    chain = chain_id(settings.topics.raw, 1)
    head = ChainHead(chain)
    last = chain_records(settings, 1)[-1]
    head.advance(last)
    forged = link(head, last.source_offset + 1, 1, b"forged")
    producer = Producer(producer_conf(settings, **{"transactional.id": f"forger-{uuid.uuid4()}"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(
        settings.topics.chain,
        encode_chained(
            {
                "chain": chain,
                "seq": forged.seq,
                "prev_hash": forged.prev_hash,
                "hash": forged.hash,
                "source_offset": forged.source_offset,
                "ingested_at": forged.ingested_at_us,
                "payload": forged.payload,
            }
        ),
        chain.encode(),
        partition=1,
    )
    producer.commit_transaction(30)
    with pytest.raises(ChainDivergence) as info:
        run_chainer(settings)
    message = str(info.value)
    assert chain in message and f"seq {forged.seq}" in message
    assert f"raw offset {forged.source_offset}" in message
    assert f"committed raw offset {last.source_offset + 1}" in message
    assert info.value.exit_code == 2
    # the CLI says it in one line and exits 2
    result = runner.invoke(app, cli_args(settings, "chain", "--once", "--instance-id", "t-once"))
    assert result.exit_code == 2
    assert "error: chain" in result.output and "disagree" in result.output
    assert "Traceback" not in result.output


def test_committed_offset_ahead_of_chain_stops(settings: Settings) -> None:
    produce_raw(settings, [(0, b"x%d" % i) for i in range(10)])
    # the group commits raw offset 5 though nothing was chained: records 0..4 would be skipped
    consumer = Consumer(consumer_conf(settings, group_id(settings)))
    consumer.commit(offsets=[TopicPartition(settings.topics.raw, 0, 5)], asynchronous=False)
    consumer.close()
    with pytest.raises(
        ChainDivergence, match="it is empty, but the group .* committed raw offset 5"
    ):
        run_chainer(settings)
    assert chain_records(settings, 0) == []


def test_world_readable_key_is_refused(
    settings: Settings, keypair: tuple[Path, Path], restore_signals: None
) -> None:
    keypair[0].chmod(0o644)
    with pytest.raises(KeyFileError, match="accessible by group or others"):
        run_chainer(settings, signing_key=keypair[0])
    result = runner.invoke(
        app,
        cli_args(settings, "chain", "--once", "--signing-key", str(keypair[0])),
    )
    assert result.exit_code == 2
    assert "chmod 600" in result.output
    assert "PRIVATE" not in result.output


def test_cli_chain_once(
    settings: Settings, keypair: tuple[Path, Path], keyring: KeyRing, restore_signals: None
) -> None:
    produce_raw(settings, mixed_payloads(0, 30))
    result = runner.invoke(
        app,
        cli_args(settings, "chain", "--once", "--instance-id", "t-cli"),
        env={"SEALTRAIL_SIGNING_KEY": str(keypair[0])},
    )
    assert result.exit_code == 0, result.output
    assert "chained 30 records" in result.output
    for p in range(PARTITIONS):
        records = check_chain(settings, p)
        assert [cp.size for cp in check_checkpoints(settings, p, records, keyring)] == [10]
    bad = runner.invoke(app, cli_args(settings, "chain", "--once", "--batch-records", "0"))
    assert bad.exit_code == 2


def test_two_instances_rebalance_keeps_chains_contiguous(settings: Settings) -> None:
    stop_feed = threading.Event()
    fed = [0]

    def feed() -> None:
        while not stop_feed.is_set():
            produce_raw(settings, mixed_payloads(fed[0], 30))
            fed[0] += 30
            time.sleep(0.05)

    def start(name: str) -> tuple[Chainer, StopFlag, threading.Thread]:
        stop = StopFlag()
        chainer = Chainer(
            settings,
            ChainerOptions(instance_id=name, batch_records=200, session_timeout_ms=6000),
            stop,
        )
        thread = threading.Thread(target=chainer.run, name=name)
        thread.start()
        return chainer, stop, thread

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        a, stop_a, thread_a = start("t-a")
        wait_until(lambda: a.stats.records > 100, 30, "A to chain")
        b, stop_b, thread_b = start("t-b")
        wait_until(lambda: b.stats.records > 100, 30, "B to join and chain")
        stop_a.set()
        thread_a.join(30)
        assert not thread_a.is_alive()
        before = b.stats.records
        # A does not leave the group (static membership): B gets A's partitions after A's
        # session times out
        wait_until(
            lambda: len(b._chains) == PARTITIONS and b.stats.records > before + 200,
            40,
            "B to take every partition",
        )
    finally:
        stop_feed.set()
        feeder.join(30)
    stop_b.set()
    thread_b.join(30)
    assert not thread_b.is_alive()
    run_chainer(settings, instance_id="t-b")
    total = 0
    for p in range(PARTITIONS):
        total += len(check_chain(settings, p))
    assert total == fed[0]
    assert a.stats.records > 0 and b.stats.records > 0


def _kill_loop(settings: Settings, keypair: tuple[Path, Path], tmp_path: Path, kills: int) -> None:
    rng = random.Random()
    total_records = 600 * kills
    stop_feed = threading.Event()
    fed = [0]

    def feed() -> None:
        # a steady stream spread over the kills
        while fed[0] < total_records and not stop_feed.is_set():
            produce_raw(settings, mixed_payloads(fed[0], 100))
            fed[0] += 100
            time.sleep(0.1)

    env = chainer_env(
        settings, SEALTRAIL_SIGNING_KEY=str(keypair[0]), SEALTRAIL_INSTANCE_ID="t-kill"
    )
    args = [
        sealtrail_bin(),
        "chain",
        "--batch-records",
        "100",
        "--batch-ms",
        "50",
        "--checkpoint-records",
        "50",
        "--checkpoint-seconds",
        "0.2",
    ]
    feeder = threading.Thread(target=feed)
    feeder.start()
    log_path = tmp_path / "chainer.log"
    chained_between_kills = []
    try:
        for _ in range(kills):
            with log_path.open("ab") as log_file:
                proc = subprocess.Popen(args, env=env, stdout=log_file, stderr=log_file)
            # kill anywhere from start-up (recovery) to steady streaming
            time.sleep(rng.uniform(0.8, 3.0))
            kill9(proc.pid)
            proc.wait(10)
            chained_between_kills.append(sum(len(chain_records(settings, p)) for p in range(3)))
    finally:
        stop_feed.set()
        feeder.join(60)
    # SIGTERM: commit what it has, write final checkpoints, exit 0
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(args, env=env, stdout=log_file, stderr=log_file)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log_path.read_text()[-3000:]
    final = subprocess.run(
        [*args, "--once"], env=env, capture_output=True, timeout=120, check=False
    )
    assert final.returncode == 0, final.stderr.decode()[-3000:]
    # the killed runs did make progress (the kills hit a working chainer)
    assert chained_between_kills[-1] > 0, log_path.read_text()[-3000:]
    keyring = load_verifiers(keypair[1])
    total = 0
    for p in range(PARTITIONS):
        records = check_chain(settings, p)
        cps = check_checkpoints(settings, p, records, keyring)
        assert cps and cps[-1].size == len(records)
        total += len(records)
    assert total == fed[0] >= 1000


def test_kill_9_at_random_points_chains_exactly_once(
    settings: Settings, keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    _kill_loop(settings, keypair, tmp_path, kills=5)


@pytest.mark.slow
def test_kill_9_many_times(settings: Settings, keypair: tuple[Path, Path], tmp_path: Path) -> None:
    _kill_loop(settings, keypair, tmp_path, kills=30)


def test_persistent_abort_rewinds_then_stops(settings: Settings) -> None:
    produce_raw(settings, [(0, b"small-%d" % i) for i in range(10)])
    run_chainer(settings)
    # the chain topic now refuses what the raw topic accepted: every transaction must abort
    resource = ConfigResource(
        ResourceType.TOPIC,
        settings.topics.chain,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes",
                "100000",
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    client = admin(settings)
    for future in client.incremental_alter_configs([resource]).values():
        future.result(30)
    produce_raw(settings, [(0, b"after"), (0, os.urandom(200_000))])
    with pytest.raises(KafkaUnavailable, match="transactions in a row failed") as info:
        run_chainer(settings, batch_records=10)
    assert chainer_failures_logged(info.value)
    records = chain_records(settings, 0)
    assert [r.payload for r in records] == [b"small-%d" % i for i in range(10)]
    # once the topic accepts it again, the same raw records are chained, once each
    resource = ConfigResource(
        ResourceType.TOPIC,
        settings.topics.chain,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes",
                str(1024 * 1024),
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    client = admin(settings)
    for future in client.incremental_alter_configs([resource]).values():
        future.result(30)
    chainer = run_chainer(settings)
    assert chainer.stats.records == 2
    assert len(check_chain(settings, 0)) == 12


def test_fenced_static_consumer_is_rebuilt_and_chaining_goes_on(
    settings: Settings, keypair: tuple[Path, Path], keyring: KeyRing
) -> None:
    """A second member joining with the chainer's instance id fences it (as a broker restart
    can on its own): the chainer rebuilds its consumer, recovers, and loses nothing."""
    produce_raw(settings, mixed_payloads(0, 60))
    stop = StopFlag()
    chainer = Chainer(
        settings,
        ChainerOptions(
            instance_id="t-fenced",
            batch_records=50,
            signing_key=keypair[0],
            checkpoint_records=40,
            session_timeout_ms=6000,
        ),
        stop,
    )
    thread = threading.Thread(target=chainer.run, name="t-fenced")
    thread.start()
    try:
        wait_until(lambda: chainer.stats.records >= 60, 30, "the chainer to chain 60 records")
        intruder = Consumer(
            consumer_conf(
                settings,
                group_id(settings),
                **{
                    "group.instance.id": "t-fenced",
                    "session.timeout.ms": 6000,
                    "enable.auto.commit": False,
                },
            )
        )
        intruder.subscribe([settings.topics.raw])
        try:
            wait_until(
                lambda: bool(intruder.poll(0.2) or True) and chainer.stats.consumer_rebuilds >= 1,
                40,
                "the chainer to see its consumer fenced and rebuild it",
            )
        finally:
            intruder.close()
        produce_raw(settings, mixed_payloads(60, 60))
        wait_until(lambda: chainer.stats.records >= 120, 60, "chaining to go on after fencing")
    finally:
        started = time.monotonic()
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "the chainer did not stop after its consumer was rebuilt"
    assert time.monotonic() - started < 20
    assert chainer.stats.consumer_rebuilds >= 1
    total = 0
    for p in range(PARTITIONS):
        records = check_chain(settings, p)  # contiguous, linked, no record twice
        check_checkpoints(settings, p, records, keyring)
        total += len(records)
    assert total == 120
    assert sorted(v for p in range(PARTITIONS) for _, v in raw_values(settings, p)) == sorted(
        r.payload for p in range(PARTITIONS) for r in check_chain(settings, p)
    )
