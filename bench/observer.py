"""A cheap observer for the end-to-end benches: when did each batch's marker become queryable?

Runs as its own process (``python -m bench.observer``) so its CPU is measured apart from the
pipeline's and the load generator's. Per record it does one ``bytes.find`` for the marker over the
raw message value, nothing else: only the few marker records are decoded (to learn their chain
seq). "Queryable" is read from the consumer group's committed offsets (the sink, and the raw
pipeline's consumer, commit only after ClickHouse acknowledged the rows), "checkpointed" from the
checkpoint topic (a signed tree size past the record's seq). Both are polled every ``--poll-ms``.

Writes JSON to ``--out``: per marker the monotonic times it was seen, queryable and checkpointed
(CLOCK_MONOTONIC is system-wide on Linux, so they compare with other processes' times), how many
records it scanned and its own CPU seconds from ready to done. Exits once every marker is
queryable (and checkpointed, if ``--checkpoints`` is given), on SIGTERM, or at ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from confluent_kafka import Consumer, KafkaException, TopicPartition

from processors.integrity.checkpoint import parse_checkpoint_note
from schemas.codec import decode_chained

# The marker starts with a byte JSON text hardly ever holds, so the search is one memchr per
# record (bytes.find of one byte) plus a check at the few places where that byte occurs; a
# multi-byte bytes.find costs several times more on these ~2 KB values.
MARK = b"~bench-mark~"
MARK_FIRST = MARK[:1]
MARK_DIGITS = 8


def mark_name(number: int) -> str:
    return f"{MARK.decode()}{number:0{MARK_DIGITS}d}"


def find_mark(value: bytes) -> str | None:
    """The marker name in ``value``, if it holds one: memchr for its first byte, then a check."""
    at = value.find(MARK_FIRST)
    while at >= 0 and not value.startswith(MARK, at):
        at = value.find(MARK_FIRST, at + 1)
    if at < 0:
        return None
    name = value[at : at + len(MARK) + MARK_DIGITS]
    return name.decode() if len(name) == len(MARK) + MARK_DIGITS else None


@dataclass
class Seen:
    """Where one marker sits and when each of its states was first observed."""

    partition: int
    offset: int
    seq: int
    seen: float
    queryable: float | None = None
    checkpointed: float | None = None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Observer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = threading.Event()
        # One consumer for everything (fewer librdkafka threads and fetches). Its group.id is the
        # inserting consumer's group, only to ask for that group's committed offsets: it assigns
        # partitions itself and never commits, so it never joins or changes the group.
        self.consumer = Consumer(
            {
                "bootstrap.servers": args.bootstrap,
                "group.id": args.group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        parts = range(args.partitions)
        topics = [args.topic, *([args.checkpoints] if args.checkpoints else [])]
        self.consumer.assign([TopicPartition(t, p, 0) for t in topics for p in parts])
        self.parts = [TopicPartition(args.topic, p) for p in parts]
        self.marks: dict[str, Seen] = {}
        self.unqueryable: list[Seen] = []
        self.uncheckpointed: list[Seen] = []
        self.tree_size = [0] * args.partitions
        self.scanned = 0
        self.scan_seconds = self.follow_seconds = 0.0  # this thread's CPU in each part
        self.follows = 0

    def _scan(self) -> None:
        checkpoints = self.args.checkpoints
        for message in self.consumer.consume(10000, timeout=self.args.poll_ms / 1000):
            value = message.value()
            if value is None or message.error():
                continue
            if checkpoints and message.topic() == checkpoints:
                size = parse_checkpoint_note(value.decode()).checkpoint.size
                p = cast(int, message.partition())
                self.tree_size[p] = max(self.tree_size[p], size)
                continue
            self.scanned += 1
            name = find_mark(value)
            if name is None or name in self.marks:
                continue
            # Only marker records are decoded, and only for checkpoint coverage (their seq).
            seq = int(decode_chained(value)["seq"]) if checkpoints else -1
            where = cast(int, message.partition()), cast(int, message.offset())
            seen = Seen(*where, seq, time.monotonic())
            self.marks[name] = seen
            self.unqueryable.append(seen)
            if checkpoints:
                self.uncheckpointed.append(seen)

    def _follow(self, now: float) -> None:
        if self.uncheckpointed:
            for seen in self.uncheckpointed:
                if self.tree_size[seen.partition] > seen.seq:
                    seen.checkpointed = now
            self.uncheckpointed = [s for s in self.uncheckpointed if s.checkpointed is None]
        if self.unqueryable:
            try:
                found = self.consumer.committed(self.parts, 10)
            except KafkaException:
                return  # a broker hiccup: ask again next round (--timeout bounds the wait)
            committed = {tp.partition: tp.offset for tp in found}
            for seen in self.unqueryable:
                if committed.get(seen.partition, -1) > seen.offset:
                    seen.queryable = now
            self.unqueryable = [s for s in self.unqueryable if s.queryable is None]

    def done(self) -> bool:
        complete = len(self.marks) >= self.args.markers
        return complete and not self.unqueryable and not self.uncheckpointed

    def run(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.args.timeout
        cpu_at_ready, thread_at_ready = cpu_seconds(), time.thread_time()
        Path(self.args.ready).write_text("ready")
        last_poll = 0.0
        while not self.stop.is_set() and not self.done() and time.monotonic() < deadline:
            before = time.thread_time()
            self._scan()
            scanned = time.thread_time()
            self.scan_seconds += scanned - before
            now = time.monotonic()
            if now - last_poll >= self.args.poll_ms / 1000:
                last_poll = now
                self._follow(now)
                self.follow_seconds += time.thread_time() - scanned
                self.follows += 1
        cpu, python = cpu_seconds() - cpu_at_ready, time.thread_time() - thread_at_ready
        self.consumer.close()
        return {
            "marks": {name: asdict(seen) for name, seen in self.marks.items()},
            "records_scanned": self.scanned,
            "cpu_seconds": cpu,
            "python_thread_cpu_seconds": python,  # the rest is librdkafka's threads
            "complete": self.done(),
            "python_scan_seconds": self.scan_seconds,
            "python_follow_seconds": self.follow_seconds,
            "follows": self.follows,
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True, help="the topic whose records carry markers")
    parser.add_argument("--group", required=True, help="the consumer group that inserts them")
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--markers", type=int, required=True, help="how many markers to await")
    parser.add_argument("--checkpoints", default="", help="the checkpoint topic, if any")
    parser.add_argument("--poll-ms", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--ready", required=True, help="file written once it is following")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    observer = Observer(args)
    signal.signal(signal.SIGTERM, lambda *_: observer.stop.set())
    result = observer.run()
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
