"""Synthetic but realistic Kubernetes audit events, reproducible from a seed, sent at a rate.

The events are ``audit.k8s.io/v1`` ``Event`` JSON as the API server writes them: mostly reads by
controllers and service accounts, some writes by people and CI, a few exec/attach sessions,
403/404/409 answers. The same seed gives the same events (auditIDs and timestamps included).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import random
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from producers.k8s import Reject, RejectError, parse_line
from producers.kafka_writer import Backpressure, Batch, ConfirmedProducer, now_us
from schemas.codec import encode_audit_event
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import ConfigError, KafkaUnavailable

SOURCE = "load"
BASE_TIME = _dt.datetime(2026, 1, 5, 9, 0, 0, tzinfo=_dt.UTC)
WEBHOOK_BATCH = 400

VERBS = [("get", 40), ("list", 20), ("watch", 15), ("update", 8), ("patch", 7), ("create", 6),
         ("delete", 4)]  # fmt: skip

RESOURCES: list[tuple[str, str, str, bool, int]] = [
    # resource, apiGroup, apiVersion, namespaced, weight
    ("pods", "", "v1", True, 30),
    ("configmaps", "", "v1", True, 15),
    ("secrets", "", "v1", True, 10),
    ("services", "", "v1", True, 8),
    ("deployments", "apps", "v1", True, 15),
    ("namespaces", "", "v1", False, 4),
    ("rolebindings", "rbac.authorization.k8s.io", "v1", True, 4),
    ("clusterroles", "rbac.authorization.k8s.io", "v1", False, 4),
]

NAMESPACES = ["default", "kube-system", "payments", "web", "monitoring", "ci", "data"]

# (username, groups, user agent, weight); controllers read and watch, people write.
USERS: list[tuple[str, list[str], str, int]] = [
    ("system:kube-controller-manager", ["system:authenticated"],
     "kube-controller-manager/v1.30.4 (linux/amd64) kubernetes/a51b3b7/leader-election", 20),
    ("system:kube-scheduler", ["system:authenticated"],
     "kube-scheduler/v1.30.4 (linux/amd64) kubernetes/a51b3b7/scheduler", 8),
    ("system:serviceaccount:kube-system:replicaset-controller",
     ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
     "kube-controller-manager/v1.30.4 (linux/amd64) kubernetes/a51b3b7/system:serviceaccount:"
     "kube-system:replicaset-controller", 12),
    ("system:serviceaccount:monitoring:prometheus",
     ["system:serviceaccounts", "system:serviceaccounts:monitoring", "system:authenticated"],
     "prometheus/2.53.0", 10),
    ("system:serviceaccount:ci:deployer",
     ["system:serviceaccounts", "system:serviceaccounts:ci", "system:authenticated"],
     "argocd-application-controller/v2.11.3", 6),
    ("system:node:worker-1", ["system:nodes", "system:authenticated"],
     "kubelet/v1.30.4 (linux/amd64) kubernetes/a51b3b7", 10),
    ("alice@example.com", ["developers", "system:authenticated"],
     "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350", 5),
    ("bob@example.com", ["sre", "system:authenticated"],
     "k9s/v0.32.5 (linux/amd64)", 4),
    ("carol@example.com", ["developers", "system:authenticated"],
     "kubectl/v1.30.2 (darwin/arm64) kubernetes/3968350", 3),
    ("system:anonymous", ["system:unauthenticated"], "curl/8.5.0", 1),
]  # fmt: skip

HUMANS = {"alice@example.com", "bob@example.com", "carol@example.com"}
APPS = ["api", "web", "worker", "redis", "postgres", "ingest", "billing", "frontend"]


@dataclass(slots=True)
class LoadStats:
    sent: int = 0
    rejected: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        took = max(time.monotonic() - self.started, 1e-9)
        return f"sent {self.sent} event(s) in {took:.1f}s ({self.sent / took:.0f} events/s)"


def _pick(rng: random.Random, weighted: list[tuple[str, int]]) -> str:
    return rng.choices([w[0] for w in weighted], weights=[w[1] for w in weighted])[0]


def _ts(at: _dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond:06d}Z"


def generate(count: int, clusters: int, seed: int | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(cluster, event JSON bytes)`` pairs; the same seed gives the same sequence."""
    if count < 0 or clusters < 1:
        raise ConfigError("--count must be >= 0 and --clusters >= 1")
    rng = random.Random(seed)
    user_weights = [u[3] for u in USERS]
    res_weights = [r[4] for r in RESOURCES]
    at = BASE_TIME
    for _ in range(count):
        at += _dt.timedelta(microseconds=rng.randrange(200, 20000))
        cluster = f"cluster-{rng.randrange(clusters) + 1}"
        user, groups, agent, _w = rng.choices(USERS, weights=user_weights)[0]
        resource, group, version, namespaced, _rw = rng.choices(RESOURCES, weights=res_weights)[0]
        verb = _pick(rng, VERBS)
        if user in HUMANS and verb in ("watch",):
            verb = "get"
        namespace = rng.choice(NAMESPACES) if namespaced else ""
        name = "" if verb in ("list", "watch") else f"{rng.choice(APPS)}-{rng.randrange(1, 40)}"
        if resource == "namespaces" and name:
            name = rng.choice(NAMESPACES)
        subresource = ""
        if resource == "pods" and user in HUMANS and rng.random() < 0.25:
            subresource, verb = rng.choice(["exec", "attach", "log"]), "create"
            if subresource == "log":
                verb = "get"
        if resource == "pods" and name and rng.random() < 0.3:
            name = f"{name}-{rng.getrandbits(32):08x}"[:40]
        code = 200
        if verb == "create":
            code = 201
        roll = rng.random()
        if user == "system:anonymous" or (user in HUMANS and roll < 0.08):
            code = 403
        elif verb in ("get", "delete", "patch") and roll < 0.05:
            code = 404
        elif verb in ("create", "update") and roll < 0.06:
            code = 409
        path = "/api/v1" if not group else f"/apis/{group}/{version}"
        uri = path + (f"/namespaces/{namespace}" if namespace else "") + f"/{resource}"
        if name:
            uri += f"/{name}"
        if subresource:
            uri += f"/{subresource}"
            if subresource in ("exec", "attach"):
                uri += "?command=sh&container=app&stdin=true&stdout=true&tty=true"
        elif verb == "watch":
            uri += "?allowWatchBookmarks=true&resourceVersion=" + str(rng.randrange(10**6, 10**8))
            uri += "&watch=true"
        object_ref: dict[str, str] = {"resource": resource, "apiVersion": version}
        if namespace:
            object_ref["namespace"] = namespace
        if name:
            object_ref["name"] = name
        if group:
            object_ref["apiGroup"] = group
        if subresource:
            object_ref["subresource"] = subresource
        done = at + _dt.timedelta(microseconds=rng.randrange(300, 90000))
        event: dict[str, object] = {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata" if resource == "secrets" else "Request",
            "auditID": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "stage": "ResponseComplete",
            "requestURI": uri,
            "verb": verb,
            "user": {"username": user, "groups": groups},
            "sourceIPs": [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"],
            "userAgent": agent,
            "objectRef": object_ref,
            "responseStatus": {"metadata": {}, "code": code},
            "requestReceivedTimestamp": _ts(at),
            "stageTimestamp": _ts(done),
            "annotations": {
                "authorization.k8s.io/decision": "forbid" if code == 403 else "allow",
                "authorization.k8s.io/reason": "" if code == 403 else "RBAC: allowed by binding",
            },
        }
        if user.startswith("system:serviceaccount:"):
            event["user"] = {
                "username": user,
                "uid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "groups": groups,
                "extra": {"authentication.kubernetes.io/pod-name": [f"{rng.choice(APPS)}-0"]},
            }
        yield cluster, json.dumps(event, separators=(",", ":")).encode("utf-8")


class _Pacer:
    """Sleeps so that ``n`` events take at least ``n / rate`` seconds (0 = as fast as possible)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()

    def delay(self, sent: int) -> float:
        if self.rate <= 0:
            return 0.0
        return max(0.0, self.start + sent / self.rate - time.monotonic())


def _progress(stats: LoadStats, total: int) -> None:
    took = max(time.monotonic() - stats.started, 1e-9)
    print(
        f"load: {stats.sent}/{total} events ({stats.sent / took:.0f}/s)",
        file=sys.stderr,
        flush=True,
    )


def send_kafka(
    settings: Settings,
    count: int,
    rate: float,
    clusters: int,
    seed: int | None,
    progress: Callable[[LoadStats, int], None] = _progress,
) -> LoadStats:
    """Send generated events straight to the raw topic, through the producers' encode path."""
    producer = ConfirmedProducer(settings)
    stats = LoadStats()
    pacer = _Pacer(rate)
    batch = Batch()
    raw_topic = settings.topics.raw
    last_report = time.monotonic()
    try:
        for cluster, line in generate(count, clusters, seed):
            received = now_us()
            try:
                datum = parse_line(line, cluster, received)
            except RejectError as rej:  # cannot happen for generated events; kept honest anyway
                producer.produce_reject(
                    batch, Reject(rej.reason, rej.raw, kind=rej.kind), SOURCE, cluster
                )
                stats.rejected += 1
                continue
            value = encode_audit_event(datum)
            while True:
                try:
                    producer.produce(batch, raw_topic, cluster.encode("utf-8"), value)
                    break
                except Backpressure:
                    producer.flush(1.0)  # the local queue is full: let acks drain it
            stats.sent += 1
            wait = pacer.delay(stats.sent)
            if wait > 0:
                time.sleep(wait)
            if time.monotonic() - last_report >= 2.0:
                progress(stats, count)
                last_report = time.monotonic()
        batch.seal()
        finished = producer.wait(batch, 120.0)
        producer.raise_if_refused(batch)
        if not finished or batch.error is not None:
            raise KafkaUnavailable(
                f"Kafka at {settings.kafka} did not acknowledge every event "
                f"({batch.error or 'timed out'}); check that it is up"
            )
    finally:
        producer.close(30.0)
    return stats


def send_webhook(
    url: str,
    token: str | None,
    count: int,
    rate: float,
    clusters: int,
    seed: int | None,
    *,
    batch_size: int = WEBHOOK_BATCH,
    concurrency: int = 4,
    progress: Callable[[LoadStats, int], None] = _progress,
    ca: Path | None = None,
) -> LoadStats:
    """POST generated events to a webhook as EventList batches (retrying 503s like the API server).

    The webhook stamps the cluster from the token, so ``clusters`` only varies the content. An
    https ``url`` is verified against the system's CAs, or against ``ca`` (a PEM file) if given.
    """
    tls: ssl.SSLContext | bool = True
    if ca is not None:
        try:
            tls = ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA file {ca} ({exc}); check --ca") from None
    return asyncio.run(
        _send_webhook(
            url, token, count, rate, clusters, seed, batch_size, concurrency, progress, tls
        )
    )


def event_list(lines: list[bytes]) -> bytes:
    return (
        b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[' + b",".join(lines) + b"]}"
    )


async def _send_webhook(
    url: str,
    token: str | None,
    count: int,
    rate: float,
    clusters: int,
    seed: int | None,
    batch_size: int,
    concurrency: int,
    progress: Callable[[LoadStats, int], None],
    tls: ssl.SSLContext | bool,
) -> LoadStats:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    stats = LoadStats()
    pacer = _Pacer(rate)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=concurrency * 2)
    last_report = [time.monotonic()]

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            body = await queue.get()
            if body is None:
                return
            n = body.count(b'"kind":"Event"')
            for _attempt in range(30):
                try:
                    async with session.post(url, data=body, headers=headers, ssl=tls) as resp:
                        if resp.status == 200:
                            break
                        if resp.status == 503:
                            await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                            continue
                        raise ConfigError(
                            f"the webhook at {url} answered {resp.status}; "
                            "check the URL and --token"
                        )
                except aiohttp.ClientConnectorCertificateError as exc:
                    raise ConfigError(
                        f"the webhook at {url} presented a certificate this machine does not "
                        f"trust ({exc.certificate_error}); give its CA with --ca"
                    ) from None
            else:
                raise KafkaUnavailable(f"the webhook at {url} kept answering 503; check Kafka")
            stats.sent += n
            if time.monotonic() - last_report[0] >= 2.0:
                progress(stats, count)
                last_report[0] = time.monotonic()

    async def put(item: bytes | None) -> None:
        # A worker that failed must stop the run instead of leaving put() waiting forever.
        putting = asyncio.ensure_future(queue.put(item))
        await asyncio.wait([putting, *workers], return_when=asyncio.FIRST_COMPLETED)
        for task in workers:
            if task.done() and task.exception() is not None:
                putting.cancel()
                raise task.exception()  # type: ignore[misc]
        await putting

    async with aiohttp.ClientSession() as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
        lines: list[bytes] = []
        queued = 0
        for _cluster, line in generate(count, clusters, seed):
            lines.append(line)
            if len(lines) >= batch_size:
                queued += len(lines)
                await put(event_list(lines))
                lines = []
                await asyncio.sleep(pacer.delay(queued))
        if lines:
            await put(event_list(lines))
        for _ in workers:
            await put(None)
        await asyncio.gather(*workers)
    return stats
