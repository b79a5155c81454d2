"""processors.integrity.chains: chain ids and origins built and taken apart in one place."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from processors.integrity import checkpoint
from processors.integrity.chains import (
    chain_id,
    chain_of_origin,
    origin_for,
    origin_names_chain,
    partition_of,
)


def test_chain_ids_include_the_topic_prefix() -> None:
    assert chain_id("audit.events", 3) == "audit.events/3"
    assert chain_id("prod-audit.events", 1) == "prod-audit.events/1"
    assert partition_of("prod-audit.events/1", "prod-audit.events") == 1
    assert partition_of("prod-audit.events/1", "audit.events") is None
    for bad in ("audit.events/", "audit.events/x", "audit.events/-1", "audit.events/01"):
        assert partition_of(bad, "audit.events") is None


@given(topic=st.text(min_size=1).filter(lambda t: "/" not in t), partition=st.integers(0, 10**6))
def test_partition_of_inverts_chain_id(topic: str, partition: int) -> None:
    assert partition_of(chain_id(topic, partition), topic) == partition


def test_chain_of_origin_inverts_origin_for() -> None:
    origin = origin_for("sealtrail.prod", "audit.events/2")
    assert chain_of_origin(origin, "sealtrail.prod") == "audit.events/2"
    assert chain_of_origin(origin, "other") is None


def test_origins_name_their_chain_whatever_the_deployment() -> None:
    assert checkpoint.origin_for is origin_for  # the checkpoint module re-exports it
    origin = origin_for("example.com/audit", "prod-audit.events/3")
    assert origin == "example.com/audit/prod-audit.events/3"
    assert origin_names_chain(origin, "prod-audit.events/3")
    assert not origin_names_chain(origin, "audit.events/3")  # another prefix
    assert not origin_names_chain(origin, "prod-audit.events/13")
