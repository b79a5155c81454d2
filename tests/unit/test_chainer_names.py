"""The chainer's names in Kafka."""

from __future__ import annotations

from processors.chainer import chain_id, group_id, transactional_id
from sealtrail.infra.config import Settings


def test_names() -> None:
    settings = Settings(topic_prefix="p.")
    assert chain_id("p.audit.events", 3) == "p.audit.events/3"
    assert group_id(settings) == "p.sealtrail-chainer"
    assert group_id(Settings()) == "sealtrail-chainer"
    assert transactional_id(settings, "host-1") == "p.sealtrail-chainer-host-1"
