"""Where the webhook's CPU goes: the webhook alone in this process, its clients in another.

``python -m bench.profile_webhook [--events N]`` starts a throwaway broker and a webhook here,
runs the bench's 8 clients (EventLists of 400) in a child process, and prints the CPU time of
this process per event (psutil, every thread: the event loop, parsing, encoding, librdkafka).
Run it under a sampling profiler to see the bound; the clients stay out of the profile:

    py-spy record --threads --format raw -o webhook.txt -- python -m bench.profile_webhook
    python -m bench.profile_webhook --summary webhook.txt   # top functions by own time
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.bench_producers import post_event_lists, start_bench_webhook
from bench.common import KEEP_HELP, bench_broker, fresh_settings, run_directory
from producers.load import event_list, generate

CLIENTS = 8
BATCH = 400


def _bodies(events: int) -> list[bytes]:
    lines = [line for _c, line in generate(events, 3, seed=1)]
    return [event_list(lines[i : i + BATCH]) for i in range(0, len(lines), BATCH)]


def _clients(url: str, events: int) -> None:
    post_event_lists(url, _bodies(events), CLIENTS)


def _serve(events: int) -> None:
    with bench_broker() as servers:
        settings = fresh_settings(servers)
        home = Path(f"/tmp/sealtrail-profile-{time.time_ns()}")
        home.mkdir(parents=True)
        server = start_bench_webhook(settings, home)
        me = psutil.Process()
        args = [sys.executable, "-m", "bench.profile_webhook", "--events", str(events)]
        # A warm-up round (connections, metadata), then the measured one.
        subprocess.run([*args, "--clients", server.url()], check=True)
        before = me.cpu_times()
        started = time.perf_counter()
        subprocess.run([*args, "--clients", server.url()], check=True)
        took = time.perf_counter() - started
        after = me.cpu_times()
        server.stop()
        cpu = (after.user - before.user) + (after.system - before.system)
        print(
            f"webhook: {events / took:,.0f} events/s, {cpu / events * 1e6:.1f} CPU-us/event "
            f"(user {(after.user - before.user) / events * 1e6:.1f}, "
            f"system {(after.system - before.system) / events * 1e6:.1f})"
        )


def summary(path: Path, top: int = 25, thread: str = "webhook") -> str:
    """Top functions by own time (leaf samples) from a py-spy ``--format raw`` file, for the
    threads whose name contains ``thread`` (all threads if it is empty)."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or (thread and thread not in stack.split(";", 1)[0]):
            continue
        n = int(count)
        total += n
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] += n
    lines = [f"{total} samples of threads matching {thread!r}; own time by function:"]
    for name, n in own.most_common(top):
        lines.append(f"{100 * n / max(total, 1):5.1f}%  {name}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--clients", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--summary", type=Path, help="summarise a py-spy raw profile")
    parser.add_argument("--thread", default="webhook")
    parser.add_argument("--keep", action="store_true", help=KEEP_HELP)
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary, thread=args.thread))
    elif args.clients:
        _clients(args.clients, args.events)
    else:
        with run_directory(args.keep):
            _serve(args.events)


if __name__ == "__main__":
    main()
