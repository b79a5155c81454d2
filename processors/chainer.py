"""The chaining processor: raw partition p -> hash chain ``<raw>/p`` in chain partition p.

Exactly once, with Kafka transactions (the consume-transform-produce loop of
confluent-kafka-python's ``examples/eos_transactions.py``): each batch of raw records is
linked, produced to the chain topic together with any due signed checkpoints, and the raw
offsets are sent to the same transaction. A batch is either fully visible (chain records,
checkpoints and offsets) or not at all, so the chain tail always agrees with the committed
offsets, and every (re)start recovers the chain heads from Kafka alone.

Payloads are never decoded: whatever bytes the raw topic holds get chained. See
docs/CHAINER.md for the design, the error policy and operations.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from processors.integrity.checkpoint import Checkpoint, origin_for, sign_checkpoint
from processors.integrity.keys import load_signer
from processors.integrity.merkle import CompactRange
from processors.integrity.note import Signer
from processors.integrity.record import ChainedRecord, ChainHead, link
from processors.verifier import offsite
from schemas.codec import decode_chained_fields, encode_chained
from sealtrail.config import Settings
from sealtrail.errors import ConfigError, KafkaUnavailable, SealtrailError
from sealtrail.kafka import consumer_conf, is_refusal, producer_conf, refused
from sealtrail.kafka_read import close_quietly, read_range, read_tail, reader, watermarks
from sealtrail.service import StopFlag

__all__ = [
    "ENV_INSTANCE_ID",
    "ENV_SIGNING_KEY",
    "GROUP",
    "RANGE_HEADER",
    "ChainDivergence",
    "Chainer",
    "ChainerOptions",
    "ChainerStats",
    "chain_id",
    "group_id",
    "transactional_id",
]

log = logging.getLogger("sealtrail.chainer")

ENV_SIGNING_KEY = "SEALTRAIL_SIGNING_KEY"
ENV_INSTANCE_ID = "SEALTRAIL_INSTANCE_ID"
GROUP = "sealtrail-chainer"
RANGE_HEADER = "sealtrail-compact-range"

TXN_TIMEOUT_S = 30.0  # init_transactions: may wait for a previous instance's transaction
# The other transactional calls take milliseconds when Kafka is well; a short timeout finds a
# stuck one sooner (a retriable timeout is retried by _retry).
TXN_CALL_TIMEOUT_S = 10.0
RETRY_LIMIT_S = 10.0
PROGRESS_EVERY_S = 10.0
# Transactions failing in a row without one commit: a persistent problem (e.g. a raw record
# too large for the chain topic), not a glitch; stop instead of retrying forever.
MAX_FAILED_IN_A_ROW = 8
# Consumer rebuilds in a row without a commit: past this, something else holds the instance id.
MAX_CONSUMER_REBUILDS = 5
# Recovery reads Kafka through its own client; one whose view of the cluster went stale in a
# broker restart is replaced, this many times, before recovery is reported as failed.
RECOVERY_ATTEMPTS = 3
CONSUMER_REBUILD_PAUSE_S = 1.0
SETTLE_S = 3.0
TXN_TIMEOUT_MS = 60000
COMMITTED_WAIT_S = 2 * TXN_TIMEOUT_MS / 1000
# librdkafka does not always honour the timeout of a transactional call: after the group
# coordinator went away send_offsets_to_transaction can block for ever (confluentinc/librdkafka
# #5456, #5511), and a main thread stuck in C cannot even answer SIGTERM. Each call runs in a
# helper thread; one that outlives its timeout by this much counts as a lost producer.
HUNG_MARGIN_S = 5.0
# After SIGTERM, how long a transactional call in flight may still take before the chainer
# exits without its outcome (recovery on the next start settles it, as after a crash).
STOP_GRACE_S = 10.0
# Bounds the consumer's prefetch (several batches' worth) so memory stays flat.
PREFETCH_KBYTES = 32768

T = TypeVar("T")


class ChainDivergence(SealtrailError):
    """The chain topic and the committed raw offsets disagree; chaining would fork or gap."""


def chain_id(raw_topic: str, partition: int) -> str:
    return f"{raw_topic}/{partition}"


def group_id(settings: Settings) -> str:
    # The topic prefix separates deployments sharing a cluster (and tests sharing a broker).
    return f"{settings.topic_prefix}{GROUP}"


def transactional_id(settings: Settings, instance_id: str) -> str:
    return f"{settings.topic_prefix}{GROUP}-{instance_id}"


@dataclass(frozen=True, slots=True)
class ChainerOptions:
    once: bool = False
    batch_records: int = 5000
    batch_ms: int = 200
    signing_key: Path | None = None
    checkpoint_records: int = 1000
    checkpoint_seconds: float = 1.0
    instance_id: str = ""
    export_checkpoints: Path | None = None
    # Static group membership makes a restarted instance take its partitions back at once;
    # the session timeout is how long a stopped instance's partitions wait to move.
    session_timeout_ms: int = 10000

    def validated(self) -> ChainerOptions:
        if self.batch_records < 1:
            raise ConfigError("--batch-records must be at least 1")
        if self.batch_ms < 1:
            raise ConfigError("--batch-ms must be at least 1")
        if self.checkpoint_records < 1:
            raise ConfigError("--checkpoint-records must be at least 1")
        if self.checkpoint_seconds <= 0:
            raise ConfigError("--checkpoint-seconds must be positive")
        instance = self.instance_id or socket.gethostname() or "chainer"
        if any(ch.isspace() for ch in instance):
            raise ConfigError(f"instance id {instance!r} contains whitespace; pick another one")
        return ChainerOptions(
            once=self.once,
            batch_records=self.batch_records,
            batch_ms=self.batch_ms,
            signing_key=self.signing_key,
            checkpoint_records=self.checkpoint_records,
            checkpoint_seconds=self.checkpoint_seconds,
            instance_id=instance,
            export_checkpoints=self.export_checkpoints,
            session_timeout_ms=self.session_timeout_ms,
        )


@dataclass(slots=True)
class ChainerStats:
    records: int = 0
    transactions: int = 0
    checkpoints: int = 0
    aborts: int = 0
    producer_rebuilds: int = 0
    consumer_rebuilds: int = 0
    recoveries: int = 0
    # monotonic times of the first chained batch's start and the last commit (throughput)
    first_batch_at: float | None = None
    last_commit_at: float | None = None


@dataclass(slots=True)
class _Chain:
    head: ChainHead
    tree: CompactRange | None
    next_offset: int  # raw offset after the last chained record (committed)
    since_checkpoint: int = 0
    last_checkpoint: float = field(default_factory=time.monotonic)


class _OffsetMismatch(ChainDivergence):
    """The chain head and the committed offset disagree (re-checked once markers settle)."""


class _AbortNeeded(Exception):  # noqa: N818 - internal control flow
    """The transaction must be aborted; the producer stays usable."""


class _ConsumerLost(Exception):  # noqa: N818 - internal control flow
    """The consumer hit a fatal error (e.g. its static member id was fenced): rebuild it."""


class _Interrupted(Exception):  # noqa: N818 - internal control flow
    """Stop was requested while the chainer waited on Kafka (e.g. during recovery)."""


class _ProducerLost(Exception):  # noqa: N818 - internal control flow
    """The producer is fatal, fenced, or a commit/abort outcome is unknown: rebuild it."""


class _ProducerHung(_ProducerLost):
    """A transactional call outlived its own timeout: the producer is abandoned, not reused."""


# What a refused transactional call was trying to do, in words.
_REFUSED_ACTION = {
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "use its transactional id",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "write the chain or checkpoint topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "commit offsets in its consumer group",
}


def _now_us() -> int:
    return time.time_ns() // 1000


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


def _describe(exc: KafkaException) -> str:
    err = _kafka_error(exc)
    return err.str() if err is not None else str(exc)


class Chainer:
    """The chaining service. ``Chainer(settings, options, stop).run()`` blocks until done."""

    def __init__(
        self, settings: Settings, options: ChainerOptions, stop: StopFlag | None = None
    ) -> None:
        self.settings = settings
        self.options = options.validated()
        self.stop = stop if stop is not None else StopFlag()
        self.stats = ChainerStats()
        self.signer: Signer | None = (
            load_signer(self.options.signing_key) if self.options.signing_key else None
        )
        self._raw = settings.topics.raw
        self._chain_topic = settings.topics.chain
        self._cp_topic = settings.topics.checkpoints
        self._chains: dict[int, _Chain] = {}
        self._pending: list[Message] = []
        self._targets: dict[int, int] = {}  # --once: raw end offsets seen at first assignment
        self._assigned = False
        self._failure: BaseException | None = None
        self._failed_in_a_row = 0
        self._consumer_failures = 0
        self._producer_hung = False
        self._last_error = ""
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._reader: Consumer | None = None

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
        self._reader = reader(self.settings)
        try:
            self._producer = self._new_producer()
            self._consumer = self._new_consumer()
            self._loop()
        except _Interrupted:
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
        consumer = Consumer(
            consumer_conf(
                self.settings,
                group_id(self.settings),
                **{
                    "group.instance.id": opts.instance_id,
                    "session.timeout.ms": opts.session_timeout_ms,
                    "queued.max.messages.kbytes": PREFETCH_KBYTES,
                    "fetch.max.bytes": PREFETCH_KBYTES * 1024 // 2,
                },
            )
        )
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
        close_quietly(self._reader)
        if self._producer is not None and not self._producer_hung:
            # Left open only if something unexpected was raised mid-batch: abort it now
            # rather than let it block readers until the transaction timeout.
            try:
                self._producer.abort_transaction(5)
            except KafkaException:
                pass  # the usual case: no transaction in progress
            self._producer.flush(5)
        self._consumer = self._reader = self._producer = None

    def _loop(self) -> None:
        last_report = time.monotonic()
        reported = 0
        while True:
            self._raise_failure()
            stopping = self.stop.is_set()
            try:
                batch = [] if stopping else self._collect()
            except _ConsumerLost as lost:
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
                err = _kafka_error(exc)
                if err is not None and (err.fatal() or err.code() == KafkaError._FATAL):
                    raise _ConsumerLost(err.str()) from None
                raise
            if self._failure is not None:
                return []
            for message in got:
                error = message.error()
                if error is not None:
                    # A fatal consumer error arrives as an _FATAL event whose fatal() flag is
                    # not always set: check both.
                    if error.fatal() or error.code() == KafkaError._FATAL:
                        raise _ConsumerLost(error.str())
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
            offsets = self._recover_with_fresh_readers(numbers)
            if self.options.once:
                for p in numbers:
                    if p not in self._targets:
                        self._targets[p] = watermarks(consumer, self._raw, p)[1]
            consumer.assign([TopicPartition(self._raw, p, offsets[p]) for p in numbers])
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

    # ------------------------------------------------------------------ recovery

    def _recover_with_fresh_readers(self, partitions: list[int]) -> dict[int, int]:
        attempt = 1
        while True:
            try:
                return self._recover(partitions)
            except KafkaUnavailable as exc:
                if self.stop.is_set():
                    raise _Interrupted from None
                if attempt == RECOVERY_ATTEMPTS:
                    raise
                log.warning("recovery could not read Kafka (%s): retrying with a new reader", exc)
                close_quietly(self._reader)
                self._reader = reader(self.settings)
                attempt += 1

    def _recover(self, partitions: Iterable[int]) -> dict[int, int]:
        """Rebuild the heads of ``partitions`` from Kafka; return the raw offsets to read from."""
        consumer = self._consumer
        assert consumer is not None
        numbers = sorted(partitions)
        self.stats.recoveries += 1
        committed = self._committed_offsets(numbers)
        by_partition = {tp.partition: tp.offset for tp in committed}
        start: dict[int, int] = {}
        for p in numbers:
            offset = by_partition.get(p, -1)
            settle = time.monotonic() + SETTLE_S
            while True:
                try:
                    chain = self._recover_chain(p, offset if offset >= 0 else None)
                    break
                except _OffsetMismatch:
                    # Commit markers reach the partitions just after a commit returns: a chain
                    # tail read right then can lag the offsets. Re-read before calling it a fork.
                    if time.monotonic() > settle:
                        raise
                    time.sleep(0.25)
                    offset = self._committed(p)
            self._chains[p] = chain
            start[p] = chain.next_offset if chain.head.next_seq else OFFSET_BEGINNING
        log.info(
            "recovered %d chain(s): %s; checkpoints %s",
            len(numbers),
            ", ".join(
                f"{self._chains[p].head.chain} next seq {self._chains[p].head.next_seq} "
                f"from raw offset {self._chains[p].next_offset}"
                for p in numbers
            )
            or "none",
            "signed" if self.signer else "off",
        )
        return start

    def _committed_offsets(self, partitions: list[int]) -> list[TopicPartition]:
        """The group's stable committed offsets.

        A dead instance's open transaction keeps them unstable until the broker aborts it
        (transaction.timeout.ms), so keep asking for a while before giving up.
        """
        assert self._consumer is not None
        deadline = time.monotonic() + COMMITTED_WAIT_S
        while True:
            if self.stop.is_set():
                raise _Interrupted
            try:
                # Short calls, so a SIGTERM while the brokers are away is answered quickly.
                return list(
                    self._consumer.committed(
                        [TopicPartition(self._raw, p) for p in partitions], timeout=5.0
                    )
                )
            except KafkaException as exc:
                if self.stop.is_set():
                    raise _Interrupted from None
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(
                        f"could not read the chainer's committed offsets: {_describe(exc)}; "
                        "check that the brokers are up"
                    ) from None
                log.info("committed offsets not readable yet (%s); retrying", _describe(exc))

    def _committed(self, partition: int) -> int:
        return int(self._committed_offsets([partition])[0].offset)

    def _records(self, messages: Iterable[Message], chain: str) -> Iterator[ChainedRecord]:
        for message in messages:
            record = ChainedRecord(*decode_chained_fields(message.value() or b""))
            if record.chain != chain:
                raise ChainDivergence(
                    f"chain topic partition of {chain} holds a record of {record.chain} at "
                    f"offset {message.offset()}; the chain topic was written by something else, "
                    "investigate before chaining on"
                )
            yield record

    def _recover_chain(self, partition: int, committed: int | None) -> _Chain:
        rdr = self._reader
        assert rdr is not None
        chain = chain_id(self._raw, partition)
        tail = read_tail(rdr, self._chain_topic, partition, 1, stop=self.stop.is_set)
        last_records = list(self._records(tail, chain))
        last = last_records[-1] if last_records else None
        if last is None and committed is None:
            head, next_offset = ChainHead(chain), 0
        elif last is not None and committed is not None and last.source_offset + 1 == committed:
            head, next_offset = ChainHead.after(last), committed
        else:
            where = (
                f"its head is seq {last.seq} from raw offset {last.source_offset}"
                if last is not None
                else "it is empty"
            )
            raise _OffsetMismatch(
                f"chain {chain} and the committed raw offset disagree: {where}, but the "
                f"group {group_id(self.settings)} committed raw offset "
                f"{committed if committed is not None else 'none'}; stopping instead of "
                "forking the chain, investigate the chain and checkpoint topics"
            )
        tree = self._recover_tree(partition, head) if self.signer is not None else None
        since = head.next_seq - tree.size if tree is not None else 0
        return _Chain(head, tree, next_offset, since_checkpoint=since)

    def _recover_tree(self, partition: int, head: ChainHead) -> CompactRange:
        """The compact range at the head: last checkpoint's range plus the records after it."""
        rdr = self._reader
        assert rdr is not None
        chain = head.chain
        notes = read_tail(rdr, self._cp_topic, partition, 1, stop=self.stop.is_set)
        tree = CompactRange()
        prev_hash = head.head_hash if head.next_seq == 0 else None
        if notes:
            message = notes[-1]
            cp = self._parse_checkpoint(message, chain)
            header = dict(message.headers() or []).get(RANGE_HEADER)
            if header is None:
                raise ChainDivergence(
                    f"the last checkpoint of {chain} has no {RANGE_HEADER} header; "
                    "it was not written by the chainer, investigate the checkpoint topic"
                )
            raw_range = header if isinstance(header, bytes) else header.encode("latin-1")
            tree = CompactRange.from_bytes(cp.size, raw_range)
            if tree.root() != cp.root_hash:
                raise ChainDivergence(
                    f"the compact range stored with checkpoint {cp.size} of {chain} does not "
                    "give its root; the checkpoint topic is corrupt, investigate it"
                )
            if cp.size > head.next_seq:
                raise ChainDivergence(
                    f"checkpoint {cp.size} of {chain} is ahead of the chain head (seq "
                    f"{head.next_seq - 1}); the chain was truncated, investigate it"
                )
            prev_hash = cp.head_hash
        need = head.next_seq - tree.size
        if need == 0:
            if prev_hash != head.head_hash:
                raise ChainDivergence(
                    f"checkpoint {tree.size} of {chain} names another head hash than the "
                    "chain; the chain was rewritten, investigate it"
                )
            return tree
        messages: Iterable[Message]
        if tree.size:
            messages = read_tail(rdr, self._chain_topic, partition, need, stop=self.stop.is_set)
        else:
            messages = read_range(rdr, self._chain_topic, partition, stop=self.stop.is_set)
        # Streamed: with no checkpoint yet this is the whole chain, never held in memory.
        for record in self._records(messages, chain):
            if record.seq != tree.size or (prev_hash is not None and record.prev_hash != prev_hash):
                raise ChainDivergence(
                    f"chain {chain} does not hold seqs {tree.size}..{head.next_seq - 1} "
                    f"linked and contiguously (found seq {record.seq}); the chain topic is "
                    "damaged, run the verifier"
                )
            tree.append(record.hash)
            prev_hash = record.hash
        if tree.size != head.next_seq or prev_hash != head.head_hash:
            raise ChainDivergence(
                f"chain {chain} does not hold seqs up to {head.next_seq - 1} contiguously "
                f"(rebuilt {tree.size}); the chain topic is damaged, run the verifier"
            )
        return tree

    def _parse_checkpoint(self, message: Message, chain: str) -> Checkpoint:
        raw = message.value() or b""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        body, sep, _sigs = text.rpartition("\n\n")
        if not sep:
            raise ChainDivergence(
                f"the last record of the checkpoint topic for {chain} is not a signed note; "
                "investigate the checkpoint topic"
            )
        cp = Checkpoint.parse(body + "\n")
        if cp.origin != origin_for(self.settings.deployment, chain):
            raise ChainDivergence(
                f"the last checkpoint for {chain} is for origin {cp.origin!r}; check "
                "SEALTRAIL_DEPLOYMENT, it must not change for an existing log"
            )
        return cp

    # ------------------------------------------------------------------ transactions

    def _new_producer(self) -> Producer:
        txn_id = transactional_id(self.settings, self.options.instance_id)
        producer = Producer(
            producer_conf(
                self.settings,
                **{"transactional.id": txn_id, "transaction.timeout.ms": TXN_TIMEOUT_MS},
            )
        )
        try:
            self._retry(
                "init_transactions",
                lambda: producer.init_transactions(TXN_TIMEOUT_S),
                TXN_TIMEOUT_S,
            )
        except (_AbortNeeded, _ProducerLost):
            raise KafkaUnavailable(
                f"could not start Kafka transactions for {txn_id} at {self.settings.kafka}; "
                "check that the brokers are up and allow transactions"
            ) from None
        return producer

    def _retry(self, what: str, call: Callable[[], T], timeout: float = TXN_CALL_TIMEOUT_S) -> T:
        """Run ``call``; retry retriable errors for a while; map the rest to the error policy.

        Still failing after the retries (e.g. a commit that keeps timing out) is an unclear
        outcome: the producer is rebuilt and the chains recovered, never produced again blindly.
        """
        deadline = time.monotonic() + RETRY_LIMIT_S
        while True:
            try:
                return self._bounded(what, call, timeout)
            except KafkaException as exc:
                err = _kafka_error(exc)
                self._last_error = f"{what}: {_describe(exc)}"
                if is_refusal(err):
                    # A missing ACL does not heal by rebuilding the producer: say so, once.
                    assert err is not None
                    action = _REFUSED_ACTION.get(err.code(), what)
                    raise refused(self.settings, err, action) from None
                if err is None or err.fatal():
                    log.warning("%s failed for good: %s", what, _describe(exc))
                    raise _ProducerLost from None
                if err.retriable() and time.monotonic() < deadline:
                    log.info("%s: %s; retrying", what, err.str())
                    time.sleep(0.1)
                    continue
                if err.txn_requires_abort():
                    log.warning("%s: %s; aborting the transaction", what, err.str())
                    raise _AbortNeeded from None
                log.warning("%s: %s; rebuilding the producer", what, err.str())
                raise _ProducerLost from None

    def _bounded(self, what: str, call: Callable[[], T], timeout: float) -> T:
        """Run one blocking transactional call with a hard deadline (see HUNG_MARGIN_S)."""
        outcome: list[Any] = []
        done = threading.Event()

        def attempt() -> None:
            try:
                outcome.append((True, call()))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                outcome.append((False, exc))
            finally:
                done.set()

        # A daemon thread: one stuck for good must not keep the process from exiting.
        threading.Thread(target=attempt, name=f"chainer-{what}", daemon=True).start()
        started = time.monotonic()
        stop_seen: float | None = None
        while not done.wait(0.2):
            now = time.monotonic()
            if stop_seen is None and self.stop.is_set():
                stop_seen = now
            if now - started > timeout + HUNG_MARGIN_S or (
                stop_seen is not None and now - stop_seen > STOP_GRACE_S
            ):
                self._producer_hung = True
                self._last_error = f"{what}: no answer after {now - started:.0f}s"
                log.warning(
                    "%s did not return after %.0fs: abandoning the producer", what, now - started
                )
                if stop_seen is not None:
                    raise _Interrupted
                raise _ProducerHung
        ok, value = outcome[0]
        if not ok:
            raise value
        return cast(T, value)

    def _produce(self, topic: str, partition: int, key: bytes, value: bytes, **kw: Any) -> None:
        producer = self._producer
        assert producer is not None
        while True:
            try:
                producer.produce(topic, value, key, partition=partition, **kw)
                return
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
            except KafkaException as exc:
                err = _kafka_error(exc)
                self._last_error = f"produce: {_describe(exc)}"
                if err is not None and err.txn_requires_abort():
                    raise _AbortNeeded from None
                raise _ProducerLost from None

    def _checkpoints_due(self, final: bool) -> bool:
        if self.signer is None:
            return False
        now = time.monotonic()
        return any(
            c.since_checkpoint
            and (final or now - c.last_checkpoint >= self.options.checkpoint_seconds)
            for c in self._chains.values()
        )

    def _checkpoint(self, partition: int, chain: _Chain, notes: list[tuple[str, str]]) -> None:
        assert self.signer is not None and chain.tree is not None
        head = chain.head
        cp = Checkpoint(
            origin=origin_for(self.settings.deployment, head.chain),
            size=head.next_seq,
            root_hash=chain.tree.root(),
            head_hash=head.head_hash,
            timestamp_us=_now_us(),
        )
        note = sign_checkpoint(cp, self.signer)
        self._produce(
            self._cp_topic,
            partition,
            head.chain.encode("utf-8"),
            note.encode("utf-8"),
            headers=[(RANGE_HEADER, chain.tree.to_bytes())],
        )
        chain.since_checkpoint = 0
        chain.last_checkpoint = time.monotonic()
        notes.append((head.chain, note))

    def _transact(self, batch: list[Message], final: bool = False) -> bool:
        """Chain ``batch`` (plus due checkpoints) in one transaction, applying the error policy.

        False if the transaction did not commit (the chainer then rewound to committed state).
        """
        started = time.monotonic()
        try:
            notes, count = self._run_transaction(batch, final)
        except _AbortNeeded:
            self.stats.aborts += 1
            try:
                assert self._producer is not None
                producer = self._producer
                self._retry(
                    "abort_transaction", lambda: producer.abort_transaction(TXN_CALL_TIMEOUT_S)
                )
            except (_AbortNeeded, _ProducerLost):
                self._rebuild_producer()
            self._failed()
            self._rewind()
            return False
        except _ProducerLost:
            self._rebuild_producer()
            self._failed()
            self._rewind()
            return False
        self._failed_in_a_row = 0
        self._consumer_failures = 0
        self.stats.transactions += 1
        self.stats.records += count
        if count:
            if self.stats.first_batch_at is None:
                self.stats.first_batch_at = started
            self.stats.last_commit_at = time.monotonic()
        if notes:
            self.stats.checkpoints += len(notes)
            self._export(notes)
        return True

    def _run_transaction(
        self, batch: list[Message], final: bool
    ) -> tuple[list[tuple[str, str]], int]:
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        self._retry("begin_transaction", producer.begin_transaction)
        notes: list[tuple[str, str]] = []
        offsets: dict[int, int] = {}
        chains = self._chains
        chain_topic = self._chain_topic
        every = self.options.checkpoint_records
        signed = self.signer is not None
        for message in batch:
            partition = cast(int, message.partition())
            chain = chains[partition]
            offset = cast(int, message.offset())
            record = link(chain.head, offset, _now_us(), message.value() or b"")
            value = encode_chained(
                {
                    "chain": record.chain,
                    "seq": record.seq,
                    "prev_hash": record.prev_hash,
                    "hash": record.hash,
                    "source_offset": offset,
                    "ingested_at": record.ingested_at_us,
                    "payload": record.payload,
                }
            )
            self._produce(chain_topic, partition, record.chain.encode("utf-8"), value)
            offsets[partition] = offset + 1
            if signed:
                assert chain.tree is not None
                chain.tree.append(record.hash)
                chain.since_checkpoint += 1
                if chain.since_checkpoint >= every:
                    self._checkpoint(partition, chain, notes)
        if signed:
            now = time.monotonic()
            for partition, chain in chains.items():
                if chain.since_checkpoint and (
                    final or now - chain.last_checkpoint >= self.options.checkpoint_seconds
                ):
                    self._checkpoint(partition, chain, notes)
        if offsets:
            positions = [TopicPartition(self._raw, p, o) for p, o in offsets.items()]
            metadata = consumer.consumer_group_metadata()
            self._retry(
                "send_offsets_to_transaction",
                lambda: producer.send_offsets_to_transaction(
                    positions, metadata, TXN_CALL_TIMEOUT_S
                ),
            )
        self._retry("commit_transaction", lambda: producer.commit_transaction(TXN_CALL_TIMEOUT_S))
        for partition, offset in offsets.items():
            chains[partition].next_offset = offset
        return notes, len(batch)

    def _failed(self) -> None:
        self._failed_in_a_row += 1
        if self._failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise KafkaUnavailable(
                f"{self._failed_in_a_row} transactions in a row failed (last error: "
                f"{self._last_error or 'unknown'}); fix the cause (e.g. a raw record too large "
                "for the chain topic's max.message.bytes) and restart the chainer"
            )

    def _rebuild_producer(self) -> None:
        """Throw the producer away; the new one's init_transactions fences and settles the old."""
        self.stats.producer_rebuilds += 1
        log.warning("rebuilding the transactional producer and recovering the chains")
        old, self._producer = self._producer, None
        if old is not None and not self._producer_hung:
            old.purge()
            old.flush(0)
        # A hung producer is left to its helper thread, which holds the last reference.
        self._producer_hung = False
        self._producer = self._new_producer()

    def _rewind(self) -> None:
        """After an abort: drop in-memory state, recover the heads, seek to committed offsets."""
        consumer = self._consumer
        assert consumer is not None
        self._pending = []
        partitions = [tp.partition for tp in consumer.assignment()]
        self._chains.clear()
        if not partitions:
            return
        offsets = self._recover(partitions)
        for p, offset in offsets.items():
            target = TopicPartition(self._raw, p, offset)
            for attempt in range(50):
                try:
                    consumer.seek(target)
                    break
                except KafkaException as exc:
                    if attempt == 49:
                        raise KafkaUnavailable(
                            f"could not rewind {self._raw}/{p} to offset {offset}: "
                            f"{_describe(exc)}; restart the chainer"
                        ) from None
                    time.sleep(0.1)

    # ------------------------------------------------------------------ offsite notes

    def _export(self, notes: list[tuple[str, str]]) -> None:
        directory = self.options.export_checkpoints
        if directory is None:
            return
        by_chain: dict[str, list[str]] = {}
        for chain, note in notes:
            by_chain.setdefault(chain, []).append(note)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for chain, chain_notes in by_chain.items():
                offsite.write_notes(directory, chain, chain_notes)
        except (OSError, ConfigError) as exc:
            # The checkpoints are committed in Kafka; a failed offsite copy must be noticed but
            # must not stop chaining.
            log.error("could not append checkpoints to %s: %s", directory, exc)


def options_from_env(**given: Any) -> ChainerOptions:
    """Options with the env fallbacks of the CLI (for in-process use by ``sealtrail run``)."""
    if given.get("signing_key") is None and os.environ.get(ENV_SIGNING_KEY):
        given["signing_key"] = Path(os.environ[ENV_SIGNING_KEY])
    if not given.get("instance_id") and os.environ.get(ENV_INSTANCE_ID):
        given["instance_id"] = os.environ[ENV_INSTANCE_ID]
    return ChainerOptions(**given)
