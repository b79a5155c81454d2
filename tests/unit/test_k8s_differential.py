"""producers.k8s (msgspec) against the parser it replaced (tests/unit/k8s_reference.py, kept as a
reference model): the same datums and the same rejects, on the Falco samples, on generated audit
JSON and on malformed input.

Where the two may word a reason differently: the detail a JSON decoder gives for a syntax error
(the text in parentheses after "not valid JSON"); the kind and the rest of the sentence agree.
One documented difference (docs/PRODUCERS.md): a lone UTF-16 surrogate escape (``"\\ud800"``),
which no Kubernetes API server writes, is malformed JSON to msgspec; the reference took it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from producers import k8s
from schemas.codec import EncodeError, audit_generic_prefix, encode_audit_event
from sealtrail.infra.samples import K8S_AUDIT_SAMPLES
from tests.unit import k8s_reference as ref

CLUSTER = "prod-eu-1"
NOW = 1_732_000_000_000_000
SAMPLE_FILES = sorted(K8S_AUDIT_SAMPLES.glob("*.json"))
_DETAIL = re.compile(r"not valid JSON \(.*\)", re.S)


def _reason(text: str) -> str:
    return _DETAIL.sub("not valid JSON (...)", text)


def _rejects(rejects: list[k8s.Reject]) -> list[tuple[Any, ...]]:
    return [(r.kind, _reason(r.reason), r.raw, r.size, r.sha256) for r in rejects]


def _body(parse: Any, body: bytes, limit: int) -> tuple[Any, ...]:
    try:
        result = parse(body, CLUSTER, NOW, max_event_bytes=limit)
    except k8s.BadRequestBody as exc:
        return ("bad body", _reason(str(exc)))
    return ("parsed", result.events, _rejects(result.rejects))


def _line(parse: Any, line: bytes) -> tuple[Any, ...]:
    try:
        return ("datum", parse(line, CLUSTER, NOW))
    except k8s.RejectError as exc:
        return ("reject", exc.kind, _reason(exc.reason), exc.raw)


def _item(parse: Any, raw: bytes, in_list: bool) -> Any:
    out = parse(raw, CLUSTER, NOW, "audit.k8s.io/v1", in_list=in_list)
    return _rejects([out])[0] if isinstance(out, k8s.Reject) else out


def assert_same_body(body: bytes, limit: int = k8s.MAX_EVENT_BYTES) -> None:
    parsed = _body(k8s.parse_body, body, limit)
    assert parsed == _body(ref.parse_body, body, limit)
    # encode_body (the webhook's): the encoded datums and the same rejects, without datums.
    try:
        encoded = k8s.encode_body(body, CLUSTER, NOW, max_event_bytes=limit)
    except k8s.BadRequestBody as exc:
        assert parsed == ("bad body", _reason(str(exc)))
        return
    assert parsed[0] == "parsed"
    assert encoded.values == [encode_audit_event(datum) for datum in parsed[1]]
    assert _rejects(encoded.rejects) == parsed[2]


def assert_same_event(raw: bytes) -> None:
    line = _line(k8s.parse_line, raw)
    assert line == _line(ref.parse_line, raw)
    # encode_lines (the file shipper's): the encoded datum, or the reject parse_line raises.
    encoded = k8s.encode_lines([b"\n", raw + b"\r\n"], CLUSTER, NOW)
    if not raw.strip(b" \t\r\n"):
        assert encoded == []
    elif line[0] == "datum":
        assert encoded == [encode_audit_event(line[1])]
    else:
        assert len(encoded) == 1 and isinstance(encoded[0], k8s.Reject)
        assert ("reject", encoded[0].kind, _reason(encoded[0].reason), encoded[0].raw) == line
    for in_list in (True, False):
        assert _item(k8s.parse_item, raw, in_list) == _item(ref.parse_item, raw, in_list)


# ---------------------------------------------------------------------------------------------
# the Falco samples


def _sample_lines() -> list[bytes]:
    return [line for p in SAMPLE_FILES for line in p.read_bytes().split(b"\n") if line.strip()]


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_samples_same_as_reference(path: Path) -> None:
    data = path.read_bytes()
    assert_same_body(data)
    lines = [line for line in data.split(b"\n") if line.strip()]
    for line in lines:
        assert_same_event(line)
    listed = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[%s]}' % b",".join(lines)
    assert_same_body(listed)
    assert_same_body(listed, limit=300)  # some items over the limit


# ---------------------------------------------------------------------------------------------
# generated audit.k8s.io/v1 events

_odd_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from('\x00\x7f\u2028"\\'),
    max_size=10,
)
_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 80), 1 << 80)
    | st.sampled_from([0, -1, 200, (1 << 31) - 1, 1 << 31, -(1 << 31) - 1, 1 << 63, 1 << 64])
    | st.floats(allow_nan=False, allow_infinity=False)
    | _odd_text
)
_json = st.recursive(
    _scalar,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_odd_text, kids, max_size=3),
    max_leaves=8,
)


def _ts() -> st.SearchStrategy[str]:
    return st.builds(
        lambda d, frac, zone, t: d.strftime(f"%Y-%m-%d{t}%H:%M:%S") + frac + zone,
        st.datetimes(),
        st.sampled_from(["", ".1", ".123456", ".123456789", ".5000000001"]),
        st.sampled_from(["Z", "z", "+02:00", "-11:30", "+24:00", ""]),
        st.sampled_from(["T", "t", " "]),
    ) | st.sampled_from(["2024-02-30T00:00:00Z", "2024-01-01T24:00:00Z", "x"])


def _maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a well-typed value, sometimes anything."""
    return st.one_of(good, good, good, _json)


_strs = st.lists(_odd_text, max_size=3)
_good_ts = st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _event_strategy(
    maybe: Any, ts: st.SearchStrategy[str], valid: bool = False
) -> st.SearchStrategy[dict[str, Any]]:
    """Event-shaped dicts; ``maybe`` wraps each well-typed value's strategy (sometimes anything,
    or always well-typed); ``valid``: values the checks accept, too."""
    ok = (lambda good, _bad: good) if valid else (lambda good, bad: good | bad)
    user = st.fixed_dictionaries(
        {},
        optional={
            "username": maybe(_odd_text),
            "uid": maybe(_odd_text),
            "groups": maybe(_strs),
            "extra": maybe(st.dictionaries(_odd_text, st.none() | _strs, max_size=2)),
            "other": _json,
        },
    )
    ref = st.fixed_dictionaries(
        {},
        optional={
            k: maybe(_odd_text)
            for k in (
                "resource",
                "namespace",
                "name",
                "subresource",
                "apiGroup",
                "apiVersion",
                "uid",
            )
        },
    )
    code = st.integers(-(1 << 31), (1 << 31) - 1) | st.none()
    return st.fixed_dictionaries(
        {
            "auditID": maybe(ok(st.uuids().map(str), _odd_text)),
            "stage": maybe(
                ok(st.sampled_from(["ResponseComplete", "RequestReceived"]), st.just(""))
            ),
            "verb": maybe(ok(st.sampled_from(["get", "create"]), st.just(""))),
        },
        optional={
            "kind": maybe(ok(st.just("Event"), st.sampled_from(["EventList", "event"]))),
            "apiVersion": maybe(
                ok(
                    st.sampled_from(["audit.k8s.io/v1", "audit.k8s.io/v1beta1"]),
                    st.sampled_from(["v1", "audit.k8s.io/"]),
                )
            ),
            "level": maybe(_odd_text),
            "requestURI": maybe(_odd_text),
            "userAgent": maybe(_odd_text),
            "user": maybe(user),
            "impersonatedUser": maybe(user),
            "objectRef": maybe(ref),
            "responseStatus": maybe(st.fixed_dictionaries({}, optional={"code": maybe(code)})),
            "sourceIPs": maybe(_strs),
            "requestReceivedTimestamp": maybe(ts),
            "timestamp": maybe(ts),
            "stageTimestamp": maybe(ts),
            "annotations": maybe(st.dictionaries(_odd_text, _odd_text, max_size=3)),
            "requestObject": _json,
            "responseObject": _json,
            "metadata": _json,
        },
    )


# Anything goes, and (half the time) well-typed events, most of which are accepted.
_event = _event_strategy(_maybe, _ts()) | _event_strategy(lambda good: good, _good_ts, valid=True)


@st.composite
def _rendered(draw: st.DrawFn, value: Any, duplicates: bool = True) -> bytes:
    """``value`` as JSON text: key order shuffled, whitespace varied, sometimes a member twice
    (a decoder keeps the last) and sometimes a member escaped."""
    ascii_only = draw(st.booleans())
    ws = draw(st.sampled_from(["", " ", "\n  ", "\t", "\r\n"]))

    def dump(v: Any) -> str:
        return json.dumps(v, ensure_ascii=ascii_only, separators=("," + ws, ":" + ws))

    if not isinstance(value, dict):
        return dump(value).encode("utf-8")
    pairs = list(value.items())
    pairs = draw(st.permutations(pairs)) if pairs else pairs
    if duplicates and pairs and draw(st.integers(0, 4)) == 0:
        key, _v = draw(st.sampled_from(pairs))
        at = draw(st.integers(0, len(pairs)))
        pairs.insert(at, (key, draw(_json)))
    members = []
    for key, v in pairs:
        spelled = dump(key)
        # (a letter of the BMP below the surrogates: escaping it yields the same key)
        if draw(st.integers(0, 9)) == 0 and key and key[0].isalnum() and ord(key[0]) < 0xD800:
            spelled = f'"\\u{ord(key[0]):04x}' + dump(key)[2:]  # the first character escaped
        members.append(f"{spelled}{ws}:{ws}{dump(v)}")
    return ("{" + ws + ("," + ws).join(members) + ws + "}").encode("utf-8")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_events_same_as_reference(data: st.DataObject) -> None:
    raw = data.draw(_rendered(data.draw(_event)))
    assert_same_event(raw)
    assert_same_body(raw)
    assert_same_body(b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[%s]}' % raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    api=st.sampled_from(["audit.k8s.io/v1", "audit.k8s.io/v1beta1", "audit.k8s.io/v2", 1, None]),
    kind=st.sampled_from(["EventList", "Event", "List", None, 5]),
    limit=st.integers(50, 4000),
)
def test_generated_event_lists_same_as_reference(
    data: st.DataObject, api: Any, kind: Any, limit: int
) -> None:
    items = [
        data.draw(_rendered(event, duplicates=False)).decode("utf-8")
        for event in data.draw(st.lists(_event | _json, max_size=5))
    ]
    ws = data.draw(st.sampled_from(["", " ", "\n"]))
    members = [f'"items":{ws}[{ws}{("," + ws).join(items)}{ws}]']
    if kind is not None:
        members.append(f'"kind":{json.dumps(kind)}')
    if api is not None:
        members.append(f'"apiVersion":{json.dumps(api)}')
    if data.draw(st.booleans()):
        members.append('"metadata":{}')
    if data.draw(st.integers(0, 5)) == 0:
        members.append('"items":[]')  # a second items array
    order = data.draw(st.permutations(members))
    body = ("{" + ("," + ws).join(order) + "}").encode("utf-8")
    if data.draw(st.booleans()):
        body = b"\xef\xbb\xbf" + ws.encode() + body + ws.encode()
    assert_same_body(body, limit)


# ---------------------------------------------------------------------------------------------
# malformed input

_GOOD = _sample_lines()[0]
_LIST = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[%s,%s]}' % (_GOOD, _GOOD)


@settings(max_examples=400, deadline=None)
@given(cut=st.integers(0, len(_LIST)), junk=st.sampled_from([b"", b"\xff", b"\xc3", b"]", b"}"]))
def test_truncated_and_corrupted_bodies_same_as_reference(cut: int, junk: bytes) -> None:
    assert_same_body(_LIST[:cut] + junk)
    assert_same_event(_GOOD[: cut % (len(_GOOD) + 1)] + junk)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"[]",
        b"null",
        b'"EventList"',
        b"{}",
        b'{"kind":"EventList"}',
        b'{"kind":"EventList","items":null}',
        b'{"kind":"EventList","items":{}}',
        b'{"kind":"EventList","items":"x"}',
        b'{"kind":"EventList","items":[1,"a",null,[],true]}',
        b'{"kind":"EventList","items":[{}]}',
        b'{"kind":"EventList","apiVersion":"v1","items":[]}',
        b'{"kind":"EventList","apiVersion":7,"items":[]}',
        b'{"kind":"Pod","items":[]}',
        b'{"kind":7,"auditID":"a","stage":"s","verb":"v"}',
        b'{"kind":"EventList","items":[],"items":[]}',
        b'{"kind":"EventList","\\u0069tems":[],"items":[]}',
        b'{"kind":"EventList","items":[{"kind":"Event","auditID":"a","stage":"s","verb":"v"}],'
        b'"items":[]}',
        b'{"kind":"EventList","kind":"Event","auditID":"a","stage":"s","verb":"v"}',
        b'{"kind":"EventList","items":[]} x',
        b'{"kind":"EventList","items":[]}{}',
        b'{"kind":"EventList","items":[NaN]}',
        b'{"kind":"EventList","items":[{"kind":"Event","x":Infinity}]}',
        b'{"kind":"EventList","items":[{"a":1e400,"auditID":"a","stage":"s","verb":"v"}]}',
        b'{"kind":"EventList","items":[{"auditID":"\xff","stage":"s","verb":"v"}]}',
        b'{"kind":"EventList","items":[{"auditID":"a","stage":"s","verb":"v","auditID":""}]}',
        b'{"kind":"EventList","items":[{"auditID":5,"stage":"s","verb":"v","auditID":"a"}]}',
        b'{"kind":"EventList","items":[{"auditID":"a","stage":"s","verb":"v",'
        b'"responseStatus":{"code":200.0}}]}',
        b'{"kind":"EventList","items":[{"auditID":"a","stage":"s","verb":"v",'
        b'"responseStatus":{"code":true}}]}',
        b'{"kind":"EventList","items":[' + b"[" * 3000 + b"]" * 3000 + b"]}",
        b"\xef\xbb\xbf{}",
        b'{"a":"\x01"}',
    ],
)
def test_malformed_bodies_same_as_reference(body: bytes) -> None:
    assert_same_body(body)
    assert_same_event(body)


@example(raw=b'{"auditID":"\\ud800","stage":"s","verb":"v"}')
@example(raw=b'{"auditID":"a","stage":"s","verb":"v","x":"\\udc00"}')
@given(raw=st.just(b'{"auditID":"a","stage":"s","verb":"v","x":"\\ud800"}'))
def test_lone_surrogate_escape_is_malformed(raw: bytes) -> None:
    """The one difference from the reference (it took lone surrogates; one in a field it
    extracted then failed the Avro encoding): msgspec refuses them as malformed JSON."""
    out = k8s.parse_item(raw, CLUSTER, NOW, "")
    assert isinstance(out, k8s.Reject) and out.kind is k8s.RejectKind.MALFORMED
    with pytest.raises(k8s.BadRequestBody):
        k8s.parse_body(b'{"kind":"EventList","items":[%s]}' % raw, CLUSTER, NOW)


# ---------------------------------------------------------------------------------------------
# generic (SDK) events: the canonical JSON as json.dumps wrote it before msgspec


@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(_odd_text, min_size=5, max_size=5),
    attributes=st.dictionaries(_odd_text, _odd_text, max_size=4),
    timestamp=st.integers(-(1 << 63), (1 << 63) - 1) | st.integers(-(1 << 70), 1 << 70),
)
def test_generic_original_same_as_json_dumps(
    fields: list[str], attributes: dict[str, str], timestamp: int
) -> None:
    actor, action, resource, outcome, event_id = fields
    datum = k8s.generic_event(
        CLUSTER, actor, action, resource, outcome, attributes, timestamp, event_id
    )
    expected = json.dumps(
        {
            "action": action,
            "actor": actor,
            "attributes": attributes,
            "event_id": event_id,
            "outcome": outcome,
            "resource": resource,
            "timestamp_us": timestamp,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    assert datum["original"] == expected

    # The SDK's path: the same record, written without the datum (or the encoder's error).
    def direct() -> bytes:
        return k8s.encode_generic_event(
            audit_generic_prefix(CLUSTER),
            CLUSTER,
            actor,
            action,
            resource,
            outcome,
            attributes,
            timestamp,
            event_id,
            received_at_us=datum["received_at"],
        )

    if -(1 << 63) <= timestamp < 1 << 63:
        assert direct() == encode_audit_event(datum)
    else:
        with pytest.raises(EncodeError):
            encode_audit_event(datum)
        with pytest.raises(EncodeError):
            direct()
    assert datum == k8s.audit_event(
        CLUSTER,
        "generic",
        datum["received_at"],
        expected,
        audit_id=event_id,
        request_received_at=timestamp,
        stage_at=timestamp,
        actor=actor,
        action=action,
        resource=resource,
        outcome=outcome,
        attributes=attributes,
    )


# ---------------------------------------------------------------------------------------------
# timestamps: the cached Kubernetes form against the reference's regex


@settings(max_examples=500, deadline=None)
@given(
    minute=st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:")),
    tails=st.lists(
        st.tuples(
            st.text("0123456789a\u0661", min_size=2, max_size=2),
            st.sampled_from([".", ","]),
            st.text("0123456789\u00b2", min_size=6, max_size=6),
            st.sampled_from(["Z", "z", "Q"]),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_timestamps_same_as_reference(minute: str, tails: list[tuple[str, ...]]) -> None:
    for tail in tails * 2:  # the second time from the cache
        text = minute + "".join(tail)
        try:
            expected: int | None = ref.parse_timestamp(text)
        except ValueError:
            expected = None
        try:
            got: int | None = k8s.parse_timestamp(text)
        except ValueError:
            got = None
        assert got == expected, text
