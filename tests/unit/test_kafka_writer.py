"""producers.kafka_writer: a body's records counted once, against a real librdkafka producer
whose broker is unreachable (so nothing is acknowledged and its queue fills)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from producers.kafka_writer import Backpressure, Batch, ConfirmedProducer, _weak_error_cb
from sealtrail.infra.config import Settings


def test_produce_many_full_queue_fails_the_batch_once_every_record_is_accounted() -> None:
    settings = Settings.from_env().with_(kafka="127.0.0.1:1")
    producer = ConfirmedProducer(
        settings, message_timeout_s=1.0, **{"queue.buffering.max.messages": 2}
    )
    try:
        batch = Batch()
        with pytest.raises(Backpressure):
            producer.produce_many(batch, "raw", b"k", [b"v%d" % i for i in range(5)])
        batch.seal()
        # Two records were queued (they time out unacknowledged), three never were.
        assert batch.wait(30)
        assert batch.error is not None
        assert batch.acked == 0
    finally:
        producer.close(0)


def test_produce_many_empty_batch_is_done_at_seal() -> None:
    settings = Settings.from_env().with_(kafka="127.0.0.1:1")
    producer = ConfirmedProducer(settings, message_timeout_s=1.0)
    try:
        batch = Batch()
        producer.produce_many(batch, "raw", b"k", [])
        batch.seal()
        assert batch.wait(1)
        assert batch.error is None
    finally:
        producer.close(0)


def test_a_record_the_full_queue_refused_leaves_its_batch_unfailed() -> None:
    """produce() on a full queue raises Backpressure and the record is not in the batch: a
    caller that queues it again once there is room gets the batch's true outcome."""
    settings = Settings.from_env().with_(kafka="127.0.0.1:1")
    producer = ConfirmedProducer(
        settings, message_timeout_s=1.0, **{"queue.buffering.max.messages": 1}
    )
    try:
        batch = Batch()
        producer.produce(batch, "raw", b"k", b"v0")
        with pytest.raises(Backpressure):
            producer.produce(batch, "raw", b"k", b"v1")
        assert batch.error is None
        other = Batch()  # a batch whose only record never got into the queue
        with pytest.raises(Backpressure):
            producer.produce(other, "raw", b"k", b"v2")
        other.seal()
        assert other.wait(1) and other.error is None and other.acked == 0
        batch.seal()
        # Only v0 is pending: it times out unacknowledged, and that alone fails the batch.
        assert batch.wait(30)
        assert batch.error is not None and "Queue full" not in batch.error
    finally:
        producer.close(0)


def test_a_dropped_producer_frees_its_librdkafka_handle_without_the_cycle_collector() -> None:
    """The handle's error_cb must not hold the producer: a reference cycle kept a dropped
    producer, its handle and the handle's threads reconnecting to the brokers until a cyclic
    collection, which a service with a tuned collector runs seldom. (The handle takes no weak
    reference; it is held by the producer alone, so it goes with it.)"""
    import gc
    import weakref

    gc.disable()
    try:
        producer = ConfirmedProducer(Settings.from_env().with_(kafka="127.0.0.1:1"))
        # The weak error_cb still reaches the live producer.
        _weak_error_cb(producer)(KafkaError(KafkaError._ALL_BROKERS_DOWN))
        assert producer.connected is False
        gone = weakref.ref(producer)
        producer.close(0)
        del producer
        assert gone() is None
    finally:
        gc.enable()
