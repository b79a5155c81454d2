"""The verifier against what the real chainer and sink write (formats agree end to end)."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

from confluent_kafka import Producer

from processors.chainer import Chainer, ChainerOptions
from processors.integrity.keys import write_keypair
from processors.sink import Sink, SinkOptions
from producers.k8s import Reject, parse_line, reject_event
from schemas.codec import decode_audit_event, encode_audit_event
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import producer_conf
from tests.integration.test_producers import good_lines
from tests.integration.test_verify import cli, payloads


def test_chainer_and_sink_output_verifies(settings: Settings, tmp_path: Path) -> None:
    producer = Producer(producer_conf(settings))
    for i, value in enumerate(payloads(30)):
        producer.produce(settings.topics.raw, value, partition=i % 2)
    assert producer.flush(10) == 0
    priv, pub = write_keypair("chainer", tmp_path / "keys")
    offsite = tmp_path / "offsite"
    Chainer(
        settings,
        ChainerOptions(
            once=True, signing_key=priv, checkpoint_records=4, export_checkpoints=offsite
        ),
    ).run()
    Sink(settings, SinkOptions(once=True)).run()
    report = tmp_path / "r.json"
    result = cli(
        settings,
        "verify",
        "--key",
        str(pub),
        "--quiet",
        "--clickhouse-required",
        "--require-anchored",
        "--offsite",
        str(offsite),
        "--json",
        str(report),
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["records_verified"] == 30 and doc["clickhouse_checked"]
    assert sum(c["rows_verified"] for c in doc["clickhouse"]) == 30
    assert all(c["anchored"] for c in doc["chains"] if c["size"])
    chain = f"{settings.topics.raw}/1"
    proof = tmp_path / "p.json"
    made = cli(
        settings, "prove", "--key", str(pub), "--chain", chain, "--seq", "2", "--out", str(proof)
    )
    assert made.exit_code == 0, made.output
    checked = cli(settings, "verify-proof", str(proof), "--key", str(pub))
    assert checked.exit_code == 0 and f"record seq 2 of chain {chain}" in checked.output


def test_large_events_and_rejects_are_chained_loaded_and_verified(
    settings: Settings, tmp_path: Path
) -> None:
    """Events of 150 KB to 20 MB and a chained reject go through the real chainer and sink
    (records far over Kafka's 1 MB default) and verify, in Kafka and in ClickHouse. The data is
    base64 of random bytes, as a Secret's would be: lz4 does not shrink it, so the 20 MB record
    is over the local broker's 12 MiB message.max.bytes and only the topics' limit lets it in."""
    line = json.loads(good_lines()[0])
    sizes = (150_000, 400_000, 900_000, 20_000_000)
    rng = random.Random(17)
    values = []
    originals = []
    for n in sizes:
        blob = base64.b64encode(rng.randbytes(n * 3 // 4)).decode()
        event = dict(line, auditID=f"large-{n}", requestObject={"data": {"blob": blob}})
        raw = json.dumps(event).encode()
        originals.append(raw)
        values.append(encode_audit_event(parse_line(raw, "c1", 1_700_000_000_000_000)))
    refused = Reject("too big", b"x" * 1024, 50_000_000, b"\x01" * 32)
    values.append(encode_audit_event(reject_event(refused, "c1", "webhook", 1)))
    producer = Producer(producer_conf(settings))
    for value in values:
        producer.produce(settings.topics.raw, value, key=b"c1", partition=0)
    assert producer.flush(60) == 0
    priv, pub = write_keypair("chainer", tmp_path / "keys")
    Chainer(settings, ChainerOptions(once=True, signing_key=priv, checkpoint_records=2)).run()
    Sink(settings, SinkOptions(once=True)).run()
    result = cli(settings, "verify", "--key", str(pub), "--quiet", "--clickhouse-required")
    assert result.exit_code == 0, result.output
    client = clickhouse.connect(settings)
    rows = client.query(
        f"SELECT source, length(payload), attributes['bytes']"
        f" FROM {settings.clickhouse_database}.events ORDER BY seq"
    ).result_rows
    assert [r[0] for r in rows] == ["k8s"] * 4 + ["reject"]
    assert [r[1] > n for r, n in zip(rows, sizes, strict=False)] == [True] * 4
    assert rows[4][2] == "50000000"
    # The exact bytes of every event, from the payloads ClickHouse holds.
    payloads_held = client.query(
        f"SELECT hex(payload) FROM {settings.clickhouse_database}.events"
        f" WHERE source = 'k8s' ORDER BY seq"
    ).result_rows
    held = [bytes(decode_audit_event(bytes.fromhex(p))["original"]) for (p,) in payloads_held]
    assert held == originals
