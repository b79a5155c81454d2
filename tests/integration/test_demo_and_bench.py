"""`make demo` in its quick mode and `make bench` in its tiny mode, so neither can rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import free_port_base

ROOT = Path(__file__).resolve().parents[2]


def test_quick_demo_shows_green_then_red(tmp_path: Path) -> None:
    kafka_port = free_port_base(1)
    webhook_port = free_port_base(2)
    env = dict(os.environ, SEALTRAIL_HOME=str(tmp_path / "home"))
    for name in ("SEALTRAIL_KAFKA", "SEALTRAIL_TOPIC_PREFIX", "SEALTRAIL_CLICKHOUSE"):
        env.pop(name, None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sealtrail.demo",
            "--quick",
            "--stop",
            "--port",
            str(kafka_port),
            "--webhook-port",
            str(webhook_port),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "verifier: exit 0 (verified)" in output
    assert "verifier: exit 1 (integrity violation found), as it should" in output
    assert "FINDING hash_mismatch" in output
    assert "minikube-user" in output  # the history of deployment/nginx-deployment
    assert "stopped 1 broker(s)" in output


def test_tiny_benchmark_runs_every_stage(kafka_bootstrap: str) -> None:
    # A short temp dir of its own (a Unix socket path under it must fit in 107 bytes).
    tmp = Path(tempfile.mkdtemp(prefix="stb-", dir="/tmp"))
    env = dict(os.environ, SEALTRAIL_KAFKA=kafka_bootstrap, TMPDIR=str(tmp))
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # Its stores, brokers' data and logs went into one directory, removed at the end.
    assert not list(tmp.iterdir()), list(tmp.iterdir())
    tmp.rmdir()
    report = json.loads((ROOT / "bench" / "results" / "all-tiny.json").read_text())
    stages = {r["stage"] for r in report["results"]}
    for expected in (
        "no-op transactional relay",
        "chainer, no checkpoints",
        "sink: chain topic -> ClickHouse (chdb)",
        "sink, caught up at 3,000 records/s (CPU)",
        "end to end: webhook 200 -> row queryable",
        "raw pipeline: producer -> topic -> chdb",
        "verify: 2 chains as `verify --full --no-clickhouse` runs them",
        "verify: ClickHouse check, read-only session as `sealtrail verify` runs it",
    ):
        assert expected in stages, stages
    e2e = report["e2e"]
    assert e2e["complete"], e2e
    raw = e2e["raw_pipeline"]
    assert raw["complete"] and raw["queryable_batches"] == e2e["batches"], raw
    # CPU per event of each sealtrail stage and of the raw pipeline's two processes, measured.
    assert {"webhook", "chainer", "sink"} <= set(e2e["processes"]), e2e["processes"]
    assert {"producer", "consumer"} == set(raw["processes"]), raw["processes"]
    for process in [*e2e["processes"].values(), *raw["processes"].values()]:
        assert process["peak_rss_mb"] > 0, process
    assert e2e["processes"]["sink"]["cpu_us_per_event"] > 0
    assert e2e["observer"]["records_scanned"] >= e2e["events"]
    assert e2e["checkpointed_p99_ms"] is not None
    assert all(r["rate"] > 0 for r in report["results"])
    # The caught-up sink's CPU, split by thread, beside the raw consumer's.
    (paced,) = [r for r in report["results"] if r["stage"].startswith("sink, caught up")]
    sink = paced["extra"]["sink"]
    assert sink["records"] == 3_000 and sink["inserts"]["fast"] >= 1, sink
    assert sink["cpu_us_per_record_by_thread"]["loop"] > 0, sink
    assert "insert worker" in sink["cpu_us_per_record_by_thread"], sink  # named in the kernel
    assert paced["extra"]["raw_consumer"]["cpu_us_per_record"] > 0, paced
    # Once per --linger-ms, each with its latency from transaction commit to stored.
    lingers = paced["extra"]["sink_by_linger_ms"]
    assert set(lingers) == {"250", "50", "400"}, lingers
    for linger, run in lingers.items():
        assert run["linger_ms"] == int(linger) and run["inserts"]["fast"] >= 1, run
        assert 0 < run["stored_p50_ms"] <= run["stored_p99_ms"], run
    # The paced run (latency at a load the pipeline carries) and memory as the stream grows.
    paced = e2e["paced"]
    assert paced["complete"] and paced["queryable_p99_ms"] is not None, paced
    memory = report["memory"]
    assert memory["complete"], memory
    for stage in ("webhook", "chainer", "sink"):
        assert memory["processes"][stage]["rss_mb_early"] > 0, memory["processes"]
        assert memory["processes"][stage]["rss_mb_end"] > 0, memory["processes"]
    # ClickHouse's own account of the sink's memory, read through the sink's read-only socket.
    for when in ("early", "end"):
        assert memory["sink_clickhouse_memory"][when]["tracked_mb"] > 0, memory
    assert memory["sink_clickhouse_memory"]["end"]["event_rows"] >= memory["events"], memory
