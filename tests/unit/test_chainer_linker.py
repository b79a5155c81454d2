"""processors.chainer.linker: a run linked in one loop gives exactly the bytes of link() and
record_value() per record, and advances the head the same way."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.chainer.linker import ChainLinker
from processors.integrity.record import ChainHead, link
from schemas.chained import record_value, value_record
from sealtrail.infra.errors import SealtrailError


def reference(head: ChainHead, offsets: list[int], payloads: list[bytes], at: int) -> list[bytes]:
    return [record_value(link(head, o, at, p)) for o, p in zip(offsets, payloads, strict=True)]


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=80),
    st.integers(0, (1 << 63) - 1),
    st.lists(st.tuples(st.integers(0, (1 << 63) - 1), st.binary(max_size=300)), max_size=6),
    st.integers(-(1 << 63), (1 << 63) - 1),
)
def test_a_linked_run_equals_link_and_record_value(
    chain: str, seq: int, records: list[tuple[int, bytes]], at: int
) -> None:
    offsets = [o for o, _ in records]
    payloads = [p for _, p in records]
    ours = ChainHead(chain, seq, bytes(range(32)))
    theirs = ChainHead(chain, seq, bytes(range(32)))
    try:
        expected = reference(theirs, offsets, payloads, at)
    except SealtrailError as exc:  # a seq past the Avro long range: refused the same way
        with pytest.raises(type(exc)):
            ChainLinker(ours).link(offsets, payloads, at)
        return
    run = ChainLinker(ours).link(offsets, payloads, at)
    assert run.values == expected
    assert run.hashes == [value_record(v).hash for v in run.values]
    assert (ours.next_seq, ours.head_hash) == (theirs.next_seq, theirs.head_hash)


def test_runs_continue_one_chain() -> None:
    head = ChainHead("audit.events/3")
    linker = ChainLinker(head)
    first = linker.link([10, 11], [b"a", b"b"], 1_700_000_000_000_000)
    second = linker.link([12], [b"c"], 1_700_000_000_000_001)
    records = [value_record(v) for v in first.values + second.values]
    assert [r.seq for r in records] == [0, 1, 2]
    assert records[2].prev_hash == records[1].hash
    assert head.next_seq == 3 and head.head_hash == records[2].hash
