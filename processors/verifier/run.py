"""One verifier run over a deployment: every chain replayed from Kafka (in parallel processes
with ``jobs``), its ClickHouse rows checked in SQL or, with ``recompute_outside``, in Python,
and the state the next incremental run starts from saved. ``sealtrail verify`` opens the
ClickHouse client and the progress bar and calls :func:`run_verify`."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from processors.integrity.chains import partition_of
from processors.integrity.checkpoint import KeyRing
from processors.integrity.errors import ClickHouseMismatch
from processors.verifier import offsite
from processors.verifier.clickhouse_source import chain_sizes, expected_columns, iter_rows
from processors.verifier.clickhouse_sql import (
    Remembered,
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

__all__ = ["Progress", "VerifyOptions", "run_verify"]


class Progress(Protocol):
    """Counts verified records (a progress bar, or nothing)."""

    def advance(self, n: int) -> None: ...

    def close(self) -> None: ...


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
    progress: Callable[[int], Progress],
) -> Report:
    """Verify every chain in Kafka and, with a ClickHouse ``client`` (read-only), its rows.

    ``progress(total records)`` gives what counts the records as they are verified. The policy
    lives here, not in the CLI: which state a run starts from, what ClickHouse findings mean
    against the chain and the sink's committed offsets, and what the next run remembers."""
    o = options
    state_file, full, offsite_dir, timeout = o.state_file, o.full, o.offsite_dir, o.timeout
    require_anchored, max_findings, jobs = o.require_anchored, o.max_findings, o.jobs
    recompute_outside, sink_group = o.recompute_outside, o.sink_group
    report = Report(deployment=settings.deployment)
    partitions = chain_partitions(settings, timeout=timeout)
    states = load_state(state_file, settings.deployment) if state_file is not None else {}
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
                settings, sink_group or settings.groups.sink, partitions, timeout
            )
        except KafkaUnavailable as exc:
            committed = exc
        # Parts first: rows that arrive in between are checked now and again next run.
        parts_now = table_parts(client, settings.clickhouse_database)
        ch_sizes = chain_sizes(client, settings.clickhouse_database)
    text = keyring_text(ring)
    jobs_list = []
    total = 0
    consumer = reader(settings)
    try:
        for p in partitions:
            chain = chain_id(settings, p)
            st = None if full else states.get(chain)
            notes: tuple[str, ...] = ()
            if offsite_dir is not None:
                notes = tuple(offsite.read_notes(offsite_dir, chain))
            probe = ch_sizes.get(chain)
            jobs_list.append(
                ChainJob(
                    settings,
                    p,
                    text,
                    st,
                    notes,
                    require_anchored,
                    probe,
                    max_findings,
                    state_check=states.get(chain) if full else None,
                )
            )
            low, high = watermarks(consumer, settings.topics.chain, p, timeout)
            total += max(0, high - (st.offset if st is not None and st.size else low))
    finally:
        consumer.close()
    if offsite_dir is not None:
        known = {chain_id(settings, p) for p in partitions}
        for chain in offsite.chains_in(offsite_dir):
            if chain not in known:
                report.warnings.append(f"offsite checkpoints exist for unknown chain {chain}")

    bar = progress(total)
    results: list[ChainResult] = []
    try:
        workers = jobs or min(os.cpu_count() or 1, len(jobs_list))
        if workers <= 1 or len(jobs_list) <= 1:
            for job in jobs_list:
                results.append(run_job(job, bar.advance))
        else:
            # spawn: a forked child would inherit the parent's chdb and librdkafka threads.
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = [pool.submit(run_job, job) for job in jobs_list]
                for fut in futures:
                    res = fut.result()
                    bar.advance(res.records_verified)
                    results.append(res)
    finally:
        bar.close()
    report.chains = results

    ch_before = None
    changed: list[str] | None = None
    ch_after: ClickHouseState | None = None
    if client is not None and parts_now is not None and not recompute_outside:
        if state_file is not None and not full:
            ch_before = load_clickhouse_state(state_file)
        if ch_before is not None and ch_before.table_uuid != parts_now.uuid:
            report.warnings.append(
                f"table {settings.clickhouse_database}.events was replaced since the last run "
                f"(uuid {ch_before.table_uuid} -> {parts_now.uuid}); every row is checked again"
            )
            ch_before = None
        if ch_before is not None:
            changed = changed_parts(ch_before.parts, parts_now.parts)
        ch_after = ClickHouseState(table_uuid=parts_now.uuid, parts=parts_now.parts)
    if client is not None:
        for res in results:
            size = ch_sizes.get(res.chain)
            if size is None:
                if res.size:
                    report.warnings.append(f"ClickHouse holds no rows of chain {res.chain} yet")
                continue
            if res.ok and size <= res.size and res.probe_root is None:
                report.warnings.append(
                    f"ClickHouse rows of chain {res.chain} end below the remembered head, so their "
                    "hashes were checked row by row but not against the chain root; run --full"
                )
            root = res.probe_root if size <= res.size else None
            if recompute_outside:
                rows = iter_rows(client, settings.clickhouse_database, res.chain, size)
                ch_res = verify_rows(
                    res.chain,
                    rows,
                    expected_columns(res.chain),
                    size=size,
                    expected_root=root,
                    max_findings=max_findings,
                )
            else:
                remembered = None
                if ch_before is not None and res.chain in ch_before.sizes:
                    remembered = Remembered(
                        ch_before.sizes[res.chain], ch_before.compacts[res.chain]
                    )
                ch_res = check_chain(
                    client,
                    settings.clickhouse_database,
                    res.chain,
                    size=size,
                    expected_root=root,
                    max_findings=max_findings,
                    changed_parts=changed if remembered is not None else None,
                    remembered=remembered,
                )
                if ch_after is not None:
                    if ch_res.ok and root is not None and res.probe_compact is not None:
                        ch_after.sizes[res.chain] = size
                        ch_after.compacts[res.chain] = res.probe_compact
                    else:
                        ch_after = None  # only a wholly clean, rooted check is remembered
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
            report.clickhouse.append(ch_res)

    report.finished = time.time()
    if state_file is not None:
        new_states: dict[str, ChainState] = dict(states)
        for res in results:
            if res.state is not None:
                new_states[res.chain] = res.state
        if report.clickhouse_checked and not recompute_outside and report.ok:
            remember = ch_after
        else:
            remember = None if report.clickhouse_checked else load_clickhouse_state(state_file)
        save_state(state_file, settings.deployment, new_states, remember)
    return report
