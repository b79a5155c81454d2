"""The sink's stored Merkle subtrees: after each events insert, the nodes its records complete.

Per chain the writer knows ``through``: the leaves (whole 256-leaf blocks) whose nodes are in the
``subtrees`` table. Once the sink's stored rows reach past another block, ClickHouse hashes those
blocks from the record hashes in ``events`` (what ClickHouse holds is what proofs will read),
leaf hashes and the 255 nodes inside each block, in SQL: 0.08-0.11 s per 65,536 records against
0.17 s reading the hashes into Python and hashing them there. The blocks' roots go to
:class:`processors.integrity.subtrees.NodeBuilder`, which links them into the higher nodes, and
the completed nodes are inserted in one block with a deduplication token naming the leaf range.
``through`` is re-read from the table on start and on every partition assignment, so a crash
between the events insert and this one is caught up (reading what is missing), and a retried
insert is stored once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from processors.clickhouse_schema import SUBTREE_COLUMNS
from processors.integrity.subtrees import MIN_HEIGHT, MissingNode, Node, NodeBuilder, perfect_cover

log = logging.getLogger(__name__)

__all__ = ["PAGE_LEAVES", "SubtreeWriter", "block_roots_sql"]

BLOCK = 1 << MIN_HEIGHT
PAGE_LEAVES = 256 * BLOCK  # record hashes read per round (8 MiB)
Insert = Callable[[str, Sequence[str], list[list[Any]], str], None]


@dataclass(slots=True)
class _Chain:
    builder: NodeBuilder

    @property
    def through(self) -> int:
        return self.builder.size


class SubtreeWriter:
    def __init__(self, database: str) -> None:
        self.db = database
        self._chains: dict[str, _Chain] = {}
        self.nodes_written = 0

    def reset(self) -> None:
        """Forget what is known (another sink may have written): re-read on next use."""
        self._chains.clear()

    def advance(self, client: Client, chain: str, stored: int, insert: Insert) -> None:
        """Write the nodes of every whole block below ``stored`` (all seqs below it stored)."""
        state = self._chains.get(chain)
        if state is None:
            state = self._chains[chain] = self._load(client, chain)
        target = stored - stored % BLOCK
        while state.through < target:
            lo = state.through
            hi = min(target, lo + PAGE_LEAVES)
            roots = self._block_roots(client, chain, lo, hi)
            if len(roots) != (hi - lo) // BLOCK:
                log.warning(
                    "chain %s: ClickHouse does not hold all of the records %d..%d; subtrees wait",
                    chain,
                    lo,
                    hi - 1,
                )
                return
            rows: list[list[Any]] = []
            for root in roots:
                for node, value in state.builder.append_block(root):
                    rows.append([chain, node.height, node.index, value])
            insert(
                "subtrees",
                SUBTREE_COLUMNS,
                [list(column) for column in zip(*rows, strict=True)],
                f"subtrees:{chain}:{lo}-{hi}",
            )
            self.nodes_written += len(rows)

    def _block_roots(self, client: Client, chain: str, lo: int, hi: int) -> list[bytes]:
        """The roots of the whole blocks in seq [lo, hi) (``lo`` at a block boundary), in order,
        up to the first block of which ClickHouse does not hold every record."""
        result = client.query(
            block_roots_sql(self.db),
            parameters={"chain": chain, "lo": lo, "hi": hi},
        )
        roots: list[bytes] = []
        for index, leaves, root in result.result_rows:
            if int(index) != lo // BLOCK + len(roots) or int(leaves) != BLOCK:
                break
            roots.append(bytes(root))
        return roots

    def _load(self, client: Client, chain: str) -> _Chain:
        blocks, count = client.query(
            f"SELECT max(idx) + 1, count() FROM {self.db}.subtrees "
            f"WHERE chain = {{chain:String}} AND height = {MIN_HEIGHT}",
            parameters={"chain": chain},
        ).result_rows[0]
        through = int(blocks) * BLOCK if int(count) else 0
        cover = perfect_cover(0, through)
        nodes = fetch_nodes(client, self.db, chain, cover)
        try:
            return _Chain(NodeBuilder.resume(through, nodes))
        except MissingNode as exc:
            # Someone deleted rows: write them all again (identical rows; readers dedupe).
            log.warning("chain %s: %s; rewriting the chain's subtrees", chain, exc)
            return _Chain(NodeBuilder())


def block_roots_sql(database: str) -> str:
    """SQL giving, per block of ``BLOCK`` seqs in [``{lo:UInt64}``, ``{hi:UInt64}``) of
    ``{chain:String}`` (``lo`` at a block boundary), its index, how many of its seqs are stored
    and, when all are, its RFC 6962 root: level 0 is SHA256(0x00 || hash) per seq (one row of a
    repeated seq), level k+1 pairs level k by index / 2 as SHA256(0x01 || left || right). The
    unit tests hold it equal to :func:`processors.integrity.subtrees.perfect_root`."""
    sql = (
        "SELECT seq AS i0, 1 AS n0, SHA256(concat(unhex('00'), any(hash))) AS h0 "
        f"FROM {database}.events WHERE chain = {{chain:String}} "
        "AND seq >= {lo:UInt64} AND seq < {hi:UInt64} GROUP BY seq"
    )
    for level in range(MIN_HEIGHT):
        i, n, h, up = f"i{level}", f"n{level}", f"h{level}", level + 1
        sql = (
            f"SELECT intDiv({i}, 2) AS i{up}, sum({n}) AS n{up}, "
            f"SHA256(concat(unhex('01'), argMin({h}, {i}), argMax({h}, {i}))) AS h{up} "
            f"FROM ({sql}) GROUP BY i{up}"
        )
    return f"SELECT i{MIN_HEIGHT}, n{MIN_HEIGHT}, h{MIN_HEIGHT} FROM ({sql}) ORDER BY i{MIN_HEIGHT}"


def fetch_nodes(client: Any, database: str, chain: str, nodes: Sequence[Node]) -> dict[Node, bytes]:
    """The stored hashes of ``nodes`` that exist (one query; ``client`` may be a ReadClient)."""
    if not nodes:
        return {}
    keys = ", ".join(f"({n.height}, {n.index})" for n in sorted(set(nodes)))
    result = client.query(
        f"SELECT height, idx, any(hash) FROM {database}.subtrees "
        f"WHERE chain = {{chain:String}} AND (height, idx) IN ({keys}) GROUP BY height, idx",
        parameters={"chain": chain},
    )
    return {Node(int(h), int(i)): bytes(v) for h, i, v in result.result_rows}
