"""Helpers for the fault tests (no tests here): real ``sealtrail`` processes, a webhook load
driver that remembers which batches were acknowledged, and an end-of-run audit that counts the
raw topic, the chain topic and ClickHouse and runs the verifier. See docs/RELIABILITY.md.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from producers.load import event_list, generate
from schemas.codec import decode_audit_event, decode_chained
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable
from sealtrail.infra.kafka_read import read_range, reader
from sealtrail.infra.topics import partition_count
from sealtrail.supervisor import child_env
from tests.conftest import free_port_base

LONG = os.environ.get("SEALTRAIL_FAULTS") == "long"
RESULTS_ENV = "SEALTRAIL_FAULTS_RESULTS"
CLUSTERS = ("east", "west", "north")
MIN_AGE_S = 8.0


def free_port() -> int:
    return free_port_base(1)


# ----------------------------------------------------------------------------- processes


class Proc:
    """One ``python -m sealtrail.cli ARGS`` child with the settings in its environment.

    With ``keep_alive`` a watcher restarts it when it exits on its own (as ``sealtrail run``
    does), so a test can stop brokers or ClickHouse without hand-holding the processes.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        settings: Settings,
        log_dir: Path,
        keep_alive: bool = True,
        restart_delay: float = 1.0,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = child_env(settings)
        self.log_path = log_dir / f"{name}.log"
        self.keep_alive = keep_alive
        self.restart_delay = restart_delay
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.kills = 0
        self.unexpected_exits: list[int] = []
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._watching = False
        self._watcher: threading.Thread | None = None

    def start(self) -> Proc:
        with self._lock:
            self._spawn()
        if self.keep_alive and self._watcher is None:
            self._watching = True
            self._watcher = threading.Thread(target=self._watch, daemon=True)
            self._watcher.start()
        return self

    def _spawn(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed on the next spawn/stop
        self._log.write(f"\n=== start {' '.join(self.args)} at {time.time():.1f}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sealtrail", *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.spawned_at = time.monotonic()

    def _watch(self) -> None:
        while self._watching:
            time.sleep(0.2)
            with self._lock:
                process = self.process
                if not self._watching or process is None or process.poll() is None:
                    continue
                self.unexpected_exits.append(int(process.returncode))
            time.sleep(self.restart_delay)
            with self._lock:
                if self._watching and self.process is process:
                    self._spawn()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL now; the watcher (or the caller) starts it again."""
        with self._lock:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait(10)
                self.kills += 1
                # Not an unexpected exit: restart here, at once, like a supervisor would.
                self._spawn()

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (drain) and wait; SIGKILL after ``timeout``. Returns the exit code."""
        self._watching = False
        if self._watcher is not None:
            self._watcher.join(5)
            self._watcher = None
        with self._lock:
            process = self.process
            if process is None:
                return None
            if process.poll() is None:
                # A just-restarted child installs its SIGTERM handler after its imports; before
                # that SIGTERM kills it outright (harmless, but not the drain under test).
                time.sleep(max(0.0, self.spawned_at + MIN_AGE_S - time.monotonic()))
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    # Stuck: have it print its threads' stacks into its log, then kill it.
                    process.send_signal(signal.SIGUSR1)
                    time.sleep(1.0)
                    process.kill()
                    process.wait(10)
            if self._log is not None:
                self._log.close()
            return process.returncode

    def rss(self) -> int:
        """Resident memory of the process in bytes (0 if it is not running)."""
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except (psutil.NoSuchProcess, AssertionError):
            return 0

    def log_text(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


def run_cli(
    settings: Settings, *args: str, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sealtrail", *args],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def http_status(url: str, timeout: float = 2.0) -> int:
    host, _, rest = url.removeprefix("http://").partition("/")
    name, _, port = host.partition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=timeout)
    try:
        conn.request("GET", "/" + rest)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


@dataclass
class Pipeline:
    """Webhook, chainer and sink of one deployment as separate real processes."""

    settings: Settings  # clickhouse points at this pipeline's own chdb path
    work: Path
    port: int = field(default_factory=free_port)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> cluster
    procs: dict[str, Proc] = field(default_factory=dict)
    finished_by_once: bool = False
    drain_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from processors.integrity.keys import write_keypair

        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.key, self.pub = write_keypair("faults", self.work / "keys")
        self.tokens = {f"tok-{c}-{random.getrandbits(48):012x}": c for c in CLUSTERS}
        self.token_file = self.work / "tokens"
        self.token_file.write_text("".join(f"{t} {c}\n" for t, c in self.tokens.items()))
        self.token_file.chmod(0o600)
        # Not prefixed by default in the product: keep this deployment's sink group its own.
        self.sink_group = f"{self.settings.topic_prefix}sink"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def webhook(self, *extra: str, keep_alive: bool = True) -> Proc:
        proc = Proc(
            "webhook",
            ["produce", "webhook", "--listen", f"127.0.0.1:{self.port}",
             "--tokens", str(self.token_file), "--allow-plain-http-tokens", *extra],
            self.settings, self.logs, keep_alive,
        )  # fmt: skip
        self.procs["webhook"] = proc.start()
        assert wait_for(lambda: http_status(self.url + "healthz") == 200, 60), (
            f"the webhook did not become healthy: {proc.log_text()}"
        )
        return proc

    def chainer(self, *extra: str, keep_alive: bool = True) -> Proc:
        proc = Proc(
            "chainer",
            ["chain", "--signing-key", str(self.key), "--checkpoint-records", "500", *extra],
            self.settings, self.logs, keep_alive,
        )  # fmt: skip
        self.procs["chainer"] = proc.start()
        return proc

    def sink(self, *extra: str, keep_alive: bool = True) -> Proc:
        proc = Proc(
            "sink", ["sink", "--group", self.sink_group, "--batch-ms", "300", *extra],
            self.settings, self.logs, keep_alive,
        )  # fmt: skip
        self.procs["sink"] = proc.start()
        return proc

    def stop_all(self) -> dict[str, int | None]:
        return {name: proc.stop() for name, proc in self.procs.items()}

    def caught_up(self) -> bool:
        """True once the live chainer and sink committed everything the topics hold."""
        from processors.chainer import group_id

        s = self.settings
        return _committed_all(s, group_id(s), [s.topics.raw]) and _committed_all(
            s, self.sink_group, [s.topics.chain, s.topics.checkpoints]
        )

    def finish(self, timeout: float = 180.0, catch_up_s: float = 30.0) -> list[str]:
        """Let the live processes catch up, stop them (they must drain and exit 0), then let
        ``--once`` runs do whatever they had not done. Returns what the ``--once`` runs did."""
        caught_up = wait_for(self.caught_up, catch_up_s, step=1.0)
        codes = self.stop_all()
        for name, code in codes.items():
            text = self.procs[name].log_text(1_000_000)
            assert "Traceback" not in text, f"{name} crashed with a traceback: {text[-4000:]}"
            if code == 2:
                # A failure (e.g. Kafka timing out right after a broker restart) reported in one
                # line while draining: under ``sealtrail run`` it would be restarted. Note it.
                said = [line for line in text.splitlines() if line.startswith("error:")]
                self.drain_errors.append(f"{name} exited 2 while stopping: {said[-1:]}")
                caught_up = False
                continue
            assert code in (0, None), f"{name} did not drain cleanly (exit {code}): {text[-4000:]}"
        self.finished_by_once = not caught_up
        if caught_up:
            return []
        chained = run_cli(self.settings, "chain", "--once", "--signing-key", str(self.key),
                          "--checkpoint-records", "500", timeout=timeout)  # fmt: skip
        assert chained.returncode == 0, chained.stderr[-3000:]
        stored = run_cli(self.settings, "sink", "--once", "--group", self.sink_group,
                         timeout=timeout)  # fmt: skip
        assert stored.returncode == 0, stored.stderr[-3000:]
        return [chained.stdout.strip(), stored.stderr.strip()[-300:]]


def _committed_all(settings: Settings, group: str, topics: Sequence[str]) -> bool:
    """Whether ``group`` committed past the last committed record of every partition."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from sealtrail.infra.kafka import consumer_conf
    from sealtrail.infra.kafka_read import read_tail

    probe = Consumer(consumer_conf(settings, group))
    tail = reader(settings)
    try:
        for topic in topics:
            partitions = [TopicPartition(topic, p)
                          for p in range(partition_count(settings, topic))]  # fmt: skip
            committed = {tp.partition: tp.offset for tp in probe.committed(partitions, timeout=10)}
            for tp in partitions:
                last = read_tail(tail, topic, tp.partition, 1)
                if last and committed.get(tp.partition, -1) < int(last[0].offset() or 0) + 1:
                    return False
        return True
    except (KafkaException, KafkaUnavailable):
        return False  # a broker still settling: ask again on the next round
    finally:
        probe.close()
        tail.close()


# ----------------------------------------------------------------------------- load driver


@dataclass
class Batch:
    index: int
    token: str
    body: bytes
    ids: list[str]
    acked: bool = False
    attempts: int = 0
    statuses: list[int] = field(default_factory=list)  # 0 = connection error


@dataclass
class DriverStats:
    batches: int = 0
    events_sent: int = 0
    events_acked: int = 0
    attempts: int = 0
    status_503: int = 0
    retry_after_503: int = 0
    connection_errors: int = 0
    other_status: Counter[int] = field(default_factory=Counter)


class LoadDriver:
    """POSTs EventList batches to the webhook from worker threads, at a paced rate.

    A batch that got anything but 200 (or no answer at all) is sent again until it gets a 200 or
    ``give_up_s`` passes; the driver remembers which batches were acknowledged.
    """

    def __init__(
        self,
        url: str,
        tokens: Sequence[str],
        batch_size: int = 50,
        workers: int = 4,
        seed: int = 7,
        max_retry_sleep: float = 0.5,
        give_up_s: float = 180.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.url = url
        host, _, _ = url.removeprefix("http://").partition("/")
        name, _, port = host.partition(":")
        self.host, self.port = name, int(port)
        self.tokens = list(tokens)
        self.batch_size = batch_size
        self.workers = workers
        self.seed = seed
        self.max_retry_sleep = max_retry_sleep
        self.give_up_s = give_up_s
        self.request_timeout = request_timeout
        self.batches: list[Batch] = []
        self.stats = DriverStats()
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=workers * 2)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._feeder: threading.Thread | None = None
        self._generated = 0

    def start(self, phases: Sequence[tuple[int, float]]) -> LoadDriver:
        """Send ``count`` events at ``rate`` events/s for each ``(count, rate)`` phase."""
        self._threads = [
            threading.Thread(target=self._work, daemon=True) for _ in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        self._feeder = threading.Thread(target=self._feed, args=(list(phases),), daemon=True)
        self._feeder.start()
        return self

    def _feed(self, phases: list[tuple[int, float]]) -> None:
        total = sum(count for count, _ in phases)
        events = generate(total, len(CLUSTERS), self.seed)
        for count, rate in phases:
            started = time.monotonic()
            sent = 0
            while sent < count:
                take = min(self.batch_size, count - sent)
                lines = [next(events)[1] for _ in range(take)]
                ids = [json.loads(line)["auditID"] for line in lines]
                batch = Batch(len(self.batches), self.tokens[len(self.batches) % len(self.tokens)],
                              event_list(lines), ids)  # fmt: skip
                with self._lock:
                    self.batches.append(batch)
                    self.stats.batches += 1
                    self.stats.events_sent += take
                self._queue.put(batch)
                sent += take
                delay = started + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        for _ in self._threads:
            self._queue.put(None)

    def _post(self, batch: Batch) -> tuple[int, str | None]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.request_timeout)
        try:
            conn.request(
                "POST",
                "/",
                body=batch.body,
                headers={"Content-Type": "application/json",
                         "Authorization": f"Bearer {batch.token}"},
            )  # fmt: skip
            response = conn.getresponse()
            response.read()
            return response.status, response.getheader("Retry-After")
        except OSError:
            return 0, None
        finally:
            conn.close()

    def _work(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            deadline = time.monotonic() + self.give_up_s
            while time.monotonic() < deadline:
                status, retry_after = self._post(batch)
                with self._lock:
                    batch.attempts += 1
                    batch.statuses.append(status)
                    self.stats.attempts += 1
                    if status == 200:
                        batch.acked = True
                        self.stats.events_acked += len(batch.ids)
                    elif status == 503:
                        self.stats.status_503 += 1
                        self.stats.retry_after_503 += retry_after is not None
                    elif status == 0:
                        self.stats.connection_errors += 1
                    else:
                        self.stats.other_status[status] += 1
                if status == 200:
                    break
                # Honour Retry-After, capped so the tests stay short.
                wait = float(retry_after) if retry_after else 0.2
                time.sleep(min(wait, self.max_retry_sleep))

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in [self._feeder, *self._threads]:
            if thread is not None:
                thread.join(max(0.1, deadline - time.monotonic()))
        return not any(t is not None and t.is_alive() for t in [self._feeder, *self._threads])

    def acked_ids(self) -> set[str]:
        with self._lock:
            return {i for b in self.batches if b.acked for i in b.ids}

    def sent_ids(self) -> set[str]:
        with self._lock:
            return {i for b in self.batches for i in b.ids}


# ----------------------------------------------------------------------------- the audit


@dataclass
class Audit:
    """What the end of a fault run holds, counted from the topics and ClickHouse."""

    fault: str
    injected: str
    sent: int
    acked: int
    raw_records: int = 0
    raw_duplicates: int = 0  # the same event twice in the raw topic (client retries)
    chained: int = 0
    chain_duplicates: int = 0  # a raw record chained twice (must be 0)
    chain_gaps: int = 0  # seq holes or raw records not chained (must be 0)
    clickhouse_rows: int = 0
    clickhouse_duplicates: int = 0
    dedup_rows: int = 0
    lost_acked: int = 0
    verifier: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    def publish(self) -> None:
        line = json.dumps(self.row())
        print(f"FAULT-RESULT {line}")
        target = os.environ.get(RESULTS_ENV)
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(line + "\n")


def read_topic(settings: Settings, topic: str) -> dict[int, list[tuple[int, bytes]]]:
    """Every committed record of every partition: partition -> [(offset, value)]."""
    consumer = reader(settings)
    try:
        out: dict[int, list[tuple[int, bytes]]] = {}
        for p in range(partition_count(settings, topic)):
            out[p] = [(int(m.offset() or 0), bytes(m.value() or b""))
                      for m in read_range(consumer, topic, p)]  # fmt: skip
        return out
    finally:
        consumer.close()


def audit(
    pipeline: Pipeline,
    fault: str,
    injected: str,
    driver: LoadDriver,
    started: float,
    dedup_expected: bool = False,
) -> Audit:
    """Count everything and run the verifier; the processes must be stopped already."""
    settings = pipeline.settings
    acked_ids = driver.acked_ids()
    result = Audit(fault, injected, driver.stats.events_sent, len(acked_ids))
    raw = read_topic(settings, settings.topics.raw)
    raw_keys: list[tuple[str, str, str]] = []
    for records in raw.values():
        for _offset, value in records:
            event = decode_audit_event(value)
            raw_keys.append((str(event["cluster"]), str(event["audit_id"]), str(event["stage"])))
    result.raw_records = len(raw_keys)
    result.raw_duplicates = len(raw_keys) - len(set(raw_keys))

    chain = read_topic(settings, settings.topics.chain)
    chained_ids: set[str] = set()
    chained_keys: list[tuple[str, str, str]] = []
    chain_rows: set[tuple[str, int]] = set()
    for p, records in chain.items():
        seqs, offsets = [], []
        for _offset, value in records:
            record = decode_chained(value)
            seqs.append(int(record["seq"]))
            offsets.append(int(record["source_offset"]))
            chain_rows.add((str(record["chain"]), int(record["seq"])))
            event = decode_audit_event(record["payload"])
            chained_ids.add(str(event["audit_id"]))
            key = (str(event["cluster"]), str(event["audit_id"]), str(event["stage"]))
            chained_keys.append(key)
        result.chained += len(seqs)
        result.chain_duplicates += len(offsets) - len(set(offsets))
        raw_offsets = {o for o, _ in raw.get(p, [])}
        result.chain_gaps += len(raw_offsets - set(offsets))
        result.chain_gaps += sum(1 for i, s in enumerate(seqs) if s != i)
    result.lost_acked = len(acked_ids - chained_ids)

    # One query (each ``sealtrail query`` is a process start): the rows and the view's count.
    rows = query_rows(settings, "SELECT chain, seq, (SELECT count() FROM events_dedup) FROM events")
    result.clickhouse_rows = len(rows)
    stored = {(str(r[0]), int(r[1])) for r in rows}
    result.clickhouse_duplicates = len(rows) - len(stored)
    missing_in_ch = len(chain_rows - stored)
    if missing_in_ch:
        result.notes.append(f"{missing_in_ch} chained records missing in ClickHouse")
    result.lost_acked += 0 if not missing_in_ch else missing_in_ch
    result.dedup_rows = int(rows[0][2]) if rows else 0
    if dedup_expected:
        distinct = len(set(chained_keys))
        result.notes.append(f"distinct (cluster, audit_id, stage) chained: {distinct}")

    verified = run_cli(settings, "verify", "--key", str(pipeline.pub), "--quiet",
                       "--clickhouse-required", "--full")  # fmt: skip
    said = (verified.stdout.strip() or verified.stderr.strip())[-300:]
    result.verifier = f"exit {verified.returncode}: {said}"
    result.seconds = round(time.monotonic() - started, 1)
    result.notes.extend(pipeline.drain_errors)
    if pipeline.finished_by_once:
        result.notes.append("live processes had not caught up in 30 s; --once runs finished")
    for name, proc in pipeline.procs.items():
        if proc.unexpected_exits:
            codes = sorted(set(proc.unexpected_exits))
            result.notes.append(
                f"{name} exited on its own {len(proc.unexpected_exits)}x (codes {codes}), restarted"
            )
    result.publish()
    return result


def query_rows(settings: Settings, sql: str) -> list[list[str]]:
    done = run_cli(settings, "query", sql, "--format", "csv")
    assert done.returncode == 0, f"sealtrail query failed: {done.stderr[-2000:]}"
    lines = done.stdout.strip().splitlines()[1:]
    return [line.split(",") for line in lines if line]


def assert_exactly_once(result: Audit, allow_raw_duplicates: bool = False) -> None:
    """The bar: no acknowledged event lost, nothing chained or stored twice, verifier green."""
    assert result.lost_acked == 0, result.row()
    assert result.chain_duplicates == 0 and result.chain_gaps == 0, result.row()
    assert result.clickhouse_duplicates == 0, result.row()
    assert result.clickhouse_rows == result.chained == result.raw_records, result.row()
    if not allow_raw_duplicates:
        assert result.raw_duplicates == 0, result.row()
    assert result.verifier.startswith("exit 0"), result.row()


def leader_of(settings: Settings, topic: str, partition: int) -> int:
    from sealtrail.infra.kafka import admin

    metadata = admin(settings).list_topics(topic=topic, timeout=10)
    return int(metadata.topics[topic].partitions[partition].leader)


def kill_loop(
    procs: Sequence[Proc], kills_each: int, window: tuple[float, float], rng: random.Random
) -> threading.Thread:
    """SIGKILL each process ``kills_each`` times at random moments in ``window`` (seconds from
    now); each is restarted at once. Runs in the background."""
    start = time.monotonic()
    plan = sorted(
        ((start + rng.uniform(*window), proc) for proc in procs for _ in range(kills_each)),
        key=lambda item: item[0],
    )

    def run() -> None:
        for at, proc in plan:
            time.sleep(max(0.0, at - time.monotonic()))
            proc.kill()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
