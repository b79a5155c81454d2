"""The verifier against what the real chainer and sink write (formats agree end to end)."""

from __future__ import annotations

import json
from pathlib import Path

from confluent_kafka import Producer

from processors.chainer import Chainer, ChainerOptions
from processors.integrity.keys import write_keypair
from processors.sink import Sink, SinkOptions
from sealtrail.config import Settings
from sealtrail.kafka import producer_conf
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
