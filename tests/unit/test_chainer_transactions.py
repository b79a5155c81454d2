"""The transaction guard without a broker: calls librdkafka never returns, results, errors."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from processors.chainer import ChainerStats, transactions
from processors.chainer.interrupt import Interrupted
from processors.chainer.transactions import ProducerHung, TransactionGuard
from sealtrail.infra.config import Settings
from sealtrail.infra.service import StopFlag


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transactions, "HUNG_MARGIN_S", 0.3)
    monkeypatch.setattr(transactions, "STOP_GRACE_S", 0.3)


def _guard(stop: StopFlag | None = None) -> TransactionGuard:
    # No Kafka is contacted before start(): the transactional-call guard can be exercised alone.
    stop = stop if stop is not None else StopFlag()
    return TransactionGuard(Settings(), "t-unit", stop, ChainerStats())


def test_a_transactional_call_that_never_returns_abandons_the_producer(
    short_deadlines: None,
) -> None:
    guard = _guard()
    forever = threading.Event()
    started = time.monotonic()
    with pytest.raises(ProducerHung):
        guard.bounded("send_offsets_to_transaction", lambda: forever.wait(), 0.2)
    assert 0.5 <= time.monotonic() - started < 3.0
    assert guard.hung
    assert "send_offsets_to_transaction: no answer after" in guard.last_error
    forever.set()


def test_a_stuck_call_does_not_hold_up_sigterm(short_deadlines: None) -> None:
    stop = StopFlag()
    guard = _guard(stop)
    forever = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        guard.bounded("commit_transaction", lambda: forever.wait(60), 0.2)
    assert time.monotonic() - started < 2.0
    forever.set()


def test_bounded_calls_pass_results_and_kafka_errors_through(short_deadlines: None) -> None:
    guard = _guard()
    assert guard.bounded("begin_transaction", lambda: 42, 0.2) == 42

    def fails() -> None:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out"))

    with pytest.raises(KafkaException):
        guard.bounded("commit_transaction", fails, 0.2)
    assert not guard.hung
