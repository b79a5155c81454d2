"""librdkafka configuration built from :class:`Settings`, and small admin helpers.

This is the only place where settings become librdkafka dicts.
"""

from __future__ import annotations

import logging
import time
from typing import Any, TypeGuard

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from sealtrail.infra.config import ENV_KAFKA_CONFIG, Settings, read_properties
from sealtrail.infra.errors import KafkaAuthenticationFailed, KafkaNotAuthorized, KafkaUnavailable

# Broker answers that mean "your principal may not do this": an ACL is missing.
AUTHORIZATION_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)
AUTHENTICATION_CODES = frozenset(
    {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
)

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
            # Once the prefetch queue is full, fetch again this soon after it drains; librdkafka
            # waits 1 s by default, which stalled any consumer slower than the broker (the
            # verifier's replay spent more time waiting for fetches than checking records).
            "fetch.queue.backoff.ms": 10,
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


def _who(settings: Settings | None) -> str:
    """The client's identity in words (the user name only, never the password)."""
    if settings is None:
        return "this client"
    if settings.kafka_config is None:
        return f"a client without credentials (no {ENV_KAFKA_CONFIG})"
    user = read_properties(settings.kafka_config).get("sasl.username")
    if user:
        return f"user {user} ({settings.kafka_config})"
    return f"the client of {settings.kafka_config} (no sasl.username)"


def kafka_error(exc: KafkaException) -> KafkaError | None:
    """The KafkaError a KafkaException carries (None if it carries something else)."""
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


def describe(exc: KafkaException) -> str:
    """A KafkaException in one line."""
    err = kafka_error(exc)
    return err.str() if err is not None else str(exc)


def is_refusal(error: object) -> TypeGuard[KafkaError]:
    """True if ``error`` (a KafkaError) is the broker refusing an operation or the login."""
    return isinstance(error, KafkaError) and (
        error.code() in AUTHORIZATION_CODES or error.code() in AUTHENTICATION_CODES
    )


def refused(settings: Settings | None, error: KafkaError, action: str) -> KafkaUnavailable:
    """The one-sentence error for a refused ``action`` (e.g. "write topic audit.events")."""
    if error.code() in AUTHENTICATION_CODES and settings is not None:
        return authentication_failed(settings, error.str())
    where = f" at {settings.kafka}" if settings is not None else ""
    if error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED and "group" not in action:
        action += " with its consumer group id"
    return KafkaNotAuthorized(
        f"Kafka{where} refused to let {_who(settings)} {action} "
        f"({error.str()}); use the Kafka client file of the role that does this "
        "(docs/SECURITY.md lists each role's ACLs)"
    )


def authentication_failed(settings: Settings, detail: str) -> KafkaAuthenticationFailed:
    if settings.kafka_config is None:
        hint = (
            f"set {ENV_KAFKA_CONFIG} (or --kafka-config) to the client file of a role, with "
            "security.protocol, sasl.username and sasl.password"
        )
    else:
        hint = (
            f"check security.protocol, sasl.username and sasl.password in {settings.kafka_config}"
        )
    return KafkaAuthenticationFailed(
        f"Kafka at {settings.kafka} refused the login of {_who(settings)} ({detail}); {hint}"
    )


def check_login(settings: Settings, timeout: float = 10.0) -> None:
    """Raise a one-sentence error if Kafka refuses this client's credentials or protocol.

    librdkafka does not fail calls on a refused login: it retries and the calls time out as if
    the broker were down. This asks for metadata once and listens to the client's error
    callback instead. An unreachable cluster passes: callers handle (and may wait out) that.
    """
    seen: list[KafkaError] = []
    hangups = _HangupCounter()
    # librdkafka's log lines come to ``hangups`` (served by poll), not to stderr: the refusal is
    # reported once, here, not as a log line per retry.
    logger = logging.getLogger("sealtrail.infra.kafka.login")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.handlers = [hangups]
    client = AdminClient(admin_conf(settings, error_cb=seen.append, logger=logger, log_level=6))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            return
        except KafkaException:
            pass
        client.poll(0)
        for error in seen:
            if error.code() in AUTHENTICATION_CODES:
                raise authentication_failed(settings, error.str()) from None
        if hangups.refused >= 2:
            return  # nobody listens there: the caller reports an unreachable cluster its way
        if hangups.count >= 2:
            # A plaintext or TLS-only client at a SASL_SSL listener: the broker hangs up at once.
            raise authentication_failed(
                settings, "the broker closed every connection before login"
            ) from None


class _HangupCounter(logging.Handler):
    """Counts librdkafka log lines saying the broker closed a fresh connection on us."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.refused = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "closed by peer" in text and ("APIVERSION_QUERY" in text or "state UP" in text):
            self.count += 1
        elif "Connection refused" in text:
            self.refused += 1
