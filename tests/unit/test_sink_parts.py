"""Sink pieces without I/O: bulk decoding, the stored-seq tracker, checkpoint notes, kinds."""

from __future__ import annotations

import pytest

from processors.clickhouse_schema import EVENT_COLUMNS
from processors.integrity.checkpoint import Checkpoint
from processors.integrity.errors import MalformedCheckpoint
from processors.integrity.merkle import EMPTY_ROOT
from processors.integrity.record import ZERO_HASH, ChainHead, link
from processors.sink import SinkOptions, _Stored, event_columns, parse_checkpoint
from producers.k8s import parse_line
from schemas.codec import encode_audit_event
from sealtrail.commands.sink import resource_of
from sealtrail.errors import ConfigError
from tests.conftest import K8S_SAMPLES


def test_event_columns_decode_and_mark_undecodable() -> None:
    line = (K8S_SAMPLES / "delete_deployment.json").read_bytes()
    event = parse_line(line, "c1", 1_700_000_000_000_000)
    head = ChainHead("audit.events/0")
    good = link(head, 0, 5, encode_audit_event(event))
    bad = link(head, 1, 6, b"junk")
    columns, failed = event_columns([good, bad])
    row = dict(zip(EVENT_COLUMNS, (col[0] for col in columns), strict=True))
    assert row["decode_ok"] == 1 and row["user_name"] == "minikube-user"
    assert row["resource"] == "deployments" and row["response_code"] == 200
    assert row["event_time"] == event["stage_at"] and row["hash"] == good.hash
    other = dict(zip(EVENT_COLUMNS, (col[1] for col in columns), strict=True))
    assert other["decode_ok"] == 0 and other["user_name"] == "" and other["event_time"] == 6
    assert [(r.seq, "single-object" in e) for r, e in failed] == [(1, True)]


def test_stored_tracks_holes() -> None:
    stored = _Stored(contiguous=3, extra={5, 7})
    assert [stored.has(s) for s in range(9)] == [1, 1, 1, 0, 0, 1, 0, 1, 0]
    stored.add([3, 4])
    assert stored.contiguous == 6 and stored.extra == {7}
    stored.add([6])
    assert stored.contiguous == 8 and not stored.extra


def test_parse_checkpoint_note() -> None:
    cp = Checkpoint("d/audit.events/0", 0, EMPTY_ROOT, ZERO_HASH, 7)
    parsed, names = parse_checkpoint(cp.body() + "\n\u2014 k1 AAAA\n\u2014 k2 BBBB\n")
    assert parsed == cp and names == ["k1", "k2"]
    with pytest.raises(MalformedCheckpoint):
        parse_checkpoint("just text")


def test_kinds_map_to_resources() -> None:
    assert resource_of("deployment") == "deployments"
    assert resource_of("Deploy") == "deployments"
    assert resource_of("deployments.apps") == "deployments"
    assert resource_of("ingress") == "ingresses"
    assert resource_of("networkpolicy") == "networkpolicies"
    assert resource_of("widget") == "widgets"
    with pytest.raises(ConfigError, match="not a Kubernetes kind"):
        resource_of("a b")


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--batch-rows"):
        SinkOptions(batch_rows=0)
