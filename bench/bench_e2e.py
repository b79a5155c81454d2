"""End to end: events through the webhook until they are rows in ClickHouse and under a checkpoint.

``sealtrail run`` (webhook + chainer + sink, each its own process) runs against a throwaway
broker and an embedded ClickHouse store. Concurrent clients POST EventList batches of 400 events
(like the API server). The last event of every batch carries a marker auditID; this process
watches the chain topic for it (read_committed), then the sink's committed offsets (the sink
commits only after ClickHouse acknowledged the rows, so a committed offset past the record means
the row is queryable) and the checkpoint topic (the record is covered once a signed checkpoint's
tree size passes its seq). Reported: sustained events/s from the first POST to the last row being
queryable, latency p50/p99 from the webhook's 200 to queryable and to checkpointed, CPU seconds
and peak RSS of each process.

python -m bench.bench_e2e --events 100000 [--clients 8] [--batch 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Consumer, TopicPartition

from bench.common import (
    Result,
    bench_broker,
    free_port,
    fresh_settings,
    print_table,
    write_json,
)
from processors.integrity.checkpoint import parse_checkpoint_note
from processors.integrity.keys import write_keypair
from sealtrail.infra.samples import K8S_AUDIT_SAMPLES
from sealtrail.supervisor import child_env

SAMPLES = K8S_AUDIT_SAMPLES
MARK = b"bench-mark-"


def _templates() -> list[dict[str, Any]]:
    events = []
    for path in sorted(SAMPLES.glob("*.json")):
        for line in path.read_bytes().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("kind") == "Event":
                events.append(event)
    return events


def make_batches(events: int, batch: int) -> list[tuple[str, bytes]]:
    """(marker, EventList body) pairs; each batch's last event has the marker as its auditID."""
    templates = _templates()
    bodies = []
    made = 0
    number = 0
    while made < events:
        size = min(batch, events - made)
        items = []
        for i in range(size):
            event = dict(templates[(made + i) % len(templates)])
            event["auditID"] = str(uuid.uuid4())
            if i == size - 1:
                event["auditID"] = f"{MARK.decode()}{number:08d}"
            items.append(json.dumps(event, separators=(",", ":")))
        body = (
            '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[' + ",".join(items) + "]}"
        ).encode()
        bodies.append((f"{MARK.decode()}{number:08d}", body))
        made += size
        number += 1
    return bodies


class Watcher(threading.Thread):
    """Follows the chain and checkpoint topics and the sink's committed offsets."""

    def __init__(self, bootstrap: str, settings: Any, partitions: int) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.partitions = partitions
        self.stop = threading.Event()
        self.chained: dict[str, tuple[float, int, int, int]] = {}  # mark -> (t, p, offset, seq)
        self.queryable: dict[str, float] = {}
        self.checkpointed: dict[str, float] = {}
        base = {
            "bootstrap.servers": bootstrap,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
        self.chain = Consumer({**base, "group.id": f"bench-{uuid.uuid4()}"})
        self.checkpoints = Consumer({**base, "group.id": f"bench-{uuid.uuid4()}"})
        self.sink_group = Consumer({**base, "group.id": settings.groups.sink})
        self.chain.assign([TopicPartition(settings.topics.chain, p, 0) for p in range(partitions)])
        self.checkpoints.assign(
            [TopicPartition(settings.topics.checkpoints, p, 0) for p in range(partitions)]
        )
        self.checkpoint_size = [0] * partitions

    def run(self) -> None:
        from schemas.codec import decode_chained

        pending_q: dict[str, tuple[int, int]] = {}
        pending_c: dict[str, tuple[int, int]] = {}
        last_poll = 0.0
        while not self.stop.is_set():
            for message in self.chain.consume(2000, timeout=0.05):
                if message.error():
                    continue
                value = message.value()
                at = value.find(MARK)
                if at < 0:
                    continue
                mark = value[at : at + len(MARK) + 8].decode()
                record = decode_chained(value)
                p = message.partition()
                self.chained[mark] = (time.monotonic(), p, message.offset(), record["seq"])
                pending_q[mark] = (p, message.offset())
                pending_c[mark] = (p, record["seq"])
            for message in self.checkpoints.consume(500, timeout=0.01):
                if message.error():
                    continue
                size = parse_checkpoint_note(message.value().decode()).checkpoint.size
                self.checkpoint_size[message.partition()] = max(
                    self.checkpoint_size[message.partition()], size
                )
            now = time.monotonic()
            for mark, (p, seq) in list(pending_c.items()):
                if self.checkpoint_size[p] > seq:
                    self.checkpointed[mark] = now
                    del pending_c[mark]
            if pending_q and now - last_poll >= 0.05:
                last_poll = now
                parts = [
                    TopicPartition(self.settings.topics.chain, p) for p in range(self.partitions)
                ]
                committed = {
                    tp.partition: tp.offset for tp in self.sink_group.committed(parts, timeout=5)
                }
                for mark, (p, offset) in list(pending_q.items()):
                    if committed.get(p, -1) > offset:
                        self.queryable[mark] = now
                        del pending_q[mark]
        for consumer in (self.chain, self.checkpoints, self.sink_group):
            consumer.close()


async def _post_all(
    url: str,
    tokens: list[str],
    batches: list[tuple[str, bytes]],
    clients: int,
    acked: dict[str, float],
) -> int:
    import aiohttp

    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in batches:
        queue.put_nowait(item)
    sent = 0

    async def client(number: int) -> None:
        nonlocal sent
        headers = {
            "Authorization": f"Bearer {tokens[number % len(tokens)]}",
            "Content-Type": "application/json",
        }
        async with aiohttp.ClientSession() as session:
            while not queue.empty():
                mark, body = queue.get_nowait()
                while True:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status == 200:
                            acked[mark] = time.monotonic()
                            sent += 1
                            break
                        if response.status in (429, 503):
                            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                            continue
                        raise RuntimeError(f"webhook answered {response.status}")

    await asyncio.gather(*(client(i) for i in range(clients)))
    return sent


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run(
    events: int = 20000,
    clients: int = 8,
    batch: int = 400,
    partitions: int = 3,
    bootstrap: str | None = None,
    settle_timeout: float = 300.0,
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sealtrail-e2e-"))
    batches = make_batches(events, batch)
    with bench_broker(bootstrap=bootstrap) as kafka:
        settings = fresh_settings(
            kafka, partitions=partitions, clickhouse=f"chdb://{work / 'clickhouse'}", home=work
        )
        private, _public = write_keypair("bench.sealtrail.local", work / "keys")
        clusters = [f"cluster-{i}" for i in range(max(partitions, 3))]
        tokens = {secrets.token_urlsafe(16): c for c in clusters}
        token_file = work / "tokens.txt"
        token_file.write_text("".join(f"{t} {c}\n" for t, c in tokens.items()))
        token_file.chmod(0o600)
        port, health = free_port(), free_port()
        command = [
            sys.executable,
            "-m",
            "sealtrail.cli",
            "run",
            "--listen",
            f"127.0.0.1:{port}",
            "--tokens",
            str(token_file),
            "--allow-plain-http-tokens",  # loopback load; TLS is not what this bench measures
            "--signing-key",
            str(private),
            "--health-listen",
            f"127.0.0.1:{health}",
        ]
        log = open(work / "run.log", "wb")  # noqa: SIM115
        run_process = subprocess.Popen(command, env=child_env(settings), stdout=log, stderr=log)
        watcher = Watcher(kafka, settings, partitions)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{health}/healthz",  # noqa: S310
                        timeout=1,
                    ) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or run_process.poll() is not None:
                    log.flush()
                    tail = (work / "run.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"sealtrail run did not come up; its log ends:\n{tail}")
                time.sleep(0.3)
            time.sleep(2)  # let the chainer and sink join their groups
            procs = [psutil.Process(run_process.pid), *psutil.Process(run_process.pid).children()]
            names = {p.pid: " ".join(p.cmdline()[3:5]) or "run" for p in procs}
            cpu_before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
            peak = {p.pid: 0 for p in procs}
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    for p in procs:
                        try:
                            peak[p.pid] = max(peak[p.pid], p.memory_info().rss)
                        except psutil.Error:
                            pass
                    sampling.wait(0.1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            watcher.start()
            acked: dict[str, float] = {}
            started = time.monotonic()
            asyncio.run(
                _post_all(f"http://127.0.0.1:{port}/", list(tokens), batches, clients, acked)
            )
            posted = time.monotonic()
            wait_until = time.monotonic() + settle_timeout
            while time.monotonic() < wait_until and (
                len(watcher.queryable) < len(batches) or len(watcher.checkpointed) < len(batches)
            ):
                time.sleep(0.05)
            finished = max(watcher.queryable.values(), default=time.monotonic())
            sampling.set()
            sampler.join()
            cpu = {
                pid: sum(p.cpu_times()[:2]) - cpu_before[pid]
                for p in procs
                for pid in [p.pid]
                if p.is_running()
            }
        finally:
            watcher.stop.set()
            run_process.send_signal(signal.SIGTERM)
            try:
                run_process.wait(60)
            except subprocess.TimeoutExpired:
                run_process.kill()
            log.close()
        to_query = [
            (watcher.queryable[m] - acked[m]) * 1000 for m in acked if m in watcher.queryable
        ]
        to_checkpoint = [
            (watcher.checkpointed[m] - acked[m]) * 1000 for m in acked if m in watcher.checkpointed
        ]
        elapsed = finished - started
        result = {
            "events": events,
            "batches": len(batches),
            "queryable_batches": len(watcher.queryable),
            "checkpointed_batches": len(watcher.checkpointed),
            "post_seconds": posted - started,
            "end_to_end_seconds": elapsed,
            "events_per_second": events / elapsed if elapsed > 0 else 0.0,
            "webhook_events_per_second": events / (posted - started),
            "queryable_p50_ms": _percentile(to_query, 50),
            "queryable_p99_ms": _percentile(to_query, 99),
            "checkpointed_p50_ms": _percentile(to_checkpoint, 50),
            "checkpointed_p99_ms": _percentile(to_checkpoint, 99),
            "processes": {
                names[pid]: {
                    "cpu_seconds": round(cpu.get(pid, 0.0), 2),
                    "peak_rss_mb": round(peak[pid] / 2**20, 1),
                }
                for pid in names
            },
            "complete": len(watcher.queryable) == len(batches),
        }
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=400)
    parser.add_argument("--partitions", type=int, default=3)
    args = parser.parse_args()
    result = run(args.events, args.clients, args.batch, args.partitions)
    print(json.dumps(result, indent=2))
    line = Result(
        "end to end: webhook -> rows queryable",
        result["events_per_second"],
        p50_ms=result["queryable_p50_ms"],
        p99_ms=result["queryable_p99_ms"],
    )
    print_table([line])
    write_json("e2e", [line], {"e2e": result})


if __name__ == "__main__":
    main()
