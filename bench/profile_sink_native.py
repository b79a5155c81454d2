"""Where the sink's CPU goes, native frames included: ``perf`` over ``sealtrail sink --once``.

``python -m bench.profile_sink_native --rows 100000 [--out FILE]``

py-spy sees only Python threads, and the sink's heaviest work runs on chdb's own threads
(ClickHouse parsing the Avro, sorting, compressing, writing parts and the projection). This
fills the chain topic of a throwaway broker with N chained sample events (as
:mod:`bench.bench_sink` does), then runs ``sealtrail sink --once`` in its own process under
``perf record`` (sampling every thread of that process only, so the broker and this script are
not counted) and prints the CPU-us per row by shared object, the kernel's share by kind (page
faults, file system, scheduling) and the top symbols (chdb's library is stripped: its samples
are one line). Needs ``perf`` and permission to use it (root, or
``kernel.perf_event_paranoid`` <= 1).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_sink import _fill
from bench.common import KEEP_HELP, bench_broker, fresh_settings, run_directory

#: Kernel symbol patterns -> what the kernel did for the process (first match wins). chdb's
#: own library is stripped, so its samples are reported as one line.
KERNEL: tuple[tuple[str, str], ...] = (
    ("page faults, zeroing new pages (memory mapped and unmapped)",
     r"clear_page|fault|do_anonymous_page|get_page_from_freelist|mem_cgroup|folio_add|"
     r"zap_|unmap|mmap|free_pages|free_unref|release_pages|lru|page_remove|tlb"),
    ("file system (ClickHouse parts, the container file)",
     r"ext4|jbd2|find_get_block|copy_folio|generic_perform_write|filemap|iomap|block_|"
     r"dentry|inode|path_|link_path|namei|recently_deleted|__d_lookup"),
    ("scheduling, futexes, threads", r"sched|task|futex|switch|wake|spin|idle|schedule"),
    ("network (Kafka)", r"tcp|sock|skb|net_|ip_|inet"),
)  # fmt: skip


def _kernel_kind(symbol: str) -> str:
    for name, pattern in KERNEL:
        if re.search(pattern, symbol):
            return name
    return "other kernel"


def profile(rows: int, frequency: int) -> str:
    perf = shutil.which("perf")
    if perf is None:
        sys.exit("perf is not installed; install linux-tools (perf) to profile native frames")
    store = Path(tempfile.mkdtemp(prefix="sealtrail-profile-sink-"))
    data = store / "perf.data"
    with bench_broker() as kafka:
        settings = fresh_settings(kafka, 3, clickhouse=f"chdb://{store / 'ch'}")
        _fill(settings, rows, 3)
        env = dict(
            os.environ,
            SEALTRAIL_KAFKA=kafka,
            SEALTRAIL_TOPIC_PREFIX=settings.topic_prefix,
            SEALTRAIL_CLICKHOUSE=f"chdb://{store / 'ch'}",
            SEALTRAIL_HOME=str(store / "home"),
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(
            [perf, "record", "-q", "-F", str(frequency), "-o", str(data), "--",
             sys.executable, "-m", "sealtrail", "sink", "--once"],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = subprocess.run(
        [perf, "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym", "-q"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    by_dso: dict[str, float] = {}
    kernel: dict[str, float] = {}
    top: list[tuple[float, str, str]] = []
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
        if not m:
            continue
        share, dso, symbol = float(m.group(1)), m.group(2), m.group(3).strip()
        by_dso[dso] = by_dso.get(dso, 0.0) + share
        top.append((share, dso, symbol))
        if dso == "[kernel.kallsyms]":
            kind = _kernel_kind(symbol)
            kernel[kind] = kernel.get(kind, 0.0) + share
    per_row = cpu / rows * 1e6
    out = [
        f"sealtrail sink --once, {rows:,} rows (3 chains, sample payloads), perf at {frequency} Hz",
        f"wall {wall:.1f} s, CPU {cpu:.1f} s (user + sys of the sink process and perf) "
        f"= {per_row:.1f} CPU-us/row",
        "",
        "by shared object (share of samples, CPU-us/row):",
    ]
    for dso, share in sorted(by_dso.items(), key=lambda i: -i[1])[:12]:
        out.append(f"  {share:6.2f}%  {per_row * share / 100:7.2f} us  {dso}")
    out += ["", "in the kernel, by kind:"]
    for kind, share in sorted(kernel.items(), key=lambda i: -i[1]):
        out.append(f"  {share:6.2f}%  {per_row * share / 100:7.2f} us  {kind}")
    out += ["", "top symbols:"]
    for share, dso, symbol in sorted(top, reverse=True)[:40]:
        out.append(f"  {share:6.2f}%  {Path(dso).name[:28]:<28}  {symbol[:110]}")
    shutil.rmtree(store, ignore_errors=True)
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--frequency", type=int, default=499, help="perf samples per second")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--keep", action="store_true", help=KEEP_HELP)
    args = parser.parse_args()
    with run_directory(args.keep):
        text = profile(args.rows, args.frequency)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
