"""Verified reads: every row a query shows, checked against the signed log, and proofs from the
store's Merkle subtrees.

For each shown row, identified by ``(chain, seq)``, :func:`verify_rows` checks

1. the stored ``events`` row: exactly one for that seq; its record hash recomputes from its own
   columns (docs/FORMAT.md section 2); its decoded columns equal what its payload decodes to
   (the sink's own mapping, :func:`processors.sink.event_columns`); and every shown column named
   like an ``events`` column, whatever type the query gave it, holds the stored value (a view
   edited to show something else is caught, also under another type);
2. its inclusion in a signed checkpoint: the checkpoints of the chain from the newest down to the
   first whose records are all stored must each open under the key ring (a forged one fails
   every row of its chain), and the RFC 6962 inclusion proof of the row's hash, built from the
   stored subtrees (:mod:`processors.integrity.subtrees`), must lead to that checkpoint's root.

A row newer than that checkpoint is *pending* (``verified`` is ``None``). All reads go through a
read client (``query(sql, parameters)`` like clickhouse-connect): a handful of queries per chain,
whatever the chain's length.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from processors.clickhouse_schema import DECODED_COLUMNS, EVENT_COLUMNS
from processors.integrity import subtrees
from processors.integrity.checkpoint import Checkpoint, KeyRing, open_checkpoint, origin_for
from processors.integrity.errors import IntegrityError
from processors.integrity.merkle import verify_inclusion
from processors.integrity.record import ChainedRecord, record_hash
from processors.integrity.subtrees import Node
from processors.sink.subtrees import fetch_nodes
from sealtrail.infra.errors import ClickHouseError

__all__ = [
    "MAX_FALLBACK_LEAVES",
    "StoredTree",
    "Verdict",
    "newest_usable_checkpoint",
    "verify_rows",
]

MAX_FALLBACK_LEAVES = 1 << 22  # leaves hashed for nodes the sink has not written yet
_TIMES = {"ingested_at", "event_time", "received_at"}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``verified``: True (yes), False (no, ``reason`` says why) or None (pending)."""

    verified: bool | None
    reason: str = ""
    checkpoint_size: int | None = None

    @property
    def label(self) -> str:
        if self.verified is True:
            return "yes"
        if self.verified is None:
            return "pending"
        return f"no: {self.reason}"


def _micros(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return (value - _EPOCH) // dt.timedelta(microseconds=1)
    return value


def _norm(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


class StoredTree:
    """Reads what proofs of one chain need: stored nodes and blocks of record hashes."""

    def __init__(self, client: Any, database: str, chain: str) -> None:
        self.client = client
        self.db = database
        self.chain = chain
        self.nodes: dict[Node, bytes] = {}
        self.leaves: dict[int, bytes] = {}

    def load(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Fetch everything hashing ``ranges`` needs (two queries, three if nodes are missing)."""
        want, blocks = subtrees.needed(ranges)
        self.nodes.update(fetch_nodes(self.client, self.db, self.chain, sorted(want)))
        missing = [n for n in want if n not in self.nodes]
        spans = [(b << subtrees.MIN_HEIGHT, (b + 1) << subtrees.MIN_HEIGHT) for b in blocks]
        if sum(n.end - n.start for n in missing) > MAX_FALLBACK_LEAVES:
            raise ClickHouseError(
                f"the stored Merkle subtrees of chain {self.chain} are far behind its rows; "
                "let the sink catch up (it writes them after each insert) and try again"
            )
        spans += [(n.start, n.end) for n in missing]
        self.leaves.update(self._leaf_hashes(spans))
        for node in missing:  # nodes the sink has not written yet: hash their leaves
            if all(i in self.leaves for i in range(node.start, node.end)):
                self.nodes[node] = subtrees.perfect_root(
                    [self.leaves[i] for i in range(node.start, node.end)]
                )

    def _leaf_hashes(self, spans: Sequence[tuple[int, int]]) -> dict[int, bytes]:
        if not spans:
            return {}
        where = " OR ".join(f"(seq >= {lo} AND seq < {hi})" for lo, hi in sorted(set(spans)))
        result = self.client.query(
            f"SELECT seq, any(hash) FROM {self.db}.events "
            f"WHERE chain = {{chain:String}} AND ({where}) GROUP BY seq",
            parameters={"chain": self.chain},
        )
        return {
            int(seq): hashlib.sha256(b"\x00" + bytes(h)).digest() for seq, h in result.result_rows
        }

    def leaf(self, i: int) -> bytes:
        value = self.leaves.get(i)
        if value is None:
            raise LookupError(f"record {i} of chain {self.chain}, needed for the proof, is missing")
        return value

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return subtrees.inclusion_proof(index, size, self.nodes, self.leaf)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return subtrees.consistency_proof(size1, size2, self.nodes, self.leaf)


def stored_size(client: Any, database: str, chain: str) -> int:
    """How many records of ``chain`` ClickHouse holds from seq 0 on (max seq + 1, 0 if none)."""
    top, count = client.query(
        f"SELECT max(seq) + 1, count() FROM {database}.events WHERE chain = {{chain:String}}",
        parameters={"chain": chain},
    ).result_rows[0]
    return int(top) if int(count) else 0


def newest_usable_checkpoint(
    client: Any, database: str, deployment: str, chain: str, ring: KeyRing
) -> tuple[str, Checkpoint] | str | None:
    """The newest checkpoint of ``chain`` whose records are all stored, as (note, parsed), after
    checking every newer one opens under ``ring``; a reason (str) if one does not; None if
    there is none yet."""
    have = stored_size(client, database, chain)
    notes = client.query(
        f"SELECT size, note FROM {database}.checkpoints WHERE chain = {{chain:String}} "
        "ORDER BY size DESC, kafka_offset DESC LIMIT 1000",
        parameters={"chain": chain},
    ).result_rows
    origin = origin_for(deployment, chain)
    for size, note in notes:
        try:
            cp = open_checkpoint(str(note), ring, origin=origin)
        except IntegrityError as exc:
            return f"checkpoint {size} of chain {chain} does not verify ({exc})"
        if cp.size != int(size):
            return f"checkpoint row {size} of chain {chain} holds a note for size {cp.size}"
        if cp.size <= have:
            return str(note), cp
    return None


def _select_list() -> str:
    return ", ".join(EVENT_COLUMNS)


def _check_row(chain: str, row: Mapping[str, Any], shown: Mapping[str, tuple[str, Any]]) -> str:
    """Why the stored row is not what its record says ('' if it is)."""
    from processors.sink import event_columns  # the sink's mapping is the reference

    try:
        rec = ChainedRecord(
            chain,
            int(row["seq"]),
            bytes(row["prev_hash"]),
            bytes(row["hash"]),
            int(row["source_offset"]),
            int(_micros(row["ingested_at"])),
            bytes(row["payload"]),
        )
        again = record_hash(
            rec.chain, rec.seq, rec.prev_hash, rec.source_offset, rec.ingested_at_us, rec.payload
        )
    except (IntegrityError, TypeError, ValueError) as exc:
        return f"its record fields are malformed ({exc})"
    if again != rec.hash:
        return "its record hash does not recompute from its columns"
    columns, _failed = event_columns([rec])
    expected = {n: _norm(v[0]) for n, v in zip(EVENT_COLUMNS, columns, strict=True)}
    for name in DECODED_COLUMNS:
        if _norm(_micros(row[name]) if name in _TIMES else row[name]) != expected[name]:
            return f"its column {name} does not match its payload"
    for name, (_type, value) in shown.items():
        if not _same_value(value, row[name]):
            return (
                f"the shown {name} is not the stored value (select the column unchanged, or "
                "name the expression otherwise)"
            )
    return ""


def _same_value(shown: Any, stored: Any) -> bool:
    """Whether a shown cell is the stored value, in whatever type the query gave it: equal
    values (an Enum, Nullable or String copy of a LowCardinality value is still the value), and
    a String column's bytes as the driver hands them over (text, or hex if not UTF-8)."""
    shown, stored = _norm(shown), _norm(stored)
    if isinstance(stored, bytes) and isinstance(shown, str):
        try:
            return shown == stored.decode("utf-8")
        except UnicodeDecodeError:
            return shown == stored.hex()
    return bool(shown == stored) and type(shown) is type(stored) or _same_number(shown, stored)


def _same_number(shown: Any, stored: Any) -> bool:
    numbers = (int, float)
    return (
        isinstance(shown, numbers)
        and isinstance(stored, numbers)
        and not isinstance(shown, bool)
        and shown == stored
    )


def verify_rows(
    client: Any,
    database: str,
    deployment: str,
    ring: KeyRing,
    keys: Sequence[tuple[str, int]],
    shown: Sequence[Mapping[str, tuple[str, Any]]] | None = None,
    types: Mapping[str, str] | None = None,
) -> list[Verdict]:
    """One verdict per ``(chain, seq)`` in ``keys``. ``shown[i]`` maps the columns row ``i``
    displays (name -> (ClickHouse type, value)); those named like an ``events`` column must hold
    the stored value, whatever their type."""
    verdicts: list[Verdict | None] = [None] * len(keys)
    by_chain: dict[str, list[int]] = {}
    for i, (chain, _seq) in enumerate(keys):
        by_chain.setdefault(chain, []).append(i)
    for chain, positions in by_chain.items():
        seqs = sorted({keys[i][1] for i in positions})
        result = client.query(
            f"SELECT {_select_list()} FROM {database}.events "
            "WHERE chain = {chain:String} AND seq IN {seqs:Array(UInt64)}",
            parameters={"chain": chain, "seqs": seqs},
            column_formats={"payload": "bytes"},
        )
        stored: dict[int, list[dict[str, Any]]] = {}
        stored_types = dict(zip(result.column_names, result.column_types, strict=True))
        for row in result.result_rows:
            named = dict(zip(result.column_names, row, strict=True))
            stored.setdefault(int(named["seq"]), []).append(named)
        checkpoint = newest_usable_checkpoint(client, database, deployment, chain, ring)
        tree = StoredTree(client, database, chain)
        if isinstance(checkpoint, tuple):
            size = checkpoint[1].size
            tree.load(r for s in seqs if s < size for r in subtrees.inclusion_ranges(s, size))
        for i in positions:
            seq = keys[i][1]
            display = {
                name: (t, v)
                for name, (t, v) in (shown[i] if shown else {}).items()
                if name in stored_types and name not in ("chain", "seq")
            }
            verdicts[i] = _verdict(chain, seq, stored.get(seq, []), display, checkpoint, tree)
    return [v if v is not None else Verdict(False, "not checked") for v in verdicts]


def _verdict(
    chain: str,
    seq: int,
    rows: list[dict[str, Any]],
    display: Mapping[str, tuple[str, Any]],
    checkpoint: tuple[str, Checkpoint] | str | None,
    tree: StoredTree,
) -> Verdict:
    if not rows:
        return Verdict(False, f"no events row holds chain {chain} seq {seq}")
    if len(rows) > 1:
        return Verdict(False, f"{len(rows)} events rows claim chain {chain} seq {seq}")
    row = rows[0]
    problem = _check_row(chain, row, display)
    if problem:
        return Verdict(False, problem)
    if isinstance(checkpoint, str):
        return Verdict(False, checkpoint)
    if checkpoint is None or seq >= checkpoint[1].size:
        size = None if checkpoint is None else checkpoint[1].size
        return Verdict(None, "newer than the newest signed checkpoint", size)
    cp = checkpoint[1]
    leaf = bytes(row["hash"])
    try:
        proof = tree.inclusion_proof(seq, cp.size)
        verify_inclusion(leaf, seq, cp.size, proof, cp.root_hash)
    except IntegrityError:
        return Verdict(False, f"not included in signed checkpoint {cp.size}", cp.size)
    except LookupError as exc:
        return Verdict(False, str(exc), cp.size)
    if seq == cp.size - 1 and leaf != cp.head_hash:
        return Verdict(False, f"differs from the head of signed checkpoint {cp.size}", cp.size)
    return Verdict(True, "", cp.size)


# -- proof files from the store (``sealtrail prove``) --------------------------------------------


def signed_checkpoints(
    client: Any, database: str, deployment: str, chain: str, ring: KeyRing
) -> list[tuple[str, Checkpoint]]:
    """The checkpoints of ``chain`` in ClickHouse that open under ``ring`` and whose records are
    all stored, newest first (a proof needs a good one; ``verify`` reports the bad ones)."""
    have = stored_size(client, database, chain)
    notes = client.query(
        f"SELECT DISTINCT size, note FROM {database}.checkpoints WHERE chain = {{chain:String}} "
        "AND size <= {have:UInt64} ORDER BY size DESC",
        parameters={"chain": chain, "have": have},
    ).result_rows
    out: list[tuple[str, Checkpoint]] = []
    seen: set[int] = set()
    for _size, note in notes:
        try:
            cp = open_checkpoint(str(note), ring, origin=origin_for(deployment, chain))
        except IntegrityError:
            continue
        if cp.size not in seen:
            seen.add(cp.size)
            out.append((str(note), cp))
    return out


def stored_inclusion(
    client: Any, database: str, chain: str, seq: int, note: str, cp: Checkpoint
) -> dict[str, Any]:
    """The inclusion proof file of ``seq`` in ``cp``, from the stored subtrees; checked against
    the signed root before it is returned (IntegrityError / LookupError if it does not hold)."""
    from processors.proofs import INCLUSION, VERSION

    rows = client.query(
        f"SELECT any(hash) FROM {database}.events WHERE chain = {{chain:String}} "
        "AND seq = {seq:UInt64}",
        parameters={"chain": chain, "seq": seq},
    ).result_rows
    leaf = bytes(rows[0][0]) if rows and rows[0][0] else b""
    tree = StoredTree(client, database, chain)
    tree.load(subtrees.inclusion_ranges(seq, cp.size))
    proof = tree.inclusion_proof(seq, cp.size)
    verify_inclusion(leaf, seq, cp.size, proof, cp.root_hash)
    return {
        "type": INCLUSION,
        "version": VERSION,
        "chain": chain,
        "seq": seq,
        "record_hash": leaf.hex(),
        "tree_size": cp.size,
        "proof": [h.hex() for h in proof],
        "checkpoint": note,
    }


def stored_consistency(
    client: Any,
    database: str,
    chain: str,
    old: tuple[str, Checkpoint],
    new: tuple[str, Checkpoint],
) -> dict[str, Any]:
    """The consistency proof file from ``old`` to ``new`` from the stored subtrees, checked
    against both signed roots first."""
    from processors.integrity.merkle import verify_consistency
    from processors.proofs import CONSISTENCY, VERSION

    size1, size2 = old[1].size, new[1].size
    tree = StoredTree(client, database, chain)
    tree.load(subtrees.consistency_ranges(size1, size2))
    proof = tree.consistency_proof(size1, size2)
    verify_consistency(size1, size2, proof, old[1].root_hash, new[1].root_hash)
    return {
        "type": CONSISTENCY,
        "version": VERSION,
        "chain": chain,
        "from_size": size1,
        "to_size": size2,
        "proof": [h.hex() for h in proof],
        "checkpoint_from": old[0],
        "checkpoint_to": new[0],
    }
