"""The KafkaError inside a KafkaException, and a one-line description of it."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

__all__ = ["describe", "kafka_error"]


def kafka_error(exc: KafkaException) -> KafkaError | None:
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


def describe(exc: KafkaException) -> str:
    err = kafka_error(exc)
    return err.str() if err is not None else str(exc)
