"""Produce-with-confirmation: the one way producers put events and rejects on the raw topic.

A :class:`ConfirmedProducer` owns one idempotent ``acks=all`` librdkafka producer and a thread
that serves its delivery callbacks. Callers group records into a :class:`Batch` and learn, once,
whether Kafka acknowledged every record of it (a thread event, a concurrent future or an asyncio
future), so a webhook answers 200 or a shipper moves its position only after the acks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from producers.k8s import Reject, reject_event
from schemas.codec import encode_audit_event
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable, SealtrailError
from sealtrail.infra.kafka import is_refusal, producer_conf, refused

log = logging.getLogger(__name__)


class DeliveryFailed(KafkaUnavailable):
    """Kafka did not acknowledge some records; they were not stored and must be sent again."""


class Backpressure(SealtrailError):
    """Too many records wait for acknowledgement; the sender should retry later."""


def now_us() -> int:
    return time.time_ns() // 1000


class Batch:
    """Counts the acknowledgements of a group of records; reports once when all are in.

    ``on_done(error)`` runs exactly once, from the delivery thread (or from :meth:`seal` if every
    record was already acknowledged): ``error`` is None when Kafka stored every record.
    """

    __slots__ = (
        "_done",
        "_error",
        "_lock",
        "_on_done",
        "_pending",
        "_sealed",
        "acked",
        "refusal",
        "refused_topic",
    )

    def __init__(self, on_done: Callable[[str | None], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._pending = 0
        self._sealed = False
        self._done = threading.Event()
        self._error: str | None = None
        self._on_done = on_done
        self.acked = 0
        # The broker refused the principal (an ACL is missing): the first such error and topic.
        self.refusal: KafkaError | None = None
        self.refused_topic = ""

    def _add(self, count: int = 1) -> None:
        with self._lock:
            self._pending += count

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        # Called once per record by librdkafka (there is no per-batch report): keep it short.
        with self._lock:
            self._pending -= 1
            if err is None:
                self.acked += 1
                if not self._sealed or self._pending:
                    return
            else:
                if self._error is None:
                    self._error = err.str()
                if self.refusal is None and is_refusal(err):
                    self.refusal = err
                    self.refused_topic = (_msg.topic() if _msg is not None else None) or ""
                if not self._sealed or self._pending:
                    return
        self._finish()

    def _dropped(self, count: int, reason: str) -> None:
        """``count`` counted records were never queued: they fail the batch."""
        self._fail(reason)
        self._withdraw(count)

    def _withdraw(self, count: int = 1) -> None:
        """``count`` counted records were not queued, and the caller may queue them again:
        they leave the batch without failing it."""
        with self._lock:
            self._pending -= count
            finish = self._sealed and self._pending == 0
        if finish:
            self._finish()

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._error is None:
                self._error = reason

    def seal(self) -> None:
        """No more records will be added; report as soon as the pending ones are acknowledged."""
        with self._lock:
            self._sealed = True
            finish = self._pending == 0
        if finish:
            self._finish()

    def _finish(self) -> None:
        self._done.set()
        if self._on_done is not None:
            self._on_done(self._error)

    @property
    def error(self) -> str | None:
        return self._error

    def wait(self, timeout: float) -> bool:
        """True once every record was acknowledged or failed (check :attr:`error`)."""
        return self._done.wait(timeout)


def _weak_error_cb(owner: ConfirmedProducer) -> Callable[[KafkaError], None]:
    """``owner._on_error`` through a weak reference: a bound method as the librdkafka handle's
    error_cb would make the pair a reference cycle, so a dropped producer (the webhook's after a
    fatal error, an SDK Emitter) kept its handle, and its threads reconnecting to the brokers,
    until the cyclic collector ran, which a tuned service runs seldom."""
    ref = weakref.ref(owner)

    def on_error(err: KafkaError) -> None:
        live = ref()
        if live is not None:
            live._on_error(err)

    return on_error


class ConfirmedProducer:
    """One idempotent producer plus a poll thread serving delivery callbacks."""

    def __init__(
        self,
        settings: Settings,
        *,
        message_timeout_s: float | None = None,
        **overrides: Any,
    ) -> None:
        self.settings = settings
        conf = producer_conf(settings, **overrides)
        if message_timeout_s is not None:
            # librdkafka then fails what it could not deliver in time, so a caller that answered
            # "not stored" is never contradicted later by a late delivery of the same records.
            conf["message.timeout.ms"] = max(1000, int(message_timeout_s * 1000))
        conf["error_cb"] = _weak_error_cb(self)
        self._producer = Producer(conf)
        self.connected = True
        self.fatal: str | None = None
        # A fatal refusal, e.g. no producer id for a principal that may write no topic at all.
        self.refusal: KafkaError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._thread.start()

    def raise_if_refused(self, batch: Batch) -> None:
        """Raise the one-sentence error if the broker refused ``batch``'s writes."""
        if batch.refusal is not None:
            topic = batch.refused_topic or self.settings.topics.raw
            raise refused(self.settings, batch.refusal, f"write topic {topic}")
        if self.refusal is not None:
            raise refused(self.settings, self.refusal, "produce to any topic")

    def wait(self, batch: Batch, timeout: float) -> bool:
        """Wait for ``batch`` like :meth:`Batch.wait`, but give up at once if the producer
        failed for good (its queued records would only fail at their message timeout)."""
        deadline = time.monotonic() + timeout
        while not batch.wait(0.1):
            if self.fatal is not None or time.monotonic() >= deadline:
                return False
        return True

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            if is_refusal(err):
                self.refusal = err
            self.fatal = err.str()
            log.error("Kafka producer stopped: %s", err.str())
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            if self.connected:
                log.warning("Kafka producer: %s", err.str())
            self.connected = False
        else:
            # Connection attempts repeat every second while a broker is down: keep them quiet.
            log.debug("Kafka producer: %s", err.str())

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self._producer.poll(0.1)
            except KafkaException as exc:
                # poll() raises a fatal error (e.g. no producer id for this principal) instead
                # of passing it to error_cb: record it, keep serving delivery reports.
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError):
                    if not error.fatal():
                        log.warning("Kafka producer: %s", error.str())
                    elif self.fatal is None:
                        self._on_error(error)
                self._stop.wait(0.1)

    def produce(self, batch: Batch, topic: str, key: bytes, value: bytes) -> None:
        """Queue one record for ``batch``. Raises :class:`Backpressure` if the queue is full:
        the record is then not part of ``batch`` (queue it again once acks drain the queue, or
        give up on the batch)."""
        if self.fatal is not None:
            raise DeliveryFailed(
                f"the Kafka producer stopped after a fatal error ({self.fatal}); restart it"
            )
        batch._add()
        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=batch._delivered)
        except BufferError:
            # Not queued, so not failed: callers that wait for room queue it again, and a
            # record that was stored must not fail its batch (a load run, or a streamed body
            # answered 503 after Kafka stored all of it, which the API server sends again).
            batch._withdraw()
            raise Backpressure(
                "the Kafka producer queue is full; retry once Kafka catches up"
            ) from None
        except Exception as exc:  # noqa: BLE001 - any produce failure fails the batch, not the process
            batch._fail(str(exc))
            batch._delivered(KafkaError(KafkaError._FAIL, str(exc)), None)
            raise DeliveryFailed(f"could not queue a record for Kafka ({exc})") from None

    def produce_record(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        on_delivery: Callable[[KafkaError | None, Any], None],
    ) -> None:
        """Queue one record whose delivery report goes to ``on_delivery`` (err, message);
        raises like :meth:`produce` (a record not queued gets no report)."""
        if self.fatal is not None:
            raise DeliveryFailed(
                f"the Kafka producer stopped after a fatal error ({self.fatal}); restart it"
            )
        try:
            self._producer.produce(topic, value, key, on_delivery=on_delivery)
        except BufferError:
            raise Backpressure(
                "the Kafka producer queue is full; retry once Kafka catches up"
            ) from None
        except Exception as exc:  # noqa: BLE001 - any produce failure fails the record, not the process
            raise DeliveryFailed(f"could not queue a record for Kafka ({exc})") from None

    def produce_many(self, batch: Batch, topic: str, key: bytes, values: list[bytes]) -> None:
        """Queue records for ``batch``, counted once for all of them (a webhook body's).

        Raises :class:`Backpressure` if the queue fills; the records not queued fail the batch.
        """
        if self.fatal is not None:
            raise DeliveryFailed(
                f"the Kafka producer stopped after a fatal error ({self.fatal}); restart it"
            )
        batch._add(len(values))
        produce = self._producer.produce
        delivered = batch._delivered
        queued = 0
        try:
            for value in values:
                produce(topic, value, key, on_delivery=delivered)
                queued += 1
        except BufferError:
            batch._dropped(len(values) - queued, KafkaError(KafkaError._QUEUE_FULL).str())
            raise Backpressure(
                "the Kafka producer queue is full; retry once Kafka catches up"
            ) from None
        except Exception as exc:  # noqa: BLE001 - any produce failure fails the batch, not the process
            batch._dropped(len(values) - queued, str(exc))
            raise DeliveryFailed(f"could not queue a record for Kafka ({exc})") from None

    def produce_reject(
        self,
        batch: Batch,
        reject: Reject,
        producer: str,
        cluster: str,
        received_at_us: int | None = None,
    ) -> None:
        """Chain a reject: it goes to the raw topic like any event (docs/SCHEMAS.md), so what
        was refused is in the tamper-evident log, not only in a side topic."""
        datum = reject_event(
            reject, cluster, producer, now_us() if received_at_us is None else received_at_us
        )
        self.produce(
            batch, self.settings.topics.raw, cluster.encode("utf-8"), encode_audit_event(datum)
        )

    def check_connected(self, timeout: float = 2.0) -> bool:
        """Ask the cluster for the raw topic's metadata; updates and returns :attr:`connected`."""
        try:
            self._producer.list_topics(self.settings.topics.raw, timeout=timeout)
            self.connected = self.fatal is None
        except Exception:  # noqa: BLE001 - any failure means "not connected"
            self.connected = False
        return self.connected

    def queued(self) -> int:
        return len(self._producer)

    def flush(self, timeout: float) -> int:
        """Wait for every queued record; returns how many are still not acknowledged."""
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 30.0) -> int:
        left = self.flush(timeout)
        self._stop.set()
        self._thread.join()
        return left


def asyncio_batch(loop: asyncio.AbstractEventLoop) -> tuple[Batch, asyncio.Future[str | None]]:
    """A batch whose completion resolves an asyncio future (error text or None) on ``loop``."""
    future: asyncio.Future[str | None] = loop.create_future()

    def done(error: str | None) -> None:
        def resolve() -> None:
            if not future.done():
                future.set_result(error)

        loop.call_soon_threadsafe(resolve)

    return Batch(done), future
