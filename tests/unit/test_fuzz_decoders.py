"""Decoder fuzzing: whatever bytes arrive, decoders raise DecodeError (or UnknownFingerprint).

Covers schemas.codec (decode, decode_audit_event, decode_chained) and the sink's bulk decode
path (processors.sink.event_columns, storable(value_record(...))), which must turn bad payloads into
reject reasons. Any other exception type would crash a consumer loop on one bad record.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.integrity.record import HASH_SIZE, ChainedRecord
from processors.sink import event_columns
from processors.sink.rows import storable
from producers.k8s import parse_line
from schemas.chained import value_record
from schemas.codec import (
    AUDIT_EVENT,
    CHAINED_EVENT,
    MAGIC,
    decode,
    decode_audit_event,
    decode_chained,
    encode_audit_event,
    encode_chained,
)
from sealtrail.infra.errors import DecodeError, UnknownFingerprint
from tests.conftest import K8S_SAMPLES

Decoder = Callable[[bytes], Any]
DECODERS: dict[str, Decoder] = {
    "decode": lambda data: decode(data),
    "decode_audit_event": decode_audit_event,
    "decode_chained": decode_chained,
}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _audit_record() -> bytes:
    sample = next(iter(sorted(K8S_SAMPLES.glob("create_*.json"))))
    line = next(line for line in sample.read_bytes().splitlines() if line.strip())
    return encode_audit_event(parse_line(line, "cluster-a", 1_700_000_000_000_000))


def _chained_record() -> bytes:
    return encode_chained(
        {
            "chain": "cluster-a",
            "seq": 41,
            "prev_hash": b"\x11" * HASH_SIZE,
            "hash": b"\x22" * HASH_SIZE,
            "source_offset": 1234,
            "ingested_at": 1_700_000_000_000_000,
            "payload": _audit_record(),
        }
    )


AUDIT = _audit_record()
CHAINED = _chained_record()


def only_decode_errors(fn: Decoder, data: bytes) -> Any:
    """Run ``fn``; a DecodeError (incl. UnknownFingerprint) is fine, anything else fails."""
    try:
        return fn(data)
    except DecodeError as exc:
        message = str(exc)
        assert message and "\n" not in message, message  # one line for the operator
        return None


def test_valid_records_decode() -> None:
    assert decode_audit_event(AUDIT)["cluster"] == "cluster-a"
    assert decode_chained(CHAINED)["payload"] == AUDIT


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(name: str, data: bytes) -> None:
    only_decode_errors(DECODERS[name], data)


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(
    header=st.sampled_from([AUDIT_EVENT.header, CHAINED_EVENT.header]),
    tail=st.binary(max_size=4096),
)
def test_random_datum_after_a_known_header(name: str, header: bytes, tail: bytes) -> None:
    """The interesting case: the fingerprint is known, the datum is garbage."""
    only_decode_errors(DECODERS[name], header + tail)


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("which", ["audit", "chained"])
def test_every_truncation_is_a_decode_error(name: str, which: str) -> None:
    record = AUDIT if which == "audit" else CHAINED
    for length in range(len(record)):
        with pytest.raises(DecodeError):
            DECODERS[name](record[:length])


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_trailing_bytes_are_a_decode_error(name: str) -> None:
    record = AUDIT if name != "decode_chained" else CHAINED
    with pytest.raises(DecodeError, match="trailing"):
        DECODERS[name](record + b"\x00")


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("which", ["audit", "chained"])
def test_bit_flips_never_raise_anything_else(name: str, which: str) -> None:
    record = AUDIT if which == "audit" else CHAINED
    # Every bit of the header and the first 256 datum bytes, then a sample of the rest.
    rng = random.Random(7)
    positions = list(range(min(len(record), 266)))
    positions += rng.sample(range(266, len(record)), min(400, max(0, len(record) - 266)))
    for pos in positions:
        for bit in range(8):
            flipped = bytearray(record)
            flipped[pos] ^= 1 << bit
            only_decode_errors(DECODERS[name], bytes(flipped))


@FUZZ
@given(fp=st.binary(min_size=8, max_size=8), tail=st.binary(max_size=64))
def test_unknown_fingerprint(fp: bytes, tail: bytes) -> None:
    known = {AUDIT_EVENT.fingerprint, CHAINED_EVENT.fingerprint}
    data = MAGIC + fp + tail
    for fn in DECODERS.values():
        if fp in known:
            only_decode_errors(fn, data)
        else:
            with pytest.raises(UnknownFingerprint, match="unknown schema fingerprint"):
                fn(data)


def test_wrong_record_type_is_named() -> None:
    with pytest.raises(DecodeError, match="not an dev.sealtrail.AuditEvent|not a"):
        decode_audit_event(CHAINED)
    with pytest.raises(DecodeError, match="not a dev.sealtrail.ChainedEvent"):
        decode_chained(AUDIT)


# --------------------------------------------------------------------------------------------
# the sink's bulk decode path


def _chained(payload: bytes, seq: int) -> ChainedRecord:
    return ChainedRecord(
        "cluster-a", seq, b"\x00" * HASH_SIZE, b"\x01" * HASH_SIZE, seq, 5, payload
    )


@settings(max_examples=100, deadline=None)
@given(
    payloads=st.lists(
        st.one_of(
            st.binary(max_size=512),
            st.builds(lambda t: AUDIT_EVENT.header + t, st.binary(max_size=512)),
            st.builds(lambda n: AUDIT[:n], st.integers(0, len(AUDIT))),
            st.just(AUDIT),
            st.just(CHAINED),
        ),
        max_size=12,
    )
)
def test_event_columns_turns_bad_payloads_into_reasons(payloads: list[bytes]) -> None:
    records = [_chained(p, i) for i, p in enumerate(payloads)]
    columns, failed = event_columns(records)
    assert all(len(col) == len(records) for col in columns)
    failed_seqs = {record.seq for record, _reason in failed}
    for record in records:
        good = record.payload == AUDIT
        assert (record.seq not in failed_seqs) == good
    for _record, reason in failed:
        assert reason and "\n" not in reason


def test_event_columns_rejects_every_truncation_and_flip() -> None:
    bad = [AUDIT[:n] for n in range(len(AUDIT))]
    for pos in range(10, min(len(AUDIT), 200)):
        flipped = bytearray(AUDIT)
        flipped[pos] ^= 0x80
        bad.append(bytes(flipped))
    records = [_chained(p, i) for i, p in enumerate(bad)]
    columns, failed = event_columns(records)
    assert all(len(col) == len(records) for col in columns)
    # Every truncation fails; a flip may still decode (then it is a valid, different datum).
    assert {r.seq for r, _ in failed} >= set(range(len(AUDIT)))


def test_storable_records_on_fuzzed_chained_records_raises_only_decode_errors() -> None:
    rng = random.Random(11)
    variants = [CHAINED[:n] for n in range(len(CHAINED))]
    for _ in range(3000):
        flipped = bytearray(CHAINED)
        for _ in range(rng.randint(1, 3)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        variants.append(bytes(flipped))
    kept = 0
    for value in variants:
        try:
            record = storable(value_record(value))
        except DecodeError as exc:
            assert str(exc)
            continue
        kept += 1
        assert len(record.hash) == HASH_SIZE and record.seq >= 0
    assert 0 < kept < len(variants)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("seq", -1, "negative seq"),
        ("source_offset", -5, "negative seq"),
        ("hash", b"\x00" * 31, "not 32"),
        ("prev_hash", b"", "not 32"),
    ],
)
def test_storable_refuses_unstorable_fields(field: str, value: Any, match: str) -> None:
    datum = decode_chained(CHAINED)
    datum[field] = value
    with pytest.raises(DecodeError, match=match):
        storable(value_record(encode_chained(datum)))


# --------------------------------------------------------------------------------------------
# the sink's fast path: what parse_chained accepts, the full decoder reads the same way


def _agrees_with_decode_chained(value: bytes) -> None:
    from processors.sink_avro import AUDIT_HEADER, parse_chained

    parsed = parse_chained(value)
    if parsed is None:
        return
    chain, seq, start = parsed
    record = storable(value_record(value))  # must not raise
    assert (record.chain, record.seq, record.payload) == (chain, seq, value[start:])
    assert record.payload[:10] == AUDIT_HEADER


def test_parse_chained_reads_what_decode_chained_reads() -> None:
    from processors.sink_avro import parse_chained

    for seq in (0, 1, 63, 64, 8191, 8192, 1 << 40, (1 << 62) - 1):
        for offset in (0, 5, 1 << 33):
            for ingested in (-(1 << 61), -1, 0, 1_700_000_000_000_000):
                value = encode_chained(
                    {
                        "chain": "c/é",
                        "seq": seq,
                        "prev_hash": b"\x40" * HASH_SIZE,
                        "hash": b"\x80" * HASH_SIZE,
                        "source_offset": offset,
                        "ingested_at": ingested,
                        "payload": AUDIT,
                    }
                )
                assert parse_chained(value) is not None
                _agrees_with_decode_chained(value)
    assert parse_chained(CHAINED + b"\x00") is None  # trailing bytes
    assert parse_chained(CHAINED[:-1]) is None
    other = decode_chained(CHAINED) | {"payload": b"\xc3\x01" + b"\x00" * 8 + AUDIT[10:]}
    assert parse_chained(encode_chained(other)) is None  # another AuditEvent fingerprint
    negative = decode_chained(CHAINED) | {"seq": -1}
    assert parse_chained(encode_chained(negative)) is None


@pytest.mark.parametrize("which", ["flip", "truncate", "insert"])
def test_parse_chained_on_mutations_agrees_with_decode_chained(which: str) -> None:
    rng = random.Random(5)
    for _ in range(4000):
        value = bytearray(CHAINED)
        pos = rng.randrange(len(value))
        if which == "flip":
            value[pos] ^= 1 << rng.randrange(8)
        elif which == "truncate":
            del value[pos:]
        else:
            value[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        _agrees_with_decode_chained(bytes(value))


@FUZZ
@given(tail=st.binary(max_size=400))
def test_parse_chained_on_random_datums_agrees_with_decode_chained(tail: bytes) -> None:
    _agrees_with_decode_chained(CHAINED_EVENT.header + tail)
    _agrees_with_decode_chained(CHAINED[:120] + tail)
