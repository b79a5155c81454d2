"""Reading tools open the store read-only: refused writes, whichever way they are sent."""

from __future__ import annotations

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from processors.clickhouse_schema import migrate
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import WriteRefused
from sealtrail.infra.reader import DirectReader, as_reader, driver_error, open_reader

ALTER = "ALTER TABLE events UPDATE verb = 'get' WHERE seq = 1"


def test_server_queries_carry_readonly() -> None:
    # A server DSN's client is not a read session: every query it sends carries readonly=1.
    assert DirectReader.query_settings(session_read_only=False) == {"readonly": 1}
    assert DirectReader.query_settings(session_read_only=True) == {}


def test_direct_reads_are_read_only(base_settings: Settings) -> None:
    client = clickhouse.connect(base_settings)
    migrate(client, base_settings.clickhouse_database)
    db = base_settings.clickhouse_database
    # The per-query setting alone refuses a write that got past the statement check (on a
    # handle of its own: chdb keeps a failed statement's settings in its session).
    path = clickhouse.chdb_path(base_settings.clickhouse_dsn)
    other = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    with pytest.raises(DatabaseError) as info:
        other.query(f"ALTER TABLE {db}.events DELETE WHERE 1", settings={"readonly": 1})
    assert isinstance(driver_error(info.value), WriteRefused)
    other.close()
    # The owner's session keeps writing: the read settings never leak into it.
    client.command(f"INSERT INTO {db}.rejects (chain, error) VALUES ('c', 'x')")
    reader = open_reader(base_settings)
    try:
        assert isinstance(reader, DirectReader) and reader.via == "direct"
        assert reader.query("SELECT count() FROM rejects").result_rows == [(1,)]
        with pytest.raises(WriteRefused, match="ALTER statements are refused"):
            reader.query(ALTER)
        # The session itself is readonly=1 with its limits, which no query can lift.
        with pytest.raises(DatabaseError) as info:
            reader.client.command(f"INSERT INTO {db}.rejects (chain, error) VALUES ('c', 'y')")
        assert isinstance(driver_error(info.value), WriteRefused)
        with pytest.raises(DatabaseError):
            reader.client.command("SET max_result_rows = 0")
    finally:
        reader.close()
    with pytest.raises(WriteRefused, match="INTO OUTFILE"):
        as_reader(client, db).query("SELECT 1 INTO OUTFILE '/tmp/sealtrail-x'")
    assert client.query(f"SELECT count() FROM {db}.rejects").result_rows == [(1,)]
