"""Offset reads under broker restarts, with a stand-in consumer (no network)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from sealtrail.infra.errors import KafkaNotAuthorized, KafkaUnavailable
from sealtrail.infra.kafka_read import watermarks


class FlakyConsumer:
    """Fails the offsets query with ``errors`` in turn, then answers; records metadata asks."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.metadata_requests: list[str] = []
        self.queries = 0

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        self.queries += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return 3, 42

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        self.metadata_requests.append(topic)
        return SimpleNamespace(topics={})  # the topic shows no error (and no partitions)


def test_a_stale_partition_view_is_refreshed_and_retried() -> None:
    consumer = FlakyConsumer(KafkaError._UNKNOWN_PARTITION, KafkaError.NOT_LEADER_FOR_PARTITION)
    assert watermarks(consumer, "t", 0, patience=10) == (3, 42)  # type: ignore[arg-type]
    # Each failed query asks for fresh metadata before trying again.
    assert consumer.metadata_requests == ["t", "t"]
    assert consumer.queries == 3


def test_a_persistent_failure_is_reported_in_one_sentence_after_the_patience() -> None:
    consumer = FlakyConsumer(*[KafkaError._UNKNOWN_PARTITION] * 100)
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match=r"could not read the offsets of t/2: .*partition"):
        watermarks(consumer, "t", 2, patience=0.5)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2.0


def test_a_non_transient_error_is_not_retried() -> None:
    consumer = FlakyConsumer(KafkaError.INVALID_REQUEST)
    with pytest.raises(KafkaUnavailable, match="could not read the offsets of t/0"):
        watermarks(consumer, "t", 0)  # type: ignore[arg-type]
    assert consumer.queries == 1 and consumer.metadata_requests == []


def test_a_refused_read_says_the_principal_may_not_read_the_topic() -> None:
    consumer = FlakyConsumer(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaNotAuthorized, match="refused to let this client read topic t"):
        watermarks(consumer, "t", 0)  # type: ignore[arg-type]
    assert consumer.queries == 1


def test_a_stop_request_ends_the_wait_at_once() -> None:
    consumer = FlakyConsumer(*[KafkaError._UNKNOWN_PARTITION] * 100)
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match="stopped while waiting for the offsets of t/0"):
        watermarks(consumer, "t", 0, patience=30, stop=lambda: True)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.0 and consumer.queries == 1
