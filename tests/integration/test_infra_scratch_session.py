"""sealtrail.infra.scratch_session on embedded ClickHouse: the verifier's check session writes
only its own files, reads them back, and cannot change the store."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

import pytest

from processors.clickhouse_schema import migrate
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ClickHouseError
from sealtrail.infra.reader import open_reader
from sealtrail.infra.scratch_session import Append, ScratchSession


def test_files_round_trip_and_stay_private(base_settings: Settings) -> None:
    client = clickhouse.connect(base_settings)
    db = base_settings.clickhouse_database
    migrate(client, db)
    session = ScratchSession.open(base_settings.clickhouse_dsn)
    try:
        assert stat.S_IMODE(session.directory.stat().st_mode) == 0o700
        path = session.new_file(b"head:")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        sql = "SELECT toString(number) FROM numbers({n:UInt64})"
        session.append(path, sql, {"n": 3})
        session.append(path, sql, {"n": 2})
        # Bytes as they are: no row delimiter, the header first.
        assert path.read_bytes() == b"head:01201"
        rows = session.query(f"SELECT * FROM file('{path}', 'RawBLOB')").result_rows
        assert rows == [("head:01201",)]
        with pytest.raises(ClickHouseError, match="not a file of the check session"):
            session.append(Path("/tmp/elsewhere.avro"), sql, {"n": 1})
    finally:
        session.close()
    assert not session.directory.exists()


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO {db}.rejects (chain, error) VALUES ('c', 'x')",
        "ALTER TABLE {db}.events DELETE WHERE 1",
        "DROP TABLE {db}.rejects",
        "CREATE TABLE {db}.other (x UInt8) ENGINE = Memory",
        "SET readonly = 0",
    ],
)
def test_the_session_cannot_change_the_store(base_settings: Settings, statement: str) -> None:
    client = clickhouse.connect(base_settings)
    db = base_settings.clickhouse_database
    migrate(client, db)
    session = ScratchSession.open(base_settings.clickhouse_dsn)
    try:
        with pytest.raises(ClickHouseError, match="readonly"):
            session.query(statement.format(db=db))
    finally:
        session.close()
    assert client.query(f"SELECT count() FROM {db}.rejects").result_rows == [(0,)]
    assert client.query(f"EXISTS TABLE {db}.rejects").result_rows == [(1,)]


def test_a_direct_reader_gives_one_and_closes_it(base_settings: Settings) -> None:
    client = clickhouse.connect(base_settings)
    migrate(client, base_settings.clickhouse_database)
    reader = open_reader(base_settings)
    session = reader.scratch()
    assert session is not None and reader.scratch() is session
    reader.close()
    assert not session.directory.exists()


def test_only_the_owner_of_the_store_opens_one(tmp_path: Path) -> None:
    with pytest.raises(ClickHouseError, match="opened first"):
        ScratchSession.open(f"chdb://{tmp_path / 'nobody'}")
    with pytest.raises(ClickHouseError, match="opened first"):
        ScratchSession.open("http://localhost:8123")


def test_no_usable_temp_dir_means_python_not_a_crash(
    base_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = clickhouse.connect(base_settings)
    migrate(client, base_settings.clickhouse_database)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(ClickHouseError, match="set TMPDIR to a writable directory"):
        ScratchSession.open(base_settings.clickhouse_dsn)
    reader = open_reader(base_settings)
    try:
        assert reader.scratch() is None  # the decoded columns are compared in Python then
    finally:
        reader.close()
    # A directory that went away: one sentence, which the check turns into Python for the page.
    session = ScratchSession.over(client, tmp_path / "gone")
    with pytest.raises(ClickHouseError, match="cannot write a scratch file"):
        session.new_file(b"x")


def test_appends_at_once_write_what_appends_one_after_another_write(
    base_settings: Settings, tmp_path: Path
) -> None:
    """append_all runs its appends each on a session of its own (a store this process owns)
    or one after another (a session made over a client): the files are the same either way;
    a failing append raises once the others have ended, and they are written."""
    client = clickhouse.connect(base_settings)
    migrate(client, base_settings.clickhouse_database)
    sql = "SELECT toString(number) FROM numbers({lo:UInt64}, {n:UInt64})"
    own = ScratchSession.open(base_settings.clickhouse_dsn)
    plain = ScratchSession.over(client, tmp_path)
    try:
        for session in (own, plain):
            paths = [session.new_file(f"{i}:".encode()) for i in range(3)]
            session.append_all(
                [Append(p, sql, {"lo": 10 * i, "n": 3}) for i, p in enumerate(paths)]
            )
            assert [p.read_bytes() for p in paths] == [b"0:012", b"1:101112", b"2:202122"]
            again = [session.new_file(b"") for _ in range(2)]
            with pytest.raises(ClickHouseError, match="refused a verifier query"):
                session.append_all(
                    [
                        Append(again[0], "SELECT no_such_column", {}),
                        Append(again[1], sql, {"lo": 5, "n": 2}),
                    ]
                )
            assert again[1].read_bytes() == b"56"
            with pytest.raises(ClickHouseError, match="not a file of the check session"):
                session.append_all(
                    [
                        Append(paths[0], sql, {"lo": 0, "n": 1}),
                        Append(Path("/tmp/x.avro"), sql, {"lo": 0, "n": 1}),
                    ]
                )
    finally:
        own.close()
    assert not own.directory.exists()
