"""The live-read wire format: every value a query can return comes back equal and typed."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import os
import socket
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealtrail.infra import livewire
from sealtrail.infra.config import Settings


def _roundtrip(rows: list[list[object]], types: list[str]) -> list[list[object]]:
    doc = {"ok": True, "rows": livewire.encode_rows(rows, types), "types": types}
    return list(livewire.decode(livewire.encode(doc))["rows"])


def test_values_keep_their_types() -> None:
    when = dt.datetime(2026, 12, 2, 23, 59, 1, 123456, tzinfo=dt.UTC)
    row: list[object] = [
        b"\x00\xff" * 16,
        when,
        dt.date(2026, 1, 2),
        uuid.UUID(int=7),
        decimal.Decimal("1.25"),
        ipaddress.ip_address("10.0.0.1"),
        {"a": "b"},
        {1: [b"x"]},
        ("t", 1),
        ["l", None],
        1.5,
        None,
    ]
    types = ["FixedString(32)", "DateTime64(6, 'UTC')", "Date", "UUID", "Decimal(9, 2)",
             "IPv4", "Map(String, String)", "Map(UInt8, Array(String))", "Tuple(String, UInt8)",
             "Array(Nullable(String))", "Float64", "Nullable(Int32)"]  # fmt: skip
    (back,) = _roundtrip([row], types)
    assert back == row
    assert isinstance(back[0], bytes) and back[1].tzinfo is not None


@given(st.lists(st.tuples(st.binary(max_size=40), st.text(max_size=20), st.integers())))
def test_bytes_text_ints_roundtrip(rows: list[tuple[bytes, str, int]]) -> None:
    back = _roundtrip([list(r) for r in rows], ["String", "String", "Int64"])
    assert back == [list(r) for r in rows]


def test_frames_and_limits() -> None:
    a, b = socket.socketpair()
    with a, b:
        livewire.write_frame(a, b"hello")
        assert livewire.read_frame(b, 10) == b"hello"
        livewire.write_frame(a, b"x" * 11)
        with pytest.raises(ConnectionError, match="over the 10-byte limit"):
            livewire.read_frame(b, 10)
    c, d = socket.socketpair()
    with c, d:
        c.sendall(b"\x00\x00\x00\x05ab")
        c.close()
        with pytest.raises(ConnectionError, match="inside a frame"):
            livewire.read_frame(d, 10)


def test_socket_path_per_store_and_length(tmp_path: Path) -> None:
    home = Path("/srv/sealtrail")  # short enough for a socket path (nothing is created)
    settings = Settings(home=home)
    one = livewire.socket_path(settings, tmp_path / "a")
    two = livewire.socket_path(settings, tmp_path / "b")
    assert one != two and one.parent == home / "run"
    # A home too deep for a Unix socket path: a private directory in the temp dir instead.
    deep = livewire.socket_path(Settings(home=tmp_path / ("x" * 120)), tmp_path / "a")
    assert deep.parent.name == f"sealtrail-{os.getuid()}" and deep.name == one.name
    assert len(str(deep)) + 9 <= 107
