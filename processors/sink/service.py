"""The ClickHouse sink: chain and checkpoint topics -> ClickHouse, exactly once.

How "exactly once" holds without a transaction spanning Kafka and ClickHouse:

* records are read ``read_committed`` and buffered per chain-topic partition;
* the buffers flushed together (a round) are one insert block, with an
  ``insert_deduplication_token`` naming each chain's seq range (``"<chain>:<first>-<last>"``,
  ``+``-joined; the tables keep a ``non_replicated_deduplication_window``), so a retried insert
  is stored once;
* the offsets are committed only after ClickHouse acknowledged the insert;
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
insert it refuses or fails on goes through :func:`event_columns` as above, with the same token.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from processors import sink_avro
from processors.clickhouse_schema import CHECKPOINT_COLUMNS
from processors.integrity.chains import chain_of_origin
from processors.integrity.checkpoint import parse_checkpoint_note
from processors.integrity.errors import MalformedCheckpoint
from processors.sink.fast_path import FastPath, Offset, fast_path_store
from processors.sink.metrics import SinkMetrics
from processors.sink.options import SinkOptions, SinkStats
from processors.sink.rows import (
    ChainBatch,
    ChainItem,
    CheckpointRow,
    EventsInsert,
    RejectRow,
    events_insert,
    pivot,
    storable,
)
from processors.sink.stored import StoredState
from processors.sink.subtrees import SubtreeWriter
from processors.sink.writer import Stopped, Writer
from processors.sink_avro import parse_chained
from schemas.chained import value_record
from sealtrail.infra import clickhouse, livewire
from sealtrail.infra.config import Settings
from sealtrail.infra.consumer_lag import STATS_INTERVAL_MS
from sealtrail.infra.errors import DecodeError, KafkaUnavailable, SealtrailError
from sealtrail.infra.kafka import consumer_conf, describe, is_refusal, refused
from sealtrail.infra.kafka_read import close_quietly
from sealtrail.infra.liveserver import LiveReadServer
from sealtrail.infra.metrics_server import MetricsServer
from sealtrail.infra.service import StopFlag, backoff

log = logging.getLogger(__name__)

SUBTREES_EVERY_S = 5.0

# Consumer rebuilds in a row without a commit: past this, something else holds the member id.
MAX_CONSUMER_REBUILDS = 5
_COORDINATOR_ERRORS = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}


# While an insert is in flight, poll this often to commit it and start the next one promptly.
INFLIGHT_POLL_S = 0.02


class ConsumerLost(Exception):  # noqa: N818 - a signal: the consumer must be rebuilt
    """The Kafka consumer hit a fatal error (e.g. its static member id was fenced)."""


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
        self.metrics = SinkMetrics(self.stats)
        # The topic prefix separates deployments sharing a cluster, as for the chainer.
        self.group = self.options.group or settings.groups.sink
        self.chain_topic = settings.topics.chain
        self.checkpoint_topic = settings.topics.checkpoints
        self.writer = Writer(settings, self.stats, self.stop, self.metrics)
        self.db = self.writer.db
        self.stored = StoredState(self.writer)
        self._fast, store = fast_path_store(settings.clickhouse_dsn, self.options.avro_fast_path)
        self.fast = FastPath(self.writer, store, self._insert_python, self._commit_offsets)
        self._consumer: Consumer | None = None
        self._buffers: dict[tuple[str, int], _Buffer] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._committed_since_rebuild = False
        # (topic, partition) -> offset below which everything is stored and committed, for
        # the lag metric (it passes the chainer's transaction markers: see _settle_positions).
        self._done: dict[tuple[str, int], int] = {}
        self.subtrees = SubtreeWriter(self.db)  # Merkle nodes for O(log n) proofs
        self._subtrees_due: set[str] = set()  # chains with rows stored since their last nodes
        self._subtrees_at = 0.0  # when they were last written (monotonic)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The writer's ClickHouse client (opened and migrated on first use)."""
        return self.writer.client

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
        if self.options.metrics_listen is not None:  # the lag per partition comes from these
            conf["statistics.interval.ms"] = STATS_INTERVAL_MS
            conf["stats_cb"] = self._on_stats
        consumer = Consumer(conf)
        self._consumer = consumer
        return consumer

    def run(self) -> SinkStats:
        metrics = None
        if self.options.metrics_listen is not None:
            metrics = MetricsServer(self.options.metrics_listen, self.metrics.render).start()
        try:
            return self._run()
        finally:
            if metrics is not None:
                metrics.stop()

    def _run(self) -> SinkStats:
        _ = self.writer.client  # open and migrate before touching Kafka: a held store fails fast
        self.fast.clear_stale()
        live = self._start_live_reads()
        consumer = self._new_consumer()
        try:
            if self.options.once:
                self._run_once(consumer)
            else:
                self._run_service()
        except Stopped:
            log.info("stopped while ClickHouse was unavailable; uncommitted batches are re-read")
        finally:
            self.fast.shutdown()
            if self._consumer is not None:
                self._consumer.close()
            self._consumer = None
            if live is not None:
                live.stop()
        return self.stats

    def _start_live_reads(self) -> LiveReadServer | None:
        """The owner of an embedded store serves read-only queries while it runs, and the
        verifier's decoded-column check (which needs scratch files)."""
        store = clickhouse.chdb_path(self.settings.clickhouse_dsn)
        if store is None or not self.options.serve_reads:
            return None
        # Imported here: the verifier's modules import the sink's row mapping.
        from processors.verifier.clickhouse_sql import DECODE_CHECK, serve_decoded_problems

        try:
            path = livewire.socket_path(self.settings, store)
            checks = {DECODE_CHECK: serve_decoded_problems}
            return LiveReadServer(self.settings.clickhouse_dsn, path, checks=checks).start()
        except (SealtrailError, OSError) as exc:
            # Storing matters more than live reads: go on without them.
            log.warning("not serving live reads (%s); readers must wait for the sink to stop", exc)
            return None

    def _write_subtrees(self, force: bool = False) -> None:
        """The Merkle nodes the newly stored rows complete (processors/sink/subtrees.py), once
        no insert is in flight, at most every SUBTREES_EVERY_S unless forced: each round costs
        a query and an insert per chain, whatever it covers (proofs hash the few blocks whose
        nodes are not written yet themselves)."""
        if self.fast.busy or not self._subtrees_due:
            return
        if not force and time.monotonic() - self._subtrees_at < SUBTREES_EVERY_S:
            return
        self._subtrees_at = time.monotonic()
        started = time.perf_counter()
        for chain in sorted(self._subtrees_due):
            contiguous = self.stored.seqs(chain).contiguous
            self.writer.retrying(
                f"writing the Merkle subtrees of chain {chain}",
                functools.partial(
                    self.subtrees.advance, self.client, chain, contiguous, self.writer.insert
                ),
            )
        self._subtrees_due.clear()
        self.stats.subtree_seconds += time.perf_counter() - started

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
            except ConsumerLost as lost:
                failures = (0 if self._committed_since_rebuild else failures) + 1
                self._rebuild_consumer(str(lost), failures)
                continue
            self._flush_due()
            self.fast.reap()
            self._write_subtrees()
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
        self.fast.finish(commit=False)  # that consumer cannot commit any more
        old = self._consumer
        self._buffers.clear()
        self._assigned.clear()
        self.stored.reset()
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
            self.fast.reap()
            self._write_subtrees()
            if self._caught_up(consumer, targets):
                break
        self._flush_all()

    def _assign_all(self, consumer: Consumer) -> dict[tuple[str, int], int]:
        partitions: list[TopicPartition] = []
        try:
            metadata = consumer.list_topics(timeout=10)
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"Kafka at {self.settings.kafka} did not answer ({describe(exc)}); "
                "check SEALTRAIL_KAFKA"
            ) from None
        for topic in (self.chain_topic, self.checkpoint_topic):
            info = metadata.topics.get(topic)
            if info is None:
                # Not listed may mean not allowed: asked by name, the broker says which.
                with contextlib.suppress(KafkaException):
                    info = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if info is not None and is_refusal(info.error):
                raise refused(self.settings, info.error, f"read topic {topic}")
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
                # A refused group shows here as a time-out; the refusal itself is an error event
                # on the consumer (nothing is assigned yet, so no record is taken).
                for event in consumer.consume(num_messages=100, timeout=0):
                    refusal = event.error()
                    if is_refusal(refusal):
                        raise refused(
                            self.settings, refusal, f"read the offsets of group {self.group}"
                        ) from None
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
                    raise Stopped from None

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
        self._done.clear()  # another sink may have moved the offsets meanwhile
        self._buffers = {key: buf for key, buf in self._buffers.items() if key in self._assigned}
        self.stored.reset()
        self.subtrees.reset()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.fast.finish()
        self._reset_state(partitions)
        log.info("assigned %d partition(s)", len(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The insert in flight is ours to finish and commit before the partitions go.
        self.fast.finish()
        # Buffered, uncommitted records are simply re-read by the next owner.
        for tp in partitions:
            self._buffers.pop((tp.topic, tp.partition), None)
        self._assigned -= {(tp.topic, tp.partition) for tp in partitions}

    # -- reading --------------------------------------------------------------------------------

    def _poll(self, consumer: Consumer) -> None:
        # consume() returns early only with a full batch: otherwise it waits out its timeout,
        # whatever arrived meanwhile. So the timeout is how late the loop sees what happened:
        # an insert in flight is looked at every INFLIGHT_POLL_S (stored rows are committed and
        # the next batch goes promptly), buffered rows once they are due, and with nothing
        # buffered new rows after at most --linger-ms (they are then due at once).
        started = time.monotonic()
        wait_s = self._wait_s()  # at most --batch-ms
        timeout = min(0.2, wait_s)
        if self._fast and self.fast.busy:
            timeout = min(timeout, INFLIGHT_POLL_S)
        pending = [b.since for b in self._buffers.values() if b.messages]
        if pending:
            timeout = min(timeout, min(pending) + wait_s - started)
        messages = consumer.consume(
            num_messages=min(self.options.batch_rows, 5000), timeout=max(0.005, timeout)
        )
        # Rows count as waiting from when this call began: they may have arrived any time in it.
        now = started
        self.stats.consumed += len(messages)
        if not messages:
            self._settle_positions(consumer)
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                # A fatal consumer error arrives as an _FATAL event whose fatal() flag is not
                # always set: check both.
                if error.fatal() or error.code() == KafkaError._FATAL:
                    raise ConsumerLost(error.str())
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
                self._flush(key)  # a chain buffer takes the others along: one insert

    def _on_stats(self, stats_json: str) -> None:
        # Called from inside consume(), on the loop's thread.
        self.metrics.on_stats(stats_json, lambda topic, p: self._done.get((topic, p)))

    def _settle_positions(self, consumer: Consumer) -> None:
        """When a poll brought nothing, no batch is buffered or in flight: every record up to
        the consumer's position is stored and committed. The position also passes the
        transaction markers that follow the last record, which the committed offset (last
        record + 1) stops short of; without this an idle sink would show a lag of 1."""
        if self.fast.busy or self.options.metrics_listen is None:
            return
        idle = [
            TopicPartition(topic, partition)
            for topic, partition in self._assigned
            if not (buf := self._buffers.get((topic, partition))) or not buf.messages
        ]
        if not idle:
            return
        try:
            positions = consumer.position(idle)
        except KafkaException:
            return  # only a metric: try again on the next idle poll
        for tp in positions:
            key = (tp.topic, tp.partition)
            if tp.offset >= 0 and tp.offset > self._done.get(key, -1):
                self._done[key] = tp.offset

    def _wait_s(self) -> float:
        """How long buffered rows wait now. With the fast path's insert worker idle, only
        ``--linger-ms``: a batch goes soon after the previous insert is done, so batches are
        small (fresh rows) under light load and grow up to ``--batch-ms`` / ``--batch-rows``
        while inserts keep the worker busy (fewer, larger inserts when it counts). A longer
        linger trades fresh rows for fewer inserts: ClickHouse pays much of an insert, and of
        the merges of the parts it makes, per insert, not per row."""
        if self._fast and not self.fast.busy:
            return min(self.options.linger_ms, self.options.batch_ms) / 1000.0
        return self.options.batch_ms / 1000.0

    def _flush_due(self) -> None:
        if self._fast:
            self.fast.reap()  # a finished insert is committed first and frees the worker
        now = time.monotonic()
        # Oldest first: when the worker frees up, the rows that waited longest go next.
        waiting = sorted((b.since, key) for key, b in self._buffers.items() if b.messages)
        for since, key in waiting:
            if since <= now - self._wait_s():
                self._flush(key)

    def _flush_all(self) -> None:
        for key, buffer in list(self._buffers.items()):
            if buffer.messages:
                self._flush(key)
        self.fast.finish()
        self._write_subtrees(force=True)

    def _flush(self, key: tuple[str, int]) -> None:
        """Flush the buffer of ``key``; a chain-topic buffer takes every other chain buffer
        along, so that a round is one insert however many partitions it covers (ClickHouse
        pays most of an insert's cost per insert, not per row)."""
        buffer = self._buffers.get(key)
        if buffer is None or not buffer.messages:
            return  # already taken along by another chain buffer
        topic, partition = key
        if topic == self.chain_topic:
            self._flush_chains()
            return
        messages, buffer.messages = buffer.messages, []
        self.metrics.checkpoint_batch.observe(len(messages))
        self._write_checkpoints(partition, messages)
        self.stats.batches += 1
        self._commit_after([Offset(topic, partition, messages[-1].offset())])

    def _flush_chains(self) -> None:
        batches: list[ChainBatch] = []
        offsets: list[Offset] = []
        decoded_here: set[str] = set()  # chains with records decoded in Python
        for (topic, partition), buffer in self._buffers.items():
            if topic != self.chain_topic or not buffer.messages:
                continue
            messages, buffer.messages = buffer.messages, []
            self.metrics.chain_batch.observe(len(messages))
            batches += self._chain_batches(partition, messages, decoded_here)
            self.stats.batches += 1
            offsets.append(Offset(topic, partition, messages[-1].offset()))
        self._insert_events(batches, decoded_here)
        self._commit_after(offsets)

    def _commit_after(self, offsets: list[Offset]) -> None:
        """Commit ``offsets`` now, or once the insert in flight (the last of theirs) is stored."""
        if not self.fast.defer_commit(offsets):
            self._commit_offsets(offsets)

    def _commit_offsets(self, offsets: list[Offset]) -> None:
        ends: dict[tuple[str, int], int] = {}  # the offset to commit per partition
        for o in offsets:
            if o.last is not None:
                ends[(o.topic, o.partition)] = max(o.last + 1, ends.get((o.topic, o.partition), 0))
        if self._consumer is None or not ends:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, end) for (t, p), end in ends.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            # The rows are in ClickHouse; the next owner skips them by seq, so nothing is lost.
            log.warning(
                "could not commit offsets %s (%s); the records will be re-read and skipped",
                ", ".join(f"{end} of {t}/{p}" for (t, p), end in ends.items()),
                describe(exc),
            )
            return
        self._committed_since_rebuild = True
        self._done.update(ends)

    # -- writing --------------------------------------------------------------------------------

    def _chain_batches(
        self, partition: int, messages: list[Message], decoded_here: set[str]
    ) -> list[ChainBatch]:
        """A partition buffer's fresh records, one batch per chain, marked stored (they are,
        once the round's insert returns: until then nothing is committed). Values that are
        not chained records go to ``rejects`` here; chains with records decoded here are
        added to ``decoded_here``."""
        started = time.perf_counter()
        # Per chain, its items: ClickHouse decodes the rows that sink_avro.parse_chained
        # accepts (record None until needed); the others are decoded here (payload start -1).
        by_chain: dict[str, list[ChainItem]] = {}
        bad: list[RejectRow] = []
        now_us = time.time_ns() // 1000
        fast = self._fast
        for message in messages:
            value = message.value() or b""
            parsed = parse_chained(value) if fast else None
            if parsed is not None:
                chain, seq, start = parsed
                by_chain.setdefault(chain, []).append(ChainItem(seq, None, value, start))
                continue
            try:
                record = storable(value_record(value))
            except DecodeError as exc:
                bad.append(
                    RejectRow(
                        chain=f"{self.chain_topic}/{partition}",
                        seq=None,
                        hash=b"",
                        kafka_topic=self.chain_topic,
                        kafka_partition=partition,
                        kafka_offset=message.offset() or 0,
                        error=f"not a chained record: {exc}",
                        payload=value,
                        at=now_us,
                    )
                )
                continue
            by_chain.setdefault(record.chain, []).append(ChainItem(record.seq, record, value, -1))
            decoded_here.add(record.chain)
        # The previous round's insert may still run: its seqs are in ``stored`` already, and
        # nothing below touches ClickHouse before fast.finish() but the seqs of a chain not
        # seen before (a read).
        batches: list[ChainBatch] = []
        for chain, items in by_chain.items():
            stored = self.stored.seqs(chain)
            first = items[0].seq
            if stored.none_from(first) and [i.seq for i in items] == list(
                range(first, first + len(items))
            ):
                stored.add_run(first, len(items))  # the usual case, checked in C
            else:
                fresh: list[ChainItem] = []
                seen: set[int] = set()
                for item in items:
                    if stored.has(item.seq) or item.seq in seen:
                        self.stats.skipped += 1
                        continue
                    seen.add(item.seq)
                    fresh.append(item)
                if not fresh:
                    continue
                items = fresh
                stored.add(item.seq for item in items)
            token = f"{chain}:{items[0].seq}-{items[-1].seq}"
            batches.append(ChainBatch(chain, partition, items, token, now_us))
            self._subtrees_due.add(chain)
        if bad:
            self.fast.finish()
            first_offset, last_offset = bad[0].kafka_offset, bad[-1].kafka_offset
            self.writer.insert_rejects(
                bad, f"rejects:{self.chain_topic}/{partition}:{first_offset}-{last_offset}"
            )
        self.stats.decode_seconds += time.perf_counter() - started
        return batches

    def _insert_events(self, batches: list[ChainBatch], decoded_here: set[str]) -> None:
        """Insert a round's chain batches: those ClickHouse can decode as one fast insert (or
        a few, each at most ``sink_avro.MAX_BATCH_BYTES``), the others as one Python insert.

        One insert at a time, in order, and each with its own token either way: an insert with
        any row ClickHouse cannot load goes the Python way whole, and so does one the fast
        insert fails on. start() writes an insert's file while the previous insert runs, then
        finishes that insert before it starts this one."""
        fast: list[ChainBatch] = []
        python: list[ChainBatch] = []
        for batch in batches:
            # Only a chain with records decoded here needs its items looked at.
            eligible = self._fast and (
                batch.chain not in decoded_here or all(item.record is None for item in batch.items)
            )
            (fast if eligible else python).append(batch)
        if python:
            self.fast.finish()
            self.stats.decode_seconds += self._insert_python(events_insert(python))
        group: list[ChainBatch] = []
        size = 0
        for batch in fast:
            batch_size = sum(map(len, [i.value for i in batch.items]))
            if batch_size > sink_avro.MAX_BATCH_BYTES:
                self.fast.finish()
                self.stats.decode_seconds += self._insert_python(events_insert([batch]))
                continue
            if group and size + batch_size > sink_avro.MAX_BATCH_BYTES:
                self.fast.start(events_insert(group))
                group, size = [], 0
            group.append(batch)
            size += batch_size
        if group:
            self.fast.start(events_insert(group))

    def _insert_python(self, insert: EventsInsert) -> float:
        return self.writer.insert_decoded(insert, self.chain_topic)

    def _write_checkpoints(self, partition: int, messages: list[Message]) -> None:
        self.fast.finish()
        stored = self.stored.checkpoint_offsets().get(partition, -1)
        rows: list[CheckpointRow] = []
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
                # Signatures are not checked here: the verifier does that with its key ring.
                parsed = parse_checkpoint_note(note)
                checkpoint, names = parsed.checkpoint, parsed.signer_names
                origin, size, ts = checkpoint.origin, checkpoint.size, checkpoint.timestamp_us
                root, head = checkpoint.root_hash, checkpoint.head_hash
            except MalformedCheckpoint as exc:
                error = str(exc)
            chain = key or chain_of_origin(origin, self.settings.deployment) or origin
            rows.append(
                CheckpointRow(
                    chain=chain,
                    origin=origin,
                    size=size,
                    root_hash=root,
                    head_hash=head,
                    timestamp=ts,
                    key_name=",".join(names),
                    note=note,
                    parse_error=error,
                    kafka_partition=partition,
                    kafka_offset=offset,
                    loaded_at=now_us,
                )
            )
        if not rows:
            return
        token = f"checkpoints:{partition}:{rows[0].kafka_offset}-{rows[-1].kafka_offset}"
        self.writer.insert("checkpoints", CHECKPOINT_COLUMNS, pivot(rows), token)
        self.stored.stored_checkpoints(partition, rows[-1].kafka_offset)
        self.stats.checkpoints += len(rows)
        for row in rows:  # a few per second: one per chain and checkpoint interval
            if not row.parse_error:
                self.metrics.checkpoints.note(row.chain, row.size, row.timestamp)
