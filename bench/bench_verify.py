"""Verifier throughput beside a raw read + SHA-256 of the same topic, and proofs at 10M records.

``python -m bench.bench_verify --records N [--proof-records 10000000]``

* Kafka part: N chained records (real AuditEvent payloads from the test samples) are produced
  transactionally to partition 0 of a fresh chain topic on a throwaway (or ``SEALTRAIL_KAFKA``)
  broker with one signed checkpoint every 1000 records. Then, in the same process and run, the
  baseline reads the partition (read_committed, the same reader) and SHA-256es every value; the
  verifier (`run_job`, what `sealtrail verify` runs per chain) decodes, re-hashes, links and
  checks the checkpoints. Goal: verifier rate >= 0.7 x baseline.
* Deployment part (``--deployment-records``, 200,000 by default): the setup the issue measured,
  records in 2 chains verified as ``sealtrail verify --full --no-clickhouse`` does
  (``run_verify``: one process per chain up to the CPU count), beside one consumer reading both
  partitions + SHA-256 of every value.
* Proofs: the leaf hashes of a chain of ``--proof-records`` records are computed synthetically
  in memory (SHA-256 of the index, as record hashes), not produced to Kafka: the proof code only
  ever sees the 32-byte-per-leaf array ``prove`` builds from the topic. Measured: root
  computation, inclusion and consistency proof generation, offline verification of the JSON
  files (``verify_proof``, signature included), and the proof sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Producer

from bench.common import (
    KEEP_HELP,
    Result,
    bench_broker,
    fresh_settings,
    generated_payloads,
    max_rss_mb,
    print_table,
    run_directory,
    sample_payloads,
    write_json,
)
from processors.integrity.checkpoint import Checkpoint, KeyRing, origin_for, sign_checkpoint
from processors.integrity.merkle import CompactRange
from processors.integrity.note import Signer, generate_key
from processors.integrity.record import ChainHead, link
from processors.proofs import (
    CONSISTENCY,
    INCLUSION,
    fast_consistency_proof,
    fast_inclusion_proof,
    range_root,
    verify_proof,
)
from processors.verifier.kafka_source import ChainJob, keyring_text, run_job
from schemas.chained import record_value
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import producer_conf
from sealtrail.infra.kafka_read import read_range, reader


def _fill(settings: Settings, n: int, signer: Signer, partition: int = 0) -> int:
    """Produce n chained records of one chain and their checkpoints; return the value bytes."""
    payloads = sample_payloads()
    chain = f"{settings.topics.raw}/{partition}"
    origin = origin_for(settings.deployment, chain)
    producer = Producer(producer_conf(settings, **{"transactional.id": f"bench-{uuid.uuid4()}"}))
    producer.init_transactions(30)
    head = ChainHead(chain)
    cr = CompactRange()
    total = 0
    producer.begin_transaction()
    for i in range(n):
        payload = payloads[i % len(payloads)]
        rec = link(head, i, 1_700_000_000_000_000 + i, payload)
        cr.append(rec.hash)
        value = record_value(rec)
        total += len(value)
        producer.produce(settings.topics.chain, value, partition=partition)
        if (i + 1) % 1000 == 0 or i + 1 == n:
            cp = Checkpoint(origin, cr.size, cr.root(), rec.hash, 1_700_000_000_000_000 + i)
            producer.produce(
                settings.topics.checkpoints,
                sign_checkpoint(cp, signer).encode(),
                key=chain.encode(),
                partition=partition,
            )
            producer.commit_transaction(30)
            producer.begin_transaction()
        producer.poll(0)
    producer.commit_transaction(30)
    return total


def _raw_read(settings: Settings, partitions: int = 1) -> int:
    """Read the chain topic's partitions one after another, SHA-256 of every value."""
    consumer = reader(settings)
    count = 0
    try:
        for partition in range(partitions):
            for msg in read_range(consumer, settings.topics.chain, partition):
                hashlib.sha256(msg.value() or b"").digest()
                count += 1
    finally:
        consumer.close()
    return count


class _NoProgress:
    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def deployment_part(records: int, chains: int = 2) -> Result:
    """The issue's own setup: ``records`` in ``chains`` chains, verified as `sealtrail verify
    --full --no-clickhouse` does (:func:`processors.verifier.run.run_verify`: one process per
    chain up to the CPU count) beside one consumer reading the chain topic + SHA-256."""
    from processors.verifier.run import VerifyOptions, run_verify

    signer, ring = _signer_and_ring()
    with bench_broker() as bootstrap:
        settings = fresh_settings(bootstrap, partitions=chains, deployment="bench")
        per = records // chains
        for p in range(chains):
            _fill(settings, per, signer, partition=p)
        _raw_read(settings, chains)  # warm the page cache for both contenders alike
        t0 = time.perf_counter()
        raw = _raw_read(settings, chains)
        raw_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = run_verify(
            settings,
            ring,
            None,
            VerifyOptions(full=True),
            lambda total, what="records": _NoProgress(),
        )
        ver_s = time.perf_counter() - t0
    assert raw == per * chains and report.ok and report.records_verified == raw
    return Result(
        f"verify: {chains} chains as `verify --full --no-clickhouse` runs them",
        raw / ver_s,
        "records/s",
        "one consumer reading the chain topic + SHA-256 of the values",
        raw / raw_s,
        extra={"records": raw, "chains": chains, "verify_s": ver_s, "raw_s": raw_s},
    )


def _signer_and_ring() -> tuple[Signer, KeyRing]:
    """A fresh checkpoint key and the key ring that trusts it."""
    priv, _pub = generate_key("bench")
    signer = Signer.from_private_key(priv)
    ring = KeyRing()
    ring.add(signer.verifier)
    return signer, ring


def kafka_part(records: int) -> list[Result]:
    signer, ring = _signer_and_ring()
    with bench_broker() as bootstrap:
        settings = fresh_settings(bootstrap, partitions=1, deployment="bench")
        nbytes = _fill(settings, records, signer)
        _raw_read(settings)  # warm the page cache for both contenders alike
        t0 = time.perf_counter()
        raw = _raw_read(settings)
        raw_s = time.perf_counter() - t0
        job = ChainJob(settings, 0, keyring_text(ring), None)
        t0 = time.perf_counter()
        result = run_job(job)
        ver_s = time.perf_counter() - t0
    assert raw == records and result.ok and result.records_verified == records, result.findings
    return [
        Result(
            "verify: chain topic replay (decode, hash, link, checkpoints)",
            records / ver_s,
            "records/s",
            "raw read + SHA-256 of the values",
            raw / raw_s,
            extra={
                "records": records,
                "bytes": nbytes,
                "verify_s": ver_s,
                "raw_s": raw_s,
                "checkpoints_verified": result.checkpoints_verified,
            },
        )
    ]


def _fill_clickhouse(
    client: Any, db: str, chain: str, head: ChainHead, n: int, cr: Any, payloads: Iterator[bytes]
) -> None:
    """Append n chained rows to ``events`` as the sink stores them (one insert = one part),
    their payloads taken from ``payloads`` and their columns from the sink's event_columns."""
    from processors.clickhouse_schema import EVENT_COLUMNS
    from processors.sink import event_columns

    records = []
    for _ in range(n):
        i = head.next_seq
        rec = link(head, i, 1_700_000_000_000_000 + i, next(payloads))
        cr.append(rec.hash)
        records.append(rec)
    columns, failed = event_columns(records)
    assert not failed, failed[:1]
    client.insert(f"{db}.events", columns, column_names=list(EVENT_COLUMNS), column_oriented=True)


def clickhouse_part(rows: int, python_rows: int = 100_000) -> list[Result]:
    """The ClickHouse cross-check of one chain of ``rows`` rows in embedded ClickHouse: in SQL
    on the read-only session ``sealtrail verify`` opens (the path users run) beside the
    writable owner session with a scratch file (what this bench measured before), in SQL beside
    reading the rows into Python (--recompute-outside, on at most ``python_rows`` of them), and
    an incremental run after 1% new rows beside a full run."""
    import tempfile
    from pathlib import Path

    from processors.clickhouse_schema import migrate
    from processors.verifier.clickhouse_source import expected_columns, iter_rows
    from processors.verifier.clickhouse_sql import (
        Remembered,
        changed_parts,
        check_chain,
        table_parts,
    )
    from processors.verifier.rows import verify_rows
    from sealtrail.infra import clickhouse
    from sealtrail.infra.reader import as_reader
    from sealtrail.infra.scratch_session import ScratchSession

    home = Path(tempfile.mkdtemp(prefix="bench-verify-ch-"))
    settings = Settings(clickhouse=f"chdb://{home / 'ch'}", clickhouse_database="bench")
    client = clickhouse.connect(settings)
    migrate(client, "bench")
    chain = "audit.events/0"
    head, cr = ChainHead(chain), CompactRange()
    step = 100_000
    payloads = generated_payloads()
    for lo in range(0, rows, step):
        _fill_clickhouse(client, "bench", chain, head, min(step, rows - lo), cr, payloads)
    (home / "scratch").mkdir()
    scratch = ScratchSession.over(client, home / "scratch", store=str(home / "ch"))
    t0 = time.perf_counter()
    full = check_chain(client, "bench", chain, size=rows, expected_root=cr.root(), scratch=scratch)
    full_s = time.perf_counter() - t0
    assert full.ok and full.records_verified == rows, full.findings
    # The CLI's path: a read-only session (readonly=1 after the read limits) and its scratch
    # session (readonly=2), as open_reader gives `sealtrail verify` on an embedded store nobody
    # else holds.
    reader = as_reader(client, "bench")
    t0 = time.perf_counter()
    cli = check_chain(
        reader, "bench", chain, size=rows, expected_root=cr.root(), scratch=reader.scratch()
    )
    cli_s = time.perf_counter() - t0
    reader.close()
    assert cli.ok and cli.records_verified == rows, cli.findings
    py_n = min(rows, python_rows)
    t0 = time.perf_counter()
    py = verify_rows(
        chain,
        iter_rows(client, "bench", chain, py_n),
        expected_columns(chain),
        size=py_n,
        expected_root=None,
    )
    py_s = time.perf_counter() - t0
    assert py.ok and py.records_verified == py_n, py.findings
    # 1% new rows since a clean run: only the new part is checked.
    before = table_parts(client, "bench")
    remembered = Remembered(rows, cr.to_bytes())
    new = max(1, rows // 100)
    _fill_clickhouse(client, "bench", chain, head, new, cr, payloads)
    t0 = time.perf_counter()
    changed = changed_parts(before.parts, table_parts(client, "bench").parts)
    inc = check_chain(
        client,
        "bench",
        chain,
        size=rows + new,
        expected_root=cr.root(),
        scratch=scratch,
        changed_parts=changed,
        remembered=remembered,
    )
    inc_s = time.perf_counter() - t0
    assert inc.ok and inc.records_verified == new, inc.findings
    t0 = time.perf_counter()
    again = check_chain(
        client, "bench", chain, size=rows + new, expected_root=cr.root(), scratch=scratch
    )
    full2_s = time.perf_counter() - t0
    assert again.ok
    return [
        Result(
            "verify: ClickHouse check, read-only session as `sealtrail verify` runs it",
            rows / cli_s,
            "rows/s",
            "the same check on the writable owner session with a scratch file",
            rows / full_s,
            extra={"rows": rows, "readonly_s": cli_s, "writable_s": full_s},
        ),
        Result(
            "verify: ClickHouse check in SQL, writable session (hash, links, root, decode)",
            rows / full_s,
            "rows/s",
            "the same check reading rows into Python",
            py_n / py_s,
            extra={"rows": rows, "sql_s": full_s, "python_rows": py_n, "python_s": py_s},
        ),
        Result(
            "verify: ClickHouse --state run after 1% new rows",
            1 / inc_s,
            "runs/s",
            "a full ClickHouse check of the same table",
            1 / full2_s,
            extra={
                "rows": rows + new,
                "new_rows": new,
                "changed_parts": len(changed),
                "incremental_s": inc_s,
                "full_s": full2_s,
                "cost_vs_full": inc_s / full2_s,
            },
        ),
    ]


def proof_part(size: int) -> dict[str, Any]:
    """Proof generation/verification over a synthetic chain of ``size`` leaves."""
    signer, ring = _signer_and_ring()
    sha = hashlib.sha256

    def record_hash(i: int) -> bytes:
        return sha(i.to_bytes(8, "big")).digest()

    t0 = time.perf_counter()
    buf = bytearray()
    for start in range(0, size, 1 << 16):
        stop = min(size, start + (1 << 16))
        buf += b"".join([sha(b"\x00" + record_hash(i)).digest() for i in range(start, stop)])
    leaves = bytes(buf)
    del buf
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    root = range_root(leaves, 0, size)
    root_s = time.perf_counter() - t0
    chain = "audit.events/0"
    note = sign_checkpoint(
        Checkpoint(f"bench/{chain}", size, root, record_hash(size - 1), 1), signer
    )
    index = size // 3
    t0 = time.perf_counter()
    path = fast_inclusion_proof(index, size, leaves)
    inc_s = time.perf_counter() - t0
    inc_doc = json.dumps(
        {
            "type": INCLUSION,
            "version": 1,
            "chain": chain,
            "seq": index,
            "record_hash": record_hash(index).hex(),
            "tree_size": size,
            "proof": [h.hex() for h in path],
            "checkpoint": note,
        }
    )
    t0 = time.perf_counter()
    verify_proof(inc_doc, ring)
    inc_verify_s = time.perf_counter() - t0
    old = size // 2 + 12345 if size > 30000 else size // 2
    old_root = range_root(leaves, 0, old)
    old_note = sign_checkpoint(
        Checkpoint(f"bench/{chain}", old, old_root, record_hash(old - 1), 0), signer
    )
    t0 = time.perf_counter()
    cpath = fast_consistency_proof(old, size, leaves)
    con_s = time.perf_counter() - t0
    con_doc = json.dumps(
        {
            "type": CONSISTENCY,
            "version": 1,
            "chain": chain,
            "from_size": old,
            "to_size": size,
            "proof": [h.hex() for h in cpath],
            "checkpoint_from": old_note,
            "checkpoint_to": note,
        }
    )
    t0 = time.perf_counter()
    verify_proof(con_doc, ring)
    con_verify_s = time.perf_counter() - t0
    return {
        "records": size,
        "synthetic_leaves": True,
        "leaf_array_mb": len(leaves) / 2**20,
        "leaf_array_build_s": build_s,
        "root_s": root_s,
        "inclusion_generate_s": inc_s,
        "inclusion_verify_ms": inc_verify_s * 1000,
        "inclusion_hashes": len(path),
        "inclusion_file_bytes": len(inc_doc),
        "consistency_generate_s": con_s,
        "consistency_verify_ms": con_verify_s * 1000,
        "consistency_hashes": len(cpath),
        "consistency_file_bytes": len(con_doc),
        "peak_rss_mb": max_rss_mb(),
    }


def run(
    records: int = 50_000,
    proof_records: int = 10_000_000,
    clickhouse_rows: int = 1_000_000,
    deployment_records: int = 200_000,
) -> dict[str, Any]:
    """Run the parts; return a JSON-able dict (also written to bench/results/verify.json)."""
    results = kafka_part(records) if records > 0 else []
    if deployment_records > 0:
        results.append(deployment_part(deployment_records))
    if clickhouse_rows > 0:
        # In a child: one process can open one embedded store, and `python -m bench` has
        # opened the sink stage's already.
        import concurrent.futures as cf
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            results += pool.submit(clickhouse_part, clickhouse_rows).result()
    proofs = proof_part(proof_records) if proof_records > 0 else {}
    out = {"results": [r.as_dict() for r in results], "proofs": proofs}
    write_json("verify", results, {"proofs": proofs})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--proof-records", type=int, default=10_000_000)
    parser.add_argument("--clickhouse-rows", type=int, default=1_000_000)
    parser.add_argument("--deployment-records", type=int, default=200_000)
    parser.add_argument("--keep", action="store_true", help=KEEP_HELP)
    args = parser.parse_args()
    with run_directory(args.keep):
        out = run(args.records, args.proof_records, args.clickhouse_rows, args.deployment_records)
    if out["results"]:
        print_table(
            [Result(**{k: v for k, v in r.items() if k != "ratio"}) for r in out["results"]]
        )
    print(json.dumps(out["proofs"], indent=1))


if __name__ == "__main__":
    main()
