"""The real Kubernetes audit client against the real pipeline: every event it hands over is kept.

The client is k8s.io/apiserver's webhook backend in its buffered backend with kube-apiserver's
default --audit-webhook-batch-* settings (tests/tools/auditclient), talking HTTPS with a bearer
token to the webhook of ``sealtrail run`` (webhook, chainer and sink as supervised processes).
Each test asserts that every event the client handed over is in ClickHouse exactly once, by
(auditID, stage) in ``events_dedup`` (the webhook may be sent a batch twice after a failure; both
copies are chained, and every raw copy must hold the same bytes), with ``original`` equal to the
bytes the client put on the wire, and that ``sealtrail verify --full`` exits 0.

The client re-serializes each event (decode, convert, encode as kube-apiserver does), so the
bytes compared are the client's own: it writes each event's bytes as they appear in its
EventList bodies (see wireBytes in main.go).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sealtrail.infra.config import Settings
from tests.integration.auditclient_support import (
    ClientRun,
    Pipeline,
    key_of,
    large_event,
    ordinary_events,
    pipeline,
    run_client,
    write_kubeconfig,
)
from tests.tools.auditclient_build import auditclient_binary

MIB = 1024 * 1024
BATCH = 400  # kube-apiserver's --audit-webhook-batch-max-size default

# The first test of a fresh machine also builds the client (about 1.5 min on 2 cores).
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def auditclient() -> Path:
    return auditclient_binary()


@pytest.fixture
def line(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    yield from pipeline(settings, tmp_path / "pipeline")


def test_the_client_reports_every_batch_it_drops(auditclient: Path, tmp_path: Path) -> None:
    # What makes "no errors" in the tests below mean something: with nothing listening, the
    # client's summary names the dropped batch and every auditID in it. (A short initial backoff
    # here only: the default 10 s would make this test wait 90 s for the same answer.)
    from tests.conftest import free_port_base
    from tests.integration.test_attack_webhook import Pki

    pki = Pki(tmp_path)
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig", f"https://localhost:{free_port_base(1)}/", pki.ca_file, "t"
    )
    events = ordinary_events(BATCH, "dropped")
    run = run_client(auditclient, kubeconfig, events, tmp_path, extra=("--initial-backoff", "50ms"))
    assert run.summary["handed_over"] == BATCH
    assert run.summary["batches"] == [BATCH]
    assert run.summary["batches_failed"] == 1
    [dropped] = run.summary["errors"]
    assert dropped["events"] == BATCH and "connection refused" in dropped["message"]
    assert sorted(dropped["audit_ids"]) == sorted(key_of(e)[0] for e in events)


def assert_all_kept(line: Pipeline, run: ClientRun, handed_over: int) -> None:
    """Every handed-over event once in events_dedup with its exact bytes; verify --full is 0."""
    assert run.summary["handed_over"] == handed_over
    assert run.summary["errors"] == [], "the client dropped events: " + str(run.summary["errors"])
    assert run.summary["batches_failed"] == 0
    sent = {key_of(b): b for b in run.sent}
    assert len(sent) == handed_over, "the test's events must have distinct (auditID, stage)"
    line.finish()

    loaded = line.originals("events_dedup")
    counts = Counter(key_of(original) for original in loaded)
    missing = [key for key in sent if key not in counts]
    assert not missing, (
        f"{len(missing)} of {handed_over} events the client handed over are not in ClickHouse; "
        f"their sizes: {sorted(len(sent[k]) for k in missing)}\n{line.log_tail()}"
    )
    assert set(counts) == set(sent), "ClickHouse holds events the client never sent"
    assert max(counts.values()) == 1
    changed = [key_of(o) for o in loaded if o != sent[key_of(o)]]
    assert not changed, f"{len(changed)} events are stored with other bytes than were sent"
    # Every raw copy (a batch sent twice is chained twice) holds the bytes that were sent.
    raw = line.originals("events")
    assert {key_of(o) for o in raw} == set(sent)
    assert all(original == sent[key_of(original)] for original in raw)

    verified = line.verify_full()
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]


def test_large_events_among_ordinary_ones_are_all_chained(
    auditclient: Path, line: Pipeline, tmp_path: Path
) -> None:
    # 397 ordinary events and three of 150 KB, 400 KB and 900 KB: one full batch of 400, so the
    # client sends it at once instead of after the 30 s batch wait.
    events = ordinary_events(BATCH - 3, "mixed")
    sizes = (150_000, 400_000, 900_000)
    for position, size in zip((50, 200, 350), sizes, strict=True):
        events.insert(position, large_event(size, "mixed"))
    run = run_client(auditclient, line.kubeconfig, events, tmp_path)
    assert run.summary["batches"] == [BATCH]
    for position, size in zip((50, 200, 350), sizes, strict=True):
        assert len(run.sent[position]) >= size
    assert_all_kept(line, run, BATCH)


def test_a_batch_over_10_mib_is_all_chained(
    auditclient: Path, line: Pipeline, tmp_path: Path
) -> None:
    # 60 events of about 200 KB among 340 ordinary ones, handed over at once: the buffered
    # backend puts all 400 in one EventList of about 13 MiB.
    events = ordinary_events(BATCH - 60, "big-batch")
    for i in range(60):
        events.insert(i * 5, large_event(200_000, f"big-batch/{i}"))
    run = run_client(auditclient, line.kubeconfig, events, tmp_path)
    assert run.summary["batches"] == [BATCH]
    assert sum(len(b) for b in run.sent) > 10 * MIB
    assert_all_kept(line, run, BATCH)


def _connected(port: int) -> bool:
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
        for c in psutil.net_connections("tcp")
    )


def test_webhook_killed_while_batches_are_in_flight(
    auditclient: Path, line: Pipeline, tmp_path: Path
) -> None:
    # Three full batches leave at once (burst 15). When the first starts, the webhook is
    # stopped, so the client's connection is open and unanswered, then SIGKILLed; `sealtrail
    # run` restarts it. The client retries with backoff (10 s, 15 s, ...; about 90 s in all).
    events = ordinary_events(3 * BATCH, "kill")
    killed: list[int] = []

    def kill(batch: int) -> None:
        if batch != 1:
            return
        webhook = line.webhook()
        webhook.send_signal(signal.SIGSTOP)  # accepts nothing more, answers nothing
        deadline = time.monotonic() + 30
        while not _connected(line.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _connected(line.port), "the client never connected to the stopped webhook"
        webhook.send_signal(signal.SIGKILL)
        killed.append(webhook.pid)

    run = run_client(auditclient, line.kubeconfig, events, tmp_path, on_batch=kill)
    assert killed, "the webhook was not killed"
    assert line.webhook().pid != killed[0]
    assert 'sealtrail_run_child_restarts_total{child="webhook"} 1' in line.metrics()
    assert run.summary["batches"] == [BATCH, BATCH, BATCH]
    # A request that failed waits at least the 10 s initial backoff before its retry.
    assert run.summary["seconds"] >= 10, "no request failed: the kill missed every batch"
    assert_all_kept(line, run, 3 * BATCH)
