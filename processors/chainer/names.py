"""The chainer's names in Kafka: chain ids, its consumer group and its transactional ids.

Chain ids are built in one place, :mod:`processors.integrity.chains`; group names in
``Settings.groups``. This module only adds the transactional id.
"""

from __future__ import annotations

from processors.integrity.chains import chain_id
from sealtrail.infra.config import Settings

__all__ = ["chain_id", "group_id", "transactional_id"]


def group_id(settings: Settings) -> str:
    """The chainers' consumer group (``<prefix>sealtrail-chainer``)."""
    return settings.groups.chainer


def transactional_id(settings: Settings, instance_id: str) -> str:
    """``<group>-<instance id>``: one per instance, so a restarted instance fences its
    predecessor."""
    return f"{settings.groups.chainer}-{instance_id}"
