"""Reading tools on a ClickHouse server DSN (http/https): the code path the embedded store takes,
shown on the queries it builds. A stand-in for clickhouse-connect's HTTP client records every
query (its SQL bound by clickhouse-connect's own binder, its settings, its database) and answers
from rows the sink's own mapping makes; no server is needed."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.binding import bind_query
from typer.testing import CliRunner

from processors.clickhouse_schema import EVENT_COLUMNS
from processors.integrity import subtrees
from processors.integrity.checkpoint import Checkpoint, KeyRing, origin_for, sign_checkpoint
from processors.integrity.merkle import CompactRange
from processors.integrity.note import Signer, Verifier, generate_key
from processors.integrity.record import ChainedRecord, ChainHead, link
from processors.sink import event_columns
from processors.verified_read import verify_rows
from producers.k8s import RejectError, parse_line
from schemas.codec import encode_audit_event
from sealtrail.cli import app
from sealtrail.commands.sink import HISTORY_VERIFY_SQL
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import WriteRefused
from sealtrail.infra.reader import DirectReader, open_reader
from tests.conftest import K8S_SAMPLES

SERVER = "https://reader:s3cret@clickhouse.example:8443"
DB = "audit_db"
DEPLOYMENT = "sealtrail.test"
CHAIN = "audit.events/0"
N = 300  # one stored subtree of 256 records, then single leaves
SIGNED = 290
TIMES = ("ingested_at", "event_time", "received_at")
TYPES = {
    "chain": "LowCardinality(String)",
    "seq": "UInt64",
    "event_time": "DateTime64(6, 'UTC')",
    "cluster": "LowCardinality(String)",
    "namespace": "String",
    "user_name": "String",
    "verb": "LowCardinality(String)",
    "subresource": "LowCardinality(String)",
    "response_code": "Nullable(Int32)",
    "user_agent": "String",
    "stage": "LowCardinality(String)",
}
HISTORY_COLUMNS = ("event_time", "cluster", "namespace", "user_name", "verb", "subresource",
                   "response_code", "user_agent", "stage", "chain", "seq")  # fmt: skip
VERIFY_SQL = "SELECT chain, seq, verb FROM events"
SHOWN = {HISTORY_VERIFY_SQL: HISTORY_COLUMNS, VERIFY_SQL: ("chain", "seq", "verb")}
runner = CliRunner()


def _records() -> list[ChainedRecord]:
    payloads = []
    for path in sorted(K8S_SAMPLES.glob("*.json")):
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(RejectError):
                datum = parse_line(line, "c1", 1_700_000_000_000_000 + len(payloads))
                payloads.append(encode_audit_event(datum))
    head = ChainHead(CHAIN)
    return [link(head, i, 1_700_000_000_000_000 + i, payloads[i % len(payloads)]) for i in range(N)]


def _note(records: list[ChainedRecord], size: int, signer: Signer) -> str:
    compact = CompactRange()
    for r in records[:size]:
        compact.append(r.hash)
    cp = Checkpoint(origin_for(DEPLOYMENT, CHAIN), size, compact.root(), records[size - 1].hash, 1)
    return sign_checkpoint(cp, signer)


def _as_driver_returns(name: str, value: Any) -> Any:
    """A stored value as clickhouse-connect hands it over (times as UTC datetimes)."""
    if name in TIMES:
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=value)
    return value


@dataclass
class Call:
    sql: str
    final: str | bytes  # the SQL as clickhouse-connect sends it (client-side binds applied)
    bound: dict[str, str]  # server-side parameters (param_<name>)
    settings: dict[str, Any] | None
    database: str


class FakeServer:
    """Answers the reading tools' queries from an ``events`` table of ``records`` and a
    ``checkpoints`` table of ``notes``."""

    def __init__(self, records: list[ChainedRecord], notes: list[tuple[int, str]]) -> None:
        self.database = "default"
        self.calls: list[Call] = []
        self.notes = notes
        columns, _failed = event_columns(records)
        self.rows = [
            {
                n: _as_driver_returns(n, col[i])
                for n, col in zip(EVENT_COLUMNS, columns, strict=True)
            }
            for i in range(len(records))
        ]
        leaves = [hashlib.sha256(b"\x00" + r.hash).digest() for r in records]
        self.nodes = {
            (8, 0): subtrees.perfect_root(leaves[0:256]),
        }

    def query(
        self,
        sql: str,
        parameters: Mapping[str, Any] | Sequence[Any] | None = None,
        settings: dict[str, Any] | None = None,
        column_formats: Mapping[str, str] | None = None,
        query_formats: Mapping[str, str] | None = None,
    ) -> Any:
        final, bound = bind_query(sql, dict(parameters) if parameters else None)
        self.calls.append(Call(sql, final, bound, settings, self.database))
        names, rows = self._answer(sql, dict(parameters or {}))
        return SimpleNamespace(
            column_names=tuple(names),
            column_types=[SimpleNamespace(name=TYPES.get(n, "String")) for n in names],
            result_rows=rows,
        )

    def close(self) -> None:
        pass

    def _answer(self, sql: str, params: dict[str, Any]) -> tuple[list[str], list[Any]]:
        shown = SHOWN.get(sql)
        if shown is not None:
            return list(shown), [tuple(r[n] for n in shown) for r in reversed(self.rows)]
        if sql.startswith(f"SELECT {', '.join(EVENT_COLUMNS)} FROM"):
            seqs = set(params["seqs"])
            picked = [r for r in self.rows if r["chain"] == params["chain"] and r["seq"] in seqs]
            return list(EVENT_COLUMNS), [tuple(r[n] for n in EVENT_COLUMNS) for r in picked]
        if sql.startswith("SELECT count() FROM events"):
            return ["count()"], [(len(self.rows),)]
        if "max(seq) + 1, count()" in sql:
            return ["top", "n"], [(len(self.rows), len(self.rows))]
        if ".checkpoints" in sql:
            return ["size", "note"], sorted(self.notes, reverse=True)
        if ".subtrees" in sql:
            return ["height", "idx", "hash"], [(h, i, v) for (h, i), v in self.nodes.items()]
        if "any(hash)" in sql and "GROUP BY seq" in sql:
            spans = [
                (int(lo), int(hi)) for lo, hi in re.findall(r"seq >= (\d+) AND seq < (\d+)", sql)
            ]
            return ["seq", "hash"], [
                (r["seq"], r["hash"])
                for r in self.rows
                if any(lo <= r["seq"] < hi for lo, hi in spans)
            ]
        raise AssertionError(f"unexpected query: {sql}")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeServer, list[str], Signer, str]]:
    records = _records()
    signer = Signer.from_private_key(generate_key("chainer")[0])
    fake = FakeServer(records, [(SIGNED, _note(records, SIGNED, signer))])
    opened: list[str] = []

    def get_client(**kwargs: Any) -> FakeServer:
        opened.append(kwargs["dsn"])
        return fake

    monkeypatch.setattr(clickhouse_connect, "get_client", get_client)
    monkeypatch.setattr(clickhouse, "_clients", {})
    yield fake, opened, signer, signer.verifier.verifier_key()


def _cli(tmp_path: Path, *args: str) -> Any:
    base = ["--clickhouse", SERVER, "--clickhouse-database", DB, "--deployment", DEPLOYMENT,
            "--home", str(tmp_path)]  # fmt: skip
    return runner.invoke(app, [*base, *args])


def _all_read_only(fake: FakeServer) -> None:
    assert fake.calls
    for call in fake.calls:
        assert call.settings == {"readonly": 1}, call.sql
        assert call.database == DB, call.sql


def test_open_reader_on_a_server_dsn(server: Any) -> None:
    fake, opened, _signer, _key = server
    reader = open_reader(Settings(clickhouse=SERVER, clickhouse_database=DB))
    assert isinstance(reader, DirectReader) and reader.via == "server"
    assert opened == [SERVER]
    reader.query("SELECT count() FROM events WHERE verb = %(v)s", {"v": "get"})
    call = fake.calls[-1]
    assert call.settings == {"readonly": 1} and call.database == DB
    assert call.final == "SELECT count() FROM events WHERE verb = 'get'"
    assert fake.database == "default", "the client's own database is put back"
    for write in ("ALTER TABLE events UPDATE verb = 'get' WHERE seq = 1",
                  "SELECT 1 INTO OUTFILE '/tmp/x'", "SELECT 1; DROP TABLE events"):  # fmt: skip
        with pytest.raises(WriteRefused):
            reader.query(write)
    assert len(fake.calls) == 1, "a refused statement is never sent"


def test_query_on_a_server_dsn_refuses_writes_before_connecting(
    server: Any, tmp_path: Path
) -> None:
    fake, opened, _signer, _key = server
    refused = _cli(tmp_path, "query", "ALTER TABLE events UPDATE verb = 'get' WHERE seq = 1")
    assert refused.exit_code == 2
    assert refused.output.count("\n") == 1 and "ALTER statements are refused" in refused.output
    assert opened == [] and fake.calls == []
    done = _cli(tmp_path, "query", "--format", "json", "SELECT chain, seq, verb FROM events")
    assert done.exit_code == 0, done.output
    assert len(json.loads(done.stdout)) == N
    _all_read_only(fake)


def test_verified_history_and_query_on_a_server_dsn(server: Any, tmp_path: Path) -> None:
    fake, _opened, _signer, key = server
    history = _cli(tmp_path, "history", "deployments/web", "-n", "prod", "--cluster", "c1",
                   "--limit", "500", "--verify", "--key", key, "--format", "json")  # fmt: skip
    assert history.exit_code == 0, history.output
    rows = json.loads(history.stdout)
    assert {r["seq"]: (r["verified"], r["checkpoint_size"]) for r in rows} == {
        s: (True, SIGNED) if s < SIGNED else (None, SIGNED) for s in range(N)
    }
    assert {"time", "user", "code", "verb", "chain", "seq", "reason"} <= set(rows[0])
    _all_read_only(fake)
    # The history statement: client-side binds (quoted literals), its own read of events.
    first = fake.calls[0]
    assert first.sql == HISTORY_VERIFY_SQL and first.bound == {}
    assert "resource = 'deployments' AND name = 'web'" in str(first.final)
    assert "('prod' = '' OR namespace = 'prod')" in str(first.final)
    assert "LIMIT 500" in str(first.final)
    # The checks: server-side binds, a handful of statements whatever the chain's length.
    kinds = [c.sql.split(" FROM ")[1].split()[0] for c in fake.calls[1:]]
    assert len(kinds) <= 6, kinds
    assert kinds.count(f"{DB}.subtrees") == 1 and kinds.count(f"{DB}.checkpoints") == 1
    by_table = {c.sql.split(" FROM ")[1].split()[0]: c for c in fake.calls[1:]}
    assert by_table[f"{DB}.subtrees"].bound == {"param_chain": CHAIN}
    rows_call = next(c for c in fake.calls if "seq IN {seqs:Array(UInt64)}" in c.sql)
    assert rows_call.bound["param_chain"] == CHAIN
    assert rows_call.bound["param_seqs"] == "[" + ", ".join(str(s) for s in range(N)) + "]"
    # One row's proof reads the stored subtree of records 0..255, not their hashes.
    fake.calls.clear()
    settings = Settings(clickhouse=SERVER, clickhouse_database=DB, deployment=DEPLOYMENT)
    ring = KeyRing()
    ring.add(Verifier.from_verifier_key(key))
    [one] = verify_rows(open_reader(settings), DB, DEPLOYMENT, ring, [(CHAIN, 280)])
    assert one.verified is True and one.checkpoint_size == SIGNED
    nodes = next(c for c in fake.calls if ".subtrees" in c.sql)
    assert "(height, idx) IN ((8, 0))" in nodes.sql
    [leaves] = [c for c in fake.calls if "any(hash)" in c.sql and ".events" in c.sql]
    assert "(seq >= 256 AND seq < 512)" in leaves.sql and "seq >= 0 AND" not in leaves.sql
    _all_read_only(fake)

    # A row altered on the server: `no` and exit 1, the others unchanged.
    fake.rows[7]["verb"] = "get" if fake.rows[7]["verb"] != "get" else "list"
    fake.calls.clear()
    query = _cli(tmp_path, "query", "--verify", "--key", key, "--format", "json",
                 VERIFY_SQL)  # fmt: skip
    assert query.exit_code == 1, query.output
    verdicts = {r["seq"]: (r["verified"], r["reason"]) for r in json.loads(query.stdout)}
    assert verdicts[7] == (False, "its column verb does not match its payload")
    assert sum(1 for v, _ in verdicts.values() if v is True) == SIGNED - 1
    _all_read_only(fake)

    # A forged checkpoint on the server: every row `no`.
    other = Signer.from_private_key(generate_key("mallory")[0])
    fake.notes.append((SIGNED + 5, _note(_records(), SIGNED + 5, other)))
    forged = _cli(tmp_path, "query", "--verify", "--key", key, "--format", "json",
                  VERIFY_SQL)  # fmt: skip
    assert forged.exit_code == 1
    shown = json.loads(forged.stdout)
    assert all(r["verified"] is False for r in shown)
    assert all("does not verify" in r["reason"] for r in shown if r["seq"] != 7)
