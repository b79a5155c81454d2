"""Inclusion proofs through the live-read path on long chains: stored subtrees vs reading them all.

python -m bench.bench_live_proofs [--sizes 100000,10000000] [--proofs 20]

Per size N, an *owner* process (standing in for the running sink: it owns the embedded store and
serves the live-read socket) fills a fresh store with an N-record chain (synthetic record hashes,
``SHA256(toString(seq))``), writes the stored subtrees with the sink's own writer, signs a
checkpoint of size N, and serves. This process then times, through the socket:

* ``stored``: what ``prove`` / ``--verify`` do: checkpoints, O(log n) subtree and block reads,
  the proof, checked against the signed root;
* ``sealtrail prove`` end to end (a fresh process: interpreter start, imports, socket, proof);

and the owner times the baseline in the same run: the pre-subtree algorithm (every record hash
of the chain read, then the proof over the leaf array), on the same store without the socket.
Writes bench/results/live_proofs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHAIN = "audit.events/0"
DEPLOYMENT = "bench.local"


def _owner(home: Path, n: int, ready: Path) -> None:
    """The owner process: build the store, time the baseline, serve until stdin closes."""
    from processors.clickhouse_schema import migrate
    from processors.integrity import subtrees
    from processors.integrity.checkpoint import Checkpoint, origin_for, sign_checkpoint
    from processors.integrity.keys import write_keypair
    from processors.integrity.note import Signer
    from processors.proofs import LeafHashes, fast_inclusion_proof
    from processors.sink.subtrees import SubtreeWriter, fetch_nodes
    from sealtrail.infra import clickhouse, livewire
    from sealtrail.infra.config import Settings
    from sealtrail.infra.liveserver import LiveReadServer

    settings = Settings(home=home, deployment=DEPLOYMENT)
    client = clickhouse.connect(settings)
    db = settings.clickhouse_database
    migrate(client, db)
    t0 = time.perf_counter()
    step = 1_000_000
    for lo in range(0, n, step):
        client.command(
            f"INSERT INTO {db}.events (chain, seq, hash, event_time) SELECT '{CHAIN}', number, "
            f"SHA256(toString(number)), toDateTime64('2026-01-01 00:00:00', 6, 'UTC') "
            f"FROM numbers({lo}, {min(step, n - lo)})"
        )
    load_s = time.perf_counter() - t0

    def insert(table: str, names: Any, columns: list[list[Any]], token: str) -> None:
        ctx = client.create_insert_context(
            f"{db}.{table}", column_names=list(names), column_oriented=True
        )
        ctx.data = columns
        client.insert(context=ctx)

    writer = SubtreeWriter(db)
    t0 = time.perf_counter()
    writer.advance(client, CHAIN, n, insert)
    subtrees_s = time.perf_counter() - t0
    # The signed checkpoint: its root from the stored nodes plus the last partial block.
    block = n - n % 256
    cover = subtrees.perfect_cover(0, block)
    nodes = fetch_nodes(client, db, CHAIN, cover)
    tail = client.query(
        f"SELECT hash FROM {db}.events WHERE chain = '{CHAIN}' AND seq >= {block} ORDER BY seq"
    ).result_rows
    import hashlib

    leaves = {block + i: hashlib.sha256(b"\x00" + bytes(h)).digest() for i, (h,) in enumerate(tail)}
    root = subtrees.subtree_hash(0, n, nodes, leaves.__getitem__)
    head = bytes(
        client.query(f"SELECT hash FROM {db}.events WHERE seq = {n - 1}").result_rows[0][0]
    )
    key, pub = write_keypair("bench", home / "keys")
    signer = Signer.from_private_key(key.read_text().strip())
    cp = Checkpoint(origin_for(DEPLOYMENT, CHAIN), n, root, head, 1_700_000_000_000_000)
    client.command(
        f"INSERT INTO {db}.checkpoints (chain, origin, size, root_hash, head_hash, note) VALUES "
        "({c:String}, {o:String}, {s:UInt64}, '', '', {n:String})",
        parameters={"c": CHAIN, "o": cp.origin, "s": n, "n": sign_checkpoint(cp, signer)},
    )
    # Baseline: the pre-subtree algorithm over the same store (every hash read, then the proof).
    seq = random.Random(1).randrange(n)
    t0 = time.perf_counter()
    all_leaves = LeafHashes(keep=(seq,))
    page = 1_000_000
    for lo in range(0, n, page):
        rows = client.query(
            f"SELECT hash FROM {db}.events WHERE chain = '{CHAIN}' AND seq >= {lo} "
            f"AND seq < {lo + page} ORDER BY seq"
        ).result_rows
        for (h,) in rows:
            all_leaves.append(bytes(h))
    proof = fast_inclusion_proof(seq, n, all_leaves.leaves)
    baseline_s = time.perf_counter() - t0
    assert all_leaves.root(n) == root and proof
    path = livewire.socket_path(settings, clickhouse.chdb_path(settings.clickhouse_dsn))  # type: ignore[arg-type]
    server = LiveReadServer(settings.clickhouse_dsn, path).start()
    ready.write_text(
        json.dumps(
            {
                "load_s": load_s,
                "subtrees_s": subtrees_s,
                "nodes": writer.nodes_written,
                "baseline_s": baseline_s,
                "pub": str(pub),
            }
        )
    )
    sys.stdin.read()  # serve until the bench closes our stdin
    server.stop()


def _measure(n: int, proofs: int) -> dict[str, Any]:
    from processors.integrity.checkpoint import KeyRing
    from processors.verified_read import signed_checkpoints, stored_inclusion
    from sealtrail.infra.config import Settings
    from sealtrail.infra.reader import SocketReader, open_reader

    home = Path(tempfile.mkdtemp(prefix="stbench-", dir="/tmp"))
    ready = home / "ready.json"
    owner = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_live_proofs", "--owner", str(n), str(home)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
    )
    try:
        while not ready.exists():
            if owner.poll() is not None:
                raise SystemExit(f"the owner process failed for n={n}")
            time.sleep(0.5)
        built = json.loads(ready.read_text())
        settings = Settings(home=home, deployment=DEPLOYMENT)
        ring = KeyRing.load(Path(built["pub"]))
        rng = random.Random(2)
        times: list[float] = []
        for _ in range(proofs):
            seq = rng.randrange(n)
            t0 = time.perf_counter()
            reader = open_reader(settings)
            assert isinstance(reader, SocketReader)
            note, cp = signed_checkpoints(reader, "sealtrail", DEPLOYMENT, CHAIN, ring)[0]
            stored_inclusion(reader, "sealtrail", CHAIN, seq, note, cp)
            reader.close()
            times.append(time.perf_counter() - t0)
        env = {**os.environ, "SEALTRAIL_HOME": str(home), "SEALTRAIL_DEPLOYMENT": DEPLOYMENT}
        cli: list[float] = []
        for _ in range(3):
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "sealtrail", "prove", "--chain", CHAIN, "--seq",
                 str(rng.randrange(n)), "--key", built["pub"], "--out", str(home / "p.json")],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            cli.append(time.perf_counter() - t0)
            assert done.returncode == 0, done.stderr
        start: list[float] = []  # baseline for the CLI figure: a process that only starts
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "sealtrail", "--version"], env=env, check=True,
                           capture_output=True)  # fmt: skip
            start.append(time.perf_counter() - t0)
        return {
            "records": n,
            "load_average": round(os.getloadavg()[0], 1),
            "cli_start_only_p50_s": round(statistics.median(start), 3),
            "store_load_s": round(built["load_s"], 2),
            "subtrees_write_s": round(built["subtrees_s"], 2),
            "subtree_rows": built["nodes"],
            "proof_live_p50_s": round(statistics.median(times), 4),
            "proof_live_max_s": round(max(times), 4),
            "prove_cli_p50_s": round(statistics.median(cli), 3),
            "baseline_read_all_s": round(built["baseline_s"], 2),
        }
    finally:
        if owner.stdin is not None:
            owner.stdin.close()
        owner.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,10000000")
    parser.add_argument("--proofs", type=int, default=20)
    parser.add_argument("--owner", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.owner:
        n, home = int(args.owner[0]), Path(args.owner[1])
        _owner(home, n, home / "ready.json")
        return
    results = [_measure(int(s), args.proofs) for s in args.sizes.split(",")]
    for r in results:
        print(json.dumps(r))
    out = ROOT / "bench" / "results" / "live_proofs.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
