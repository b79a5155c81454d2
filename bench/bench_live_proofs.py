"""Inclusion proofs through the live-read path on long chains: stored subtrees vs reading them all.

python -m bench.bench_live_proofs [--sizes 100000,10000000] [--proofs 20] [--pipeline]

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

With ``--pipeline`` the owner only builds the store and exits; then the real pipeline owns it:
``sealtrail run`` (webhook, chainer, sink; a throwaway broker unless SEALTRAIL_KAFKA is set)
with ``sealtrail produce load`` posting events to its webhook the whole time, so the proofs go
through the running sink's socket while it stores other chains into the same store. The rows
the sink stored while the proofs were timed are reported (``live_rows_stored_meanwhile``).
Writes bench/results/live_proofs_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import KEEP_HELP, run_directory

ROOT = Path(__file__).resolve().parents[1]
CHAIN = "audit.events/0"
DEPLOYMENT = "bench.local"


def _owner(home: Path, n: int, ready: Path, serve: bool = True) -> None:
    """The owner process: build the store, time the baseline, serve until stdin closes (or,
    without ``serve``, exit: the pipeline then owns the store)."""
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
    built = {
        "load_s": load_s,
        "subtrees_s": subtrees_s,
        "nodes": writer.nodes_written,
        "baseline_s": baseline_s,
        "pub": str(pub),
    }
    if not serve:
        ready.write_text(json.dumps(built))
        return
    path = livewire.socket_path(settings, clickhouse.chdb_path(settings.clickhouse_dsn))  # type: ignore[arg-type]
    server = LiveReadServer(settings.clickhouse_dsn, path).start()
    ready.write_text(json.dumps(built))
    sys.stdin.read()  # serve until the bench closes our stdin
    server.stop()


def _build(n: int, home: Path, serve: bool) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start the owner process on ``home`` and wait until its store is built."""
    ready = home / "ready.json"
    args = ["--owner", str(n), str(home)] + ([] if serve else ["--no-serve"])
    owner = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_live_proofs", *args], cwd=ROOT, stdin=subprocess.PIPE
    )
    while not ready.exists():
        if owner.poll() is not None:
            raise SystemExit(f"the owner process failed for n={n}")
        time.sleep(0.5)
    return owner, json.loads(ready.read_text())


def _time_proofs(
    settings: Any, env: dict[str, str], n: int, proofs: int, built: dict[str, Any], home: Path
) -> dict[str, Any]:
    """Inclusion proofs of random records of CHAIN through the owner's live-read socket, then
    ``sealtrail prove`` end to end, then a process that only starts (the CLI figure's floor)."""
    from processors.integrity.checkpoint import KeyRing
    from processors.verified_read import signed_checkpoints, stored_inclusion
    from sealtrail.infra.reader import SocketReader, open_reader

    db = settings.clickhouse_database
    ring = KeyRing.load(Path(built["pub"]))
    rng = random.Random(2)
    times: list[float] = []
    for _ in range(proofs):
        seq = rng.randrange(n)
        t0 = time.perf_counter()
        reader = open_reader(settings)
        assert isinstance(reader, SocketReader)
        note, cp = signed_checkpoints(reader, db, DEPLOYMENT, CHAIN, ring)[0]
        stored_inclusion(reader, db, CHAIN, seq, note, cp)
        reader.close()
        times.append(time.perf_counter() - t0)
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
        assert "reading the chain from Kafka" not in done.stderr, done.stderr
    start: list[float] = []
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


def _measure(n: int, proofs: int) -> dict[str, Any]:
    from sealtrail.infra.config import Settings

    home = Path(tempfile.mkdtemp(prefix="stbench-", dir="/tmp"))
    owner, built = _build(n, home, serve=True)
    try:
        settings = Settings(home=home, deployment=DEPLOYMENT)
        env = {**os.environ, "SEALTRAIL_HOME": str(home), "SEALTRAIL_DEPLOYMENT": DEPLOYMENT}
        return _time_proofs(settings, env, n, proofs, built, home)
    finally:
        if owner.stdin is not None:
            owner.stdin.close()
        owner.wait(120)


LOAD_RATE = 300  # events/s posted to the webhook while the proofs are timed


def _measure_pipeline(n: int, proofs: int, kafka: str) -> dict[str, Any]:
    """The store built, then owned by ``sealtrail run`` ingesting a load; proofs meanwhile."""
    from bench.common import free_port, fresh_settings
    from processors.integrity.keys import write_keypair
    from sealtrail.infra import livewire
    from sealtrail.infra.reader import SocketReader, open_reader
    from sealtrail.supervisor import child_env

    home = Path(tempfile.mkdtemp(prefix="stbench-", dir="/tmp"))
    owner, built = _build(n, home, serve=False)
    owner.wait(120)
    # The live chains are <prefix>audit.events/0: other chains than CHAIN, in the same store.
    settings = fresh_settings(kafka, partitions=1, home=home, deployment=DEPLOYMENT)
    env = child_env(settings)
    key, _pub = write_keypair("live", home / "live-keys")
    port, health = free_port(), free_port()
    logs = (home / "run.log").open("ab")
    run = subprocess.Popen(
        [sys.executable, "-m", "sealtrail", "run", "--listen", f"127.0.0.1:{port}",
         "--insecure-no-auth", "--cluster", "c1", "--signing-key", str(key),
         "--health-listen", f"127.0.0.1:{health}"],
        env=env, stdout=logs, stderr=logs, cwd=ROOT,
    )  # fmt: skip
    load: subprocess.Popen[bytes] | None = None

    def live_rows() -> int:
        reader = open_reader(settings)
        try:
            assert isinstance(reader, SocketReader), "the running sink must answer"
            result = reader.query(
                "SELECT count() FROM events WHERE chain != {c:String}", {"c": CHAIN}
            )
            return int(result.result_rows[0][0])
        finally:
            reader.close()

    def wait(what: str, ready: Any, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if run.poll() is not None:
                raise SystemExit(f"sealtrail run exited; see {home / 'run.log'}")
            try:
                if ready() is not False:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} not within {timeout:.0f} s; see {home / 'run.log'}")
            time.sleep(0.5)

    try:
        # Not open_reader before the sink serves: with nobody owning the store it would open it
        # here, for the life of this process, and the sink could not start.
        socket_path = livewire.socket_path(settings, home / "clickhouse")
        wait("the sink's live-read socket", lambda: SocketReader.connect(socket_path, "x").close())
        load = subprocess.Popen(
            [sys.executable, "-m", "sealtrail", "produce", "load", "--via", "webhook", "--url",
             f"http://127.0.0.1:{port}/", "--count", "100000000", "--rate", str(LOAD_RATE),
             "--clusters", "1", "--seed", "7"],
            env=env, stdout=logs, stderr=logs, cwd=ROOT,
        )  # fmt: skip
        wait("rows of the load in the store", lambda: live_rows() > 0)
        before, t0 = live_rows(), time.monotonic()
        out = _time_proofs(settings, {**env, "SEALTRAIL_DEPLOYMENT": DEPLOYMENT}, n, proofs,
                           built, home)  # fmt: skip
        stored, seconds = live_rows() - before, time.monotonic() - t0
        assert load.poll() is None, "the load ended while the proofs were timed"
        assert stored > 0, "the sink stored nothing while the proofs were timed"
        out.update(
            mode="sealtrail run ingesting",
            load_rate_offered=LOAD_RATE,
            live_rows_stored_meanwhile=stored,
            live_rows_per_s_meanwhile=round(stored / seconds, 1),
        )
        return out
    finally:
        if load is not None:
            load.kill()
            load.wait(30)
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(120)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait(30)
        logs.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,10000000")
    parser.add_argument("--proofs", type=int, default=20)
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="time the proofs through sealtrail run's sink while it ingests a load",
    )
    parser.add_argument("--owner", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--no-serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help=KEEP_HELP)
    args = parser.parse_args()
    if args.owner:
        n, home = int(args.owner[0]), Path(args.owner[1])
        _owner(home, n, home / "ready.json", serve=not args.no_serve)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    with run_directory(args.keep):
        if args.pipeline:
            from bench.common import bench_broker

            with bench_broker() as kafka:
                results = [_measure_pipeline(n, args.proofs, kafka) for n in sizes]
            name = "live_proofs_pipeline.json"
        else:
            results = [_measure(n, args.proofs) for n in sizes]
            name = "live_proofs.json"
    for r in results:
        print(json.dumps(r))
    out = ROOT / "bench" / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
