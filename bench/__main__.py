"""``make bench``: every stage beside its raw baseline, then the whole pipeline, in one run.

One local broker serves every stage (started here unless SEALTRAIL_KAFKA names one). Prints one
table (stage, rate, baseline rate, ratio, p50/p99, CPU-us per event, peak RSS) and writes
bench/results/all.json (a run of some stages: only-<stages>.json, e.g. only-e2e.json). End to
end runs beside a raw pipeline (producer -> topic -> consumer ->
chdb) on the same broker and prints CPU-us per event of every process (bench/bench_e2e.py).

python -m bench [--tiny] [--keep] [--only producers,chainer,sink,sink-paced,verify,e2e,memory]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

from bench.common import (
    KEEP_HELP,
    Result,
    bench_broker,
    machine,
    print_table,
    run_directory,
    write_json,
)

SIZES = {
    # stage: (normal, tiny)
    "producers": (40_000, 2_000),
    "chainer": (200_000, 2_000),  # 3-4 s a stage: 40,000 took under a second, too noisy
    "sink": (200_000, 2_000),
    "sink_paced": (100_000, 3_000),  # records written at SINK_PACE records/s
    "verify": (50_000, 2_000),
    "verify_chains": (200_000, 2_000),  # in 2 chains, as the CLI verifies a deployment
    "proofs": (10_000_000, 10_000),
    "clickhouse_check": (1_000_000, 20_000),
    "e2e": (100_000, 2_000),
    "memory": (1_000_000, 10_000),  # RSS after a tenth of these and after all
}


def _producers(n: int, kafka: str) -> list[Result]:
    from bench import bench_producers

    out = bench_producers.run(n, kafka)
    return [Result(**{k: v for k, v in r.items() if k != "ratio"}) for r in out.values()]


def _chainer(n: int, kafka: str) -> list[Result]:
    from bench import bench_chainer

    out = bench_chainer.run(n, kafka)
    extra = {
        "records": n,
        "peak_rss_mb_N": out["peak_rss_mb_N"],
        "peak_rss_mb_2N": out["peak_rss_mb_2N"],
    }
    return [
        Result("plain relay (consume -> produce)", out["a_plain_relay"]),
        Result("no-op transactional relay", out["b_txn_relay"]),
        Result(
            "chainer, no checkpoints",
            out["c_chainer"],
            baseline="no-op transactional relay",
            baseline_rate=out["b_txn_relay"],
            peak_rss_mb=out["peak_rss_mb_2N"],
            extra=extra,
        ),
        Result(
            "chainer, checkpoints every 1000 / 1 s",
            out["d_chainer_checkpoints"],
            baseline="chainer, no checkpoints",
            baseline_rate=out["c_chainer"],
        ),
    ]


# Records/s the caught-up sink is offered (normal, tiny): a load the pipeline carries here.
SINK_PACE = (7_000, 3_000)
SINK_LINGERS_MS = (250, 50, 400)  # sealtrail sink's default --linger-ms, a shorter, a longer


def _sink_paced(n: int, rate: float, kafka: str) -> list[Result]:
    from bench import bench_sink_paced

    out = bench_sink_paced.run(rate, n, bootstrap=kafka, lingers=SINK_LINGERS_MS)
    sink, raw = out["sink"], out["raw_consumer"]
    print(json.dumps(out, indent=2))
    return [
        Result(
            f"sink, caught up at {rate:,.0f} records/s (CPU)",
            1e6 / sink["cpu_us_per_record"],
            "records/CPU-s",
            "raw consumer -> chdb, same records and pace",
            1e6 / raw["cpu_us_per_record"],
            cpu_us_per_event=sink["cpu_us_per_record"],
            extra=out,
        )
    ]


def _sink(n: int, kafka: str) -> list[Result]:
    from bench import bench_sink

    out = bench_sink.run(n, bootstrap=kafka)
    return [
        Result(
            "sink: chain topic -> ClickHouse (chdb)",
            out["sink_rows_per_s"],
            "rows/s",
            "raw clickhouse-connect insert",
            out["raw_insert_rows_per_s"],
            extra=out,
        ),
        Result(
            "sink insert path (decode + insert)",
            out["sink_insert_path_rows_per_s"],
            "rows/s",
            "raw clickhouse-connect insert",
            out["raw_insert_rows_per_s"],
        ),
    ]


def _verify(
    n: int, proof_n: int, ch_rows: int, chains_n: int
) -> tuple[list[Result], dict[str, Any]]:
    from bench import bench_verify

    out = bench_verify.run(n, proof_n, ch_rows, chains_n)
    results = [Result(**{k: v for k, v in r.items() if k != "ratio"}) for r in out["results"]]
    return results, out["proofs"]


def _e2e(n: int, kafka: str) -> tuple[list[Result], dict[str, Any]]:
    from bench import bench_e2e

    out = bench_e2e.run(n, bootstrap=kafka)
    print()
    bench_e2e.print_processes(out)
    return bench_e2e.result_lines(out), out


def _memory(n: int, kafka: str, pace: float) -> tuple[list[Result], dict[str, Any]]:
    from bench import bench_e2e

    out = bench_e2e.run_memory(n, n // 10, pace, bootstrap=kafka)
    return bench_e2e.memory_lines(out), out


STAGES = ("producers", "chainer", "sink", "sink-paced", "verify", "e2e", "memory")


def results_name(tiny: bool, stages: set[str]) -> str:
    """``all`` (``all-tiny``) for a run of every stage; a run of some writes its own file
    (``only-e2e.json``), so it does not replace the whole run's results."""
    name = "all" if stages >= set(STAGES) else "only-" + "-".join(s for s in STAGES if s in stages)
    return f"{name}-tiny" if tiny else name


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop our children on the way out
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: checks it runs (CI)")
    parser.add_argument(
        "--only",
        default=",".join(STAGES),
        help=f"comma-separated stages to run (default: all of {','.join(STAGES)})",
    )
    parser.add_argument("--keep", action="store_true", help=KEEP_HELP)
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown or not wanted:
        parser.error(
            f"--only: {'unknown stage ' + ', '.join(map(repr, unknown)) if unknown else 'no stage'}"
            f"; choose from {','.join(STAGES)}"
        )
    # Every stage's stores, brokers' data and logs (gigabytes at full size) go in one directory
    # of this run, children's included, removed once the run succeeds.
    with run_directory(args.keep):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    wanted = {s.strip() for s in args.only.split(",") if s.strip()}
    size = {stage: counts[1 if args.tiny else 0] for stage, counts in SIZES.items()}
    results: list[Result] = []
    extra: dict[str, Any] = {"tiny": args.tiny, "sizes": size}
    started = time.monotonic()
    with bench_broker() as kafka:
        os.environ["SEALTRAIL_KAFKA"] = kafka  # every stage uses this one broker
        steps = [
            ("producers", lambda: results.extend(_producers(size["producers"], kafka))),
            ("chainer", lambda: results.extend(_chainer(size["chainer"], kafka))),
            ("sink", lambda: results.extend(_sink(size["sink"], kafka))),
            (
                "sink-paced",
                lambda: results.extend(
                    _sink_paced(size["sink_paced"], SINK_PACE[1 if args.tiny else 0], kafka)
                ),
            ),
        ]
        for name, step in steps:
            if name in wanted:
                print(f"\n### {name}", flush=True)
                step()
        if "verify" in wanted:
            print("\n### verify", flush=True)
            verify_results, proofs = _verify(
                size["verify"], size["proofs"], size["clickhouse_check"], size["verify_chains"]
            )
            results.extend(verify_results)
            extra["proofs"] = proofs
        if "e2e" in wanted:
            print("\n### end to end", flush=True)
            e2e_results, e2e = _e2e(size["e2e"], kafka)
            results.extend(e2e_results)
            extra["e2e"] = e2e
        if "memory" in wanted:
            print("\n### memory as the stream grows", flush=True)
            # At the rate the paced end-to-end run was offered (a load the pipeline carries).
            pace = extra["e2e"]["paced"]["offered_events_per_second"] if "e2e" in extra else 4000
            memory_results, memory = _memory(size["memory"], kafka, pace)
            results.extend(memory_results)
            extra["memory"] = memory
    extra["seconds"] = round(time.monotonic() - started, 1)
    print("\n## sealtrail benchmark", json.dumps(machine()))
    print_table(results)
    path = write_json(results_name(args.tiny, wanted), results, extra)
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
