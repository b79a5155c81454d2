"""`sealtrail verify / prove / verify-proof / checkpoints export` against the real broker and chdb.

Each case builds a small chain (20 records, checkpoints at 10 and 20) in partition 0 of its own
topics, tampers with it the way an attacker with some access could, and expects exit 1 with the
right finding kind; the clean case exits 0.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from processors.integrity.checkpoint import Checkpoint, origin_for, sign_checkpoint
from processors.integrity.merkle import CompactRange
from processors.integrity.note import Signer, generate_key
from processors.integrity.record import ChainedRecord, ChainHead, link
from producers.k8s import parse_line
from schemas.codec import encode_audit_event, encode_chained
from sealtrail.cli import app
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import admin_conf, producer_conf
from sealtrail.infra.topics import init_topics
from tests.conftest import K8S_SAMPLES

N = 20
runner = CliRunner()


def payloads(n: int, tag: str = "") -> list[bytes]:
    files = sorted(K8S_SAMPLES.glob("*.json"))
    out = []
    for i in range(n):
        line = files[i % len(files)].read_bytes().strip().splitlines()[0]
        datum = parse_line(line, f"cluster{tag}", 1_700_000_000_000_000 + i)
        out.append(encode_audit_event(datum))
    return out


def build(
    settings: Settings, n: int = N, tag: str = "", garbage_at: int | None = None
) -> list[ChainedRecord]:
    chain = f"{settings.topics.raw}/0"
    head = ChainHead(chain)
    recs = []
    for i, p in enumerate(payloads(n, tag)):
        body = b"\x00not avro" if i == garbage_at else p
        recs.append(link(head, i, 1_700_000_000_000_000 + i, body))
    return recs


def note_for(settings: Settings, recs: list[ChainedRecord], size: int, signer: Signer) -> str:
    cr = CompactRange()
    for r in recs[:size]:
        cr.append(r.hash)
    chain = recs[0].chain
    cp = Checkpoint(
        origin_for(settings.deployment, chain),
        size,
        cr.root(),
        recs[size - 1].hash,
        1_700_000_000_000_000 + size,
    )
    return sign_checkpoint(cp, signer)


def produce(settings: Settings, records: list[ChainedRecord] = (), notes: list[str] = ()) -> None:  # type: ignore[assignment]
    producer = Producer(producer_conf(settings, **{"transactional.id": f"t-{uuid.uuid4()}"}))
    producer.init_transactions(10)
    producer.begin_transaction()
    for r in records:
        value = encode_chained(
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
        producer.produce(settings.topics.chain, value, key=r.chain.encode(), partition=0)
    chain = f"{settings.topics.raw}/0"
    for note in notes:
        producer.produce(
            settings.topics.checkpoints,
            note.encode(),
            key=chain.encode(),
            partition=0,
            headers=[("sealtrail-compact-range", b"")],
        )
    producer.commit_transaction(10)


@dataclass
class Case:
    settings: Settings
    signer: Signer
    key_file: Path
    records: list[ChainedRecord]
    tmp: Path

    def verify(self, *extra: str, key_file: Path | None = None, **kw: Any) -> Any:
        s = replace(self.settings, **kw) if kw else self.settings
        return cli(s, "verify", "--key", str(key_file or self.key_file), "--quiet", *extra)

    def note(self, size: int, signer: Signer | None = None) -> str:
        return note_for(self.settings, self.records, size, signer or self.signer)


def cli(s: Settings, *args: str) -> Any:
    base = [
        "--kafka",
        s.kafka,
        "--clickhouse",
        s.clickhouse,
        "--clickhouse-database",
        s.clickhouse_database,
        "--topic-prefix",
        s.topic_prefix,
        "--deployment",
        s.deployment,
        "--home",
        str(s.home),
    ]
    return runner.invoke(app, [*base, *args])


def new_signer(tmp: Path, name: str = "chainer") -> tuple[Signer, Path]:
    priv, pub = generate_key(name)
    path = tmp / f"{name}-{uuid.uuid4().hex[:6]}.pub"
    path.write_text(pub + "\n")
    return Signer.from_private_key(priv), path


@pytest.fixture
def case(settings: Settings, tmp_path: Path) -> Case:
    signer, key_file = new_signer(tmp_path)
    recs = build(settings, garbage_at=7)
    c = Case(settings, signer, key_file, recs, tmp_path)
    produce(settings, recs[:10], [c.note(10)])
    produce(settings, recs[10:], [c.note(20)])
    return c


def kinds(result: Any, path: Path) -> set[str]:
    return {f["kind"] for f in json.loads(path.read_text())["findings"]}


def expect(c: Case, kind: str, *extra: str, **kw: Any) -> dict[str, Any]:
    report = c.tmp / f"r-{uuid.uuid4().hex[:6]}.json"
    result = c.verify("--json", str(report), *extra, **kw)
    assert result.exit_code == 1, result.output
    doc = json.loads(report.read_text())
    assert kind in {f["kind"] for f in doc["findings"]}, doc["findings"]
    assert f"FINDING {kind}" in result.output or "more finding" in result.output
    return doc


def recreate_chain_topics(settings: Settings) -> None:
    """Delete and re-create the chain and checkpoint topics (someone with admin access)."""
    client = AdminClient(admin_conf(settings))
    topics = [settings.topics.chain, settings.topics.checkpoints]
    for fut in client.delete_topics(topics, operation_timeout=10).values():
        fut.result()
    deadline = time.monotonic() + 30
    while True:
        try:
            init_topics(settings, partitions=3)
            md = client.list_topics(timeout=5).topics
            if all(t in md and not md[t].error for t in topics):
                return
        except Exception:  # noqa: BLE001 - the deletion is still propagating
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


# ------------------------------------------------------------------------------ clean + kafka


def test_clean_chain_verifies_with_metrics_and_state(case: Case) -> None:
    metrics, state, report = case.tmp / "m.prom", case.tmp / "state.json", case.tmp / "r.json"
    result = case.verify(
        "--no-clickhouse",
        "--metrics-file",
        str(metrics),
        "--state",
        str(state),
        "--json",
        str(report),
        "--jobs",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert "OK: 20 records in 3 chain(s) verified, 1 anchored" in result.output
    assert "sealtrail_verify_records_verified_total 20" in metrics.read_text()
    doc = json.loads(report.read_text())
    assert doc["ok"] and doc["chains"][0]["checkpoints_verified"] == 2
    # incremental: new records since the state verify with only the link to the old head
    more = build(case.settings, n=25, garbage_at=7)
    produce(case.settings, more[20:], [note_for(case.settings, more, 25, case.signer)])
    again = case.verify("--no-clickhouse", "--state", str(state), "--json", str(report))
    assert again.exit_code == 0, again.output
    assert json.loads(report.read_text())["records_verified"] == 5


def test_forged_record_with_wrong_hash(case: Case) -> None:
    forged = replace(
        link(ChainHead(case.records[0].chain, N, case.records[-1].hash), 99, 1, b"x"),
        hash=bytes(32),
    )
    produce(case.settings, [forged])
    expect(case, "hash_mismatch", "--no-clickhouse")


def test_forged_record_with_broken_link(case: Case) -> None:
    forged = link(ChainHead(case.records[0].chain, N, b"\x07" * 32), 99, 1, b"x")
    produce(case.settings, [forged])
    doc = expect(case, "chain_broken", "--no-clickhouse")
    f = doc["findings"][0]
    assert (
        f["seq"] == N and f["offset"] is not None and f["expected"] == case.records[-1].hash.hex()
    )


def test_duplicate_seq(case: Case) -> None:
    produce(case.settings, [case.records[-1]])
    expect(case, "seq_repeat", "--no-clickhouse")


def test_records_deleted_from_the_start(case: Case) -> None:
    client = AdminClient(admin_conf(case.settings))
    tp = TopicPartition(case.settings.topics.chain, 0, 5)
    for fut in client.delete_records([tp], operation_timeout=10).values():
        fut.result()
    expect(case, "records_deleted", "--no-clickhouse")


def test_checkpoint_problems(case: Case) -> None:
    stranger, _ = new_signer(case.tmp, "stranger")
    edited = case.note(15).replace("\n15\n", "\n14\n", 1)
    produce(case.settings, notes=[case.note(5, stranger), edited])
    doc = expect(case, "unknown_key", "--no-clickhouse")
    assert "bad_signature" in {f["kind"] for f in doc["findings"]}
    ring = case.tmp / "ring.txt"
    ring.write_text(f"{case.key_file.read_text().strip()} 0 12\n")
    expect(case, "key_out_of_range", "--no-clickhouse", key_file=ring)


def test_rebuilt_chain_is_caught_by_state_and_offsite(case: Case) -> None:
    state, off = case.tmp / "state.json", case.tmp / "offsite"
    assert case.verify("--no-clickhouse", "--state", str(state)).exit_code == 0
    exported = cli(case.settings, "checkpoints", "export", "--to", str(off))
    assert exported.exit_code == 0 and "exported 2 new" in exported.output
    assert "exported 0 new" in cli(case.settings, "checkpoints", "export", "--to", str(off)).output
    recreate_chain_topics(case.settings)
    # an insider re-chains an altered history and signs it with the real key
    rebuilt = build(case.settings, n=N, tag="x")
    produce(
        case.settings,
        rebuilt,
        [
            note_for(case.settings, rebuilt, 10, case.signer),
            note_for(case.settings, rebuilt, N, case.signer),
        ],
    )
    assert case.verify("--no-clickhouse").exit_code == 0  # internally consistent
    expect(case, "history_rewritten", "--no-clickhouse", "--state", str(state))
    doc = expect(case, "history_rewritten", "--no-clickhouse", "--offsite", str(off))
    assert "fork" in {f["kind"] for f in doc["findings"]}
    # tail cut: the topic re-created with the first 12 original records only
    recreate_chain_topics(case.settings)
    produce(case.settings, case.records[:12], [case.note(10)])
    expect(case, "truncated", "--no-clickhouse", "--offsite", str(off))
    expect(case, "truncated", "--no-clickhouse", "--state", str(state))


# ------------------------------------------------------------------------------ clickhouse


@pytest.fixture(params=["sql", "outside"])
def sunk(case: Case, request: pytest.FixtureRequest) -> Case:
    """The chain stored by the sink; verified by ClickHouse's SQL, or by the verifier itself."""
    from processors.sink import Sink, SinkOptions

    Sink(case.settings, SinkOptions(once=True)).run()
    if request.param == "outside":
        plain = case.verify
        case.verify = lambda *a, **kw: plain("--recompute-outside", *a, **kw)  # type: ignore[method-assign]
    return case


def _ch(c: Case, sql: str) -> None:
    from sealtrail.infra import clickhouse

    client = clickhouse.connect(c.settings)
    clickhouse.command(
        client, sql.format(db=c.settings.clickhouse_database), settings={"mutations_sync": 2}
    )


def test_clickhouse_clean_including_undecodable_payload(sunk: Case) -> None:
    report = sunk.tmp / "r.json"
    result = sunk.verify("--clickhouse-required", "--json", str(report))
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["clickhouse_checked"] and doc["clickhouse"][0]["rows_verified"] == N
    # incremental runs still compare every row with the chain root remembered in the state
    state = sunk.tmp / "state.json"
    assert sunk.verify("--state", str(state)).exit_code == 0
    again = sunk.verify("--state", str(state), "--json", str(report))
    assert again.exit_code == 0, again.output
    assert json.loads(report.read_text())["records_verified"] == 0
    _ch(sunk, "ALTER TABLE {db}.events UPDATE user_name = 'nobody' WHERE seq = 2")
    expect(sunk, "clickhouse_mismatch", "--state", str(state))


@pytest.mark.parametrize(
    ("sql", "seq"),
    [
        ("ALTER TABLE {db}.events UPDATE verb = 'get' WHERE seq = 3", 3),
        ("ALTER TABLE {db}.events UPDATE decode_ok = 1 WHERE seq = 7", 7),
        ("ALTER TABLE {db}.events DELETE WHERE seq = 4", 4),
        ("INSERT INTO {db}.events SELECT * FROM {db}.events WHERE seq = 5", 5),
        (
            "INSERT INTO {db}.events SELECT * REPLACE (toUInt64(20) AS seq) "
            "FROM (SELECT * FROM {db}.events WHERE seq = 19)",
            20,
        ),
    ],
    ids=["update", "decode_ok", "delete", "duplicate", "insert"],
)
def test_clickhouse_tampering(sunk: Case, sql: str, seq: int) -> None:
    _ch(sunk, sql)
    doc = expect(sunk, "clickhouse_mismatch")
    assert seq in {f["seq"] for f in doc["findings"] if f["kind"] == "clickhouse_mismatch"}


def test_the_cli_has_clickhouse_decode_the_payloads(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sealtrail verify` on an embedded store it opens compares the decoded columns in
    ClickHouse (its scratch session), not in Python: the evidence is ClickHouse's rendering.
    The session's scratch directory is gone after the run (a cron run left one per run)."""
    from processors.sink import Sink, SinkOptions
    from sealtrail.infra.scratch_session import ScratchSession

    directories: list[Path] = []
    real_open = ScratchSession.open

    def recording_open(dsn: str) -> ScratchSession:
        session = real_open(dsn)
        directories.append(session.directory)
        return session

    monkeypatch.setattr(ScratchSession, "open", staticmethod(recording_open))
    Sink(case.settings, SinkOptions(once=True)).run()
    _ch(case, "ALTER TABLE {db}.events UPDATE verb = 'get' WHERE seq = 3")
    doc = expect(case, "clickhouse_mismatch")
    found = [f for f in doc["findings"] if f["seq"] == 3]
    assert found and "decoded column verb" in found[0]["message"]
    assert found[0]["found"] == "('get')", found[0]  # a ClickHouse tuple (Python would say get)
    assert len(directories) == 1, directories
    assert not directories[0].exists()


def test_progress_counts_records_then_clickhouse_rows(case: Case) -> None:
    """The progress factory gets the Kafka records, then the ClickHouse rows, each counted up
    to its total (a bar, or plain lines, in the CLI)."""
    from processors.integrity.checkpoint import KeyRing
    from processors.sink import Sink, SinkOptions
    from processors.verifier.run import VerifyOptions, run_verify
    from sealtrail.infra.reader import open_reader

    Sink(case.settings, SinkOptions(once=True)).run()
    seen: list[tuple[str, int, int]] = []

    class Bar:
        def __init__(self, total: int, what: str) -> None:
            self.total, self.what, self.done = total, what, 0

        def advance(self, n: int) -> None:
            self.done += n

        def close(self) -> None:
            seen.append((self.what, self.total, self.done))

    ring = KeyRing()
    ring.add(case.signer.verifier)
    for outside in (False, True):
        seen.clear()
        reader = open_reader(case.settings)
        try:
            report = run_verify(
                case.settings,
                ring,
                reader,
                VerifyOptions(recompute_outside=outside),
                lambda total, what="records": Bar(total, what),
            )
        finally:
            reader.close()
        assert report.ok, report.findings()
        # The records' total is the offsets to read (transaction markers take some): ~N.
        (what, total, done), rows = seen
        assert (what, done) == ("records", N) and total >= N, (outside, seen)
        assert rows == ("rows", N, N), (outside, seen)


def test_deleted_newest_rows_are_told_from_a_sink_that_lags(sunk: Case) -> None:
    _ch(sunk, f"ALTER TABLE {{db}}.events DELETE WHERE seq >= {N - 2}")
    # The sink committed its offsets past the last record, so the missing rows were deleted.
    doc = expect(sunk, "clickhouse_mismatch")
    found = [f for f in doc["findings"] if f["kind"] == "clickhouse_mismatch"]
    assert [f["seq"] for f in found] == [N - 2] and "rows were deleted" in found[0]["message"]
    # A group that committed nothing (another sink, or none yet) only means ClickHouse lags.
    lagging = sunk.verify("--sink-group", "not-the-sink")
    assert lagging.exit_code == 0, lagging.output
    assert "ClickHouse is 2 record(s) behind chain" in lagging.output


def test_a_sink_storing_during_the_run_is_not_deleted_rows(
    sunk: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cron verifier while the sink runs: rows the sink stores and commits after ClickHouse
    was counted are the sink catching up, not rows deleted below its committed offsets."""
    from confluent_kafka import Consumer

    import processors.verifier.run as verifier_run
    from processors.sink import Sink, SinkOptions
    from sealtrail.infra.kafka import consumer_conf

    # The sink has stored and committed only seq 0..N-3 when the verifier starts.
    _ch(sunk, f"ALTER TABLE {{db}}.events DELETE WHERE seq >= {N - 2}")
    group = Consumer(consumer_conf(sunk.settings, sunk.settings.groups.sink))
    group.commit(offsets=[TopicPartition(sunk.settings.topics.chain, 0, N - 2)],
                 asynchronous=False)  # fmt: skip
    group.close()
    counted = verifier_run.chain_sizes

    def sink_runs_on(client: Any, database: str) -> dict[str, int]:
        sizes = counted(client, database)
        stats = Sink(sunk.settings, SinkOptions(once=True)).run()  # stores and commits the rest
        assert stats.inserted == 2
        return sizes

    monkeypatch.setattr(verifier_run, "chain_sizes", sink_runs_on)
    result = sunk.verify("--clickhouse-required")
    assert result.exit_code == 0, result.output
    assert "ClickHouse is 2 record(s) behind chain" in result.output
    monkeypatch.undo()
    assert sunk.verify("--clickhouse-required").exit_code == 0


# ------------------------------------------------------------------------------ errors, proofs


def test_broker_unreachable_and_bad_key_exit_2(case: Case, tmp_path: Path) -> None:
    down = case.verify("--no-clickhouse", "--timeout", "1", kafka="127.0.0.1:1")
    assert down.exit_code == 2 and "did not answer" in down.output
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    result = case.verify("--no-clickhouse", key_file=bad)
    assert (
        result.exit_code == 2 and "malformed" in result.output and "Traceback" not in result.output
    )


def test_proof_round_trips(case: Case) -> None:
    chain = case.records[0].chain
    out = case.tmp / "inc.json"
    made = cli(
        case.settings,
        "prove",
        "--key",
        str(case.key_file),
        "--chain",
        chain,
        "--seq",
        "7",
        "--out",
        str(out),
    )
    assert made.exit_code == 0, made.output
    ok = cli(case.settings, "verify-proof", str(out), "--key", str(case.key_file))
    assert ok.exit_code == 0 and f"record seq 7 of chain {chain}" in ok.output
    assert "at size 20" in ok.output
    doc = json.loads(out.read_text())
    doc["record_hash"] = case.records[6].hash.hex()
    out.write_text(json.dumps(doc))
    bad = cli(case.settings, "verify-proof", str(out), "--key", str(case.key_file))
    assert bad.exit_code == 1 and "does not lead to the expected root" in bad.output
    cons = case.tmp / "cons.json"
    made = cli(
        case.settings,
        "prove",
        "--key",
        str(case.key_file),
        "--chain",
        chain,
        "--consistency",
        "--from",
        "10",
        "--to",
        "20",
        "--out",
        str(cons),
    )
    assert made.exit_code == 0, made.output
    ok = cli(case.settings, "verify-proof", str(cons), "--key", str(case.key_file))
    assert ok.exit_code == 0 and "append-only extension of size 10" in ok.output


# ------------------------------------------------------------------------------ incremental


def rows_checked(c: Case, *extra: str) -> tuple[int, Any]:
    report = c.tmp / f"r-{uuid.uuid4().hex[:6]}.json"
    result = c.verify("--json", str(report), *extra)
    doc = json.loads(report.read_text())
    return sum(r["rows_verified"] for r in doc["clickhouse"]), result


@pytest.fixture
def sunk_sql(case: Case) -> Case:
    from processors.sink import Sink, SinkOptions

    Sink(case.settings, SinkOptions(once=True)).run()
    return case


def test_incremental_runs_check_only_what_changed(sunk_sql: Case) -> None:
    from processors.sink import Sink, SinkOptions

    c, state = sunk_sql, sunk_sql.tmp / "state.json"
    assert rows_checked(c, "--state", str(state))[0] == N
    checked, result = rows_checked(c, "--state", str(state))
    assert result.exit_code == 0 and checked == 0, result.output
    more = build(c.settings, n=N + 5, garbage_at=7)
    produce(c.settings, more[N:], [note_for(c.settings, more, N + 5, c.signer)])
    Sink(c.settings, SinkOptions(once=True)).run()
    checked, result = rows_checked(c, "--state", str(state))
    assert result.exit_code == 0 and checked == 5, result.output
    # --full checks every row again
    checked, result = rows_checked(c, "--state", str(state), "--full")
    assert result.exit_code == 0 and checked == N + 5, result.output


_COPY = (
    "CREATE TABLE {db}.events_copy AS {db}.events",
    "INSERT INTO {db}.events_copy SELECT * FROM {db}.events",
)


@pytest.mark.parametrize(
    ("statements", "seq"),
    [
        (("ALTER TABLE {db}.events UPDATE user_name = 'nobody' WHERE seq = 2",), 2),
        (("ALTER TABLE {db}.events DELETE WHERE seq = 3",), 3),
        (
            (
                *_COPY,
                "ALTER TABLE {db}.events_copy UPDATE verb = 'get' WHERE seq = 4",
                "ALTER TABLE {db}.events DROP PARTITION ID '201810'",
                "ALTER TABLE {db}.events ATTACH PARTITION ID '201810' FROM {db}.events_copy",
            ),
            4,
        ),
        (
            # a new row that links to the last one and whose hash recomputes: not in the chain
            (
                "INSERT INTO {db}.events SELECT * REPLACE (toUInt64(20) AS seq, hash AS "
                "prev_hash, {hash} AS hash) FROM (SELECT * FROM {db}.events WHERE seq = 19)",
            ),
            20,
        ),
        (
            (
                *_COPY,
                "ALTER TABLE {db}.events_copy UPDATE user_agent = 'x' WHERE seq = 5",
                "EXCHANGE TABLES {db}.events AND {db}.events_copy",
            ),
            5,
        ),
    ],
    ids=["update", "delete", "partition_reattached", "valid_looking_insert", "table_swap"],
)
def test_incremental_run_finds_old_rows_changed(
    sunk_sql: Case, statements: tuple[str, ...], seq: int
) -> None:
    from processors.verifier.clickhouse_sql import record_hash_sql

    c, state = sunk_sql, sunk_sql.tmp / "state.json"
    assert c.verify("--state", str(state)).exit_code == 0
    assert "clickhouse" in json.loads(state.read_text())
    for sql in statements:
        _ch(c, sql.replace("{hash}", record_hash_sql()))
    doc = expect(c, "clickhouse_mismatch", "--state", str(state))
    assert seq in {f["seq"] for f in doc["findings"] if f["kind"] == "clickhouse_mismatch"}
    # a failed run does not move the remembered parts: the next run finds it again
    expect(c, "clickhouse_mismatch", "--state", str(state))
