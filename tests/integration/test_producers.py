"""Producers against the real broker: webhook, file shipper, SDK and load generator."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from producers.file_shipper import FileShipper
from producers.k8s import REJECT_SOURCE, parse_body, parse_line
from producers.load import event_list, generate, send_kafka
from producers.sdk import AsyncEmitter, Emitter
from producers.webhook import WebhookOptions, WebhookServer
from schemas.codec import decode_audit_event
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaUnavailable
from sealtrail.infra.kafka_read import read_range, reader, watermarks
from sealtrail.infra.service import StopFlag
from tests.conftest import K8S_SAMPLES

TOKEN_A = "tok-A-3f9c1e0d5b7a4c2e9f8d"
TOKEN_B = "tok-B-8a1b2c3d4e5f60718293"
BAD_SAMPLE = "fal_01_003.json"


def good_lines() -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(K8S_SAMPLES.glob("*.json")):
        if path.name == BAD_SAMPLE:
            continue
        lines.extend(line for line in path.read_bytes().splitlines() if line.strip())
    return lines


def bad_line() -> bytes:
    return (K8S_SAMPLES / BAD_SAMPLE).read_bytes().strip()


def records(settings: Settings, topic: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a topic, partition by partition."""
    consumer = reader(settings)
    try:
        out: list[tuple[bytes, bytes]] = []
        for partition in range(3):
            for message in read_range(consumer, topic, partition, idle_timeout=10):
                out.append((message.key(), message.value()))
        return out
    finally:
        consumer.close()


def end_offsets(settings: Settings) -> list[int]:
    consumer = reader(settings)
    try:
        return [
            watermarks(consumer, topic, p)[1] for topic in (settings.topics.raw,) for p in range(3)
        ]
    finally:
        consumer.close()


def raw_events(settings: Settings, with_rejects: bool = False) -> list[dict[str, Any]]:
    """The raw topic's AuditEvents; rejects (chained there too) only if asked for."""
    out = []
    for key, value in records(settings, settings.topics.raw):
        event = decode_audit_event(value)
        assert key == event["cluster"].encode()
        if with_rejects or event["source"] != REJECT_SOURCE:
            out.append(event)
    return out


def rejects(settings: Settings) -> list[dict[str, Any]]:
    """The chained rejects in the raw topic, as reason, producer, cluster and kept bytes."""
    out = []
    for event in raw_events(settings, with_rejects=True):
        if event["source"] != REJECT_SOURCE:
            continue
        attributes = event["attributes"]
        kept = event["original"]
        assert attributes["truncated"] == (
            "true" if int(attributes["bytes"]) > len(kept) else "false"
        )
        if attributes["truncated"] == "false":
            assert hashlib.sha256(kept).hexdigest() == attributes["sha256"]
        assert event["audit_id"] == f"reject:{attributes['sha256']}"
        out.append(
            {
                "reason": attributes["reason"],
                "source": event["actor"],
                "cluster": event["cluster"],
                "received_at": event["received_at"],
                "body": kept,
                "body_bytes": int(attributes["bytes"]),
                "sha256": attributes["sha256"],
            }
        )
    return out


def post(
    url: str, body: bytes, token: str | None = None, ctype: str = "application/json"
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", ctype)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def started_webhook(settings: Settings, tmp_path: Path, **options: Any) -> WebhookServer:
    """A webhook on a free loopback port taking TOKEN_A (cluster-a) and TOKEN_B (cluster-b) over
    plain http (tests post from this machine; real API servers need TLS)."""
    tokens = token_file(tmp_path, f"# test tokens\n{TOKEN_A} cluster-a\n{TOKEN_B} cluster-b\n")
    server = WebhookServer(
        settings,
        WebhookOptions(
            listen="127.0.0.1:0", tokens=tokens, allow_plain_http_tokens=True, **options
        ),
    )
    server.start()
    return server


@pytest.fixture
def webhook(settings: Settings, tmp_path: Path) -> Iterator[WebhookServer]:
    server = started_webhook(settings, tmp_path, max_body_bytes=2 * 1024 * 1024)
    try:
        yield server
    finally:
        assert server.stop() == 0


def test_webhook_round_trip_rejects_and_auth(
    settings: Settings, webhook: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = webhook.url()
    lines = good_lines()
    # The body claims another cluster in every way it could; the token decides.
    body = event_list([*lines[:20], bad_line(), *lines[20:]]).replace(
        b'"items":[', b'"cluster":"evil","items":[', 1
    )
    status, _, answer = post(url, body, TOKEN_A)
    assert status == 200, answer
    assert json.loads(answer) == {"accepted": len(lines), "rejected": 1}
    status, _, answer = post(url, event_list(lines[:3]), TOKEN_B)
    assert (status, json.loads(answer)) == (200, {"accepted": 3, "rejected": 0})

    before = end_offsets(settings)
    assert post(url, event_list(lines[:3]), "wrong-token")[0] == 401
    assert post(url, event_list(lines[:3]))[0] == 401
    assert post(url, event_list(lines[:3]), TOKEN_A.upper())[0] == 401
    assert post(url, b"x" * (2 * 1024 * 1024 + 10), TOKEN_A)[0] == 413
    assert post(url, event_list(lines[:3]), TOKEN_A, ctype="text/plain")[0] == 415
    assert end_offsets(settings) == before  # nothing produced for refused requests

    status, _, answer = post(url, b'{"kind": "EventList", oops', TOKEN_B)
    assert status == 400 and b"not valid JSON" in answer

    events = raw_events(settings)
    a_events = [e for e in events if e["cluster"] == "cluster-a"]
    b_events = [e for e in events if e["cluster"] == "cluster-b"]
    assert {e["cluster"] for e in events} == {"cluster-a", "cluster-b"}
    # One key per cluster: a cluster's events keep their order on one partition.
    assert [e["original"] for e in a_events] == lines
    assert [e["original"] for e in b_events] == lines[:3]
    for event, line in zip(a_events, lines, strict=True):
        # Items of an EventList take the list's apiVersion when they have none (pre-v1 events).
        [expected] = parse_body(event_list([line]), "cluster-a", event["received_at"]).events
        assert event == expected

    found = rejects(settings)
    assert len(found) == 2
    item = next(r for r in found if r["cluster"] == "cluster-a")
    assert item["source"] == "webhook" and "kind" in item["reason"]
    assert item["body"] == bad_line()
    whole = next(r for r in found if r["cluster"] == "cluster-b")
    assert whole["body"] == b'{"kind": "EventList", oops'
    assert "not valid JSON" in whole["reason"] and whole["received_at"] > 0

    assert get(url + "healthz") == (200, b"ok\n")
    status, metrics = get(url + "metrics")
    text = metrics.decode()
    assert status == 200
    assert f"sealtrail_webhook_produced_events_total {float(len(lines) + 3)}" in text
    assert "sealtrail_webhook_auth_failures_total 3.0" in text
    assert 'sealtrail_webhook_rejected_events_total{kind="wrong_type"} 1.0' in text
    assert "sealtrail_webhook_request_seconds_bucket" in text
    for secret in (TOKEN_A, TOKEN_B, "wrong-token", TOKEN_A.upper()):
        assert secret not in text
        assert secret not in caplog.text
    assert "missing or wrong credentials" in caplog.text


def test_webhook_replaces_a_producer_that_failed_for_good(
    settings: Settings, webhook: WebhookServer
) -> None:
    """A fatal librdkafka error ends a producer for good (e.g. the idempotent producer's
    sequence state lost after a broker crash): the next request gets a new producer."""
    url = webhook.url()
    lines = good_lines()
    assert post(url, event_list(lines[:2]), TOKEN_A)[0] == 200
    first = webhook._producer
    assert first is not None
    # librdkafka reports a fatal error through error_cb: deliver one as it would.
    first._on_error(KafkaError(KafkaError._FATAL, "injected fatal error", fatal=True))
    status, _, answer = post(url, event_list(lines[2:5]), TOKEN_A)
    assert (status, json.loads(answer)) == (200, {"accepted": 3, "rejected": 0})
    assert webhook._producer is not first and webhook._producer is not None
    assert webhook._producer.fatal is None
    status, metrics = get(url + "metrics")
    assert "sealtrail_webhook_producer_rebuilds_total 1.0" in metrics.decode()
    assert [e["original"] for e in raw_events(settings)] == lines[:5]


def test_webhook_refuses_loose_token_file(settings: Settings, tmp_path: Path) -> None:
    from sealtrail.infra.errors import ConfigError

    tokens = token_file(tmp_path, f"{TOKEN_A} cluster-a\n", mode=0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        WebhookServer(
            settings,
            WebhookOptions(listen="127.0.0.1:0", tokens=tokens, allow_plain_http_tokens=True),
        )
    assert TOKEN_A not in str(info.value)
    with pytest.raises(ConfigError, match="needs authentication"):
        WebhookServer(settings, WebhookOptions(listen="127.0.0.1:0"))


def test_webhook_kafka_down_answers_503_then_stores_exactly_once(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A second broker of our own is stopped; the session broker keeps serving other tests.
    Each 503 is logged with the request's size and events and counted."""
    from sealtrail.infra.topics import init_topics
    from sealtrail.stack import LocalKafka
    from tests.conftest import free_port_base

    kafka = LocalKafka(tmp_path / "own-kafka")
    port = free_port_base(1)
    own = settings.with_(kafka=kafka.up(port=port).bootstrap)
    server: WebhookServer | None = None
    try:
        init_topics(own, partitions=3, replication_factor=1)
        server = WebhookServer(
            own,
            WebhookOptions(
                listen="127.0.0.1:0", insecure_no_auth=True, cluster="solo", ack_timeout=2.0
            ),
        )
        server.start()
        lines = good_lines()[:30]
        body = event_list(lines)
        kafka.down()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="producers.webhook"):
            status, headers, _ = post(server.url(), body)
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert time.monotonic() - started < 8
        [logged] = [r.getMessage() for r in caplog.records if "answered 503" in r.getMessage()]
        assert "(kafka)" in logged and f"{len(body)} body byte(s) read" in logged
        assert "30 event(s) seen" in logged
        counted = get(server.url() + "metrics")[1].decode()
        assert 'sealtrail_webhook_unavailable_total{cause="kafka"} 1.0' in counted
        assert get(server.url() + "healthz")[0] == 503

        kafka.up(port=port)
        deadline = time.monotonic() + 60
        while True:  # like the API server: send the same batch again until it is taken
            status, _, answer = post(server.url(), body)
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status == 200, answer
        events = raw_events(own)
        assert [e["original"] for e in events] == lines  # exactly once, in order
    finally:
        if server is not None:
            server.stop()
        kafka.down()


# ---------------------------------------------------------------------------------------------
# file shipper


def ship(settings: Settings, path: Path, **kwargs: Any) -> FileShipper:
    shipper = FileShipper(settings, path, "files", **kwargs)
    shipper.run()
    return shipper


def originals(settings: Settings) -> list[bytes]:
    return [e["original"] for e in raw_events(settings)]


def test_file_shipper_ships_lines_longer_than_its_read_chunk(
    settings: Settings, tmp_path: Path
) -> None:
    """The log backend writes events whole: a 3 MiB line is one event, not chunks of it, and a
    line over --max-event-bytes is chained as a reject (first MiB, size, SHA-256) without being
    held whole; the lines around both are shipped, once each."""
    lines = good_lines()
    big = _grown(lines[0], 3 * 1024 * 1024, "big-line")
    over = _grown(lines[1], 5 * 1024 * 1024, "over-line")
    log_file = tmp_path / "audit.log"
    log_file.write_bytes(b"\n".join([lines[2], big, over, lines[3]]) + b"\n")
    shipper = ship(settings, log_file, max_event_bytes=4 * 1024 * 1024)
    assert (shipper.stats.events, shipper.stats.rejects) == (3, 1)
    assert originals(settings) == [lines[2], big, lines[3]]
    [reject] = rejects(settings)
    assert reject["source"] == "file" and "over the 4194304 byte limit" in reject["reason"]
    assert reject["body_bytes"] == len(over)
    assert reject["sha256"] == hashlib.sha256(over).hexdigest()
    assert reject["body"] == over[: 1024 * 1024]
    # a second run ships nothing again: the position is past both long lines
    assert ship(settings, log_file).stats.events == 0


def test_file_shipper_resumes_without_loss_or_duplicates(
    settings: Settings, tmp_path: Path
) -> None:
    lines = good_lines()
    log_file = tmp_path / "audit.log"
    log_file.write_bytes(b"\n".join([*lines[:10], b"", bad_line(), *lines[10:20]]) + b"\n")
    first = ship(settings, log_file)
    assert (first.stats.events, first.stats.rejects) == (20, 1)
    with log_file.open("ab") as out:
        out.write(b"\n".join(lines[20:]) + b"\n")
    second = ship(settings, log_file)
    assert second.stats.events == len(lines) - 20
    assert ship(settings, log_file).stats.events == 0  # nothing new: nothing sent
    assert originals(settings) == lines
    for event, line in zip(raw_events(settings), lines, strict=True):
        assert event == parse_line(line, "files", event["received_at"])
    [reject] = rejects(settings)
    assert reject["source"] == "file" and reject["cluster"] == "files"
    assert reject["body"] == bad_line()


def _wait_for(settings: Settings, count: int, timeout: float = 20.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = originals(settings)
        except KafkaUnavailable:  # a just-created partition may still be electing its leader
            got = []
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def test_file_shipper_follows_rename_and_copytruncate(settings: Settings, tmp_path: Path) -> None:
    lines = good_lines()
    log_file = tmp_path / "audit.log"
    log_file.write_bytes(b"\n".join(lines[:5]) + b"\n")
    stop = StopFlag()
    shipper = FileShipper(settings, log_file, "files", follow=True, poll_interval=0.05, stop=stop)
    thread = threading.Thread(target=shipper.run)
    thread.start()
    try:
        assert _wait_for(settings, 5) == lines[:5]
        # Rename rotation: the writer still appends to the old file, then the new one appears.
        with log_file.open("ab") as out:
            os.rename(log_file, tmp_path / "audit.log.1")
            out.write(b"\n".join(lines[5:10]) + b"\n")
        log_file.write_bytes(b"\n".join(lines[10:15]) + b"\n")
        assert _wait_for(settings, 15) == lines[:15]
        # Copytruncate: the content is copied away, the file truncated and written again.
        with log_file.open("r+b") as out:
            out.truncate(0)
        log_file.write_bytes(b"\n".join(lines[15:17]) + b"\n")
        assert _wait_for(settings, 17) == lines[:17]
    finally:
        stop.set()
        thread.join(30)
    # A restart in follow mode resumes where the last run stopped.
    with log_file.open("ab") as out:
        out.write(b"\n".join(lines[17:20]) + b"\n")
    ship(settings, log_file)
    got = originals(settings)
    assert got == lines[:20], [lines.index(g) for g in got]


# ---------------------------------------------------------------------------------------------
# SDK and load generator


def test_sdk_sync_and_async_emit_with_confirmation(settings: Settings) -> None:
    with Emitter(settings, cluster="billing") as audit:
        future = audit.emit(
            actor="alice",
            action="refund",
            resource="order/42",
            outcome="success",
            attributes={"amount": "12.50"},
            event_id="evt-1",
            timestamp=1_700_000_000_000_000,
        )
        assert future.result(timeout=15) is None
        audit.emit(actor="bob", action="login", resource="console", outcome="failure")

    async def run() -> None:
        async with AsyncEmitter(settings, cluster="billing") as audit:
            await audit.emit(actor="carol", action="export", resource="report", outcome="success")

    asyncio.run(run())
    events = raw_events(settings)
    assert [e["actor"] for e in events] == ["alice", "bob", "carol"]
    first = events[0]
    assert first["cluster"] == "billing" and first["source"] == "generic"
    assert first["audit_id"] == "evt-1" and first["attributes"] == {"amount": "12.50"}
    assert first["request_received_at"] == 1_700_000_000_000_000
    assert json.loads(first["original"])["action"] == "refund"


def test_load_generator_sends_reproducible_events(settings: Settings) -> None:
    stats = send_kafka(settings, 300, 0, 3, seed=7, progress=lambda *_: None)
    assert stats.sent == 300
    events = raw_events(settings)
    assert len(events) == 300
    assert {e["cluster"] for e in events} == {"cluster-1", "cluster-2", "cluster-3"}
    expected = {line for _cluster, line in generate(300, 3, seed=7)}
    assert {e["original"] for e in events} == expected


def small_queue(settings: Settings, tmp_path: Path, messages: int = 20) -> Settings:
    """Settings whose producers queue at most ``messages`` records before Kafka acks some."""
    conf = tmp_path / "small-queue.properties"
    conf.write_text(f"queue.buffering.max.messages={messages}\n", encoding="utf-8")
    conf.chmod(0o600)
    return settings.with_(kafka_config=conf)


def test_load_generator_waits_out_a_full_producer_queue(settings: Settings, tmp_path: Path) -> None:
    """The queue fills many times over; each event waits for room and is stored once. (A full
    queue used to fail the run at the end, every event stored: "did not acknowledge every
    event (Local: Queue full)".)"""
    stats = send_kafka(small_queue(settings, tmp_path), 600, 0, 3, seed=5, progress=lambda *_: None)
    assert stats.sent == 600
    originals = [e["original"] for e in raw_events(settings)]
    assert sorted(originals) == sorted(line for _c, line in generate(600, 3, seed=5))


def test_load_generator_sends_to_a_tls_webhook_with_its_ca(
    settings: Settings, tmp_path: Path
) -> None:
    """Tokens need TLS, so the load generator speaks https: verified against --ca."""
    from producers.load import send_webhook
    from sealtrail.infra.errors import ConfigError
    from tests.integration.test_attack_webhook import Pki

    pki = Pki(tmp_path)
    server = started_webhook(settings, tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key)
    try:
        url = f"https://localhost:{server.port}/"
        before = len(raw_events(settings))
        stats = send_webhook(url, TOKEN_A, 120, 0, 2, 11, ca=pki.ca_file, progress=lambda *_: None)
        assert stats.sent == 120
        sent = {line for _cluster, line in generate(120, 2, seed=11)}
        assert {e["original"] for e in raw_events(settings)[before:]} == sent
        # Without the CA the certificate is not trusted: one sentence that says what to give.
        with pytest.raises(ConfigError, match="does not trust .*give its CA with --ca"):
            send_webhook(url, TOKEN_A, 10, 0, 1, 1, progress=lambda *_: None)
        with pytest.raises(ConfigError, match="cannot load the CA file"):
            send_webhook(url, TOKEN_A, 10, 0, 1, 1, ca=tmp_path / "absent.pem")
    finally:
        server.stop()


def _grown(line: bytes, size: int, tag: str) -> bytes:
    """A real event grown to about ``size`` bytes by a large requestObject (as RequestResponse
    events of ConfigMaps and Secrets are), with its own auditID."""
    event = json.loads(line)
    event["auditID"] = f"grown-{tag}"
    event["requestObject"] = {"kind": "ConfigMap", "data": {"blob": "z" * size}}
    return json.dumps(event).encode()


def _chunked_post(port: int, body: bytes, token: str) -> tuple[int, bytes]:
    """POST with Transfer-Encoding: chunked (no Content-Length): the streamed path."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.putrequest("POST", "/")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for i in range(0, len(body), 300_000):
            piece = body[i : i + 300_000]
            conn.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_large_events_and_bodies_are_streamed_and_every_item_chained(
    settings: Settings, tmp_path: Path
) -> None:
    """kube-apiserver sends events whole (150 KB - 900 KB and more) and batches of 400 such
    events in one body: every item is taken, large bodies are streamed item by item, an item
    over the limit is chained as a reject that proves its bytes, and a body broken half-way
    keeps the items before the break."""
    lines = good_lines()
    server = started_webhook(settings, tmp_path, max_event_bytes=2 * 1024 * 1024)
    try:
        large = [_grown(lines[0], n, str(n)) for n in (150_000, 400_000, 900_000)]
        ordinary = [lines[i % len(lines)] for i in range(60)]
        over = _grown(lines[1], 3 * 1024 * 1024, "over")
        # ~15 MiB: over the 8 MiB whole-body size, so it is streamed
        many = [_grown(lines[2], 300_000, f"batch-{i}") for i in range(40)]
        items = ordinary[:30] + large + [over] + many + ordinary[30:]
        body = event_list(items)
        assert len(body) > 10 * 1024 * 1024
        status, _, answer = post(server.url(), body, TOKEN_A)
        assert status == 200, answer
        assert json.loads(answer) == {"accepted": len(items) - 1, "rejected": 1}
        events = raw_events(settings)
        assert [e["original"] for e in events] == [i for i in items if i is not over]
        [reject] = rejects(settings)
        assert "over the 2097152 byte limit" in reject["reason"]
        assert reject["body_bytes"] == len(over)
        assert reject["sha256"] == hashlib.sha256(over).hexdigest()
        assert over.startswith(reject["body"]) and len(reject["body"]) == 1024 * 1024

        # the same streamed path without a Content-Length
        status, answer = _chunked_post(server.port, event_list(large), TOKEN_A)
        assert (status, json.loads(answer)) == (200, {"accepted": 3, "rejected": 0})
        assert [e["original"] for e in raw_events(settings)][-3:] == large

        # broken half-way: the items before the break are chained, then the body as a reject
        broken = event_list(many[:30])[:-2] + b",{oops"
        status, _, answer = post(server.url(), broken, TOKEN_A)
        assert status == 400
        error = json.loads(answer)
        assert error["accepted"] == 30 and "not valid JSON" in error["error"]
        assert [e["original"] for e in raw_events(settings)][-30:] == many[:30]
        last = rejects(settings)[-1]
        assert last["sha256"] == hashlib.sha256(broken).hexdigest()
        assert last["body_bytes"] == len(broken) and broken.startswith(last["body"])
        assert metric_value(server, "sealtrail_webhook_produced_events_total") == len(items) + 32
    finally:
        server.stop()


def test_a_streamed_body_that_fills_the_producer_queue_is_stored_once_and_answered_200(
    settings: Settings, tmp_path: Path
) -> None:
    """A chunked body of 300 events through a producer queue of 20: each item waits for room,
    and the answer is 200. (It was 503 once the queue had been full, every item stored: the
    API server would have sent all of them again.)"""
    lines = good_lines()
    items = [lines[i % len(lines)] for i in range(300)]
    server = started_webhook(small_queue(settings, tmp_path), tmp_path)
    try:
        before = len(raw_events(settings))
        status, answer = _chunked_post(server.port, event_list(items), TOKEN_A)
        assert (status, json.loads(answer)) == (200, {"accepted": 300, "rejected": 0})
        assert [e["original"] for e in raw_events(settings)[before:]] == items
    finally:
        server.stop()


def metric_value(server: WebhookServer, name: str) -> float:
    status, text = get(server.url() + "metrics")
    assert status == 200
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
