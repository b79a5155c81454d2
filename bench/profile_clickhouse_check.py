"""Per-statement time of the ClickHouse SQL check at N rows, on the path ``sealtrail verify`` runs.

``python -m bench.profile_clickhouse_check --rows 1000000 [--store DIR] [--writable]``

Fills one chain of N rows into an embedded store (kept in ``--store`` for the next run), opens
it read-only as the CLI does (:func:`sealtrail.infra.reader.open_reader`), runs
:func:`processors.verifier.clickhouse_sql.check_chain` and prints each statement's wall time
(timing around each call, the scratch session's included), biggest first. ``--writable`` runs it
on the owner's session instead.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_verify import _fill_clickhouse
from bench.common import generated_payloads
from processors.integrity.merkle import CompactRange
from processors.integrity.record import ChainHead

CHAIN = "audit.events/0"


class Timed:
    """A client whose ``query`` records (statement kind, wall seconds, process CPU seconds) of
    every call (chdb runs in this process, so its threads' CPU is ours)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[tuple[str, float, float]] = []

    def query(self, sql: str, parameters: Any = None, **kw: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return self.client.query(sql, parameters=parameters, **kw)
        finally:
            self.calls.append((_kind(sql), time.perf_counter() - t0, time.process_time() - c0))

    def append(self, path: Any, sql: str, parameters: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return self.client.append(path, sql, parameters)
        finally:
            self.calls.append(
                (
                    "INTO OUTFILE: " + _kind(sql),
                    time.perf_counter() - t0,
                    time.process_time() - c0,
                )
            )

    def append_all(self, appends: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return self.client.append_all(appends)
        finally:
            self.calls.append(
                (
                    f"INTO OUTFILE, {len(appends)} at once: " + _kind(appends[0].sql),
                    time.perf_counter() - t0,
                    time.process_time() - c0,
                )
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def _kind(sql: str) -> str:
    text = " ".join(sql.split())
    head = re.sub(r"'[^']{40,}'", "'...'", text)[:110]
    return head


def fill(store: Path, rows: int) -> str:
    """Fill the store once (a marker file keeps the root for later runs); return the root."""
    from processors.clickhouse_schema import migrate
    from sealtrail.infra import clickhouse
    from sealtrail.infra.config import Settings

    done = store / "bench-root.json"
    settings = Settings(clickhouse=f"chdb://{store}", clickhouse_database="bench")
    client = clickhouse.connect(settings)
    if done.exists() and json.loads(done.read_text())["rows"] == rows:
        return str(json.loads(done.read_text())["root"])
    migrate(client, "bench")
    head, cr = ChainHead(CHAIN), CompactRange()
    payloads = generated_payloads()
    for lo in range(0, rows, 100_000):
        _fill_clickhouse(client, "bench", CHAIN, head, min(100_000, rows - lo), cr, payloads)
    done.write_text(json.dumps({"rows": rows, "root": cr.root().hex()}))
    return cr.root().hex()


def main() -> None:
    from processors.verifier.clickhouse_sql import check_chain
    from sealtrail.infra import clickhouse
    from sealtrail.infra.config import Settings
    from sealtrail.infra.reader import open_reader
    from sealtrail.infra.scratch_session import ScratchSession

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--store", type=Path, default=Path("/tmp/sealtrail-profile-ch"))
    parser.add_argument("--writable", action="store_true")
    args = parser.parse_args()
    root = bytes.fromhex(fill(args.store, args.rows))
    settings = Settings(clickhouse=f"chdb://{args.store}", clickhouse_database="bench")
    client: Any = (
        clickhouse.connect(settings, create_database=False)
        if args.writable
        else open_reader(settings)
    )
    timed = Timed(client)
    scratch_dir = Path(tempfile.mkdtemp(prefix="profile-ch-check-")) if args.writable else None
    try:
        if scratch_dir is not None:
            scratch = ScratchSession.over(client, scratch_dir, store=str(args.store))
        else:
            scratch = client.scratch()
        timed_scratch: Any = Timed(scratch)
        timed_scratch.calls = timed.calls
        t0 = time.perf_counter()
        result = check_chain(
            timed, "bench", CHAIN, size=args.rows, expected_root=root, scratch=timed_scratch
        )
        total = time.perf_counter() - t0
    finally:
        # The reader's close removes its check session's scratch directory (a run left one in
        # the temp dir each time); the writable run's is ours.
        if scratch_dir is None:
            client.close()
        else:
            shutil.rmtree(scratch_dir, ignore_errors=True)
    assert result.ok and result.records_verified == args.rows, result.findings[:3]
    by: dict[str, list[tuple[float, float]]] = {}
    for kind, wall, cpu in timed.calls:
        by.setdefault(kind, []).append((wall, cpu))
    path = "writable owner session" if args.writable else f"read-only ({client.via})"
    print(f"check_chain, {args.rows} rows, {path}: {total:.2f} s = {args.rows / total:,.0f} rows/s")
    print(
        f"{len(timed.calls)} statements; by kind, biggest first "
        "(count, wall s, share, process CPU s, cores busy):"
    )
    for kind, times in sorted(by.items(), key=lambda kv: -sum(w for w, _c in kv[1])):
        wall, cpu = sum(w for w, _c in times), sum(c for _w, c in times)
        print(
            f"  {len(times):4d}  {wall:7.2f} s  {wall / total:5.1%}  {cpu:6.2f} CPU-s  "
            f"{cpu / max(wall, 1e-9):4.2f}  {kind}"
        )
    print(f"  python between statements: {total - sum(w for _k, w, _c in timed.calls):.2f} s")


if __name__ == "__main__":
    main()
