"""Verifier throughput beside a raw read + SHA-256 of the same topic, and proofs at 10M records.

``python -m bench.bench_verify --records N [--proof-records 10000000]``

* Kafka part: N chained records (real AuditEvent payloads from the test samples) are produced
  transactionally to partition 0 of a fresh chain topic on a throwaway (or ``SEALTRAIL_KAFKA``)
  broker with one signed checkpoint every 1000 records. Then, in the same process and run, the
  baseline reads the partition (read_committed, the same reader) and SHA-256es every value; the
  verifier (`run_job`, what `sealtrail verify` runs per chain) decodes, re-hashes, links and
  checks the checkpoints. Goal: verifier rate >= 0.7 x baseline.
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
from typing import Any

from confluent_kafka import Producer

from bench.common import (
    Result,
    bench_broker,
    fresh_settings,
    max_rss_mb,
    print_table,
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
from schemas.codec import encode_chained
from sealtrail.config import Settings
from sealtrail.kafka import producer_conf
from sealtrail.kafka_read import read_range, reader


def _fill(settings: Settings, n: int, signer: Signer) -> int:
    """Produce n chained records and their checkpoints; return the payload bytes."""
    payloads = sample_payloads()
    chain = f"{settings.topics.raw}/0"
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
        value = encode_chained(
            {
                "chain": chain,
                "seq": rec.seq,
                "prev_hash": rec.prev_hash,
                "hash": rec.hash,
                "source_offset": rec.source_offset,
                "ingested_at": rec.ingested_at_us,
                "payload": rec.payload,
            }
        )
        total += len(value)
        producer.produce(settings.topics.chain, value, partition=0)
        if (i + 1) % 1000 == 0 or i + 1 == n:
            cp = Checkpoint(origin, cr.size, cr.root(), rec.hash, 1_700_000_000_000_000 + i)
            producer.produce(
                settings.topics.checkpoints,
                sign_checkpoint(cp, signer).encode(),
                key=chain.encode(),
                partition=0,
            )
            producer.commit_transaction(30)
            producer.begin_transaction()
        producer.poll(0)
    producer.commit_transaction(30)
    return total


def _raw_read(settings: Settings) -> int:
    consumer = reader(settings)
    count = 0
    try:
        for msg in read_range(consumer, settings.topics.chain, 0):
            hashlib.sha256(msg.value() or b"").digest()
            count += 1
    finally:
        consumer.close()
    return count


def kafka_part(records: int) -> list[Result]:
    priv, pub = generate_key("bench")
    signer = Signer.from_private_key(priv)
    ring = KeyRing()
    ring.add(signer.verifier)
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


def proof_part(size: int) -> dict[str, Any]:
    """Proof generation/verification over a synthetic chain of ``size`` leaves."""
    priv, _pub = generate_key("bench")
    signer = Signer.from_private_key(priv)
    ring = KeyRing()
    ring.add(signer.verifier)
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


def run(records: int = 50_000, proof_records: int = 10_000_000) -> dict[str, Any]:
    """Run both parts; return a JSON-able dict (also written to bench/results/verify.json)."""
    results = kafka_part(records) if records > 0 else []
    proofs = proof_part(proof_records) if proof_records > 0 else {}
    out = {"results": [r.as_dict() for r in results], "proofs": proofs}
    write_json("verify", results, {"proofs": proofs})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--proof-records", type=int, default=10_000_000)
    args = parser.parse_args()
    out = run(args.records, args.proof_records)
    if out["results"]:
        print_table(
            [Result(**{k: v for k, v in r.items() if k != "ratio"}) for r in out["results"]]
        )
    print(json.dumps(out["proofs"], indent=1))


if __name__ == "__main__":
    main()
