"""The sink's fast path: ClickHouse decodes chain batches itself, on a worker thread.

On the embedded store, chain batches whose records all carry the current schema versions are
written to an Avro object container file and loaded with one ``INSERT ... SELECT ... FROM
file()`` (:mod:`processors.sink_avro`): one insert for every chain flushed in a round. The
insert runs on one worker thread (chdb releases the GIL) while the sink reads and parses the
next round and writes it into a second file; the worker runs no Python of its own, which would
wait for the GIL. At most one insert is in flight, and it is finished, its offsets committed,
before anything else touches ClickHouse or the offsets (the seqs of a chain seen for the first
time are read meanwhile). An insert ClickHouse fails on goes the Python way whole with the same
token; one it refuses for its rows is redone chain by chain under each chain's token, and only
the chains with such rows go the Python way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

from processors import sink_avro
from processors.sink.metrics import FAST
from processors.sink.rows import ChainBatch, ChainItem, EventsInsert, events_insert
from processors.sink.writer import Stopped, Writer
from sealtrail.infra import clickhouse
from sealtrail.infra.service import backoff
from sealtrail.infra.threads import name_os_thread

log = logging.getLogger(__name__)

INSERT_THREAD = "sink-insert"
"""The insert worker's thread name, in Python and in the kernel (``top -H``)."""

AVRO_FILE_NAMES = (".sealtrail-sink.avro", ".sealtrail-sink-2.avro")
"""The container files, inside the chdb store: one is written while the other is inserted."""


@dataclass(frozen=True, slots=True)
class Offset:
    """Where a committed batch ends: commit ``last + 1`` on ``topic``/``partition``."""

    topic: str
    partition: int
    last: int | None


@dataclass(slots=True)
class Inflight:
    """A fast insert running on the worker, and the offsets to commit once it is stored."""

    future: Future[float]
    insert: EventsInsert
    slot: int  # which of the container files it reads
    commit: list[Offset] | None = None


class FastPath:
    """Starts fast inserts and finishes them: ``start`` hands an insert to the worker,
    ``finish`` waits for it, falls back to the Python path if it failed, and commits its
    offsets."""

    def __init__(
        self,
        writer: Writer,
        store: Path | None,
        python_insert: Callable[[EventsInsert], float],
        commit: Callable[[list[Offset]], None],
    ) -> None:
        self.writer = writer
        self.stats = writer.stats
        self.store = store
        self._python_insert = python_insert
        self._commit = commit
        # (fd, path) of each container file, reused from batch to batch; _slot: the last written
        self._files: list[tuple[int, str] | None] = [None, None]
        self._slot = 1
        self._worker: ThreadPoolExecutor | None = None
        self._inflight: Inflight | None = None

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    def defer_commit(self, offsets: list[Offset]) -> bool:
        """Commit ``offsets`` once the insert in flight is stored; False if none is in flight."""
        if self._inflight is None:
            return False
        self._inflight.commit = (self._inflight.commit or []) + offsets
        return True

    def start(self, insert: EventsInsert) -> None:
        """Write ``insert``'s container file, finish the insert in flight, then insert the file
        on the worker. The file is written here, while the previous insert runs on the worker
        (into the other of two files): on the worker this Python code waited for the GIL while
        this thread parsed the next batch, at several times its own cost."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=INSERT_THREAD,
                # chdb runs part of each INSERT on this thread: named, it shows apart in top -H.
                initializer=name_os_thread,
                initargs=(INSERT_THREAD,),
            )
        started = time.perf_counter()
        self._slot = 1 - self._slot  # the file the insert in flight (if any) is not reading
        try:
            path, marker = self._write_file(insert, self._slot)
        except OSError as exc:
            self.finish()
            self._fall_back(insert, exc, self._slot)
            return
        written = time.perf_counter() - started
        self.finish()
        future = self._worker.submit(self._insert, path, marker, insert.token, written)
        self._inflight = Inflight(future, insert, self._slot)

    def _write_file(self, insert: EventsInsert, slot: int) -> tuple[str, bytes]:
        """Write the insert's rows into the file of ``slot``, which no insert is reading."""
        opened = self._files[slot]
        if opened is None:
            # Inside the embedded store, which one process owns: fixed names that a sink
            # killed mid-batch leaves behind once (clear_stale removes them on the next start).
            path = str((self.store or Path(tempfile.gettempdir())) / AVRO_FILE_NAMES[slot])
            opened = self._files[slot] = (os.open(path, os.O_RDWR | os.O_CREAT, 0o600), path)
        fd, path = opened
        marker = sink_avro.new_marker()
        rows = [
            (value, start)
            for batch in insert.batches
            for _seq, _record, value, start in batch.items
        ]
        sink_avro.write_container(fd, rows, marker)
        return path, marker

    def _insert(self, path: str, marker: bytes, token: str, written: float) -> float:
        """Insert the container file (on the worker; on the loop's thread for the chains of a
        refused round); returns the seconds taken, the file's writing (``written``) included."""
        started = time.perf_counter()
        self.writer.client.command(sink_avro.insert_sql(self.writer.db, path, marker, token))
        return written + time.perf_counter() - started

    def reap(self) -> None:
        """Finish the insert in flight if it is done (an idle sink still commits)."""
        if self._inflight is not None and self._inflight.future.done():
            self.finish()

    def finish(self, commit: bool = True) -> None:
        """Wait for the insert in flight, if any, and commit its offsets. If it failed its
        batches go the Python way (:meth:`_fall_back`)."""
        job = self._inflight
        if job is None:
            return
        self._inflight = None
        try:
            seconds = job.future.result()
        except (DriverError, OSError) as exc:
            self._fall_back(job.insert, exc, job.slot)
        else:
            self._stored(job.insert, seconds)
        if commit and job.commit is not None:
            self._commit(job.commit)

    def _fall_back(self, insert: EventsInsert, exc: DriverError | OSError, slot: int) -> None:
        """Redo ``insert`` the Python way after its fast insert (or file) failed. That path's
        retry loop also outlasts a transient failure: the attempt wrote nothing or, if
        ClickHouse failed between the parts of an insert spanning months, parts that the Python
        insert with the same token then skips."""
        self.stats.fast_fallbacks += 1
        if getattr(exc, "code", None) in sink_avro.BAD_DATA_CODES:
            # One chain's rows should not send the round's other chains the Python way.
            split = len(insert.batches) > 1
            log.info(
                "insert %s has rows ClickHouse cannot decode as the Python decoder does (%s); %s",
                insert.token,
                clickhouse.first_line(exc)[:120],
                "inserting each of its chains on its own" if split else "decoding it in Python",
            )
            if split:
                for batch in insert.batches:
                    self._insert_alone(batch, slot)
                return
        else:
            # Maybe transient (disk full, ...): count it and back off once like an insert.
            self.stats.retries += 1
            delay = next(backoff())
            log.warning(
                "the fast insert of %d row(s) into %s.events failed (%s); retrying in %.1fs",
                insert.rows,
                self.writer.db,
                clickhouse.first_line(exc),
                delay,
            )
            # A new file next time, in case this one is the trouble (not the other: start()
            # may have written the next batch into it already).
            self._close_file(slot)
            if self.writer.stop.wait(delay):
                raise Stopped from None
        self.stats.decode_seconds += self._python_insert(insert)

    def _insert_alone(self, batch: ChainBatch, slot: int) -> None:
        """Insert one chain's batch of a refused round through ClickHouse, now, on this thread,
        under the chain's own token, from the file of ``slot`` (its insert is over). A refused
        round should have stored nothing (the rows are checked before any part is written); the
        seqs already stored are left out all the same, so that a different token cannot store
        a row twice. Refused again: the Python way (:meth:`_fall_back`)."""
        items = self._not_stored(batch)
        if not items:
            return
        if len(items) < len(batch.items):
            token = f"{batch.chain}:{items[0].seq}-{items[-1].seq}"
            batch = batch._replace(items=items, token=token)
        insert = events_insert([batch])
        started = time.perf_counter()
        try:
            path, marker = self._write_file(insert, slot)
            seconds = self._insert(path, marker, insert.token, time.perf_counter() - started)
        except (DriverError, OSError) as exc:
            self._fall_back(insert, exc, slot)
            return
        self._stored(insert, seconds)

    def _stored(self, insert: EventsInsert, seconds: float) -> None:
        """Account for a fast insert ClickHouse stored in ``seconds``."""
        self.stats.insert_seconds += seconds
        self.writer.metrics.inserted("events", FAST, seconds)
        self.stats.fast_batches += 1
        self.stats.inserted += insert.rows

    def _not_stored(self, batch: ChainBatch) -> list[ChainItem]:
        seqs = [item.seq for item in batch.items]
        first, last = min(seqs), max(seqs)
        found = self.writer.retrying(
            f"reading the stored seqs {first}-{last} of chain {batch.chain}",
            lambda: (
                self.writer.client.query(
                    f"SELECT seq FROM {self.writer.db}.events WHERE chain = {{chain:String}} "
                    "AND seq BETWEEN {first:UInt64} AND {last:UInt64}",
                    parameters={"chain": batch.chain, "first": first, "last": last},
                ).result_rows
            ),
        )
        stored = {seq for (seq,) in found}
        if stored:
            self.stats.skipped += len(stored)
        return [item for item in batch.items if item.seq not in stored]

    def abandon(self) -> None:
        """On the way out after an error: let the insert in flight end, commit nothing (its
        records are re-read and skipped, or inserted, by the next run)."""
        job, self._inflight = self._inflight, None
        if job is not None:
            with contextlib.suppress(Exception):
                job.future.result()

    def shutdown(self) -> None:
        self.abandon()
        if self._worker is not None:
            self._worker.shutdown()
            self._worker = None
        self.close_files()

    def clear_stale(self) -> None:
        """Remove the container files a killed sink left in the store.

        Called once this process owns the store (the client is open), so no other sink can be
        writing them. Without this a run that inserts nothing would leave them behind."""
        if self.store is None:
            return
        for name in AVRO_FILE_NAMES:
            with contextlib.suppress(FileNotFoundError):
                (self.store / name).unlink()
                log.info(
                    "removed the fast-path file %s left by a sink that did not exit cleanly",
                    self.store / name,
                )

    def close_files(self) -> None:
        for slot in range(len(self._files)):
            self._close_file(slot)

    def _close_file(self, slot: int) -> None:
        opened, self._files[slot] = self._files[slot], None
        if opened is not None:
            fd, path = opened
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)


def fast_path_store(settings_dsn: str, wanted: bool) -> tuple[bool, Path | None]:
    """Whether the fast path applies (embedded store only: the server path, Avro sent over
    HTTP, is untested) and the store it writes its file into."""
    store = clickhouse.chdb_path(settings_dsn)
    return wanted and sink_avro.AVAILABLE and store is not None, store
