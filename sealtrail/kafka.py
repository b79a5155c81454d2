"""librdkafka configuration built from :class:`Settings`, and small admin helpers.

This is the only place where settings become librdkafka dicts.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from sealtrail.config import Settings, read_properties
from sealtrail.errors import KafkaUnavailable

MAX_RECORD_BYTES = 64 * 1024 * 1024
"""Largest record (value) on a sealtrail topic: the topics' max.message.bytes and the producers'
message.max.bytes. It holds an AuditEvent whose original is up to MAX_EVENT_LIMIT bytes plus
its extracted fields, inside a chain record; below the broker's 100 MiB request limit."""

MAX_EVENT_LIMIT = 48 * 1024 * 1024
"""The largest --max-event-bytes a producer may be given (room for the extracted fields)."""

RECEIVE_MAX_BYTES = 2 * MAX_RECORD_BYTES
"""librdkafka's receive.message.max.bytes: a fetch response holding one largest record."""


def _base(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {}
    if settings.kafka_config is not None:
        conf.update(read_properties(settings.kafka_config))
    conf["bootstrap.servers"] = settings.kafka
    # Errors are surfaced through callbacks and exceptions; librdkafka's own stderr lines would
    # otherwise repeat "connection refused" forever while the broker is down.
    conf.setdefault("log_level", 3)
    return conf


def admin_conf(settings: Settings, **overrides: Any) -> dict[str, Any]:
    conf = _base(settings)
    conf.update(overrides)
    return conf


def producer_conf(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """An idempotent, acks=all producer: nothing acknowledged is lost, nothing is duplicated."""
    conf = _base(settings)
    conf.update(
        {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": MAX_RECORD_BYTES,
        }
    )
    conf.update(overrides)
    return conf


def consumer_conf(settings: Settings, group: str, **overrides: Any) -> dict[str, Any]:
    """A read_committed consumer that never auto-commits: offsets move only after our work."""
    conf = _base(settings)
    conf.update(
        {
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "fetch.max.bytes": 52428800,
            # A fetch answer always holds the next record batch whole, however large.
            "receive.message.max.bytes": RECEIVE_MAX_BYTES,
        }
    )
    conf.update(overrides)
    return conf


def admin(settings: Settings) -> AdminClient:
    return AdminClient(admin_conf(settings))


def wait_for_cluster(settings: Settings, timeout: float = 10.0) -> int:
    """Return the number of brokers once the cluster answers a metadata request."""
    client = admin(settings)
    try:
        metadata = client.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {settings.kafka} did not answer within {timeout:.0f}s ({exc.args[0]}); "
            "start it with 'sealtrail stack up' or set SEALTRAIL_KAFKA to a reachable broker"
        ) from None
    return len(metadata.brokers)
