"""Read chains and checkpoints from Kafka for the verifier, proofs and the offsite export."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient

from processors.integrity import chains
from processors.integrity.checkpoint import KeyRing, origin_for
from processors.integrity.errors import MalformedRecord, Truncated
from processors.integrity.record import ChainedRecord
from processors.verifier.core import (
    ChainResult,
    ChainState,
    RecordItem,
    SourceCheckpoint,
    ValueBatch,
    value_item,
)
from processors.verifier.replay import verify_chain_values
from schemas.chained import value_record
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable, SealtrailError, TopicError
from sealtrail.infra.kafka import admin, check_login, describe, is_refusal, refused
from sealtrail.infra.kafka_read import read_batches, read_range, reader, watermarks

__all__ = [
    "ChainJob",
    "chain_id",
    "chain_end_moved",
    "chain_partitions",
    "checkpoint_notes_until_now",
    "decode_record",
    "iter_records",
    "iter_values",
    "read_checkpoint_notes",
    "run_job",
]


def chain_id(settings: Settings, partition: int) -> str:
    return chains.chain_id(settings.topics.raw, partition)


def chain_partitions(settings: Settings, timeout: float = 10.0) -> list[int]:
    """Partitions of the chain topic; KafkaUnavailable / TopicError in one sentence, also when
    the checkpoint topic lacks a partition of one of them (chain partition p keeps its
    checkpoints in checkpoint partition p: a read of one that does not exist would wait out
    its timeout and say only "Unknown partition")."""
    chain_topic, checkpoint_topic = settings.topics.chain, settings.topics.checkpoints
    check_login(settings, timeout)
    client = admin(settings)
    partitions = _topic_partitions(settings, client, chain_topic, "chain", timeout)
    have = set(_topic_partitions(settings, client, checkpoint_topic, "checkpoint", timeout))
    lacking = [p for p in partitions if p not in have]
    if lacking:
        raise TopicError(
            f"checkpoint topic {checkpoint_topic} has {len(have)} partition(s) and chain topic "
            f"{chain_topic} {len(partitions)}, so the checkpoints of chain partition(s) "
            f"{', '.join(map(str, lacking))} have nowhere to be; each chain partition keeps its "
            "checkpoints in the checkpoint partition of the same number: give the checkpoint "
            "topic as many partitions as the raw and chain topics "
            "(kafka-topics.sh --alter --partitions)"
        )
    return partitions


def _topic_partitions(
    settings: Settings, client: AdminClient, topic: str, kind: str, timeout: float
) -> list[int]:
    try:
        md = client.list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {settings.kafka} did not answer within {timeout:.0f}s ({exc.args[0]}); "
            "check SEALTRAIL_KAFKA and that the brokers are up"
        ) from None
    info = md.topics.get(topic)
    if info is not None and is_refusal(info.error):
        raise refused(settings, info.error, f"read topic {topic}")
    if info is None or info.error is not None or not info.partitions:
        raise TopicError(
            f"{kind} topic {topic} does not exist on {settings.kafka}; check "
            "SEALTRAIL_TOPIC_PREFIX or create the topics with 'sealtrail topics init'"
        )
    return sorted(info.partitions)


def decode_record(value: bytes | None) -> ChainedRecord:
    """A chain topic value as a record; MalformedRecord if it is not one."""
    if value is None:
        raise MalformedRecord("chain topic record has no value; it was not written by sealtrail")
    try:
        return value_record(value)
    except SealtrailError as exc:
        raise MalformedRecord(
            f"chain topic record does not decode as a ChainedEvent: {exc}"
        ) from None


def read_partition(
    consumer: Consumer,
    topic: str,
    partition: int,
    start: int | None = None,
    end: int | None = None,
) -> Iterator[tuple[int, bytes | None, bytes | None]]:
    """(offset, key, value) of one partition from ``start`` (default earliest) to ``end``
    (default: the last stable offset at call time; see
    :func:`sealtrail.infra.kafka_read.read_range`)."""
    for message in read_range(consumer, topic, partition, start, end):
        yield message.offset() or 0, message.key(), message.value()


def iter_values(
    settings: Settings, partition: int, start: int | None = None
) -> tuple[int, int, Iterator[ValueBatch]]:
    """(low, high watermark, batches of (offsets, raw values) from ``start`` or the earliest
    offset), what :meth:`~processors.verifier.replay.ChainReplay.replay_values` takes."""
    consumer = reader(settings)
    topic = settings.topics.chain
    low, high = watermarks(consumer, topic, partition)

    def gen() -> Iterator[ValueBatch]:
        try:
            for batch in read_batches(consumer, topic, partition, start):
                yield [m.offset() or 0 for m in batch], [m.value() for m in batch]
        finally:
            consumer.close()

    return low, high, gen()


def iter_records(
    settings: Settings, partition: int, start: int | None = None
) -> tuple[int, int, Iterator[RecordItem]]:
    """:func:`iter_values` one decoded record at a time, as ``(offset, fields or
    MalformedRecord)`` tuples."""
    low, high, batches = iter_values(settings, partition, start)

    def gen() -> Iterator[RecordItem]:
        for offsets, values in batches:
            for offset, value in zip(offsets, values, strict=True):
                yield value_item(offset, value)

    return low, high, gen()


def read_checkpoint_notes(settings: Settings, partition: int, chain: str) -> list[SourceCheckpoint]:
    """Every checkpoint note in the partition of ``chain``. The Kafka key (the chain id) is not
    signed, so it selects nothing: a note of another chain fails the origin check instead."""
    return checkpoint_notes_until_now(settings, partition)()


def checkpoint_notes_until_now(
    settings: Settings, partition: int
) -> Callable[[], list[SourceCheckpoint]]:
    """Fix the end of checkpoint partition ``partition`` now (its last stable offset); the
    function returned reads every note below it, once, from any thread.

    Fix it before the chain partition's end: the chainer commits a checkpoint in the same
    transaction as the records it vouches for (docs/FORMAT.md), so each note read then vouches
    only for records the chain read will see. Fixed later, a checkpoint committed in between
    vouches for records past the chain's end: a false "records were cut" on a live log.
    """
    consumer = reader(settings)
    try:
        _low, end = watermarks(consumer, settings.topics.checkpoints, partition)
    except BaseException:
        consumer.close()
        raise

    def read() -> list[SourceCheckpoint]:
        try:
            return _notes(consumer, settings.topics.checkpoints, partition, end)
        finally:
            consumer.close()

    return read


def _notes(consumer: Consumer, topic: str, partition: int, end: int) -> list[SourceCheckpoint]:
    out: list[SourceCheckpoint] = []
    for offset, _key, value in read_partition(consumer, topic, partition, end=end):
        raw = value or b""
        try:
            note = raw.decode("utf-8")
        except UnicodeDecodeError:
            # Kept invalid (not replaced by U+FFFD): open_checkpoint rejects it as not UTF-8.
            note = raw.decode("utf-8", "surrogateescape")
        out.append(SourceCheckpoint(note, offset, "topic"))
    return out


@dataclass(frozen=True, slots=True)
class ChainJob:
    """Everything a worker process needs to verify one chain (picklable)."""

    settings: Settings
    partition: int
    keyring_text: str
    state: ChainState | None
    offsite_notes: tuple[str, ...] = ()
    require_anchored: bool = False
    probe_size: int | None = None
    max_findings: int = 1000
    # --full with a state file: replay from the start, and the remembered head must still hold.
    state_check: ChainState | None = None


def keyring_text(ring: KeyRing) -> str:
    """The key ring as text (Verifier objects hold OpenSSL handles that do not pickle)."""
    return "".join(
        f"{e.verifier.verifier_key()} {e.from_size} {'-' if e.to_size is None else e.to_size}\n"
        for e in ring
    )


def run_job(job: ChainJob, on_record: Callable[[int], None] | None = None) -> ChainResult:
    """Read one chain and its checkpoints from Kafka and verify them (runs in a worker)."""
    settings = job.settings
    chain = chain_id(settings, job.partition)
    ring = KeyRing.parse(job.keyring_text, "key ring")
    incremental = job.state is not None and job.state.size > 0
    start = job.state.offset if job.state is not None and incremental else None
    # The checkpoint partition's end is fixed before the chain's (checkpoint_notes_until_now
    # says why), then read while the chain's first batch is fetched (each read waits mostly on
    # the broker and on closing its consumer).
    read_notes = checkpoint_notes_until_now(settings, job.partition)
    with ThreadPoolExecutor(max_workers=1) as pool:
        notes = pool.submit(read_notes)
        low, high, batches = iter_values(settings, job.partition, start)
        first = next(batches, None)
        cps = notes.result()
    cps += [SourceCheckpoint(n, None, "offsite") for n in job.offsite_notes]
    if first is not None:
        batches = itertools.chain([first], batches)

    def replay(low: int, batches: Iterator[ValueBatch], full: bool, report: bool) -> ChainResult:
        return verify_chain_values(
            chain,
            batches,
            cps,
            ring,
            origin=origin_for(settings.deployment, chain),
            state=None if full else job.state,
            low_offset=low,
            require_anchored=job.require_anchored,
            probe_size=job.probe_size,
            max_findings=job.max_findings,
            on_record=on_record if report else None,
            state_check=job.state if full else job.state_check if not incremental else None,
        )

    result = replay(low, batches, False, True)
    deadline = time.monotonic() + MARKER_PATIENCE_S
    # A checkpoint read vouches for records past the chain's end: read the chain again (with
    # the same checkpoints) once its end moves, as long as a transaction is open there.
    while _cut_short(result) and chain_end_moved(settings, job.partition, high, deadline):
        low, high, batches = iter_values(settings, job.partition, start)
        result = replay(low, batches, False, False)
    if not result.anchor_failed:
        return result
    # The remembered record is not at its offset (topic rebuilt, re-partitioned or cut): replay
    # everything and check the remembered head at its size, which names what happened.
    low, _high, batches = iter_values(settings, job.partition, None)
    return replay(low, batches, True, True)


MARKER_PATIENCE_S = 10.0
"""How long a chain whose records a checkpoint vouches for but the chain read did not reach,
and whose partition has a transaction open, is given for its end to move before the cut is
reported (commit markers are written to each partition of a transaction separately)."""


def _cut_short(result: ChainResult) -> bool:
    """A checkpoint vouches for more records than the chain read held (the finding that
    ``ChainReplay.finish`` makes of it; the remembered head missing has no size found)."""
    return any(isinstance(f, Truncated) and f.found is not None for f in result.findings)


def chain_end_moved(settings: Settings, partition: int, end: int, deadline: float) -> bool:
    """Wait for chain partition ``partition``'s last stable offset to pass ``end`` (where a
    read that fell short of a checkpoint stopped); True once it has. False at once when no
    transaction is open there (the last stable offset is the high watermark: the records are
    not coming), and once ``deadline`` (``time.monotonic()``) has passed.

    A checkpoint vouches only for records committed in its own transaction, but the broker
    writes that transaction's commit marker to each partition on its own, so the checkpoint
    can be readable a moment before the chain records it vouches for.
    """
    topic = settings.topics.chain
    committed = reader(settings)
    uncommitted = reader(settings, **{"isolation.level": "read_uncommitted"})
    try:
        while time.monotonic() < deadline:
            stable = watermarks(committed, topic, partition)[1]
            if stable > end:
                return True
            if stable >= watermarks(uncommitted, topic, partition)[1]:
                return False
            time.sleep(0.1)
        return False
    finally:
        committed.close()
        uncommitted.close()


# How far back from a committed offset to look for the record below it: transaction markers take
# offsets too, but every transaction holds at least one record.
_CLAIM_WINDOW = 1024


def sink_committed(
    settings: Settings, group: str, partitions: list[int], timeout: float = 10.0
) -> dict[int, int | None]:
    """The offset the sink's consumer group committed on each chain partition of ``partitions``
    (None where it committed nothing). Read it *before* counting ClickHouse's rows: the sink
    commits only after ClickHouse acknowledged the rows below, so every record below an offset
    read earlier is in the table when it is counted, even while the sink runs on."""
    from confluent_kafka import TopicPartition

    from sealtrail.infra.kafka import consumer_conf

    topic = settings.topics.chain
    # A plain consumer with the sink's group id: asking for committed offsets does not join the
    # group, so the running sink is not disturbed.
    probe = Consumer(consumer_conf(settings, group))
    try:
        found = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"could not read the committed offsets of the sink group {group}: {describe(exc)}"
        ) from None
    finally:
        probe.close()
    out: dict[int, int | None] = dict.fromkeys(partitions)
    for tp in found:
        out[tp.partition] = tp.offset if tp.offset is not None and tp.offset > 0 else None
    return out


def seq_below(settings: Settings, partition: int, committed: int | None) -> int | None:
    """The seq of the last chained record of chain partition ``partition`` below offset
    ``committed`` (what a sink that committed ``committed`` says ClickHouse holds); None when
    nothing was committed or no chained record is below it."""
    if committed is None or committed <= 0:
        return None
    topic = settings.topics.chain
    rdr = reader(settings)
    try:
        below = list(
            read_range(rdr, topic, partition, max(0, committed - _CLAIM_WINDOW), committed)
        )
    finally:
        rdr.close()
    for message in reversed(below):
        try:
            return decode_record(message.value()).seq
        except SealtrailError:
            continue  # not a chained record; the replay reports it
    return None
