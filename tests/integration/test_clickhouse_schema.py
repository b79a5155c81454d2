"""processors.clickhouse_schema: migrations in real chdb, applied once, tunings skipped where
the server does not know their setting."""

from __future__ import annotations

import logging
import uuid

import pytest
from clickhouse_connect.driver.client import Client

from processors.clickhouse_schema import MIGRATIONS, Migration, applied_versions, migrate
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ClickHouseError


def _client(chdb_dsn: str) -> tuple[Client, str]:
    db = f"schema_{uuid.uuid4().hex[:10]}"
    settings = Settings(kafka="127.0.0.1:1", clickhouse=chdb_dsn, clickhouse_database=db)
    return clickhouse.connect(settings), db


def test_every_migration_applies_once_and_events_carries_its_settings(chdb_dsn: str) -> None:
    client, db = _client(chdb_dsn)
    assert migrate(client, db) == [m.version for m in MIGRATIONS]
    assert migrate(client, db) == []
    (create,) = client.query(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} "
        "AND name = 'events'",
        parameters={"db": db},
    ).result_rows[0]
    assert "min_bytes_for_wide_part = 134217728" in create
    assert "merge_selector_base = 10" in create


def test_a_tuning_the_server_does_not_know_is_skipped_with_a_warning(
    chdb_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, db = _client(chdb_dsn)
    migrate(client, db)
    unknown = "ALTER TABLE {db}.events MODIFY SETTING no_such_merge_tree_setting = 1"
    tuning = Migration(90, "a setting from a newer ClickHouse", (unknown,), tuning=True)
    with caplog.at_level(logging.WARNING, logger="processors.clickhouse_schema"):
        assert migrate(client, db, [*MIGRATIONS, tuning]) == [90]
    assert "does not know a table setting" in caplog.text
    assert "no_such_merge_tree_setting" in caplog.text  # what to run after an upgrade
    assert 90 in applied_versions(client, db)
    # Anything else a migration is refused stops the start, as one sentence.
    schema = Migration(91, "a column", (unknown,))
    with pytest.raises(ClickHouseError, match="ClickHouse refused a statement"):
        migrate(client, db, [*MIGRATIONS, schema])
    # A tuning refused for another reason than an unknown setting stops it too.
    bad_table = "ALTER TABLE {db}.no_such_table MODIFY SETTING merge_selector_base = 10"
    broken = Migration(92, "a tuning of a missing table", (bad_table,), tuning=True)
    with pytest.raises(ClickHouseError, match="ClickHouse refused a statement"):
        migrate(client, db, [*MIGRATIONS, broken])
