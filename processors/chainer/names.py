"""The chainer's names in Kafka: chain ids, its consumer group and its transactional ids."""

from __future__ import annotations

from sealtrail.config import Settings

__all__ = ["GROUP", "chain_id", "group_id", "transactional_id"]

GROUP = "sealtrail-chainer"


def chain_id(raw_topic: str, partition: int) -> str:
    """The chain of raw partition ``partition``: ``"<raw topic>/<partition>"``."""
    return f"{raw_topic}/{partition}"


def group_id(settings: Settings) -> str:
    # The topic prefix separates deployments sharing a cluster (and tests sharing a broker).
    return f"{settings.topic_prefix}{GROUP}"


def transactional_id(settings: Settings, instance_id: str) -> str:
    return f"{settings.topic_prefix}{GROUP}-{instance_id}"
