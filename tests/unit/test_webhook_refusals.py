"""Every answer that loses a batch unless the client resends it (503, 500) is logged with the
request's size and event count and counted in /metrics: the webhook's handler with a stand-in
for its Kafka producer (no network but the test's own loopback server)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from producers import webhook as webhook_module
from producers.kafka_writer import Backpressure
from producers.load import event_list, generate
from producers.webhook import WebhookOptions, WebhookServer
from sealtrail.infra.config import Settings


class _Producer:
    """Stands in for ConfirmedProducer: every produce call raises ``error``."""

    fatal = None

    def __init__(self, error: Exception) -> None:
        self.error = error

    def produce_many(self, *_args: Any) -> None:
        raise self.error

    def produce(self, *_args: Any) -> None:
        raise self.error


def _server(tmp_path: Path, error: Exception, **options: Any) -> WebhookServer:
    server = WebhookServer(
        Settings(home=tmp_path),
        WebhookOptions(insecure_no_auth=True, cluster="c1", ack_timeout=0.2, **options),
    )
    server._producer = _Producer(error)  # type: ignore[assignment]
    return server


def _lines(count: int) -> list[bytes]:
    return [line for _cluster, line in generate(count, 1, seed=7)]


async def _post(server: WebhookServer, body: bytes, chunked: bool = False) -> tuple[int, str]:
    """POST ``body`` to the server's handler; returns (status, the /metrics text after it)."""
    server._loop = asyncio.get_running_loop()
    app = web.Application()
    app.router.add_post("/", server.handle_post)
    app.router.add_get("/metrics", server.handle_metrics)
    async with TestClient(TestServer(app)) as client:
        data: Any = body
        if chunked:

            async def pieces() -> Any:
                for i in range(0, len(body), 256 * 1024):
                    yield body[i : i + 256 * 1024]

            data = pieces()
        resp = await client.post("/", data=data, headers={"Content-Type": "application/json"})
        status = resp.status
        metrics = await (await client.get("/metrics")).text()
    return status, metrics


def _answered(
    server: WebhookServer,
    body: bytes,
    caplog: pytest.LogCaptureFixture,
    code: int,
    chunked: bool = False,
) -> tuple[int, str, logging.LogRecord]:
    """POST ``body``; returns (status, /metrics text, the one record logged as ``answered
    <code>``)."""
    with caplog.at_level(logging.WARNING, logger="producers.webhook"):
        status, metrics = asyncio.run(_post(server, body, chunked))
    [record] = [r for r in caplog.records if f"answered {code}" in r.getMessage()]
    return status, metrics, record


@pytest.mark.parametrize("chunked", [False, True], ids=["whole-body", "streamed"])
def test_a_503_is_logged_with_size_and_events_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, chunked: bool
) -> None:
    server = _server(tmp_path, Backpressure("queue full"))
    body = event_list(_lines(40))
    status, metrics, record = _answered(server, body, caplog, 503, chunked)
    assert status == 503
    assert 'sealtrail_webhook_unavailable_total{cause="backpressure"} 1.0' in metrics
    message = record.getMessage()
    assert "backpressure" in message and "event(s) seen" in message
    if chunked:
        # Streamed (no Content-Length): every item of the one chunk was parsed, none produced.
        assert f"{len(body)} body byte(s) read" in message
        assert "Content-Length None" in message and "40 event(s) seen" in message
    else:
        assert f"{len(body)} body byte(s) read" in message
        assert f"Content-Length {len(body)}" in message and "40 event(s) seen" in message


def test_a_503_before_the_body_is_read_is_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = _server(tmp_path, Backpressure("unused"), max_inflight=1)
    server._inflight = 1  # another request's events wait for Kafka
    body = event_list(_lines(3))
    status, metrics, record = _answered(server, body, caplog, 503)
    assert status == 503
    assert 'sealtrail_webhook_unavailable_total{cause="backpressure"} 1.0' in metrics
    message = record.getMessage()
    assert f"Content-Length {len(body)}" in message and "0 event(s) seen" in message


@pytest.mark.parametrize("chunked", [False, True], ids=["whole-body", "streamed"])
def test_an_unexpected_error_is_a_500_logged_with_size_and_events_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, chunked: bool
) -> None:
    server = _server(tmp_path, RuntimeError("a bug"))
    body = event_list(_lines(25))
    status, metrics, record = _answered(server, body, caplog, 500, chunked)
    assert status == 500
    assert 'sealtrail_webhook_refused_requests_total{code="500"} 1.0' in metrics
    message = record.getMessage()
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])
    if chunked:
        assert "Content-Length None" in message and "event(s) seen" in message
    else:
        assert f"{len(body)} body byte(s) read" in message and "25 event(s) seen" in message


def test_the_refused_counter_says_where_503s_are_counted() -> None:
    # Its help names the codes it counts; 503s are in _unavailable_total{cause}.
    help_text = webhook_module._Metrics().refused._documentation
    assert "500" in help_text and "503" in help_text and "_unavailable" in help_text


class _Storing:
    """Stands in for ConfirmedProducer: stores every value at once (Kafka acknowledged it)."""

    fatal = None

    def __init__(self) -> None:
        self.values: list[bytes] = []

    def produce_many(self, _batch: Any, _topic: str, _key: bytes, values: list[bytes]) -> None:
        self.values.extend(values)

    def produce(self, _batch: Any, _topic: str, _key: bytes, value: bytes) -> None:
        self.values.append(value)


@pytest.mark.parametrize("chunked", [False, True], ids=["whole-body", "streamed"])
def test_chained_rejects_are_counted_and_logged_with_what_the_chain_holds_in_part(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, chunked: bool
) -> None:
    import hashlib
    import json

    from producers.k8s import REJECT_KEEP_BYTES
    from schemas.codec import decode_audit_event

    lines = _lines(5)
    event = json.loads(lines[0])
    event["requestObject"] = {"blob": "z" * (REJECT_KEEP_BYTES + 512 * 1024)}
    over = json.dumps(event, separators=(",", ":")).encode()
    items = [lines[1], over, b'{"kind":"Event","auditID":1}', lines[2]]
    server = WebhookServer(
        Settings(home=tmp_path),
        WebhookOptions(insecure_no_auth=True, cluster="c1", max_event_bytes=REJECT_KEEP_BYTES),
    )
    producer = _Storing()
    server._producer = producer  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="producers.webhook"):
        status, metrics = asyncio.run(_post(server, event_list(items), chunked))
    assert status == 200
    assert 'sealtrail_webhook_rejected_events_total{kind="too_large"} 1.0' in metrics
    assert 'sealtrail_webhook_rejected_events_total{kind="wrong_type"} 1.0' in metrics
    chained = [decode_audit_event(v) for v in producer.values]
    assert [e["original"] for e in chained if e["source"] == "k8s"] == [lines[1], lines[2]]
    [too_large] = [e for e in chained if e["attributes"].get("kind") == "too_large"]
    [message] = [r.getMessage() for r in caplog.records if "chained" in r.getMessage()]
    assert "chained 2 reject(s)" in message and "too_large: 1, wrong_type: 1" in message
    if chunked:
        # Streamed, the chain holds its first MiB only: the log names it by size and hash.
        assert too_large["attributes"]["truncated"] == "true"
        assert f"{len(over)} byte(s), sha256 {hashlib.sha256(over).hexdigest()}" in message
    else:
        assert too_large["original"] == over and "held only" not in message
