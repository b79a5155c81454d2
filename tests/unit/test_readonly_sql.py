"""Which statements reading tools run: one read statement, nothing that writes."""

from __future__ import annotations

import pytest

from sealtrail.infra.errors import WriteRefused
from sealtrail.infra.readonly_sql import require_read_only


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  select * from events where verb = 'a;b' -- ; DROP\n",
        "WITH 1 AS x SELECT x;",
        "(SELECT 1) UNION ALL (SELECT 2)",
        "SHOW TABLES",
        "DESCRIBE TABLE events",
        "EXPLAIN SELECT 1",
        "EXISTS TABLE events",
        "/* INTO OUTFILE */ SELECT 'into outfile'",
        "SELECT `;` FROM t",
        "SELECT 'it''s; fine', 'a\\';b'",
    ],
)
def test_reads_pass(sql: str) -> None:
    require_read_only(sql)


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("ALTER TABLE sealtrail.events UPDATE verb='get' WHERE seq=1", "ALTER statements"),
        ("INSERT INTO events SELECT * FROM events", "INSERT statements"),
        ("DROP TABLE events", "DROP statements"),
        ("KILL QUERY WHERE 1", "KILL statements"),
        ("SET readonly = 0", "SET statements"),
        ("SYSTEM STOP MERGES", "SYSTEM statements"),
        ("-- comment\n  truncate table events", "TRUNCATE statements"),
        ("SELECT 1; KILL QUERY WHERE 1", "only one statement"),
        ("SELECT 1 ; SELECT 2", "only one statement"),
        ("SELECT 1 INTO  OUTFILE '/tmp/x'", "INTO OUTFILE"),
        ("", "empty"),
        ("  ;  ", "empty"),
    ],
)
def test_writes_refused_in_one_sentence(sql: str, words: str) -> None:
    with pytest.raises(WriteRefused) as info:
        require_read_only(sql)
    message = str(info.value)
    assert words in message
    assert "\n" not in message and message.count(". ") == 0
