"""Live reads: a running ``sealtrail sink`` serves read-only queries on its socket."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealtrail.infra import livewire
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ClickHouseError, WriteRefused
from sealtrail.infra.reader import SocketReader, open_reader
from sealtrail.supervisor import child_env
from tests.integration.sink_support import ChainWriter, sample_payloads

ALTER = "ALTER TABLE events UPDATE verb = 'get' WHERE seq = 1"


def _wait(predicate, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sealtrail", *args],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _start_sink(settings: Settings) -> subprocess.Popen[bytes]:
    settings.home.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "sealtrail", "sink", "--batch-ms", "50"],
        env=child_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=(settings.home / "sink.log").open("ab"),
    )


@pytest.fixture
def live(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Path]]:
    live_settings = settings.with_(clickhouse=f"chdb://{tmp_path / 'ch'}")
    sink = _start_sink(live_settings)
    path = livewire.socket_path(live_settings, tmp_path / "ch")
    try:
        assert _wait(path.exists), "the sink never opened its live-read socket"
        yield live_settings, path
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(60)


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _count(reader: SocketReader | object) -> int:
    return int(reader.query("SELECT count() FROM events").result_rows[0][0])  # type: ignore[attr-defined]


def test_queries_while_the_sink_ingests(live: tuple[Settings, Path]) -> None:
    settings, path = live
    writer = ChainWriter(settings)
    payloads = sample_payloads()
    writer.append(0, payloads)
    reader = open_reader(settings)
    try:
        assert isinstance(reader, SocketReader)
        assert _wait(lambda: _count(reader) == len(payloads))
        writer.append(1, payloads)  # the sink keeps storing while a reader is connected
        assert _wait(lambda: _count(reader) == 2 * len(payloads))
        result = reader.query(
            "SELECT chain, seq, hash, ingested_at, annotations FROM events "
            "WHERE seq = {seq:UInt64} ORDER BY chain",
            {"seq": 3},
        )
        assert result.column_names == ("chain", "seq", "hash", "ingested_at", "annotations")
        assert result.column_types[2] == "FixedString(32)"
        assert [row[:2] for row in result.result_rows] == [
            (f"{settings.topics.raw}/0", 3),
            (f"{settings.topics.raw}/1", 3),
        ]
        assert all(isinstance(row[2], bytes) and len(row[2]) == 32 for row in result.result_rows)
        assert all(isinstance(row[4], dict) for row in result.result_rows)
        # Writes are refused in one sentence, by the client and, sent raw, by the server.
        with pytest.raises(WriteRefused, match="ALTER statements are refused"):
            reader.query(ALTER)
        # The result-size limit stops a query in one sentence; the connection stays usable.
        with pytest.raises(ClickHouseError, match="read limit"):
            reader.query("SELECT number FROM numbers(3000000)")
        assert reader.query("SELECT 1").result_rows == [(1,)]
    finally:
        reader.close()
    db = settings.clickhouse_database
    for sql in (ALTER, "KILL QUERY WHERE 1", "SELECT 1; DROP TABLE events", "SET readonly = 0"):
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(path))
            livewire.write_frame(raw, livewire.encode({"sql": sql, "database": db}))
            answer = livewire.decode(livewire.read_frame(raw, 1 << 20) or b"{}")
        assert answer["ok"] is False and answer["kind"] == "refused", (sql, answer)
    # A setting in the query cannot lift the session's readonly or its limits.
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(str(path))
        request = {"sql": "SELECT 1 SETTINGS max_result_rows = 0", "database": db}
        livewire.write_frame(raw, livewire.encode(request))
        answer = livewire.decode(livewire.read_frame(raw, 1 << 20) or b"{}")
    assert answer["ok"] is False and "read-only" in answer["error"]
    # The CLI: the same store answers through the socket; a write exits 2 with one line.
    done = _cli(settings, "query", "--format", "csv", "SELECT count() FROM events")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == str(2 * len(payloads))
    refused = _cli(settings, "query", ALTER)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "ALTER statements are refused" in refused.stderr
    unchanged = _cli(settings, "query", "--format", "csv", "SELECT count() FROM events "
                     "WHERE seq = 1 AND verb = 'get'")  # fmt: skip
    assert unchanged.returncode == 0, unchanged.stderr


def test_socket_is_for_its_user_only(live: tuple[Settings, Path]) -> None:
    _settings, path = live
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    if os.getuid() != 0:
        pytest.skip("needs root to try the socket as another user")
    probe = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(path)!r})\n"
        "except PermissionError:\n"
        "    sys.exit(13)\n"
        "sys.exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], check=False, timeout=30)
    assert done.returncode == 13


def test_stale_socket_of_a_killed_sink(settings: Settings, tmp_path: Path) -> None:
    live_settings = settings.with_(clickhouse=f"chdb://{tmp_path / 'ch'}")
    path = livewire.socket_path(live_settings, tmp_path / "ch")
    sink = _start_sink(live_settings)
    try:
        assert _wait(path.exists)
    finally:
        sink.send_signal(signal.SIGKILL)
        sink.wait(30)
    assert path.exists() and not _listening(path), "a killed sink leaves a dead socket"
    # Nobody owns the store: the stale socket is ignored and the store is opened directly.
    done = _cli(live_settings, "query", "--format", "csv", "SELECT 41 + 1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == "42"
    # The next sink replaces it and serves again.
    sink = _start_sink(live_settings)
    try:
        assert _wait(lambda: _listening(path))
        done = _cli(live_settings, "query", "--format", "csv", "SELECT 6 * 7")
        assert done.returncode == 0 and done.stdout.splitlines()[1] == "42", done.stderr
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(60)
    assert not path.exists(), "a sink that stops removes its socket"
