"""producers.k8s: audit bodies and log lines -> AuditEvent datums with byte-exact originals."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.k8s import (
    REJECT_KEEP_BYTES,
    BadRequestBody,
    ParseResult,
    Reject,
    RejectError,
    RejectKind,
    generic_event,
    parse_body,
    parse_line,
    parse_timestamp,
    reject_event,
)
from schemas.codec import decode_audit_event, encode_audit_event
from sealtrail.infra.errors import DecodeError
from sealtrail.infra.samples import K8S_AUDIT_SAMPLES

SAMPLES = K8S_AUDIT_SAMPLES

SAMPLE_FILES = sorted(SAMPLES.glob("*.json"))
CLUSTER = "prod-eu-1"
NOW = 1_732_000_000_000_000


def _lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line.strip()]


def _good_lines() -> list[bytes]:
    return [
        line for path in SAMPLE_FILES if path.name != "fal_01_003.json" for line in _lines(path)
    ]


def test_samples_present() -> None:
    assert len(SAMPLE_FILES) >= 40


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_every_sample_line_parses(path: Path) -> None:
    lines = _lines(path)
    if path.name == "fal_01_003.json":
        assert lines == [b'{"kind": 0}']
        with pytest.raises(RejectError) as info:
            parse_line(lines[0], CLUSTER, NOW)
        assert "kind" in info.value.reason
        assert info.value.raw == lines[0]
        return
    expected = 6 if path.name == "create_configmap_sensitive_values.json" else 1
    assert len(lines) == expected
    for line in lines:
        event = parse_line(line, CLUSTER, NOW)
        assert event["original"] == line
        assert event["cluster"] == CLUSTER
        assert event["source"] == "k8s"
        assert event["received_at"] == NOW
        body = json.loads(line)
        assert event["audit_id"] == body["auditID"]
        assert event["verb"] == body["verb"]
        assert event["stage"] == body["stage"]
        assert event["api_version"] == body.get("apiVersion", "")
        assert event["user_name"] == body["user"]["username"]
        assert event["response_code"] == body.get("responseStatus", {}).get("code")
        assert event["stage_at"] == _ref_micros(body["stageTimestamp"])
        assert decode_audit_event(encode_audit_event(event, validate=True)) == event


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_every_single_event_file_as_a_body(path: Path) -> None:
    lines = _lines(path)
    if len(lines) != 1:
        return
    result = parse_body(path.read_bytes(), CLUSTER, NOW)  # trailing newlines included
    if path.name == "fal_01_003.json":
        assert result.events == []
        assert len(result.rejects) == 1
        assert result.rejects[0].raw == b'{"kind": 0}'
        assert 'kind must be "Event"' in result.rejects[0].reason
        return
    assert result.rejects == []
    assert [e["original"] for e in result.events] == lines


def test_sample_field_mapping() -> None:
    line = (SAMPLES / "exec_pod.json").read_bytes().strip()
    event = parse_line(line, CLUSTER, NOW)
    assert event["object_subresource"] == "exec"
    assert event["object_resource"] == "pods"
    assert event["object_namespace"] == "default"
    assert event["user_groups"] == ["system:masters", "system:authenticated"]
    assert event["source_ips"] == ["192.168.99.1"]
    assert event["response_code"] == 101
    assert event["request_received_at"] == 1_540_561_114_867_116
    assert event["annotations"]["authorization.k8s.io/decision"] == "allow"
    assert event["impersonated_user"] is None


def _event_list(items: list[bytes], sep: bytes = b",", api: bytes = b"audit.k8s.io/v1") -> bytes:
    return (
        b'{"kind":"EventList","apiVersion":"'
        + api
        + b'","metadata":{},"items":['
        + sep.join(items)
        + b"]}"
    )


def test_event_list_preserves_item_bytes_with_odd_whitespace() -> None:
    lines = _good_lines()[:8]
    # Re-space some items internally so a re-serialization could never reproduce them.
    original = [json.loads(line) for line in lines]
    lines[1] = lines[1].replace(b'":', b'" :\t').replace(b'","', b'" ,\n "')
    lines[2] = b'{ \r\n "kind" : "Event" , ' + lines[2][1:]
    assert [json.loads(line) for line in lines[:2]] == original[:2]
    body = (
        b' \r\n\t{ "apiVersion" :"audit.k8s.io/v1" ,\n "kind":\t"EventList" , "items" :\n[\n  '
        + b"\n ,\t\r\n".join(lines)
        + b'\n\n  ] , "metadata" : { } }\n\n'
    )
    result = parse_body(body, CLUSTER, NOW)
    assert result.rejects == []
    assert [e["original"] for e in result.events] == lines
    for event, line in zip(result.events, lines, strict=True):
        assert body.count(event["original"]) == 1
        assert event["audit_id"] == json.loads(line)["auditID"]


def test_event_list_items_without_kind_inherit_api_version() -> None:
    item = b'{"level":"Metadata","auditID":"x1","stage":"ResponseComplete","verb":"get"}'
    result = parse_body(_event_list([item, item], api=b"audit.k8s.io/v1beta1"), CLUSTER, NOW)
    assert len(result.events) == 2 and result.rejects == []
    assert result.events[0]["api_version"] == "audit.k8s.io/v1beta1"
    assert result.events[0]["original"] == item


def test_event_list_non_ascii_bytes_preserved() -> None:
    first = (
        '{"auditID":"ü1","stage":"ResponseComplete","verb":"get",'
        '"annotations":{"note":"café ☕ 🎉 \\u00e9"}}'
    ).encode()
    second = b'{"auditID":"a2","stage":"ResponseComplete","verb":"list"}'
    third = '{"auditID":"日本","stage":"Panic","verb":"delete","userAgent":"ß"}'.encode()
    result = parse_body(_event_list([first, second, third], b" , "), CLUSTER, NOW)
    assert [e["original"] for e in result.events] == [first, second, third]
    assert result.events[0]["annotations"]["note"] == "café ☕ 🎉 é"
    assert result.events[2]["user_agent"] == "ß"


def test_cluster_is_never_taken_from_the_body() -> None:
    item = b'{"kind":"Event","cluster":"evil","auditID":"a","stage":"Panic","verb":"get"}'
    assert parse_line(item, CLUSTER, NOW)["cluster"] == CLUSTER
    body = b'{"kind":"EventList","cluster":"evil","items":[' + item + b"]}"
    assert parse_body(body, CLUSTER, NOW).events[0]["cluster"] == CLUSTER


def test_empty_and_null_items() -> None:
    assert parse_body(_event_list([]), CLUSTER, NOW) == ParseResult()
    empty = parse_body(b'{"kind":"EventList","items":null}', CLUSTER, NOW)
    assert empty.events == [] and empty.rejects == []


def test_oversize_item_is_rejected() -> None:
    small = b'{"auditID":"s","stage":"Panic","verb":"get"}'
    big = b'{"auditID":"b","stage":"Panic","verb":"get","annotations":{"x":"' + b"y" * 300 + b'"}}'
    result = parse_body(_event_list([small, big, small]), CLUSTER, NOW, max_event_bytes=200)
    assert [e["original"] for e in result.events] == [small, small]
    assert result.rejects == [Reject(result.rejects[0].reason, big, kind=RejectKind.TOO_LARGE)]
    assert "200" in result.rejects[0].reason and str(len(big)) in result.rejects[0].reason
    with pytest.raises(RejectError, match="limit"):
        parse_line(b'{"kind":"Event",' + big[1:], CLUSTER, NOW, max_event_bytes=200)
    # the default limit (32 MiB) takes the events kube-apiserver sends whole (truncation off)
    large = b'{"auditID":"h","stage":"Panic","verb":"get","requestURI":"' + b"u" * 900_000 + b'"}'
    [event] = parse_body(_event_list([large]), CLUSTER, NOW).events
    assert event["original"] == large


BASE = {"kind": "Event", "auditID": "a", "stage": "ResponseComplete", "verb": "get"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kind": 0}, "kind"),
        ({"kind": "Pod"}, "kind"),
        ({"kind": None}, "kind is missing"),
        ({"auditID": None}, "auditID is missing"),
        ({"auditID": ""}, "auditID is missing"),
        ({"stage": None}, "stage is missing"),
        ({"verb": None}, "verb is missing"),
        ({"verb": 3}, "verb must be a string"),
        ({"apiVersion": "v1"}, "apiVersion"),
        ({"apiVersion": 1}, "apiVersion"),
        ({"user": []}, "user must be an object"),
        ({"user": {"username": 1}}, "user.username"),
        ({"user": {"groups": "system:masters"}}, "user.groups"),
        ({"user": {"groups": ["a", 1]}}, "user.groups"),
        ({"user": {"extra": {"k": "v"}}}, "user.extra"),
        ({"sourceIPs": "1.2.3.4"}, "sourceIPs"),
        ({"objectRef": {"namespace": False}}, "objectRef.namespace"),
        ({"responseStatus": {"code": "201"}}, "responseStatus.code"),
        ({"responseStatus": {"code": True}}, "responseStatus.code"),
        ({"responseStatus": {"code": 201.0}}, "responseStatus.code"),
        ({"responseStatus": {"code": 1 << 40}}, "responseStatus.code"),
        ({"stageTimestamp": "yesterday"}, "stageTimestamp"),
        ({"stageTimestamp": "2018-13-01T00:00:00Z"}, "stageTimestamp"),
        ({"stageTimestamp": "2018-02-30T00:00:00Z"}, "stageTimestamp"),
        ({"requestReceivedTimestamp": "2018-10-26T13:38:34"}, "requestReceivedTimestamp"),
        ({"requestReceivedTimestamp": 1540561114}, "requestReceivedTimestamp"),
        ({"annotations": {"a": 1}}, "annotations"),
        ({"annotations": ["a"]}, "annotations"),
        ({"impersonatedUser": "bob"}, "impersonatedUser"),
    ],
)
def test_item_problems_are_rejects(change: dict[str, Any], reason: str) -> None:
    item = {**BASE, **change}
    item = {k: v for k, v in item.items() if v is not None}
    raw = json.dumps(item).encode()
    with pytest.raises(RejectError) as info:
        parse_line(raw, CLUSTER, NOW)
    assert reason in info.value.reason
    assert info.value.raw == raw
    assert isinstance(info.value, DecodeError)
    # Same item inside an EventList: a Reject, the other item still accepted.
    ok = json.dumps(BASE).encode()
    result = parse_body(_event_list([ok, raw]), CLUSTER, NOW)
    if "kind is missing" in reason:  # list items may omit kind
        assert len(result.events) == 2
        return
    assert [e["original"] for e in result.events] == [ok]
    assert len(result.rejects) == 1 and reason in result.rejects[0].reason
    assert result.rejects[0].raw == raw


@pytest.mark.parametrize("item", [b"1", b"[]", b'"Event"', b"null", b"true", b"[{}]"])
def test_non_object_items_are_rejects(item: bytes) -> None:
    result = parse_body(_event_list([item]), CLUSTER, NOW)
    assert result.events == []
    assert result.rejects[0].raw == item and "JSON object" in result.rejects[0].reason


def test_optional_fields() -> None:
    item = {
        **BASE,
        "impersonatedUser": {"username": "bob", "groups": ["x"]},
        "user": {"username": "alice", "uid": "1", "extra": {"scopes": ["a", "b"]}},
        "objectRef": {"apiGroup": "rbac.authorization.k8s.io", "uid": "u"},
        "timestamp": "2018-10-26T13:38:34Z",
    }
    event = parse_line(json.dumps(item).encode(), CLUSTER, NOW)
    assert event["impersonated_user"] == "bob"
    assert event["user_extra"] == {"scopes": ["a", "b"]}
    assert event["user_uid"] == "1"
    assert event["object_api_group"] == "rbac.authorization.k8s.io"
    assert event["request_received_at"] == 1_540_561_114_000_000  # pre-v1 "timestamp"
    assert event["stage_at"] is None and event["response_code"] is None
    assert decode_audit_event(encode_audit_event(event, validate=True)) == event


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   \n",
        b"not json",
        b"\xff\xfe{}",
        b'{"kind":"EventList","items":["\xc3\x28"]}',
        b"[]",
        b'"x"',
        b"42",
        b"null",
        b"{",
        b'{"kind":"EventList","items":[{"auditID":"a"}',
        b'{"kind":"EventList","items":[]} {}',
        b'{"kind":"EventList","items":[]}]',
        b'{"kind":"EventList","items":{}}',
        b'{"kind":"EventList","items":"x"}',
        b'{"kind":"EventList"}',
        b'{"kind":"EventList","items":[],"items":[]}',
        b'{"kind":"EventList","apiVersion":"v1","items":[]}',
        b'{"kind":"EventList","apiVersion":3,"items":[]}',
        b'{"kind":"Pod","apiVersion":"v1"}',
        b'{"kind":"EventList","items":[NaN]}',
        b'{"kind":"Event","x":Infinity}',
        b'{"kind":"EventList","items":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
        b"{'kind':'Event'}",
        b'{"kind":"EventList","items":[1,]}',
        b'{"kind":"EventList",}',
    ],
)
def test_garbage_bodies(body: bytes) -> None:
    with pytest.raises(BadRequestBody) as info:
        parse_body(body, CLUSTER, NOW)
    message = str(info.value)
    assert message.endswith(".") and len(message) < 200


@pytest.mark.parametrize(
    "line",
    [b"", b"  \r\n", b"not json", b"\xff", b"[]", b'{"kind":"Event"} x', b'{"kind":"EventList"}'],
)
def test_bad_lines(line: bytes) -> None:
    with pytest.raises(RejectError):
        parse_line(line, CLUSTER, NOW)


def test_parse_line_strips_line_terminator() -> None:
    raw = json.dumps(BASE).encode()
    assert parse_line(raw + b"\r\n", CLUSTER, NOW)["original"] == raw


# ---------------------------------------------------------------------------------------------
# timestamps


def _ref_micros(text: str) -> int:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.000001Z", 1),
        ("1969-12-31T23:59:59.999999Z", -1),
        ("2018-10-26T13:38:34.867116Z", 1_540_561_114_867_116),
        ("2018-10-26T13:38:34.867116789Z", 1_540_561_114_867_116),
        ("2018-10-26T13:38:34.8Z", 1_540_561_114_800_000),
        ("2018-10-26t13:38:34z", 1_540_561_114_000_000),
        ("2018-10-26T15:38:34+02:00", 1_540_561_114_000_000),
        ("2018-10-26T08:08:34-05:30", 1_540_561_114_000_000),
        ("2000-02-29T00:00:00Z", 951_782_400_000_000),
    ],
)
def test_parse_timestamp_examples(text: str, micros: int) -> None:
    assert parse_timestamp(text) == micros


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2018-10-26",
        "2018-10-26T13:38:34",
        "2018-10-26 13:38:34Z",
        "2018-10-26T24:00:00Z",
        "2018-10-26T13:60:00Z",
        "2018-10-26T13:38:60Z",
        "2019-02-29T00:00:00Z",
        "2018-10-26T13:38:34.Z",
        "2018-10-26T13:38:34+2:00",
        "2018-10-26T13:38:34+24:00",
        "2018-10-26T13:38:34Z ",
        "٢٠١٨-10-26T13:38:34Z",
        "0000-01-01T00:00:00Z",
    ],
)
def test_parse_timestamp_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


@settings(max_examples=400, deadline=None)
@given(
    when=st.datetimes(
        min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.none()
    ),
    offset_minutes=st.integers(-23 * 60 - 59, 23 * 60 + 59),
    digits=st.integers(0, 9),
)
def test_parse_timestamp_matches_datetime(
    when: dt.datetime, offset_minutes: int, digits: int
) -> None:
    tz = dt.timezone(dt.timedelta(minutes=offset_minutes))
    aware = when.replace(tzinfo=tz)
    sign = "+" if offset_minutes >= 0 else "-"
    off = f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    frac = f"{when.microsecond:06d}000"[:digits]
    text = when.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + (f".{frac}" if digits else "") + off
    expected = (aware.replace(microsecond=0) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // (
        dt.timedelta(microseconds=1)
    ) + int(frac.ljust(6, "0")[:6] or "0")
    assert parse_timestamp(text) == expected


# ---------------------------------------------------------------------------------------------
# robustness (hypothesis)

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)

_event_keys = st.sampled_from(
    [
        "kind",
        "apiVersion",
        "auditID",
        "stage",
        "verb",
        "level",
        "user",
        "objectRef",
        "responseStatus",
        "stageTimestamp",
        "requestReceivedTimestamp",
        "annotations",
        "sourceIPs",
        "impersonatedUser",
    ]
)
_eventish = st.dictionaries(_event_keys, _json, max_size=10) | st.fixed_dictionaries(
    {"auditID": st.text(max_size=5), "stage": st.text(max_size=5), "verb": st.text(max_size=5)},
    optional={"kind": st.sampled_from(["Event", "EventList", 0]), "user": _json},
)
_items = st.lists(
    _eventish | _json | st.sampled_from(_good_lines()[:5]).map(json.loads), max_size=6
)


def _dump(value: Any, indent: int | None, ensure_ascii: bool) -> bytes:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=_json | _eventish,
    indent=st.none() | st.integers(0, 3),
    ensure_ascii=st.booleans(),
)
def test_random_json_only_bad_request_body(
    value: Any, indent: int | None, ensure_ascii: bool
) -> None:
    try:
        result = parse_body(_dump(value, indent, ensure_ascii), CLUSTER, NOW)
    except BadRequestBody:
        return
    assert len(result.events) + len(result.rejects) == 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=_items,
    extra=st.dictionaries(st.sampled_from(["metadata", "apiVersion", "x"]), _json, max_size=2),
    indent=st.none() | st.integers(0, 3),
    ensure_ascii=st.booleans(),
    limit=st.integers(10, 100 * 1024),
)
def test_random_event_lists_account_for_every_item(
    items: list[Any], extra: dict[str, Any], indent: int | None, ensure_ascii: bool, limit: int
) -> None:
    body = _dump({**extra, "kind": "EventList", "items": items}, indent, ensure_ascii)
    try:
        result = parse_body(body, CLUSTER, NOW, max_event_bytes=limit)
    except BadRequestBody:
        api = extra.get("apiVersion")
        assert "apiVersion" in extra and api not in ("audit.k8s.io/v1", "audit.k8s.io/v1beta1")
        return
    assert len(result.events) + len(result.rejects) == len(items)
    originals = [e["original"] for e in result.events] + [r.raw for r in result.rejects]
    for raw in originals:
        assert raw in body
        json.loads(raw)  # each original is exactly one JSON value
    for event in result.events:
        encode_audit_event(event, validate=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_bad_request_body(body: bytes) -> None:
    try:
        parse_body(body, CLUSTER, NOW)
    except BadRequestBody:
        pass
    try:
        parse_line(body, CLUSTER, NOW)
    except RejectError:
        pass


# ---------------------------------------------------------------------------------------------
# generic events


def test_generic_event() -> None:
    event = generic_event(
        CLUSTER,
        "alice",
        "login",
        "console",
        "success",
        {"ip": "10.0.0.1"},
        1_000,
        "ev-1",
        received_at_us=2_000,
    )
    assert event["source"] == "generic" and event["cluster"] == CLUSTER
    assert event["audit_id"] == "ev-1" and event["actor"] == "alice"
    assert event["stage_at"] == 1_000 and event["received_at"] == 2_000
    assert json.loads(event["original"]) == {
        "action": "login",
        "actor": "alice",
        "attributes": {"ip": "10.0.0.1"},
        "event_id": "ev-1",
        "outcome": "success",
        "resource": "console",
        "timestamp_us": 1_000,
    }
    assert b" " not in event["original"]
    assert decode_audit_event(encode_audit_event(event, validate=True)) == event
    again = generic_event(
        CLUSTER, "alice", "login", "console", "success", {"ip": "10.0.0.1"}, 1_000, "ev-1"
    )
    assert again["original"] == event["original"]
    assert again["received_at"] > 1_700_000_000_000_000


@pytest.mark.parametrize(
    "bad",
    [
        {"actor": 1},
        {"attributes": {"a": 1}},
        {"attributes": ["a"]},
        {"timestamp_us": 1.5},
        {"event_id": None},
    ],
)
def test_generic_event_type_errors(bad: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "cluster": CLUSTER,
        "actor": "a",
        "action": "b",
        "resource": "c",
        "outcome": "d",
        "attributes": None,
        "timestamp_us": 1,
        "event_id": "e",
    }
    args.update(bad)
    with pytest.raises(TypeError):
        generic_event(**args)


def test_datum_keys_are_the_schema_fields_in_order() -> None:
    """The one spelling of the AuditEvent keys is the schema's, and every builder uses it."""
    from producers import k8s

    schema = json.loads(
        (Path(k8s.__file__).parents[1] / "schemas" / "audit_event.avsc").read_text()
    )
    fields = [f["name"] for f in schema["fields"]]
    assert list(k8s.audit_event("c", "k8s", 1, b"{}")) == fields
    assert list(generic_event("c", "a", "b", "r", "o", None, 1, "id", received_at_us=2)) == fields
    parsed = parse_body((K8S_AUDIT_SAMPLES / "attach_pod.json").read_bytes(), "c", 1)
    assert parsed.events and not parsed.rejects
    for datum in parsed.events:  # the fast path's datum
        assert list(datum) == fields
    with pytest.raises(TypeError, match="no field"):
        k8s.audit_event("c", "k8s", 1, b"{}", verbb="get")


def test_reject_event_chains_what_was_refused_and_proves_it_by_hash() -> None:
    small = reject_event(Reject("bad", b"abc"), "c1", "file", 5)
    assert small["source"] == "reject" and small["cluster"] == "c1" and small["actor"] == "file"
    assert small["original"] == b"abc" and small["received_at"] == 5
    digest = hashlib.sha256(b"abc").hexdigest()
    assert small["audit_id"] == f"reject:{digest}"
    assert small["attributes"] == {
        "kind": "other",
        "reason": "bad",
        "bytes": "3",
        "sha256": digest,
        "truncated": "false",
    }
    body = b"x" * (REJECT_KEEP_BYTES + 10)
    kept = Reject("too big", body[:REJECT_KEEP_BYTES], len(body), hashlib.sha256(body).digest())
    big = reject_event(kept, "c1", "webhook", 5)
    assert big["original"] == body[:REJECT_KEEP_BYTES]
    assert big["attributes"]["bytes"] == str(len(body))
    assert big["attributes"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert big["attributes"]["truncated"] == "true"
    # a reject is an ordinary AuditEvent datum: it is encoded, chained and loaded like one
    assert decode_audit_event(encode_audit_event(big, validate=True)) == big


def test_rejects_carry_their_kind_from_where_they_were_refused() -> None:
    def kinds(items: list[bytes], limit: int = 200) -> list[RejectKind]:
        body = b'{"kind":"EventList","items":[' + b",".join(items) + b"]}"
        return [r.kind for r in parse_body(body, "c1", 0, max_event_bytes=limit).rejects]

    good = b'{"auditID":"a","stage":"Panic","verb":"get"}'
    assert kinds([good[:-1] + b',"x":"' + b"y" * 300 + b'"}']) == [RejectKind.TOO_LARGE]
    assert kinds([b'{"stage":"Panic","verb":"get"}']) == [RejectKind.MISSING_FIELD]
    assert kinds([b'{"kind":0,"auditID":"a","stage":"Panic","verb":"get"}']) == [
        RejectKind.WRONG_TYPE
    ]
    assert kinds([b"17"]) == [RejectKind.WRONG_TYPE]
    with pytest.raises(RejectError) as info:
        parse_line(b"{not json", "c1", 0)
    assert info.value.kind == RejectKind.MALFORMED
    assert set(RejectKind) == {
        "too_large", "malformed", "missing_field", "wrong_type", "bad_body", "other"
    }  # fmt: skip
