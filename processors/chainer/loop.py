"""The chaining loop: raw partition p -> hash chain ``<raw>/p`` in chain partition p.

The consume-transform-produce loop of confluent-kafka-python's ``examples/eos_transactions.py``:
collect a batch of raw records, link them onto their chains, produce them with any due signed
checkpoints and send the raw offsets to the same transaction (:mod:`.transactions` guards every
call). On assignment and after every failed transaction the chains are read back from Kafka
(:mod:`.recovery`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from processors.chainer.checkpoints import (
    CheckpointPolicy,
    CheckpointRecord,
    export_notes,
    sign_head,
)
from processors.chainer.interrupt import Interrupted
from processors.chainer.linker import ChainLinker
from processors.chainer.metrics import ChainerMetrics
from processors.chainer.names import group_id
from processors.chainer.options import ChainerOptions, ChainerStats
from processors.chainer.recovery import Recovery
from processors.chainer.state import ChainState
from processors.chainer.transactions import TransactionGuard
from processors.integrity.keys import load_signer
from processors.integrity.note import Signer
from sealtrail.infra.config import Settings
from sealtrail.infra.consumer_lag import STATS_INTERVAL_MS
from sealtrail.infra.errors import KafkaUnavailable, SealtrailError
from sealtrail.infra.kafka import consumer_conf, describe, is_refusal, kafka_error, refused
from sealtrail.infra.kafka_read import close_quietly, watermarks
from sealtrail.infra.metrics_server import MetricsServer
from sealtrail.infra.service import StopFlag

__all__ = ["Chainer", "ConsumerLost"]

log = logging.getLogger("sealtrail.chainer")

PROGRESS_EVERY_S = 10.0
# Consumer rebuilds in a row without a commit: past this, something else holds the instance id.
MAX_CONSUMER_REBUILDS = 5
CONSUMER_REBUILD_PAUSE_S = 1.0
# Bounds the consumer's prefetch (several batches' worth) so memory stays flat.
PREFETCH_KBYTES = 32768


class ConsumerLost(Exception):  # noqa: N818 - control flow, not an error
    """The consumer hit a fatal error (e.g. its static member id was fenced).

    Raised by ``Chainer._collect``; the loop rebuilds the consumer, which recovers the chains
    on its new assignment.
    """


@dataclass(slots=True)
class ChainedBatch:
    """What one transaction chained: records, the raw offsets to commit, checkpoints."""

    records: int
    offsets: dict[int, int] = field(default_factory=dict)  # raw partition -> next offset
    checkpoints: list[CheckpointRecord] = field(default_factory=list)


def _now_us() -> int:
    return time.time_ns() // 1000


class Chainer:
    """The chaining service. ``Chainer(settings, options, stop).run()`` blocks until done."""

    def __init__(
        self, settings: Settings, options: ChainerOptions, stop: StopFlag | None = None
    ) -> None:
        self.settings = settings
        self.options = options.validated()
        self.stop = stop if stop is not None else StopFlag()
        self.stats = ChainerStats()
        self.metrics = ChainerMetrics(self.stats)
        self._metrics_server: MetricsServer | None = None
        self.signer: Signer | None = (
            load_signer(self.options.signing_key) if self.options.signing_key else None
        )
        self._raw = settings.topics.raw
        self._chain_topic = settings.topics.chain
        self._cp_topic = settings.topics.checkpoints
        self._policy = CheckpointPolicy(
            self.options.checkpoint_records, self.options.checkpoint_seconds
        )
        self._txn = TransactionGuard(settings, self.options.instance_id, self.stop, self.stats)
        self._recovery = Recovery(settings, self.stop, self.stats, signed=self.signer is not None)
        self._chains: dict[int, ChainState] = {}
        self._pending: list[Message] = []
        self._targets: dict[int, int] = {}  # --once: raw end offsets seen at first assignment
        self._assigned = False
        self._failure: BaseException | None = None
        self._consumer_failures = 0
        self._consumer: Consumer | None = None

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> ChainerStats:
        opts = self.options
        if self.signer is None:
            log.warning("no signing key: chains will be linked but not anchored")
        log.info(
            "chainer %s starting: %s -> %s, group %s, batches of %d records / %d ms, "
            "checkpoints %s",
            opts.instance_id,
            self._raw,
            self._chain_topic,
            group_id(self.settings),
            opts.batch_records,
            opts.batch_ms,
            f"signed by {self.signer.verifier.key_label} every {opts.checkpoint_records} "
            f"records or {opts.checkpoint_seconds:g}s"
            if self.signer
            else "off",
        )
        self._recovery.open()
        try:
            if opts.metrics_listen is not None:  # stopped by _close
                self._metrics_server = MetricsServer(opts.metrics_listen, self.metrics.render)
                self._metrics_server.start()
            self._txn.start()
            self._consumer = self._new_consumer()
            self._loop()
        except Interrupted:
            log.info("stop requested while waiting for Kafka: nothing left to drain")
        finally:
            self._close()
        log.info(
            "chainer %s stopped: %d records in %d transactions, %d checkpoints, %d aborts, "
            "%d producer rebuilds, %d consumer rebuilds",
            opts.instance_id,
            self.stats.records,
            self.stats.transactions,
            self.stats.checkpoints,
            self.stats.aborts,
            self.stats.producer_rebuilds,
            self.stats.consumer_rebuilds,
        )
        return self.stats

    def _new_consumer(self) -> Consumer:
        opts = self.options
        conf = consumer_conf(
            self.settings,
            group_id(self.settings),
            **{
                "group.instance.id": opts.instance_id,
                "session.timeout.ms": opts.session_timeout_ms,
                "queued.max.messages.kbytes": PREFETCH_KBYTES,
                "fetch.max.bytes": PREFETCH_KBYTES * 1024 // 2,
            },
        )
        if opts.metrics_listen is not None:  # the lag per partition comes from these
            conf.update({"statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self._on_stats})
        consumer = Consumer(conf)
        consumer.subscribe(
            [self._raw],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        return consumer

    def _rebuild_consumer(self, reason: str) -> None:
        """Replace a consumer that failed for good; the new one recovers on assignment.

        A static member is fenced when the group sees its id join twice, which a broker
        restart can cause on its own (a rejoin abandoned by the client but processed by the
        coordinator later). Nothing is produced between transactions, so dropping the
        uncommitted records and recovering from Kafka is all it takes.
        """
        self.stats.consumer_rebuilds += 1
        self._consumer_failures += 1
        if self._consumer_failures > MAX_CONSUMER_REBUILDS:
            raise KafkaUnavailable(
                f"the chainer's consumer failed {self._consumer_failures} times in a row "
                f"without a commit in between (last: {reason}); check that no other process "
                f"uses the instance id {self.options.instance_id!r} in group "
                f"{group_id(self.settings)}, then restart the chainer"
            )
        log.warning("consumer failed for good (%s): rebuilding it and recovering the chains",
                    reason)  # fmt: skip
        old, self._consumer = self._consumer, None
        self._pending = []
        self._chains.clear()
        self._assigned = False
        close_quietly(old)
        if self.stop.wait(CONSUMER_REBUILD_PAUSE_S):
            return
        self._consumer = self._new_consumer()

    def _close(self) -> None:
        close_quietly(self._consumer)
        self._recovery.close()
        self._txn.close()
        self._consumer = None
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None

    def _on_stats(self, stats_json: str) -> None:
        # Called from inside consume(), on the loop's thread: self._chains is consistent.
        def next_offset(partition: int) -> int | None:
            chain = self._chains.get(partition)
            return None if chain is None else chain.next_offset

        self.metrics.on_stats(stats_json, next_offset)

    def _loop(self) -> None:
        last_report = time.monotonic()
        reported = 0
        while True:
            self._raise_failure()
            stopping = self.stop.is_set()
            try:
                batch = [] if stopping else self._collect()
            except ConsumerLost as lost:
                self._rebuild_consumer(str(lost))
                if self._consumer is None:  # stop requested meanwhile
                    return
                continue
            self._raise_failure()
            stopping = stopping or self.stop.is_set()
            done = stopping or (self.options.once and self._caught_up())
            ok = True
            if batch or self._checkpoints_due(final=done):
                ok = self._transact(batch, final=done)
            if not ok and not stopping:
                continue  # rewound to the committed offsets: --once is not done yet
            if done and not self._pending:
                if self.options.once and not stopping:
                    log.info("caught up with the raw topic: stopping (--once)")
                return
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                rate = (self.stats.records - reported) / (now - last_report)
                log.info(
                    "chained %d records (%.0f records/s), %d checkpoints, %d chains",
                    self.stats.records,
                    rate,
                    self.stats.checkpoints,
                    len(self._chains),
                )
                last_report, reported = now, self.stats.records

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    # ------------------------------------------------------------------ consuming

    def _collect(self) -> list[Message]:
        """Consume up to one batch: ``batch_records`` records or ``batch_ms`` after the first."""
        consumer = self._consumer
        assert consumer is not None
        opts = self.options
        deadline: float | None = None
        while len(self._pending) < opts.batch_records and not self.stop.is_set():
            now = time.monotonic()
            if deadline is None:
                timeout = 0.2
            else:
                timeout = deadline - now
                if timeout <= 0:
                    break
            try:
                got = consumer.consume(
                    num_messages=opts.batch_records - len(self._pending), timeout=timeout
                )
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is not None and (err.fatal() or err.code() == KafkaError._FATAL):
                    raise ConsumerLost(err.str()) from None
                raise
            if self._failure is not None:
                return []
            for message in got:
                error = message.error()
                if error is not None:
                    # A fatal consumer error arrives as an _FATAL event whose fatal() flag is
                    # not always set: check both.
                    if error.fatal() or error.code() == KafkaError._FATAL:
                        raise ConsumerLost(error.str())
                    if is_refusal(error):
                        raise refused(self.settings, error, f"consume {self._raw} in its group")
                    log.warning("consumer: %s", error.str())
                    continue
                if message.partition() not in self._chains:
                    # Cannot happen (revoke purges fetched records); never skip silently.
                    raise SealtrailError(
                        f"received {self._raw}/{message.partition()} records without a "
                        "recovered chain head; restart the chainer"
                    )
                self._pending.append(message)
            if not self._pending:
                return []
            if deadline is None:
                deadline = now + opts.batch_ms / 1000.0
        batch, self._pending = self._pending, []
        return batch

    def _caught_up(self) -> bool:
        if not self._assigned or self._pending:
            return False
        assert self._consumer is not None
        for partition, chain in self._chains.items():
            if chain.next_offset >= self._targets.get(partition, 0):
                continue
            position = self._consumer.position([TopicPartition(self._raw, partition)])[0].offset
            if position < self._targets.get(partition, 0):
                return False
        return True

    # ------------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._failure is not None:
            return
        try:
            numbers = [tp.partition for tp in partitions]
            chains = self._recovery.recover_with_fresh_readers(consumer, numbers)
            self._chains.update(chains)
            if self.options.once:
                for p in numbers:
                    if p not in self._targets:
                        self._targets[p] = watermarks(consumer, self._raw, p)[1]
            consumer.assign([TopicPartition(self._raw, p, chains[p].start_offset) for p in numbers])
            self._assigned = True
        except BaseException as exc:  # noqa: BLE001 - re-raised from the main loop
            self._failure = exc

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Nothing is produced between transactions, so there is no open transaction here:
        # dropping the records not yet chained is enough; the next owner reads them again.
        revoked = {tp.partition for tp in partitions}
        self._pending = [m for m in self._pending if m.partition() not in revoked]
        for p in revoked:
            self._chains.pop(p, None)
        if revoked:
            log.info("partitions %s revoked", sorted(revoked))

    def _rewind(self) -> None:
        """After a failed transaction: drop in-memory state, recover the heads, seek the
        consumer to the committed offsets."""
        consumer = self._consumer
        assert consumer is not None
        self._pending = []
        partitions = [tp.partition for tp in consumer.assignment()]
        self._chains.clear()
        if not partitions:
            return
        chains = self._recovery.recover(consumer, partitions)
        self._chains.update(chains)
        for p, chain in chains.items():
            self._seek(consumer, p, chain.start_offset)

    def _seek(self, consumer: Consumer, partition: int, offset: int) -> None:
        target = TopicPartition(self._raw, partition, offset)
        for attempt in range(50):
            try:
                consumer.seek(target)
                return
            except KafkaException as exc:
                if attempt == 49:
                    raise KafkaUnavailable(
                        f"could not rewind {self._raw}/{partition} to offset {offset}: "
                        f"{describe(exc)}; restart the chainer"
                    ) from None
                time.sleep(0.1)

    # ------------------------------------------------------------------ transactions

    def _checkpoints_due(self, final: bool) -> bool:
        if self.signer is None:
            return False
        now = time.monotonic()
        return any(self._policy.due(c, now, final) for c in self._chains.values())

    def _transact(self, batch: list[Message], final: bool = False) -> bool:
        """Chain ``batch`` (plus due checkpoints) in one transaction under the error policy.

        False if the transaction did not commit (the chainer then rewound to committed state).
        """
        started = time.monotonic()
        self.stats.consumed += len(batch)
        chained = self._txn.transaction(lambda: self._chain_batch(batch, final))
        if chained is None:
            self._rewind()
            return False
        for partition, offset in chained.offsets.items():
            self._chains[partition].next_offset = offset
        self._consumer_failures = 0
        self.stats.transactions += 1
        self.stats.records += chained.records
        if chained.records:
            if self.stats.first_batch_at is None:
                self.stats.first_batch_at = started
            self.stats.last_commit_at = time.monotonic()
        self.metrics.committed(chained.records, time.monotonic() - started)
        if chained.checkpoints:
            self.stats.checkpoints += len(chained.checkpoints)
            for checkpoint in chained.checkpoints:
                self.metrics.checkpoints.note(
                    checkpoint.chain, checkpoint.size, checkpoint.timestamp_us
                )
            export_notes(self.options.export_checkpoints, chained.checkpoints)
        return True

    def _chain_batch(self, batch: list[Message], final: bool) -> ChainedBatch:
        """Inside the open transaction: link and produce ``batch``, produce due checkpoints,
        send the raw offsets."""
        consumer = self._consumer
        assert consumer is not None
        chained = ChainedBatch(records=len(batch))
        by_partition: dict[int, list[Message]] = {}
        for message in batch:
            by_partition.setdefault(cast(int, message.partition()), []).append(message)
        for partition, messages in by_partition.items():
            self._link_partition(partition, messages, chained)
            chained.offsets[partition] = cast(int, messages[-1].offset()) + 1
        if self.signer is not None:
            now = time.monotonic()
            for partition, chain in self._chains.items():
                if self._policy.due(chain, now, final):
                    chained.checkpoints.append(self._checkpoint(partition, chain))
        if chained.offsets:
            positions = [TopicPartition(self._raw, p, o) for p, o in chained.offsets.items()]
            self._txn.send_offsets(positions, consumer.consumer_group_metadata())
        return chained

    def _link_partition(
        self, partition: int, messages: list[Message], chained: ChainedBatch
    ) -> None:
        """Chain one partition's records in runs that end where a checkpoint falls due."""
        chain = self._chains[partition]
        linker = ChainLinker(chain.head)
        key = chain.head.chain.encode("utf-8")
        offsets = [cast(int, m.offset()) for m in messages]
        payloads = [m.value() or b"" for m in messages]
        tree = chain.tree
        start = 0
        while start < len(messages):
            stop = len(messages)
            if tree is not None:
                stop = min(
                    stop, start + max(1, self._policy.every_records - chain.since_checkpoint)
                )
            run = linker.link(offsets[start:stop], payloads[start:stop], _now_us())
            self._txn.produce_run(self._chain_topic, partition, key, run.values)
            if tree is not None:
                tree.extend(run.hashes)
                chain.since_checkpoint += len(run.hashes)
                if self._policy.full(chain):
                    chained.checkpoints.append(self._checkpoint(partition, chain))
            start = stop

    def _checkpoint(self, partition: int, chain: ChainState) -> CheckpointRecord:
        assert self.signer is not None
        record = sign_head(self.settings.deployment, chain, self.signer, _now_us())
        self._txn.produce(
            self._cp_topic, partition, record.key, record.value, headers=record.headers
        )
        chain.checkpointed()
        return record
