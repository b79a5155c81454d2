"""The transaction guard's error policy against the real broker: aborts rewind, then stop."""

from __future__ import annotations

import os

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable
from sealtrail.infra.kafka import admin
from tests.integration.chainer_support import (
    chain_records,
    chainer_failures_logged,
    check_chain,
    produce_raw,
    run_chainer,
)


def test_persistent_abort_rewinds_then_stops(settings: Settings) -> None:
    produce_raw(settings, [(0, b"small-%d" % i) for i in range(10)])
    run_chainer(settings)
    # the chain topic now refuses what the raw topic accepted: every transaction must abort
    resource = ConfigResource(
        ResourceType.TOPIC,
        settings.topics.chain,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes",
                "100000",
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    client = admin(settings)
    for future in client.incremental_alter_configs([resource]).values():
        future.result(30)
    produce_raw(settings, [(0, b"after"), (0, os.urandom(200_000))])
    with pytest.raises(KafkaUnavailable, match="transactions in a row failed") as info:
        run_chainer(settings, batch_records=10)
    assert chainer_failures_logged(info.value)
    records = chain_records(settings, 0)
    assert [r.payload for r in records] == [b"small-%d" % i for i in range(10)]
    # once the topic accepts it again, the same raw records are chained, once each
    resource = ConfigResource(
        ResourceType.TOPIC,
        settings.topics.chain,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes",
                str(1024 * 1024),
                incremental_operation=AlterConfigOpType.SET,
            )
        ],
    )
    client = admin(settings)
    for future in client.incremental_alter_configs([resource]).values():
        future.result(30)
    chainer = run_chainer(settings)
    assert chainer.stats.records == 2
    assert len(check_chain(settings, 0)) == 12
