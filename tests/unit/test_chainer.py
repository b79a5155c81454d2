"""Chainer options, names and the key CLI, without a broker."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

import processors.chainer as chainer_module
from processors.chainer import (
    Chainer,
    ChainerOptions,
    chain_id,
    group_id,
    options_from_env,
    transactional_id,
)
from processors.integrity.errors import KeyFileError
from processors.integrity.keys import load_signer, write_keypair
from sealtrail.cli import app
from sealtrail.config import Settings
from sealtrail.errors import ConfigError, KafkaUnavailable
from sealtrail.service import StopFlag

runner = CliRunner()


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_names() -> None:
    settings = Settings(topic_prefix="p.")
    assert chain_id("p.audit.events", 3) == "p.audit.events/3"
    assert group_id(settings) == "p.sealtrail-chainer"
    assert group_id(Settings()) == "sealtrail-chainer"
    assert transactional_id(settings, "host-1") == "p.sealtrail-chainer-host-1"


def test_options_validation() -> None:
    assert ChainerOptions().validated().instance_id  # hostname by default
    assert ChainerOptions(instance_id="a").validated().instance_id == "a"
    for bad in (
        ChainerOptions(batch_records=0),
        ChainerOptions(batch_ms=0),
        ChainerOptions(checkpoint_records=0),
        ChainerOptions(checkpoint_seconds=0),
        ChainerOptions(instance_id="a b"),
    ):
        with pytest.raises(ConfigError):
            bad.validated()


def test_options_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEALTRAIL_SIGNING_KEY", str(tmp_path / "k.key"))
    monkeypatch.setenv("SEALTRAIL_INSTANCE_ID", "from-env")
    options = options_from_env(once=True)
    assert options.signing_key == tmp_path / "k.key"
    assert options.instance_id == "from-env"
    assert options_from_env(instance_id="given").instance_id == "given"


def test_world_readable_key_refused_before_any_connection(tmp_path: Path) -> None:
    private, _public = write_keypair("t", tmp_path)
    private.chmod(0o644)
    settings = Settings(kafka="127.0.0.1:1")
    with pytest.raises(KeyFileError) as info:
        Chainer(settings, ChainerOptions(signing_key=private))
    assert "chmod 600" in str(info.value)
    assert "PRIVATE" not in str(info.value)


def test_cli_rejects_bad_options(restore_signals: None) -> None:
    result = runner.invoke(app, ["chain", "--once", "--batch-records", "0"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["--kafka", "127.0.0.1:1", "chain", "--instance-id", "a b"])
    assert result.exit_code == 2
    assert "whitespace" in result.output


def test_keys_generate(tmp_path: Path) -> None:
    out = tmp_path / "k"
    args = ["keys", "generate", "--name", "prod.example", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    private, public = out / "prod.example.key", out / "prod.example.pub"
    assert str(private) in result.output and str(public) in result.output
    assert public.read_text().strip() in result.output
    assert "PRIVATE+KEY" not in result.output
    assert private.stat().st_mode & 0o777 == 0o600
    assert load_signer(private).verifier.verifier_key() == public.read_text().strip()
    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert "refusing to overwrite" in again.output
    assert "Traceback" not in again.output


def test_keys_generate_default_dir_and_bad_name(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = runner.invoke(app, ["--home", str(home), "keys", "generate", "--name", "other"])
    assert result.exit_code == 0, result.output
    assert (home / "keys" / "other.key").exists()
    bad = runner.invoke(app, ["--home", str(home), "keys", "generate", "--name", "a+b"])
    assert bad.exit_code == 2


# -------------------------------------------------------------- calls librdkafka never returns


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chainer_module, "HUNG_MARGIN_S", 0.3)
    monkeypatch.setattr(chainer_module, "STOP_GRACE_S", 0.3)


def _chainer(stop: StopFlag | None = None) -> Chainer:
    # No Kafka is contacted before run(): the transactional-call guard can be exercised alone.
    return Chainer(Settings(), ChainerOptions(instance_id="t-unit"), stop)


def test_a_transactional_call_that_never_returns_abandons_the_producer(
    short_deadlines: None,
) -> None:
    chainer = _chainer()
    forever = threading.Event()
    started = time.monotonic()
    with pytest.raises(chainer_module._ProducerHung):
        chainer._bounded("send_offsets_to_transaction", lambda: forever.wait(), 0.2)
    assert 0.5 <= time.monotonic() - started < 3.0
    assert chainer._producer_hung
    assert "send_offsets_to_transaction: no answer after" in chainer._last_error
    forever.set()


def test_a_stuck_call_does_not_hold_up_sigterm(short_deadlines: None) -> None:
    stop = StopFlag()
    chainer = _chainer(stop)
    forever = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(chainer_module._Interrupted):
        chainer._bounded("commit_transaction", lambda: forever.wait(60), 0.2)
    assert time.monotonic() - started < 2.0
    forever.set()


def test_bounded_calls_pass_results_and_kafka_errors_through(short_deadlines: None) -> None:
    chainer = _chainer()
    assert chainer._bounded("begin_transaction", lambda: 42, 0.2) == 42

    def fails() -> None:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out"))

    with pytest.raises(KafkaException):
        chainer._bounded("commit_transaction", fails, 0.2)
    assert not chainer._producer_hung


def test_recovery_retries_with_a_new_reader_when_kafka_reads_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chainer = _chainer()
    readers: list[object] = []
    monkeypatch.setattr(chainer_module, "reader", lambda settings: readers.append(1) or readers)
    monkeypatch.setattr(chainer_module, "close_quietly", lambda consumer: None)
    calls: list[list[int]] = []

    def recover(partitions: list[int]) -> dict[int, int]:
        calls.append(partitions)
        if len(calls) < 3:
            raise KafkaUnavailable("could not read the offsets of c/0: Local: Unknown partition")
        return {0: 7}

    monkeypatch.setattr(chainer, "_recover", recover)
    assert chainer._recover_with_fresh_readers([0]) == {0: 7}
    assert len(calls) == 3 and len(readers) == 2  # a fresh reader before each retry


def test_recovery_gives_up_after_its_attempts_and_on_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    stop = StopFlag()
    chainer = _chainer(stop)
    monkeypatch.setattr(chainer_module, "reader", lambda settings: None)

    def recover(partitions: list[int]) -> dict[int, int]:
        raise KafkaUnavailable("could not read the offsets of c/0: Local: Unknown partition")

    monkeypatch.setattr(chainer, "_recover", recover)
    with pytest.raises(KafkaUnavailable, match="Unknown partition"):
        chainer._recover_with_fresh_readers([0])
    stop.set()
    with pytest.raises(chainer_module._Interrupted):
        chainer._recover_with_fresh_readers([0])
