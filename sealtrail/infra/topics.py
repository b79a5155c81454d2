"""Create and check the append-only topics: raw events, chain, checkpoints, rejects."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable, TopicError
from sealtrail.infra.kafka import (
    MAX_RECORD_BYTES,
    admin,
    admin_conf,
    check_login,
    describe,
    is_refusal,
    refused,
)

MAX_MESSAGE_BYTES = MAX_RECORD_BYTES


def append_only_config(replication_factor: int) -> dict[str, str]:
    """Topic settings that keep every record forever and never elect an out-of-sync leader."""
    return {
        "cleanup.policy": "delete",
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "unclean.leader.election.enable": "false",
        "min.insync.replicas": str(2 if replication_factor >= 3 else 1),
        "max.message.bytes": str(MAX_MESSAGE_BYTES),
    }


@dataclass(frozen=True, slots=True)
class TopicState:
    name: str
    partitions: int
    created: bool


def unsafe_settings(config: dict[str, str]) -> list[str]:
    """What in a topic's config breaks the append-only promise, in words."""
    problems = []
    if "compact" in config.get("cleanup.policy", "delete"):
        problems.append(f"cleanup.policy={config['cleanup.policy']} (compaction deletes records)")
    for key in ("retention.ms", "retention.bytes"):
        if config.get(key, "-1") != "-1":
            problems.append(f"{key}={config[key]} (finite retention deletes records)")
    if config.get("unclean.leader.election.enable", "false") == "true":
        problems.append("unclean.leader.election.enable=true (can lose acknowledged records)")
    return problems


def init_topics(
    settings: Settings, partitions: int = 6, replication_factor: int = 1, timeout: float = 30.0
) -> list[TopicState]:
    """Create missing topics idempotently; refuse existing ones with unsafe settings."""
    if partitions < 1:
        raise TopicError("--partitions must be at least 1")
    if replication_factor < 1:
        raise TopicError("--replication-factor must be at least 1")
    check_login(settings, min(timeout, 10.0))
    client = admin(settings)
    names = settings.topics
    wanted = [names.raw, names.chain, names.checkpoints, names.rejects]
    try:
        # A short first request: an unreachable broker is reported in seconds, not in `timeout`.
        existing = client.list_topics(timeout=min(timeout, 10.0)).topics
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {settings.kafka} did not answer ({exc.args[0]}); "
            "start it with 'sealtrail stack up' or set SEALTRAIL_KAFKA"
        ) from None
    # The chain and checkpoint topics mirror the raw topic partition for partition.
    if names.raw in existing:
        partitions = len(existing[names.raw].partitions)
    missing = [name for name in wanted if name not in existing]
    if missing:
        config = append_only_config(replication_factor)
        futures = client.create_topics(
            [
                NewTopic(
                    n,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    config=config,
                )
                for n in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                error = exc.args[0]
                if error.name() == "TOPIC_ALREADY_EXISTS":
                    continue
                if is_refusal(error):
                    raise refused(settings, error, f"create topic {name}") from None
                raise TopicError(f"could not create topic {name}: {error.str()}") from None
        # The controller acknowledges creation before every broker's metadata shows the topics.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = client.list_topics(timeout=timeout).topics
            # Every partition needs a leader, or the first produce answers "not leader".
            if all(
                n in shown
                and not shown[n].error
                and all(part.leader >= 0 for part in shown[n].partitions.values())
                for n in wanted
            ):
                break
            time.sleep(0.1)
    _raise_record_limit(settings, [n for n in wanted if n not in missing], timeout)
    check_topics(settings, timeout=timeout)
    metadata = client.list_topics(timeout=timeout).topics
    return [TopicState(name, len(metadata[name].partitions), name in missing) for name in wanted]


def _record_limit(config: dict[str, str]) -> int:
    value = config.get("max.message.bytes", "")
    return int(value) if value.isdigit() else 0


def _raise_record_limit(settings: Settings, names: list[str], timeout: float) -> None:
    """Raise max.message.bytes of topics made before large events were chained (12 MiB)."""
    if not names:
        return
    client = admin(settings)
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    low = []
    for resource, future in client.describe_configs(resources, request_timeout=timeout).items():
        config = {k: e.value for k, e in future.result().items() if e.value is not None}
        if _record_limit(config) < MAX_MESSAGE_BYTES:
            low.append(resource.name)
    if not low:
        return
    entry = ConfigEntry(
        "max.message.bytes",
        str(MAX_MESSAGE_BYTES),
        incremental_operation=AlterConfigOpType.SET,
    )
    changes = [
        ConfigResource(ResourceType.TOPIC, name, incremental_configs=[entry]) for name in low
    ]
    for resource, future in client.incremental_alter_configs(
        changes, request_timeout=timeout
    ).items():
        try:
            future.result()
        except KafkaException as exc:
            raise TopicError(
                f"could not raise max.message.bytes of topic {resource.name} to "
                f"{MAX_MESSAGE_BYTES}: {describe(exc)}"
            ) from None


def check_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Raise :class:`TopicError` if a topic is missing, unsafe or out of step with the raw one."""
    check_login(settings, min(timeout, 10.0))
    client = admin(settings)
    names = settings.topics
    wanted = [names.raw, names.chain, names.checkpoints, names.rejects]
    try:
        metadata = client.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {settings.kafka} did not answer ({exc.args[0]}); "
            "start it with 'sealtrail stack up' or set SEALTRAIL_KAFKA"
        ) from None
    absent = [n for n in wanted if n not in metadata]
    errors = {name: metadata[name].error for name in wanted if name in metadata}
    errors |= _named_errors(settings, absent, timeout)
    for name in wanted:
        error = errors.get(name)
        if is_refusal(error):
            raise refused(settings, error, f"describe topic {name}")
    if absent:
        raise TopicError(f"topic(s) {', '.join(absent)} do not exist; run 'sealtrail topics init'")
    futures = client.describe_configs(
        [ConfigResource(ResourceType.TOPIC, name) for name in wanted], request_timeout=timeout
    )
    for resource, future in futures.items():
        entries = future.result()
        config = {key: entry.value for key, entry in entries.items() if entry.value is not None}
        problems = unsafe_settings(config)
        if problems:
            raise TopicError(
                f"topic {resource.name} is not append-only: {'; '.join(problems)}; "
                "fix it with kafka-configs or delete and recreate it with 'sealtrail topics init'"
            )
        if _record_limit(config) < MAX_MESSAGE_BYTES:
            raise TopicError(
                f"topic {resource.name} takes records of at most "
                f"{config.get('max.message.bytes', '?')} bytes, below the {MAX_MESSAGE_BYTES} "
                "that large audit events need; run 'sealtrail topics init' to raise it"
            )
    raw_partitions = len(metadata[names.raw].partitions)
    for name in (names.chain, names.checkpoints):
        if len(metadata[name].partitions) != raw_partitions:
            raise TopicError(
                f"topic {name} has {len(metadata[name].partitions)} partitions but {names.raw} "
                f"has {raw_partitions}; they must match partition for partition"
            )


def _named_errors(
    settings: Settings, names: list[str], timeout: float
) -> dict[str, KafkaError | None]:
    """The error of each topic in ``names``, asked for by name. A listing of every topic leaves
    out the topics this principal may not describe, so "not listed" may mean "not allowed"
    rather than "absent"; asked by name, the broker says which (TOPIC_AUTHORIZATION_FAILED or
    UNKNOWN_TOPIC_OR_PART). The question never creates a topic, whatever the broker's
    auto.create.topics.enable."""
    if not names:
        return {}
    probe = AdminClient(admin_conf(settings, **{"allow.auto.create.topics": False}))
    errors: dict[str, KafkaError | None] = {}
    for name in names:
        try:
            shown = probe.list_topics(topic=name, timeout=timeout).topics.get(name)
        except KafkaException:
            shown = None  # reported as absent, as before
        errors[name] = shown.error if shown is not None else None
    return errors


def partition_count(settings: Settings, topic: str, timeout: float = 10.0) -> int:
    try:
        metadata = admin(settings).list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"Kafka at {settings.kafka} did not answer ({exc.args[0]})"
        ) from None
    info = metadata.topics.get(topic)
    if info is not None and is_refusal(info.error):
        raise refused(settings, info.error, f"describe topic {topic}")
    if info is None or info.error is not None:
        raise TopicError(f"topic {topic} does not exist; run 'sealtrail topics init'")
    return len(info.partitions)
