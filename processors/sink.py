"""The ClickHouse sink: chain and checkpoint topics -> ClickHouse, exactly once.

How "exactly once" holds without a transaction spanning Kafka and ClickHouse:

* records are read ``read_committed`` and batched per chain-topic partition;
* each batch is one insert block per chain and seq range, with
  ``insert_deduplication_token = "<chain>:<first>-<last>"`` (the tables keep a
  ``non_replicated_deduplication_window``), so a retried insert is stored once;
* the offset is committed only after ClickHouse acknowledged the insert;
* before filtering a batch the sink knows which seqs of the chain are already stored (loaded on
  start-up and on every assignment, then tracked), so records re-read after a crash between the
  insert and the commit, or a re-run from offset 0, add nothing. A block that spans several
  months is written as one part per month, not atomically, so the stored set is "every seq below
  N plus a few above"; holes left by a crash are filled on the next run.

A payload that does not decode still gets its ``events`` row (``decode_ok = 0``, empty decoded
columns) so the store holds every seq of every chain; the bytes and the reason also go to
``rejects``. A chain-topic value that is not a ChainedEvent at all has no seq: it goes to
``rejects`` only, and the verifier reports the gap.

With the embedded ClickHouse, a chain batch whose records all carry the current schema versions
is decoded by ClickHouse itself (:mod:`processors.sink_avro`); it yields the same rows, and any
batch it refuses or fails on goes through :func:`event_columns` as above, with the same token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError
from clickhouse_connect.driver.insert import InsertContext
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from processors import sink_avro
from processors.clickhouse_schema import (
    CHECKPOINT_COLUMNS,
    EVENT_COLUMNS,
    REJECT_COLUMNS,
    migrate,
)
from processors.integrity.checkpoint import Checkpoint
from processors.integrity.errors import MalformedCheckpoint
from processors.integrity.record import HASH_SIZE, ChainedRecord
from processors.sink_avro import parse_chained
from schemas.codec import decode_audit_event, decode_chained
from sealtrail import clickhouse
from sealtrail.config import Settings
from sealtrail.errors import ConfigError, DecodeError, KafkaUnavailable
from sealtrail.kafka import consumer_conf, is_refusal, refused
from sealtrail.kafka_read import close_quietly
from sealtrail.service import StopFlag, backoff

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GROUP",
    "Sink",
    "SinkOptions",
    "SinkStats",
    "event_columns",
    "parse_checkpoint",
]

DEFAULT_GROUP = "sealtrail-sink"
AVRO_FILE_NAME = ".sealtrail-sink.avro"  # the fast path's container file, in the chdb store
# Consumer rebuilds in a row without a commit: past this, something else holds the member id.
MAX_CONSUMER_REBUILDS = 5
_MAX_I64 = (1 << 63) - 1
_COORDINATOR_ERRORS = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}


@dataclass(frozen=True, slots=True)
class SinkOptions:
    batch_rows: int = 10000
    batch_ms: int = 500
    once: bool = False
    group: str = ""  # default: <topic prefix>sealtrail-sink, like the chainer's group
    # Embedded ClickHouse only: the engine decodes the payloads (processors/sink_avro.py).
    avro_fast_path: bool = True

    def __post_init__(self) -> None:
        if self.batch_rows < 1:
            raise ConfigError(f"--batch-rows must be at least 1, not {self.batch_rows}")
        if self.batch_ms < 1:
            raise ConfigError(f"--batch-ms must be at least 1, not {self.batch_ms}")


@dataclass(slots=True)
class SinkStats:
    inserted: int = 0  # events rows written
    skipped: int = 0  # records already stored
    rejects: int = 0  # rows written to rejects
    checkpoints: int = 0  # checkpoint rows written
    batches: int = 0
    retries: int = 0
    consumer_rebuilds: int = 0
    insert_seconds: float = 0.0
    decode_seconds: float = 0.0
    fast_batches: int = 0  # chain batches ClickHouse decoded (sink_avro)
    fast_fallbacks: int = 0  # of those, batches the fast insert failed on: redone in Python

    def as_dict(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


class _ConsumerLost(Exception):  # noqa: N818 - internal control flow
    """The Kafka consumer hit a fatal error (e.g. its static member id was fenced)."""


class _Stopped(Exception):
    """Stop was requested while waiting to retry an insert: exit without committing."""


# ---------------------------------------------------------------------------------------------
# decoding, in bulk


def event_columns(
    records: Sequence[ChainedRecord],
) -> tuple[list[list[Any]], list[tuple[ChainedRecord, str]]]:
    """The ``events`` columns (in :data:`EVENT_COLUMNS` order) for ``records``, and the records
    whose payload did not decode with the reason (they still get a ``decode_ok = 0`` row)."""
    columns: list[list[Any]] = [[] for _ in EVENT_COLUMNS]
    (
        c_chain,
        c_seq,
        c_prev,
        c_hash,
        c_offset,
        c_ingested,
        c_payload,
        c_ok,
        c_cluster,
        c_source,
        c_time,
        c_received,
        c_audit,
        c_stage,
        c_level,
        c_verb,
        c_uri,
        c_user,
        c_groups,
        c_imp,
        c_ips,
        c_agent,
        c_resource,
        c_ns,
        c_name,
        c_sub,
        c_group,
        c_apiv,
        c_code,
        c_ann,
        c_actor,
        c_action,
        c_rgen,
        c_outcome,
        c_attrs,
    ) = columns
    failed: list[tuple[ChainedRecord, str]] = []
    for record in records:
        c_chain.append(record.chain)
        c_seq.append(record.seq)
        c_prev.append(record.prev_hash)
        c_hash.append(record.hash)
        c_offset.append(record.source_offset)
        c_ingested.append(record.ingested_at_us)
        c_payload.append(record.payload)
        try:
            d = decode_audit_event(record.payload)
        except DecodeError as exc:
            failed.append((record, str(exc)))
            d = None
        if d is None:
            c_ok.append(0)
            # Undecodable rows are placed in time by when the chainer sealed them.
            c_time.append(record.ingested_at_us)
            c_received.append(record.ingested_at_us)
            for col in (c_cluster, c_source, c_audit, c_stage, c_level, c_verb, c_uri, c_user):
                col.append("")
            for col in (c_imp, c_agent, c_resource, c_ns, c_name, c_sub, c_group, c_apiv):
                col.append("")
            for col in (c_actor, c_action, c_rgen, c_outcome):
                col.append("")
            c_groups.append([])
            c_ips.append([])
            c_code.append(None)
            c_ann.append({})
            c_attrs.append({})
            continue
        c_ok.append(1)
        received = d["received_at"]
        stage_at = d["stage_at"]
        if stage_at is None:
            stage_at = d["request_received_at"]
        c_time.append(received if stage_at is None else stage_at)
        c_received.append(received)
        c_cluster.append(d["cluster"])
        c_source.append(d["source"])
        c_audit.append(d["audit_id"])
        c_stage.append(d["stage"])
        c_level.append(d["level"])
        c_verb.append(d["verb"])
        c_uri.append(d["request_uri"])
        c_user.append(d["user_name"])
        c_groups.append(d["user_groups"])
        c_imp.append(d["impersonated_user"] or "")
        c_ips.append(d["source_ips"])
        c_agent.append(d["user_agent"])
        c_resource.append(d["object_resource"])
        c_ns.append(d["object_namespace"])
        c_name.append(d["object_name"])
        c_sub.append(d["object_subresource"])
        c_group.append(d["object_api_group"])
        c_apiv.append(d["object_api_version"])
        c_code.append(d["response_code"])
        c_ann.append(d["annotations"])
        c_actor.append(d["actor"])
        c_action.append(d["action"])
        c_rgen.append(d["resource"])
        c_outcome.append(d["outcome"])
        c_attrs.append(d["attributes"])
    return columns, failed


def _record_of(datum: dict[str, Any]) -> ChainedRecord:
    """A ChainedRecord from a decoded datum; DecodeError if a field cannot be stored."""
    chain, seq, offset = datum["chain"], datum["seq"], datum["source_offset"]
    prev, digest = datum["prev_hash"], datum["hash"]
    if not 0 <= seq <= _MAX_I64 or not 0 <= offset <= _MAX_I64:
        raise DecodeError(f"chained record has a negative seq ({seq}) or source_offset ({offset})")
    if len(prev) != HASH_SIZE or len(digest) != HASH_SIZE:
        raise DecodeError(
            f"chained record hashes are {len(prev)} and {len(digest)} bytes, not {HASH_SIZE}"
        )
    return ChainedRecord(chain, seq, prev, digest, offset, datum["ingested_at"], datum["payload"])


def parse_checkpoint(note: str) -> tuple[Checkpoint, list[str]]:
    """The checkpoint body of a signed note and the names of the keys that signed it
    (signatures are not checked here: the verifier does that with its key ring)."""
    cut = note.rfind("\n\n")
    if cut < 0:
        raise MalformedCheckpoint("checkpoint note has no signature block")
    checkpoint = Checkpoint.parse(note[: cut + 1])
    names = [
        line[2:].split(" ", 1)[0]
        for line in note[cut + 2 :].split("\n")
        if line.startswith("\u2014 ")
    ]
    return checkpoint, names


# ---------------------------------------------------------------------------------------------
# what is already stored


@dataclass(slots=True)
class _Stored:
    """Seqs of one chain in ClickHouse: all below ``contiguous``, plus ``extra`` above it."""

    contiguous: int = 0
    extra: set[int] = field(default_factory=set)

    def has(self, seq: int) -> bool:
        return seq < self.contiguous or seq in self.extra

    def add(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            if seq == self.contiguous:
                self.contiguous += 1
            elif seq > self.contiguous:
                self.extra.add(seq)
        while self.contiguous in self.extra:
            self.extra.discard(self.contiguous)
            self.contiguous += 1


@dataclass(frozen=True, slots=True)
class _ChainBatch:
    """One insert into ``events``: a chain's fresh records from one partition batch, as
    (seq, record or None for the fast path, chain-topic value, payload start)."""

    chain: str
    partition: int
    items: list[tuple[int, ChainedRecord | None, bytes, int]]
    token: str
    now_us: int


@dataclass(slots=True)
class _Inflight:
    """A fast insert running on the sink's worker thread."""

    future: Future[float]
    batch: _ChainBatch
    commit: tuple[str, int, int | None] | None = None  # the batch's offset, once it is read


@dataclass(slots=True)
class _Buffer:
    messages: list[Message] = field(default_factory=list)
    since: float = 0.0


class Sink:
    """``Sink(settings, options, stop).run()``; ``run`` returns the statistics of the run."""

    def __init__(
        self, settings: Settings, options: SinkOptions | None = None, stop: StopFlag | None = None
    ) -> None:
        self.settings = settings
        self.options = options or SinkOptions()
        self.stop = stop if stop is not None else StopFlag()  # an unset flag is falsy
        self.stats = SinkStats()
        # The topic prefix separates deployments sharing a cluster, as for the chainer.
        self.group = self.options.group or f"{settings.topic_prefix}{DEFAULT_GROUP}"
        self.db = clickhouse.validate_identifier(settings.clickhouse_database)
        self.chain_topic = settings.topics.chain
        self.checkpoint_topic = settings.topics.checkpoints
        self._client: Client | None = None
        self._consumer: Consumer | None = None
        self._buffers: dict[tuple[str, int], _Buffer] = {}
        self._stored: dict[str, _Stored] = {}
        self._cp_offsets: dict[int, int] = {}  # checkpoint partition -> max stored offset
        self._cp_loaded = False
        self._contexts: dict[str, InsertContext] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._committed_since_rebuild = False
        # Not for servers: that insert path (Avro sent over HTTP) is untested.
        self._fast = (
            self.options.avro_fast_path
            and sink_avro.AVAILABLE
            and clickhouse.chdb_path(settings.clickhouse_dsn) is not None
        )
        self._avro_file: tuple[int, str] | None = None  # the fast path's file, reused
        # The fast insert runs on a worker thread (chdb releases the GIL) while this thread
        # reads and parses the next batch; at most one is in flight, and it is finished
        # (offset committed) before anything else touches ClickHouse or the offsets.
        self._worker: ThreadPoolExecutor | None = None
        self._inflight: _Inflight | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = clickhouse.connect(self.settings)
            migrate(self._client, self.db)
        return self._client

    def _new_consumer(self) -> Consumer:
        conf = consumer_conf(
            self.settings,
            self.group,
            # Bounded memory: librdkafka's prefetch queue stays small while ClickHouse is slow.
            **{"queued.max.messages.kbytes": 32768, "max.poll.interval.ms": 900000},
        )
        # Static membership: a restarted (e.g. crashed) sink takes its partitions back at once
        # instead of waiting out the dead member's session (45 s), and a SIGTERM during that
        # wait does not hang in the rebalance. --once assigns partitions itself: no group.
        if not self.options.once:
            conf["group.instance.id"] = f"{self.group}-{socket.gethostname()}"
        consumer = Consumer(conf)
        self._consumer = consumer
        return consumer

    def run(self) -> SinkStats:
        _ = self.client  # open and migrate before touching Kafka: a held store fails fast
        self._clear_stale_avro_file()
        consumer = self._new_consumer()
        try:
            if self.options.once:
                self._run_once(consumer)
            else:
                self._run_service()
        except _Stopped:
            log.info("stopped while ClickHouse was unavailable; uncommitted batches are re-read")
        finally:
            self._abandon_inflight()
            if self._worker is not None:
                self._worker.shutdown()
                self._worker = None
            self._close_avro_file()
            if self._consumer is not None:
                self._consumer.close()
            self._consumer = None
        return self.stats

    def _subscribe(self, consumer: Consumer) -> None:
        consumer.subscribe(
            [self.chain_topic, self.checkpoint_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def _run_service(self) -> None:
        assert self._consumer is not None
        self._subscribe(self._consumer)
        failures = 0
        while not self.stop:
            consumer = self._consumer
            assert consumer is not None
            try:
                self._poll(consumer)
            except _ConsumerLost as lost:
                failures = (0 if self._committed_since_rebuild else failures) + 1
                self._rebuild_consumer(str(lost), failures)
                continue
            self._flush_due()
            self._reap_inflight()
        self._flush_all()
        log.info("sink stopped (%s): %s", self.stop.reason, self.stats.as_dict())

    def _rebuild_consumer(self, reason: str, failures: int) -> None:
        """Replace a consumer that failed for good (e.g. a fenced static member id).

        Buffered records were not committed: the new consumer reads them again and the
        stored-seq check and insert tokens keep ClickHouse exact.
        """
        self.stats.consumer_rebuilds += 1
        if failures > MAX_CONSUMER_REBUILDS:
            raise KafkaUnavailable(
                f"the sink's Kafka consumer failed {failures} times in a row (last: {reason}); "
                f"check that no other sink uses group {self.group} from this host, then restart"
            )
        log.warning("Kafka consumer failed for good (%s): rebuilding it", reason)
        self._finish_inflight(commit=False)  # that consumer cannot commit any more
        old = self._consumer
        self._buffers.clear()
        self._assigned.clear()
        self._stored.clear()
        self._cp_loaded = False
        self._committed_since_rebuild = False
        close_quietly(old)
        self._consumer = None
        if self.stop.wait(1.0):
            return
        self._subscribe(self._new_consumer())

    def _run_once(self, consumer: Consumer) -> None:
        """Assign every partition at its committed offset, read to the end seen at start, exit."""
        targets = self._assign_all(consumer)
        while not self.stop:
            self._poll(consumer)
            self._flush_due()
            self._reap_inflight()
            if self._caught_up(consumer, targets):
                break
        self._flush_all()

    def _assign_all(self, consumer: Consumer) -> dict[tuple[str, int], int]:
        partitions: list[TopicPartition] = []
        try:
            metadata = consumer.list_topics(timeout=10)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"Kafka at {self.settings.kafka} did not answer ({exc.args[0].str()}); "
                "check SEALTRAIL_KAFKA"
            ) from None
        for topic in (self.chain_topic, self.checkpoint_topic):
            info = metadata.topics.get(topic)
            if info is None or info.error is not None or not info.partitions:
                raise KafkaUnavailable(
                    f"topic {topic} does not exist; create the topics with 'sealtrail topics init'"
                )
            partitions += [TopicPartition(topic, p) for p in sorted(info.partitions)]
        committed = self._committed(consumer, partitions)
        targets: dict[tuple[str, int], int] = {}
        assign: list[TopicPartition] = []
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            start = tp.offset if tp.offset >= 0 else low
            if start < high:
                targets[(tp.topic, tp.partition)] = high
                assign.append(TopicPartition(tp.topic, tp.partition, start))
        self._reset_state(assign)
        consumer.assign(assign)
        return targets

    def _committed(
        self, consumer: Consumer, partitions: list[TopicPartition]
    ) -> list[TopicPartition]:
        # A fresh cluster answers "not coordinator" until __consumer_offsets is ready: retry.
        delays = backoff(0.2, 2.0)
        deadline = time.monotonic() + 60
        while True:
            try:
                return list(consumer.committed(partitions, timeout=10))
            except KafkaException as exc:
                error = exc.args[0]
                if not error.retriable() and error.code() not in _COORDINATOR_ERRORS:
                    raise KafkaUnavailable(
                        f"could not read the sink's committed offsets ({error.str()})"
                    ) from None
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(
                        f"could not read the sink's committed offsets ({error.str()}); "
                        "check that the brokers are up"
                    ) from None
                if self.stop.wait(next(delays)):
                    raise _Stopped from None

    def _caught_up(self, consumer: Consumer, targets: dict[tuple[str, int], int]) -> bool:
        if any(buffer.messages for buffer in self._buffers.values()):
            return False
        if not targets:
            return True
        positions = consumer.position([TopicPartition(t, p) for t, p in targets])
        for tp in positions:
            if tp.offset < targets[(tp.topic, tp.partition)]:
                return False
        return True

    def _reset_state(self, partitions: Iterable[TopicPartition]) -> None:
        # Another sink may have written meanwhile: re-read what is stored on every assignment.
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        self._buffers = {key: buf for key, buf in self._buffers.items() if key in self._assigned}
        self._stored.clear()
        self._cp_loaded = False

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._finish_inflight()
        self._reset_state(partitions)
        log.info("assigned %d partition(s)", len(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The insert in flight is ours to finish and commit before the partitions go.
        self._finish_inflight()
        # Buffered, uncommitted records are simply re-read by the next owner.
        for tp in partitions:
            self._buffers.pop((tp.topic, tp.partition), None)
        self._assigned -= {(tp.topic, tp.partition) for tp in partitions}

    # -- reading --------------------------------------------------------------------------------

    def _poll(self, consumer: Consumer) -> None:
        timeout = min(0.2, self.options.batch_ms / 1000.0)
        messages = consumer.consume(
            num_messages=min(self.options.batch_rows, 5000), timeout=timeout
        )
        now = time.monotonic()
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                # A fatal consumer error arrives as an _FATAL event whose fatal() flag is not
                # always set: check both.
                if error.fatal() or error.code() == KafkaError._FATAL:
                    raise _ConsumerLost(error.str())
                if is_refusal(error):
                    raise refused(self.settings, error, "consume the chain topics in its group")
                log.warning("Kafka consumer error: %s", error.str())
                continue
            key = (message.topic() or "", message.partition() or 0)
            buffer = self._buffers.get(key)
            if buffer is None:
                buffer = self._buffers[key] = _Buffer(since=now)
            elif not buffer.messages:
                buffer.since = now
            buffer.messages.append(message)
            if len(buffer.messages) >= self.options.batch_rows:
                self._flush(key)

    def _flush_due(self) -> None:
        deadline = time.monotonic() - self.options.batch_ms / 1000.0
        for key, buffer in list(self._buffers.items()):
            if buffer.messages and buffer.since <= deadline:
                self._flush(key)

    def _flush_all(self) -> None:
        for key, buffer in list(self._buffers.items()):
            if buffer.messages:
                self._flush(key)
        self._finish_inflight()

    def _flush(self, key: tuple[str, int]) -> None:
        buffer = self._buffers[key]
        messages, buffer.messages = buffer.messages, []
        topic, partition = key
        if topic == self.chain_topic:
            self._write_chain_batch(partition, messages)
        else:
            self._write_checkpoints(partition, messages)
        self.stats.batches += 1
        if self._inflight is not None:  # committed once that insert returned
            self._inflight.commit = (topic, partition, messages[-1].offset())
        else:
            self._commit(topic, partition, messages[-1].offset())

    def _commit(self, topic: str, partition: int, last_offset: int | None) -> None:
        if self._consumer is None or last_offset is None:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(topic, partition, last_offset + 1)], asynchronous=False
            )
            self._committed_since_rebuild = True
        except KafkaException as exc:
            # The rows are in ClickHouse; the next owner skips them by seq, so nothing is lost.
            log.warning(
                "could not commit offset %d of %s/%d (%s); the records will be re-read and skipped",
                last_offset + 1,
                topic,
                partition,
                exc.args[0].str(),
            )

    # -- writing --------------------------------------------------------------------------------

    def _write_chain_batch(self, partition: int, messages: list[Message]) -> None:
        started = time.perf_counter()
        # Per chain: (seq, record, value, payload start). ClickHouse decodes the rows that
        # sink_avro.parse_chained accepts (record None until needed); the others have their
        # record and -1.
        by_chain: dict[str, list[tuple[int, ChainedRecord | None, bytes, int]]] = {}
        bad: list[list[Any]] = []
        now_us = time.time_ns() // 1000
        fast = self._fast
        for message in messages:
            value = message.value() or b""
            parsed = parse_chained(value) if fast else None
            if parsed is not None:
                chain, seq, start = parsed
                by_chain.setdefault(chain, []).append((seq, None, value, start))
                continue
            try:
                record = _record_of(decode_chained(value))
            except DecodeError as exc:
                offset = message.offset() or 0
                bad.append(
                    [
                        f"{self.chain_topic}/{partition}",
                        None,
                        b"",
                        self.chain_topic,
                        partition,
                        offset,
                        f"not a chained record: {exc}",
                        value,
                        now_us,
                    ]
                )
                continue
            by_chain.setdefault(record.chain, []).append((record.seq, record, value, -1))
        self._finish_inflight()  # the previous batch's insert ran while this one was read
        for chain, items in by_chain.items():
            stored = self._stored_of(chain)
            fresh: list[tuple[int, ChainedRecord | None, bytes, int]] = []
            seen: set[int] = set()
            for item in items:
                seq = item[0]
                if stored.has(seq) or seq in seen:
                    self.stats.skipped += 1
                    continue
                seen.add(seq)
                fresh.append(item)
            by_chain[chain] = fresh
        if bad:
            first, last = bad[0][5], bad[-1][5]
            self._insert(
                "rejects",
                REJECT_COLUMNS,
                _pivot(bad),
                f"rejects:{self.chain_topic}/{partition}:{first}-{last}",
            )
            self.stats.rejects += len(bad)
        decode_s = time.perf_counter() - started
        for chain, items in by_chain.items():
            if not items:
                continue
            first, last = items[0][0], items[-1][0]
            batch = _ChainBatch(chain, partition, items, f"{chain}:{first}-{last}", now_us)
            self._finish_inflight()  # one insert at a time, in order
            # One insert per token either way: a batch with any row ClickHouse cannot load goes
            # the Python way whole, and so does one the fast insert fails on.
            if (
                all(record is None for _, record, _, _ in items)
                and sum(len(value) for _, _, value, _ in items) <= sink_avro.MAX_BATCH_BYTES
            ):
                self._start_fast(batch)
            else:
                decode_s += self._insert_python(batch)
            # For a fast insert in flight this holds once _finish_inflight returns; until then
            # nothing is committed and nothing else is inserted.
            self._stored_of(chain).add(item[0] for item in items)
        self.stats.decode_seconds += decode_s

    def _insert_python(self, batch: _ChainBatch) -> float:
        """Decode a chain batch with fastavro and insert it; returns the decoding seconds."""
        t0 = time.perf_counter()
        records = [
            record if record is not None else _record_of(decode_chained(value))
            for _, record, value, _ in batch.items
        ]
        columns, failed = event_columns(records)
        decode_s = time.perf_counter() - t0
        if failed:
            rows = [
                [batch.chain, r.seq, r.hash, self.chain_topic, batch.partition, 0, error]
                + [r.payload, batch.now_us]
                for r, error in failed
            ]
            # Rejects first: once the events rows exist the records are skipped on re-read.
            self._insert("rejects", REJECT_COLUMNS, _pivot(rows), f"rejects:{batch.token}")
            self.stats.rejects += len(rows)
        self._insert("events", EVENT_COLUMNS, columns, batch.token)
        self.stats.inserted += len(records)
        return decode_s

    def _start_fast(self, batch: _ChainBatch) -> None:
        """Start the insert of a chain batch through :mod:`processors.sink_avro` on the worker;
        :meth:`_finish_inflight` completes it."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-insert")
        rows = [(value, start) for _, _, value, start in batch.items]
        future = self._worker.submit(self._fast_insert, rows, batch.token)
        self._inflight = _Inflight(future, batch)

    def _fast_insert(self, rows: list[tuple[bytes, int]], token: str) -> float:
        """On the worker: write the container file and insert it; returns the seconds taken."""
        started = time.perf_counter()
        if self._avro_file is None:
            # Inside the embedded store, which one process owns: a fixed name that a sink
            # killed mid-batch leaves behind once, for the next run to reuse.
            store = clickhouse.chdb_path(self.settings.clickhouse_dsn)
            path = str((store or Path(tempfile.gettempdir())) / AVRO_FILE_NAME)
            self._avro_file = (os.open(path, os.O_RDWR | os.O_CREAT, 0o600), path)
        fd, path = self._avro_file
        marker = sink_avro.new_marker()
        sink_avro.write_container(fd, rows, marker)
        self.client.command(sink_avro.insert_sql(self.db, path, marker, token))
        return time.perf_counter() - started

    def _reap_inflight(self) -> None:
        """Finish the insert in flight if it is done (an idle sink still commits)."""
        if self._inflight is not None and self._inflight.future.done():
            self._finish_inflight()

    def _finish_inflight(self, commit: bool = True) -> None:
        """Wait for the fast insert in flight, if any, and commit its batch. If it failed the
        batch goes the Python way, whose retry loop also outlasts a transient failure: the
        attempt wrote nothing or, if ClickHouse failed between the parts of a batch spanning
        months, parts that the Python insert with the same token then skips."""
        job = self._inflight
        if job is None:
            return
        self._inflight = None
        try:
            self.stats.insert_seconds += job.future.result()
        except (DriverError, OSError) as exc:
            self.stats.fast_fallbacks += 1
            if getattr(exc, "code", None) in sink_avro.BAD_DATA_CODES:
                log.info(
                    "batch %s has rows ClickHouse cannot decode as the Python decoder does (%s); "
                    "decoding it in Python",
                    job.batch.token,
                    _first_line(exc)[:120],
                )
            else:
                # Maybe transient (disk full, ...): count it and back off once like _insert.
                self.stats.retries += 1
                delay = next(backoff())
                log.warning(
                    "the fast insert of %d row(s) into %s.events failed (%s); retrying in %.1fs",
                    len(job.batch.items),
                    self.db,
                    _first_line(exc),
                    delay,
                )
                self._close_avro_file()  # a new file next time, in case this one is the trouble
                if self.stop.wait(delay):
                    raise _Stopped from None
            self.stats.decode_seconds += self._insert_python(job.batch)
        else:
            self.stats.fast_batches += 1
            self.stats.inserted += len(job.batch.items)
        if commit and job.commit is not None:
            self._commit(*job.commit)

    def _abandon_inflight(self) -> None:
        """On the way out after an error: let the insert in flight end, commit nothing (its
        records are re-read and skipped, or inserted, by the next run)."""
        job, self._inflight = self._inflight, None
        if job is not None:
            with contextlib.suppress(Exception):
                job.future.result()

    def _clear_stale_avro_file(self) -> None:
        """Remove the fast-path file a killed sink left in the store.

        Called once this process owns the store (the client is open), so no other sink can be
        writing the file. Without this a run that inserts nothing would leave it behind."""
        store = clickhouse.chdb_path(self.settings.clickhouse_dsn)
        if store is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (store / AVRO_FILE_NAME).unlink()
            log.info(
                "removed the fast-path file %s left by a sink that did not exit cleanly",
                store / AVRO_FILE_NAME,
            )

    def _close_avro_file(self) -> None:
        if self._avro_file is not None:
            fd, path = self._avro_file
            self._avro_file = None
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _write_checkpoints(self, partition: int, messages: list[Message]) -> None:
        self._finish_inflight()
        stored = self._checkpoint_offsets().get(partition, -1)
        rows: list[list[Any]] = []
        now_us = time.time_ns() // 1000
        for message in messages:
            offset = message.offset() or 0
            if offset <= stored:
                self.stats.skipped += 1
                continue
            value = message.value() or b""
            note = value.decode("utf-8", errors="replace")
            key = (message.key() or b"").decode("utf-8", errors="replace")
            names: list[str] = []
            origin, size, root, head, ts, error = "", 0, b"", b"", 0, ""
            try:
                checkpoint, names = parse_checkpoint(note)
                origin, size, ts = checkpoint.origin, checkpoint.size, checkpoint.timestamp_us
                root, head = checkpoint.root_hash, checkpoint.head_hash
            except MalformedCheckpoint as exc:
                error = str(exc)
            chain = key or _chain_of_origin(origin, self.settings.deployment)
            rows.append(
                [
                    chain,
                    origin,
                    size,
                    root,
                    head,
                    ts,
                    ",".join(names),
                    note,
                    error,
                    partition,
                    offset,
                    now_us,
                ]
            )
        if not rows:
            return
        token = f"checkpoints:{partition}:{rows[0][10]}-{rows[-1][10]}"
        self._insert("checkpoints", CHECKPOINT_COLUMNS, _pivot(rows), token)
        self._cp_offsets[partition] = rows[-1][10]
        self.stats.checkpoints += len(rows)

    def _insert(
        self, table: str, names: Sequence[str], columns: list[list[Any]], token: str
    ) -> None:
        """Insert one block, retrying with backoff until ClickHouse takes it (or stop)."""
        delays = backoff()
        while True:
            started = time.perf_counter()
            try:
                context = self._contexts.get(table)
                if context is None:
                    context = self.client.create_insert_context(
                        f"{self.db}.{table}", column_names=list(names), column_oriented=True
                    )
                    self._contexts[table] = context
                context.settings["insert_deduplication_token"] = token
                context.data = columns
                self.client.insert(context=context)
                self.stats.insert_seconds += time.perf_counter() - started
                return
            except (DriverError, OSError) as exc:
                self._contexts.pop(table, None)
                self.stats.retries += 1
                delay = next(delays)
                log.warning(
                    "inserting %d row(s) into %s.%s failed (%s); retrying in %.1fs",
                    len(columns[0]) if columns else 0,
                    self.db,
                    table,
                    _first_line(exc),
                    delay,
                )
                if self.stop.wait(delay):
                    raise _Stopped from None

    def _stored_of(self, chain: str) -> _Stored:
        stored = self._stored.get(chain)
        if stored is None:
            stored = self._stored[chain] = self._retrying(
                f"reading chain {chain}", self._load_stored, chain
            )
        return stored

    def _retrying(self, what: str, fn: Any, *args: Any) -> Any:
        delays = backoff()
        while True:
            try:
                return fn(*args)
            except (DriverError, OSError) as exc:
                self.stats.retries += 1
                delay = next(delays)
                log.warning("%s failed (%s); retrying in %.1fs", what, _first_line(exc), delay)
                if self.stop.wait(delay):
                    raise _Stopped from None

    def _load_stored(self, chain: str) -> _Stored:
        client, db = self.client, self.db
        params = {"chain": chain}
        count, top = client.query(
            f"SELECT count(), max(seq) FROM {db}.events WHERE chain = %(chain)s", parameters=params
        ).result_rows[0]
        if count == 0:
            return _Stored()
        if count == top + 1:
            return _Stored(contiguous=int(top) + 1)
        # A crash inside a multi-part insert left holes: find the first, load the seqs above it.
        first_missing = client.query(
            f"SELECT min(rn) FROM (SELECT seq, row_number() OVER (ORDER BY seq) - 1 AS rn "
            f"FROM {db}.events WHERE chain = %(chain)s) WHERE seq != rn",
            parameters=params,
        ).result_rows[0][0]
        above = client.query(
            f"SELECT DISTINCT seq FROM {db}.events WHERE chain = %(chain)s AND seq >= %(lo)s",
            parameters={"chain": chain, "lo": int(first_missing)},
        ).result_rows
        log.info("chain %s has holes from seq %d; filling them", chain, first_missing)
        return _Stored(contiguous=int(first_missing), extra={int(row[0]) for row in above})

    def _checkpoint_offsets(self) -> dict[int, int]:
        if not self._cp_loaded:
            rows = self._retrying(
                "reading stored checkpoints",
                lambda: (
                    self.client.query(
                        f"SELECT kafka_partition, max(kafka_offset) FROM {self.db}.checkpoints "
                        "GROUP BY kafka_partition"
                    ).result_rows
                ),
            )
            self._cp_offsets = {int(p): int(o) for p, o in rows}
            self._cp_loaded = True
        return self._cp_offsets


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _pivot(rows: list[list[Any]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


def _chain_of_origin(origin: str, deployment: str) -> str:
    prefix = f"{deployment}/"
    return origin[len(prefix) :] if origin.startswith(prefix) else origin
