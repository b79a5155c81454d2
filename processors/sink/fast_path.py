"""The sink's fast path: ClickHouse decodes a chain batch itself, on a worker thread.

On the embedded store, a batch whose records all carry the current schema versions is written
to an Avro object container file and loaded with one ``INSERT ... SELECT ... FROM file()``
(:mod:`processors.sink_avro`). The insert runs on one worker thread (chdb releases the GIL)
while the sink reads and parses the next batch. At most one is in flight, and it is finished,
its offset committed, before anything else touches ClickHouse or the offsets. A batch the insert
refuses, or fails on, goes the Python way whole with the same token.
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
from processors.sink.rows import ChainBatch
from processors.sink.writer import Stopped, Writer, first_line
from sealtrail.infra import clickhouse
from sealtrail.infra.service import backoff

log = logging.getLogger(__name__)

AVRO_FILE_NAME = ".sealtrail-sink.avro"  # the container file, inside the chdb store


@dataclass(frozen=True, slots=True)
class Offset:
    """Where a committed batch ends: commit ``last + 1`` on ``topic``/``partition``."""

    topic: str
    partition: int
    last: int | None


@dataclass(slots=True)
class Inflight:
    """A fast insert running on the worker, and the offset to commit once it is stored."""

    future: Future[float]
    batch: ChainBatch
    commit: Offset | None = None


class FastPath:
    """Starts fast inserts and finishes them: ``start`` hands a batch to the worker, ``finish``
    waits for it, falls back to the Python path if it failed, and commits its offset."""

    def __init__(
        self,
        writer: Writer,
        store: Path | None,
        python_insert: Callable[[ChainBatch], float],
        commit: Callable[[Offset], None],
    ) -> None:
        self.writer = writer
        self.stats = writer.stats
        self.store = store
        self._python_insert = python_insert
        self._commit = commit
        self._avro_file: tuple[int, str] | None = None  # reused from batch to batch
        self._worker: ThreadPoolExecutor | None = None
        self._inflight: Inflight | None = None

    @property
    def busy(self) -> bool:
        return self._inflight is not None

    def defer_commit(self, offset: Offset) -> bool:
        """Commit ``offset`` once the insert in flight is stored; False if none is in flight."""
        if self._inflight is None:
            return False
        self._inflight.commit = offset
        return True

    def start(self, batch: ChainBatch) -> None:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink-insert")
        rows = [(item.value, item.payload_start) for item in batch.items]
        future = self._worker.submit(self._insert, rows, batch.token)
        self._inflight = Inflight(future, batch)

    def _insert(self, rows: list[tuple[bytes, int]], token: str) -> float:
        """On the worker: write the container file and insert it; returns the seconds taken."""
        started = time.perf_counter()
        if self._avro_file is None:
            # Inside the embedded store, which one process owns: a fixed name that a sink
            # killed mid-batch leaves behind once (clear_stale removes it on the next start).
            path = str((self.store or Path(tempfile.gettempdir())) / AVRO_FILE_NAME)
            self._avro_file = (os.open(path, os.O_RDWR | os.O_CREAT, 0o600), path)
        fd, path = self._avro_file
        marker = sink_avro.new_marker()
        sink_avro.write_container(fd, rows, marker)
        self.writer.client.command(sink_avro.insert_sql(self.writer.db, path, marker, token))
        return time.perf_counter() - started

    def reap(self) -> None:
        """Finish the insert in flight if it is done (an idle sink still commits)."""
        if self._inflight is not None and self._inflight.future.done():
            self.finish()

    def finish(self, commit: bool = True) -> None:
        """Wait for the insert in flight, if any, and commit its batch. If it failed the batch
        goes the Python way, whose retry loop also outlasts a transient failure: the attempt
        wrote nothing or, if ClickHouse failed between the parts of a batch spanning months,
        parts that the Python insert with the same token then skips."""
        job = self._inflight
        if job is None:
            return
        self._inflight = None
        try:
            seconds = job.future.result()
        except (DriverError, OSError) as exc:
            self.stats.fast_fallbacks += 1
            if getattr(exc, "code", None) in sink_avro.BAD_DATA_CODES:
                log.info(
                    "batch %s has rows ClickHouse cannot decode as the Python decoder does (%s); "
                    "decoding it in Python",
                    job.batch.token,
                    first_line(exc)[:120],
                )
            else:
                # Maybe transient (disk full, ...): count it and back off once like an insert.
                self.stats.retries += 1
                delay = next(backoff())
                log.warning(
                    "the fast insert of %d row(s) into %s.events failed (%s); retrying in %.1fs",
                    len(job.batch.items),
                    self.writer.db,
                    first_line(exc),
                    delay,
                )
                self.close_file()  # a new file next time, in case this one is the trouble
                if self.writer.stop.wait(delay):
                    raise Stopped from None
            self.stats.decode_seconds += self._python_insert(job.batch)
        else:
            self.stats.insert_seconds += seconds
            self.writer.metrics.inserted("events", FAST, seconds)
            self.stats.fast_batches += 1
            self.stats.inserted += len(job.batch.items)
        if commit and job.commit is not None:
            self._commit(job.commit)

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
        self.close_file()

    def clear_stale(self) -> None:
        """Remove the container file a killed sink left in the store.

        Called once this process owns the store (the client is open), so no other sink can be
        writing the file. Without this a run that inserts nothing would leave it behind."""
        if self.store is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.store / AVRO_FILE_NAME).unlink()
            log.info(
                "removed the fast-path file %s left by a sink that did not exit cleanly",
                self.store / AVRO_FILE_NAME,
            )

    def close_file(self) -> None:
        if self._avro_file is not None:
            fd, path = self._avro_file
            self._avro_file = None
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)


def fast_path_store(settings_dsn: str, wanted: bool) -> tuple[bool, Path | None]:
    """Whether the fast path applies (embedded store only: the server path, Avro sent over
    HTTP, is untested) and the store it writes its file into."""
    store = clickhouse.chdb_path(settings_dsn)
    return wanted and sink_avro.AVAILABLE and store is not None, store
