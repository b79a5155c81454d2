"""Producer throughput beside a raw confluent-kafka producer, on one broker in one run.

``python -m bench.bench_producers --events N`` or ``run(events=N)`` (returns a dict):

(a) raw: a plain idempotent Producer sending already-encoded AuditEvent values, flush at end;
(b) webhook: 8 concurrent aiohttp clients POSTing EventList batches of 400 events (what the API
    server sends), each answered only after Kafka acknowledged the batch;
(c) SDK: ``Emitter.emit`` in a loop, one flush at the end (b and c are compared with a).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from bench.common import (
    KEEP_HELP,
    Result,
    bench_broker,
    fresh_settings,
    print_table,
    run_directory,
    write_json,
)
from producers.k8s import parse_line
from producers.load import event_list, generate
from producers.sdk import Emitter
from producers.webhook import WebhookOptions, WebhookServer
from schemas.codec import encode_audit_event
from sealtrail.infra.config import Settings
from sealtrail.infra.kafka import producer_conf

CLIENTS = 8
BATCH = 400


def _raw(settings: Settings, values: list[tuple[bytes, bytes]]) -> float:
    producer = Producer(producer_conf(settings))
    started = time.perf_counter()
    for key, value in values:
        while True:
            try:
                producer.produce(settings.topics.raw, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    took = time.perf_counter() - started
    assert left == 0, "raw baseline: records not acknowledged"
    return len(values) / took


def post_event_lists(url: str, bodies: list[bytes], clients: int = CLIENTS) -> float:
    """POST every body to the webhook from ``clients`` concurrent clients (again after a 503);
    returns the seconds it took."""
    import aiohttp

    async def go() -> float:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        headers = {"Authorization": "Bearer bench-token", "Content-Type": "application/json"}

        async def client(session: aiohttp.ClientSession) -> None:
            while not queue.empty():
                body = queue.get_nowait()
                while True:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status == 200:
                            break
                        if resp.status != 503:
                            raise RuntimeError(f"webhook answered {resp.status}")
                        await asyncio.sleep(0.1)

        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            await asyncio.gather(*(client(session) for _ in range(clients)))
            return time.perf_counter() - started

    return asyncio.run(go())


def start_bench_webhook(settings: Settings, home: Path) -> WebhookServer:
    """A started webhook on a loopback port taking the token ``bench-token``, over plain HTTP:
    the benches measure parsing and producing, not TLS."""
    tokens = home / "bench-tokens"
    tokens.parent.mkdir(parents=True, exist_ok=True)
    tokens.write_text("bench-token bench\n", encoding="utf-8")
    tokens.chmod(0o600)
    server = WebhookServer(
        settings,
        WebhookOptions(listen="127.0.0.1:0", tokens=tokens, allow_plain_http_tokens=True),
    )
    server.start()
    return server


def _webhook(settings: Settings, bodies: list[bytes], events: int, home: Path) -> float:
    server = start_bench_webhook(settings, home)
    try:
        return events / post_event_lists(server.url(), bodies)
    finally:
        server.stop()


def _sdk(settings: Settings, events: int) -> float:
    with Emitter(settings, cluster="bench") as audit:
        started = time.perf_counter()
        for i in range(events):
            audit.emit(
                actor=f"user-{i % 50}",
                action="update",
                resource=f"orders/{i}",
                outcome="success",
                attributes={"region": "eu-west-1"},
            )
        audit.flush(120)
        return events / (time.perf_counter() - started)


def run(events: int = 40_000, bootstrap: str | None = None) -> dict[str, Any]:
    generated = list(generate(events, 3, seed=1))
    now = time.time_ns() // 1000
    k8s_values = [
        (b"bench", encode_audit_event(parse_line(line, "bench", now))) for _c, line in generated
    ]
    bodies = [
        event_list([line for _c, line in generated[i : i + BATCH]])
        for i in range(0, len(generated), BATCH)
    ]
    with bench_broker(bootstrap=bootstrap) as servers:
        settings = fresh_settings(servers)
        home = Path(tempfile.mkdtemp(prefix="sealtrail-bench-webhook-"))  # the run's temp dir
        raw_k8s = _raw(fresh_settings(servers), k8s_values)
        webhook = _webhook(settings, bodies, events, home)
        sdk_settings = fresh_settings(servers)
        with Emitter(sdk_settings, cluster="probe"):  # warm-up: metadata, connection
            pass
        sdk_events = max(1000, events // 2)
        sdk = _sdk(sdk_settings, sdk_events)
        # The SDK's own values (generic events) for its raw baseline.
        from producers.k8s import generic_event

        sdk_values = [
            (
                b"bench",
                encode_audit_event(
                    generic_event(
                        "bench", f"user-{i % 50}", "update", f"orders/{i}", "success",
                        {"region": "eu-west-1"}, now, f"id-{i}",
                    )
                ),
            )
            for i in range(sdk_events)
        ]  # fmt: skip
        raw_sdk = _raw(fresh_settings(servers), sdk_values)
    results = [
        Result("raw producer, k8s AuditEvents", raw_k8s),
        Result(
            f"webhook, {CLIENTS} clients x EventList/{BATCH}",
            webhook,
            baseline="raw producer, k8s AuditEvents",
            baseline_rate=raw_k8s,
        ),
        Result("raw producer, generic AuditEvents", raw_sdk),
        Result(
            "SDK Emitter.emit + flush",
            sdk,
            baseline="raw producer, generic AuditEvents",
            baseline_rate=raw_sdk,
        ),
    ]
    print_table(results)
    write_json("producers", results, {"events": events})
    return {r.stage: r.as_dict() for r in results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--kafka", default=None, help="use this broker instead of a throwaway one")
    parser.add_argument("--keep", action="store_true", help=KEEP_HELP)
    args = parser.parse_args()
    with run_directory(args.keep):
        out = run(args.events, args.kafka)
    print(json.dumps({k: round(v["ratio"], 3) for k, v in out.items() if v["ratio"]}))


if __name__ == "__main__":
    main()
