"""The Kubernetes audit webhook backend: ``POST /`` with audit EventLists -> the raw topic.

It answers 200 only after Kafka acknowledged every event (and every reject entry) of the body;
when Kafka is down, slow or the in-flight bound is reached it answers 503 with Retry-After so the
API server sends the batch again. Nothing it acknowledged is lost. The cluster name comes from the
caller's credentials (bearer token or client certificate) or ``--cluster``, never from the body.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from producers.body_stream import StreamParser
from producers.k8s import (
    MAX_EVENT_BYTES,
    REJECT_KEEP_BYTES,
    BadRequestBody,
    Reject,
    RejectKind,
    encode_body,
    reject_event,
)
from producers.kafka_writer import (
    Backpressure,
    Batch,
    ConfirmedProducer,
    DeliveryFailed,
    asyncio_batch,
    now_us,
)
from schemas.codec import encode_audit_event
from sealtrail.infra.config import Settings, parse_listen
from sealtrail.infra.errors import ConfigError, KafkaUnavailable
from sealtrail.infra.kafka import MAX_EVENT_LIMIT

log = logging.getLogger(__name__)

ENV_LISTEN = "SEALTRAIL_WEBHOOK_LISTEN"
ENV_TOKENS = "SEALTRAIL_WEBHOOK_TOKENS"
DEFAULT_LISTEN = "127.0.0.1:9880"
MAX_BODY_BYTES = 0
"""No limit: a body of any size is read item by item (kube-apiserver's buffered backend sends up
to 400 events of any size in one request, and a refused body is a lost batch)."""
WHOLE_BODY_BYTES = 8 * 1024 * 1024
"""Bodies up to this size (by Content-Length) are read whole and parsed in one call; larger or
chunked ones are parsed and produced item by item as they arrive (producers.body_stream)."""
CHUNK_BYTES = 1024 * 1024
PRODUCER_QUEUE_KBYTES = 256 * 1024
SOURCE = "webhook"
TLS_FOR_TOKENS = (
    "bearer tokens need TLS: kube-apiserver (client-go) sends a kubeconfig's token only over "
    "https, so on plain http every request is refused and the API server drops every audit "
    "event; give --tls-cert and --tls-key (or --allow-plain-http-tokens behind a TLS-terminating "
    "proxy)"
)


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """Everything ``sealtrail produce webhook`` can be told (see docs/PRODUCERS.md)."""

    listen: str = DEFAULT_LISTEN
    tokens: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    insecure_no_auth: bool = False
    # Tokens over plain http only where a TLS-terminating proxy sits in front (TLS_FOR_TOKENS).
    allow_plain_http_tokens: bool = False
    cluster: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_event_bytes: int = MAX_EVENT_BYTES
    ack_timeout: float = 10.0
    max_inflight: int = 50_000
    retry_after: int = 5
    drain_timeout: float = 30.0
    # Seconds a client may take to send its headers (from connect) or its body; slow clients
    # (slowloris) are cut off instead of holding a connection forever.
    read_timeout: float = 30.0


def _refusal(producer: ConfirmedProducer, batch: Batch) -> str | None:
    """The one-sentence error if the broker refused ``batch`` (or every write) to this
    principal: it names the user and the topic, where librdkafka's text names neither."""
    try:
        producer.raise_if_refused(batch)
    except KafkaUnavailable as exc:
        return str(exc)
    return None


def load_tokens(path: Path, default_cluster: str | None) -> list[tuple[bytes, str]]:
    """Read ``TOKEN CLUSTER`` lines (a lone ``TOKEN`` takes ``--cluster``); refuse loose modes."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the webhook token file {path} ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the webhook token file {path} is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run 'chmod 600 {path}'"
        )
    tokens: list[tuple[bytes, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) == 1 and default_cluster:
            parts.append(default_cluster)
        if len(parts) != 2:
            # Never echo the line: it holds a token.
            raise ConfigError(
                f"{path}:{number} is not 'TOKEN CLUSTER' (a lone TOKEN needs --cluster); fix it"
            )
        tokens.append((parts[0].encode("utf-8"), parts[1]))
    if not tokens:
        raise ConfigError(
            f"the webhook token file {path} holds no tokens; add 'TOKEN CLUSTER' lines"
        )
    return tokens


@dataclass(slots=True)
class _Seen:
    """What a request has shown so far: reported when it ends in an unexpected error (500)."""

    events: int = 0
    body_bytes: int = 0


@dataclass(frozen=True, slots=True)
class _Chained:
    """A reject the chain now holds, as logged: its kind, full size, and its SHA-256 when the
    chain holds only its first bytes (the rejected bytes themselves are not kept here)."""

    kind: str
    size: int
    partial_sha256: str | None

    @classmethod
    def of(cls, reject: Reject) -> _Chained:
        partial = reject.digest.hex() if reject.total_size > len(reject.raw) else None
        return cls(str(reject.kind), reject.total_size, partial)


class _BodyTooLarge(Exception):  # noqa: N818 - internal signal: over --max-body-bytes
    pass


def _reject_value(reject: Reject, cluster: str, received: int) -> bytes:
    return encode_audit_event(reject_event(reject, cluster, SOURCE, received))


def _body_reject(reason: str, body: bytes, max_event_bytes: int) -> Reject:
    """A whole body that could not be parsed, as a reject (a prefix and hash if it is large)."""
    if len(body) <= max_event_bytes:
        return Reject(reason, body, kind=RejectKind.BAD_BODY)
    digest = hashlib.sha256(body).digest()
    return Reject(reason, body[:REJECT_KEEP_BYTES], len(body), digest, RejectKind.BAD_BODY)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # CPU and memory as sealtrail_webhook_process_*: distinct from the chainer's and the
        # sink's on the one page `sealtrail run` serves.
        ProcessCollector(namespace="sealtrail_webhook", registry=r)
        self.received = Counter(
            "sealtrail_webhook_received_events",
            "Events received (accepted or rejected).",
            registry=r,
        )
        self.produced = Counter(
            "sealtrail_webhook_produced_events", "Events acknowledged by Kafka.", registry=r
        )
        self.rejected = Counter(
            "sealtrail_webhook_rejected_events",
            "Items or bodies chained as rejects (source=reject), once Kafka acknowledged them.",
            ["kind"],
            registry=r,
        )
        self.auth_failures = Counter(
            "sealtrail_webhook_auth_failures",
            "Requests refused for missing or wrong credentials.",
            registry=r,
        )
        self.unavailable = Counter(
            "sealtrail_webhook_unavailable",
            "Requests answered 503 (Kafka down/slow, backpressure).",
            ["cause"],
            registry=r,
        )
        self.latency = Histogram(
            "sealtrail_webhook_request_seconds",
            "Time to answer a POST, including Kafka acks.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.producer_rebuilds = Counter(
            "sealtrail_webhook_producer_rebuilds",
            "Kafka producers replaced after a fatal error.",
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "sealtrail_webhook_tls_handshake_failures",
            "TLS handshakes that failed: a client certificate missing or not trusted, or "
            "not TLS at all.",
            ["kind"],
            registry=r,
        )
        self.refused = Counter(
            "sealtrail_webhook_refused_requests",
            "Requests answered 408, 413 or 500 after authentication, or whose body broke off "
            "(503s are in _unavailable): the client must resend them or lose their events.",
            ["code"],
            registry=r,
        )
        self.inflight = Gauge(
            "sealtrail_webhook_inflight_events",
            "Events waiting for Kafka acknowledgement.",
            registry=r,
        )


def _handshake_failure_kind(exc: ssl.SSLError) -> str:
    reason = (exc.reason or "").upper()
    if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
        return "certificate"
    if "HTTP_REQUEST" in reason:
        return "plain_http"
    return "protocol"


def _handshake_counting(counter: Counter) -> type[ssl.SSLObject]:
    """An SSLObject class that counts failed handshakes.

    asyncio treats a failed server-side handshake as an OSError and drops it silently, so the
    count is taken where the handshake runs, by the connection's SSL object.
    """

    class CountingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # not a failure: the handshake needs more bytes
            except ssl.SSLError as exc:
                counter.labels(_handshake_failure_kind(exc)).inc()
                raise

    return CountingSSLObject


class WebhookServer:
    """The webhook as an object: ``start()`` returns the bound port, ``stop()`` drains."""

    def __init__(self, settings: Settings, options: WebhookOptions) -> None:
        self.settings = settings
        self.options = options
        self.host, self.port = parse_listen(options.listen)
        self._tokens: list[tuple[bytes, str]] = []
        self._validate()
        self.metrics = _Metrics()
        # Loaded now: a missing or bad TLS file is refused before anything connects to Kafka.
        self._tls = self._ssl_context()
        self._inflight = 0
        self._producer: ConfirmedProducer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._health: tuple[float, bool] = (0.0, False)

    # -- configuration ---------------------------------------------------------------------
    def _validate(self) -> None:
        o = self.options
        if o.tokens is not None:
            self._tokens = load_tokens(o.tokens, o.cluster)
        if (o.tls_cert is None) != (o.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together; give both or neither")
        if o.client_ca is not None and o.tls_cert is None:
            raise ConfigError("--client-ca needs TLS; give --tls-cert and --tls-key too")
        if o.tokens is None and o.client_ca is None and not o.insecure_no_auth:
            raise ConfigError(
                "the webhook needs authentication: give --tokens FILE (or SEALTRAIL_WEBHOOK_TOKENS)"
                " or --client-ca, or run without it with --insecure-no-auth --cluster NAME"
            )
        if o.tokens is not None and o.tls_cert is None and not o.allow_plain_http_tokens:
            raise ConfigError(TLS_FOR_TOKENS)
        if o.insecure_no_auth and not o.cluster:
            raise ConfigError("--insecure-no-auth needs --cluster NAME to name the cluster")
        if o.max_body_bytes < 0 or o.max_event_bytes <= 0 or o.max_inflight <= 0:
            raise ConfigError(
                "--max-event-bytes and --max-inflight must be > 0 and --max-body-bytes >= 0 "
                "(0: no limit)"
            )
        if o.max_event_bytes > MAX_EVENT_LIMIT:
            raise ConfigError(
                f"--max-event-bytes {o.max_event_bytes} is over {MAX_EVENT_LIMIT}, the largest "
                "event the topics take (docs/SCHEMAS.md)"
            )
        if o.ack_timeout <= 0:
            raise ConfigError("--ack-timeout must be > 0 seconds")
        if o.read_timeout <= 0:
            raise ConfigError("--read-timeout must be > 0 seconds")

    def _ssl_context(self) -> ssl.SSLContext | None:
        o = self.options
        if o.tls_cert is None or o.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(str(o.tls_cert), str(o.tls_key))
            if o.client_ca is not None:
                ctx.load_verify_locations(cafile=str(o.client_ca))
                # Optional when tokens are accepted too; the handler still demands one or the other.
                ctx.verify_mode = ssl.CERT_OPTIONAL if self._tokens else ssl.CERT_REQUIRED
            ctx.sslobject_class = _handshake_counting(self.metrics.tls_handshake_failures)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the webhook TLS files ({exc.__class__.__name__}: "
                f"{getattr(exc, 'strerror', None) or exc}); check --tls-cert/--tls-key/--client-ca"
            ) from None
        return ctx

    # -- authentication --------------------------------------------------------------------
    def _cluster_of(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, presented = header.partition(" ")
            if scheme.lower() != "bearer" or not self._tokens:
                return None
            # aiohttp keeps non-UTF-8 header bytes as surrogates; turn them back into bytes
            # (a plain encode would raise and answer 500).
            given = presented.strip().encode("utf-8", "surrogateescape")
            found: str | None = None
            # Compare against every token so the time taken does not tell which one matched.
            for token, cluster in self._tokens:
                if hmac.compare_digest(token, given) and found is None:
                    found = cluster
            return found
        if self.options.client_ca is not None:
            peer = request.transport.get_extra_info("peercert") if request.transport else None
            if peer:
                if self.options.cluster:
                    return self.options.cluster
                for rdn in peer.get("subject", ()):
                    for key, value in rdn:
                        if key == "commonName" and value:
                            return str(value)
            return None
        if self.options.insecure_no_auth:
            return self.options.cluster
        return None

    # -- handlers --------------------------------------------------------------------------
    def _unavailable(
        self,
        cause: str,
        message: str,
        request: web.Request,
        events: int,
        body_bytes: int,
        detail: str = "",
    ) -> web.Response:
        """A 503 + Retry-After: the client must send the batch again. Logged with the request's
        size and events, counted in ``_unavailable_total{cause}``."""
        self.metrics.unavailable.labels(cause).inc()
        log.warning(
            "answered 503 (%s) to %s: %s%s (%d body byte(s) read, Content-Length %s, "
            "%d event(s) seen)",
            cause,
            request.remote,
            message,
            f": {detail}" if detail else "",
            body_bytes,
            request.content_length,
            events,
        )
        return web.json_response(
            {"error": message},
            status=503,
            headers={"Retry-After": str(self.options.retry_after)},
        )

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None if it is over --max-body-bytes (read at most limit+1 bytes)."""
        limit = self.options.max_body_bytes or (1 << 62)
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(min(CHUNK_BYTES, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return None
        return b"".join(chunks)

    def _refused(
        self, status: int, message: str, request: web.Request, events: int, body_bytes: int
    ) -> web.Response:
        """A 4xx/5xx that loses a batch unless the client retries it: always logged, counted."""
        self.metrics.refused.labels(str(status)).inc()
        log.warning(
            "answered %d to %s: %s (%d body byte(s) read, Content-Length %s, %d event(s) seen)",
            status,
            request.remote,
            message,
            body_bytes,
            request.content_length,
            events,
        )
        return web.json_response({"error": message}, status=status)

    def _note_rejects(self, request: web.Request, chained: list[_Chained]) -> None:
        """Count rejects Kafka acknowledged, and log them (one line per request): the API server
        was answered for them, and one held only in part is an event the chain lacks whole."""
        if not chained:
            return
        kinds: dict[str, int] = {}
        for item in chained:
            kinds[item.kind] = kinds.get(item.kind, 0) + 1
            self.metrics.rejected.labels(item.kind).inc()
        partial = [c for c in chained if c.partial_sha256 is not None]
        held = "; ".join(f"{c.size} byte(s), sha256 {c.partial_sha256}" for c in partial[:10])
        log.warning(
            "chained %d reject(s) from %s (%s)%s",
            len(chained),
            request.remote,
            ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items())),
            f"; held only as their first {REJECT_KEEP_BYTES} bytes and SHA-256: {held}"
            + (f" and {len(partial) - 10} more" if len(partial) > 10 else "")
            if partial
            else "",
        )

    async def _acked(self, batch: Batch, done: asyncio.Future[str | None]) -> str | None:
        """Seal the request's batch and wait for Kafka: None once every record is stored."""
        batch.seal()
        try:
            return await asyncio.wait_for(done, self.options.ack_timeout + 2.0)
        except TimeoutError:
            return "no acknowledgement within the ack timeout"

    async def handle_post(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        seen = _Seen()
        try:
            return await self._post(request, seen)
        except web.HTTPException:
            raise
        except Exception:  # noqa: BLE001 - a bug: answered, logged and counted like a refusal
            log.exception(
                "answered 500 to %s: unexpected error (%d body byte(s) read, Content-Length %s, "
                "%d event(s) seen)",
                request.remote,
                seen.body_bytes,
                request.content_length,
                seen.events,
            )
            self.metrics.refused.labels("500").inc()
            resp = web.json_response({"error": "internal error; retry"}, status=500)
            resp.force_close()  # the rest of the body may still be on its way
            return resp
        finally:
            self.metrics.latency.observe(time.perf_counter() - started)

    async def _post(self, request: web.Request, seen: _Seen) -> web.Response:
        cluster = self._cluster_of(request)
        if cluster is None:
            self.metrics.auth_failures.inc()
            log.warning("refused a request from %s: missing or wrong credentials", request.remote)
            return web.json_response(
                {"error": "missing or wrong credentials"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="sealtrail"'},
            )
        ctype = request.content_type
        if ctype != "application/json" and not ctype.endswith("+json"):
            return web.json_response(
                {"error": f"content type {ctype} is not accepted; send application/json"},
                status=415,
            )
        if self._stopping is not None and self._stopping.is_set():
            return self._unavailable(
                "stopping", "the webhook is shutting down; retry", request, 0, 0
            )
        if self._inflight >= self.options.max_inflight:
            return self._unavailable(
                "backpressure", "too many events wait for Kafka; retry", request, 0, 0
            )
        length = request.content_length
        limit = self.options.max_body_bytes
        if limit and length is not None and length > limit:
            resp = self._refused(413, f"body is over the {limit} byte limit", request, 0, 0)
            resp.force_close()  # do not read the rest of an oversize body
            return resp
        if length is None or length > WHOLE_BODY_BYTES:
            return await self._post_streamed(request, cluster, seen)
        try:
            body = await asyncio.wait_for(self._read_body(request), self.options.read_timeout)
        except TimeoutError:
            resp = self._refused(
                408,
                f"body not received within {self.options.read_timeout:g} s; retry",
                request,
                0,
                0,
            )
            resp.force_close()  # do not wait for the rest of a slow body
            return resp
        if body is None:
            resp = self._refused(
                413,
                f"body is over the {self.options.max_body_bytes} byte limit",
                request,
                0,
                length,
            )
            resp.force_close()  # do not read the rest of an oversize body
            return resp
        seen.body_bytes = len(body)
        producer = self._usable_producer()
        assert self._loop is not None
        received = now_us()
        batch, done = asyncio_batch(self._loop)
        raw_topic = self.settings.topics.raw
        key = cluster.encode("utf-8")
        bad: Reject | None = None
        try:
            result = encode_body(
                body, cluster, received, max_event_bytes=self.options.max_event_bytes
            )
        except BadRequestBody as exc:
            result = None
            bad = _body_reject(str(exc), body, self.options.max_event_bytes)
        count = 0 if result is None else len(result.values) + len(result.rejects)
        seen.events = count
        self._inflight += max(count, 1)
        self.metrics.inflight.set(self._inflight)
        try:
            if result is None:
                assert bad is not None
                values = [_reject_value(bad, cluster, received)]
            else:
                values = result.values + [
                    _reject_value(rej, cluster, received) for rej in result.rejects
                ]
            producer.produce_many(batch, raw_topic, key, values)
            error = await self._acked(batch, done)
        except Backpressure:
            batch.seal()
            return self._unavailable(
                "backpressure",
                "the Kafka producer queue is full; retry",
                request,
                count,
                len(body),
            )
        except DeliveryFailed as exc:
            batch.seal()
            error = str(exc)
        finally:
            self._inflight -= max(count, 1)
            self.metrics.inflight.set(self._inflight)
        if error is not None:
            error = _refusal(producer, batch) or error
            return self._unavailable(
                "kafka",
                "Kafka did not acknowledge the events; retry",
                request,
                count,
                len(body),
                error,
            )
        if result is None:
            assert bad is not None
            self._note_rejects(request, [_Chained.of(bad)])
            return web.json_response({"error": bad.reason}, status=400)
        self.metrics.received.inc(count)
        accepted = count - len(result.rejects)
        self.metrics.produced.inc(accepted)
        self._note_rejects(request, [_Chained.of(rej) for rej in result.rejects])
        return web.json_response({"accepted": accepted, "rejected": len(result.rejects)})

    async def _post_streamed(self, request: web.Request, cluster: str, seen: _Seen) -> web.Response:
        """A large (or chunked) body: parse and produce item by item as it arrives.

        Memory holds one item and what Kafka has not acknowledged yet. Items before a break in
        the body's structure are produced; the body itself is then chained as a reject (its
        first MiB and the SHA-256 of all of it) and the answer is 400. 200 only after Kafka
        acknowledged every event and reject of the body."""
        producer = self._usable_producer()
        assert self._loop is not None
        received = now_us()
        parser = StreamParser(cluster, received, self.options.max_event_bytes)
        batch, done = asyncio_batch(self._loop)
        raw_topic = self.settings.topics.raw
        key = cluster.encode("utf-8")
        accepted = rejected = 0
        chained: list[_Chained] = []
        bad: str | None = None
        limit = self.options.max_body_bytes
        counted = 0  # events added to the in-flight count

        async def put(topic_value: bytes) -> None:
            # The producer queue may fill while a huge body streams in: wait for room.
            deadline = time.monotonic() + self.options.ack_timeout
            while True:
                try:
                    producer.produce(batch, raw_topic, key, topic_value)
                    return
                except Backpressure:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)

        read = 0

        async def next_chunk() -> bytes:
            nonlocal read
            chunk = await asyncio.wait_for(
                request.content.read(CHUNK_BYTES), self.options.read_timeout
            )
            read += len(chunk)
            seen.events, seen.body_bytes = parser.items, read
            if limit and read > limit:
                raise _BodyTooLarge
            return chunk

        try:
            try:
                while True:
                    chunk = await next_chunk()
                    outcomes = parser.feed(chunk) if chunk else parser.close()
                    self._inflight += len(outcomes)
                    counted += len(outcomes)
                    self.metrics.inflight.set(self._inflight)
                    for outcome in outcomes:
                        if isinstance(outcome, Reject):
                            rejected += 1
                            chained.append(_Chained.of(outcome))
                            value = _reject_value(outcome, cluster, received)
                        else:
                            accepted += 1
                            value = encode_audit_event(outcome)
                        await put(value)
                    if not chunk:
                        break
            except BadRequestBody as exc:
                bad = f"{exc} ({accepted + rejected} item(s) before it were taken)"
                while chunk := await next_chunk():
                    parser.drain(chunk)
                body_reject = parser.body_reject(bad)
                chained.append(_Chained.of(body_reject))
                await put(_reject_value(body_reject, cluster, received))
            error = await self._acked(batch, done)
        except TimeoutError:
            batch.seal()
            resp = self._refused(
                408,
                f"body not received within {self.options.read_timeout:g} s of silence; retry",
                request,
                parser.items,
                read,
            )
            resp.force_close()
            return resp
        except (ConnectionError, HttpProcessingError) as exc:
            # The client went away mid-body: what was produced stays (a resent batch is
            # deduplicated by audit ID downstream); nobody is left to answer.
            batch.seal()
            log.warning(
                "a streamed body from %s broke off after %d byte(s), %d item(s): %s",
                request.remote,
                read,
                parser.items,
                exc,
            )
            self.metrics.refused.labels("broken").inc()
            resp = web.Response(status=400)
            resp.force_close()
            return resp
        except _BodyTooLarge:
            batch.seal()
            resp = self._refused(
                413, f"body is over the {limit} byte limit", request, parser.items, read
            )
            resp.force_close()
            return resp
        except Backpressure:
            batch.seal()
            return self._unavailable(
                "backpressure",
                "the Kafka producer queue is full; retry",
                request,
                parser.items,
                read,
            )
        except DeliveryFailed as exc:
            batch.seal()
            error = str(exc)
        finally:
            self._inflight -= counted
            self.metrics.inflight.set(self._inflight)
        if error is not None:
            error = _refusal(producer, batch) or error
            return self._unavailable(
                "kafka",
                "Kafka did not acknowledge the events; retry",
                request,
                parser.items,
                read,
                error,
            )
        self.metrics.received.inc(accepted + rejected)
        self.metrics.produced.inc(accepted)
        self._note_rejects(request, chained)
        if bad is not None:
            return web.json_response(
                {"error": bad, "accepted": accepted, "rejected": rejected}, status=400
            )
        return web.json_response({"accepted": accepted, "rejected": rejected})

    def _new_producer(self) -> ConfirmedProducer:
        # A bounded queue (memory) that still holds the largest record: a streamed body waits
        # for room instead of growing the process (see _post_streamed).
        return ConfirmedProducer(
            self.settings,
            message_timeout_s=self.options.ack_timeout,
            **{"queue.buffering.max.kbytes": PRODUCER_QUEUE_KBYTES},
        )

    def _usable_producer(self) -> ConfirmedProducer:
        """The producer, replaced first if it stopped after a fatal error.

        A fatal error (e.g. the idempotent producer's sequence state lost after a broker crash)
        ends that producer for good; requests it had in flight were answered 503 and are sent
        again by their clients. Runs on the event loop thread, so one request replaces it.
        """
        producer = self._producer
        assert producer is not None
        if producer.fatal is None:
            return producer
        log.warning("replacing the Kafka producer after a fatal error: %s", producer.fatal)
        self._producer = self._new_producer()
        self.metrics.producer_rebuilds.inc()
        assert self._loop is not None
        # Its queue holds only failed records now: close it off the event loop.
        self._loop.run_in_executor(None, producer.close, 1.0)
        return self._producer

    async def handle_healthz(self, _request: web.Request) -> web.Response:
        checked_at, healthy = self._health
        if time.monotonic() - checked_at > 2.0:
            assert self._producer is not None and self._loop is not None
            healthy = await self._loop.run_in_executor(None, self._producer.check_connected, 2.0)
            self._health = (time.monotonic(), healthy)
        if healthy:
            return web.Response(text="ok\n")
        return web.Response(text="kafka unreachable\n", status=503)

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(self.metrics.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    # -- lifecycle -------------------------------------------------------------------------
    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=self.options.max_body_bytes + 1)
        app.router.add_post("/", self.handle_post)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/metrics", self.handle_metrics)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=self.options.drain_timeout,
            # Also bounds the time to send request headers (aiohttp's default is an hour).
            keepalive_timeout=self.options.read_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._tls)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        log.info(
            "webhook listening on %s:%d, producing to %s",
            self.host,
            self.port,
            self.settings.topics.raw,
        )
        self._started.set()
        await self._stopping.wait()
        # Stop listening, let running requests finish (they wait for their acks), then close.
        await self._runner.cleanup()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start() in the caller's thread
            self._start_error = exc
            self._started.set()
        finally:
            loop.close()

    def start(self, timeout: float = 30.0) -> int:
        """Connect the producer, start serving in a background thread; return the bound port."""
        self._producer = self._new_producer()
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) or self._start_error is not None:
            error = self._start_error
            self._producer.close(1.0)
            if isinstance(error, OSError):
                raise ConfigError(
                    f"cannot listen on {self.options.listen} ({error.strerror}); "
                    "choose another --listen address"
                ) from None
            if isinstance(error, ConfigError):
                raise error
            raise ConfigError(f"the webhook did not start ({error})")
        return self.port

    def stop(self) -> int:
        """Drain: stop accepting, finish running requests, flush Kafka. Returns unacked count."""
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(self.options.drain_timeout + 5)
        left = 0
        if self._producer is not None:
            left = self._producer.close(self.options.drain_timeout)
            self._producer = None
        return left

    def url(self) -> str:
        scheme = "https" if self.options.tls_cert else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{scheme}://{host}:{self.port}/"
