"""Reliability under faults: real processes die, brokers stop, ClickHouse is away, bursts.

Every test drives the webhook with EventList batches (retrying anything but 200), injects its
fault, lets the pipeline finish, then counts the raw topic, the chain topic and ClickHouse and
runs ``sealtrail verify``. The bar: no acknowledged event lost, no raw record chained twice, no
ClickHouse row twice, verifier green. Short versions run in ``make test``; the long ones
(``@pytest.mark.slow``) in ``make test-faults``. Results: docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealtrail.infra.config import Settings
from sealtrail.infra.topics import init_topics
from sealtrail.stack import LocalKafka
from sealtrail.supervisor import child_env
from tests.conftest import free_port_base
from tests.integration.faults_support import (
    LONG,
    LoadDriver,
    Pipeline,
    Proc,
    assert_exactly_once,
    audit,
    free_port,
    http_status,
    kill_loop,
    leader_of,
    wait_for,
)


def _settings(kafka: str, work: Path) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return Settings(
        kafka=kafka,
        clickhouse=f"chdb://{work / 'ch'}",
        clickhouse_database=f"f_{tag}",
        home=work / "home",
        topic_prefix=f"f{tag}.",
        deployment="sealtrail.faults",
    )


@pytest.fixture(scope="module")
def three_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A private 3-broker KRaft cluster for the broker fault tests (started once per module)."""
    kafka = LocalKafka(tmp_path_factory.mktemp("kafka3"))
    kafka.up(port=free_port_base(3), brokers=3)
    try:
        yield kafka
    finally:
        kafka.down()


def _bootstrap(kafka: LocalKafka) -> str:
    state = kafka.load_state()
    assert state is not None
    return state.bootstrap


# ------------------------------------------------------------------------ 3: SIGKILL storm


def _kill_storm(base_settings: Settings, tmp_path: Path, kills: int, seconds: float,
                rate: float) -> None:  # fmt: skip
    started = time.monotonic()
    settings = base_settings.with_(clickhouse=f"chdb://{tmp_path / 'ch'}")
    init_topics(settings, partitions=3, replication_factor=1)
    pipe = Pipeline(settings, tmp_path / "work")
    pipe.webhook()
    chainer, sink = pipe.chainer(), pipe.sink()
    total = int(rate * seconds)
    driver = LoadDriver(pipe.url, list(pipe.tokens), batch_size=50).start([(total, rate)])
    killer = kill_loop([chainer, sink], kills, (3.0, seconds - 2.0), random.Random(11))
    assert driver.wait(seconds + 120), "the load driver did not finish"
    killer.join(30)
    assert chainer.kills == kills and sink.kills == kills
    pipe.finish()
    result = audit(pipe, "SIGKILL chainer+sink", f"{kills} kills each in {seconds:.0f}s",
                   driver, started)  # fmt: skip
    assert result.acked == result.sent, driver.stats
    assert_exactly_once(result)


def test_sigkill_chainer_and_sink_during_stream(base_settings: Settings, tmp_path: Path) -> None:
    _kill_storm(base_settings, tmp_path, kills=6, seconds=50, rate=60)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_sigkill_chainer_and_sink_long(base_settings: Settings, tmp_path: Path) -> None:
    if not LONG:
        pytest.skip("long fault run: use 'make test-faults' (SEALTRAIL_FAULTS=long)")
    _kill_storm(base_settings, tmp_path, kills=24, seconds=600, rate=100)


# ------------------------------------------------------------------------ 1: broker failover


def _broker_failover(kafka: LocalKafka, tmp_path: Path, rounds: int, rate: float,
                     hold: float) -> None:  # fmt: skip
    started = time.monotonic()
    settings = _settings(_bootstrap(kafka), tmp_path)
    init_topics(settings, partitions=3, replication_factor=3)
    pipe = Pipeline(settings, tmp_path / "work")
    pipe.webhook()
    pipe.chainer()
    pipe.sink()
    seconds = rounds * 2 * hold + 6
    driver = LoadDriver(pipe.url, list(pipe.tokens), batch_size=50).start(
        [(int(rate * seconds), rate)]
    )
    time.sleep(3)
    stopped: list[int] = []
    victim = leader_of(settings, settings.topics.raw, 0)
    for n in range(rounds):
        # Alternate a clean stop (controlled shutdown) and a crash (SIGKILL).
        kafka.stop_node(victim, hard=n % 2 == 1)
        stopped.append(victim)
        time.sleep(hold)
        kafka.start_node(victim)
        time.sleep(hold)
        # Next round: another node than the one just brought back (the leader moved).
        others = [i for i in (1, 2, 3) if i != victim]
        current = leader_of(settings, settings.topics.raw, 0)
        victim = current if current != victim else others[n % 2]
    assert driver.wait(seconds + 180), "the load driver did not finish"
    # The live chainer and sink must get over the fault by themselves (fenced consumers,
    # hung transactional calls), not be rescued by the harness's --once runs.
    pipe.finish(catch_up_s=90)
    assert not pipe.finished_by_once, pipe.procs["chainer"].log_text(6000)
    result = audit(pipe, "broker stop/start (3 brokers, RF 3, min ISR 2)",
                   f"{rounds} brokers stopped (SIGTERM, SIGKILL alternating): {stopped}",
                   driver, started)  # fmt: skip
    assert result.acked == result.sent, driver.stats
    assert_exactly_once(result, allow_raw_duplicates=True)


def test_partition_leader_broker_stopped_and_restarted(
    three_brokers: LocalKafka, tmp_path: Path
) -> None:
    _broker_failover(three_brokers, tmp_path, rounds=2, rate=60, hold=6)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_partition_leader_broker_failover_long(three_brokers: LocalKafka, tmp_path: Path) -> None:
    if not LONG:
        pytest.skip("long fault run: use 'make test-faults' (SEALTRAIL_FAULTS=long)")
    _broker_failover(three_brokers, tmp_path, rounds=10, rate=100, hold=20)


# ------------------------------------------------------------------------ 2: whole cluster


def _cluster_restart(kafka: LocalKafka, tmp_path: Path, restarts: int, rate: float,
                     down_s: float, seconds: float) -> None:  # fmt: skip
    started = time.monotonic()
    state = kafka.load_state()
    assert state is not None
    settings = _settings(state.bootstrap, tmp_path)
    init_topics(settings, partitions=3, replication_factor=3)
    pipe = Pipeline(settings, tmp_path / "work")
    pipe.webhook()
    pipe.chainer()
    pipe.sink()
    driver = LoadDriver(pipe.url, list(pipe.tokens), batch_size=50).start(
        [(int(rate * seconds), rate)]
    )
    gap = seconds / (restarts + 1)
    for _ in range(restarts):
        time.sleep(gap)
        # All brokers crash at once (SIGKILL: like a power cut, and quicker than a shutdown).
        for node in state.nodes:
            kafka.stop_node(node.node_id, hard=True)
        time.sleep(down_s)
        kafka.up(port=state.port, brokers=3)
    assert driver.wait(seconds + 240), "the load driver did not finish"
    # The live chainer and sink must get over the fault by themselves (fenced consumers,
    # hung transactional calls), not be rescued by the harness's --once runs.
    pipe.finish(catch_up_s=90)
    assert not pipe.finished_by_once, pipe.procs["chainer"].log_text(6000)
    result = audit(pipe, "whole-cluster crash (3 brokers SIGKILLed, then started)",
                   f"{restarts} restart(s), {down_s:.0f}s down", driver, started)  # fmt: skip
    assert result.acked == result.sent, driver.stats
    assert driver.stats.status_503 + driver.stats.connection_errors > 0, driver.stats
    assert_exactly_once(result, allow_raw_duplicates=True)


def test_whole_cluster_restart_mid_stream(three_brokers: LocalKafka, tmp_path: Path) -> None:
    _cluster_restart(three_brokers, tmp_path, restarts=1, rate=60, down_s=3, seconds=20)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_whole_cluster_restart_long(three_brokers: LocalKafka, tmp_path: Path) -> None:
    if not LONG:
        pytest.skip("long fault run: use 'make test-faults' (SEALTRAIL_FAULTS=long)")
    _cluster_restart(three_brokers, tmp_path, restarts=4, rate=100, down_s=15, seconds=300)


# ------------------------------------------------------------------------ 4: webhook SIGKILL


def _webhook_kills(base_settings: Settings, tmp_path: Path, kills: int, seconds: float,
                   rate: float) -> None:  # fmt: skip
    started = time.monotonic()
    settings = base_settings.with_(clickhouse=f"chdb://{tmp_path / 'ch'}")
    init_topics(settings, partitions=3, replication_factor=1)
    pipe = Pipeline(settings, tmp_path / "work")
    webhook = pipe.webhook()
    pipe.chainer()
    pipe.sink()
    # Many concurrent senders so that kills land while requests wait for Kafka acks.
    driver = LoadDriver(pipe.url, list(pipe.tokens), batch_size=100, workers=8).start(
        [(int(rate * seconds), rate)]
    )
    killer = kill_loop([webhook], kills, (2.0, seconds - 2.0), random.Random(5))
    assert driver.wait(seconds + 180), "the load driver did not finish"
    killer.join(30)
    assert webhook.kills == kills
    pipe.finish()
    result = audit(pipe, "SIGKILL webhook with requests in flight",
                   f"{kills} kills in {seconds:.0f}s", driver, started,
                   dedup_expected=True)  # fmt: skip
    assert result.acked == result.sent, driver.stats
    assert driver.stats.connection_errors > 0, driver.stats  # the kills hit live requests
    assert_exactly_once(result, allow_raw_duplicates=True)
    # Redelivered batches are kept in the chain; the analytics view counts each event once.
    assert result.dedup_rows == result.acked, result.row()


def test_sigkill_webhook_with_requests_in_flight(base_settings: Settings, tmp_path: Path) -> None:
    _webhook_kills(base_settings, tmp_path, kills=4, seconds=16, rate=200)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_sigkill_webhook_long(base_settings: Settings, tmp_path: Path) -> None:
    if not LONG:
        pytest.skip("long fault run: use 'make test-faults' (SEALTRAIL_FAULTS=long)")
    _webhook_kills(base_settings, tmp_path, kills=30, seconds=300, rate=200)


# ------------------------------------------------------------------------ 6: burst


def _burst(base_settings: Settings, stack_home: Path, tmp_path: Path, sustained: float,
           base_s: float, burst_s: float, stall_s: float) -> None:  # fmt: skip
    started = time.monotonic()
    settings = base_settings.with_(clickhouse=f"chdb://{tmp_path / 'ch'}")
    init_topics(settings, partitions=3, replication_factor=1)
    pipe = Pipeline(settings, tmp_path / "work")
    # A small in-flight bound and short ack timeout: the webhook must push back, not buffer.
    webhook = pipe.webhook("--max-inflight", "300", "--ack-timeout", "3")
    chainer, sink = pipe.chainer(), pipe.sink()
    procs = {"webhook": webhook, "chainer": chainer, "sink": sink}
    baseline: dict[str, int] = {}  # RSS at the end of the sustained phase, before the burst
    peak = {name: 0 for name in procs}
    driver = LoadDriver(pipe.url, list(pipe.tokens), batch_size=100, workers=12).start(
        [(int(sustained * base_s), sustained), (int(sustained * 10 * burst_s), sustained * 10),
         (int(sustained * base_s), sustained)]
    )  # fmt: skip
    broker = LocalKafka(stack_home).load_state()
    assert broker is not None and broker.nodes[0].pid
    stalled = False
    t0 = time.monotonic()
    while not driver.wait(0.5):
        for name, proc in procs.items():
            peak[name] = max(peak[name], proc.rss())
        if not baseline and time.monotonic() - t0 >= base_s:
            baseline = {name: proc.rss() for name, proc in procs.items()}
        if not stalled and time.monotonic() - t0 > base_s + burst_s / 3:
            # The broker stalls (like a long GC pause) in the middle of the burst: acks lag.
            os.kill(broker.nodes[0].pid, signal.SIGSTOP)
            time.sleep(stall_s)
            os.kill(broker.nodes[0].pid, signal.SIGCONT)
            stalled = True
        if time.monotonic() - t0 > base_s * 2 + burst_s + 240:
            break
    assert driver.wait(1), "the load driver did not finish"
    pipe.finish()
    mib = {n: round(v / 2**20) for n, v in peak.items()}
    base_mib = {n: round(v / 2**20) for n, v in baseline.items()}
    result = audit(pipe, f"burst 10x sustained rate + {stall_s:.0f}s broker stall",
                   f"{burst_s:.0f}s at {sustained * 10:.0f} ev/s; RSS MiB base {base_mib} "
                   f"peak {mib}; 503s {driver.stats.status_503}", driver, started)  # fmt: skip
    assert result.acked == result.sent, driver.stats
    assert driver.stats.status_503 > 0 and driver.stats.retry_after_503 == driver.stats.status_503
    # Ceilings: a few times the idle size, far below what buffering the burst would need.
    assert mib["webhook"] < 250, mib
    assert mib["chainer"] < 300, mib
    assert mib["sink"] < 1200, mib
    assert_exactly_once(result, allow_raw_duplicates=True)


def test_burst_ten_times_sustained_rate(
    base_settings: Settings, stack_home: Path, tmp_path: Path
) -> None:
    _burst(base_settings, stack_home, tmp_path, sustained=100, base_s=5, burst_s=15, stall_s=4)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_burst_long(base_settings: Settings, stack_home: Path, tmp_path: Path) -> None:
    if not LONG:
        pytest.skip("long fault run: use 'make test-faults' (SEALTRAIL_FAULTS=long)")
    _burst(base_settings, stack_home, tmp_path, sustained=150, base_s=30, burst_s=60, stall_s=8)


# ------------------------------------------------------------------------ 5: ClickHouse away


HOLDER = (
    "import time, sys\n"
    "from sealtrail.infra.clickhouse import connect\n"
    "from sealtrail.infra.config import Settings\n"
    "connect(Settings.from_env())\n"
    "print('holding', flush=True)\n"
    "time.sleep(float(sys.argv[1]))\n"
)


def _run_pipeline(pipe: Pipeline, health_port: int) -> Proc:
    """The whole pipeline under ``sealtrail run`` (which restarts a child that exits)."""
    proc = Proc(
        "run",
        ["run", "--listen", f"127.0.0.1:{pipe.port}", "--tokens", str(pipe.token_file),
         "--allow-plain-http-tokens",
         "--signing-key", str(pipe.key), "--health-listen", f"127.0.0.1:{health_port}"],
        pipe.settings, pipe.logs, keep_alive=False,
    )  # fmt: skip
    pipe.procs["run"] = proc.start()
    pipe.sink_group = pipe.settings.groups.sink  # ``sealtrail run``'s sink
    assert wait_for(lambda: http_status(pipe.url + "healthz") == 200, 60), proc.log_text()
    return proc


# In `make test-faults` only: `make test` keeps the disk-full case, and test_run.py and
# test_cli_errors.py cover the supervisor restart and the held-store message on their own.
@pytest.mark.slow
def test_clickhouse_store_held_by_another_process(base_settings: Settings, tmp_path: Path) -> None:
    started = time.monotonic()
    settings = base_settings.with_(clickhouse=f"chdb://{tmp_path / 'ch'}")
    init_topics(settings, partitions=3, replication_factor=1)
    pipe = Pipeline(settings, tmp_path / "work")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "10"], env=child_env(settings),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and b"holding" in holder.stdout.readline()
        # On its own the sink refuses in one sentence naming the holder (exit 2, no traceback).
        alone = subprocess.run(
            [sys.executable, "-m", "sealtrail", "sink", "--once"], env=child_env(settings),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert alone.returncode == 2, alone.stderr
        assert f"process {holder.pid}" in alone.stderr and "in use by" in alone.stderr
        assert "Traceback" not in alone.stderr
        run = _run_pipeline(pipe, free_port())
        driver = LoadDriver(pipe.url, list(pipe.tokens), batch_size=50).start([(1000, 75)])
        assert driver.wait(120), "the load driver did not finish"
        holder.wait(30)
        # Under ``sealtrail run`` the sink is restarted until the store is free again.
        assert wait_for(lambda: "sink exited with code 2" in run.log_text(100_000), 5)
    finally:
        holder.kill()
        holder.wait(10)
    pipe.finish()
    log = run.log_text(1_000_000)
    restarts = log.count("sink exited with code 2")
    result = audit(pipe, "ClickHouse store held by another process (sealtrail run)",
                   f"store held 10s; sink exited {restarts}x and was restarted", driver,
                   started)  # fmt: skip
    assert result.acked == result.sent, driver.stats
    assert_exactly_once(result)


def test_clickhouse_disk_full(base_settings: Settings, tmp_path: Path) -> None:
    started = time.monotonic()
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): disk-full case not run")
    try:
        settings = base_settings.with_(clickhouse=f"chdb://{mount / 'ch'}")
        init_topics(settings, partitions=3, replication_factor=1)
        pipe = Pipeline(settings, tmp_path / "work")
        pipe.webhook()
        pipe.chainer()
        sink = pipe.sink()
        driver = LoadDriver(pipe.url, list(pipe.tokens), batch_size=50).start([(1500, 80)])
        time.sleep(4)
        filler = mount / "filler"
        with open(filler, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * (1 << 20))
                    out.flush()
            except OSError:
                pass  # ENOSPC: the store's disk is full now
        time.sleep(8)
        full_log = sink.log_text(200_000)
        filler.unlink()
        assert driver.wait(120), "the load driver did not finish"
        pipe.finish()
        exits = sink.unexpected_exits
        result = audit(pipe, "ClickHouse disk full (64 MiB tmpfs filled for 8s)",
                       f"disk full once; sink exits while full: {len(exits)}", driver,
                       started)  # fmt: skip
        assert "failed" in full_log and "retrying" in full_log, full_log[-3000:]
        assert result.acked == result.sent, driver.stats
        assert_exactly_once(result)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
