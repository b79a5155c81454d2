"""The live-read socket's wire format and where the socket lives.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON. Values JSON cannot
carry exactly are tagged objects with one key: ``{"$b": base64}`` bytes, ``{"$dt": iso}``
datetime, ``{"$d": iso}`` date, ``{"$t": [...]}`` tuple, ``{"$m": [[k, v], ...]}`` map (any key
type), ``{"$u": str}`` UUID, ``{"$dec": str}`` Decimal, ``{"$ip": str}`` IP address. Plain JSON
objects appear only as the messages themselves (no key starts with ``$``), so every value
decodes back unambiguously.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import ipaddress
import json
import os
import socket
import struct
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ClickHouseError, ConfigError

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "decode",
    "encode",
    "encode_rows",
    "read_frame",
    "socket_path",
    "write_frame",
]

MAX_REQUEST_BYTES = 4 << 20
MAX_RESPONSE_BYTES = 512 << 20
_HEADER = struct.Struct(">I")
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with its NUL


def socket_path(settings: Settings, store: Path) -> Path:
    """Where the owner of ``store`` serves reads: ``$SEALTRAIL_HOME/run/read-<digest>.sock``, one
    socket per store, found by every process with the same settings. A Unix socket path holds at
    most 107 bytes; when that one is longer, the socket lives in ``<temp dir>/sealtrail-<uid>/``
    instead (the server refuses that directory unless it is this user's, and makes it 0700)."""
    digest = hashlib.sha256(str(store.resolve()).encode()).hexdigest()[:12]
    name = f"read-{digest}.sock"
    path = (settings.home / "run" / name).absolute()
    if _fits(path):
        return path
    private = Path(tempfile.gettempdir()) / f"sealtrail-{os.getuid()}" / name
    if _fits(private):
        return private
    raise ConfigError(
        f"the live-read socket path {path} is longer than a Unix socket path can be "
        f"({_SUN_PATH_MAX} bytes); set SEALTRAIL_HOME to a shorter directory"
    )


def _fits(path: Path) -> bool:
    # The server binds a temporary name first (".<name>.<pid>", up to 9 bytes longer).
    return len(str(path).encode()) + 9 <= _SUN_PATH_MAX


# -- values ------------------------------------------------------------------------------------


def _tag(value: Any) -> Any:
    """The JSON form of one value that :func:`json.dumps` cannot write as is."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dt.datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$d": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"$u": str(value)}
    if isinstance(value, decimal.Decimal):
        return {"$dec": str(value)}
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return {"$ip": str(value)}
    raise TypeError(f"cannot send a {type(value).__name__} over the live-read socket")


def _deep(value: Any) -> Any:
    """Tag a value with nested maps and tuples (which ``json.dumps`` would flatten)."""
    if isinstance(value, dict):
        return {"$m": [[_deep(k), _deep(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"$t": [_deep(v) for v in value]}
    if isinstance(value, list):
        return [_deep(v) for v in value]
    if value is None or isinstance(value, str | int | float):
        return value
    return _tag(value)


def _untag(obj: dict[str, Any]) -> Any:
    if len(obj) != 1 or not next(iter(obj)).startswith("$"):
        return obj  # a message itself (values are always tagged)
    ((key, value),) = obj.items()
    if key == "$b":
        return base64.b64decode(value)
    if key == "$dt":
        return dt.datetime.fromisoformat(value)
    if key == "$d":
        return dt.date.fromisoformat(value)
    if key == "$t":
        return tuple(value)
    if key == "$m":
        return {_hashable(k): v for k, v in value}
    if key == "$u":
        return uuid.UUID(value)
    if key == "$dec":
        return decimal.Decimal(value)
    if key == "$ip":
        return ipaddress.ip_address(value)
    raise ValueError(f"unknown tag {key!r}")


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def encode(doc: dict[str, Any]) -> bytes:
    """A message as frame payload; values may be bytes, datetimes, maps, tuples, ..."""
    return json.dumps(_deep_doc(doc), separators=(",", ":"), default=_tag).encode()


def _deep_doc(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if k == "rows" else _deep(v)) for k, v in doc.items()}


def encode_rows(rows: Sequence[Sequence[Any]], types: Sequence[str]) -> list[list[Any]]:
    """Rows ready for :func:`encode`: maps and tuples tagged column by column (only columns whose
    type can hold them are walked; the rest go through ``json.dumps``' hook)."""
    nested = [i for i, t in enumerate(types) if "Map(" in t or "Tuple(" in t]
    if not nested:
        return [list(row) for row in rows]
    out = []
    for row in rows:
        cells = list(row)
        for i in nested:
            cells[i] = _deep(cells[i])
        out.append(cells)
    return out


def decode(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload, object_hook=_untag)
    except ValueError as exc:
        raise ClickHouseError(
            f"the live-read socket sent a message that does not parse ({exc}); "
            "restart the sink, or check that client and sink run the same sealtrail"
        ) from None
    if not isinstance(doc, dict):
        raise ClickHouseError("the live-read socket sent a message that is not an object")
    return doc


# -- frames ------------------------------------------------------------------------------------


def write_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, limit: int) -> bytes | None:
    """The next frame's payload; ``None`` at a clean end of stream. A frame over ``limit`` bytes
    or a stream cut inside a frame raises :class:`ConnectionError`."""
    header = _read_exact(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > limit:
        raise ConnectionError(f"frame of {size} bytes is over the {limit}-byte limit")
    payload = _read_exact(sock, size)
    if payload is None:
        raise ConnectionError("the stream ended inside a frame")
    return payload
