"""processors.sink.subtrees: ClickHouse hashes whole blocks exactly as the pure code, in chdb."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from processors.clickhouse_schema import migrate
from processors.integrity.subtrees import MIN_HEIGHT, Node, NodeBuilder, perfect_root
from processors.sink.subtrees import BLOCK, SubtreeWriter, block_roots_sql
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings

CHAIN = "audit.events/0"


@pytest.fixture
def db(chdb_dsn: str) -> Iterator[tuple[Client, str]]:
    client = clickhouse.connect(Settings(kafka="127.0.0.1:1", clickhouse=chdb_dsn))
    name = f"subtrees_{uuid.uuid4().hex[:10]}"
    migrate(client, name)
    yield client, name
    client.command(f"DROP DATABASE IF EXISTS {name}")


def _store(client: Client, db: str, hashes: dict[int, bytes]) -> None:
    rows = [[CHAIN, seq, h] for seq, h in sorted(hashes.items())]
    client.insert(f"{db}.events", rows, column_names=["chain", "seq", "hash"])


def _leaf(h: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(b"\x00" + h).digest()


def test_block_roots_equal_the_pure_roots_and_name_incomplete_blocks(
    db: tuple[Client, str],
) -> None:
    client, name = db
    hashes = {seq: os.urandom(32) for seq in range(5 * BLOCK)}
    del hashes[3 * BLOCK + 17]  # block 3 lacks a record
    _store(client, name, hashes)
    _store(client, name, {2 * BLOCK + 5: hashes[2 * BLOCK + 5]})  # a repeated row, same hash
    rows = client.query(
        block_roots_sql(name), parameters={"chain": CHAIN, "lo": BLOCK, "hi": 5 * BLOCK}
    ).result_rows
    assert [(int(i), int(n)) for i, n, _root in rows] == [
        (1, BLOCK), (2, BLOCK), (3, BLOCK - 1), (4, BLOCK)
    ]  # fmt: skip
    for index, _n, root in rows:
        if index != 3:
            block = [_leaf(hashes[s]) for s in range(index * BLOCK, (index + 1) * BLOCK)]
            assert bytes(root) == perfect_root(block)


def test_writer_stores_the_nodes_the_pure_builder_makes_and_waits_for_a_hole(
    db: tuple[Client, str],
) -> None:
    client, name = db
    hashes = {seq: os.urandom(32) for seq in range(6 * BLOCK + 10)}
    missing = 4 * BLOCK + 1
    _store(client, name, {s: h for s, h in hashes.items() if s != missing})
    inserted: list[tuple[str, str]] = []

    def insert(table: str, names: Any, columns: list[list[Any]], token: str) -> None:
        client.insert(f"{name}.{table}", columns, column_names=list(names), column_oriented=True)
        inserted.append((table, token))

    writer = SubtreeWriter(name)
    writer.advance(client, CHAIN, len(hashes), insert)  # a record of the page is missing
    assert inserted == []
    _store(client, name, {missing: hashes[missing]})
    writer.advance(client, CHAIN, len(hashes), insert)
    assert inserted == [("subtrees", f"subtrees:{CHAIN}:0-{6 * BLOCK}")]

    builder, expected = NodeBuilder(), {}
    for seq in range(6 * BLOCK):
        for node, value in builder.append(_leaf(hashes[seq])):
            expected[node] = value
    stored = client.query(f"SELECT height, idx, hash FROM {name}.subtrees").result_rows
    assert {Node(int(h), int(i)): bytes(v) for h, i, v in stored} == expected
    assert min(node.height for node in expected) == MIN_HEIGHT
