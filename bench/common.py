"""Small shared helpers for the benchmarks: a throwaway broker, timing, peak RSS, result tables."""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from sealtrail.infra.config import Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Result:
    """One benchmark line: a stage, its rate, its baseline's rate and their ratio."""

    stage: str
    rate: float
    unit: str = "events/s"
    baseline: str = ""
    baseline_rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mb: float | None = None
    cpu_us_per_event: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.baseline_rate:
            return None
        return self.rate / self.baseline_rate

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


def sample_payloads() -> list[bytes]:
    """Avro-encoded AuditEvents from the Kubernetes audit samples (about 1.5-2 KB each)."""
    from producers.k8s import RejectError, parse_line
    from schemas.codec import encode_audit_event
    from sealtrail.infra.samples import sample_lines

    out = []
    for line in sample_lines():
        try:
            out.append(encode_audit_event(parse_line(line, "bench", 1)))
        except RejectError:
            continue  # the deliberately malformed sample
    return out


def generated_payloads(seed: int = 7, clusters: int = 8) -> Iterator[bytes]:
    """Avro-encoded AuditEvents from the load generator, each one different (about 1.3 KB):
    an endless stream. A store filled from :func:`sample_payloads` holds a few dozen payloads
    over and over, which ClickHouse compresses some 800 to 1 once its parts sort them side by
    side; real audit events compress about 9 to 1, and a check that reads them pays for that."""
    from producers.k8s import parse_line
    from producers.load import generate
    from schemas.codec import encode_audit_event

    for cluster, line in generate(1 << 62, clusters, seed=seed):
        yield encode_audit_event(parse_line(line, cluster, 1))


def timed(function: Callable[[], int]) -> tuple[int, float]:
    """Run ``function`` (which returns how many items it processed); return (items, seconds)."""
    started = time.perf_counter()
    items = function()
    return items, time.perf_counter() - started


def rate(items: int, seconds: float) -> float:
    return items / seconds if seconds > 0 else float("inf")


class PeakRss:
    """Samples the resident set size of this process (and given pids) every 50 ms."""

    def __init__(self, pids: list[int] | None = None) -> None:
        self.pids = pids or [os.getpid()]
        self.peak: dict[int, int] = {pid: 0 for pid in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
                self.peak[pid] = max(self.peak[pid], rss)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mb(self, pid: int | None = None) -> float:
        return self.peak[pid or self.pids[0]] / (1024 * 1024)


class Metered:
    """CPU seconds and peak RSS of a running process, read from outside (no sampling thread).

    ``start()`` marks the CPU already spent (start-up); ``cpu_seconds()`` is what came after.
    Peak RSS is the kernel's high-water mark (VmHWM), so nothing has to watch for the peak."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.process = psutil.Process(pid)
        self.cpu_at_start = 0.0

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        self.cpu_at_start = self._cpu()

    def cpu_seconds(self) -> float:
        return self._cpu() - self.cpu_at_start

    def peak_rss_mb(self) -> float:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
            lines = status.splitlines()
            kib = next(int(line.split()[1]) for line in lines if line.startswith("VmHWM:"))
            return kib / 1024
        except (OSError, StopIteration, ValueError):
            return float(self.process.memory_info().rss) / 2**20

    def rss_mb(self) -> float:
        """Resident memory now (0 once the process is gone)."""
        try:
            return float(self.process.memory_info().rss) / 2**20
        except psutil.Error:
            return 0.0

    def anon_mb(self) -> float:
        """Anonymous resident memory now (heap, stacks, caches: what a leak grows), without the
        file-backed pages of shared libraries (chdb's library is hundreds of MB of code whose
        pages count as resident once touched); 0 if unknown."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0.0
        for line in status.splitlines():
            if line.startswith("RssAnon:"):
                return float(line.split()[1]) / 1024
        return 0.0

    def report(self, events: int) -> dict[str, float]:
        """CPU seconds since start(), CPU-us per event and peak RSS, while the process lives."""
        try:
            cpu = self.cpu_seconds()
        except psutil.Error:  # it exited (a restarted child): nothing honest to report
            return {"cpu_seconds": 0.0, "cpu_us_per_event": 0.0, "peak_rss_mb": 0.0, "gone": 1}
        return {
            "cpu_seconds": round(cpu, 3),
            "cpu_us_per_event": round(cpu * 1e6 / events, 1) if events else 0.0,
            "peak_rss_mb": round(self.peak_rss_mb(), 1),
        }


def listening_pid(bootstrap: str) -> int | None:
    """The pid of our own process listening on the first bootstrap address's port, if any."""
    try:
        port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    except (ValueError, IndexError, psutil.Error):
        return None
    return None


def ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (32768 if unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_range() -> tuple[int, int]:
    """Where to pick loopback ports: [low, high), below the kernel's ephemeral range; under
    pytest-xdist, this worker's slice of it (inherited by the processes a test starts), so two
    workers never pick the same port between one's check and its bind."""
    low, high = 10000, ephemeral_low()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1:
        width = (high - low) // int(count)
        low += int(worker[2:]) % int(count) * width
        high = low + width
    return low, high


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nobody holds now, below the kernel's ephemeral range: one the kernel
    picked can be taken by any outgoing connection (a Kafka client's) before a child binds it
    (seen in CI: a bench run's chainer could not serve its metrics)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*port_range())
        if port not in _HANDED_OUT and port_free(port):
            _HANDED_OUT.add(port)  # two calls in a row name two ports
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def max_rss_mb() -> float:
    """Peak RSS of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def run_directory(keep: bool = False) -> Iterator[Path]:
    """One temp directory for everything a bench run writes (stores, brokers' data, logs; its
    children's too, through TMPDIR): removed once the run succeeds, kept and named if it fails
    or ``keep``. A full run writes gigabytes; left behind, runs filled this machine's disk."""
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    run_dir = tempfile.mkdtemp(prefix="sealtrail-bench-run-")
    tempfile.tempdir = os.environ["TMPDIR"] = run_dir
    done = False
    try:
        yield Path(run_dir)
        done = True
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        if not done:
            print(f"bench: the run's stores and logs are kept in {run_dir}", file=sys.stderr)
        elif keep:
            print(f"the run's stores and logs are in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


KEEP_HELP = "keep the run's stores, brokers' data and logs (removed once it succeeds)"


@contextmanager
def bench_broker(home: Path | None = None, bootstrap: str | None = None) -> Iterator[str]:
    """Use ``bootstrap`` if given (or SEALTRAIL_KAFKA), else start a throwaway local broker."""
    bootstrap = bootstrap or os.environ.get("SEALTRAIL_KAFKA")
    if bootstrap:
        yield bootstrap
        return
    import tempfile

    from sealtrail.stack import LocalKafka

    # Below the kernel's ephemeral ports (32768 and up): a port there can be taken by an
    # outgoing connection before the broker binds it.
    base = next(p for p in range(29092, 29900, 7) if port_free(p) and port_free(p + 100))
    directory = home or Path(tempfile.mkdtemp(prefix="sealtrail-bench-"))
    kafka = LocalKafka(directory)
    state = kafka.up(port=base, brokers=1)
    try:
        yield state.bootstrap
    finally:
        kafka.down()


def fresh_settings(bootstrap: str, partitions: int = 3, **changes: Any) -> Settings:
    """Settings with a new topic prefix whose four topics exist."""
    from sealtrail.infra.topics import init_topics

    settings = Settings(kafka=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", **changes)
    init_topics(settings, partitions=partitions, replication_factor=1)
    return settings


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def print_table(results: list[Result]) -> None:
    header = (
        f"{'stage':<44} {'rate':>12} {'baseline rate':>14} {'ratio':>6} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'CPU us/ev':>9} {'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:

        def num(value: float | None, fmt: str) -> str:
            return format(value, fmt) if value is not None else "-"

        print(
            f"{r.stage:<44} {num(r.rate, ',.0f'):>12} {num(r.baseline_rate, ',.0f'):>14} "
            f"{num(r.ratio, '.2f'):>6} {num(r.p50_ms, '.1f'):>8} {num(r.p99_ms, '.1f'):>8} "
            f"{num(r.cpu_us_per_event, '.1f'):>9} {num(r.peak_rss_mb, '.0f'):>11}"
        )


def write_json(name: str, results: list[Result], extra: dict[str, Any] | None = None) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"machine": machine(), "results": [r.as_dict() for r in results], **(extra or {})}
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return path


# A loaded 2-core machine can take long to start chdb and join groups.
START_TIMEOUT = 120.0


def spawn(args: list[str], log: Path, stdin: int | None = subprocess.DEVNULL, **kw: Any) -> Any:
    """A child process whose stdout and stderr go to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdin=stdin, stdout=out, stderr=out, **kw)


def wait_until(what: str, ready: Callable[[], bool], processes: dict[str, Any], logs: Path) -> None:
    """Wait (with a deadline) until ``ready()``; fail with the tails of the ``*.log`` files in
    ``logs`` if one of ``processes`` died."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        dead = [name for name, p in processes.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}"
                for log in sorted(logs.glob("*.log"))
            )
            why = f"{', '.join(dead)} exited" if dead else f"not within {START_TIMEOUT:.0f} s"
            raise RuntimeError(f"{what}: {why}; logs end:\n{tails}")
        time.sleep(0.1)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (1-99) of ``values``; None for none."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
