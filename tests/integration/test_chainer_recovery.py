"""Recovery against the real broker: divergence stops the chainer, kill -9 anywhere loses
and repeats nothing."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner

from processors.chainer import (
    ChainDivergence,
    chain_id,
    group_id,
)
from processors.integrity.keys import load_verifiers
from processors.integrity.record import ChainHead, link
from schemas.chained import record_value
from sealtrail.cli import app
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import consumer_conf, producer_conf
from tests.integration.chainer_support import (
    PARTITIONS,
    chain_records,
    chainer_env,
    check_chain,
    check_checkpoints,
    cli_args,
    kill9,
    mixed_payloads,
    produce_raw,
    run_chainer,
    sealtrail_bin,
    wait_until,
)

runner = CliRunner()


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
        record_value(forged),
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
    log_path.touch()

    def chained() -> int:
        return sum(len(chain_records(settings, p)) for p in range(3))

    def start() -> subprocess.Popen[bytes]:
        """A chainer process, returned once it runs: on a loaded machine its imports alone can
        outlast a kill window, and a SIGTERM before its handler is installed is fatal."""
        mark = log_path.stat().st_size
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(args, env=env, stdout=log_file, stderr=log_file)
        wait_until(
            lambda: b" starting: " in log_path.read_bytes()[mark:] or proc.poll() is not None,
            120,
            "the chainer to start",
        )
        assert proc.poll() is None, log_path.read_text()[-3000:]
        return proc

    chained_between_kills = []
    try:
        for round_ in range(kills):
            proc = start()
            if round_ == kills - 1:
                # Some killed run must have committed, whatever the load: wait for it here.
                wait_until(lambda: chained() > 0, 120, "a killed chainer to commit")
            # kill anywhere from start-up (recovery) to steady streaming
            time.sleep(rng.uniform(0.8, 3.0))
            kill9(proc.pid)
            proc.wait(10)
            chained_between_kills.append(chained())
    finally:
        stop_feed.set()
        feeder.join(60)
    # SIGTERM: commit what it has, write final checkpoints, exit 0
    proc = start()
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
