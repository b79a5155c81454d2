"""The chaining loop against the real broker: exactly once, offsite copies, rebalances, a
fenced consumer, a refused key."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from typer.testing import CliRunner

from processors.chainer import (
    Chainer,
    ChainerOptions,
    chain_id,
    group_id,
)
from processors.integrity.checkpoint import KeyRing, open_checkpoint
from processors.integrity.errors import KeyFileError
from processors.verifier import offsite
from sealtrail.cli import app
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import consumer_conf
from sealtrail.infra.service import StopFlag
from tests.integration.chainer_support import (
    PARTITIONS,
    check_chain,
    check_checkpoints,
    cli_args,
    mixed_payloads,
    produce_raw,
    raw_values,
    run_chainer,
    wait_until,
)

runner = CliRunner()


def test_once_chains_everything_then_continues_without_fork(
    settings: Settings, keypair: tuple[Path, Path], keyring: KeyRing, tmp_path: Path
) -> None:
    produce_raw(settings, mixed_payloads(0, 300))
    exports = tmp_path / "offsite"
    first = run_chainer(
        settings,
        signing_key=keypair[0],
        checkpoint_records=40,
        checkpoint_seconds=3600,  # by count only: a slow run must not add a timed one
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
        settings,
        signing_key=keypair[0],
        checkpoint_records=40,
        checkpoint_seconds=3600,
        export_checkpoints=exports,
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
