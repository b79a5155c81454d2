"""``sealtrail run``: webhook, chainer and sink as one supervised process group.

Each child is a normal ``sealtrail`` sub-command in its own process (the embedded ClickHouse
allows one process per store, and a crash in one stage must not take the others down). A child
that dies is restarted with exponential backoff; SIGTERM drains every child. One HTTP endpoint
serves ``/healthz`` (all children up) and ``/metrics``: the supervisor's own metrics plus those
of the webhook, the chainer and the sink, fetched from each when scraped.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

from sealtrail.infra import config
from sealtrail.infra.config import Settings
from sealtrail.infra.metrics_server import PlainHandler
from sealtrail.infra.service import StopFlag, backoff

log = logging.getLogger(__name__)

STABLE_AFTER_S = 30.0  # a child that ran this long gets its backoff reset
DRAIN_TIMEOUT_S = 30.0


def child_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = dict(os.environ)
    env[config.ENV_KAFKA] = settings.kafka
    if settings.kafka_config is not None:
        env[config.ENV_KAFKA_CONFIG] = str(settings.kafka_config)
    env[config.ENV_CLICKHOUSE] = settings.clickhouse_dsn
    env[config.ENV_CLICKHOUSE_DATABASE] = settings.clickhouse_database
    env[config.ENV_HOME] = str(settings.home)
    env[config.ENV_TOPIC_PREFIX] = settings.topic_prefix
    env[config.ENV_DEPLOYMENT] = settings.deployment
    return env


METRICS_FETCH_TIMEOUT_S = 2.0
STARTING_METRICS_TIMEOUT_S = 0.25
STARTUP_S = 5.0


@dataclass
class Child:
    name: str
    args: list[str]
    # The loopback socket the child serves its metrics on (plain HTTP, fetched for /metrics
    # while it is up), kept open here and inherited at each start: a restarted child serves
    # on the same port, and nothing else can take it meanwhile.
    metrics_socket: socket.socket | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    delays: Iterator[float] = field(default_factory=lambda: backoff(0.5, 30.0))
    next_start: float = 0.0
    # Whether this start of the child has answered a metrics fetch yet. Until it serves (its
    # first second or so), its socket, held here, takes a connection that nobody accepts: a
    # scrape then waits only briefly for it instead of the full fetch timeout.
    answered: bool = False

    def launched(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.started_at = time.monotonic()
        self.answered = False

    @property
    def metrics_timeout(self) -> float:
        """The brief wait while the child starts; the full one once it answered or once its
        start-up is over (a busy child may be slow to answer, and must still be heard)."""
        if self.answered or time.monotonic() - self.started_at >= STARTUP_S:
            return METRICS_FETCH_TIMEOUT_S
        return STARTING_METRICS_TIMEOUT_S

    @property
    def metrics_url(self) -> str | None:
        if self.metrics_socket is None:
            return None
        host, port = self.metrics_socket.getsockname()[:2]
        return f"http://{host}:{port}/metrics"

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        children: list[Child],
        health_listen: tuple[str, int] | None,
        stop: StopFlag,
        webhook_metrics_url: str | None = None,
        webhook_ca: Path | None = None,
    ) -> None:
        self.settings = settings
        self.children = children
        self.health_listen = health_listen
        self.stop = stop
        self.webhook_metrics_url = webhook_metrics_url
        # Our own webhook's certificate, trusted as it is (it may name a host, not 127.0.0.1).
        self._webhook_tls: ssl.SSLContext | None = None
        if webhook_ca is not None:
            self._webhook_tls = ssl.create_default_context(cafile=str(webhook_ca))
            self._webhook_tls.check_hostname = False
            self._webhook_tls.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self.http: ThreadingHTTPServer | None = None
        self.health_port: int | None = None

    def _spawn(self, child: Child) -> None:
        command = [sys.executable, "-m", "sealtrail", *child.args]
        log.info("starting %s", child.name)
        child.launched(
            subprocess.Popen(
                command,
                env=child_env(self.settings),
                stdin=subprocess.DEVNULL,
                pass_fds=() if child.metrics_socket is None else (child.metrics_socket.fileno(),),
            )
        )

    def _serve_health(self) -> None:
        if self.health_listen is None:
            return
        supervisor = self

        class Handler(PlainHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/healthz":
                    down = [c.name for c in supervisor.children if not c.up]
                    if not down and not supervisor.webhook_ready():
                        down = ["webhook (not answering yet)"]
                    body = ("ok\n" if not down else f"down: {', '.join(down)}\n").encode()
                    self._send(200 if not down else 503, body, "text/plain")
                elif self.path == "/metrics":
                    self._send(200, supervisor.metrics().encode(), "text/plain; version=0.0.4")
                else:
                    self._send(404, b"not found\n", "text/plain")

        self.http = ThreadingHTTPServer(self.health_listen, Handler)
        self.health_port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, name="health", daemon=True).start()
        log.info("health and metrics on http://%s:%d/", self.health_listen[0], self.health_port)

    def webhook_ready(self) -> bool:
        """True unless the webhook runs here and its own /healthz does not answer 200."""
        if not self.webhook_metrics_url:
            return True
        url = self.webhook_metrics_url.rsplit("/", 1)[0] + "/healthz"
        try:
            with urllib.request.urlopen(  # noqa: S310
                url, timeout=2, context=self._webhook_tls
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        lines = [
            "# HELP sealtrail_run_child_up 1 if the child process runs.",
            "# TYPE sealtrail_run_child_up gauge",
        ]
        lines += [f'sealtrail_run_child_up{{child="{c.name}"}} {int(c.up)}' for c in self.children]
        lines += [
            "# HELP sealtrail_run_child_restarts_total Restarts after a child died.",
            "# TYPE sealtrail_run_child_restarts_total counter",
        ]
        lines += [
            f'sealtrail_run_child_restarts_total{{child="{c.name}"}} {c.restarts}'
            for c in self.children
        ]
        text = "\n".join(lines) + "\n"
        # A child that is down or restarting is left out; sealtrail_run_child_up says so (its
        # socket, held here, would take the connection and leave it unanswered).
        sources: list[tuple[str, ssl.SSLContext | None, Child | None]] = [
            (url, None, c) for c in self.children if (url := c.metrics_url) and c.up
        ]
        if self.webhook_metrics_url:
            sources.insert(0, (self.webhook_metrics_url, self._webhook_tls, None))
        for url, tls, child in sources:
            timeout = METRICS_FETCH_TIMEOUT_S if child is None else child.metrics_timeout
            try:
                with urllib.request.urlopen(  # noqa: S310
                    url, timeout=timeout, context=tls
                ) as response:
                    text += response.read().decode("utf-8", "replace")
                if child is not None:
                    child.answered = True
            except OSError:
                pass
        return text

    def run(self) -> int:
        self._serve_health()
        for child in self.children:
            self._spawn(child)
        try:
            while not self.stop.wait(0.5):
                now = time.monotonic()
                for child in self.children:
                    if child.up or child.process is None and now < child.next_start:
                        continue
                    if child.process is not None:
                        code = child.process.returncode
                        ran = now - child.started_at
                        if ran >= STABLE_AFTER_S:
                            child.delays = backoff(0.5, 30.0)
                        delay = next(child.delays)
                        log.warning(
                            "%s exited with code %s after %.1fs; restarting in %.1fs",
                            child.name,
                            code,
                            ran,
                            delay,
                        )
                        child.process = None
                        child.next_start = now + delay
                        child.restarts += 1
                        continue
                    self._spawn(child)
        finally:
            self._drain()
        return 0

    def _drain(self) -> None:
        log.info("draining %d children", len(self.children))
        for child in self.children:
            if child.up and child.process is not None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not drain in time; killing it", child.name)
                child.process.kill()
                child.process.wait()
        if self.http is not None:
            self.http.shutdown()
