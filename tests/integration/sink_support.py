"""Helpers for the sink tests (no tests here): write chained records the way the chainer does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from confluent_kafka import Producer

from processors.integrity.record import ChainHead, link
from producers.k8s import RejectError, parse_line
from schemas.chained import record_value
from schemas.codec import encode_audit_event
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import producer_conf
from tests.conftest import K8S_SAMPLES


def sample_events(cluster: str = "c1") -> list[dict[str, object]]:
    """Every event of the Falco sample files (lines the parser rejects are left out)."""
    events: list[dict[str, object]] = []
    for path in sorted(K8S_SAMPLES.glob("*.json")):
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                events.append(parse_line(line, cluster, 1_700_000_000_000_000 + len(events)))
            except RejectError:
                continue
    return events


def sample_payloads(cluster: str = "c1") -> list[bytes]:
    return [encode_audit_event(event) for event in sample_events(cluster)]


class ChainWriter:
    """Appends chained records to the chain topic in Kafka transactions, one head per partition."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.heads: dict[int, ChainHead] = {}
        self.offsets: dict[int, int] = {}
        self.producer = Producer(
            producer_conf(settings, **{"transactional.id": f"test-chain-{uuid.uuid4()}"})
        )
        self.producer.init_transactions(30)

    def append(self, partition: int, payloads: Iterable[bytes]) -> int:
        head = self.heads.setdefault(
            partition, ChainHead(f"{self.settings.topics.raw}/{partition}")
        )
        count = 0
        self.producer.begin_transaction()
        for payload in payloads:
            offset = self.offsets.get(partition, 0)
            self.offsets[partition] = offset + 1
            record = link(head, offset, time.time_ns() // 1000, payload)
            value = record_value(record)
            self.producer.produce(
                self.settings.topics.chain,
                key=record.chain.encode(),
                value=value,
                partition=partition,
            )
            count += 1
            if count % 5000 == 0:
                self.producer.poll(0)
        self.producer.commit_transaction(60)
        return count

    def checkpoint_note(self, partition: int, note: str) -> None:
        self.producer.begin_transaction()
        self.producer.produce(
            self.settings.topics.checkpoints,
            key=f"{self.settings.topics.raw}/{partition}".encode(),
            value=note.encode(),
            partition=partition,
        )
        self.producer.commit_transaction(30)
