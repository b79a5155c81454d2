"""A small HTTP server that answers ``GET /metrics`` with Prometheus text, and nothing else.

Used by ``sealtrail chain`` and ``sealtrail sink`` (``--metrics-listen HOST:PORT``). Metrics are
not authenticated, so the server listens on loopback only unless the operator allows other
addresses explicitly (docs/SECURITY.md, "Network endpoints").

``sealtrail run`` binds its children's metrics sockets itself and hands each child its socket
(:class:`InheritedSocket`): a port found free and then released can be taken by any outgoing
connection before the child binds it (the kernel hands out the same ephemeral range), and a
restarted child would try the taken port forever.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sealtrail.infra.config import parse_listen
from sealtrail.infra.errors import ConfigError

__all__ = [
    "CONTENT_TYPE",
    "InheritedSocket",
    "MetricsServer",
    "PlainHandler",
    "listening_loopback_socket",
    "metrics_listen",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PlainHandler(BaseHTTPRequestHandler):
    """A request handler that answers whole bodies and logs nothing (a scrape every few
    seconds would fill the logs); subclasses write ``do_GET``."""

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def metrics_listen(
    value: str | None,
    allow_remote: bool,
    option: str = "--metrics-listen",
    fd: int | None = None,
) -> tuple[str, int] | InheritedSocket | None:
    """``HOST:PORT`` -> (host, port), None for no metrics; a non-loopback address only with
    ``allow_remote`` (the metrics are unauthenticated). A socket handed over as ``fd`` wins
    (``sealtrail run`` serves its children's metrics there, whatever their env says)."""
    if fd is not None:
        return InheritedSocket(fd)
    if not value:
        return None
    host, port = parse_listen(value, option)
    if not allow_remote and not _is_loopback(host):
        raise ConfigError(
            f"{option} {value} is not a loopback address and /metrics has no authentication; "
            f"listen on 127.0.0.1, or add {option.replace('listen', 'allow-remote')} if the "
            "network in front of it is trusted (docs/SECURITY.md)"
        )
    return host, port


@dataclass(frozen=True)
class InheritedSocket:
    """A listening socket a parent process bound and passed down as file descriptor ``fd``."""

    fd: int


def listening_loopback_socket() -> socket.socket:
    """A TCP socket listening on a port of 127.0.0.1 the kernel picked, inheritable, for a
    child process to serve on (its parent keeps it, so the port stays ours across restarts)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.set_inheritable(True)
    return sock


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _adopt(inherited: InheritedSocket, handler: type[PlainHandler]) -> ThreadingHTTPServer:
    """An HTTP server on a socket that is already bound and listening."""
    sock: socket.socket | None = None
    try:
        sock = socket.socket(fileno=inherited.fd)
        address = sock.getsockname()
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        if sock is not None:
            sock.detach()  # not ours to close
        raise ConfigError(
            f"file descriptor {inherited.fd} is not a socket this process was given "
            f"({exc.strerror or exc}); it is passed by 'sealtrail run' only"
        ) from None
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()  # not ours to close
        raise ConfigError(
            f"file descriptor {inherited.fd} is not a listening TCP socket; "
            "it is passed by 'sealtrail run' only"
        )
    server_class = _V6Server if sock.family == socket.AF_INET6 else ThreadingHTTPServer
    server = server_class(address[:2], handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_address = address
    server.server_name, server.server_port = str(address[0]), int(address[1])
    return server


class MetricsServer:
    """``MetricsServer(listen, render).start()`` serves ``render()`` on ``GET /metrics`` from
    a daemon thread until :meth:`stop`."""

    def __init__(
        self, listen: tuple[str, int] | InheritedSocket, render: Callable[[], bytes]
    ) -> None:
        self.listen = listen
        self._render = render
        self._http: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._http is not None
        return int(self._http.server_address[1])

    def start(self) -> MetricsServer:
        render = self._render

        class Handler(PlainHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?", 1)[0] != "/metrics":
                    self._send(404, b"not found; metrics are at /metrics\n", "text/plain")
                    return
                self._send(200, render(), CONTENT_TYPE)

        if isinstance(self.listen, InheritedSocket):
            self._http = _adopt(self.listen, Handler)
        else:
            host, port = self.listen
            try:
                server_class = _V6Server if ":" in host else ThreadingHTTPServer
                self._http = server_class((host, port), Handler)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
                    "pick a free port for --metrics-listen"
                ) from None
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="metrics", daemon=True).start()
        log.info("metrics on http://%s:%d/metrics", self._http.server_address[0], self.port)
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
