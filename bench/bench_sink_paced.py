"""The sink's CPU per record at a steady pace, beside a raw consumer of the same records.

``python -m bench.bench_sink_paced --rate R --records N``: chained records of the Falco
samples, spread over ``--partitions`` chain-topic partitions, are written the way the chainer
writes them (one transaction every 20 ms holding every partition's share) at ``R`` records/s,
first for a raw consumer (``bench/raw_pipeline.py consume``: inserts (key, time, value) rows
into chdb and commits), then, on fresh topics, for ``sealtrail sink``. Each runs as its own
process; its CPU is read from ``/proc`` (chdb's merges and insert threads included) from the
first record written until every record is committed. The sink's CPU is also split by thread
(the loop, the insert worker, chdb's insert and merge pools, librdkafka), among the threads
alive at the end. Latency: a watcher thread reads the group's committed offsets every
``WATCH_S`` and times each transaction from its commit to the offset that covers it (the sink
commits once the rows are stored, so this is "written -> queryable" plus up to ``WATCH_S``).

``--linger-ms 250,50,400`` runs the sink once per value (``sealtrail sink --linger-ms``, fresh
topics and store each time): the trade of CPU per record for latency that option makes.

A fleet's sink runs like this most of the time: caught up, inserting what arrives. Unlike
``bench_sink`` (a backlog read with ``--once``), the cost per insert and the merges of the
parts those inserts make show here.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import (
    KEEP_HELP,
    Metered,
    bench_broker,
    free_port,
    fresh_settings,
    percentile,
    run_directory,
    sample_payloads,
    spawn,
    wait_until,
)
from processors.integrity.record import ChainHead, link
from schemas.chained import record_value
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import producer_conf
from sealtrail.supervisor import child_env

TRANSACTIONS_PER_S = 50  # the chainer commits about this often under load
WATCH_S = 0.02  # how often the latency watcher reads the committed offsets
DEFAULT_LINGER_MS = 250  # sealtrail sink's default --linger-ms
_TICK = os.sysconf("SC_CLK_TCK")

# Linux thread name prefix -> what it does. chdb names its pools and the sink its insert worker
# (processors/sink/fast_path.py; chdb runs part of each INSERT on the thread that calls it);
# the other Python threads carry the process's name: "loop" is mostly the sink's main loop.
THREAD_GROUPS = {
    "MergeMutate": "merges",
    "ThreadPool": "insert pool",
    "sink-insert": "insert worker",
    "rdk:": "librdkafka",
}


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread group among the threads alive now."""
    groups: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue  # ended meanwhile
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        group = next((g for p, g in THREAD_GROUPS.items() if name.startswith(p)), None)
        if group is None:
            group = "loop" if name in ("python", "python3", "sealtrail") else "other"
        groups[group] = groups.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return groups


def chained_values(records: int, partitions: int, topic_raw: str) -> list[list[bytes]]:
    """Each partition's chain-topic values, in order."""
    payloads = sample_payloads()
    heads = [ChainHead(f"{topic_raw}/{p}") for p in range(partitions)]
    values: list[list[bytes]] = [[] for _ in range(partitions)]
    now = time.time_ns() // 1000
    for i in range(records):
        p = i % partitions
        values[p].append(
            record_value(link(heads[p], i // partitions, now + i, payloads[i % len(payloads)]))
        )
    return values


def feed(settings: Settings, values: list[list[bytes]], rate: float) -> tuple[float, list[float]]:
    """Write ``values`` at ``rate`` records/s in transactions; returns the seconds it took and
    when (monotonic) each transaction was committed."""
    producer = Producer(producer_conf(settings, **{"transactional.id": f"pace-{uuid.uuid4()}"}))
    producer.init_transactions(30)
    total = sum(map(len, values))
    per_tx = max(1, round(rate / TRANSACTIONS_PER_S / len(values)))  # per partition
    keys = [f"{settings.topics.raw}/{p}".encode() for p in range(len(values))]  # as the chainer
    started = time.monotonic()
    sent = 0
    committed_at: list[float] = []
    for start in range(0, max(map(len, values)), per_tx):
        producer.begin_transaction()
        for partition, chain in enumerate(values):
            for value in chain[start : start + per_tx]:
                producer.produce(
                    settings.topics.chain, key=keys[partition], value=value, partition=partition
                )
                sent += 1
        producer.commit_transaction(60)
        committed_at.append(time.monotonic())
        delay = started + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    assert sent == total
    return time.monotonic() - started, committed_at


class Watcher(threading.Thread):
    """Reads ``group``'s committed offsets of ``parts`` every ``WATCH_S``, noting when each
    partition's offset moved (its own consumer handle, in this bench process)."""

    def __init__(self, settings: Settings, group: str, parts: list[TopicPartition]) -> None:
        super().__init__(daemon=True)
        self.reader = Consumer({"bootstrap.servers": settings.kafka, "group.id": group})
        self.parts = parts
        self.moves: dict[int, list[tuple[float, int]]] = {tp.partition: [] for tp in parts}
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                offsets = self.reader.committed(self.parts, timeout=10)
                seen = time.monotonic()
                for tp in offsets:
                    moves = self.moves[tp.partition]
                    if tp.offset >= 0 and (not moves or tp.offset > moves[-1][1]):
                        moves.append((seen, tp.offset))
                self.done.wait(WATCH_S)
        finally:
            self.reader.close()

    def latencies_ms(
        self, committed_at: list[float], per_tx: int, lengths: dict[int, int]
    ) -> list[float]:
        """Per transaction and partition: from its commit until the committed offset covered
        its records (:func:`tx_end`; ``lengths``: records per partition)."""
        out: list[float] = []
        for partition, moves in self.moves.items():
            offsets = [offset for _t, offset in moves]  # increasing
            for k, at in enumerate(committed_at):
                need = tx_end(k, per_tx, lengths[partition])
                if need is None:
                    continue
                first = bisect.bisect_left(offsets, need)
                if first < len(moves):
                    out.append(max(0.0, moves[first][0] - at) * 1000)
        return out


def tx_end(k: int, per_tx: int, length: int) -> int | None:
    """The committed offset that covers transaction ``k``'s records in a partition of
    ``length`` records written by :func:`feed` (each transaction: ``per_tx`` records, fewer in
    the last, then one commit marker); None if it wrote none there."""
    in_tx = min(per_tx, length - k * per_tx)
    return k * (per_tx + 1) + in_tx if in_tx > 0 else None


def _measure(
    name: str,
    settings: Settings,
    group: str,
    process: subprocess.Popen[bytes],
    values: list[list[bytes]],
    rate: float,
    logs: Path,
) -> dict[str, Any]:
    """Feed ``values`` to the running ``process`` and return its CPU until ``group`` committed
    every record."""
    records = sum(map(len, values))
    # The offset that covers each partition's last transaction (its marker is not committed).
    per_tx = max(1, round(rate / TRANSACTIONS_PER_S / len(values)))
    ends = {
        p: tx_end(-(-len(chain) // per_tx) - 1, per_tx, len(chain)) or 0
        for p, chain in enumerate(values)
    }
    parts = [TopicPartition(settings.topics.chain, p) for p in ends]
    reader = Consumer({"bootstrap.servers": settings.kafka, "group.id": group})
    watcher = Watcher(settings, group, parts)

    def committed() -> bool:
        return all(tp.offset >= ends[tp.partition] for tp in reader.committed(parts, timeout=10))

    try:
        metered = Metered(name, process.pid)
        metered.start()
        threads0 = thread_cpu_s(process.pid)
        watcher.start()
        started = time.monotonic()
        fed_s, committed_at = feed(settings, values, rate)
        wait_until(f"{name} committing every record", committed, {name: process}, logs)
        caught_up_s = time.monotonic() - started - fed_s
        cpu = metered.cpu_seconds()
        threads1 = thread_cpu_s(process.pid)
    finally:
        watcher.done.set()
        watcher.join(30)
        reader.close()
    split = {g: round((s - threads0.get(g, 0.0)) / records * 1e6, 1) for g, s in threads1.items()}
    lengths = {p: len(chain) for p, chain in enumerate(values)}
    latencies = watcher.latencies_ms(committed_at, per_tx, lengths)
    return {
        "records": records,
        "fed_seconds": round(fed_s, 2),
        "committed_after_last_s": round(caught_up_s, 2),
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_record": round(cpu / records * 1e6, 1),
        "cpu_us_per_record_by_thread": dict(sorted(split.items(), key=lambda kv: -kv[1])),
        **{
            f"stored_p{q}_ms": None if (v := percentile(latencies, q)) is None else round(v, 1)
            for q in (50, 99)
        },
    }


def run(
    rate: float = 7000.0,
    records: int = 100_000,
    partitions: int = 3,
    bootstrap: str | None = None,
    lingers: tuple[int, ...] = (DEFAULT_LINGER_MS,),
) -> dict[str, Any]:
    """The raw consumer, then the sink once per ``--linger-ms`` of ``lingers`` (the first is
    reported as ``sink``)."""
    work = Path(tempfile.mkdtemp(prefix="sealtrail-sink-paced-"))
    with bench_broker(bootstrap=bootstrap) as kafka:
        # The raw consumer: same records, same pace, its own topics.
        raw_settings = fresh_settings(kafka, partitions)
        values = chained_values(records, partitions, raw_settings.topics.raw)
        group = f"bench-raw-{uuid.uuid4().hex[:8]}"
        ready = work / "raw.ready"
        raw = spawn(
            [
                *(sys.executable, "-m", "bench.raw_pipeline", "consume"),
                *("--bootstrap", kafka, "--topic", raw_settings.topics.chain),
                *("--ready", str(ready), "--out", str(work / "raw.json")),
                *("--group", group, "--partitions", str(partitions)),
                *("--chdb", str(work / "raw-store")),
            ],
            work / "raw.log",
            stdin=subprocess.PIPE,  # it runs until its stdin closes
        )
        try:
            wait_until("the raw consumer", ready.exists, {"raw consumer": raw}, work)
            baseline = _measure("the raw consumer", raw_settings, group, raw, values, rate, work)
        finally:
            if raw.stdin is not None:
                raw.stdin.close()
            raw.wait(60)

        # The sink, as `sealtrail sink` runs (its own store, its own topics), per linger.
        by_linger = {
            str(linger): _run_sink(
                kafka, work / f"linger-{linger}", rate, records, partitions, linger
            )
            for linger in lingers
        }
    measured = by_linger[str(lingers[0])]
    return {
        "rate": rate,
        "partitions": partitions,
        "sink": measured,
        "sink_by_linger_ms": by_linger,
        "raw_consumer": baseline,
        "cpu_ratio_raw_vs_sink": round(
            baseline["cpu_us_per_record"] / measured["cpu_us_per_record"], 3
        ),
    }


def _run_sink(
    kafka: str, work: Path, rate: float, records: int, partitions: int, linger_ms: int
) -> dict[str, Any]:
    """``sealtrail sink --linger-ms linger_ms`` on fresh topics and a fresh store, measured."""
    work.mkdir(parents=True)
    settings = fresh_settings(
        kafka, partitions, clickhouse=f"chdb://{work / 'store'}", clickhouse_database="paced"
    )
    values = chained_values(records, partitions, settings.topics.raw)
    log = work / "sink.log"
    metrics_port = free_port()
    sink = spawn(
        [
            *(sys.executable, "-m", "sealtrail.cli", "sink"),
            *("--metrics-listen", f"127.0.0.1:{metrics_port}"),
            *("--linger-ms", str(linger_ms)),
        ],
        log,
        env=child_env(settings),
    )
    try:
        # Assigned: the store is open and migrated, the consumer in its group.
        def assigned() -> bool:
            return "assigned" in log.read_text(errors="replace")

        wait_until("the sink", assigned, {"sink": sink}, work)
        measured = _measure("the sink", settings, settings.groups.sink, sink, values, rate, work)
        measured["linger_ms"] = linger_ms
        measured["inserts"] = _inserts(metrics_port)
    finally:
        sink.terminate()
        sink.wait(60)
    return measured


def _metrics(port: int) -> str:
    from urllib.request import urlopen

    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _inserts(port: int) -> dict[str, float]:
    wanted = {
        "sealtrail_sink_fast_path_batches_total": "fast",
        "sealtrail_sink_python_batches_total": "python",
    }
    out: dict[str, float] = {}
    for line in _metrics(port).splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=7000.0, help="records/s offered")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--linger-ms",
        default=str(DEFAULT_LINGER_MS),
        help="comma-separated sealtrail sink --linger-ms values, one sink run each",
    )
    parser.add_argument("--keep", action="store_true", help=KEEP_HELP)
    args = parser.parse_args()
    for name in ("rate", "records", "partitions"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be above 0, not {getattr(args, name)}")
    try:
        lingers = tuple(int(v) for v in args.linger_ms.split(","))
    except ValueError:
        parser.error(
            f"--linger-ms must be whole milliseconds separated by commas, not {args.linger_ms!r}"
        )
    if any(v < 0 for v in lingers):
        parser.error(f"--linger-ms must be 0 or more, not {args.linger_ms}")
    with run_directory(args.keep):
        out = run(args.rate, args.records, args.partitions, lingers=lingers)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
