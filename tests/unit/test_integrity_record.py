"""Record hash vectors, chaining with link(), and every finding check_record() can raise."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import FrozenInstanceError, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.integrity.errors import (
    ChainBroken,
    HashMismatch,
    IntegrityError,
    MalformedRecord,
    SequenceGap,
    SequenceRepeat,
)
from processors.integrity.record import (
    HASH_SIZE,
    VERSION_TAG,
    ZERO_HASH,
    ChainedRecord,
    ChainHead,
    NextRecordCheck,
    check_record,
    link,
    record_hash,
)

H1 = bytes.fromhex("97af35e3528472c7357ee8590a22863955ac45dcfbb5a8a1697135807f247da2")
H2 = bytes.fromhex("0fdbc63ea6b915cd2b1241502e2fe57bc8ee34e083dda998844739132b802177")
H3 = bytes.fromhex("9078e1c80cb737ce1d8ef71e820cf80a88b89f3fc4980667b8c6c9dbe44091a6")


def naive_hash(chain: str, seq: int, prev: bytes, off: int, ts: int, payload: bytes) -> bytes:
    def enc(b: bytes) -> bytes:
        return struct.pack(">Q", len(b)) + b

    return hashlib.sha256(
        enc(VERSION_TAG)
        + enc(chain.encode())
        + struct.pack(">Q", seq)
        + enc(prev)
        + struct.pack(">Q", off)
        + struct.pack(">q", ts)
        + enc(payload)
    ).digest()


def test_constants() -> None:
    assert HASH_SIZE == 32 and ZERO_HASH == bytes(32) and VERSION_TAG == b"sealtrail/v1/record"


def test_vectors() -> None:
    assert record_hash("audit.events/0", 0, ZERO_HASH, 0, 1_700_000_000_000_000, b"") == H1
    assert record_hash("audit.events/0", 1, H1, 42, 1_700_000_000_123_456, b"hello") == H2
    assert (
        record_hash(
            "prod/\u00e9v\u00e9nements/7",
            2**63 - 1,
            bytes(range(32)),
            12345678901,
            -1,
            bytes(range(256)),
        )
        == H3
    )


@given(
    chain=st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
    seq=st.integers(0, 2**64 - 1),
    prev=st.binary(min_size=32, max_size=32),
    off=st.integers(0, 2**64 - 1),
    ts=st.integers(-(2**63), 2**63 - 1),
    payload=st.binary(max_size=300),
)
def test_matches_naive_definition(
    chain: str, seq: int, prev: bytes, off: int, ts: int, payload: bytes
) -> None:
    assert record_hash(chain, seq, prev, off, ts, payload) == naive_hash(
        chain, seq, prev, off, ts, payload
    )


def test_length_prefixing_prevents_field_shifting() -> None:
    a = record_hash("ab", 0, ZERO_HASH, 0, 0, b"c")
    b = record_hash("a", 0, ZERO_HASH, 0, 0, b"bc")
    assert a != b
    # same chain prefix cached across chains must not leak state
    assert record_hash("a", 0, ZERO_HASH, 0, 0, b"") != record_hash("b", 0, ZERO_HASH, 0, 0, b"")
    assert record_hash("a", 0, ZERO_HASH, 0, 0, b"") == naive_hash("a", 0, ZERO_HASH, 0, 0, b"")


@pytest.mark.parametrize(
    "args",
    [
        ("c", -1, ZERO_HASH, 0, 0, b""),
        ("c", 2**64, ZERO_HASH, 0, 0, b""),
        ("c", 0, ZERO_HASH, -1, 0, b""),
        ("c", 0, ZERO_HASH, 0, 2**63, b""),
        ("c", 0, bytes(31), 0, 0, b""),
        ("c", 0, bytes(33), 0, 0, b""),
        ("\ud800", 0, ZERO_HASH, 0, 0, b""),
    ],
)
def test_out_of_range_fields(args: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(MalformedRecord):
        record_hash(*args)


def make_chain(n: int, chain: str = "audit.events/0") -> list[ChainedRecord]:
    head = ChainHead(chain)
    return [link(head, 100 + i, 1_700_000_000_000_000 + i, f"event {i}".encode()) for i in range(n)]


def test_link_advances_head_and_checks() -> None:
    head = ChainHead("audit.events/0")
    assert head.next_seq == 0 and head.head_hash == ZERO_HASH
    r0 = link(head, 0, 1_700_000_000_000_000, b"")
    assert r0.hash == H1 and r0.seq == 0 and r0.prev_hash == ZERO_HASH
    assert head == ChainHead("audit.events/0", 1, H1)
    r1 = link(head, 42, 1_700_000_000_123_456, b"hello")
    assert r1.hash == H2 and r1.prev_hash == H1
    assert head == ChainHead.after(r1)
    with pytest.raises(FrozenInstanceError):
        r1.seq = 3  # type: ignore[misc]

    check = ChainHead("audit.events/0")
    for r in make_chain(20):
        check_record(r, check)
        check.advance(r)
    assert check.next_seq == 20


def expect(
    exc_type: type[IntegrityError],
    record: ChainedRecord,
    head: ChainHead,
    expected: object,
    found: object,
) -> IntegrityError:
    with pytest.raises(exc_type) as info:
        check_record(record, head)
    err = info.value
    assert isinstance(err, IntegrityError)
    assert (err.chain, err.seq, err.offset) == (record.chain, record.seq, record.source_offset)
    assert err.expected == expected and err.found == found
    assert err.exit_code == 1
    ev = err.evidence()
    assert ev["kind"] == exc_type.kind
    return err


def test_gap_repeat_broken_mismatch() -> None:
    recs = make_chain(5)
    head = ChainHead.after(recs[1])  # expecting seq 2
    expect(SequenceGap, recs[3], head, 2, 3)
    expect(SequenceRepeat, recs[1], head, 2, 1)
    expect(SequenceRepeat, recs[0], head, 2, 0)
    forged_link = replace(recs[2], prev_hash=recs[0].hash)
    expect(ChainBroken, forged_link, head, recs[1].hash, recs[0].hash)
    altered = replace(recs[2], payload=b"event X")
    err = expect(HashMismatch, altered, head, altered.recompute(), recs[2].hash)
    assert err.kind == "hash_mismatch"
    for changed in [replace(recs[2], source_offset=7), replace(recs[2], ingested_at_us=1)]:
        with pytest.raises(HashMismatch):
            check_record(changed, head)
    # a record rebuilt with a consistent hash but wrong link is still caught
    rehashed = replace(forged_link, hash=forged_link.recompute())
    with pytest.raises(ChainBroken):
        check_record(rehashed, head)


def test_wrong_chain_and_bad_hash_size() -> None:
    recs = make_chain(2)
    with pytest.raises(MalformedRecord):
        check_record(recs[0], ChainHead("audit.events/1"))
    with pytest.raises(MalformedRecord):
        check_record(replace(recs[0], hash=recs[0].hash[:31]), ChainHead("audit.events/0"))


def test_evidence_shows_hex() -> None:
    recs = make_chain(3)
    with pytest.raises(ChainBroken) as info:
        check_record(replace(recs[2], prev_hash=ZERO_HASH), ChainHead.after(recs[1]))
    ev = info.value.evidence()
    assert ev["expected"] == recs[1].hash.hex() and ev["found"] == "00" * 32
    assert ev["kind"] == "chain_broken" and ev["seq"] == 2 and ev["offset"] == 102


_tampers = st.sampled_from(
    ["none", "seq", "prev", "hash", "chain", "short_hash", "short_prev", "payload", "range"]
)


@given(n=st.integers(1, 6), tamper=_tampers, payload=st.binary(max_size=40))
def test_next_record_check_passes_exactly_what_check_record_accepts(
    n: int, tamper: str, payload: bytes
) -> None:
    head = ChainHead("audit.events/0")
    records = [link(head, i, 1_700_000_000_000_000 + i, payload + bytes([i])) for i in range(n)]
    last = records[-1]
    before = ChainHead("audit.events/0", last.seq, records[-2].hash if n > 1 else ZERO_HASH)
    changed = {
        "none": last,
        "seq": replace(last, seq=last.seq + 1),
        "prev": replace(last, prev_hash=bytes(32)),
        "hash": replace(last, hash=bytes(32)),
        "chain": replace(last, chain="audit.events/1"),
        "short_hash": replace(last, hash=last.hash[:31]),
        "short_prev": replace(last, prev_hash=last.prev_hash[:31]),
        "payload": replace(last, payload=last.payload + b"!"),
        "range": replace(last, ingested_at_us=1 << 64),
    }[tamper]
    try:
        check_record(changed, before)
        accepted = True
    except IntegrityError:
        accepted = False
    check = NextRecordCheck("audit.events/0")
    r = changed
    assert accepted == check.passes(
        r.chain, r.seq, r.prev_hash, r.hash, r.source_offset, r.ingested_at_us, r.payload,
        before.next_seq, before.head_hash,
    )  # fmt: skip
