"""Reading whole partitions or their tails, read_committed, with a plain assigned consumer.

Used by the chainer's recovery, the verifier, proofs and exports. Reads stop at the high
watermark taken when the read starts, so a growing topic still gives a finite read.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from sealtrail.infra.acls import READER_GROUP_PREFIX
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable
from sealtrail.infra.kafka import consumer_conf, is_refusal, refused

log = logging.getLogger(__name__)

# Short: the last offsets of a transactional partition are often commit markers, which are
# never returned, so the read learns it reached the end only from an empty poll.
POLL_TIMEOUT_S = 0.05


class Reader(Consumer):
    """A consumer that remembers its settings, to name its principal when Kafka refuses it."""

    settings: Settings | None = None


def reader(settings: Settings, **overrides: object) -> Consumer:
    """A consumer for assign()-style reads: its group id is throwaway and it never commits.

    The group id starts with the topic prefix and ``sealtrail-reader-`` (one prefixed ACL
    allows them all, see sealtrail/acls.py)."""
    conf = consumer_conf(settings, reader_group(settings), **overrides)
    consumer = Reader(conf)
    consumer.settings = settings
    return consumer


def reader_group(settings: Settings) -> str:
    return f"{settings.topic_prefix}{READER_GROUP_PREFIX}{uuid.uuid4()}"


def consumer_settings(consumer: Consumer) -> Settings | None:
    return getattr(consumer, "settings", None)


def close_quietly(consumer: Consumer | None) -> None:
    """Close a consumer that may already have failed for good; a failing close is only logged."""
    if consumer is None:
        return
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as exc:
        log.debug("closing a Kafka consumer failed: %s", exc)


StopCheck = Callable[[], bool]


def watermarks(
    consumer: Consumer,
    topic: str,
    partition: int,
    timeout: float = 10.0,
    patience: float = 30.0,
    stop: StopCheck | None = None,
) -> tuple[int, int]:
    """(low, high) offsets; with read_committed the high mark is the last stable offset.

    Retriable errors (a leader moving after a broker restart) are retried for ``patience``
    seconds before the read is reported as failed; ``stop`` returning True ends the wait early.
    """
    deadline = time.monotonic() + patience
    delay = 0.1
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0]
            if stop is not None and stop():
                raise KafkaUnavailable(
                    f"stopped while waiting for the offsets of {topic}/{partition}"
                ) from None
            if _transient(error) and time.monotonic() + delay < deadline:
                time.sleep(delay)
                delay = min(2.0, delay * 2)
                # Short: a stop request is only seen between calls.
                shown = _refresh_metadata(
                    consumer, topic, min(2.0, max(0.1, deadline - time.monotonic()))
                )
                if is_refusal(shown):
                    # An unauthorized topic shows no partitions: "unknown partition" forever.
                    who = consumer_settings(consumer)
                    raise refused(who, shown, f"read topic {topic}") from None
                continue
            if is_refusal(error):
                raise refused(consumer_settings(consumer), error, f"read topic {topic}") from None
            raise KafkaUnavailable(
                f"could not read the offsets of {topic}/{partition}: {error.str()}"
            ) from None


def _refresh_metadata(consumer: Consumer, topic: str, timeout: float) -> KafkaError | None:
    """Ask a broker for the topic's metadata now; return the topic's error, if any.

    After a broker restart the client's cached view of a partition can stay wrong ("Unknown
    partition") while the offsets query does not refresh it; an explicit metadata request does.
    """
    try:
        shown = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        log.debug("metadata refresh for %s failed: %s", topic, exc)
        return None
    return shown.error if shown is not None else None


_LEADER_MOVING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        # Seen while a broker restarts: its handle is torn down and the partition's metadata is
        # briefly missing from the client's view.
        KafkaError._DESTROY_BROKER,
        KafkaError._UNKNOWN_PARTITION,
    }
)


def _transient(error: object) -> bool:
    if not isinstance(error, KafkaError):
        return False
    return bool(error.retriable()) or error.code() in _LEADER_MOVING


def read_range(
    consumer: Consumer,
    topic: str,
    partition: int,
    start: int | None = None,
    end: int | None = None,
    idle_timeout: float = 30.0,
    stop: StopCheck | None = None,
) -> Iterator[Message]:
    """Yield records of one partition from ``start`` (default: earliest) up to ``end``.

    ``end`` defaults to the high watermark at call time. Transaction markers and aborted records
    take offsets but are never yielded, so the read ends when the position reaches ``end``.
    """
    for batch in read_batches(consumer, topic, partition, start, end, idle_timeout, stop):
        yield from batch


def read_batches(
    consumer: Consumer,
    topic: str,
    partition: int,
    start: int | None = None,
    end: int | None = None,
    idle_timeout: float = 30.0,
    stop: StopCheck | None = None,
) -> Iterator[list[Message]]:
    """:func:`read_range` in the batches the consumer returns (no per-record generator step,
    for readers that go through millions of records). Batches are never empty."""
    low, high = watermarks(consumer, topic, partition, stop=stop)
    last = high if end is None else min(end, high)
    first = low if start is None else max(start, low)
    if first >= last:
        return
    consumer.assign(
        [TopicPartition(topic, partition, first if start is not None else OFFSET_BEGINNING)]
    )
    idle = 0.0
    try:
        while True:
            batch = consumer.consume(num_messages=5000, timeout=POLL_TIMEOUT_S)
            if not batch:
                position = consumer.position([TopicPartition(topic, partition)])[0].offset
                if position >= last:
                    return
                idle += POLL_TIMEOUT_S
                if stop is not None and stop():
                    raise KafkaUnavailable(f"stopped while reading {topic}/{partition}")
                if idle >= idle_timeout:
                    raise KafkaUnavailable(
                        f"reading {topic}/{partition} stalled at offset {position} of {last}; "
                        "check that the brokers are up"
                    )
                continue
            idle = 0.0
            out: list[Message] = []
            done = False
            for message in batch:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    if out:
                        yield out  # what came before the error, as read_range did
                    if is_refusal(error):
                        raise refused(consumer_settings(consumer), error, f"read topic {topic}")
                    raise KafkaUnavailable(f"reading {topic}/{partition} failed: {error.str()}")
                offset = message.offset()
                if offset is None or offset >= last:
                    done = True
                    break
                out.append(message)
                if offset + 1 >= last:
                    done = True
                    break
            if out:
                yield out
            if done:
                return
    finally:
        consumer.unassign()


def read_tail(
    consumer: Consumer,
    topic: str,
    partition: int,
    count: int = 1,
    window: int = 64,
    stop: StopCheck | None = None,
) -> list[Message]:
    """The last ``count`` records of a partition (fewer if it holds fewer).

    Seeks back a window from the end and doubles it until enough records are found:
    transaction markers take offsets, so end-1 is often not a record.
    """
    low, high = watermarks(consumer, topic, partition, stop=stop)
    if high <= low:
        return []
    span = max(window, count * 2)
    while True:
        start = max(low, high - span)
        found = list(read_range(consumer, topic, partition, start, high, stop=stop))
        if len(found) >= count or start == low:
            return found[-count:] if count else []
        span *= 4
