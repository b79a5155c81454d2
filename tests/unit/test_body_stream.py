"""producers.body_stream: bodies fed in chunks parse as parse_body parses them, memory bounded."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.body_stream import BodySplitter, Item, Oversize, StreamParser
from producers.k8s import REJECT_KEEP_BYTES, BadRequestBody, Reject, parse_body
from tests.unit.test_k8s import _dump, _eventish, _good_lines, _items, _json

CLUSTER = "prod-eu-1"
NOW = 1_732_000_000_000_000


def _chunks(body: bytes, rng: random.Random, most: int = 64) -> list[bytes]:
    out, i = [], 0
    while i < len(body):
        n = rng.randint(1, most)
        out.append(body[i : i + n])
        i += n
    return out


def _streamed(
    body: bytes, chunks: list[bytes] | None = None, limit: int = 1 << 20
) -> tuple[list[dict[str, Any]], list[Reject]]:
    parser = StreamParser(CLUSTER, NOW, limit)
    outcomes: list[Any] = []
    for chunk in chunks if chunks is not None else [body]:
        outcomes += parser.feed(chunk)
    outcomes += parser.close()
    events = [o for o in outcomes if isinstance(o, dict)]
    rejects = [o for o in outcomes if isinstance(o, Reject)]
    return events, rejects


def _assert_same(body: bytes, chunks: list[bytes], limit: int = 1 << 20) -> None:
    try:
        whole = parse_body(body, CLUSTER, NOW, max_event_bytes=limit)
    except BadRequestBody:
        with pytest.raises(BadRequestBody):
            _streamed(body, chunks, limit)
        return
    events, rejects = _streamed(body, chunks, limit)
    assert events == whole.events
    assert [(r.raw, r.reason) for r in rejects] == [(r.raw, r.reason) for r in whole.rejects]


def _event_list(items: list[bytes], sep: bytes = b",") -> bytes:
    return (
        b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['
        + sep.join(items)
        + b"]}"
    )


def test_samples_in_one_byte_chunks_equal_the_whole_body_parse() -> None:
    lines = _good_lines()
    body = _event_list(lines, b" ,\n ")
    _assert_same(body, [body[i : i + 1] for i in range(len(body))])
    rng = random.Random(7)
    for _ in range(20):
        _assert_same(body, _chunks(body, rng, 4096))


def test_strings_full_of_structure_and_escapes_survive_any_split() -> None:
    tricky = json.dumps(
        {
            "kind": "Event",
            "auditID": 'a"}],{[\\',
            "stage": "ResponseComplete",
            "verb": "get",
            "annotations": {"x": '\\"}]{["\\\\', "é": "ü€𝄞"},
        },
        ensure_ascii=False,
    ).encode()
    body = _event_list([tricky, tricky])
    _assert_same(body, [body[i : i + 1] for i in range(len(body))])
    events, _ = _streamed(body, [body[i : i + 1] for i in range(len(body))])
    assert [e["original"] for e in events] == [tricky, tricky]


def test_single_event_and_items_before_kind() -> None:
    line = _good_lines()[0]
    _assert_same(line, [line[i : i + 3] for i in range(0, len(line), 3)])
    late_kind = (
        b'{"items":[' + line + b"," + line + b'],"apiVersion":"audit.k8s.io/v1","kind":"EventList"}'
    )
    _assert_same(late_kind, [late_kind[i : i + 5] for i in range(0, len(late_kind), 5)])
    assert len(_streamed(late_kind)[0]) == 2


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"[]",
        b'{"kind":"EventList","items":[{}',
        b'{"kind":"EventList","items":[]} x',
        b'{"kind":"EventList","items":[{},]}',
        b'{"kind":"EventList","apiVersion":"v9","items":[]}',
        b'{"kind":"Pod"}',
        b'{"kind":"EventList"}',
        b'{"kind":"EventList","items":"no"}',
    ],
)
def test_broken_bodies_are_bad_request_bodies(body: bytes) -> None:
    with pytest.raises(BadRequestBody):
        parse_body(body, CLUSTER, NOW)
    with pytest.raises(BadRequestBody):
        _streamed(body, [body[i : i + 2] for i in range(0, len(body), 2)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=_items,
    extra=st.dictionaries(st.sampled_from(["metadata", "apiVersion", "x"]), _json, max_size=2),
    indent=st.none() | st.integers(0, 3),
    ensure_ascii=st.booleans(),
    limit=st.integers(10, 4096),
    seed=st.integers(0, 1 << 30),
)
def test_random_event_lists_stream_as_they_parse_whole(
    items: list[Any],
    extra: dict[str, Any],
    indent: int | None,
    ensure_ascii: bool,
    limit: int,
    seed: int,
) -> None:
    body = _dump({**extra, "kind": "EventList", "items": items}, indent, ensure_ascii)
    rng = random.Random(seed)
    chunks = _chunks(body, rng)
    try:
        whole = parse_body(body, CLUSTER, NOW, max_event_bytes=limit)
    except BadRequestBody:
        with pytest.raises(BadRequestBody):
            _streamed(body, chunks, limit)
        return
    events, rejects = _streamed(body, chunks, limit)
    assert events == whole.events
    # An item over the limit is kept whole by parse_body and as a prefix + hash when streamed.
    assert len(rejects) == len(whole.rejects)
    for got, want in zip(rejects, whole.rejects, strict=True):
        assert got.reason == want.reason
        assert got.total_size == len(want.raw)
        assert got.digest == hashlib.sha256(want.raw).digest()
        assert want.raw.startswith(got.raw)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_json | _eventish, seed=st.integers(0, 1 << 30))
def test_random_single_values_stream_as_they_parse_whole(value: Any, seed: int) -> None:
    body = _dump(value, None, False)
    _assert_same(body, _chunks(body, random.Random(seed)))


def test_an_oversize_item_is_hashed_past_in_bounded_memory() -> None:
    small = _good_lines()[0]
    big_text = b"x" * (48 << 20)
    big = (
        b'{"kind":"Event","auditID":"big","stage":"RequestReceived","verb":"get","requestObject":"'
    )
    big += big_text + b'"}'
    body = _event_list([small, big, small])
    splitter = BodySplitter(max_item_bytes=4 << 20, keep_bytes=REJECT_KEEP_BYTES)
    pieces: list[Any] = []
    biggest = 0
    for i in range(0, len(body), 1 << 20):
        pieces += splitter.feed(body[i : i + (1 << 20)])
        biggest = max(biggest, len(splitter._buf))
    pieces += splitter.close()
    found = [p for p in pieces if isinstance(p, Item | Oversize)]
    assert found[0] == Item(small) and found[2] == Item(small)
    over = found[1]
    assert isinstance(over, Oversize)
    assert over.size == len(big) and over.sha256 == hashlib.sha256(big).digest()
    assert over.prefix == big[:REJECT_KEEP_BYTES]
    assert biggest < 8 << 20, f"the splitter held {biggest} bytes"


def test_a_single_oversize_event_is_parked_whole_in_bounded_memory() -> None:
    body = (
        b'{"kind":"Event","auditID":"big","stage":"RequestReceived","verb":"get",'
        b'"requestObject":{"data":"' + b"y" * (20 << 20) + b'"}}\n'
    )
    parser = StreamParser(CLUSTER, NOW, 4 << 20)
    outcomes: list[Any] = []
    biggest = 0
    for i in range(0, len(body), 1 << 20):
        outcomes += parser.feed(body[i : i + (1 << 20)])
        biggest = max(biggest, len(parser._splitter._buf))
    outcomes += parser.close()
    [reject] = outcomes
    assert isinstance(reject, Reject) and "over the 4194304 byte limit" in reject.reason
    assert reject.total_size == len(body) and reject.digest == hashlib.sha256(body).digest()
    assert reject.raw == body[:REJECT_KEEP_BYTES]
    assert biggest < 8 << 20, f"the splitter held {biggest} bytes"
