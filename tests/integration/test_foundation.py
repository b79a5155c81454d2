"""The foundation against the real broker and chdb: clients, transactions, topics, stack CLI."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from typer.testing import CliRunner

from sealtrail.cli import app
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import TopicError
from sealtrail.infra.kafka import admin, consumer_conf, producer_conf
from sealtrail.infra.topics import append_only_config, check_topics, init_topics

runner = CliRunner()


def _drain(consumer: Consumer, want: int, timeout: float = 15.0) -> list[bytes]:
    import time

    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        got.append(message.value())
    return got


def test_idempotent_round_trip(settings: Settings) -> None:
    producer = Producer(producer_conf(settings))
    acks: list[str | None] = []
    for i in range(50):
        producer.produce(
            settings.topics.raw,
            key=b"c1",
            value=f"v{i}".encode(),
            on_delivery=lambda err, msg: acks.append(err),
        )
    assert producer.flush(15) == 0
    assert acks == [None] * 50
    consumer = Consumer(consumer_conf(settings, f"g-{uuid.uuid4()}"))
    consumer.subscribe([settings.topics.raw])
    values = _drain(consumer, 50)
    consumer.close()
    assert values == [f"v{i}".encode() for i in range(50)]


def test_transactional_writes_visible_only_after_commit(settings: Settings) -> None:
    producer = Producer(producer_conf(settings, **{"transactional.id": f"tx-{uuid.uuid4()}"}))
    producer.init_transactions(15)
    consumer = Consumer(consumer_conf(settings, f"g-{uuid.uuid4()}"))
    consumer.assign([TopicPartition(settings.topics.chain, 0, 0)])
    producer.begin_transaction()
    for i in range(5):
        producer.produce(settings.topics.chain, value=f"t{i}".encode(), partition=0)
    producer.flush(10)
    assert _drain(consumer, 1, timeout=3) == []  # open transaction: invisible to read_committed
    producer.commit_transaction(15)
    assert _drain(consumer, 5) == [f"t{i}".encode() for i in range(5)]
    producer.begin_transaction()
    producer.produce(settings.topics.chain, value=b"aborted", partition=0)
    producer.abort_transaction(15)
    producer.begin_transaction()
    producer.produce(settings.topics.chain, value=b"after", partition=0)
    producer.commit_transaction(15)
    assert _drain(consumer, 1) == [b"after"]
    consumer.close()


def test_chdb_insert_and_select(base_settings: Settings) -> None:
    client = clickhouse.connect(base_settings)
    db = base_settings.clickhouse_database
    clickhouse.command(
        client,
        f"CREATE TABLE {db}.probe (k UInt64, v String) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100",
    )
    rows = [[i, f"row{i}"] for i in range(1000)]
    for _ in range(2):  # the same block twice with one token is stored once
        client.insert(
            f"{db}.probe",
            rows,
            column_names=["k", "v"],
            settings={"insert_deduplication_token": "probe:0-999"},
        )
    result = client.query(f"SELECT count(), sum(k), max(v) FROM {db}.probe").result_rows
    assert result == [(1000, sum(range(1000)), "row999")]


def test_topics_init_is_idempotent_and_safe(base_settings: Settings) -> None:
    first = init_topics(base_settings, partitions=2)
    assert all(t.created for t in first)
    second = init_topics(base_settings, partitions=2)
    assert not any(t.created for t in second)
    assert {t.partitions for t in second} == {2}
    check_topics(base_settings)


def test_topics_init_refuses_compacted_topic(base_settings: Settings) -> None:
    config = append_only_config(1) | {"cleanup.policy": "compact"}
    client = admin(base_settings)
    futures = client.create_topics([NewTopic(base_settings.topics.chain, 1, 1, config=config)])
    for future in futures.values():
        future.result()
    with pytest.raises(TopicError, match="cleanup.policy=compact"):
        init_topics(base_settings, partitions=1)
    result = runner.invoke(
        app,
        [
            "--kafka",
            base_settings.kafka,
            "--topic-prefix",
            base_settings.topic_prefix,
            "topics",
            "check",
        ],
    )
    assert result.exit_code == 2
    assert "not append-only" in result.output
    assert "Traceback" not in result.output


def test_topics_init_refuses_finite_retention(base_settings: Settings) -> None:
    config = append_only_config(1) | {"retention.ms": "86400000"}
    client = admin(base_settings)
    futures = client.create_topics([NewTopic(base_settings.topics.raw, 1, 1, config=config)])
    for future in futures.values():
        future.result()
    with pytest.raises(TopicError, match="retention.ms=86400000"):
        init_topics(base_settings, partitions=1)


def test_stack_up_twice_is_harmless(stack_home: Path, kafka_bootstrap: str) -> None:
    port = kafka_bootstrap.rsplit(":", 1)[1]
    result = runner.invoke(
        app, ["--home", str(stack_home), "stack", "up", "--port", port, "--no-topics"]
    )
    assert result.exit_code == 0, result.output
    assert "already running" in result.output
    assert kafka_bootstrap in result.output
    status = runner.invoke(app, ["--home", str(stack_home), "stack", "status"])
    assert status.exit_code == 0
    assert "running" in status.output


def test_stack_up_on_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = runner.invoke(app, ["--home", str(tmp_path), "stack", "up", "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.output
    assert "Traceback" not in result.output


def test_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = runner.invoke(app, ["--kafka", f"127.0.0.1:{port}", "topics", "init"])
    assert result.exit_code == 2
    assert "did not answer" in result.output
    assert "Traceback" not in result.output
