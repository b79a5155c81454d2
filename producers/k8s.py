"""Kubernetes audit input -> AuditEvent datums (``schemas/audit_event.avsc``).

Accepted input:

* a webhook body: an ``audit.k8s.io`` ``EventList`` (``v1``, ``v1beta1`` or ``v1alpha1``);
* a single ``Event`` object (current or pre-v1, which may have no top-level ``apiVersion``);
* log backend files, one ``Event`` per line (:func:`parse_line`).

The ``original`` field of every datum is the event's exact bytes from the input: for an
``EventList`` the raw slice of each item, found while scanning, never a re-serialization.

Whole-body problems raise :class:`BadRequestBody`; problems with one event become a
:class:`Reject` (or :class:`RejectError` from :func:`parse_line`) carrying a reason and the raw
bytes, so nothing is silently dropped.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NoReturn

import msgspec

from schemas.codec import (
    AuditFastPathOff,
    audit_k8s_prefix,
    encode_audit_event,
    encode_audit_generic,
    encode_audit_k8s,
)
from sealtrail.infra.errors import DecodeError

__all__ = [
    "audit_event",
    "MAX_EVENT_BYTES",
    "REJECT_KEEP_BYTES",
    "REJECT_SOURCE",
    "BadRequestBody",
    "EncodedBody",
    "ParseResult",
    "Reject",
    "RejectError",
    "RejectKind",
    "generic_event",
    "eventlist_api_version",
    "is_event_list",
    "encode_body",
    "encode_generic_event",
    "encode_lines",
    "parse_body",
    "parse_item",
    "parse_line",
    "reject_event",
    "parse_timestamp",
]

MAX_EVENT_BYTES = 32 * 1024 * 1024
"""Default largest event chained as an event (the JSON object's bytes). kube-apiserver sends
events whole unless --audit-webhook-truncate-enabled is set; RequestResponse events of large
objects run to megabytes. A larger event is chained as a reject holding its first
:data:`REJECT_KEEP_BYTES` and the SHA-256 of all of it (docs/SCHEMAS.md)."""

REJECT_KEEP_BYTES = 1024 * 1024
"""How much of an item over the event limit a reject keeps (the SHA-256 covers all of it)."""

REJECT_SOURCE = "reject"
"""The ``source`` of a chained reject: input that could not be accepted as an event."""

AUDIT_GROUP = "audit.k8s.io/"
AUDIT_VERSIONS = frozenset({"audit.k8s.io/v1", "audit.k8s.io/v1beta1", "audit.k8s.io/v1alpha1"})

_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


class RejectKind(StrEnum):
    """Why input was refused, as a small fixed set (metric labels, filters); the reason text
    says the details."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"  # not UTF-8, not JSON, nested too deeply, data after the value
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"  # a field, kind or apiVersion of the wrong type or value
    BAD_BODY = "bad_body"  # a whole request body
    OTHER = "other"


class BadRequestBody(DecodeError):
    """A whole request body is not Kubernetes audit JSON (nothing in it can be used)."""


class RejectError(DecodeError):
    """One event could not be accepted; ``reason`` says why and ``raw`` holds its bytes."""

    def __init__(self, reason: str, raw: bytes, kind: RejectKind = RejectKind.OTHER) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Reject:
    """Input that was not accepted as an event: why, and its exact bytes.

    ``raw`` is all of it, or only its first bytes when ``size`` says it was longer; ``sha256``
    then covers all ``size`` bytes (None: the hash of ``raw``)."""

    reason: str
    raw: bytes
    size: int | None = None
    sha256: bytes | None = None
    kind: RejectKind = RejectKind.OTHER

    @property
    def total_size(self) -> int:
        return len(self.raw) if self.size is None else self.size

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest() if self.sha256 is None else self.sha256


def over_limit_reason(size: int, limit: int) -> str:
    return f"event is {size} bytes, over the {limit} byte limit"


def _blank_datum() -> dict[str, Any]:
    """An AuditEvent datum holding the schema's defaults (schemas/audit_event.avsc), its keys in
    schema order, with new lists and maps on each call: the one place the datum's 33 keys are
    spelled out. :func:`audit_event` and the fast path's datum fill it in."""
    return {
        "cluster": "",
        "source": "",
        "received_at": 0,
        "original": b"",
        "api_version": "",
        "audit_id": "",
        "stage": "",
        "level": "",
        "verb": "",
        "request_uri": "",
        "user_name": "",
        "user_uid": "",
        "user_groups": [],
        "user_extra": {},
        "impersonated_user": None,
        "source_ips": [],
        "user_agent": "",
        "object_resource": "",
        "object_namespace": "",
        "object_name": "",
        "object_subresource": "",
        "object_api_group": "",
        "object_api_version": "",
        "object_uid": "",
        "response_code": None,
        "request_received_at": None,
        "stage_at": None,
        "annotations": {},
        "actor": "",
        "action": "",
        "resource": "",
        "outcome": "",
        "attributes": {},
    }


_KEYS = tuple(_blank_datum())
# The fields the fast path decodes from an event, api_version to annotations, in schema order.
_FIELD_NAMES = _KEYS[_KEYS.index("api_version") : _KEYS.index("annotations") + 1]


def audit_event(
    cluster: str, source: str, received_at_us: int, original: bytes, **fields: Any
) -> dict[str, Any]:
    """An AuditEvent datum: ``fields`` over the schema's defaults (:func:`_blank_datum`).

    A key the schema lacks raises ``TypeError`` (a typo would otherwise be dropped by the
    encoder)."""
    datum = _blank_datum()
    unknown = fields.keys() - datum.keys()
    if unknown:
        raise TypeError(f"AuditEvent has no field(s) {', '.join(sorted(unknown))}")
    datum["cluster"] = cluster
    datum["source"] = source
    datum["received_at"] = received_at_us
    datum["original"] = original
    datum.update(fields)
    return datum


def reject_event(
    reject: Reject, cluster: str, producer: str, received_at_us: int
) -> dict[str, Any]:
    """The AuditEvent datum that chains a reject (``source`` = ``"reject"``, docs/SCHEMAS.md).

    ``original`` holds the rejected bytes (their first :data:`REJECT_KEEP_BYTES` when they were
    longer), ``attributes`` the reason, the full size and the SHA-256 of all of them, so the
    chain proves what was refused even when it does not hold every byte. ``audit_id`` is
    ``reject:<sha256>``: a client that resends the same bytes makes the same reject."""
    digest = reject.digest.hex()
    return audit_event(
        cluster,
        REJECT_SOURCE,
        received_at_us,
        reject.raw,
        audit_id=f"reject:{digest}",
        actor=producer,
        action="reject",
        outcome="rejected",
        attributes={
            "kind": str(reject.kind),
            "reason": reject.reason,
            "bytes": str(reject.total_size),
            "sha256": digest,
            "truncated": "true" if reject.total_size > len(reject.raw) else "false",
        },
    )


@dataclass(slots=True)
class ParseResult:
    """Accepted AuditEvent datums and rejected items, in input order within each list."""

    events: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


class _Bad(Exception):  # noqa: N818 - internal signal carrying a reject reason and kind
    def __init__(self, reason: str, kind: RejectKind) -> None:
        super().__init__(reason)
        self.kind = kind


# --------------------------------------------------------------------------------------------
# timestamps

_TS_RE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:[Zz]|([+-])(\d\d):(\d\d))",
    re.ASCII,
)
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()


_MINUTES: dict[str, int] = {}
"""Seconds since the epoch of "YYYY-MM-DDTHH:MM:" prefixes already seen in a valid timestamp of
Kubernetes' own form ("2024-11-19T10:00:00.123456Z", RFC3339Micro): events of one batch share
them, so only the seconds and the fraction are read for the rest."""


def parse_timestamp(text: str) -> int:
    """RFC 3339 timestamp -> microseconds since the Unix epoch (fraction truncated to micros).

    Raises ``ValueError`` if ``text`` is not an RFC 3339 date-time.
    """
    if len(text) == 27 and text[19] == "." and (text[26] == "Z" or text[26] == "z"):
        base = _MINUTES.get(text[:17])
        if base is not None:
            digits = text[17:19] + text[20:26]
            if digits.isascii() and digits.isdigit() and text[17] < "6":
                return (base + int(digits[:2])) * 1_000_000 + int(digits[2:])
    micros = _parse_timestamp(text)
    if len(text) == 27 and text[19] == "." and (text[26] == "Z" or text[26] == "z"):
        if len(_MINUTES) >= 4096:
            _MINUTES.clear()
        _MINUTES[text[:17]] = micros // 1_000_000 - int(text[17:19])
    return micros


def _parse_timestamp(text: str) -> int:
    m = _TS_RE.fullmatch(text)
    if m is None:
        raise ValueError("not an RFC 3339 date-time")
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = m.groups()
    days = _dt.date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    h, mi, s = int(hour), int(minute), int(second)
    if h > 23 or mi > 59 or s > 59:
        raise ValueError("time of day out of range")
    secs = days * 86400 + h * 3600 + mi * 60 + s
    if sign is not None:
        oh, om = int(off_h), int(off_m)
        if oh > 23 or om > 59:
            raise ValueError("UTC offset out of range")
        offset = oh * 3600 + om * 60
        secs = secs - offset if sign == "+" else secs + offset
    micros = 0
    if frac:
        micros = int(frac[:6].ljust(6, "0"))
    return secs * 1_000_000 + micros


# --------------------------------------------------------------------------------------------
# field extraction


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _str(obj: Mapping[str, Any], key: str, where: str = "") -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise _Bad(f"{where}{key} must be a string, not {_jtype(value)}", RejectKind.WRONG_TYPE)
    return value


def _required(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None or value == "":
        raise _Bad(f"{key} is missing", RejectKind.MISSING_FIELD)
    if type(value) is not str:
        raise _Bad(f"{key} must be a string, not {_jtype(value)}", RejectKind.WRONG_TYPE)
    return value


def _obj(obj: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not dict:
        raise _Bad(f"{key} must be an object, not {_jtype(value)}", RejectKind.WRONG_TYPE)
    return value


def _str_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if type(value) is not list:
        raise _Bad(
            f"{name} must be an array of strings, not {_jtype(value)}", RejectKind.WRONG_TYPE
        )
    for item in value:
        if type(item) is not str:
            raise _Bad(
                f"{name} must be an array of strings, but holds {_jtype(item)}",
                RejectKind.WRONG_TYPE,
            )
    return value


def _str_map(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise _Bad(
            f"{name} must be an object of strings, not {_jtype(value)}", RejectKind.WRONG_TYPE
        )
    for item in value.values():
        if type(item) is not str:
            raise _Bad(
                f"{name} values must be strings, but one is {_jtype(item)}", RejectKind.WRONG_TYPE
            )
    return value


def _time(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not str:
        raise _Bad(f"{key} must be an RFC 3339 string, not {_jtype(value)}", RejectKind.WRONG_TYPE)
    try:
        return parse_timestamp(value)
    except ValueError:
        raise _Bad(
            f"{key} {_clip(value)} is not an RFC 3339 timestamp", RejectKind.WRONG_TYPE
        ) from None


def _clip(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_datum(
    item: Any,
    raw: bytes,
    cluster: str,
    received_at_us: int,
    list_api_version: str,
    in_list: bool,
) -> dict[str, Any]:
    """Validate one audit Event object and map it to an AuditEvent datum."""
    if type(item) is not dict:
        raise _Bad(f"event must be a JSON object, not {_jtype(item)}", RejectKind.WRONG_TYPE)
    kind = item.get("kind")
    if kind is None:
        if not in_list:
            raise _Bad('kind is missing (expected "Event")', RejectKind.MISSING_FIELD)
    elif kind != "Event":
        raise _Bad(f'kind must be "Event", not {_clip(kind)}', RejectKind.WRONG_TYPE)

    api_version = item.get("apiVersion")
    if api_version is None:
        api_version = list_api_version
    elif type(api_version) is not str:
        raise _Bad(f"apiVersion must be a string, not {_jtype(api_version)}", RejectKind.WRONG_TYPE)
    elif not api_version.startswith(AUDIT_GROUP):
        raise _Bad(
            f"apiVersion {_clip(api_version)} is not an audit.k8s.io version", RejectKind.WRONG_TYPE
        )

    audit_id = _required(item, "auditID")
    stage = _required(item, "stage")
    verb = _required(item, "verb")

    user = _obj(item, "user") or {}
    impersonated = _obj(item, "impersonatedUser")
    ref = _obj(item, "objectRef") or {}
    status = _obj(item, "responseStatus")

    code: int | None = None
    if status is not None:
        value = status.get("code")
        if value is not None:
            if type(value) is not int:
                raise _Bad(
                    f"responseStatus.code must be an integer, not {_jtype(value)}",
                    RejectKind.WRONG_TYPE,
                )
            if not _INT32_MIN <= value <= _INT32_MAX:
                raise _Bad("responseStatus.code is out of range", RejectKind.OTHER)
            code = value

    extra_raw = user.get("extra")
    extra: dict[str, list[str]] = {}
    if extra_raw is not None:
        if type(extra_raw) is not dict:
            raise _Bad(
                f"user.extra must be an object, not {_jtype(extra_raw)}", RejectKind.WRONG_TYPE
            )
        for key, values in extra_raw.items():
            extra[key] = _str_list(values, "user.extra values")

    received = _time(item, "requestReceivedTimestamp")
    if received is None:
        received = _time(item, "timestamp")  # v1alpha1 events carry only "timestamp"

    return audit_event(
        cluster,
        "k8s",
        received_at_us,
        raw,
        api_version=api_version,
        audit_id=audit_id,
        stage=stage,
        level=_str(item, "level"),
        verb=verb,
        request_uri=_str(item, "requestURI"),
        user_name=_str(user, "username", "user."),
        user_uid=_str(user, "uid", "user."),
        user_groups=_str_list(user.get("groups"), "user.groups"),
        user_extra=extra,
        impersonated_user=(
            None if impersonated is None else _str(impersonated, "username", "impersonatedUser.")
        ),
        source_ips=_str_list(item.get("sourceIPs"), "sourceIPs"),
        user_agent=_str(item, "userAgent"),
        object_resource=_str(ref, "resource", "objectRef."),
        object_namespace=_str(ref, "namespace", "objectRef."),
        object_name=_str(ref, "name", "objectRef."),
        object_subresource=_str(ref, "subresource", "objectRef."),
        object_api_group=_str(ref, "apiGroup", "objectRef."),
        object_api_version=_str(ref, "apiVersion", "objectRef."),
        object_uid=_str(ref, "uid", "objectRef."),
        response_code=code,
        request_received_at=received,
        stage_at=_time(item, "stageTimestamp"),
        annotations=_str_map(item.get("annotations"), "annotations"),
    )


# --------------------------------------------------------------------------------------------
# decoding: msgspec (C) on the fast path, the checks above only to say why an event was refused
#
# Each item is decoded straight into the typed structs below. When that fails, or a value breaks
# a rule the types cannot say (a required field empty, an apiVersion outside audit.k8s.io, an
# out-of-range code, a bad timestamp), the item is decoded again with the standard library and
# :func:`_to_datum` names the first problem, so reasons and datums stay those of the checks above.


class _User(msgspec.Struct):
    username: str | None = None
    uid: str | None = None
    groups: list[str] | None = None
    extra: dict[str, list[str] | None] | None = None


class _Impersonated(msgspec.Struct):
    username: str | None = None


class _ObjectRef(msgspec.Struct):
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    apiGroup: str | None = None  # noqa: N815 - the JSON member's name
    apiVersion: str | None = None  # noqa: N815
    uid: str | None = None


class _Status(msgspec.Struct):
    code: int | None = None


class _Event(msgspec.Struct):
    """The members of an audit Event that sealtrail extracts (all others are skipped in C)."""

    kind: str | None = None
    apiVersion: str | None = None  # noqa: N815
    auditID: str | None = None  # noqa: N815
    stage: str | None = None
    verb: str | None = None
    level: str | None = None
    requestURI: str | None = None  # noqa: N815
    userAgent: str | None = None  # noqa: N815
    user: _User | None = None
    impersonatedUser: _Impersonated | None = None  # noqa: N815
    objectRef: _ObjectRef | None = None  # noqa: N815
    responseStatus: _Status | None = None  # noqa: N815
    sourceIPs: list[str] | None = None  # noqa: N815
    requestReceivedTimestamp: str | None = None  # noqa: N815
    timestamp: str | None = None
    stageTimestamp: str | None = None  # noqa: N815
    annotations: dict[str, str] | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
# Sorted keys, no spaces, UTF-8 (not ASCII-escaped): byte for byte json.dumps(sort_keys=True,
# separators=(",", ":"), ensure_ascii=False), which wrote generic originals before.
_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_decode_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_items = msgspec.json.Decoder(list[msgspec.Raw] | None).decode
_encode_key = msgspec.json.encode
_EMPTY_REF = _ObjectRef()


class _Refused(Exception):  # noqa: N818 - internal signal: the fast path cannot take this item
    pass


def _fast_fields(ev: _Event, list_api: str, in_list: bool) -> tuple[Any, ...]:
    """A decoded event's datum fields from ``api_version`` to ``annotations``, in schema order
    (:data:`_FIELD_NAMES`), or :class:`_Refused` if a rule beyond the types fails."""
    kind = ev.kind
    if kind is None:
        if not in_list:
            raise _Refused
    elif kind != "Event":
        raise _Refused
    api_version = ev.apiVersion
    if api_version is None:
        api_version = list_api
    elif not api_version.startswith(AUDIT_GROUP):
        raise _Refused
    if not ev.auditID or not ev.stage or not ev.verb:
        raise _Refused
    code = None
    status = ev.responseStatus
    if status is not None:
        code = status.code
        if code is not None and not _INT32_MIN <= code <= _INT32_MAX:
            raise _Refused
    try:
        text = ev.requestReceivedTimestamp
        if text is None:
            text = ev.timestamp  # v1alpha1 events carry only "timestamp"
        received = None if text is None else parse_timestamp(text)
        text = ev.stageTimestamp
        stage_at = None if text is None else parse_timestamp(text)
    except ValueError:
        raise _Refused from None
    user = ev.user
    if user is None:
        user_name = user_uid = ""
        groups: list[str] = []
        extra: dict[str, list[str]] = {}
    else:
        user_name = user.username or ""
        user_uid = user.uid or ""
        groups = user.groups or []
        extra = {} if user.extra is None else {k: v or [] for k, v in user.extra.items()}
    impersonated = ev.impersonatedUser
    ref = ev.objectRef or _EMPTY_REF
    return (
        api_version,
        ev.auditID,
        ev.stage,
        ev.level or "",
        ev.verb,
        ev.requestURI or "",
        user_name,
        user_uid,
        groups,
        extra,
        None if impersonated is None else impersonated.username or "",
        ev.sourceIPs or [],
        ev.userAgent or "",
        ref.resource or "",
        ref.namespace or "",
        ref.name or "",
        ref.subresource or "",
        ref.apiGroup or "",
        ref.apiVersion or "",
        ref.uid or "",
        code,
        received,
        stage_at,
        ev.annotations or {},
    )


def _fast_datum(
    ev: _Event, raw: bytes, cluster: str, received_at_us: int, list_api: str, in_list: bool
) -> dict[str, Any]:
    """The datum of a decoded event, or :class:`_Refused` if a rule beyond the types fails."""
    datum = _blank_datum()
    datum["cluster"] = cluster
    datum["source"] = "k8s"
    datum["received_at"] = received_at_us
    datum["original"] = raw
    datum.update(zip(_FIELD_NAMES, _fast_fields(ev, list_api, in_list), strict=True))
    return datum


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


_loads = json.JSONDecoder(parse_constant=_no_constants).decode


def _item(
    raw: bytes,
    cluster: str,
    received_at_us: int,
    list_api: str,
    in_list: bool,
    max_event_bytes: int,
    what: str,
) -> dict[str, Any] | Reject:
    """One event's exact bytes (an item, a single-Event body or a log line; ``what`` names it
    in reasons) -> its datum or a Reject."""
    if len(raw) > max_event_bytes:
        return Reject(over_limit_reason(len(raw), max_event_bytes), raw, kind=RejectKind.TOO_LARGE)
    try:
        # msgspec checks UTF-8 only in the strings it decodes, not in the ones it skips.
        if not raw.isascii():
            raw.decode("utf-8")
        return _fast_datum(_decode_event(raw), raw, cluster, received_at_us, list_api, in_list)
    except UnicodeDecodeError:
        return Reject(f"{what} is not valid UTF-8", raw, kind=RejectKind.MALFORMED)
    except RecursionError:
        return Reject(f"{what} JSON is nested too deeply", raw, kind=RejectKind.MALFORMED)
    except msgspec.ValidationError:
        pass  # valid JSON of the wrong shape: say which member is wrong, below
    except msgspec.DecodeError as exc:
        if "trailing characters" in str(exc):
            after = "the JSON object" if what == "line" else "its JSON value"
            return Reject(f"{what} has data after {after}", raw, kind=RejectKind.MALFORMED)
        return Reject(f"{what} is not valid JSON ({exc})", raw, kind=RejectKind.MALFORMED)
    except _Refused:
        pass
    try:
        item = _loads(raw.decode("utf-8"))
    except RecursionError:
        return Reject(f"{what} JSON is nested too deeply", raw, kind=RejectKind.MALFORMED)
    except ValueError as exc:  # not reached: msgspec took the syntax; kept for safety
        return Reject(f"{what} is not valid JSON ({exc})", raw, kind=RejectKind.MALFORMED)
    if what == "line" and type(item) is dict and item.get("kind") == "EventList":
        return Reject(
            "line is an EventList; log files hold one Event per line",
            raw,
            kind=RejectKind.WRONG_TYPE,
        )
    try:
        return _to_datum(item, raw, cluster, received_at_us, list_api, in_list)
    except _Bad as bad:
        return Reject(str(bad), raw, kind=bad.kind)


def _bad_body(message: str) -> NoReturn:
    raise BadRequestBody(message)


_BOM = b"\xef\xbb\xbf"
_WS = b" \t\n\r"


def _value_type(raw: bytes) -> str:
    """The JSON type of a valid JSON value's bytes, as :func:`_jtype` names it."""
    first = raw[:1]
    if first == b"{":
        return "an object"
    if first == b"[":
        return "an array"
    if first == b'"':
        return "a string"
    if first in (b"t", b"f"):
        return "a boolean"
    if first == b"n":
        return "null"
    return "a number"


def _top_members(body: bytes) -> dict[str, msgspec.Raw]:
    """The top-level object's members as their exact bytes.

    Raises :class:`BadRequestBody` where the body is not one JSON object or has two ``items``
    members (a JSON decoder keeps only the last of two equal keys: the first array's events
    would be answered 200 and never produced)."""
    try:
        members = _decode_members(body)
    except RecursionError:
        _bad_body("Request body JSON is nested too deeply; send audit.k8s.io events.")
    except msgspec.DecodeError as exc:
        if "trailing characters" in str(exc):
            _bad_body("Request body has data after the JSON object; send one object per request.")
        reason = "unexpected end of data" if "truncated" in str(exc) else str(exc)
        _bad_body(f"Request body is not valid JSON ({reason}); send audit.k8s.io events.")
    # No key was dropped when the body is exactly its members written compactly with plain keys
    # (kube-apiserver's form); anything else is checked key by key below.
    compact = 1 + max(len(members), 1)  # the braces and the commas
    for key, value in members.items():
        spelled = _encode_key(key)
        if b"\\" in spelled:
            compact = -1
            break
        compact += len(spelled) + 1 + len(memoryview(value))
    if compact != len(body):
        _check_one_items_member(body)
    return members


def _check_one_items_member(body: bytes) -> None:
    """The slow, exact check of :func:`_top_members` for bodies not written compactly."""
    top: list[list[tuple[str, Any]]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        top[:] = [pairs]  # the top-level object is the last one finished
        return {}

    try:
        json.loads(body, object_pairs_hook=hook, parse_constant=_no_constants)
    except RecursionError:
        _bad_body("Request body JSON is nested too deeply; send audit.k8s.io events.")
    except ValueError as exc:
        _bad_body(f"Request body is not valid JSON ({exc}); send audit.k8s.io events.")
    if top and sum(1 for key, _v in top[0] if key == "items") > 1:
        _bad_body("Request body has two items arrays; send one EventList per request.")


def _split_body(body: bytes) -> tuple[list[bytes], str, bool]:
    """A whole body -> (the exact bytes of each event in it, the EventList's apiVersion, whether
    they are EventList items); a single Event is one event of its own bytes."""
    if not isinstance(body, bytes | bytearray | memoryview):
        _bad_body("Request body must be bytes; pass the raw HTTP body.")
    body = bytes(body)
    # msgspec checks UTF-8 only in the strings it decodes; the items' bytes are only skipped.
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            _bad_body("Request body is not valid UTF-8; send UTF-8 JSON audit events.")
    start = len(_BOM) if body.startswith(_BOM) else 0
    body = body[start:].strip(_WS) if start else body.strip(_WS)
    if not body:
        _bad_body("Request body is empty; send an audit.k8s.io EventList or Event.")
    if body[0] != 0x7B:  # {
        _bad_body("Request body is not a JSON object; send an audit.k8s.io EventList or Event.")
    members = _top_members(body)
    envelope: dict[str, Any] = {
        key: _loads(bytes(members[key]).decode("utf-8"))
        for key in ("kind", "apiVersion")
        if key in members
    }
    if not is_event_list(envelope):
        return [body], "", False
    list_api = eventlist_api_version(envelope)
    if "items" not in members:
        _bad_body("EventList has no items array; send the webhook backend's EventList.")
    try:
        items = _decode_items(members["items"])
    except msgspec.ValidationError:
        kind = _value_type(bytes(members["items"]))
        _bad_body(f"EventList items must be an array, not {kind}.")
    except RecursionError:
        _bad_body("Request body JSON is nested too deeply; send audit.k8s.io events.")
    return ([] if items is None else [bytes(raw) for raw in items]), list_api, True


def parse_body(
    body: bytes,
    cluster: str,
    received_at_us: int,
    *,
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> ParseResult:
    """Parse a request body holding an ``EventList`` or a single ``Event``.

    Every item ends up either in ``events`` (AuditEvent datums stamped with ``cluster`` and
    ``received_at_us``) or in ``rejects``. Raises :class:`BadRequestBody` if the body as a whole
    is unusable (not UTF-8 JSON, not an object, a kind other than Event/EventList, an unknown
    EventList apiVersion, or ``items`` not an array).
    """
    raws, list_api, in_list = _split_body(body)
    result = ParseResult()
    for raw in raws:
        _add(
            result, _item(raw, cluster, received_at_us, list_api, in_list, max_event_bytes, "event")
        )
    return result


@dataclass(slots=True)
class EncodedBody:
    """A body's accepted events as raw topic values, and its rejects, each in body order."""

    values: list[bytes] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def encode_body(
    body: bytes,
    cluster: str,
    received_at_us: int,
    *,
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> EncodedBody:
    """:func:`parse_body` with each event already encoded: ``values[i]`` is
    ``encode_audit_event`` of the i-th datum, byte for byte, written straight from the decoded
    fields (no datum dict) wherever the event is accepted at the first look."""
    raws, list_api, in_list = _split_body(body)
    out = EncodedBody()
    prefix = audit_k8s_prefix(cluster, received_at_us)
    for raw in raws:
        value = _fast_value(raw, prefix, list_api, in_list, max_event_bytes)
        if value is not None:
            out.values.append(value)
            continue
        outcome = _item(raw, cluster, received_at_us, list_api, in_list, max_event_bytes, "event")
        if type(outcome) is Reject:
            out.rejects.append(outcome)
        else:
            out.values.append(encode_audit_event(outcome))  # type: ignore[arg-type]
    return out


def encode_lines(
    lines: Iterable[bytes],
    cluster: str,
    received_at_us: int,
    *,
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> list[bytes | Reject]:
    """:func:`parse_line` over log lines (blank ones skipped), in order: each event encoded as
    by :func:`encode_body`, each refused line a Reject (what ``parse_line`` raises, as a value)."""
    prefix = audit_k8s_prefix(cluster, received_at_us)
    out: list[bytes | Reject] = []
    for line in lines:
        raw = bytes(line).strip(_WS)
        if not raw:
            continue
        value = _fast_value(raw, prefix, "", False, max_event_bytes)
        if value is not None:
            out.append(value)
            continue
        outcome = _item(raw, cluster, received_at_us, "", False, max_event_bytes, "line")
        out.append(outcome if type(outcome) is Reject else encode_audit_event(outcome))  # type: ignore[arg-type]
    return out


def _fast_value(
    raw: bytes, prefix: bytes | None, list_api: str, in_list: bool, max_event_bytes: int
) -> bytes | None:
    """An event accepted at the first look, encoded; None for anything :func:`_item` must see."""
    if prefix is None or len(raw) > max_event_bytes:
        return None
    try:
        if not raw.isascii():
            raw.decode("utf-8")
        return encode_audit_k8s(prefix, raw, _fast_fields(_decode_event(raw), list_api, in_list))
    except (msgspec.MsgspecError, RecursionError, UnicodeDecodeError, _Refused, AuditFastPathOff):
        return None  # refused at the first look: _item says why (or accepts it after all)


def _add(result: ParseResult, outcome: dict[str, Any] | Reject) -> None:
    if type(outcome) is Reject:
        result.rejects.append(outcome)
    else:
        result.events.append(outcome)  # type: ignore[arg-type]


def is_event_list(envelope: Mapping[str, Any]) -> bool:
    """True for an EventList; False for a single Event; BadRequestBody for any other kind."""
    kind = envelope.get("kind")
    if kind == "EventList":
        return True
    if type(kind) is str and kind != "Event":
        _bad_body(f"Request body kind {_clip(kind)} is not Event or EventList.")
    return False


def eventlist_api_version(envelope: Mapping[str, Any]) -> str:
    """The EventList's apiVersion ("" if absent); BadRequestBody for an unsupported one."""
    list_api = envelope.get("apiVersion")
    if list_api is None:
        return ""
    if type(list_api) is not str or list_api not in AUDIT_VERSIONS:
        _bad_body(
            f"EventList apiVersion {_clip(list_api)} is not supported; send "
            "audit.k8s.io/v1 or v1beta1."
        )
    return list_api


def parse_item(
    raw: bytes,
    cluster: str,
    received_at_us: int,
    list_api: str,
    *,
    in_list: bool = True,
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> dict[str, Any] | Reject:
    """One EventList item (or a whole single Event) from its exact bytes: a datum or a Reject.

    The same checks as :func:`parse_body` makes on the items of a body parsed whole."""
    return _item(raw, cluster, received_at_us, list_api, in_list, max_event_bytes, "event")


def parse_line(
    line: bytes,
    cluster: str,
    received_at_us: int,
    *,
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> dict[str, Any]:
    """Parse one line of a log backend file (one ``Event`` JSON object) into a datum.

    ``original`` is the line without surrounding whitespace (and line terminator). Raises
    :class:`RejectError` with the reason and the raw line; callers skip blank lines themselves.
    """
    raw = bytes(line).strip(_WS)
    if not raw:
        raise RejectError("line is empty", raw, RejectKind.MALFORMED)
    outcome = _item(raw, cluster, received_at_us, "", False, max_event_bytes, "line")
    if type(outcome) is Reject:
        raise RejectError(outcome.reason, raw, outcome.kind)
    return outcome  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# generic (non-Kubernetes) events


def _generic_parts(
    cluster: str,
    actor: str,
    action: str,
    resource: str,
    outcome: str,
    attributes: Mapping[str, str] | None,
    timestamp_us: int,
    event_id: str,
    received_at_us: int | None,
) -> tuple[dict[str, str], bytes, int]:
    """A generic event's checked attributes, its ``original`` and its received_at."""
    str_ = str
    if not (
        type(cluster) is str_
        and type(actor) is str_
        and type(action) is str_
        and type(resource) is str_
        and type(outcome) is str_
        and type(event_id) is str_
    ):
        for name, value in (
            ("cluster", cluster),
            ("actor", actor),
            ("action", action),
            ("resource", resource),
            ("outcome", outcome),
            ("event_id", event_id),
        ):
            if type(value) is not str:
                raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if type(timestamp_us) is not int:
        raise TypeError(f"timestamp_us must be an int, not {type(timestamp_us).__name__}")
    attrs: dict[str, str] = {}
    if attributes is not None:
        if not isinstance(attributes, Mapping):
            raise TypeError(f"attributes must be a mapping, not {type(attributes).__name__}")
        for key, value in attributes.items():
            if type(key) is not str or type(value) is not str:
                raise TypeError("attributes keys and values must be str")
            attrs[key] = value
    if received_at_us is None:
        received_at_us = time.time_ns() // 1000
    elif type(received_at_us) is not int:
        raise TypeError(f"received_at_us must be an int, not {type(received_at_us).__name__}")
    original = _encode_sorted(
        {
            "action": action,
            "actor": actor,
            "attributes": attrs,
            "event_id": event_id,
            "outcome": outcome,
            "resource": resource,
            "timestamp_us": timestamp_us,
        }
    )
    return attrs, original, received_at_us


def generic_event(
    cluster: str,
    actor: str,
    action: str,
    resource: str,
    outcome: str,
    attributes: Mapping[str, str] | None,
    timestamp_us: int,
    event_id: str,
    *,
    received_at_us: int | None = None,
) -> dict[str, Any]:
    """An AuditEvent datum for a non-Kubernetes source (the SDK).

    ``original`` is the canonical JSON (sorted keys, no spaces, UTF-8) of the given fields.
    ``received_at_us`` defaults to now. Raises ``TypeError`` for arguments of the wrong type
    and ``UnicodeEncodeError`` (a ``ValueError``) for strings that are not valid Unicode.
    """
    attrs, original, received_at_us = _generic_parts(
        cluster,
        actor,
        action,
        resource,
        outcome,
        attributes,
        timestamp_us,
        event_id,
        received_at_us,
    )
    return audit_event(
        cluster,
        "generic",
        received_at_us,
        original,
        audit_id=event_id,
        request_received_at=timestamp_us,
        stage_at=timestamp_us,
        actor=actor,
        action=action,
        resource=resource,
        outcome=outcome,
        attributes=attrs,
    )


def encode_generic_event(
    prefix: bytes | None,
    cluster: str,
    actor: str,
    action: str,
    resource: str,
    outcome: str,
    attributes: Mapping[str, str] | None,
    timestamp_us: int,
    event_id: str,
    *,
    received_at_us: int | None = None,
) -> bytes:
    """``encode_audit_event(generic_event(...))``, written without the datum (the SDK's
    per-event path); ``prefix`` is ``audit_generic_prefix(cluster)``. Raises as
    :func:`generic_event` does, or :class:`schemas.codec.EncodeError`."""
    attrs, original, received_at_us = _generic_parts(
        cluster,
        actor,
        action,
        resource,
        outcome,
        attributes,
        timestamp_us,
        event_id,
        received_at_us,
    )
    if prefix is not None:
        try:
            return encode_audit_generic(
                prefix,
                received_at_us,
                original,
                event_id,
                timestamp_us,
                (actor, action, resource, outcome),
                attrs,
            )
        except AuditFastPathOff:
            pass  # e.g. a timestamp outside the Avro long: the encoder says what is wrong
    return encode_audit_event(
        generic_event(
            cluster,
            actor,
            action,
            resource,
            outcome,
            attrs,
            timestamp_us,
            event_id,
            received_at_us=received_at_us,
        )
    )
