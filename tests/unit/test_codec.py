"""schemas.codec: Avro single-object encoding, fingerprints, registry, evolution, robustness."""

from __future__ import annotations

import copy
import io
import json
from importlib import resources
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.codec import (
    AUDIT_EVENT,
    CHAINED_EVENT,
    EncodeError,
    decode,
    decode_audit_event,
    decode_chained,
    decode_chained_fields,
    encode,
    encode_audit_event,
    encode_chained,
    fingerprint_of,
    register,
)
from sealtrail.infra.errors import ConfigError, DecodeError, SealtrailError, UnknownFingerprint

LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1

# ---------------------------------------------------------------------------------------------
# An independent implementation of the Avro spec's fingerprinting, for checking the codec.

_EMPTY64 = 0xC15D213AA4D7A795  # the spec's CRC-64-AVRO "empty" value


def _crc64_avro(data: bytes) -> bytes:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _pcf(schema: Any, namespace: str = "") -> str:
    """Parsing Canonical Form for the subset of Avro the sealtrail schemas use (spec rules:
    PRIMITIVES, FULLNAMES, STRIP, ORDER, STRINGS, WHITESPACE)."""
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return json.dumps(schema)
        full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
        return json.dumps(full)
    if isinstance(schema, list):
        return "[" + ",".join(_pcf(s, namespace) for s in schema) + "]"
    kind = schema["type"]
    if kind in _PRIMITIVES:  # e.g. {"type": "long", "logicalType": ...}
        return json.dumps(kind)
    if kind == "array":
        return '{"type":"array","items":' + _pcf(schema["items"], namespace) + "}"
    if kind == "map":
        return '{"type":"map","values":' + _pcf(schema["values"], namespace) + "}"
    if kind == "record":
        name = schema["name"]
        ns = schema.get("namespace", namespace)
        full = name if "." in name else (f"{ns}.{name}" if ns else name)
        ns = full.rsplit(".", 1)[0] if "." in full else ""
        fields = ",".join(
            '{"name":' + json.dumps(f["name"]) + ',"type":' + _pcf(f["type"], ns) + "}"
            for f in schema["fields"]
        )
        return '{"name":' + json.dumps(full) + ',"type":"record","fields":[' + fields + "]}"
    raise AssertionError(f"unsupported in test PCF: {kind}")


def _schema_json(name: str) -> dict[str, Any]:
    text = resources.files("schemas").joinpath(name).read_text(encoding="utf-8")
    return dict(json.loads(text))


def test_crc64_avro_reference_vector() -> None:
    # The Avro reference implementations' fingerprint of the primitive schema "int".
    assert _crc64_avro(b'"int"').hex() == "8f5c393f1ad57572"


@pytest.mark.parametrize(
    ("handle", "file"),
    [(AUDIT_EVENT, "audit_event.avsc"), (CHAINED_EVENT, "chained_event.avsc")],
)
def test_header_is_magic_and_spec_fingerprint(handle: codec.SchemaHandle, file: str) -> None:
    canonical = _pcf(_schema_json(file))
    assert handle.canonical_form == canonical
    expected_fp = _crc64_avro(canonical.encode("utf-8"))
    assert handle.fingerprint == expected_fp
    datum = _audit() if handle is AUDIT_EVENT else _chained()
    data = encode(handle, datum)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == expected_fp
    assert fingerprint_of(data) == expected_fp


def test_chained_canonical_form_literal() -> None:
    assert CHAINED_EVENT.canonical_form == (
        '{"name":"dev.sealtrail.ChainedEvent","type":"record","fields":['
        '{"name":"chain","type":"string"},{"name":"seq","type":"long"},'
        '{"name":"prev_hash","type":"bytes"},{"name":"hash","type":"bytes"},'
        '{"name":"source_offset","type":"long"},{"name":"ingested_at","type":"long"},'
        '{"name":"payload","type":"bytes"}]}'
    )
    assert CHAINED_EVENT.name == "dev.sealtrail.ChainedEvent"
    assert AUDIT_EVENT.name == "dev.sealtrail.AuditEvent"


# ---------------------------------------------------------------------------------------------
# fixtures


def _audit(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "cluster": "prod-eu-1",
        "source": "k8s",
        "received_at": 1_700_000_000_123_456,
        "original": b'{"kind":"Event","auditID":"a"}',
        "api_version": "audit.k8s.io/v1",
        "audit_id": "a",
        "stage": "ResponseComplete",
        "level": "Metadata",
        "verb": "create",
        "request_uri": "/api/v1/namespaces/default/secrets",
        "user_name": "minikube-user",
        "user_uid": "u-1",
        "user_groups": ["system:masters", "system:authenticated"],
        "user_extra": {"scopes": ["a", "b"]},
        "impersonated_user": "bob",
        "source_ips": ["192.168.64.1", "::1"],
        "user_agent": "kubectl/v1.30",
        "object_resource": "secrets",
        "object_namespace": "default",
        "object_name": "example-secret",
        "object_subresource": "",
        "object_api_group": "",
        "object_api_version": "v1",
        "object_uid": "uid-1",
        "response_code": 201,
        "request_received_at": 1_587_491_825_541_358,
        "stage_at": 1_587_491_825_548_299,
        "annotations": {"authorization.k8s.io/decision": "allow"},
        "actor": "",
        "action": "",
        "resource": "",
        "outcome": "",
        "attributes": {},
    }
    d.update(over)
    return d


def _chained(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "chain": "audit.events/0",
        "seq": 42,
        "prev_hash": bytes(range(32)),
        "hash": bytes(range(32, 64)),
        "source_offset": 41,
        "ingested_at": 1_700_000_000_000_001,
        "payload": encode_audit_event(_audit()),
    }
    d.update(over)
    return d


# ---------------------------------------------------------------------------------------------
# round trips


def test_audit_event_round_trip() -> None:
    datum = _audit()
    data = encode_audit_event(datum)
    assert decode_audit_event(data) == datum
    writer, got = decode(data)
    assert writer is AUDIT_EVENT
    assert got == datum


def test_audit_event_nulls_and_defaults() -> None:
    datum = _audit(impersonated_user=None, response_code=None, request_received_at=None)
    assert decode_audit_event(encode_audit_event(datum)) == datum
    minimal = {"cluster": "c", "source": "generic", "received_at": 0, "original": b""}
    got = decode_audit_event(encode_audit_event(minimal))
    assert got["audit_id"] == "" and got["user_groups"] == [] and got["stage_at"] is None
    assert got["annotations"] == {} and got["attributes"] == {}


def test_timestamps_are_plain_ints() -> None:
    got = decode_audit_event(encode_audit_event(_audit()))
    assert type(got["received_at"]) is int
    assert type(got["stage_at"]) is int
    chained = decode_chained(encode_chained(_chained()))
    assert type(chained["ingested_at"]) is int


def test_chained_round_trip_and_payload_untouched() -> None:
    datum = _chained()
    data = encode_chained(datum)
    assert decode_chained(data) == datum
    assert encode(CHAINED_EVENT, datum) == data
    writer, got = decode(data)
    assert writer is CHAINED_EVENT and got == datum
    assert decode_audit_event(got["payload"]) == _audit()


def _fastavro_chained(datum: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, CHAINED_EVENT._io_schema, datum)
    return CHAINED_EVENT.header + buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(
    chain=st.text(),
    seq=st.integers(LONG_MIN, LONG_MAX),
    prev=st.binary(max_size=40),
    h=st.binary(max_size=40),
    offset=st.integers(LONG_MIN, LONG_MAX),
    at=st.integers(LONG_MIN, LONG_MAX),
    payload=st.binary(max_size=300),
)
def test_chained_fast_path_matches_fastavro(
    chain: str, seq: int, prev: bytes, h: bytes, offset: int, at: int, payload: bytes
) -> None:
    datum = {
        "chain": chain,
        "seq": seq,
        "prev_hash": prev,
        "hash": h,
        "source_offset": offset,
        "ingested_at": at,
        "payload": payload,
    }
    data = encode_chained(datum)
    assert data == _fastavro_chained(datum)
    assert decode_chained(data) == datum


def test_chained_fast_path_is_active() -> None:
    assert codec._chained_fast


@pytest.mark.parametrize(
    "bad",
    [
        {"seq": "1"},
        {"seq": True},
        {"seq": 1 << 63},
        {"ingested_at": -(1 << 63) - 1},
        {"chain": b"bytes"},
        {"chain": "\ud800"},
        {"payload": "text"},
        {"hash": None},
    ],
)
def test_encode_chained_bad_datum(bad: dict[str, Any]) -> None:
    with pytest.raises(EncodeError):
        encode_chained(_chained(**bad))


def test_encode_chained_missing_field() -> None:
    datum = _chained()
    del datum["hash"]
    with pytest.raises(EncodeError, match="hash"):
        encode_chained(datum)


@pytest.mark.parametrize(
    "bad",
    [
        {"response_code": "201"},
        {"response_code": True},
        {"cluster": None},
        {"original": "text"},
        {"annotations": {"a": 1}},
        {"received_at": 1 << 64},
    ],
)
def test_encode_audit_bad_datum(bad: dict[str, Any]) -> None:
    with pytest.raises(EncodeError) as info:
        encode_audit_event(_audit(**bad))
    assert isinstance(info.value, SealtrailError)


@pytest.mark.parametrize(
    "bad",
    [
        {"user_groups": "system:masters"},
        {"received_at": 1.5},
        {"user_extra": {"a": "bc"}},
        {"response_code": True},
    ],
)
def test_encode_audit_validate_catches_silent_coercions(bad: dict[str, Any]) -> None:
    with pytest.raises(EncodeError) as info:
        encode_audit_event(_audit(**bad), validate=True)
    field = next(iter(bad))
    assert field in str(info.value)
    assert "system:masters" not in str(info.value)  # values never appear in messages
    assert encode_audit_event(_audit(), validate=True) == encode_audit_event(_audit())


def test_encode_audit_missing_required_field() -> None:
    datum = _audit()
    del datum["cluster"]
    with pytest.raises(EncodeError, match="cluster"):
        encode_audit_event(datum)


def test_encoder_buffer_reuse_gives_independent_results() -> None:
    a = encode_audit_event(_audit(audit_id="first"))
    b = encode_audit_event(_audit(audit_id="second"))
    with pytest.raises(EncodeError):
        encode_audit_event(_audit(response_code="bad"))
    c = encode_audit_event(_audit(audit_id="third"))
    assert decode_audit_event(a)["audit_id"] == "first"
    assert decode_audit_event(b)["audit_id"] == "second"
    assert decode_audit_event(c)["audit_id"] == "third"


# ---------------------------------------------------------------------------------------------
# errors on decode


def test_unknown_fingerprint() -> None:
    data = b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + b"\x00"
    with pytest.raises(UnknownFingerprint) as info:
        decode(data)
    message = str(info.value)
    assert "0123456789abcdef" in message
    assert AUDIT_EVENT.fingerprint.hex() in message and "upgrade" in message
    with pytest.raises(UnknownFingerprint):
        decode_audit_event(data)
    with pytest.raises(UnknownFingerprint):
        decode_chained(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc3", b"\xc3\x01\x00", b"\x00\x01" + b"\x00" * 20, b"{}", b"\xc3\x02" + b"\x00" * 20],
)
def test_not_single_object_encoded(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)
    with pytest.raises(DecodeError):
        fingerprint_of(data)


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        decode(encode_audit_event(_audit()) + b"\x00")


def test_wrong_record_type_for_helpers() -> None:
    with pytest.raises(DecodeError, match="ChainedEvent"):
        decode_audit_event(encode_chained(_chained()))
    with pytest.raises(DecodeError, match="AuditEvent"):
        decode_chained(encode_audit_event(_audit()))


def test_every_truncation_is_decode_error() -> None:
    for data in (encode_audit_event(_audit()), encode_chained(_chained(payload=b"xy"))):
        for cut in range(len(data)):
            with pytest.raises(DecodeError):
                decode(data[:cut])


_AUDIT_BYTES = encode_audit_event(_audit())
_CHAINED_BYTES = encode_chained(_chained(payload=b"p" * 20))


def _decode_all_ways(data: bytes) -> None:
    for fn in (
        lambda d: decode(d),
        lambda d: decode(d, AUDIT_EVENT),
        lambda d: decode(d, CHAINED_EVENT),
        decode_audit_event,
        decode_chained,
    ):
        try:
            fn(data)
        except DecodeError:
            pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_decode_error(data: bytes) -> None:
    _decode_all_ways(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.sampled_from([AUDIT_EVENT, CHAINED_EVENT]),
    body=st.binary(max_size=200),
)
def test_valid_header_random_body_only_decode_error(which: codec.SchemaHandle, body: bytes) -> None:
    _decode_all_ways(which.header + body)


@settings(max_examples=500, deadline=None)
@given(
    which=st.sampled_from([_AUDIT_BYTES, _CHAINED_BYTES]),
    data=st.data(),
)
def test_mutated_and_truncated_records_only_decode_error(which: bytes, data: Any) -> None:
    buf = bytearray(which)
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(codec.HEADER_SIZE, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    _decode_all_ways(bytes(buf[:cut]))


# ---------------------------------------------------------------------------------------------
# evolution


def _next_version() -> dict[str, Any]:
    schema = copy.deepcopy(_schema_json("audit_event.avsc"))
    schema["fields"].append({"name": "node_name", "type": "string", "default": "unknown"})
    schema["fields"].append({"name": "risk_score", "type": ["null", "double"], "default": None})
    return schema


def test_next_version_reader_reads_old_records() -> None:
    v2 = register(json.dumps(_next_version()))
    assert v2.name == AUDIT_EVENT.name
    assert v2.fingerprint != AUDIT_EVENT.fingerprint
    old = encode_audit_event(_audit())
    writer, got = decode(old, reader=v2)
    assert writer is AUDIT_EVENT
    assert got["node_name"] == "unknown" and got["risk_score"] is None
    assert {k: v for k, v in got.items() if k not in ("node_name", "risk_score")} == _audit()


def test_old_reader_reads_next_version_records() -> None:
    v2 = register(_next_version())
    new = encode(v2, {**_audit(), "node_name": "node-7", "risk_score": 0.5})
    assert fingerprint_of(new) == v2.fingerprint
    assert decode_audit_event(new) == _audit()  # resolved to the current schema
    writer, raw = decode(new)
    assert writer is v2 and raw["node_name"] == "node-7"


def test_incompatible_reader_is_decode_error() -> None:
    schema = copy.deepcopy(_schema_json("audit_event.avsc"))
    schema["fields"].append({"name": "must_have", "type": "string"})  # no default
    bad = register(schema)
    with pytest.raises(DecodeError):
        decode(encode_audit_event(_audit()), reader=bad)


def test_register_is_idempotent_and_accepts_paths(tmp_path: Any) -> None:
    path = tmp_path / "audit_event.avsc"
    path.write_text(json.dumps(_schema_json("audit_event.avsc"), indent=4))
    assert register(path) is AUDIT_EVENT
    assert register(str(path)) is AUDIT_EVENT
    assert AUDIT_EVENT in codec.known_schemas() and CHAINED_EVENT in codec.known_schemas()


@pytest.mark.parametrize(
    "schema",
    [
        '{"type": "record"',
        '["string"]',
        {"type": "string"},
        {"type": "enum", "name": "E", "symbols": ["A"]},
        {"type": "record", "name": "R", "fields": [{"name": "x", "type": "nope"}]},
    ],
)
def test_register_bad_schema(schema: Any) -> None:
    with pytest.raises(ConfigError):
        register(schema)


def test_register_missing_file(tmp_path: Any) -> None:
    with pytest.raises(ConfigError):
        register(tmp_path / "missing.avsc")


def test_every_optional_audit_field_has_a_default() -> None:
    required = {"cluster", "source", "received_at", "original"}
    for f in _schema_json("audit_event.avsc")["fields"]:
        assert ("default" in f) != (f["name"] in required), f["name"]


def test_chained_fields_are_the_record_in_field_order() -> None:
    datum = {
        "chain": "audit.events/0",
        "seq": 1,
        "prev_hash": bytes(32),
        "hash": bytes(range(32)),
        "source_offset": 5,
        "ingested_at": 1_700_000_000_000_000,
        "payload": b"hello",
    }
    good = encode_chained(datum)
    assert decode_chained_fields(good) == tuple(datum.values())
    for bad in (good[:-1], good + b"\x00", good[: len(CHAINED_EVENT.header) + 3]):
        with pytest.raises(DecodeError):
            decode_chained_fields(bad)


def _fastavro_fields(data: bytes) -> Any:
    try:
        d = decode_chained(data)
    except SealtrailError:
        return None
    return tuple(
        d[k]
        for k in ("chain", "seq", "prev_hash", "hash", "source_offset", "ingested_at", "payload")
    )


@settings(max_examples=400, deadline=None)
@given(
    chain=st.text(max_size=70),
    seq=st.integers(LONG_MIN, LONG_MAX),
    prev=st.binary(min_size=31, max_size=33),
    h=st.binary(min_size=32, max_size=32),
    offset=st.integers(LONG_MIN, LONG_MAX),
    at=st.integers(LONG_MIN, LONG_MAX),
    payload=st.binary(max_size=300),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    cut=st.integers(-3, 3),
)
def test_parse_chained_fields_agrees_with_fastavro(
    chain: str,
    seq: int,
    prev: bytes,
    h: bytes,
    offset: int,
    at: int,
    payload: bytes,
    flips: list[tuple[int, int]],
    cut: int,
) -> None:
    datum = {
        "chain": chain,
        "seq": seq,
        "prev_hash": prev,
        "hash": h,
        "source_offset": offset,
        "ingested_at": at,
        "payload": payload,
    }
    value = bytearray(encode_chained(datum))
    for where, byte in flips:
        value[where % len(value)] = byte
    data = bytes(value[: len(value) + cut] if cut < 0 else value + b"\x00" * cut)
    fast = codec.parse_chained_fields(data)
    assert fast is None or fast == _fastavro_fields(data)
    small = all(-(1 << 62) <= v < (1 << 62) for v in (seq, offset, at))
    if not flips and not cut and small and len(chain.encode()) < 64 and len(prev) == 32:
        assert fast == _fastavro_fields(data)  # the plain case takes the fast path


# ---------------------------------------------------------------------------------------------
# the AuditEvent fast path against fastavro

_text = st.text(max_size=70)  # crosses the one-byte length prefix (64 bytes)
_audit_values = {
    "cluster": _text,
    "source": _text,
    "received_at": st.integers(LONG_MIN, LONG_MAX),
    "original": st.binary(max_size=200),
    "user_groups": st.lists(_text, max_size=3),
    "user_extra": st.dictionaries(_text, st.lists(_text, max_size=2), max_size=2),
    "impersonated_user": st.none() | _text,
    "source_ips": st.lists(_text, max_size=3),
    "response_code": st.none() | st.integers(-(1 << 31), (1 << 31) - 1),
    "request_received_at": st.none() | st.integers(LONG_MIN, LONG_MAX),
    "stage_at": st.none() | st.integers(LONG_MIN, LONG_MAX),
    "annotations": st.dictionaries(_text, _text, max_size=3),
    "attributes": st.dictionaries(_text, _text, max_size=3),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.fixed_dictionaries(
        {},
        optional={
            **_audit_values,
            **{
                name: _text
                for name in ("audit_id", "verb", "user_name", "object_uid", "actor", "outcome")
            },
        },
    )
)
def test_audit_fast_path_matches_fastavro(changes: dict[str, Any]) -> None:
    datum = _audit(**changes)
    data = encode_audit_event(datum)
    assert data == codec._encode_generic(AUDIT_EVENT, datum)
    assert codec._encode_audit_fast(datum) == data
    assert decode_audit_event(data) == datum


def test_audit_fast_path_is_active() -> None:
    assert codec._audit_fast
    # A coercion fastavro makes (a str where an array goes) is left to fastavro, unchanged.
    datum = _audit(user_groups="ab")
    assert encode_audit_event(datum) == codec._encode_generic(AUDIT_EVENT, datum)


def _varlong_reference(value: int) -> bytes:
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@given(
    st.integers(LONG_MIN, LONG_MAX)
    | st.integers(-(1 << 22), 1 << 22)
    | st.integers(1_600_000_000_000_000, 1_900_000_000_000_000)
)
def test_avro_long_matches_the_spec(value: int) -> None:
    for _ in range(2):  # the second time from avro_long's cache of high bits
        assert codec.avro_long(value) == _varlong_reference(value)


_K8S_FIELDS = (
    "api_version",
    "audit_id",
    "stage",
    "level",
    "verb",
    "request_uri",
    "user_name",
    "user_uid",
    "user_groups",
    "user_extra",
    "impersonated_user",
    "source_ips",
    "user_agent",
    "object_resource",
    "object_namespace",
    "object_name",
    "object_subresource",
    "object_api_group",
    "object_api_version",
    "object_uid",
    "response_code",
    "request_received_at",
    "stage_at",
    "annotations",
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.fixed_dictionaries(
        {},
        optional={
            **{k: v for k, v in _audit_values.items() if k not in ("source", "attributes")},
            **{name: _text for name in _K8S_FIELDS if name not in _audit_values},
        },
    )
)
def test_encode_audit_k8s_is_encode_audit_event_of_the_datum(changes: dict[str, Any]) -> None:
    datum = {
        **_audit(**changes),
        "source": "k8s",
        "actor": "",
        "action": "",
        "resource": "",
        "outcome": "",
        "attributes": {},
    }
    prefix = codec.audit_k8s_prefix(datum["cluster"], datum["received_at"])
    assert prefix is not None
    fields = tuple(datum[name] for name in _K8S_FIELDS)
    assert codec.encode_audit_k8s(prefix, datum["original"], fields) == encode_audit_event(datum)


def test_encode_audit_k8s_refuses_values_of_other_types() -> None:
    prefix = codec.audit_k8s_prefix("c", 1)
    assert prefix is not None
    fields = tuple(_audit()[name] for name in _K8S_FIELDS)
    for at, bad in ((0, 5), (8, "ab"), (9, []), (23, {"a": 1}), (20, 1 << 40)):
        wrong = fields[:at] + (bad,) + fields[at + 1 :]
        with pytest.raises(codec.AuditFastPathOff):
            codec.encode_audit_k8s(prefix, b"{}", wrong)
