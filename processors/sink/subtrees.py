"""The sink's stored Merkle subtrees: after each events insert, the nodes its records complete.

Per chain the writer knows ``through``: the leaves (whole 256-leaf blocks) whose nodes are in the
``subtrees`` table. Once the sink's stored rows reach past another block, it reads those blocks'
record hashes back from ``events`` (what ClickHouse holds is what proofs will read), feeds them
to :class:`processors.integrity.subtrees.NodeBuilder` and inserts the completed nodes in one
block with a deduplication token naming the leaf range. ``through`` is re-read from the table
on start and on every partition assignment, so a crash between the events insert and this one
is caught up (reading what is missing), and a retried insert is stored once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from processors.clickhouse_schema import SUBTREE_COLUMNS
from processors.integrity.subtrees import MIN_HEIGHT, MissingNode, Node, NodeBuilder, perfect_cover

log = logging.getLogger(__name__)

__all__ = ["PAGE_LEAVES", "SubtreeWriter"]

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
            hashes = self._record_hashes(client, chain, lo, hi)
            if len(hashes) != hi - lo:
                log.warning(
                    "chain %s: ClickHouse holds %d of the records %d..%d; subtrees wait",
                    chain,
                    len(hashes),
                    lo,
                    hi - 1,
                )
                return
            rows: list[list[Any]] = []
            for record_hash in hashes:
                for node, value in state.builder.append(
                    hashlib.sha256(b"\x00" + record_hash).digest()
                ):
                    rows.append([chain, node.height, node.index, value])
            insert(
                "subtrees",
                SUBTREE_COLUMNS,
                [list(column) for column in zip(*rows, strict=True)],
                f"subtrees:{chain}:{lo}-{hi}",
            )
            self.nodes_written += len(rows)

    def _record_hashes(self, client: Client, chain: str, lo: int, hi: int) -> list[bytes]:
        result = client.query(
            f"SELECT seq, hash FROM {self.db}.events WHERE chain = {{chain:String}} "
            "AND seq >= {lo:UInt64} AND seq < {hi:UInt64} ORDER BY seq LIMIT 1 BY seq",
            parameters={"chain": chain, "lo": lo, "hi": hi},
        )
        return [bytes(hash_) for _seq, hash_ in result.result_rows]

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
