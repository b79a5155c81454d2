"""Writes to ClickHouse, retried until they succeed or the sink is told to stop.

Every insert is one block with an ``insert_deduplication_token``, so a retried insert is stored
once; a stop during the wait raises :class:`Stopped` and nothing is committed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError
from clickhouse_connect.driver.insert import InsertContext

from processors.clickhouse_schema import EVENT_COLUMNS, REJECT_COLUMNS, migrate
from processors.sink.columns import as_columns, event_rows
from processors.sink.metrics import PYTHON, SinkMetrics
from processors.sink.options import SinkStats
from processors.sink.rows import EventRow, EventsInsert, RejectRow, pivot, storable
from schemas.chained import value_record
from sealtrail.infra import clickhouse
from sealtrail.infra.config import Settings
from sealtrail.infra.service import StopFlag, backoff

log = logging.getLogger(__name__)

T = TypeVar("T")


class Stopped(Exception):  # noqa: N818 - a signal, not a failure
    """Stop was requested while waiting to retry a ClickHouse call: exit without committing."""


class Writer:
    """The sink's ClickHouse side: one client (opened and migrated on first use), inserts with
    tokens and retries, and reads retried the same way."""

    def __init__(
        self,
        settings: Settings,
        stats: SinkStats,
        stop: StopFlag,
        metrics: SinkMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.metrics = metrics if metrics is not None else SinkMetrics(stats)
        self.stop = stop
        self.db = clickhouse.validate_identifier(settings.clickhouse_database)
        self._client: Client | None = None
        self._contexts: dict[str, InsertContext] = {}

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = clickhouse.connect(self.settings)
            migrate(self._client, self.db)
            # The driver imports pandas on its first insert (about a second): here, at start,
            # not in the first batch's latency.
            from clickhouse_connect.driver import options

            _ = options.pd
        return self._client

    def retrying(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried with backoff while ClickHouse fails (``Stopped`` on stop)."""
        delays = backoff()
        while True:
            try:
                return call()
            except (DriverError, OSError) as exc:
                self.stats.retries += 1
                delay = next(delays)
                reason = clickhouse.first_line(exc)
                log.warning("%s failed (%s); retrying in %.1fs", what, reason, delay)
                if self.stop.wait(delay):
                    raise Stopped from None

    def insert(
        self, table: str, names: Sequence[str], columns: list[list[Any]], token: str
    ) -> None:
        """Insert one block, retrying with backoff until ClickHouse takes it (or stop)."""
        delays = backoff()
        first_try = time.perf_counter()
        while True:
            started = time.perf_counter()
            try:
                context = self._contexts.get(table)
                if context is None:
                    context = self.client.create_insert_context(
                        f"{self.db}.{table}", column_names=list(names), column_oriented=True
                    )
                    self._contexts[table] = context
                context.settings["insert_deduplication_token"] = token
                context.data = columns
                self.client.insert(context=context)
                done = time.perf_counter()
                self.stats.insert_seconds += done - started
                self.metrics.inserted(table, PYTHON, done - first_try)
                return
            except (DriverError, OSError) as exc:
                self._contexts.pop(table, None)
                self.stats.retries += 1
                delay = next(delays)
                log.warning(
                    "inserting %d row(s) into %s.%s failed (%s); retrying in %.1fs",
                    len(columns[0]) if columns else 0,
                    self.db,
                    table,
                    clickhouse.first_line(exc),
                    delay,
                )
                if self.stop.wait(delay):
                    raise Stopped from None

    def insert_rejects(self, rows: Sequence[RejectRow], token: str) -> None:
        self.insert("rejects", REJECT_COLUMNS, pivot(rows), token)
        self.stats.rejects += len(rows)

    def insert_decoded(self, insert: EventsInsert, chain_topic: str) -> float:
        """The Python path: decode an insert's chain batches with fastavro and insert them as
        one block; returns the decoding seconds. Undecodable payloads also go to ``rejects``,
        first: once the events rows exist the records are skipped on re-read."""
        self.stats.python_batches += 1
        t0 = time.perf_counter()
        rows: list[EventRow] = []
        rejects: list[RejectRow] = []
        for batch in insert.batches:
            records = [
                item.record if item.record is not None else storable(value_record(item.value))
                for item in batch.items
            ]
            batch_rows, failed = event_rows(records)
            rows += batch_rows
            rejects += (
                RejectRow(
                    batch.chain,
                    r.seq,
                    r.hash,
                    chain_topic,
                    batch.partition,
                    0,
                    error,
                    r.payload,
                    batch.now_us,
                )  # fmt: skip
                for r, error in failed
            )
        columns = as_columns(rows)
        decode_s = time.perf_counter() - t0
        if rejects:
            self.insert_rejects(rejects, f"rejects:{insert.token}")
        self.insert("events", EVENT_COLUMNS, columns, insert.token)
        self.stats.inserted += len(rows)
        return decode_s
