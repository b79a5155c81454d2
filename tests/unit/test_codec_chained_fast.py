"""The hand-written ChainedEvent reader (decode_chained_fields) against fastavro (decode_chained).

Both must accept and reject the same inputs and give the same fields. The one allowed
difference: the hand reader rejects varints longer than 64 bits, which fastavro wraps around.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import CHAINED_EVENT, decode_chained, decode_chained_fields, encode_chained
from sealtrail.errors import DecodeError

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONGS = st.integers(-(1 << 63), (1 << 63) - 1)
HEADER = CHAINED_EVENT.header
FIELDS = ("chain", "seq", "prev_hash", "hash", "source_offset", "ingested_at", "payload")


def zigzag(value: int) -> bytes:
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def agree(data: bytes) -> None:
    try:
        want = decode_chained(data)
    except DecodeError:
        want = None
    try:
        got = decode_chained_fields(data)
    except DecodeError as exc:
        if want is not None:
            assert "longer than 64 bits" in str(exc), (data.hex(), exc)
        return
    assert want is not None, data.hex()
    assert got == tuple(want.values())
    assert tuple(want) == FIELDS


datums = st.fixed_dictionaries(
    {
        "chain": st.text(max_size=20),
        "seq": LONGS,
        "prev_hash": st.binary(max_size=40),
        "hash": st.binary(max_size=40),
        "source_offset": LONGS,
        "ingested_at": LONGS,
        "payload": st.binary(max_size=300),
    }
)


@FUZZ
@given(datums)
def test_valid_records_decode_the_same(datum: dict[str, object]) -> None:
    data = encode_chained(datum)
    assert decode_chained_fields(data) == tuple(datum[name] for name in FIELDS)
    agree(data)


@FUZZ
@given(datums, st.data())
def test_mutated_records_agree(datum: dict[str, object], data: st.DataObject) -> None:
    raw = bytearray(encode_chained(datum))
    body = len(HEADER)
    for _ in range(data.draw(st.integers(1, 4))):
        what = data.draw(st.sampled_from(["flip", "cut", "insert", "append"]))
        at = data.draw(st.integers(body, max(body, len(raw) - 1)))
        if what == "flip" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        elif what == "cut":
            del raw[at:]
        elif what == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=12))
        else:
            raw += data.draw(st.binary(min_size=1, max_size=4))
    agree(bytes(raw))


@FUZZ
@given(st.binary(max_size=200))
def test_random_bodies_agree(body: bytes) -> None:
    agree(HEADER + body)


@FUZZ
@given(st.lists(st.integers(0, 255), min_size=1, max_size=14), st.booleans())
def test_odd_varints_agree(seq_bytes: list[int], terminate: bool) -> None:
    # Over-long, non-canonical and unterminated varints in the seq position.
    varint = bytes(seq_bytes)
    if terminate:
        varint = bytes(b | 0x80 for b in varint[:-1]) + bytes([varint[-1] & 0x7F])
    rest = zigzag(32) + bytes(32) + zigzag(32) + bytes(32) + zigzag(1) + zigzag(2) + zigzag(0)
    agree(HEADER + zigzag(1) + b"c" + varint + rest)


def test_negative_and_truncated_lengths_are_rejected() -> None:
    good = encode_chained(
        {
            "chain": "audit.events/0",
            "seq": 1,
            "prev_hash": bytes(32),
            "hash": bytes(32),
            "source_offset": 5,
            "ingested_at": 1_700_000_000_000_000,
            "payload": b"hello",
        }
    )
    for bad in (
        HEADER + zigzag(-1) + good[len(HEADER) + 1 :],
        good[:-1],
        good + b"\x00",
        good[: len(HEADER) + 3],
    ):
        agree(bad)
        try:
            decode_chained_fields(bad)
        except DecodeError:
            continue
        raise AssertionError(bad.hex())
