"""One verifier run over a deployment: every chain replayed from Kafka (in parallel processes
with ``jobs``), its ClickHouse rows checked in SQL or, with ``recompute_outside``, in Python,
and the state the next incremental run starts from saved. ``sealtrail verify`` opens the
ClickHouse client and the progress bar and calls :func:`run_verify`."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from processors.integrity.chains import partition_of
from processors.integrity.checkpoint import KeyRing
from processors.integrity.errors import ClickHouseMismatch
from processors.verifier import offsite
from processors.verifier.clickhouse_source import chain_sizes, expected_columns, iter_rows
from processors.verifier.clickhouse_sql import (
    Remembered,
    TableParts,
    changed_parts,
    check_chain,
    table_parts,
)
from processors.verifier.core import ChainResult, ChainState
from processors.verifier.kafka_source import (
    ChainJob,
    chain_id,
    chain_partitions,
    keyring_text,
    run_job,
    seq_below,
    sink_committed,
)
from processors.verifier.report import Report
from processors.verifier.rows import verify_rows
from processors.verifier.state import (
    ClickHouseState,
    load_clickhouse_state,
    load_state,
    save_state,
)
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable
from sealtrail.infra.kafka_read import reader, watermarks

T = TypeVar("T")

__all__ = ["Progress", "VerifyOptions", "run_verify"]


class Progress(Protocol):
    """Counts verified records or checked ClickHouse rows (a progress bar, or nothing)."""

    def advance(self, n: int) -> None: ...

    def close(self) -> None: ...


class ProgressFactory(Protocol):
    """``progress(total, what)``: a :class:`Progress` for ``total`` of ``what`` ("records" of
    the Kafka replay, "rows" of the ClickHouse check)."""

    def __call__(self, total: int, what: str = "records") -> Progress: ...


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    state_file: Path | None = None
    full: bool = False
    offsite_dir: Path | None = None
    require_anchored: bool = False
    jobs: int = 0
    timeout: float = 10.0
    max_findings: int = 1000
    sink_group: str | None = None  # default: Settings.groups.sink
    recompute_outside: bool = False


def run_verify(
    settings: Settings,
    ring: KeyRing,
    client: Any,
    options: VerifyOptions,
    progress: ProgressFactory,
) -> Report:
    """Verify every chain in Kafka and, with a ClickHouse ``client`` (read-only), its rows.

    ``progress(total, what)`` gives what counts the records as they are verified, then the
    ClickHouse rows as they are checked. The policy
    lives here, not in the CLI: which state a run starts from, what ClickHouse findings mean
    against the chain and the sink's committed offsets, and what the next run remembers. The
    steps: plan the chains' jobs, replay them, check ClickHouse's rows, save the state."""
    report = Report(deployment=settings.deployment)
    partitions = chain_partitions(settings, timeout=options.timeout)
    states: dict[str, ChainState] = {}
    if options.state_file is not None:
        states = load_state(options.state_file, settings.deployment)
    report.clickhouse_checked = client is not None
    ch_sizes: dict[str, int] = {}
    parts_now = None
    committed: dict[int, int | None] | KafkaUnavailable = {}
    if client is not None:
        # The sink's committed offsets before ClickHouse's row counts: rows below them were
        # stored before the counts were taken, so a running sink that stores and commits more
        # meanwhile is not mistaken for deleted rows. Needed only if ClickHouse is behind.
        try:
            committed = sink_committed(
                settings, options.sink_group or settings.groups.sink, partitions, options.timeout
            )
        except KafkaUnavailable as exc:
            committed = exc
        # Parts first: rows that arrive in between are checked now and again next run.
        parts_now = table_parts(client, settings.clickhouse_database)
        ch_sizes = chain_sizes(client, settings.clickhouse_database)
    jobs, total = _plan(settings, ring, options, partitions, states, ch_sizes)
    if options.offsite_dir is not None:
        known = {chain_id(settings, p) for p in partitions}
        for chain in offsite.chains_in(options.offsite_dir):
            if chain not in known:
                report.warnings.append(f"offsite checkpoints exist for unknown chain {chain}")
    report.chains = _replay(jobs, total, options.jobs, progress)
    incremental = _Incremental()
    if client is not None:
        if parts_now is not None and not options.recompute_outside:
            incremental = _incremental(settings, options, parts_now, report)
        rows_bar = progress(sum(ch_sizes.get(r.chain) or 0 for r in report.chains), "rows")
        try:
            for res in report.chains:
                _check_rows(
                    settings,
                    client,
                    options,
                    res,
                    ch_sizes.get(res.chain),
                    incremental,
                    report,
                    committed,
                    rows_bar,
                )
        finally:
            rows_bar.close()
    report.finished = time.time()
    if options.state_file is not None:
        _save(settings, options, options.state_file, states, report, incremental.after)
    return report


def _plan(
    settings: Settings,
    ring: KeyRing,
    options: VerifyOptions,
    partitions: list[int],
    states: dict[str, ChainState],
    ch_sizes: dict[str, int],
) -> tuple[list[ChainJob], int]:
    """One replay job per chain (from its remembered state unless ``full``), and about how many
    records they will verify."""
    text = keyring_text(ring)
    jobs: list[ChainJob] = []
    total = 0
    consumer = reader(settings)
    try:
        for p in partitions:
            chain = chain_id(settings, p)
            st = None if options.full else states.get(chain)
            notes: tuple[str, ...] = ()
            if options.offsite_dir is not None:
                notes = tuple(offsite.read_notes(options.offsite_dir, chain))
            jobs.append(
                ChainJob(
                    settings,
                    p,
                    text,
                    st,
                    notes,
                    options.require_anchored,
                    ch_sizes.get(chain),
                    options.max_findings,
                    state_check=states.get(chain) if options.full else None,
                )
            )
            low, high = watermarks(consumer, settings.topics.chain, p, options.timeout)
            total += max(0, high - (st.offset if st is not None and st.size else low))
    finally:
        consumer.close()
    return jobs, total


def _replay(
    jobs: list[ChainJob], total: int, processes: int, progress: ProgressFactory
) -> list[ChainResult]:
    """Replay every chain, in ``processes`` processes (0: one per CPU, at most one per chain)."""
    bar = progress(total)
    results: list[ChainResult] = []
    try:
        workers = processes or min(os.cpu_count() or 1, len(jobs))
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(run_job(job, bar.advance))
        else:
            # spawn: a forked child would inherit the parent's chdb and librdkafka threads.
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = [pool.submit(run_job, job) for job in jobs]
                for fut in futures:
                    res = fut.result()
                    bar.advance(res.records_verified)
                    results.append(res)
    finally:
        bar.close()
    return results


@dataclass(slots=True)
class _Incremental:
    """What the SQL check of ClickHouse's rows starts from, and what the next run's will."""

    before: ClickHouseState | None = None  # the last clean check, if it still applies
    changed: list[str] | None = None  # the data parts changed since it
    after: ClickHouseState | None = None  # this check, while every chain is clean and rooted

    def remembered(self, chain: str) -> Remembered | None:
        if self.before is not None and chain in self.before.sizes:
            return Remembered(self.before.sizes[chain], self.before.compacts[chain])
        return None

    def checked(self, chain: str, clean: bool, size: int, compact: bytes | None) -> None:
        """Remember a chain's check; one that is not clean and rooted remembers nothing."""
        if self.after is None:
            return
        if clean and compact is not None:
            self.after.sizes[chain] = size
            self.after.compacts[chain] = compact
        else:
            self.after = None  # only a wholly clean, rooted check is remembered


def _incremental(
    settings: Settings, options: VerifyOptions, parts_now: TableParts, report: Report
) -> _Incremental:
    """The last clean check to start from (unless ``full``, or the table was replaced) and the
    parts changed since, and this run's state to fill in."""
    before = None
    if options.state_file is not None and not options.full:
        before = load_clickhouse_state(options.state_file)
    if before is not None and before.table_uuid != parts_now.uuid:
        report.warnings.append(
            f"table {settings.clickhouse_database}.events was replaced since the last run "
            f"(uuid {before.table_uuid} -> {parts_now.uuid}); every row is checked again"
        )
        before = None
    changed = changed_parts(before.parts, parts_now.parts) if before is not None else None
    after = ClickHouseState(table_uuid=parts_now.uuid, parts=parts_now.parts)
    return _Incremental(before, changed, after)


def _check_rows(
    settings: Settings,
    client: Any,
    options: VerifyOptions,
    res: ChainResult,
    size: int | None,
    incremental: _Incremental,
    report: Report,
    committed: dict[int, int | None] | KafkaUnavailable,
    bar: Progress,
) -> None:
    """Check ClickHouse's ``size`` rows of the replayed chain ``res``, then what the number of
    rows means against the chain and the sink's offsets ``committed`` (read before the rows
    were counted). ``bar`` counts the rows as their pages are checked."""
    if size is None:
        if res.size:
            report.warnings.append(f"ClickHouse holds no rows of chain {res.chain} yet")
        return
    if res.ok and size <= res.size and res.probe_root is None:
        report.warnings.append(
            f"ClickHouse rows of chain {res.chain} end below the remembered head, so their "
            "hashes were checked row by row but not against the chain root; run --full"
        )
    root = res.probe_root if size <= res.size else None
    database = settings.clickhouse_database
    counted = 0

    def advance(n: int) -> None:
        nonlocal counted
        counted += n
        bar.advance(n)

    if options.recompute_outside:
        ch_res = verify_rows(
            res.chain,
            _counting(iter_rows(client, database, res.chain, size), advance),
            expected_columns(res.chain),
            size=size,
            expected_root=root,
            max_findings=options.max_findings,
        )
    else:
        remembered = incremental.remembered(res.chain)
        # The embedded store opened here: ClickHouse decodes the payloads from scratch files
        # (a server, or the owner's socket: the decoded columns are compared in Python).
        scratch_of = getattr(client, "scratch", None)
        ch_res = check_chain(
            client,
            database,
            res.chain,
            size=size,
            expected_root=root,
            max_findings=options.max_findings,
            changed_parts=incremental.changed if remembered is not None else None,
            remembered=remembered,
            scratch=scratch_of() if callable(scratch_of) else None,
            on_rows=advance,
        )
        incremental.checked(res.chain, ch_res.ok and root is not None, size, res.probe_compact)
    if counted < size:
        bar.advance(size - counted)  # rows an incremental run proved unchanged
    _compare_counts(settings, res, size, ch_res, report, committed)
    report.clickhouse.append(ch_res)


_COUNT_EVERY = 1000


def _counting(rows: Iterable[T], advance: Callable[[int], None]) -> Iterator[T]:
    """``rows``, telling ``advance`` every :data:`_COUNT_EVERY` of them."""
    n = 0
    for row in rows:
        yield row
        n += 1
        if n == _COUNT_EVERY:
            advance(n)
            n = 0
    if n:
        advance(n)


def _compare_counts(
    settings: Settings,
    res: ChainResult,
    size: int,
    ch_res: ChainResult,
    report: Report,
    committed: dict[int, int | None] | KafkaUnavailable,
) -> None:
    """What ClickHouse holding ``size`` rows of a chain of ``res.size`` records means: rows
    inserted, rows deleted (missing below the sink's offsets ``committed`` before the rows were
    counted), or a sink behind."""
    if size > res.size and res.ok:
        ch_res.add(
            ClickHouseMismatch(
                f"ClickHouse holds rows of chain {res.chain} up to seq {size - 1} but the "
                f"chain has {res.size} records; rows were inserted",
                chain=res.chain,
                seq=res.size,
                expected=res.size,
                found=size,
            )
        )
    elif size < res.size:
        if isinstance(committed, KafkaUnavailable):
            raise committed
        partition = partition_of(res.chain, settings.topics.raw) or 0
        claimed = seq_below(settings, partition, committed.get(partition))
        if claimed is not None and claimed >= size:
            ch_res.add(
                ClickHouseMismatch(
                    f"ClickHouse holds rows of chain {res.chain} only up to seq "
                    f"{size - 1}, but the sink committed its Kafka offsets past seq "
                    f"{claimed} (stored rows only are committed); rows were deleted",
                    chain=res.chain,
                    seq=size,
                    expected=claimed + 1,
                    found=size,
                )
            )
        else:
            report.warnings.append(
                f"ClickHouse is {res.size - size} record(s) behind chain {res.chain}"
            )


def _save(
    settings: Settings,
    options: VerifyOptions,
    state_file: Path,
    states: dict[str, ChainState],
    report: Report,
    clickhouse_after: ClickHouseState | None,
) -> None:
    """Save where each chain's next run starts and, after a clean SQL check, what it proved of
    ClickHouse (a run that did not check ClickHouse keeps what the last one proved)."""
    new_states: dict[str, ChainState] = dict(states)
    for res in report.chains:
        if res.state is not None:
            new_states[res.chain] = res.state
    if report.clickhouse_checked and not options.recompute_outside and report.ok:
        remember = clickhouse_after
    else:
        remember = None if report.clickhouse_checked else load_clickhouse_state(state_file)
    save_state(state_file, settings.deployment, new_states, remember)
