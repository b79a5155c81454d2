"""Verified reads: `query --verify` and `history --verify` prove each shown row or say why not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from processors.integrity.checkpoint import Checkpoint, KeyRing, origin_for, sign_checkpoint
from processors.integrity.record import ChainedRecord, ChainHead, link
from processors.sink import Sink, SinkOptions
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
from tests.integration.sink_support import sample_payloads
from tests.integration.test_verify import cli, new_signer, note_for, produce

N = 600  # two 256-leaf blocks and a partial one: stored nodes of heights 8 and 9
SIGNED = 520


def build(settings: Settings, n: int) -> list[ChainedRecord]:
    head = ChainHead(f"{settings.topics.raw}/0")
    samples = sample_payloads()
    return [link(head, i, 1_700_000_000_000_000 + i, samples[i % len(samples)]) for i in range(n)]


def ring_of(key_file: Path) -> KeyRing:
    return KeyRing.load(key_file)


def prove_from_kafka(
    settings: Settings, chain: str, ring: KeyRing, args: list[str]
) -> dict[str, Any]:
    """The proof the pre-subtree code path makes, reading every record from Kafka."""
    from processors.proofs import make_consistency, make_inclusion
    from processors.verifier.prove import kafka_checkpoints, kafka_leaves

    cps = {cp.size: (note, cp) for note, cp in kafka_checkpoints(settings, chain, ring)}
    if args[0] == "--seq":
        note, cp = cps[SIGNED]
        return make_inclusion(chain, 300, note, cp, kafka_leaves(settings, chain, SIGNED, (300,)))
    leaves = kafka_leaves(settings, chain, SIGNED)
    return make_consistency(chain, cps[100], cps[SIGNED], leaves)


def _json(result: Any) -> list[dict[str, Any]]:
    return json.loads(result.stdout)


def test_verified_rows_tampering_pending_and_forged_checkpoint(
    settings: Settings, tmp_path: Path
) -> None:
    signer, key_file = new_signer(tmp_path)
    recs = build(settings, N)
    produce(settings, recs, [note_for(settings, recs, 100, signer),
                             note_for(settings, recs, SIGNED, signer)])  # fmt: skip
    Sink(settings, SinkOptions(once=True)).run()
    client = clickhouse.connect(settings)
    db = settings.clickhouse_database
    nodes = client.query(f"SELECT height, idx FROM {db}.subtrees ORDER BY height, idx")
    assert nodes.result_rows == [(8, 0), (8, 1), (9, 0)]
    key = ["--key", str(key_file)]
    sql = (
        "SELECT chain, seq, verb, event_time FROM events WHERE seq IN (5, 300, 519, 560) "
        "ORDER BY seq"
    )
    ok = cli(settings, "query", "--verify", *key, "--format", "json", sql)
    assert ok.exit_code == 0, ok.output
    rows = _json(ok)
    assert [(r["seq"], r["verified"], r["checkpoint_size"]) for r in rows] == [
        (5, True, SIGNED), (300, True, SIGNED), (519, True, SIGNED), (560, None, SIGNED)
    ]  # fmt: skip
    assert all(r["chain"] == f"{settings.topics.raw}/0" for r in rows)
    table = cli(settings, "query", "--verify", *key, sql)
    assert table.exit_code == 0 and "pending" in table.stdout and table.stdout.count(" yes ") == 3
    # prove builds the same proofs from the stored subtrees as from the whole chain in Kafka.
    chain = recs[0].chain
    for args in (["--seq", "300"], ["--consistency", "--from", "100", "--to", str(SIGNED)]):
        made = cli(settings, "prove", *key, "--chain", chain, *args, "--out", str(tmp_path / "p"))
        assert made.exit_code == 0, made.output
        assert "reading the chain from Kafka" not in made.output
        proven = cli(settings, "verify-proof", str(tmp_path / "p"), *key)
        assert proven.exit_code == 0 and "PROVED" in proven.output
        doc = json.loads((tmp_path / "p").read_text())
        kafka = prove_from_kafka(settings, chain, ring_of(key_file), args)
        assert doc == kafka
    # Without chain and seq there is nothing to verify: one sentence, exit 2.
    bare = cli(settings, "query", "--verify", *key, "SELECT verb FROM events LIMIT 1")
    assert bare.exit_code == 2 and "add 'chain, seq'" in bare.output

    # A row altered in ClickHouse: that row is `no` with the reason, the others stay yes.
    client.command(
        f"ALTER TABLE {db}.events UPDATE verb = 'get' WHERE seq = 300",
        settings={"mutations_sync": 2},
    )
    altered = cli(settings, "query", "--verify", *key, "--format", "json", sql)
    assert altered.exit_code == 1
    verdicts = {r["seq"]: (r["verified"], r["reason"]) for r in _json(altered)}
    assert verdicts[300] == (False, "its column verb does not match its payload")
    assert verdicts[5][0] is True and verdicts[519][0] is True and verdicts[560][0] is None
    # Put back as it was, the row verifies again; history --verify shows the same verdicts.
    client.command(
        f"ALTER TABLE {db}.events UPDATE verb = {{v:String}} WHERE seq = 300",
        parameters={"v": rows[1]["verb"]},
        settings={"mutations_sync": 2},
    )
    # A view redefined to show another value under an events column's name is caught whatever
    # type the view gives it (a String literal, Enum, Nullable: not the stored LowCardinality);
    # the same value in another type is still the stored value.
    client.command(
        f"CREATE OR REPLACE VIEW {db}.forged AS SELECT chain, seq, 'forged' AS verb, "
        "CAST('forged' AS Enum8('forged' = 1)) AS subresource, "
        f"toNullable(user_name) AS user_name, toString(event_time) AS event_time FROM {db}.events"
    )
    view_sql = "SELECT chain, seq, {} FROM forged WHERE seq IN (5, 300) ORDER BY seq"
    for column, reason in (
        ("verb", "the shown verb is not the stored value"),
        ("subresource", "the shown subresource is not the stored value"),
        ("event_time", "the shown event_time is not the stored value"),
    ):
        forged_view = cli(settings, "query", "--verify", *key, "--format", "json",
                          view_sql.format(column))  # fmt: skip
        assert forged_view.exit_code == 1, (column, forged_view.output)
        assert all(r["verified"] is False and r["reason"].startswith(reason)
                   for r in _json(forged_view)), (column, forged_view.output)  # fmt: skip
    same = cli(settings, "query", "--verify", *key, "--format", "json",
               view_sql.format("user_name"))  # fmt: skip
    assert same.exit_code == 0 and [r["verified"] for r in _json(same)] == [True, True]
    raw = cli(settings, "query", "--verify", *key, "--format", "json",
              "SELECT chain, seq, hash, payload, annotations, event_time FROM events "
              "WHERE seq IN (5, 300)")  # fmt: skip
    assert raw.exit_code == 0 and [r["verified"] for r in _json(raw)] == [True, True], raw.output
    resource, name, namespace = client.query(
        f"SELECT resource, name, namespace FROM {db}.events WHERE seq = 519"
    ).result_rows[0]
    history = cli(settings, "history", "--verify", *key, "--format", "json", "-n", namespace,
                  "--limit", "1000", f"{resource}/{name}")  # fmt: skip
    assert history.exit_code == 0, history.output
    shown = _json(history)
    assert shown and {r["verified"] for r in shown} <= {True, None}
    assert any(r["verified"] is True for r in shown)
    assert {"time", "user", "verb", "chain", "seq", "checkpoint_size"} <= set(shown[0])

    # A forged checkpoint (signed by a key the ring does not hold) fails every row it covers.
    other, _ = new_signer(tmp_path, "mallory")
    forged = Checkpoint(origin_for(settings.deployment, recs[0].chain), SIGNED, b"\x01" * 32,
                        recs[SIGNED - 1].hash, 1)  # fmt: skip
    client.command(
        f"INSERT INTO {db}.checkpoints (chain, origin, size, note) VALUES "
        "({c:String}, {o:String}, {s:UInt64}, {n:String})",
        parameters={"c": recs[0].chain, "o": forged.origin, "s": SIGNED + 1,
                    "n": sign_checkpoint(forged, other)},
    )  # fmt: skip
    bad = cli(settings, "query", "--verify", *key, "--format", "json", sql)
    assert bad.exit_code == 1
    assert all(r["verified"] is False and "does not verify" in r["reason"] for r in _json(bad))
