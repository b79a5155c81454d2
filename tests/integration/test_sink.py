"""The ClickHouse sink against the real broker and chdb: exactly once, hashes, rejects, CLI."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from typer.testing import CliRunner

from processors.integrity.checkpoint import Checkpoint
from processors.integrity.merkle import EMPTY_ROOT
from processors.integrity.record import ZERO_HASH, record_hash
from processors.sink import AVRO_FILE_NAMES, Sink, SinkOptions
from producers.k8s import Reject, reject_event
from schemas.codec import encode_audit_event
from sealtrail.cli import app
from sealtrail.commands.sink import run_query
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import consumer_conf
from sealtrail.infra.service import StopFlag
from tests.integration.sink_support import ChainWriter, sample_events, sample_payloads

ROOT = Path(__file__).resolve().parents[2]
SEALTRAIL = str(Path(sys.executable).parent / "sealtrail")
runner = CliRunner()


def _once(settings: Settings, group: str = "sealtrail-sink", **kw: int) -> dict[str, float | int]:
    return Sink(settings, SinkOptions(once=True, group=group, **kw)).run().as_dict()


def _rows(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    client = clickhouse.connect(settings)
    return [tuple(r) for r in run_query(client, settings.clickhouse_database, sql)[1]]


def _check_chains(settings: Settings) -> int:
    """Every chain is seq 0..n-1, linked, and every stored hash recomputes. Returns rows."""
    client = clickhouse.connect(settings)
    result = client.query(
        f"SELECT chain, seq, prev_hash, hash, source_offset, toUnixTimestamp64Micro(ingested_at),"
        f" payload FROM {settings.clickhouse_database}.events ORDER BY chain, seq",
        column_formats={"prev_hash": "bytes", "hash": "bytes", "payload": "bytes"},
    ).result_rows
    expect: dict[str, tuple[int, bytes]] = {}
    for chain, seq, prev, digest, offset, ingested, payload in result:
        n, head = expect.get(chain, (0, ZERO_HASH))
        assert seq == n, f"{chain}: seq {seq}, expected {n}"
        assert prev == head
        assert record_hash(chain, seq, prev, offset, ingested, payload) == digest
        expect[chain] = (n + 1, digest)
    return len(result)


def test_sink_stores_each_record_once_with_recomputable_hashes(settings: Settings) -> None:
    payloads = sample_payloads()
    writer = ChainWriter(settings)
    for p in range(3):
        writer.append(p, payloads * 2)
    writer.append(1, [b"not avro at all"])
    total = 3 * 2 * len(payloads) + 1
    first = _once(settings, batch_rows=50)
    assert first["inserted"] == total and first["rejects"] == 1
    assert _check_chains(settings) == total
    assert _rows(settings, "SELECT countIf(decode_ok = 0), count() FROM events") == [(1, total)]
    assert _rows(settings, "SELECT chain, seq, error LIKE '%single-object%' FROM rejects") == [
        (f"{settings.topics.raw}/1", 2 * len(payloads), 1)
    ]
    # Decoded columns follow the payloads; the dedup view counts each audit event once.
    assert _rows(
        settings,
        "SELECT user_name, verb, namespace FROM events WHERE resource = 'deployments' "
        "AND verb = 'delete' LIMIT 1",
    ) == [("minikube-user", "delete", "default")]
    distinct = len({(e["audit_id"], e["stage"]) for e in sample_events()})
    assert _rows(settings, "SELECT count() FROM events_dedup") == [(distinct,)]

    # Nothing new: the same group adds nothing, a new group from offset 0 skips everything.
    assert _once(settings)["inserted"] == 0
    again = _once(settings, group="sealtrail-sink-replay", batch_rows=77)
    assert again["inserted"] == 0 and again["skipped"] == total
    # Appending continues the chains.
    writer.append(0, payloads[:5])
    assert _once(settings)["inserted"] == 5
    assert _check_chains(settings) == total + 5


def test_a_round_of_every_partition_is_one_insert(settings: Settings) -> None:
    """Buffers of several chain partitions flushed together are one fast insert (ClickHouse's
    cost is mostly per insert), a chain the fast path cannot take goes the Python way beside
    it, and every partition's offset is committed once both are stored."""
    payloads = sample_payloads()
    writer = ChainWriter(settings)
    for p in range(3):
        writer.append(p, payloads)
    writer.append(1, [b"not avro at all"])  # partition 1 goes the Python way
    total = 3 * len(payloads) + 1
    group = "sealtrail-sink-round"
    sink = Sink(settings, SinkOptions(once=True, group=group, batch_rows=10_000))
    consumer = sink._new_consumer()
    try:
        sink._assign_all(consumer)
        # Read everything into the buffers before flushing: the round is then all three.
        deadline = time.monotonic() + 120
        while sum(len(b.messages) for b in sink._buffers.values()) < total:
            assert time.monotonic() < deadline, "the records did not arrive within 120 s"
            sink._poll(consumer)
        sink._flush_all()
        assert sink.stats.fast_batches == 1 and sink.stats.python_batches == 1
        assert sink.stats.inserted == total
    finally:
        sink.fast.shutdown()
        consumer.close()
    assert _check_chains(settings) == total
    reader = Consumer(consumer_conf(settings, group))
    try:
        partitions = [TopicPartition(settings.topics.chain, p) for p in range(3)]
        committed = {tp.partition: tp.offset for tp in reader.committed(partitions, timeout=30)}
    finally:
        reader.close()
    # Each partition's last record + 1; partition 1's last record follows its first
    # transaction's marker, and the marker after the last record is not counted.
    assert committed == {0: len(payloads), 1: len(payloads) + 2, 2: len(payloads)}
    assert _once(settings, group=group)["inserted"] == 0


def test_checkpoint_notes_are_loaded(settings: Settings) -> None:
    writer = ChainWriter(settings)
    cp = Checkpoint(f"sealtrail.test/{settings.topics.raw}/0", 0, EMPTY_ROOT, ZERO_HASH, 42)
    writer.checkpoint_note(0, cp.body() + "\n\u2014 sealtrail.test AAAAAAAA\n")
    writer.checkpoint_note(2, "any text at all")
    stats = _once(settings)
    assert stats["checkpoints"] == 2
    rows = _rows(
        settings,
        "SELECT chain, kafka_partition, size, key_name, parse_error != '', note FROM checkpoints "
        "ORDER BY kafka_partition",
    )
    assert rows[0][:5] == (f"{settings.topics.raw}/0", 0, 0, "sealtrail.test", 0)
    assert rows[1][:5] == (f"{settings.topics.raw}/2", 2, 0, "", 1)
    assert rows[1][5] == "any text at all"
    assert _once(settings, group="other")["checkpoints"] == 0


EXPECTED = {
    "who_deleted_deployment": [("minikube-user",)],
    "service_accounts_touching_secrets": [("system:serviceaccount:ci:deployer",)],
    "changes_in_namespace_before": None,  # checked below: only changes, all before T
    "denied_requests": [("mallory", "get", "secrets", 403)],
    "exec_attach": [("attach", "minikube-user"), ("exec", "minikube-user")],
    "rbac_changes": None,
    "producer_rejects": [("webhook", "auditID is missing", "16", "false")],
}


def _doc_queries() -> dict[str, str]:
    text = (ROOT / "docs" / "QUERIES.md").read_text()
    found = re.findall(r"<!-- query: ([\w-]+) -->\s*```sql\n(.*?)```", text, re.S)
    return dict(found)


def test_queries_doc_gives_expected_answers_on_falco_samples(settings: Settings) -> None:
    events = sample_events()
    denied = dict(next(e for e in events if e["object_resource"] == "secrets"))
    denied.update(
        audit_id="denied-1",
        user_name="mallory",
        verb="get",
        response_code=403,
        object_namespace="default",
        user_groups=["system:authenticated"],
    )
    robot = dict(denied)
    latest = max(int(e["stage_at"] or 0) for e in events)  # type: ignore[call-overload]
    robot.update(
        audit_id="sa-1",
        user_name="system:serviceaccount:ci:deployer",
        verb="list",
        response_code=200,
        stage_at=latest,
    )
    refused = reject_event(Reject("auditID is missing", b'{"kind":"Event"}'), "c1", "webhook", 1)
    extra = [encode_audit_event(denied), encode_audit_event(robot), encode_audit_event(refused)]
    payloads = [encode_audit_event(e) for e in events] + extra
    writer = ChainWriter(settings)
    writer.append(0, payloads)
    writer.append(1, payloads[:10])  # a webhook retry: counted once by the views
    _once(settings)
    queries = _doc_queries()
    assert set(EXPECTED) <= set(queries), "docs/QUERIES.md lost a query"
    client = clickhouse.connect(settings)
    for name, sql in queries.items():
        names, rows = run_query(client, settings.clickhouse_database, sql)
        if EXPECTED.get(name) is not None:
            assert [tuple(r) for r in rows] == EXPECTED[name], name
    _, changes = run_query(
        client, settings.clickhouse_database, queries["changes_in_namespace_before"]
    )
    assert changes and {r[2] for r in changes} <= {"create", "update", "patch", "delete"}
    assert len(changes) == len({tuple(r) for r in changes})
    _, rbac = run_query(client, settings.clickhouse_database, queries["rbac_changes"])
    assert {(r[1], r[2]) for r in rbac} >= {
        ("clusterroles", "delete"),
        ("clusterrolebindings", "create"),
        ("clusterroles", "patch"),
    }
    assert all(
        r[1] in {"roles", "clusterroles", "rolebindings", "clusterrolebindings"} for r in rbac
    )


def _cli(settings: Settings, *args: str) -> list[str]:
    return [
        "--kafka",
        settings.kafka,
        "--clickhouse",
        settings.clickhouse,
        "--clickhouse-database",
        settings.clickhouse_database,
        "--topic-prefix",
        settings.topic_prefix,
        *args,
    ]


def test_history_and_query_cli(settings: Settings) -> None:
    ChainWriter(settings).append(0, sample_payloads())
    _once(settings)
    result = runner.invoke(
        app,
        _cli(
            settings, "history", "deployment/nginx-deployment", "-n", "default", "--cluster", "c1"
        ),
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "minikube-user" in line]
    assert len(lines) == 2
    assert "delete" in lines[0] and "create" in lines[1]  # newest first
    assert "2018-10-26" in lines[0]
    plural = runner.invoke(app, _cli(settings, "history", "deployments/nginx-deployment"))
    assert plural.exit_code == 0 and plural.output.count("minikube-user") == 2
    as_json = runner.invoke(
        app, _cli(settings, "query", "SELECT count() AS n FROM events", "--format", "json")
    )
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == [{"n": len(sample_payloads())}]
    bad = runner.invoke(app, _cli(settings, "query", "SELECT nonsense FROM nowhere"))
    assert bad.exit_code == 2
    assert "the query failed" in bad.output and "Traceback" not in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def _env(settings: Settings, store: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SEALTRAIL_KAFKA=settings.kafka,
        SEALTRAIL_CLICKHOUSE=f"chdb://{store}",
        SEALTRAIL_CLICKHOUSE_DATABASE=settings.clickhouse_database,
        SEALTRAIL_TOPIC_PREFIX=settings.topic_prefix,
        SEALTRAIL_HOME=str(store.parent / "home"),
    )
    return env


def _kill_loop(settings: Settings, tmp_path: Path, kills: int) -> None:
    store = tmp_path / "sink-store"
    env = _env(settings, store)
    writer = ChainWriter(settings)
    payloads = sample_payloads()
    total = 0
    rng = random.Random()
    for round_ in range(kills):
        for p in range(3):
            total += writer.append(p, payloads * 4)
        proc = subprocess.Popen(
            [SEALTRAIL, "sink", "--batch-rows", "100", "--batch-ms", "20"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            if round_ == 0:
                # While the sink owns the store, another process reads through its socket.
                deadline = time.monotonic() + 30
                while (
                    not (store / ".sealtrail-owner.lock").exists() and time.monotonic() < deadline
                ):
                    time.sleep(0.1)
                held = subprocess.run(
                    [SEALTRAIL, "query", "--format", "csv", "SELECT 1 AS one"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert held.returncode == 0, held.stderr
                assert held.stdout.splitlines() == ["one", "1"]
            time.sleep(rng.uniform(0.5, 3.0))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
    final = subprocess.run(
        [SEALTRAIL, "sink", "--once"], env=env, capture_output=True, text=True, timeout=180
    )
    assert final.returncode == 0, final.stderr
    # A killed sink leaves its fast-path files in the store; a clean exit removes them.
    assert not [name for name in AVRO_FILE_NAMES if (store / name).exists()]
    counts = subprocess.run(
        [
            SEALTRAIL,
            "query",
            "--format",
            "json",
            "SELECT count() AS n, uniqExact(chain, seq) AS u, max(seq) + 1 AS top, chain "
            "FROM events GROUP BY chain ORDER BY chain",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert counts.returncode == 0, counts.stderr
    rows = json.loads(counts.stdout)
    assert sum(r["n"] for r in rows) == total
    for row in rows:
        assert row["n"] == row["u"] == row["top"], row


def test_sink_survives_kill_9(settings: Settings, tmp_path: Path) -> None:
    _kill_loop(settings, tmp_path, kills=5)


def test_starting_sink_removes_a_stale_fast_path_file(settings: Settings, tmp_path: Path) -> None:
    """A sink killed mid-batch leaves its container files in the store; the next sink that owns
    the store removes them even when it has nothing to insert (the kill test's last run)."""
    store = tmp_path / "stale-store"
    store.mkdir()
    for name in AVRO_FILE_NAMES:
        (store / name).write_bytes(b"Obj\x01 left by a killed sink")
    done = subprocess.run(
        [SEALTRAIL, "sink", "--once"],
        env=_env(settings, store),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert not [name for name in AVRO_FILE_NAMES if (store / name).exists()]


@pytest.mark.slow
def test_sink_survives_many_kill_9(settings: Settings, tmp_path: Path) -> None:
    _kill_loop(settings, tmp_path, kills=20)


def test_fenced_static_consumer_is_rebuilt_and_rows_stay_exact(settings: Settings) -> None:
    """Another member joining with the sink's static instance id fences it (as a broker restart
    can on its own): the sink rebuilds its consumer and stores every record exactly once."""
    payloads = sample_payloads()
    writer = ChainWriter(settings)
    for p in range(3):
        writer.append(p, payloads)
    group = "sealtrail-sink-fenced"
    stop = StopFlag()
    sink = Sink(settings, SinkOptions(group=group, batch_rows=20, batch_ms=100), stop)
    thread = threading.Thread(target=sink.run, name="sink-fenced")
    thread.start()
    deadline = time.monotonic() + 60
    try:
        while sink.stats.inserted < 3 * len(payloads):
            assert time.monotonic() < deadline, "the sink did not store the first records"
            time.sleep(0.1)
        intruder = Consumer(
            consumer_conf(
                settings,
                group,
                **{
                    "group.instance.id": f"{group}-{socket.gethostname()}",
                    "enable.auto.commit": False,
                },  # fmt: skip
            )
        )
        intruder.subscribe([settings.topics.chain, settings.topics.checkpoints])
        try:
            while sink.stats.consumer_rebuilds < 1:
                assert time.monotonic() < deadline + 30, "the sink was never fenced"
                intruder.poll(0.2)
        finally:
            intruder.close()
        for p in range(3):
            writer.append(p, payloads)
        while sink.stats.inserted < 6 * len(payloads):
            assert time.monotonic() < deadline + 90, f"the sink stalled: {sink.stats}"
            time.sleep(0.1)
    finally:
        started = time.monotonic()
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "the sink did not stop after its consumer was rebuilt"
    assert time.monotonic() - started < 20
    assert sink.stats.consumer_rebuilds >= 1
    assert _check_chains(settings) == 6 * len(payloads)
