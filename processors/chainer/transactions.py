"""The transaction guard: every call on the chainer's transactional producer, bounded in time,
retried while Kafka says so, and mapped onto the error policy of docs/CHAINER.md.

Inside a transaction the guard signals with :class:`AbortNeeded` (abort, the producer stays) and
:class:`ProducerLost` / :class:`ProducerHung` (throw the producer away). Its
:meth:`TransactionGuard.transaction` handles them; the caller only learns whether the
transaction committed, and rewinds to the committed state if it did not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar, cast

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from processors.chainer.interrupt import Interrupted
from processors.chainer.names import transactional_id
from processors.chainer.options import ChainerStats
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable
from sealtrail.infra.kafka import describe, is_refusal, kafka_error, producer_conf, refused
from sealtrail.infra.service import StopFlag

__all__ = [
    "MAX_FAILED_IN_A_ROW",
    "TXN_TIMEOUT_MS",
    "AbortNeeded",
    "ProducerHung",
    "ProducerLost",
    "TransactionGuard",
]

log = logging.getLogger("sealtrail.chainer")

TXN_TIMEOUT_S = 30.0  # init_transactions: may wait for a previous instance's transaction
# The other transactional calls take milliseconds when Kafka is well; a short timeout finds a
# stuck one sooner (a retriable timeout is retried by TransactionGuard.retry).
TXN_CALL_TIMEOUT_S = 10.0
RETRY_LIMIT_S = 10.0
TXN_TIMEOUT_MS = 60000
# Transactions failing in a row without one commit: a persistent problem (e.g. a raw record
# too large for the chain topic), not a glitch; stop instead of retrying forever.
MAX_FAILED_IN_A_ROW = 8
# librdkafka does not always honour the timeout of a transactional call: after the group
# coordinator went away send_offsets_to_transaction can block for ever (confluentinc/librdkafka
# #5456, #5511), and a main thread stuck in C cannot even answer SIGTERM. Each call runs in a
# helper thread; one that outlives its timeout by this much counts as a lost producer.
HUNG_MARGIN_S = 5.0
# After SIGTERM, how long a transactional call in flight may still take before the chainer
# exits without its outcome (recovery on the next start settles it, as after a crash).
STOP_GRACE_S = 10.0

T = TypeVar("T")


# What a refused transactional call was trying to do, in words.
_REFUSED_ACTION = {
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "use its transactional id",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "write the chain or checkpoint topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "commit offsets in its consumer group",
}


class AbortNeeded(Exception):  # noqa: N818 - control flow, not an error
    """Kafka said the open transaction must be aborted (``txn_requires_abort``).

    Raised by :meth:`TransactionGuard.retry` and :meth:`TransactionGuard.produce`; handled by
    :meth:`TransactionGuard.transaction`, which aborts. The producer stays usable.
    """


class ProducerLost(Exception):  # noqa: N818 - control flow, not an error
    """The producer is fatal or fenced, or the outcome of a call is unknown after the retries.

    Raised by :meth:`TransactionGuard.retry` and :meth:`TransactionGuard.produce`; handled by
    :meth:`TransactionGuard.transaction`, which rebuilds the producer (``init_transactions``
    with the same transactional id fences the old one and settles its last transaction).
    """


class ProducerHung(ProducerLost):
    """A transactional call outlived its own timeout by ``HUNG_MARGIN_S``.

    Raised by :meth:`TransactionGuard.bounded`; the producer is abandoned to the helper thread
    still inside the call and never touched again.
    """


@dataclass(slots=True)
class _Outcome:
    """What a bounded call's helper thread hands back: a value or the exception it raised."""

    value: object = None
    error: BaseException | None = None


class TransactionGuard:
    """The chainer's transactional producer and every call on it.

    ``hung`` is set once a call was abandoned (the producer is then not touched again);
    ``last_error`` names the last Kafka error, for the message that stops a chainer after
    ``MAX_FAILED_IN_A_ROW`` failed transactions.
    """

    def __init__(
        self, settings: Settings, instance_id: str, stop: StopFlag, stats: ChainerStats
    ) -> None:
        self.settings = settings
        self.transactional_id = transactional_id(settings, instance_id)
        self.stop = stop
        self.stats = stats
        self.producer: Producer | None = None
        self.hung = False
        self.last_error = ""
        self.failed_in_a_row = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.producer = self._new_producer()

    def _new_producer(self) -> Producer:
        txn_id = self.transactional_id
        producer = Producer(
            producer_conf(
                self.settings,
                **{"transactional.id": txn_id, "transaction.timeout.ms": TXN_TIMEOUT_MS},
            )
        )
        try:
            self.retry(
                "init_transactions",
                lambda: producer.init_transactions(TXN_TIMEOUT_S),
                TXN_TIMEOUT_S,
            )
        except (AbortNeeded, ProducerLost):
            raise KafkaUnavailable(
                f"could not start Kafka transactions for {txn_id} at {self.settings.kafka}; "
                "check that the brokers are up and allow transactions"
            ) from None
        return producer

    def rebuild(self) -> None:
        """Throw the producer away; the new one's init_transactions fences and settles the old."""
        self.stats.producer_rebuilds += 1
        log.warning("rebuilding the transactional producer and recovering the chains")
        old, self.producer = self.producer, None
        if old is not None and not self.hung:
            old.purge()
            old.flush(0)
        # A hung producer is left to its helper thread, which holds the last reference.
        self.hung = False
        self.producer = self._new_producer()

    def close(self) -> None:
        if self.producer is not None and not self.hung:
            # Left open only if something unexpected was raised mid-batch: abort it now
            # rather than let it block readers until the transaction timeout.
            try:
                self.producer.abort_transaction(5)
            except KafkaException:
                pass  # the usual case: no transaction in progress
            self.producer.flush(5)
        self.producer = None

    # ------------------------------------------------------------------ one transaction

    def transaction(self, body: Callable[[], T]) -> T | None:
        """``begin_transaction``, ``body()``, ``commit_transaction``, under the error policy.

        ``body`` produces through :meth:`produce` and :meth:`send_offsets`. Returns its result
        once committed, or None if the transaction was aborted or the producer rebuilt: the
        caller must then drop its in-memory state and recover what Kafka committed. Raises
        KafkaUnavailable after ``MAX_FAILED_IN_A_ROW`` transactions in a row did not commit.
        """
        producer = self.producer
        assert producer is not None
        try:
            self.retry("begin_transaction", producer.begin_transaction)
            result = body()
            self.retry(
                "commit_transaction", lambda: producer.commit_transaction(TXN_CALL_TIMEOUT_S)
            )
        except AbortNeeded:
            self.stats.aborts += 1
            try:
                self.retry(
                    "abort_transaction", lambda: producer.abort_transaction(TXN_CALL_TIMEOUT_S)
                )
            except (AbortNeeded, ProducerLost):
                self.rebuild()
            self._failed()
            return None
        except ProducerLost:
            self.rebuild()
            self._failed()
            return None
        self.failed_in_a_row = 0
        return result

    def _failed(self) -> None:
        self.failed_in_a_row += 1
        if self.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise KafkaUnavailable(
                f"{self.failed_in_a_row} transactions in a row failed (last error: "
                f"{self.last_error or 'unknown'}); fix the cause (e.g. a raw record too large "
                "for the chain topic's max.message.bytes) and restart the chainer"
            )

    def produce(
        self,
        topic: str,
        partition: int,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        producer = self.producer
        assert producer is not None
        while True:
            try:
                producer.produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
            except KafkaException as exc:
                self._produce_failed(exc)

    def produce_run(self, topic: str, partition: int, key: bytes, values: list[bytes]) -> None:
        """:meth:`produce` for a run of values with one key, in order, in one loop."""
        producer = self.producer
        assert producer is not None
        produce = producer.produce
        sent = 0
        while sent < len(values):
            try:
                for value in values[sent:] if sent else values:
                    produce(topic, value, key, partition=partition)
                    sent += 1
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain, resume in order
            except KafkaException as exc:
                self._produce_failed(exc)

    def _produce_failed(self, exc: KafkaException) -> NoReturn:
        err = kafka_error(exc)
        self.last_error = f"produce: {describe(exc)}"
        if err is not None and err.txn_requires_abort():
            raise AbortNeeded from None
        raise ProducerLost from None

    def send_offsets(self, positions: list[TopicPartition], metadata: object) -> None:
        """Send the consumer's next raw offsets to the open transaction."""
        producer = self.producer
        assert producer is not None
        self.retry(
            "send_offsets_to_transaction",
            lambda: producer.send_offsets_to_transaction(positions, metadata, TXN_CALL_TIMEOUT_S),
        )

    # ------------------------------------------------------------------ one call

    def retry(self, what: str, call: Callable[[], T], timeout: float = TXN_CALL_TIMEOUT_S) -> T:
        """Run ``call``; retry retriable errors for a while; map the rest to the error policy.

        Still failing after the retries (e.g. a commit that keeps timing out) is an unclear
        outcome: the producer is rebuilt and the chains recovered, never produced again blindly.
        """
        deadline = time.monotonic() + RETRY_LIMIT_S
        while True:
            try:
                return self.bounded(what, call, timeout)
            except KafkaException as exc:
                err = kafka_error(exc)
                self.last_error = f"{what}: {describe(exc)}"
                if is_refusal(err):
                    # A missing ACL does not heal by rebuilding the producer: say so, once.
                    action = _REFUSED_ACTION.get(err.code(), what)
                    raise refused(self.settings, err, action) from None
                if err is None or err.fatal():
                    log.warning("%s failed for good: %s", what, describe(exc))
                    raise ProducerLost from None
                if err.retriable() and time.monotonic() < deadline:
                    self.stats.retries += 1
                    log.info("%s: %s; retrying", what, err.str())
                    time.sleep(0.1)
                    continue
                if err.txn_requires_abort():
                    log.warning("%s: %s; aborting the transaction", what, err.str())
                    raise AbortNeeded from None
                log.warning("%s: %s; rebuilding the producer", what, err.str())
                raise ProducerLost from None

    def bounded(self, what: str, call: Callable[[], T], timeout: float) -> T:
        """Run one blocking transactional call with a hard deadline (see HUNG_MARGIN_S)."""
        outcome = _Outcome()
        done = threading.Event()

        def attempt() -> None:
            try:
                outcome.value = call()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                outcome.error = exc
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
                self.hung = True
                self.last_error = f"{what}: no answer after {now - started:.0f}s"
                log.warning(
                    "%s did not return after %.0fs: abandoning the producer", what, now - started
                )
                if stop_seen is not None:
                    raise Interrupted
                raise ProducerHung
        if outcome.error is not None:
            raise outcome.error
        return cast(T, outcome.value)
