"""Recovery: the state of a chain read back from Kafka alone, on every assignment and rewind.

Per partition ``p``: the group's committed raw offset must follow the last record of chain
partition ``p`` (else :class:`ChainDivergence`); with a signing key, the Merkle compact range at
the head is rebuilt from the last checkpoint's range header plus the chain records after it.
docs/CHAINER.md "Recovery" describes the steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from processors.chainer.checkpoints import RANGE_HEADER
from processors.chainer.interrupt import Interrupted
from processors.chainer.names import chain_id, group_id
from processors.chainer.options import ChainerStats
from processors.chainer.state import ChainState
from processors.chainer.transactions import TXN_TIMEOUT_MS
from processors.integrity.checkpoint import Checkpoint, origin_for
from processors.integrity.errors import MalformedCheckpoint
from processors.integrity.merkle import CompactRange
from processors.integrity.note import parse_note
from processors.integrity.record import ChainedRecord, ChainHead
from schemas.chained import value_record
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable, SealtrailError
from sealtrail.infra.kafka import describe
from sealtrail.infra.kafka_read import close_quietly, read_range, read_tail, reader
from sealtrail.infra.service import StopFlag

__all__ = ["ChainDivergence", "OffsetMismatch", "Recovery"]

log = logging.getLogger("sealtrail.chainer")

# Recovery reads Kafka through its own client; one whose view of the cluster went stale in a
# broker restart is replaced, this many times, before recovery is reported as failed.
RECOVERY_ATTEMPTS = 3
SETTLE_S = 3.0
# A dead instance's open transaction keeps the committed offsets unstable until the broker
# aborts it (transaction.timeout.ms).
COMMITTED_WAIT_S = 2 * TXN_TIMEOUT_MS / 1000


class ChainDivergence(SealtrailError):
    """The chain topic and the committed raw offsets disagree; chaining would fork or gap."""


class OffsetMismatch(ChainDivergence):
    """The last chain record and the committed raw offset disagree.

    Raised by :meth:`Recovery.recover_chain`. Commit markers reach the partitions just after a
    commit returns, so :meth:`Recovery.recover` re-reads for ``SETTLE_S`` before letting it
    out as the ChainDivergence it is.
    """


class Recovery:
    """Reads chain heads and checkpoint state back from Kafka, through its own reader client."""

    def __init__(
        self, settings: Settings, stop: StopFlag, stats: ChainerStats, *, signed: bool
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.stats = stats
        self.signed = signed  # rebuild the Merkle compact ranges (checkpoints are signed)
        self._raw = settings.topics.raw
        self._chain_topic = settings.topics.chain
        self._cp_topic = settings.topics.checkpoints
        self._reader: Consumer | None = None

    def open(self) -> None:
        self._reader = reader(self.settings)

    def close(self) -> None:
        close_quietly(self._reader)
        self._reader = None

    def recover_with_fresh_readers(
        self, consumer: Consumer, partitions: list[int]
    ) -> dict[int, ChainState]:
        """:meth:`recover`, retried with a new reader client when Kafka cannot be read."""
        attempt = 1
        while True:
            try:
                return self.recover(consumer, partitions)
            except KafkaUnavailable as exc:
                if self.stop.is_set():
                    raise Interrupted from None
                if attempt == RECOVERY_ATTEMPTS:
                    raise
                log.warning("recovery could not read Kafka (%s): retrying with a new reader", exc)
                close_quietly(self._reader)
                self._reader = reader(self.settings)
                attempt += 1

    def recover(self, consumer: Consumer, partitions: Iterable[int]) -> dict[int, ChainState]:
        """The state of the chains of raw ``partitions`` as committed (``consumer`` is the
        chainer's group member, whose committed offsets count)."""
        numbers = sorted(partitions)
        self.stats.recoveries += 1
        committed = self.committed_offsets(consumer, numbers)
        by_partition = {tp.partition: tp.offset for tp in committed}
        chains: dict[int, ChainState] = {}
        for p in numbers:
            offset = by_partition.get(p, -1)
            settle = time.monotonic() + SETTLE_S
            while True:
                try:
                    chain = self.recover_chain(p, offset if offset >= 0 else None)
                    break
                except OffsetMismatch:
                    # Commit markers reach the partitions just after a commit returns: a chain
                    # tail read right then can lag the offsets. Re-read before calling it a fork.
                    if time.monotonic() > settle:
                        raise
                    time.sleep(0.25)
                    offset = int(self.committed_offsets(consumer, [p])[0].offset)
            chains[p] = chain
        log.info(
            "recovered %d chain(s): %s; checkpoints %s",
            len(numbers),
            ", ".join(
                f"{chains[p].head.chain} next seq {chains[p].head.next_seq} "
                f"from raw offset {chains[p].next_offset}"
                for p in numbers
            )
            or "none",
            "signed" if self.signed else "off",
        )
        return chains

    def committed_offsets(self, consumer: Consumer, partitions: list[int]) -> list[TopicPartition]:
        """The group's stable committed offsets.

        A dead instance's open transaction keeps them unstable until the broker aborts it
        (transaction.timeout.ms), so keep asking for a while before giving up.
        """
        deadline = time.monotonic() + COMMITTED_WAIT_S
        while True:
            if self.stop.is_set():
                raise Interrupted
            try:
                # Short calls, so a SIGTERM while the brokers are away is answered quickly.
                return list(
                    consumer.committed(
                        [TopicPartition(self._raw, p) for p in partitions], timeout=5.0
                    )
                )
            except KafkaException as exc:
                if self.stop.is_set():
                    raise Interrupted from None
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(
                        f"could not read the chainer's committed offsets: {describe(exc)}; "
                        "check that the brokers are up"
                    ) from None
                log.info("committed offsets not readable yet (%s); retrying", describe(exc))

    def _records(self, messages: Iterable[Message], chain: str) -> Iterator[ChainedRecord]:
        for message in messages:
            record = value_record(message.value() or b"")
            if record.chain != chain:
                raise ChainDivergence(
                    f"chain topic partition of {chain} holds a record of {record.chain} at "
                    f"offset {message.offset()}; the chain topic was written by something else, "
                    "investigate before chaining on"
                )
            yield record

    def recover_chain(self, partition: int, committed: int | None) -> ChainState:
        """One chain's state from its last record and ``committed`` (None: nothing committed)."""
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
            raise OffsetMismatch(
                f"chain {chain} and the committed raw offset disagree: {where}, but the "
                f"group {group_id(self.settings)} committed raw offset "
                f"{committed if committed is not None else 'none'}; stopping instead of "
                "forking the chain, investigate the chain and checkpoint topics"
            )
        tree = self._recover_tree(partition, head) if self.signed else None
        since = head.next_seq - tree.size if tree is not None else 0
        return ChainState(head, tree, next_offset, since_checkpoint=since)

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
            cp = self._last_checkpoint(message, chain)
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

    def _last_checkpoint(self, message: Message, chain: str) -> Checkpoint:
        """The last checkpoint, parsed but not verified: the chainer only resumes from it, and
        :meth:`_recover_tree` checks its root and head against the range and the chain."""
        try:
            note = parse_note((message.value() or b"").decode("utf-8"))
        except (UnicodeDecodeError, MalformedCheckpoint):
            raise ChainDivergence(
                f"the last record of the checkpoint topic for {chain} is not a signed note; "
                "investigate the checkpoint topic"
            ) from None
        cp = Checkpoint.parse(note.text)
        if cp.origin != origin_for(self.settings.deployment, chain):
            raise ChainDivergence(
                f"the last checkpoint for {chain} is for origin {cp.origin!r}; check "
                "SEALTRAIL_DEPLOYMENT, it must not change for an existing log"
            )
        return cp
