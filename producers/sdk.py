"""Emit generic (non-Kubernetes) audit events from Python code, with delivery confirmation.

>>> with Emitter("127.0.0.1:9092", cluster="billing") as audit:       # doctest: +SKIP
...     audit.emit(actor="alice", action="refund", resource="order/42", outcome="success")

``Emitter.emit`` returns a :class:`concurrent.futures.Future` completed when Kafka acknowledged
the event; ``flush()`` (also on leaving the ``with`` block) raises :class:`DeliveryFailed` if any
event was not acknowledged. :class:`AsyncEmitter` awaits the acknowledgement in ``emit``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError

from producers.k8s import encode_generic_event
from producers.kafka_writer import Batch, ConfirmedProducer, DeliveryFailed, now_us
from schemas.codec import EncodeError, audit_generic_prefix, encode_audit_event
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import SealtrailError

__all__ = ["AsyncEmitter", "DeliveryFailed", "Emitter", "InvalidEvent"]


class InvalidEvent(SealtrailError):
    """An event given to the SDK has a field of the wrong type or is not valid text."""


def _settings(settings_or_bootstrap: Settings | str) -> Settings:
    if isinstance(settings_or_bootstrap, Settings):
        return settings_or_bootstrap
    return Settings.from_env().with_(kafka=settings_or_bootstrap)


def _micros(timestamp: _dt.datetime | int | float | None) -> int:
    if timestamp is None:
        return now_us()
    if isinstance(timestamp, _dt.datetime):
        if timestamp.tzinfo is None:
            raise InvalidEvent("timestamp must be timezone-aware; use datetime.now(timezone.utc)")
        return int(timestamp.timestamp() * 1_000_000)
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        return timestamp
    if isinstance(timestamp, float):
        return int(timestamp * 1_000_000)  # seconds, as from time.time()
    raise InvalidEvent(
        f"timestamp must be a datetime, int microseconds or float seconds, not "
        f"{type(timestamp).__name__}"
    )


def _new_event_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` writes it, without building
    a UUID object (measured: 1.8 us instead of 5.9 us)."""
    b = bytearray(os.urandom(16))
    b[6] = b[6] & 0x0F | 0x40
    b[8] = b[8] & 0x3F | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Base:
    def __init__(
        self,
        settings_or_bootstrap: Settings | str,
        *,
        cluster: str,
        topic: str | None = None,
        **producer_overrides: Any,
    ) -> None:
        if not isinstance(cluster, str) or not cluster:
            raise InvalidEvent("cluster must be a non-empty string naming the source")
        self.settings = _settings(settings_or_bootstrap)
        self.cluster = cluster
        self.topic = topic or self.settings.topics.raw
        self._key = cluster.encode("utf-8")
        self._prefix = audit_generic_prefix(cluster)  # written once, not per event
        self._producer = ConfirmedProducer(self.settings, **producer_overrides)
        self._lock = threading.Lock()
        self._failed = 0
        self._last_error: str | None = None

    def _record_failure(self, error: str) -> None:
        with self._lock:
            self._failed += 1
            self._last_error = error

    def _encode(
        self,
        actor: str,
        action: str,
        resource: str,
        outcome: str,
        attributes: Mapping[str, str] | None,
        event_id: str | None,
        timestamp: _dt.datetime | int | float | None,
    ) -> bytes:
        try:
            return encode_generic_event(
                self._prefix,
                self.cluster,
                actor,
                action,
                resource,
                outcome,
                attributes,
                _micros(timestamp),
                event_id if event_id is not None else _new_event_id(),
            )
        except (TypeError, ValueError, EncodeError) as exc:
            raise InvalidEvent(f"cannot emit this event: {exc}; pass str fields") from None

    def _encode_event(self, event: Mapping[str, Any]) -> bytes:
        if not isinstance(event, Mapping):
            raise InvalidEvent("emit_event takes an AuditEvent dict (see schemas/audit_event.avsc)")
        # The cluster is the emitter's, never the caller's payload's.
        datum = {**event, "cluster": self.cluster}
        datum.setdefault("received_at", now_us())
        try:
            return encode_audit_event(datum, validate=True)
        except (TypeError, ValueError, EncodeError) as exc:
            raise InvalidEvent(f"cannot emit this AuditEvent: {exc}") from None

    def _check_flush(self, left: int) -> None:
        with self._lock:
            failed, error = self._failed, self._last_error
            self._failed, self._last_error = 0, None
        if left:
            raise DeliveryFailed(
                f"{left} event(s) were not acknowledged by Kafka at {self.settings.kafka} in time; "
                "check that it is up, then emit them again"
            )
        if failed:
            raise DeliveryFailed(
                f"{failed} event(s) were not stored by Kafka ({error}); emit them again"
            )


class Emitter(_Base):
    """Synchronous emitter; thread-safe. Use as a context manager to flush on exit."""

    def emit(
        self,
        *,
        actor: str,
        action: str,
        resource: str,
        outcome: str,
        attributes: Mapping[str, str] | None = None,
        event_id: str | None = None,
        timestamp: _dt.datetime | int | float | None = None,
    ) -> Future[None]:
        """Queue one event; the returned future completes when Kafka acknowledged it."""
        value = self._encode(actor, action, resource, outcome, attributes, event_id, timestamp)
        return self._send(value)

    def emit_event(self, event: Mapping[str, Any]) -> Future[None]:
        """Queue a full AuditEvent datum (``cluster`` is replaced by the emitter's)."""
        return self._send(self._encode_event(event))

    def _send(self, value: bytes) -> Future[None]:
        # One record, one delivery report: the future is completed from librdkafka's callback
        # directly (no Batch to count a single acknowledgement).
        future: Future[None] = Future()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                future.set_result(None)
            else:
                self._record_failure(err.str())
                future.set_exception(DeliveryFailed(f"Kafka did not store the event ({err.str()})"))

        self._producer.produce_record(self.topic, self._key, value, delivered)
        return future

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued event; raise :class:`DeliveryFailed` if any was not stored."""
        self._check_flush(self._producer.flush(timeout))

    def close(self, timeout: float = 30.0) -> None:
        try:
            self.flush(timeout)
        finally:
            self._producer.close(0)

    def __enter__(self) -> Emitter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncEmitter(_Base):
    """asyncio emitter: ``await emit(...)`` returns once Kafka acknowledged the event."""

    async def emit(
        self,
        *,
        actor: str,
        action: str,
        resource: str,
        outcome: str,
        attributes: Mapping[str, str] | None = None,
        event_id: str | None = None,
        timestamp: _dt.datetime | int | float | None = None,
    ) -> None:
        value = self._encode(actor, action, resource, outcome, attributes, event_id, timestamp)
        await self._send(value)

    async def emit_event(self, event: Mapping[str, Any]) -> None:
        await self._send(self._encode_event(event))

    async def _send(self, value: bytes) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()

        def done(error: str | None) -> None:
            def resolve() -> None:
                if not future.done():
                    future.set_result(error)

            loop.call_soon_threadsafe(resolve)

        batch = Batch(done)
        self._producer.produce(batch, self.topic, self._key, value)
        batch.seal()
        error = await future
        if error is not None:
            raise DeliveryFailed(f"Kafka did not store the event ({error}); emit it again")

    async def flush(self, timeout: float = 30.0) -> None:
        left = await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, timeout)
        self._check_flush(left)

    async def close(self, timeout: float = 30.0) -> None:
        try:
            await self.flush(timeout)
        finally:
            self._producer.close(0)

    async def __aenter__(self) -> AsyncEmitter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
