"""Avro single-object encoding of sealtrail records (the wire format of the raw and chain topics).

A single-object encoded record is::

    C3 01 | fingerprint (8 bytes) | datum

the fingerprint being the CRC-64-AVRO (Rabin) fingerprint of the writer schema's Parsing
Canonical Form, little-endian, and the datum the Avro binary encoding. Readers find the writer
schema by its fingerprint in a process-wide registry that holds every ``*.avsc`` shipped in this
package (current and older versions) plus anything passed to :func:`register`. With a reader
schema, :func:`decode` performs Avro schema resolution, so a newer reader reads records written
with an older schema.

Datums are plain dicts. Timestamps (``timestamp-micros``) are plain ``int`` microseconds since the
epoch in both directions (the codec ignores logical types, which never change the binary layout).

Every failure is a :class:`sealtrail.infra.errors.SealtrailError`: :class:`UnknownFingerprint` or
:class:`DecodeError` when reading, :class:`EncodeError` when writing; never a raw fastavro,
struct or IO exception.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError
from fastavro.validation import validate as _fastavro_validate

from sealtrail.infra.errors import ConfigError, DecodeError, SealtrailError, UnknownFingerprint

__all__ = [
    "AUDIT_EVENT",
    "CHAINED_EVENT",
    "MAGIC",
    "HEADER_SIZE",
    "AuditFastPathOff",
    "EncodeError",
    "SchemaHandle",
    "CHAINED_TAIL",
    "avro_long",
    "chained_lead",
    "decode",
    "decode_audit_event",
    "decode_chained",
    "decode_chained_fields",
    "parse_chained_fields",
    "encode",
    "audit_generic_prefix",
    "audit_k8s_prefix",
    "encode_audit_event",
    "encode_audit_generic",
    "encode_audit_k8s",
    "encode_chained",
    "fingerprint_of",
    "known_schemas",
    "register",
    "zigzag",
]

MAGIC = b"\xc3\x01"
"""The two marker bytes every single-object encoded record starts with."""

HEADER_SIZE = 10
"""Marker (2 bytes) plus schema fingerprint (8 bytes)."""

_LONG_MIN = -(1 << 63)
_LONG_MAX = (1 << 63) - 1


class EncodeError(SealtrailError, ValueError):
    """A datum does not fit the schema it was to be written with."""


Datum = dict[str, Any]


@dataclass(frozen=True, eq=False, slots=True)
class SchemaHandle:
    """One registered schema version.

    ``name`` is the full name (``dev.sealtrail.AuditEvent``), ``fingerprint`` the 8-byte
    CRC-64-AVRO fingerprint (as written on the wire), ``canonical_form`` the Parsing Canonical Form
    and ``schema`` the schema JSON as loaded.
    """

    name: str
    fingerprint: bytes
    canonical_form: str
    schema: dict[str, Any] = field(repr=False)
    header: bytes = field(repr=False)
    # fastavro-parsed schema with logical types removed: same bytes, ints for timestamps.
    _io_schema: Any = field(repr=False)

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    def __repr__(self) -> str:
        return f"SchemaHandle({self.name!r}, fingerprint={self.fingerprint.hex()})"


_REGISTRY: dict[bytes, SchemaHandle] = {}
_REGISTRY_LOCK = threading.Lock()


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def _load_schema_json(schema: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(schema, Mapping):
        return dict(schema)
    if isinstance(schema, str) and schema.lstrip().startswith("{"):
        text, where = schema, "the given schema text"
    else:
        path = Path(schema)
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"Cannot read Avro schema file {where} ({exc.__class__.__name__}); check the path."
            ) from exc
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"Avro schema in {where} is not valid JSON ({exc}); fix it.") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"Avro schema in {where} is not a JSON object; give a record schema.")
    return loaded


def register(schema: str | os.PathLike[str] | Mapping[str, Any]) -> SchemaHandle:
    """Register a record schema (JSON text, a path to an ``.avsc`` file, or a parsed dict).

    Registering the same schema again returns the existing handle. Raises
    :class:`sealtrail.infra.errors.ConfigError` if the schema is not a valid Avro record schema.
    """
    raw = _load_schema_json(schema)
    if raw.get("type") != "record":
        raise ConfigError("Only Avro record schemas can be registered; give a record schema.")
    try:
        parsed = parse_schema(raw)
        canonical = to_parsing_canonical_form(parsed)
        io_schema = parse_schema(_strip_logical_types(raw))
    except Exception as exc:  # noqa: BLE001 - fastavro raises many types for bad schemas
        raise ConfigError(f"Invalid Avro schema ({exc}); fix the schema.") from exc
    fp = bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))
    name = str(cast(dict[str, Any], parsed)["name"])
    with _REGISTRY_LOCK:
        existing = _REGISTRY.get(fp)
        if existing is not None:
            if existing.canonical_form != canonical:
                raise ConfigError(
                    f"Schema {name} has the same fingerprint {fp.hex()} as {existing.name} but "
                    "a different form; rename a field or the record."
                )
            return existing
        handle = SchemaHandle(
            name=name,
            fingerprint=fp,
            canonical_form=canonical,
            schema=raw,
            header=MAGIC + fp,
            _io_schema=io_schema,
        )
        _REGISTRY[fp] = handle
        return handle


def known_schemas() -> list[SchemaHandle]:
    """Every registered schema version, in registration order."""
    with _REGISTRY_LOCK:
        return list(_REGISTRY.values())


def _describe_known() -> str:
    return ", ".join(f"{h.name}@{h.fingerprint.hex()}" for h in known_schemas()) or "none"


# --------------------------------------------------------------------------------------------
# decoding


def fingerprint_of(data: bytes | bytearray | memoryview) -> bytes:
    """The 8-byte writer schema fingerprint of a single-object encoded record."""
    if len(data) < HEADER_SIZE:
        raise DecodeError(
            f"Record is {len(data)} bytes, too short to be Avro single-object encoded; "
            "it is truncated or not a sealtrail record."
        )
    if data[0] != 0xC3 or data[1] != 0x01:
        raise DecodeError(
            "Record does not start with the Avro single-object marker C3 01; "
            "it is not a sealtrail record."
        )
    return bytes(data[2:HEADER_SIZE])


def _lookup(fp: bytes) -> SchemaHandle:
    handle = _REGISTRY.get(fp)
    if handle is None:
        raise UnknownFingerprint(
            f"Record was written with unknown schema fingerprint {fp.hex()} (known: "
            f"{_describe_known()}); upgrade sealtrail to a version that has this schema."
        )
    return handle


def decode(
    data: bytes | bytearray | memoryview, reader: SchemaHandle | None = None
) -> tuple[SchemaHandle, Datum]:
    """Decode a single-object encoded record; returns (writer schema, datum).

    With ``reader`` the datum is resolved to the reader schema (Avro schema resolution: fields
    the writer lacks get the reader's defaults, fields the reader lacks are skipped).
    """
    writer = _lookup(fingerprint_of(data))
    return writer, _read(writer, data, reader)


def _read(
    writer: SchemaHandle, data: bytes | bytearray | memoryview, reader: SchemaHandle | None
) -> Datum:
    buf = io.BytesIO(data)  # shares the buffer of a bytes object, no copy
    buf.seek(HEADER_SIZE)
    try:
        if reader is None or reader is writer:
            datum = schemaless_reader(buf, writer._io_schema, None)
        else:
            datum = schemaless_reader(buf, writer._io_schema, reader._io_schema)
    except Exception as exc:  # noqa: BLE001 - fastavro/struct/codec errors all mean "bad datum"
        target = f" as {reader.name}" if reader is not None and reader is not writer else ""
        raise DecodeError(
            f"Record is not a valid {writer.name} datum{target} "
            f"({exc.__class__.__name__}: {_short(exc)}); it is corrupt or truncated."
        ) from exc
    if buf.tell() != len(data):
        raise DecodeError(
            f"Record has {len(data) - buf.tell()} trailing bytes after the {writer.name} datum; "
            "it is corrupt."
        )
    if not isinstance(datum, dict):
        raise DecodeError(f"Record is not a {writer.name} record; it is corrupt.")
    return datum


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# encoding

_tls = threading.local()


def _buffer() -> io.BytesIO:
    buf: io.BytesIO | None = getattr(_tls, "buf", None)
    if buf is None:
        buf = io.BytesIO()
        _tls.buf = buf
    else:
        buf.seek(0)
        buf.truncate()
    return buf


def _validate(handle: SchemaHandle, datum: Mapping[str, Any]) -> None:
    try:
        _fastavro_validate(datum, handle._io_schema, raise_errors=True)
    except ValidationError as exc:
        # Messages look like "<path> is <value> of type ..."; keep only the paths (no values).
        paths = sorted({str(e).split(" is <", 1)[0] for e in exc.errors})
        raise EncodeError(
            f"Datum does not fit schema {handle.name} at {', '.join(paths)[:200]}; "
            "fix the producer."
        ) from None
    except Exception as exc:  # noqa: BLE001 - anything else fastavro raises for a bad datum
        raise EncodeError(
            f"Datum does not fit schema {handle.name} ({exc.__class__.__name__}); fix the producer."
        ) from exc


def _encode_generic(
    handle: SchemaHandle, datum: Mapping[str, Any], validate: bool = False
) -> bytes:
    if validate:
        _validate(handle, datum)
    buf = _buffer()
    buf.write(handle.header)
    try:
        schemaless_writer(buf, handle._io_schema, datum)
    except Exception as exc:  # noqa: BLE001 - fastavro raises many types for a bad datum
        # The fastavro message may quote values; keep only the field it names.
        raise EncodeError(
            f"Datum does not fit schema {handle.name} ({exc.__class__.__name__}"
            f"{_field_hint(exc)}); fix the producer."
        ) from exc
    return buf.getvalue()


def _field_hint(exc: BaseException) -> str:
    text = str(exc)
    marker = " on field "
    if marker in text:
        return " on field " + text.rsplit(marker, 1)[1][:80]
    if "no value and no default for " in text:
        return ": missing field " + text.rsplit(" for ", 1)[1][:80]
    return ""


def encode(handle: SchemaHandle, datum: Mapping[str, Any], *, validate: bool = False) -> bytes:
    """Encode ``datum`` with ``handle``'s schema as a single-object encoded record.

    Wrong types raise :class:`EncodeError`, except the few fastavro coerces silently (a ``str``
    where an array is expected is written as an array of characters, a ``float`` where a long
    is expected is truncated). ``validate=True`` checks every value first (about 3x the cost of
    encoding); use it for datums not built by ``producers.k8s``.
    """
    if handle is CHAINED_EVENT and _chained_fast:
        return _encode_chained_fast(datum)
    return _encode_generic(handle, datum, validate)


def encode_audit_event(datum: Mapping[str, Any], *, validate: bool = False) -> bytes:
    """Encode an AuditEvent datum (raw topic value); see :func:`encode` for ``validate``."""
    if _audit_fast and not validate:
        try:
            return _encode_audit_fast(datum)
        except (_Slow, KeyError, TypeError, UnicodeError):
            pass  # fastavro writes it (defaults, coercions) or says what is wrong with it
    return _encode_generic(AUDIT_EVENT, datum, validate)


def decode_audit_event(data: bytes | bytearray | memoryview) -> Datum:
    """Decode a raw topic value into a datum of the current AuditEvent schema."""
    writer = _lookup(fingerprint_of(data))
    if writer.name != AUDIT_EVENT.name:
        raise DecodeError(
            f"Record is a {writer.name}, not an {AUDIT_EVENT.name}; "
            "check that you read the raw topic."
        )
    return _read(writer, data, AUDIT_EVENT)


def encode_chained(datum: Mapping[str, Any]) -> bytes:
    """Encode a ChainedEvent datum (chain topic value)."""
    if _chained_fast:
        return _encode_chained_fast(datum)
    return _encode_generic(CHAINED_EVENT, datum)


def decode_chained(data: bytes | bytearray | memoryview) -> Datum:
    """Decode a chain topic value into a datum of the current ChainedEvent schema."""
    writer = _lookup(fingerprint_of(data))
    if writer is CHAINED_EVENT:
        return _read(writer, data, None)
    if writer.name != CHAINED_EVENT.name:
        raise DecodeError(
            f"Record is a {writer.name}, not a {CHAINED_EVENT.name}; "
            "check that you read the chain topic."
        )
    return _read(writer, data, CHAINED_EVENT)


# ChainedEvent fast path: a hand-written writer for the exact version-1 layout (about 1.7x
# fastavro). Used only while chained_event.avsc has exactly this canonical form.
_CHAINED_V1_CANONICAL = (
    '{"name":"dev.sealtrail.ChainedEvent","type":"record","fields":['
    '{"name":"chain","type":"string"},{"name":"seq","type":"long"},'
    '{"name":"prev_hash","type":"bytes"},{"name":"hash","type":"bytes"},'
    '{"name":"source_offset","type":"long"},{"name":"ingested_at","type":"long"},'
    '{"name":"payload","type":"bytes"}]}'
)


def _varlong(value: Any, name: str) -> bytes:
    if type(value) is not int:
        raise EncodeError(
            f"Field {name} of ChainedEvent must be an int, not {type(value).__name__}; "
            "fix the producer."
        )
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise EncodeError(f"Field {name} of ChainedEvent is outside the Avro long range.")
    return avro_long(value)


def avro_long(value: int) -> bytes:
    """The Avro binary encoding of a long (zigzag, then 7 bits a byte); no range check."""
    n = (value << 1) ^ (value >> 63)
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    # Timestamps (the most common large longs) share their high bits for seconds at a time:
    # the low three 7-bit groups are computed, the encoding of the rest comes from a cache.
    high = n >> 21
    tail = _HIGH.get(high)
    if tail is None:
        if len(_HIGH) >= 4096:
            _HIGH.clear()
        tail = _HIGH[high] = _varint(high)
    return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80)) + tail


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_HIGH: dict[int, bytes] = {}
_SMALL = [bytes((i,)) for i in range(0x80)]


def _blob(value: Any, name: str) -> tuple[bytes, Any]:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise EncodeError(
            f"Field {name} of ChainedEvent must be bytes, not {type(value).__name__}; "
            "fix the producer."
        )
    size = value.nbytes if isinstance(value, memoryview) else len(value)
    return _varlong(size, name), value


def _encode_chained_fast(datum: Mapping[str, Any]) -> bytes:
    try:
        chain = datum["chain"]
        seq = datum["seq"]
        prev_hash = datum["prev_hash"]
        hash_ = datum["hash"]
        source_offset = datum["source_offset"]
        ingested_at = datum["ingested_at"]
        payload = datum["payload"]
    except KeyError as exc:
        raise EncodeError(
            f"Datum does not fit schema {CHAINED_EVENT.name}: missing field {exc.args[0]}; "
            "fix the producer."
        ) from None
    except TypeError:
        raise EncodeError("ChainedEvent datum must be a mapping; fix the producer.") from None
    if not isinstance(chain, str):
        raise EncodeError(
            f"Field chain of ChainedEvent must be a str, not {type(chain).__name__}; "
            "fix the producer."
        )
    try:
        chain_b = chain.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError("Field chain of ChainedEvent is not valid Unicode text.") from None
    ph_len, ph = _blob(prev_hash, "prev_hash")
    h_len, h = _blob(hash_, "hash")
    p_len, p = _blob(payload, "payload")
    return b"".join(
        (
            _CHAINED_HEADER,
            _varlong(len(chain_b), "chain"),
            chain_b,
            _varlong(seq, "seq"),
            ph_len,
            ph,
            h_len,
            h,
            _varlong(source_offset, "source_offset"),
            _varlong(ingested_at, "ingested_at"),
            p_len,
            p,
        )
    )


# AuditEvent fast path: a hand-written writer for the exact version-1 layout (the webhook's,
# shipper's and SDK's per-event encode). It takes only plain values of the exact types; anything
# else (a missing field left to its default, a coercion fastavro makes, a value fastavro refuses)
# goes to fastavro, so the bytes and errors are fastavro's wherever the fast path steps aside.
_AUDIT_V1_CANONICAL = (
    '{"name":"dev.sealtrail.AuditEvent","type":"record","fields":['
    '{"name":"cluster","type":"string"},{"name":"source","type":"string"},'
    '{"name":"received_at","type":"long"},{"name":"original","type":"bytes"},'
    '{"name":"api_version","type":"string"},{"name":"audit_id","type":"string"},'
    '{"name":"stage","type":"string"},{"name":"level","type":"string"},'
    '{"name":"verb","type":"string"},{"name":"request_uri","type":"string"},'
    '{"name":"user_name","type":"string"},{"name":"user_uid","type":"string"},'
    '{"name":"user_groups","type":{"type":"array","items":"string"}},'
    '{"name":"user_extra","type":{"type":"map","values":{"type":"array","items":"string"}}},'
    '{"name":"impersonated_user","type":["null","string"]},'
    '{"name":"source_ips","type":{"type":"array","items":"string"}},'
    '{"name":"user_agent","type":"string"},{"name":"object_resource","type":"string"},'
    '{"name":"object_namespace","type":"string"},{"name":"object_name","type":"string"},'
    '{"name":"object_subresource","type":"string"},{"name":"object_api_group","type":"string"},'
    '{"name":"object_api_version","type":"string"},{"name":"object_uid","type":"string"},'
    '{"name":"response_code","type":["null","int"]},'
    '{"name":"request_received_at","type":["null","long"]},'
    '{"name":"stage_at","type":["null","long"]},'
    '{"name":"annotations","type":{"type":"map","values":"string"}},'
    '{"name":"actor","type":"string"},{"name":"action","type":"string"},'
    '{"name":"resource","type":"string"},{"name":"outcome","type":"string"},'
    '{"name":"attributes","type":{"type":"map","values":"string"}}]}'
)
# Runs of consecutive fields in schema order (itemgetter: one C call per run).
_AUDIT_RUN_0 = itemgetter("cluster", "source")
_AUDIT_RUN_1 = itemgetter("api_version", "audit_id")
_AUDIT_RUN_2 = itemgetter("stage", "level", "verb", "request_uri", "user_name", "user_uid")
_AUDIT_USER = itemgetter("user_groups", "user_extra", "impersonated_user", "source_ips")
_AUDIT_RUN_3 = itemgetter(
    "user_agent",
    "object_resource",
    "object_namespace",
    "object_name",
    "object_subresource",
    "object_api_group",
    "object_api_version",
    "object_uid",
)
_AUDIT_RUN_4 = itemgetter("actor", "action", "resource", "outcome")
_INT_MIN = -(1 << 31)
_INT_MAX = (1 << 31) - 1


class _Slow(Exception):  # noqa: N818 - internal signal: leave this datum to fastavro
    pass


_PREFIXES = 4096
_PREFIX = [avro_long(n) for n in range(_PREFIXES)]
"""The length prefixes of strings shorter than 4 KiB (most of an event's), precomputed."""


def _put_str(out: list[bytes], value: Any) -> None:
    if type(value) is not str:
        raise _Slow
    data = value.encode("utf-8")
    size = len(data)
    out.append(_PREFIX[size] if size < _PREFIXES else avro_long(size))
    out.append(data)


def _put_long(out: list[bytes], value: Any) -> None:
    if type(value) is not int or not _LONG_MIN <= value <= _LONG_MAX:
        raise _Slow
    out.append(avro_long(value))


def _put_strings(out: list[bytes], values: Any) -> None:
    if type(values) is not list:
        raise _Slow
    if values:
        out.append(avro_long(len(values)))
        for value in values:
            _put_str(out, value)
    out.append(b"\x00")


def _put_user(
    out: list[bytes], user_groups: Any, extra: Any, impersonated: Any, source_ips: Any
) -> None:
    """user_groups, user_extra, impersonated_user and source_ips (consecutive in the schema):
    four 0 bytes when all are empty, as in most events."""
    if type(extra) is not dict:
        raise _Slow
    if not user_groups and not extra and impersonated is None and not source_ips:
        if type(user_groups) is not list or type(source_ips) is not list:
            raise _Slow
        out.append(b"\0\0\0\0")
        return
    _put_strings(out, user_groups)
    if extra:
        out.append(avro_long(len(extra)))
        for key, values in extra.items():
            _put_str(out, key)
            _put_strings(out, values)
    out.append(b"\x00")
    if impersonated is None:
        out.append(b"\x00")
    else:
        out.append(b"\x02")
        _put_str(out, impersonated)
    _put_strings(out, source_ips)


def _put_str_map(out: list[bytes], values: Any) -> None:
    if type(values) is not dict:
        raise _Slow
    if values:
        out.append(avro_long(len(values)))
        for key, value in values.items():
            _put_str(out, key)
            _put_str(out, value)
    out.append(b"\x00")


def _put_optional_long(out: list[bytes], value: Any, low: int, high: int) -> None:
    if value is None:
        out.append(b"\x00")
        return
    if type(value) is not int or not low <= value <= high:
        raise _Slow
    out.append(b"\x02")
    out.append(avro_long(value))


def _put_run(out: list[bytes], values: tuple[Any, ...], zeros: bytes) -> None:
    """Consecutive string fields; ``zeros`` (one 0 byte each) when all are "" (a generic event's
    Kubernetes fields, most of an event's optional ones)."""
    if values == ("",) * len(zeros):
        out.append(zeros)
        return
    app = out.append
    for value in values:
        if type(value) is not str:
            raise _Slow
        data = value.encode("utf-8")
        size = len(data)
        app(_PREFIX[size] if size < _PREFIXES else avro_long(size))
        app(data)


def _encode_audit_fast(datum: Mapping[str, Any]) -> bytes:
    """Raises :class:`_Slow` (or KeyError/TypeError/UnicodeError) to leave it to fastavro."""
    out: list[bytes] = [_AUDIT_HEADER]
    app = out.append
    original = datum["original"]
    if type(original) is not bytes:
        raise _Slow
    _put_run(out, _AUDIT_RUN_0(datum), b"\0\0")
    _put_long(out, datum["received_at"])
    app(avro_long(len(original)))
    app(original)
    _put_run(out, _AUDIT_RUN_1(datum), b"\0\0")
    _put_run(out, _AUDIT_RUN_2(datum), b"\0" * 6)
    _put_user(out, *_AUDIT_USER(datum))
    _put_run(out, _AUDIT_RUN_3(datum), b"\0" * 8)
    _put_optional_long(out, datum["response_code"], _INT_MIN, _INT_MAX)
    _put_optional_long(out, datum["request_received_at"], _LONG_MIN, _LONG_MAX)
    _put_optional_long(out, datum["stage_at"], _LONG_MIN, _LONG_MAX)
    _put_str_map(out, datum["annotations"])
    _put_run(out, _AUDIT_RUN_4(datum), b"\0" * 4)
    _put_str_map(out, datum["attributes"])
    return b"".join(out)


class AuditFastPathOff(EncodeError):  # noqa: N818 - a signal as much as an error
    """The direct AuditEvent writer cannot take these values; encode the datum instead."""


def audit_k8s_prefix(cluster: str, received_at: int) -> bytes | None:
    """The first bytes of every Kubernetes AuditEvent of one request (marker, fingerprint,
    cluster, source ``"k8s"``, received_at) for :func:`encode_audit_k8s`; None when the
    AuditEvent schema is not the version-1 layout that writer knows."""
    if not _audit_fast:
        return None
    out: list[bytes] = [_AUDIT_HEADER]
    try:
        _put_str(out, cluster)
        out.append(b"\x06k8s")
        _put_long(out, received_at)
    except (_Slow, UnicodeError):
        return None
    return b"".join(out)


_K8S_TAIL = b"\x00" * 5  # actor, action, resource, outcome: ""; attributes: {}


def encode_audit_k8s(prefix: bytes, original: bytes, fields: tuple[Any, ...]) -> bytes:
    """A Kubernetes AuditEvent written without building its datum (the webhook's per-event
    path): ``prefix`` from :func:`audit_k8s_prefix`, then ``original`` and ``fields``, the 24
    values from ``api_version`` to ``annotations`` in schema order; the generic fields empty.

    Byte for byte :func:`encode_audit_event` of the same datum (tests/unit/test_codec.py).
    Raises :class:`AuditFastPathOff` for a value of another type than the datum's."""
    (
        api_version,
        audit_id,
        stage,
        level,
        verb,
        request_uri,
        user_name,
        user_uid,
        user_groups,
        extra,
        impersonated,
        source_ips,
        user_agent,
        resource,
        namespace,
        name,
        subresource,
        api_group,
        object_api_version,
        uid,
        code,
        received,
        stage_at,
        annotations,
    ) = fields
    out: list[bytes] = [prefix, avro_long(len(original)), original]
    app = out.append
    try:
        for value in (api_version, audit_id, stage, level, verb, request_uri, user_name, user_uid):
            if type(value) is not str:
                raise _Slow
            data = value.encode("utf-8")
            size = len(data)
            app(_PREFIX[size] if size < _PREFIXES else avro_long(size))
            app(data)
        _put_user(out, user_groups, extra, impersonated, source_ips)
        _put_run(
            out,
            (
                user_agent,
                resource,
                namespace,
                name,
                subresource,
                api_group,
                object_api_version,
                uid,
            ),
            b"\0" * 8,
        )
        _put_optional_long(out, code, _INT_MIN, _INT_MAX)
        _put_optional_long(out, received, _LONG_MIN, _LONG_MAX)
        _put_optional_long(out, stage_at, _LONG_MIN, _LONG_MAX)
        _put_str_map(out, annotations)
    except (_Slow, TypeError, UnicodeError):
        raise AuditFastPathOff("these values need the datum encoder") from None
    app(_K8S_TAIL)
    return b"".join(out)


def audit_generic_prefix(cluster: str) -> bytes | None:
    """The first bytes of every generic AuditEvent of one emitter (marker, fingerprint, cluster,
    source ``"generic"``) for :func:`encode_audit_generic`; None as :func:`audit_k8s_prefix`."""
    if not _audit_fast:
        return None
    out: list[bytes] = [_AUDIT_HEADER]
    try:
        _put_str(out, cluster)
    except (_Slow, UnicodeError):
        return None
    out.append(b"\x0egeneric")
    return b"".join(out)


# stage .. user_uid (6 strings), groups, extra, impersonated (null), source IPs, user_agent ..
# object_uid (8 strings), response_code (null): all empty in a generic event.
_GENERIC_MIDDLE = b"\x00" * 19


def encode_audit_generic(
    prefix: bytes,
    received_at: int,
    original: bytes,
    audit_id: str,
    timestamp: int,
    generic: tuple[str, str, str, str],
    attributes: dict[str, str],
) -> bytes:
    """A generic AuditEvent written without its datum (the SDK's per-event path): ``prefix``
    from :func:`audit_generic_prefix`, ``timestamp`` for both request_received_at and stage_at,
    ``generic`` = (actor, action, resource, outcome). Byte for byte :func:`encode_audit_event`
    of ``producers.k8s.generic_event``'s datum (tests). Raises :class:`AuditFastPathOff`."""
    out: list[bytes] = [prefix]
    try:
        _put_long(out, received_at)
        out.append(avro_long(len(original)))
        out.append(original)
        out.append(b"\x00")  # api_version ""
        _put_str(out, audit_id)
        out.append(_GENERIC_MIDDLE)
        _put_optional_long(out, timestamp, _LONG_MIN, _LONG_MAX)
        _put_optional_long(out, timestamp, _LONG_MIN, _LONG_MAX)
        out.append(b"\x00")  # annotations {}
        _put_run(out, generic, b"\0" * 4)
        _put_str_map(out, attributes)
    except (_Slow, TypeError, UnicodeError):
        raise AuditFastPathOff("these values need the datum encoder") from None
    return b"".join(out)


# --------------------------------------------------------------------------------------------
# the schemas shipped with sealtrail


def _load_packaged() -> dict[str, SchemaHandle]:
    loaded: dict[str, SchemaHandle] = {}
    root = resources.files("schemas")
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".avsc"):
            loaded[entry.name] = register(entry.read_text(encoding="utf-8"))
    return loaded


_PACKAGED = _load_packaged()
AUDIT_EVENT: SchemaHandle = _PACKAGED["audit_event.avsc"]
"""The current AuditEvent schema (raw topic values)."""
CHAINED_EVENT: SchemaHandle = _PACKAGED["chained_event.avsc"]
"""The current ChainedEvent schema (chain topic values)."""

_chained_fast: bool = CHAINED_EVENT.canonical_form == _CHAINED_V1_CANONICAL
_CHAINED_HEADER: bytes = CHAINED_EVENT.header
_audit_fast: bool = AUDIT_EVENT.canonical_form == _AUDIT_V1_CANONICAL
_AUDIT_HEADER: bytes = AUDIT_EVENT.header


# The verifier checks fields, not dicts: a tuple in ChainedEvent field order. (A hand-written
# reader for the v1 layout was tried and measured: about 4% faster per verified record than
# fastavro, not worth a second Avro decoder.)
ChainedFields = tuple[str, int, bytes, bytes, int, int, bytes]
_CHAINED_V1_HEADER = CHAINED_EVENT.header
"""(chain, seq, prev_hash, hash, source_offset, ingested_at, payload): ChainedEvent field order."""


# The plain version-1 layout after the chain string: seq, prev_hash and hash (32 bytes each,
# length 32 zigzagged = 0x40), source_offset, ingested_at, payload length. Varints of at most 9
# bytes; anything longer or otherwise unusual goes to fastavro.
_V = rb"[\x80-\xff]{0,8}[\x00-\x7f]"
CHAINED_TAIL = re.compile(rb"(%s)\x40(.{32})\x40(.{32})(%s)(%s)(%s)" % (_V, _V, _V, _V), re.S)
"""After the chain id: groups (seq varint, prev_hash, hash, source_offset varint, ingested_at
varint, payload length varint); the payload follows ``match.end()``."""


def zigzag(raw: bytes) -> int:
    """An Avro long from its varint bytes (as :data:`CHAINED_TAIL` captures them)."""
    n = shift = 0
    for byte in raw:
        n |= (byte & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1)


def parse_chained_fields(data: bytes) -> ChainedFields | None:
    """:func:`decode_chained_fields` without fastavro (no dict per record) for the plain
    version-1 layout: a short chain id, 32-byte hashes, varints of up to 9 bytes, nothing after
    the payload. ``None`` for anything else (fastavro then decides). Whatever it accepts,
    fastavro decodes to the same fields (tested on generated and mutated values)."""
    if data[:HEADER_SIZE] != _CHAINED_V1_HEADER or len(data) <= HEADER_SIZE:
        return None
    size = data[HEADER_SIZE]
    if size >= 0x80 or size & 1:
        return None
    end = HEADER_SIZE + 1 + (size >> 1)
    try:
        chain = data[HEADER_SIZE + 1 : end].decode()
    except UnicodeDecodeError:
        return None
    m = CHAINED_TAIL.match(data, end)
    if m is None or len(chain.encode()) != size >> 1:
        return None
    seq_raw, prev, hash_, offset_raw, at_raw, length_raw = m.groups()
    start = m.end()
    if zigzag(length_raw) != len(data) - start:
        return None
    return (
        chain,
        zigzag(seq_raw),
        prev,
        hash_,
        zigzag(offset_raw),
        zigzag(at_raw),
        data[start:],
    )


def chained_lead(chain: str) -> bytes | None:
    """The bytes every plain version-1 value of ``chain`` starts with (header and chain id),
    after which :data:`CHAINED_TAIL` matches; ``None`` when the chain id is too long for the
    plain layout. Lets a reader of one chain skip the chain id without decoding it."""
    raw = chain.encode()
    if len(raw) >= 0x40:
        return None
    return _CHAINED_V1_HEADER + bytes([len(raw) << 1]) + raw


def decode_chained_fields(data: bytes) -> ChainedFields:
    """A chain topic value as a :data:`ChainedFields` tuple (what the verifier checks)."""
    fields = parse_chained_fields(data)
    if fields is not None:
        return fields
    d = decode_chained(data)
    return (
        d["chain"],
        d["seq"],
        d["prev_hash"],
        d["hash"],
        d["source_offset"],
        d["ingested_at"],
        d["payload"],
    )
