"""``--metrics-listen`` of ``sealtrail chain`` and ``sealtrail sink``, and ``sealtrail run``'s
``/metrics``, scraped while records flow through the real broker and chdb."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sealtrail.infra.config import Settings
from sealtrail.supervisor import child_env
from tests.conftest import free_port_base
from tests.integration.chainer_support import (
    PARTITIONS,
    chainer_env,
    produce_raw,
    sealtrail_bin,
    wait_until,
)
from tests.integration.sink_support import sample_payloads

# Every label the chainer's and the sink's metrics carry.
LABELS = {"topic", "partition", "chain", "kind", "table", "path", "le"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples | None:
    """Every sample of a /metrics page, by (name, sorted labels); None if it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples | None, name: str, **labels: str) -> float | None:
    if samples is None:
        return None
    return samples.get((name, tuple(sorted(labels.items()))))


def by_label(samples: Samples | None, name: str, label: str) -> dict[str, float]:
    if samples is None:
        return {}
    return {
        dict(key)[label]: v for (n, key), v in samples.items() if n == name and label in dict(key)
    }


def values(samples: Samples | None, name: str) -> list[float]:
    return [v for (n, _), v in (samples or {}).items() if n == name]


class Reached:
    """A predicate over a fresh scrape, for wait_until; remembers the last scrape for asserts."""

    def __init__(self, url: str, check: object) -> None:
        self.url = url
        self.check = check
        self.last: Samples | None = None

    def __call__(self) -> bool:
        self.last = scrape(self.url)
        return self.last is not None and bool(self.check(self.last))  # type: ignore[operator]

    def wait(self, timeout: float, what: str) -> None:
        try:
            wait_until(self, timeout, what)
        except AssertionError:
            shown = "\n".join(
                f"{name}{dict(labels)} {v}"
                for (name, labels), v in (self.last or {}).items()
                if not name.endswith(("_bucket", "_created")) and "_process_" not in name
            )
            raise AssertionError(f"timed out waiting for {what}; last scrape:\n{shown}") from None


def chainer_caught_up(s: Samples, total: int, sizes: dict[str, float]) -> bool:
    return (
        value(s, "sealtrail_chainer_records_out_total") == total
        and by_label(s, "sealtrail_chainer_checkpoint_tree_size", "chain") == sizes
        and by_label(s, "sealtrail_chainer_consumer_lag", "partition")
        == {str(p): 0.0 for p in range(PARTITIONS)}
    )


def sink_caught_up(s: Samples, total: int, sizes: dict[str, float]) -> bool:
    return (
        value(s, "sealtrail_sink_records_out_total") == total
        and by_label(s, "sealtrail_sink_checkpoint_tree_size", "chain") == sizes
        # every chain and checkpoint topic partition, all stored
        and values(s, "sealtrail_sink_consumer_lag") == [0.0] * (2 * PARTITIONS)
    )


def payloads(count: int, start: int) -> list[tuple[int, bytes]]:
    samples = sample_payloads()
    return [((start + i) % PARTITIONS, samples[(start + i) % len(samples)]) for i in range(count)]


def per_partition(items: list[tuple[int, bytes]]) -> dict[int, int]:
    counts = dict.fromkeys(range(PARTITIONS), 0)
    for partition, _ in items:
        counts[partition] += 1
    return counts


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_chainer_and_sink_metrics_move_as_records_flow(
    settings: Settings,
    keypair: tuple[Path, Path],
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    chain_port = free_port_base(2)
    sink_port = chain_port + 1
    env = chainer_env(
        settings,
        SEALTRAIL_SIGNING_KEY=str(keypair[0]),
        SEALTRAIL_CLICKHOUSE=f"chdb://{tmp_path / 'ch'}",
        SEALTRAIL_CLICKHOUSE_DATABASE=settings.clickhouse_database,
        SEALTRAIL_CHAIN_METRICS_LISTEN=f"127.0.0.1:{chain_port}",  # the env var works too
    )
    log = (tmp_path / "processes.log").open("wb")
    processes.append(
        subprocess.Popen(
            [sealtrail_bin(), "chain", "--instance-id", "t-metrics"]
            + ["--checkpoint-records", "1000000", "--checkpoint-seconds", "0.5"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    processes.append(
        subprocess.Popen(
            [sealtrail_bin(), "sink", "--batch-ms", "100"]
            + ["--metrics-listen", f"127.0.0.1:{sink_port}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    chain_url = f"http://127.0.0.1:{chain_port}/metrics"
    sink_url = f"http://127.0.0.1:{sink_port}/metrics"
    wait_until(lambda: scrape(chain_url) is not None, 60, "the chainer's /metrics")
    wait_until(lambda: scrape(sink_url) is not None, 60, "the sink's /metrics")
    raw = settings.topics.raw
    chain_names = {p: f"{raw}/{p}" for p in range(PARTITIONS)}
    sent: list[tuple[int, bytes]] = []
    for batch in (40, 65):  # two rounds: the numbers rise by what each one produced
        items = payloads(batch, len(sent))
        before_in = value(scrape(chain_url), "sealtrail_chainer_records_in_total") or 0
        before_out = value(scrape(sink_url), "sealtrail_sink_records_out_total") or 0
        produce_raw(settings, items)
        sent += items
        sizes = {chain_names[p]: float(n) for p, n in per_partition(sent).items()}

        chainer = Reached(
            chain_url,
            functools.partial(chainer_caught_up, total=len(sent), sizes=sizes),
        )
        chainer.wait(90, f"the chainer's metrics after {len(sent)} records")
        assert value(chainer.last, "sealtrail_chainer_records_in_total") == before_in + batch
        assert (value(chainer.last, "sealtrail_chainer_batch_records_sum") or 0) >= len(sent)
        assert (value(chainer.last, "sealtrail_chainer_transaction_seconds_count") or 0) >= 1
        ages = by_label(chainer.last, "sealtrail_chainer_checkpoint_age_seconds", "chain")
        assert set(ages) == set(sizes) and all(0 <= age < 120 for age in ages.values())

        sink = Reached(
            sink_url,
            functools.partial(sink_caught_up, total=len(sent), sizes=sizes),
        )
        sink.wait(90, f"the sink's metrics after {len(sent)} records")
        assert value(sink.last, "sealtrail_sink_records_out_total") == before_out + batch
        assert (value(sink.last, "sealtrail_sink_records_in_total") or 0) >= len(sent)
        fast = value(sink.last, "sealtrail_sink_fast_path_batches_total") or 0
        python = value(sink.last, "sealtrail_sink_python_batches_total") or 0
        assert fast + python >= 1
        assert value(sink.last, "sealtrail_sink_fast_path_fallbacks_total") == 0
        inserts = by_label(sink.last, "sealtrail_sink_insert_duration_seconds_count", "table")
        assert inserts.get("events", 0) >= 1 and inserts.get("checkpoints", 0) >= 1
    # Counts only: no key material, no event data; labels name topics, partitions and chains.
    seed = keypair[0].read_text(encoding="utf-8").strip().split("+", 4)[4]
    for url in (chain_url, sink_url):
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            page = response.read().decode()
        assert seed not in page
        for family in text_string_to_metric_families(page):
            assert family.name.startswith("sealtrail_"), family.name
            for s in family.samples:
                assert set(s.labels) <= LABELS, s
    # Nothing else on the page: a request elsewhere is a 404.
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{chain_port}/", timeout=5)  # noqa: S310
    assert missing.value.code == 404


def test_run_serves_the_metrics_of_every_stage(settings: Settings, tmp_path: Path) -> None:
    listen_port = free_port_base(2)
    health_port = listen_port + 1
    env = child_env(settings.with_(clickhouse=f"chdb://{tmp_path / 'ch'}"))
    log = (tmp_path / "run.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "sealtrail", "run", "--listen", f"127.0.0.1:{listen_port}"]
        + ["--insecure-no-auth", "--cluster", "c1"]
        + ["--health-listen", f"127.0.0.1:{health_port}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{health_port}/metrics"
    try:
        items = payloads(30, 0)
        produce_raw(settings, items)
        every_stage = Reached(
            url,
            lambda s: (
                value(s, "sealtrail_chainer_records_out_total") == len(items)
                and value(s, "sealtrail_sink_records_out_total") == len(items)
                and value(s, "sealtrail_webhook_received_events_total") is not None
            ),
        )
        every_stage.wait(120, "run's /metrics with every stage")
        assert value(every_stage.last, "sealtrail_run_child_up", child="chainer") == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(90)
    assert process.returncode == 0, (tmp_path / "run.log").read_text(errors="replace")[-3000:]
