"""End to end beside a raw pipeline: events in until they are queryable rows (and checkpointed).

Three runs, one after the other on the same broker, with the same JSON event bytes and load shape
(``--clients`` concurrent batches of ``--batch`` events, one cluster per batch):

* raw pipeline (bench/raw_pipeline.py): a plain idempotent producer -> one topic -> one consumer
  inserting (cluster, time, body) rows into embedded ClickHouse, as two processes;
* end to end: ``sealtrail run`` (webhook + chainer + sink, each its own process, signed
  checkpoints) fed by concurrent clients POSTing EventLists (like the API server);
* end to end, paced: a fresh ``sealtrail run`` offered half the rate the saturated run reached,
  steadily: the latency users see at a load the pipeline carries (a saturated run's latency is
  mostly its own backlog).

The last event of every batch carries a marker auditID. A separate observer process
(bench/observer.py) finds the markers with a bytes search over the raw message values of the topic
the inserting consumer reads, then reads that consumer group's committed offsets (committed only
after ClickHouse acknowledged the rows: queryable) and, end to end, the checkpoint topic (covered
once a signed tree size passes the record's seq). Its own CPU is reported.

Reported per row: events/s from the first event sent to the last row queryable, p50/p99 latency
from acknowledgement (the webhook's 200; the producer's ack of the batch's last record) to
queryable and, end to end, to checkpointed; CPU seconds, CPU-us per event and peak RSS of each
process (CPU counted from when load starts; broker, observer and load generator apart).

python -m bench.bench_e2e --events 100000 [--clients 8] [--batch 400]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import resource
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from bench.common import (
    KEEP_HELP,
    Metered,
    Result,
    bench_broker,
    free_port,
    fresh_settings,
    listening_pid,
    percentile,
    print_table,
    run_directory,
    spawn,
    wait_until,
    write_json,
)
from bench.observer import mark_name
from processors.integrity.keys import write_keypair
from sealtrail.infra.samples import K8S_AUDIT_SAMPLES
from sealtrail.supervisor import child_env

SAMPLES = K8S_AUDIT_SAMPLES
STAGES = ("webhook", "chainer", "sink")  # the processes whose CPU counts as sealtrail's
PACED_FRACTION = 0.5  # the paced run offers this share of the saturated end-to-end rate


class Batch(NamedTuple):
    """One EventList as a client POSTs it; ``items`` are its events' exact JSON bytes."""

    mark: str
    body: bytes
    items: list[bytes]


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


def make_batches(events: int, batch: int) -> list[Batch]:
    """EventList bodies of ``batch`` events; each batch's last event has the marker as auditID."""
    templates = _templates()
    batches = []
    made = 0
    number = 0
    while made < events:
        size = min(batch, events - made)
        mark = mark_name(number)
        items = []
        for i in range(size):
            event = dict(templates[(made + i) % len(templates)])
            event["auditID"] = mark if i == size - 1 else str(uuid.uuid4())
            items.append(json.dumps(event, separators=(",", ":")).encode())
        body = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[' + b",".join(items)
        batches.append(Batch(mark, body + b"]}", items))
        made += size
        number += 1
    return batches


async def _post_all(
    url: str,
    tokens: list[str],
    batches: list[Batch],
    clients: int,
    acked: dict[str, float],
    timeout: float,
    pace: float | None = None,
) -> int:
    """POST every batch (retrying 429/503 as the API server would) within ``timeout`` seconds;
    with ``pace`` (events/s), no batch before its turn at that rate."""
    import aiohttp

    deadline = time.monotonic() + timeout

    queue: asyncio.Queue[tuple[float, Batch]] = asyncio.Queue()
    due, start = 0.0, time.monotonic()
    for item in batches:
        queue.put_nowait((start + due, item))
        due += len(item.items) / pace if pace else 0.0
    sent = 0

    async def client(number: int) -> None:
        nonlocal sent
        headers = {
            "Authorization": f"Bearer {tokens[number % len(tokens)]}",
            "Content-Type": "application/json",
        }
        async with aiohttp.ClientSession() as session:
            while not queue.empty():
                turn, item = queue.get_nowait()
                wait = turn - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                while True:
                    async with session.post(url, data=item.body, headers=headers) as response:
                        await response.read()
                        if response.status == 200:
                            acked[item.mark] = time.monotonic()
                            sent += 1
                            break
                        if response.status in (429, 503):
                            if time.monotonic() > deadline:
                                raise RuntimeError(
                                    f"the webhook still answered {response.status} after "
                                    f"{timeout:.0f} s (is the broker up? see run.log)"
                                )
                            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                            continue
                        raise RuntimeError(f"webhook answered {response.status}")

    await asyncio.gather(*(client(i) for i in range(clients)))
    return sent


def _latency(acked: dict[str, float], marks: dict[str, Any], state: str) -> dict[str, Any]:
    """p50/p99 ms from each batch's acknowledgement to its marker reaching ``state``."""
    ms = [
        (marks[m][state] - at) * 1000
        for m, at in acked.items()
        if m in marks and marks[m][state] is not None
    ]
    return {f"{state}_p50_ms": percentile(ms, 50), f"{state}_p99_ms": percentile(ms, 99)}


def _groups_stable(kafka: str, groups: list[str]) -> Callable[[], bool]:
    """A check that every group has members and has finished its rebalance."""
    from confluent_kafka import ConsumerGroupState, KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": kafka})

    def stable() -> bool:
        try:
            futures = admin.describe_consumer_groups(groups, request_timeout=5)
            described = [future.result() for future in futures.values()]
        except KafkaException:
            return False
        return all(g.state == ConsumerGroupState.STABLE and g.members for g in described)

    return stable


def _stop(process: Any, timeout: float = 60) -> None:
    if process.poll() is None:
        if process.stdin is not None:
            process.stdin.close()
        else:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class Observed(NamedTuple):
    process: Any
    out: Path


def _start_observer(
    kafka: str,
    topic: str,
    group: str,
    partitions: int,
    markers: int,
    work: Path,
    checkpoints: str,
    timeout: float,
) -> Observed:
    out, ready = work / "observer.json", work / "observer.ready"
    command = [
        sys.executable,
        "-m",
        "bench.observer",
        "--bootstrap",
        kafka,
        "--topic",
        topic,
        "--group",
        group,
        "--partitions",
        str(partitions),
        "--markers",
        str(markers),
        "--timeout",
        str(timeout),
        "--ready",
        str(ready),
        "--out",
        str(out),
    ]
    if checkpoints:
        command += ["--checkpoints", checkpoints]
    process = spawn(command, work / "observer.log")
    wait_until("observer", ready.exists, {"observer": process}, work)
    return Observed(process, out)


def _observed(observed: Observed, timeout: float) -> dict[str, Any]:
    try:
        observed.process.wait(timeout + 30)  # it stops at its own --timeout
    except subprocess.TimeoutExpired:
        _stop(observed.process)
    if not observed.out.exists():
        raise RuntimeError(f"the observer wrote nothing (exit {observed.process.returncode})")
    result: dict[str, Any] = json.loads(observed.out.read_text())
    return result


def _rate(events: int, started: float, marks: dict[str, Any]) -> tuple[float, float]:
    finished = max((m["queryable"] for m in marks.values() if m["queryable"]), default=started)
    seconds = finished - started
    return (events / seconds if seconds > 0 else 0.0), seconds


def _observer_report(observer: dict[str, Any], events: int) -> dict[str, Any]:
    return {
        "cpu_seconds": round(observer["cpu_seconds"], 3),
        "cpu_us_per_event": round(observer["cpu_seconds"] * 1e6 / events, 2),
        "python_thread_cpu_seconds": round(observer["python_thread_cpu_seconds"], 3),
        "records_scanned": observer["records_scanned"],
        "python_scan_seconds": round(observer["python_scan_seconds"], 3),
        "python_follow_seconds": round(observer["python_follow_seconds"], 3),
        "follows": observer["follows"],
    }


def run_raw(
    kafka: str,
    batches: list[Batch],
    partitions: int,
    clients: int,
    clusters: int,
    settle_timeout: float,
) -> dict[str, Any]:
    """The raw pipeline row: producer process -> one topic -> consumer process -> chdb."""
    work = Path(tempfile.mkdtemp(prefix="sealtrail-raw-"))
    events = sum(len(b.items) for b in batches)
    settings = fresh_settings(kafka, partitions=partitions)
    topic, group = settings.topics.raw, f"{settings.topic_prefix}raw-consumer"
    (work / "events.jsonl").write_bytes(b"\n".join(i for b in batches for i in b.items))
    role = [sys.executable, "-m", "bench.raw_pipeline"]
    common = ["--bootstrap", kafka, "--topic", topic]
    consumer = spawn(
        [*role, "consume", *common, "--ready", str(work / "consumer.ready")]
        + ["--out", str(work / "consumer.json"), "--group", group]
        + ["--partitions", str(partitions), "--chdb", str(work / "clickhouse")],
        work / "consumer.log",
        stdin=subprocess.PIPE,
    )
    producer = None
    observed = None
    try:
        wait_until("raw consumer", (work / "consumer.ready").exists, {"consumer": consumer}, work)
        observed = _start_observer(
            kafka, topic, group, partitions, len(batches), work, "", settle_timeout
        )
        producer = spawn(
            [*role, "produce", *common, "--ready", str(work / "producer.ready")]
            + ["--out", str(work / "producer.json"), "--events", str(work / "events.jsonl")]
            + ["--batch", str(len(batches[0].items)), "--inflight", str(clients)]
            + ["--clusters", str(clusters), "--warmup-topic", settings.topics.rejects],
            work / "producer.log",
            stdin=subprocess.PIPE,
        )
        procs = {"consumer": consumer, "producer": producer}
        wait_until("raw producer", (work / "producer.ready").exists, procs, work)
        meters = {name: Metered(f"raw {name}", p.pid) for name, p in procs.items()}
        for meter in meters.values():
            meter.start()
        assert producer.stdin is not None
        producer.stdin.write(b"go\n")
        producer.stdin.flush()
        observer = _observed(observed, settle_timeout)
        wait_until("raw producer's report", (work / "producer.json").exists, procs, work)
        processes = {name: m.report(events) for name, m in meters.items()}
    finally:
        for process in (producer, consumer, observed.process if observed else None):
            if process is not None:
                _stop(process)
    sent = json.loads((work / "producer.json").read_text())
    marks = observer["marks"]
    rate, seconds = _rate(events, sent["started"], marks)
    return {
        "events": events,
        "events_per_second": rate,
        "seconds": seconds,
        "producer_events_per_second": events / (sent["finished"] - sent["started"]),
        "producer_errors": sent["errors"],
        **_latency(sent["acked"], marks, "queryable"),
        "cpu_us_per_event": round(sum(p["cpu_us_per_event"] for p in processes.values()), 1),
        "processes": processes,
        "observer": _observer_report(observer, events),
        "queryable_batches": sum(1 for m in marks.values() if m["queryable"]),
        "complete": observer["complete"],
    }


def _stage(process: psutil.Process) -> str:
    """webhook / chainer / sink from a ``python -m sealtrail ... COMMAND`` child's cmdline."""
    args = process.cmdline()
    for token, name in (("webhook", "webhook"), ("chain", "chainer"), ("sink", "sink")):
        if token in args:
            return name
    return f"sealtrail {' '.join(args[3:5])}"


@dataclass(frozen=True, slots=True)
class MemorySample:
    """Each process's resident and anonymous MB once ``events`` events were acknowledged."""

    events: float
    rss_mb: dict[str, float]
    anon_mb: dict[str, float]

    @classmethod
    def of(cls, events: float, meters: dict[str, Metered]) -> MemorySample:
        return cls(
            round(events),
            {n: m.rss_mb() for n, m in meters.items()},
            {n: m.anon_mb() for n, m in meters.items()},
        )


def window_median(
    samples: list[MemorySample], name: str, field: str, lo: float, hi: float
) -> float:
    """The median of ``name``'s ``field`` (rss_mb or anon_mb) over the samples taken with
    ``lo`` <= events acknowledged < ``hi``; the sample nearest to the window if none fell in it
    (a short run); 0 without samples."""
    inside = [getattr(s, field).get(name, 0.0) for s in samples if lo <= s.events < hi]
    if not inside and samples:
        nearest = min(samples, key=lambda s: min(abs(s.events - lo), abs(s.events - hi)))
        inside = [getattr(nearest, field).get(name, 0.0)]
    return round(statistics.median(inside), 1) if inside else 0.0


def run_e2e(
    kafka: str,
    batches: list[Batch],
    partitions: int,
    clients: int,
    clusters: int,
    settle_timeout: float,
    pace: float | None = None,
    rss_after: int | None = None,
) -> dict[str, Any]:
    """The end-to-end row: clients -> ``sealtrail run`` (webhook, chainer, sink) -> chdb; with
    ``pace``, offered at that many events/s instead of as fast as it takes them. With
    ``rss_after``, each process's resident memory is also sampled every 0.5 s, and its medians
    over the ``rss_after``..2 x ``rss_after``th events acknowledged and over the last
    ``rss_after`` reported (memory must stay flat as the stream grows)."""
    work = Path(tempfile.mkdtemp(prefix="sealtrail-e2e-"))
    events = sum(len(b.items) for b in batches)
    settings = fresh_settings(
        kafka, partitions=partitions, clickhouse=f"chdb://{work / 'clickhouse'}", home=work
    )
    private, _public = write_keypair("bench.sealtrail.local", work / "keys")
    tokens = {secrets.token_urlsafe(16): f"cluster-{i}" for i in range(clusters)}
    token_file = work / "tokens.txt"
    token_file.write_text("".join(f"{t} {c}\n" for t, c in tokens.items()))
    token_file.chmod(0o600)
    port, health = free_port(), free_port()
    command = [
        *(sys.executable, "-m", "sealtrail.cli", "run", "--listen", f"127.0.0.1:{port}"),
        *("--tokens", str(token_file)),
        "--allow-plain-http-tokens",  # loopback load; TLS is not what this bench measures
        *("--signing-key", str(private), "--health-listen", f"127.0.0.1:{health}"),
    ]
    run_process = spawn(command, work / "run.log", env=child_env(settings))
    observed = None
    try:

        def healthy() -> bool:
            try:
                url = f"http://127.0.0.1:{health}/healthz"
                with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until("sealtrail run", healthy, {"sealtrail run": run_process}, work)
        groups = [settings.groups.chainer, settings.groups.sink]
        wait_until(
            "chainer and sink groups", _groups_stable(kafka, groups), {"run": run_process}, work
        )
        observed = _start_observer(
            kafka,
            settings.topics.chain,
            settings.groups.sink,
            partitions,
            len(batches),
            work,
            settings.topics.checkpoints,
            settle_timeout,
        )
        children = psutil.Process(run_process.pid).children(recursive=True)
        meters = {_stage(p): Metered(_stage(p), p.pid) for p in children}
        meters["sealtrail run (supervisor)"] = Metered("supervisor", run_process.pid)
        for meter in meters.values():
            meter.start()
        acked: dict[str, float] = {}
        clickhouse_early: dict[str, float] = {}
        clickhouse_end: dict[str, float] = {}
        memory_samples: dict[str, int] = {}
        memory_series: list[dict[str, Any]] = []
        sampled = threading.Event()
        samples: list[MemorySample] = []
        if rss_after is not None:
            per_batch = events / len(batches)

            def sample_memory() -> None:
                # Every 0.5 s, not once: a sink's RSS swings by a hundred MB with its merges, so
                # one reading at each point measured the merge it fell on, not the trend.
                while not sampled.wait(0.5):
                    done = len(acked) * per_batch
                    samples.append(MemorySample.of(done, meters))
                    if not clickhouse_early and done >= rss_after:
                        clickhouse_early.update(clickhouse_memory(settings))

            sampler = threading.Thread(target=sample_memory, daemon=True)
            sampler.start()
        load_cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        url = f"http://127.0.0.1:{port}/"
        asyncio.run(_post_all(url, list(tokens), batches, clients, acked, settle_timeout, pace))
        sampled.set()
        posted = time.monotonic()
        after = resource.getrusage(resource.RUSAGE_SELF)
        load_cpu_s = after.ru_utime + after.ru_stime - load_cpu.ru_utime - load_cpu.ru_stime
        observer = _observed(observed, settle_timeout)
        processes = {name: m.report(events) for name, m in meters.items()}
        if rss_after is not None:
            sampler.join()
            samples.append(MemorySample.of(events, meters))
            early_window = (rss_after, 2 * rss_after)
            end_window = (events - rss_after, events + 1)
            for name in meters:
                for key, field in (("rss", "rss_mb"), ("anon", "anon_mb")):
                    processes[name][f"{key}_mb_early"] = window_median(
                        samples, name, field, *early_window
                    )
                    processes[name][f"{key}_mb_end"] = window_median(
                        samples, name, field, *end_window
                    )
            memory_series = [dataclasses.asdict(s) for s in samples]
            memory_samples = {
                "early": sum(early_window[0] <= s.events < early_window[1] for s in samples),
                "end": sum(end_window[0] <= s.events < end_window[1] for s in samples),
            }
            clickhouse_end = clickhouse_memory(settings)
    finally:
        if observed is not None:
            _stop(observed.process)
        _stop(run_process)
    marks = observer["marks"]
    rate, seconds = _rate(events, started, marks)
    return {
        "events": events,
        "batches": len(batches),
        "queryable_batches": sum(1 for m in marks.values() if m["queryable"]),
        "checkpointed_batches": sum(1 for m in marks.values() if m["checkpointed"]),
        "post_seconds": posted - started,
        "end_to_end_seconds": seconds,
        "events_per_second": rate,
        "webhook_events_per_second": events / (posted - started),
        **_latency(acked, marks, "queryable"),
        **_latency(acked, marks, "checkpointed"),
        "cpu_us_per_event": round(
            sum(p["cpu_us_per_event"] for n, p in processes.items() if n in STAGES), 1
        ),
        "processes": processes,
        "sink_clickhouse_memory": {"early": clickhouse_early, "end": clickhouse_end},
        "memory_samples": memory_samples,
        "memory_series": memory_series,  # every 0.5 s: is a rise a trend or a merge?
        "observer": _observer_report(observer, events),
        "load_generator": {
            "cpu_seconds": round(load_cpu_s, 3),
            "cpu_us_per_event": round(load_cpu_s * 1e6 / events, 1),
        },
        "complete": observer["complete"],
    }


def run(
    events: int = 20000,
    clients: int = 8,
    batch: int = 400,
    partitions: int = 3,
    bootstrap: str | None = None,
    settle_timeout: float = 300.0,
) -> dict[str, Any]:
    """Both rows on one broker: raw pipeline first, then end to end; end-to-end keys at the top."""
    batches = make_batches(events, batch)
    clusters = max(partitions, 3)
    with bench_broker(bootstrap=bootstrap) as kafka:
        broker_pid = listening_pid(kafka)
        broker = Metered("broker", broker_pid) if broker_pid else None
        if broker:
            broker.start()
        raw = run_raw(kafka, batches, partitions, clients, clusters, settle_timeout)
        if broker:
            raw["broker"] = broker.report(events)
            broker.start()
        result = run_e2e(kafka, batches, partitions, clients, clusters, settle_timeout)
        if broker:
            result["broker"] = broker.report(events)
        # Latency as users see it: the same pipeline offered a steady load it can carry (a
        # saturated run measures its backlog instead).
        pace = PACED_FRACTION * result["events_per_second"]
        paced = run_e2e(kafka, batches, partitions, clients, clusters, settle_timeout, pace)
        paced["offered_events_per_second"] = pace
    result["paced"] = paced
    result["raw_pipeline"] = raw
    result["ratio_vs_raw"] = (
        result["events_per_second"] / raw["events_per_second"] if raw["events_per_second"] else None
    )
    result["webhook_vs_raw_producer"] = (
        result["webhook_events_per_second"] / raw["producer_events_per_second"]
    )
    result["complete"] = result["complete"] and raw["complete"] and paced["complete"]
    return result


_CLICKHOUSE_MEMORY_SQL = (
    "SELECT (SELECT value FROM system.metrics WHERE metric = 'MemoryTracking') AS tracked, "
    "(SELECT count() FROM system.parts WHERE active) AS parts, "
    "(SELECT sum(primary_key_bytes_in_memory_allocated) FROM system.parts WHERE active) AS pk, "
    "(SELECT sum(rows) FROM system.parts WHERE active AND table = 'events') AS event_rows"
)


def clickhouse_memory(settings: Any) -> dict[str, float]:
    """What the sink's embedded ClickHouse holds in memory (MB tracked by ClickHouse itself,
    active parts, primary-key bytes), asked once through the sink's read-only socket with
    ``sealtrail query`` (a second process: a one-off cost, not a watcher). Empty if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "sealtrail.cli", "query", "--format", "json",
         _CLICKHOUSE_MEMORY_SQL],
        env=child_env(settings), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    try:
        row = json.loads(done.stdout)[0]
        return {
            "tracked_mb": round(float(row["tracked"]) / 2**20, 1),
            "active_parts": float(row["parts"]),
            "primary_key_mb": round(float(row["pk"] or 0) / 2**20, 2),
            "event_rows": float(row["event_rows"] or 0),
        }
    except (ValueError, KeyError, IndexError, TypeError):
        return {}


def run_memory(
    events: int,
    early: int,
    pace: float,
    clients: int = 8,
    batch: int = 400,
    partitions: int = 3,
    bootstrap: str | None = None,
    settle_timeout: float = 600.0,
) -> dict[str, Any]:
    """Memory as the stream grows: ``sealtrail run`` offered ``pace`` events/s for ``events``
    events; each process's median RSS over the ``early``..2 x ``early``th events and over the
    last ``early`` events (sampled every 0.5 s)."""
    batches = make_batches(events, batch)
    with bench_broker(bootstrap=bootstrap) as kafka:
        out = run_e2e(
            kafka,
            batches,
            partitions,
            clients,
            max(partitions, 3),
            settle_timeout,
            pace,
            rss_after=early,
        )
    out["early_events"] = early
    out["offered_events_per_second"] = pace
    return out


def memory_lines(out: dict[str, Any]) -> list[Result]:
    """One row per stage: median RSS over the last ``early_events`` over the median over the
    ``early_events``..2 x ``early_events``th events (goal: within 10%)."""
    lines = []
    for name in STAGES:
        p = out["processes"].get(name)
        if not p or not p.get("rss_mb_early"):
            continue
        lines.append(
            Result(
                f"RSS {name}: {out['events']:,} vs {out['early_events']:,} events (medians)",
                p["rss_mb_end"],
                "MB",
                f"median RSS over events {out['early_events']:,}-{2 * out['early_events']:,}",
                p["rss_mb_early"],
                peak_rss_mb=p["peak_rss_mb"],
            )
        )
        if p.get("anon_mb_early"):
            lines.append(
                Result(
                    f"  of it anonymous (no library pages): {name}",
                    p["anon_mb_end"],
                    "MB",
                    f"after {out['early_events']:,}",
                    p["anon_mb_early"],
                )
            )
    ch = out.get("sink_clickhouse_memory") or {}
    early, end = ch.get("early") or {}, ch.get("end") or {}
    if early.get("tracked_mb") and end.get("tracked_mb"):
        lines.append(
            Result(
                f"ClickHouse-tracked memory in the sink ({end.get('active_parts', 0):.0f} vs "
                f"{early.get('active_parts', 0):.0f} active parts)",
                end["tracked_mb"],
                "MB",
                f"after {out['early_events']:,}",
                early["tracked_mb"],
            )
        )
    return lines


def memory_by_fifth(out: dict[str, Any]) -> str:
    """Each process's median (min-max) RSS and median anonymous MB over each fifth of a memory
    run's events, from its 0.5 s samples: a trend shows as rising medians, a merge as a max."""
    series = out.get("memory_series") or []
    events = out["events"]
    lines = [f"median RSS MB (min-max) and median anonymous MB by fifth of {events:,} events"]
    names = [n for n in STAGES if any(n in s["rss_mb"] for s in series)]
    for k in range(5):
        lo, hi = events * k / 5, events * (k + 1) / 5 + (1 if k == 4 else 0)
        window = [s for s in series if lo <= s["events"] < hi]
        if not window:
            continue
        cells = []
        for name in names:
            rss = [s["rss_mb"].get(name, 0.0) for s in window]
            anon = [s["anon_mb"].get(name, 0.0) for s in window]
            cells.append(
                f"{name} {statistics.median(rss):.0f} ({min(rss):.0f}-{max(rss):.0f}) "
                f"anon {statistics.median(anon):.0f}"
            )
        lines.append(
            f"  {lo:>12,.0f}-{min(hi, events):,.0f} ({len(window)} samples): " + "; ".join(cells)
        )
    return "\n".join(lines)


def result_lines(out: dict[str, Any]) -> list[Result]:
    """The table rows: raw pipeline, then end to end against it (queryable, checkpointed)."""
    raw = out["raw_pipeline"]
    return [
        Result(
            "raw pipeline: producer -> topic -> chdb",
            raw["events_per_second"],
            p50_ms=raw["queryable_p50_ms"],
            p99_ms=raw["queryable_p99_ms"],
            cpu_us_per_event=raw["cpu_us_per_event"],
            peak_rss_mb=max(p["peak_rss_mb"] for p in raw["processes"].values()),
        ),
        Result(
            "end to end: webhook 200 -> row queryable",
            out["events_per_second"],
            baseline="raw pipeline",
            baseline_rate=raw["events_per_second"],
            p50_ms=out["queryable_p50_ms"],
            p99_ms=out["queryable_p99_ms"],
            cpu_us_per_event=out["cpu_us_per_event"],
            peak_rss_mb=max(p["peak_rss_mb"] for p in out["processes"].values()),
            extra=out,
        ),
        Result(
            "end to end: webhook 200 -> signed checkpoint",
            out["events_per_second"],
            p50_ms=out["checkpointed_p50_ms"],
            p99_ms=out["checkpointed_p99_ms"],
        ),
        *_paced_lines(out.get("paced")),
    ]


def _paced_lines(paced: dict[str, Any] | None) -> list[Result]:
    if paced is None:
        return []
    offered = paced["offered_events_per_second"]
    return [
        Result(
            f"paced at {offered:,.0f} ev/s: 200 -> queryable",
            paced["events_per_second"],
            p50_ms=paced["queryable_p50_ms"],
            p99_ms=paced["queryable_p99_ms"],
            cpu_us_per_event=paced["cpu_us_per_event"],
            peak_rss_mb=max(p["peak_rss_mb"] for p in paced["processes"].values()),
        ),
        Result(
            f"paced at {offered:,.0f} ev/s: 200 -> checkpoint",
            paced["events_per_second"],
            p50_ms=paced["checkpointed_p50_ms"],
            p99_ms=paced["checkpointed_p99_ms"],
        ),
    ]


def print_processes(out: dict[str, Any]) -> None:
    """CPU-us per event and peak RSS of every process, and what the measuring cost."""
    rows: list[tuple[str, dict[str, Any]]] = [
        *((f"end to end: {n}", p) for n, p in out["processes"].items()),
        *((f"raw pipeline: {n}", p) for n, p in out["raw_pipeline"]["processes"].items()),
    ]
    for label, source in (("end to end", out), ("raw pipeline", out["raw_pipeline"])):
        if "broker" in source:
            rows.append((f"{label}: broker (not counted)", source["broker"]))
        rows.append((f"{label}: observer (not counted)", source["observer"]))
    rows.append(("end to end: load generator (not counted)", out["load_generator"]))
    print(f"{'process':<46} {'CPU s':>8} {'CPU us/event':>13} {'peak RSS MB':>11}")
    for label, p in rows:
        rss = p.get("peak_rss_mb")
        print(
            f"{label:<46} {p['cpu_seconds']:>8.2f} {p['cpu_us_per_event']:>13.1f} "
            f"{format(rss, '.0f') if rss is not None else '-':>11}"
        )


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop our children on the way out
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=400)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--memory-pace",
        type=float,
        default=None,
        metavar="EVENTS_PER_S",
        help="instead: memory as the stream grows, --events offered at this rate (RSS every "
        "0.5 s; medians per fifth of the run)",
    )
    parser.add_argument("--keep", action="store_true", help=KEEP_HELP)
    args = parser.parse_args()
    if args.memory_pace is not None and not (args.memory_pace > 0 and args.events >= 10):
        parser.error(
            "--memory-pace needs a rate above 0 events/s and --events of at least 10 (its "
            "windows are the second and the last tenth of the events); e.g. --events 3000000 "
            "--memory-pace 12000"
        )
    if args.memory_pace is not None:
        with run_directory(args.keep):
            out = run_memory(
                args.events, args.events // 10, args.memory_pace, args.clients, args.batch,
                args.partitions,
            )  # fmt: skip
        print_table(memory_lines(out))
        print()
        print(memory_by_fifth(out))
        write_json("memory", memory_lines(out), {"memory": out})
        return
    with run_directory(args.keep):
        result = run(args.events, args.clients, args.batch, args.partitions)
    lines = result_lines(result)
    print_table(lines)
    print()
    print_processes(result)
    write_json("e2e", lines, {"e2e": result})


if __name__ == "__main__":
    main()
