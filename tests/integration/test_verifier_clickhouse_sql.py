"""processors.verifier.clickhouse_sql against embedded ClickHouse (chdb): the SQL record hash is
byte-equal to the pure one on the FORMAT.md vectors, the SQL Merkle root equals the pure root at
every size, and the SQL check finds what the Python check finds on the same tampered rows."""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from processors.clickhouse_schema import EVENT_COLUMNS, migrate
from processors.integrity.merkle import CompactRange
from processors.integrity.record import ChainedRecord, ChainHead, link, record_hash
from processors.sink import event_columns
from processors.verifier.clickhouse_source import expected_columns, iter_rows, query
from processors.verifier.clickhouse_sql import (
    DECODE_CHECK,
    OddRows,
    check_chain,
    decode_pages,
    decoded_problems,
    leaf_hashes,
    merkle_root,
    record_hash_sql,
    row_problems,
    serve_decoded_problems,
)
from processors.verifier.rows import verify_rows
from producers.k8s import parse_line
from schemas.codec import HEADER_SIZE, encode_audit_event
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ClickHouseError
from sealtrail.infra.liveserver import LiveReadServer
from sealtrail.infra.reader import SocketReader, as_reader
from sealtrail.infra.scratch_session import ScratchSession
from tests.conftest import K8S_SAMPLES
from tests.integration.test_sink_avro import _crafted as crafted_payloads
from tests.unit.test_integrity_format_doc import payload_of, vectors

CHAIN = "audit.events/0"


@pytest.fixture
def ch(chdb_dsn: str, tmp_path: Path) -> tuple[Any, str]:
    db = f"t_{uuid.uuid4().hex[:10]}"
    s = Settings(clickhouse=chdb_dsn, clickhouse_database=db, home=tmp_path)
    client = clickhouse.connect(s)
    migrate(client, db)
    return client, db


def records(
    n: int, garbage_at: int | None = None, garbage: bytes = b"\x00not avro"
) -> list[ChainedRecord]:
    lines = [f.read_bytes().strip().splitlines()[0] for f in sorted(K8S_SAMPLES.glob("*.json"))]
    lines = [x for x in lines if b'"kind":"Event"' in x.replace(b" ", b"")]
    head = ChainHead(CHAIN)
    out = []
    for i in range(n):
        datum = parse_line(lines[i % len(lines)], "c1", 1_700_000_000_000_000 + i)
        payload = encode_audit_event(datum)
        if i == garbage_at:
            payload = garbage
        out.append(link(head, i, 1_700_000_000_000_000 + i, payload))
    return out


def insert(client: Any, db: str, recs: list[ChainedRecord]) -> None:
    cols, _failed = event_columns(recs)
    client.insert(f"{db}.events", list(zip(*cols, strict=True)), column_names=list(EVENT_COLUMNS))


def stored(client: Any, db: str, recs: list[ChainedRecord]) -> bytes:
    """Insert ``recs`` as the sink stores them; return their Merkle root."""
    insert(client, db, recs)
    return root_of(recs)


def root_of(recs: list[ChainedRecord]) -> bytes:
    cr = CompactRange()
    for r in recs:
        cr.append(r.hash)
    return cr.root()


def run(client: Any, db: str, sql: str) -> None:
    clickhouse.command(client, sql.format(db=db), settings={"mutations_sync": 2})


def test_record_hash_sql_is_byte_equal_on_the_format_vectors(ch: tuple[Any, str]) -> None:
    client, _db = ch
    expr = record_hash_sql(
        "{c:String}",
        "{s:UInt64}",
        "unhex({p:String})",
        "{o:UInt64}",
        "{i:Int64}",
        "unhex({d:String})",
    )
    for v in vectors():
        payload = payload_of(v["payload"])
        params = {
            "c": v["chain"],
            "s": int(v["seq"]),
            "p": v["prev_hash"],
            "o": int(v["source_offset"]),
            "i": int(v["ingested_at_us"]),
            "d": payload.hex(),
        }
        got = client.query(f"SELECT hex({expr})", parameters=params).result_rows[0][0]
        want = record_hash(
            v["chain"],
            int(v["seq"]),
            bytes.fromhex(v["prev_hash"]),
            int(v["source_offset"]),
            int(v["ingested_at_us"]),
            payload,
        )
        assert got.lower() == want.hex() == v["hash"]


def test_merkle_root_sql_equals_the_pure_root_at_every_size(ch: tuple[Any, str]) -> None:
    client, db = ch
    recs = records(70)
    insert(client, db, recs)
    cr = CompactRange()
    assert merkle_root(client, db, CHAIN, 0) == cr.root()
    for n, r in enumerate(recs, 1):
        cr.append(r.hash)
        if n <= 18 or n in (31, 32, 33, 63, 64, 65, 70):
            assert merkle_root(client, db, CHAIN, n) == cr.root(), n


def test_leaf_hashes_keep_trailing_zero_bytes(ch: tuple[Any, str]) -> None:
    client, db = ch
    recs = records(6)
    recs[2] = replace(recs[2], hash=b"\x01" * 31 + b"\x00")
    recs[4] = replace(recs[4], hash=bytes(32))
    insert(client, db, recs)
    assert list(leaf_hashes(client, db, CHAIN, 1, 6)) == [r.hash for r in recs[1:6]]


def both(client: Any, db: str, size: int, root: bytes) -> tuple[set[int | None], set[int | None]]:
    """Seqs of the findings of the SQL check and of the Python check on the same rows."""
    sql = check_chain(client, db, CHAIN, size=size, expected_root=root)
    scratch = ScratchSession.over(client, Path(tempfile.mkdtemp()))
    in_file = check_chain(client, db, CHAIN, size=size, expected_root=root, scratch=scratch)
    assert [f.evidence() for f in in_file.findings] == [f.evidence() for f in sql.findings]
    assert not list(scratch.directory.iterdir())  # the page files are removed
    # The read-only session `sealtrail verify` opens: its scratch session (readonly = 2) gives
    # the same findings; without one (readonly = 1 refuses format(), so the decoded columns are
    # compared in Python) too. Only the rendering of a decoded column's values differs (Python
    # values there, ClickHouse tuples here).
    reader = as_reader(client, db)
    try:
        own = reader.scratch()
        assert isinstance(own, ScratchSession)
        readonly_sql = check_chain(reader, db, CHAIN, size=size, expected_root=root, scratch=own)
        assert [f.evidence() for f in readonly_sql.findings] == [f.evidence() for f in sql.findings]
        readonly = check_chain(reader, db, CHAIN, size=size, expected_root=root)
    finally:
        reader.close()
    assert not own.directory.exists()  # removed with the reader

    def told(findings: list[Any]) -> list[tuple[Any, ...]]:
        return [(f.evidence()["kind"], f.evidence()["message"], f.seq) for f in findings]

    assert told(readonly.findings) == told(sql.findings)
    py = verify_rows(
        CHAIN,
        iter_rows(client, db, CHAIN, size),
        expected_columns(CHAIN),
        size=size,
        expected_root=root,
    )
    assert sql.records_verified == py.records_verified
    return {f.seq for f in sql.findings}, {f.seq for f in py.findings}


N = 30


@pytest.mark.parametrize(
    ("sql", "seqs"),
    [
        ("", set()),
        ("ALTER TABLE {db}.events UPDATE verb = 'get' WHERE seq = 3", {3}),
        ("ALTER TABLE {db}.events UPDATE user_groups = ['x'] WHERE seq = 4", {4}),
        ("ALTER TABLE {db}.events UPDATE response_code = NULL WHERE seq = 5", {5}),
        ("ALTER TABLE {db}.events UPDATE decode_ok = 1 WHERE seq = 7", {7}),
        ("ALTER TABLE {db}.events UPDATE decode_ok = 0 WHERE seq = 8", {8}),
        ("ALTER TABLE {db}.events UPDATE source_offset = 9 WHERE seq = 6", {6}),
        ("ALTER TABLE {db}.events UPDATE payload = 'x' WHERE seq = 9", {9}),
        ("ALTER TABLE {db}.events DELETE WHERE seq = 4", {4}),
        ("INSERT INTO {db}.events SELECT * FROM {db}.events WHERE seq = 5", {5}),
        ("ALTER TABLE {db}.events UPDATE prev_hash = hash WHERE seq = 11", {11}),
        # the right header, a body ClickHouse cannot parse: that page is decoded in Python
        (
            "ALTER TABLE {db}.events UPDATE payload = concat(substring(payload, 1, 10), "
            "'\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x01') WHERE seq = 12",
            {12},
        ),
    ],
    ids=[
        "clean",
        "verb",
        "groups",
        "nullable",
        "decode_ok_1",
        "decode_ok_0",
        "offset",
        "payload",
        "delete",
        "duplicate",
        "link",
        "unparsable",
    ],
)
def test_sql_check_finds_what_the_python_check_finds(
    ch: tuple[Any, str], sql: str, seqs: set[int]
) -> None:
    client, db = ch
    root = stored(client, db, records(N, garbage_at=7))
    if sql:
        run(client, db, sql)
    found_sql, found_py = both(client, db, N, root)
    assert seqs <= found_sql
    assert found_sql == found_py


def test_clickhouse_itself_decodes_the_payloads(ch: tuple[Any, str], tmp_path: Path) -> None:
    """The decoded-columns check parses every stored payload in ClickHouse (no Python
    fallback): it names the edited rows, from a scratch file and from format()."""
    client, db = ch
    insert(client, db, records(N, garbage_at=7))
    run(client, db, "ALTER TABLE {db}.events UPDATE verb = 'get', user_agent = 'x' WHERE seq = 3")
    run(client, db, "ALTER TABLE {db}.events UPDATE annotations = map('a', 'b') WHERE seq = 9")
    for scratch in (ScratchSession.over(client, tmp_path), None):
        found = decoded_problems(client, db, CHAIN, 0, N, limit=10, scratch=scratch)
        assert [(d.seq, d.column) for d in found] == [(3, "verb"), (9, "annotations")]
        assert found[0].found == "('get')"


def test_consistent_rewrite_is_found_by_the_root(ch: tuple[Any, str]) -> None:
    client, db = ch
    recs = records(N)
    root = root_of(recs)
    # A rewritten history that links and recomputes: only the root gives it away.
    forged = records(N)
    head = ChainHead(CHAIN)
    forged = [
        link(head, r.source_offset, r.ingested_at_us + (1 if r.seq == 3 else 0), r.payload)
        for r in forged
    ]
    insert(client, db, forged)
    sql = check_chain(client, db, CHAIN, size=N, expected_root=root)
    assert [f.seq for f in sql.findings] == [None]
    assert "rewritten consistently" in str(sql.findings[0])


def test_the_owner_runs_the_decode_check_for_a_socket_reader(ch: tuple[Any, str]) -> None:
    """A reader of a store another process owns gets the decoded-column check run by the
    owner (the live-read server's check), with the same findings; it takes values only."""
    client, db = ch
    root = stored(client, db, records(N, garbage_at=7))
    run(client, db, "ALTER TABLE {db}.events UPDATE verb = 'get' WHERE seq = 3")
    dsn = clickhouse.dsn_of(client)
    assert dsn is not None
    path = Path(tempfile.mkdtemp(prefix="st-")) / "live" / "s.sock"
    server = LiveReadServer(dsn, path, checks={DECODE_CHECK: serve_decoded_problems}).start()
    reader = SocketReader.connect(path, db)
    try:
        assert reader.scratch() is reader
        found = decoded_problems(reader, db, CHAIN, 0, N, limit=10, scratch=reader)
        assert [(d.seq, d.column, d.found) for d in found] == [(3, "verb", "('get')")]
        over_socket = check_chain(reader, db, CHAIN, size=N, expected_root=root, scratch=reader)
        scratch = ScratchSession.over(client, Path(tempfile.mkdtemp()))
        owner = check_chain(client, db, CHAIN, size=N, expected_root=root, scratch=scratch)
        assert [f.evidence() for f in over_socket.findings] == [
            f.evidence() for f in owner.findings
        ]
        assert 3 in {f.seq for f in over_socket.findings}
        good = {"database": db, "chain": CHAIN, "lo": 0, "hi": N, "limit": 10, "parts": None}
        # An incremental run sends the changed parts' names: only their rows are decoded.
        part = client.query(
            f"SELECT _part FROM {db}.events WHERE chain = '{CHAIN}' AND seq = 3"
        ).result_rows[0][0]
        only = reader.check(DECODE_CHECK, {**good, "parts": [part]}).result_rows
        assert [r[:2] for r in only] == [(3, "verb")]
        assert reader.check(DECODE_CHECK, {**good, "parts": []}).result_rows == []
        for bad, says in [
            ({**good, "database": "x; DROP TABLE events"}, "database name"),
            ({**good, "hi": 10**7}, "at most"),
            ({**good, "lo": "0 OR 1"}, "integers"),
            ({**good, "parts": ["all_1_1_0') OR (1"]}, "part name"),
        ]:
            with pytest.raises(ClickHouseError, match=says):
                reader.check(DECODE_CHECK, bad)
        with pytest.raises(ClickHouseError, match="no check named"):
            reader.check("drop_everything", good)
        # The connection stays usable after refusals.
        assert [r[:2] for r in reader.check(DECODE_CHECK, good).result_rows] == [(3, "verb")]
    finally:
        reader.close()
        server.stop()


def test_a_scratch_file_that_cannot_be_written_leaves_the_page_to_python(
    ch: tuple[Any, str], tmp_path: Path
) -> None:
    client, db = ch
    root = stored(client, db, records(N))
    run(client, db, "ALTER TABLE {db}.events UPDATE verb = 'get' WHERE seq = 3")
    broken = ScratchSession.over(client, tmp_path / "gone")
    result = check_chain(client, db, CHAIN, size=N, expected_root=root, scratch=broken)
    assert [(f.seq, f.evidence()["found"]) for f in result.findings] == [(3, "get")]


def test_decode_pages_bound_rows_and_payload_bytes(ch: tuple[Any, str]) -> None:
    client, db = ch
    recs = records(N)
    insert(client, db, recs)
    assert decode_pages(client, db, CHAIN, 0, N, rows=10) == [(0, 10), (10, 20), (20, 30)]
    assert decode_pages(client, db, CHAIN, 5, 5) == []
    # Buckets of 4 seqs; a page ends before the bucket that would take it over the bytes.
    sizes = [len(r.payload) for r in recs]
    limit = sum(sizes[0:8]) + 1  # two buckets fit, a third does not
    pages = decode_pages(client, db, CHAIN, 0, N, max_bytes=limit, bucket=4)
    assert pages[0] == (0, 8)
    assert [p for page in pages for p in range(*page)] == list(range(N))  # covers each once
    for plo, phi in pages:
        assert sum(sizes[plo:phi]) <= limit or phi - plo <= 4
    # A bucket bigger than the limit is a page of its own (a page never splits a bucket).
    assert decode_pages(client, db, CHAIN, 2, 11, max_bytes=1, bucket=4) == [
        (2, 4),
        (4, 8),
        (8, 11),
    ]


def _varint(value: int, width: int = 0) -> bytes:
    """The Avro zigzag varint of ``value``, padded to ``width`` bytes with empty groups (a longer
    form any Avro decoder reads as the same value)."""
    z = 2 * value if value >= 0 else -2 * value - 1
    groups = []
    while True:
        groups.append(z & 0x7F)
        z >>= 7
        if not z:
            break
    groups += [0] * (width - len(groups))
    return bytes([g | 0x80 for g in groups[:-1]] + [groups[-1]])


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """(zigzag-decoded value, bytes taken) of the varint at ``at``."""
    z = shift = taken = 0
    while True:
        b = data[at + taken]
        z |= (b & 0x7F) << shift
        shift += 7
        taken += 1
        if b < 0x80:
            return (z >> 1) ^ -(z & 1), taken


def _reshaped(
    payload: bytes,
    cluster: bytes,
    received_at: int,
    original: bytes,
    widths: tuple[int, int, int, int],
) -> bytes:
    """``payload`` with its first four fields (cluster, source, received_at, original) written
    again with the given values and varint widths."""
    at = HEADER_SIZE
    fields: list[bytes | int] = []
    for kind in ("string", "string", "long", "bytes"):
        value, taken = _read_varint(payload, at)
        at += taken
        if kind == "long":
            fields.append(value)
        else:
            fields.append(payload[at : at + value])
            at += value
    source = fields[1]
    assert isinstance(source, bytes)
    return (
        payload[:HEADER_SIZE]
        + _varint(len(cluster), widths[0])
        + cluster
        + _varint(len(source), widths[1])
        + source
        + _varint(received_at, widths[2])
        + _varint(len(original), widths[3])
        + original
        + payload[at:]
    )


def test_padded_varints_and_long_fields_are_checked_in_sql_and_python_alike(
    ch: tuple[Any, str], tmp_path: Path
) -> None:
    """Avro lets an encoder write a varint longer than it needs (decoders read the same value);
    with long strings, negative and nine-byte timestamps and a big ``original`` too, clean rows
    verify clean in SQL and in Python, all of them in ClickHouse's reader, and an edited
    column is found on each path."""
    client, db = ch
    base = records(1)[0].payload
    shapes = [
        (b"c1", 1_700_000_000_000_000, b"{}", (0, 0, 0, 0)),
        (b"c" * 300, -5, b"x" * 70_000, (0, 0, 0, 0)),
        (b"c1", 1_700_000_000_000_000, b"{}", (8, 8, 8, 8)),
        (b"", 0, b"", (3, 1, 5, 4)),
        (b"c1", 1 << 62, b"{}", (0, 0, 0, 0)),
        (b"c1", 7, b"{}", (1, 1, 10, 1)),
    ]
    head = ChainHead(CHAIN)
    recs = [
        link(head, i, 1_700_000_000_000_000 + i, _reshaped(base, *shape))
        for i, shape in enumerate(shapes)
    ]
    root = stored(client, db, recs)
    decoded = query(client, f"SELECT decode_ok FROM {db}.events ORDER BY seq")
    assert [int(r[0]) for r in decoded] == [1] * len(recs)  # the sink decoded each one
    checks = row_problems(client, db, CHAIN, below=len(recs), limit=10)
    assert (checks.problems, checks.odd) == ([], OddRows(0, 0, 0))  # none left to Python
    clean_sql, clean_py = both(client, db, len(recs), root)
    assert clean_sql == clean_py == set()
    run(client, db, "ALTER TABLE {db}.events UPDATE verb = 'x' WHERE seq IN (1, 2, 5)")
    found_sql, found_py = both(client, db, len(recs), root)
    assert found_sql == found_py == {1, 2, 5}
    # ClickHouse's Avro reader parsed every one of them (a page it cannot parse raises).
    scratch = ScratchSession.over(client, tmp_path)
    found = decoded_problems(client, db, CHAIN, 0, len(recs), limit=10, scratch=scratch)
    assert [(d.seq, d.column) for d in found] == [(1, "verb"), (2, "verb"), (5, "verb")]


@pytest.mark.parametrize("kind", sorted(crafted_payloads()))
def test_payloads_fastavro_reads_otherwise_are_checked_as_the_sink_stores_them(
    ch: tuple[Any, str], kind: str
) -> None:
    """The payloads the sink's fast path refuses (fastavro would read them otherwise, or not
    at all) are stored by its Python path: the check finds nothing there, in SQL and in
    Python alike; forced to decode_ok = 1 where they did not decode, they are found."""
    client, db = ch
    recs = records(N, garbage_at=7, garbage=crafted_payloads()[kind])
    root = stored(client, db, recs)
    clean_sql, clean_py = both(client, db, N, root)
    assert clean_sql == clean_py == set()
    (ok,) = query(client, f"SELECT decode_ok FROM {db}.events WHERE seq = 7")[0]
    if not ok:
        run(client, db, "ALTER TABLE {db}.events UPDATE decode_ok = 1 WHERE seq = 7")
        found_sql, found_py = both(client, db, N, root)
        assert found_sql == found_py == {7}
