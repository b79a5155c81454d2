"""REFERENCE MODEL, for tests only: sealtrail's parser before msgspec (hand-written scanner
over the standard library's JSON decoder), kept verbatim as the oracle of
tests/unit/test_k8s_differential.py. Production code never imports it.
"""

# ruff: noqa

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from producers.k8s import (
    AUDIT_GROUP,
    AUDIT_VERSIONS,
    MAX_EVENT_BYTES,
    BadRequestBody,
    ParseResult,
    Reject,
    RejectError,
    RejectKind,
    audit_event,
    over_limit_reason,
)

_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


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


def parse_timestamp(text: str) -> int:
    """RFC 3339 timestamp -> microseconds since the Unix epoch (fraction truncated to micros).

    Raises ``ValueError`` if ``text`` is not an RFC 3339 date-time.
    """
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
# scanning


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)
_raw_decode = _DECODER.raw_decode
_WS_MATCH = re.compile(r"[ \t\n\r]*").match


def _ws(text: str, i: int) -> int:
    """Index of the first non-whitespace character at or after ``i``."""
    m = _WS_MATCH(text, i)
    return i if m is None else m.end()


def _bad_body(message: str) -> NoReturn:
    raise BadRequestBody(message)


def _scan_array(text: str, i: int, spans: list[tuple[int, int]], values: list[Any]) -> int:
    """Scan a JSON array starting at ``text[i] == '['``; record each element's span."""
    i = _ws(text, i + 1)
    if text[i] == "]":
        return i + 1
    while True:
        value, end = _raw_decode(text, i)
        spans.append((i, end))
        values.append(value)
        i = _ws(text, end)
        ch = text[i]
        if ch == ",":
            i = _ws(text, i + 1)
        elif ch == "]":
            return i + 1
        else:
            raise ValueError(f"expected ',' or ']' at character {i}")


def _scan_top(text: str, start: int) -> tuple[dict[str, Any], list[tuple[int, int]], int]:
    """Scan the top-level object at ``text[start] == '{'``.

    Returns the object, the spans of the elements of its ``items`` array (if any), and the end.
    """
    obj: dict[str, Any] = {}
    spans: list[tuple[int, int]] = []
    i = _ws(text, start + 1)
    if text[i] == "}":
        return obj, spans, i + 1
    while True:
        if text[i] != '"':
            raise ValueError(f"expected a property name at character {i}")
        key, i = _scanstring(text, i + 1, True)
        i = _ws(text, i)
        if text[i] != ":":
            raise ValueError(f"expected ':' at character {i}")
        i = _ws(text, i + 1)
        if key == "items":
            if "items" in obj:
                _bad_body("Request body has two items arrays; send one EventList per request.")
            if text[i] == "[":
                values: list[Any] = []
                i = _scan_array(text, i, spans, values)
                obj[key] = values
            else:
                obj[key], i = _raw_decode(text, i)
        else:
            obj[key], i = _raw_decode(text, i)
        i = _ws(text, i)
        ch = text[i]
        if ch == ",":
            i = _ws(text, i + 1)
        elif ch == "}":
            return obj, spans, i + 1
        else:
            raise ValueError(f"expected ',' or '}}' at character {i}")


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
    if not isinstance(body, bytes | bytearray | memoryview):
        _bad_body("Request body must be bytes; pass the raw HTTP body.")
    body = bytes(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        _bad_body("Request body is not valid UTF-8; send UTF-8 JSON audit events.")
    ascii_only = len(text) == len(body)
    i = _ws(text, 1 if text.startswith("\ufeff") else 0)
    if i >= len(text):
        _bad_body("Request body is empty; send an audit.k8s.io EventList or Event.")
    if text[i] != "{":
        _bad_body("Request body is not a JSON object; send an audit.k8s.io EventList or Event.")
    try:
        obj, spans, end = _scan_top(text, i)
    except BadRequestBody:
        raise
    except RecursionError:
        _bad_body("Request body JSON is nested too deeply; send audit.k8s.io events.")
    except (ValueError, IndexError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        if isinstance(exc, IndexError):
            reason = "unexpected end of data"
        _bad_body(f"Request body is not valid JSON ({reason}); send audit.k8s.io events.")
    if _ws(text, end) != len(text):
        _bad_body("Request body has data after the JSON object; send one object per request.")

    def raw_of(span: tuple[int, int]) -> bytes:
        s, e = span
        return body[s:e] if ascii_only else text[s:e].encode("utf-8")

    result = ParseResult()
    if is_event_list(obj):
        list_api = eventlist_api_version(obj)
        if "items" not in obj:
            _bad_body("EventList has no items array; send the webhook backend's EventList.")
        items = obj["items"]
        if items is None:
            return result
        if type(items) is not list:
            _bad_body(f"EventList items must be an array, not {_jtype(items)}.")
        for span, item in zip(spans, items, strict=True):
            _accept(
                result, item, raw_of(span), cluster, received_at_us, list_api, True, max_event_bytes
            )
        return result
    _accept(result, obj, raw_of((i, end)), cluster, received_at_us, "", False, max_event_bytes)
    return result


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
    if len(raw) > max_event_bytes:
        return Reject(over_limit_reason(len(raw), max_event_bytes), raw, kind=RejectKind.TOO_LARGE)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Reject("event is not valid UTF-8", raw, kind=RejectKind.MALFORMED)
    try:
        item, end = _raw_decode(text, 0)
    except RecursionError:
        return Reject("event JSON is nested too deeply", raw, kind=RejectKind.MALFORMED)
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return Reject(f"event is not valid JSON ({reason})", raw, kind=RejectKind.MALFORMED)
    if end != len(text):
        return Reject("event has data after its JSON value", raw, kind=RejectKind.MALFORMED)
    try:
        return _to_datum(item, raw, cluster, received_at_us, list_api, in_list)
    except _Bad as bad:
        return Reject(str(bad), raw, kind=bad.kind)


def _accept(
    result: ParseResult,
    item: Any,
    raw: bytes,
    cluster: str,
    received_at_us: int,
    list_api: str,
    in_list: bool,
    max_event_bytes: int,
) -> None:
    if len(raw) > max_event_bytes:
        result.rejects.append(
            Reject(over_limit_reason(len(raw), max_event_bytes), raw, kind=RejectKind.TOO_LARGE)
        )
        return
    try:
        result.events.append(_to_datum(item, raw, cluster, received_at_us, list_api, in_list))
    except _Bad as bad:
        result.rejects.append(Reject(str(bad), raw, kind=bad.kind))


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
    raw = bytes(line).strip(b" \t\r\n")
    if not raw:
        raise RejectError("line is empty", raw, RejectKind.MALFORMED)
    if len(raw) > max_event_bytes:
        raise RejectError(over_limit_reason(len(raw), max_event_bytes), raw, RejectKind.TOO_LARGE)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RejectError("line is not valid UTF-8", raw, RejectKind.MALFORMED) from None
    try:
        item, end = _raw_decode(text, 0)
    except RecursionError:
        raise RejectError("line JSON is nested too deeply", raw, RejectKind.MALFORMED) from None
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise RejectError(f"line is not valid JSON ({reason})", raw, RejectKind.MALFORMED) from None
    if end != len(text):
        raise RejectError("line has data after the JSON object", raw, RejectKind.MALFORMED)
    if type(item) is dict and item.get("kind") == "EventList":
        raise RejectError(
            "line is an EventList; log files hold one Event per line", raw, RejectKind.WRONG_TYPE
        )
    try:
        return _to_datum(item, raw, cluster, received_at_us, "", False)
    except _Bad as bad:
        raise RejectError(str(bad), raw, bad.kind) from None
