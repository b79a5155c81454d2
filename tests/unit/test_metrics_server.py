"""The metrics HTTP server: loopback by default, GET /metrics only, a taken port in one sentence."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealtrail.cli import app
from sealtrail.infra.errors import ConfigError
from sealtrail.infra.metrics_server import (
    CONTENT_TYPE,
    InheritedSocket,
    MetricsServer,
    listening_loopback_socket,
    metrics_listen,
)

runner = CliRunner()


def test_listen_addresses() -> None:
    assert metrics_listen("", False) is None
    assert metrics_listen("127.0.0.1:9100", False) == ("127.0.0.1", 9100)
    assert metrics_listen("[::1]:9100", False) == ("::1", 9100)
    assert metrics_listen("localhost:9100", False) == ("localhost", 9100)
    for remote in ("0.0.0.0:9100", ":9100", "10.1.2.3:9100", "metrics.example:9100"):
        with pytest.raises(ConfigError, match="--metrics-allow-remote"):
            metrics_listen(remote, False)
    assert metrics_listen("0.0.0.0:9100", True) == ("0.0.0.0", 9100)
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        metrics_listen("9100", False)


def test_serves_metrics_only() -> None:
    server = MetricsServer(("127.0.0.1", 0), lambda: b"sealtrail_x_total 3.0\n").start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:  # noqa: S310
            assert response.read() == b"sealtrail_x_total 3.0\n"
            assert response.headers["Content-Type"] == CONTENT_TYPE
        with pytest.raises(urllib.error.HTTPError) as other:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)  # noqa: S310
        assert other.value.code == 404
    finally:
        server.stop()


def test_a_taken_port_is_one_sentence() -> None:
    first = MetricsServer(("127.0.0.1", 0), lambda: b"").start()
    try:
        with pytest.raises(ConfigError, match="pick a free port for --metrics-listen"):
            MetricsServer(("127.0.0.1", first.port), lambda: b"").start()
    finally:
        first.stop()


def test_a_handed_over_socket_is_served_and_outlives_its_server() -> None:
    # What 'sealtrail run' does: it keeps the listening socket, each child start serves a copy.
    kept = listening_loopback_socket()
    try:
        assert kept.get_inheritable()
        port = kept.getsockname()[1]
        assert metrics_listen("127.0.0.1:9100", False, fd=7) == InheritedSocket(7)
        for generation in (b"first 1\n", b"second 2\n"):
            server = MetricsServer(InheritedSocket(os.dup(kept.fileno())), lambda g=generation: g)
            server.start()
            try:
                assert server.port == port
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
                    assert response.read() == generation
            finally:
                server.stop()
    finally:
        kept.close()


def test_a_descriptor_that_is_no_listening_socket_is_one_sentence(tmp_path: Path) -> None:
    with (tmp_path / "f").open("wb") as file:
        with pytest.raises(ConfigError, match="is not a socket this process was given"):
            MetricsServer(InheritedSocket(os.dup(file.fileno())), lambda: b"").start()
    with socket.socket() as unbound:
        with pytest.raises(ConfigError, match="is not a listening TCP socket"):
            MetricsServer(InheritedSocket(unbound.fileno()), lambda: b"").start()
        unbound.getsockname()  # still open: the refusal did not close what it was not given


@pytest.mark.parametrize("command", ["chain", "sink"])
def test_cli_refuses_a_remote_address_without_the_flag(command: str) -> None:
    result = runner.invoke(app, [command, "--metrics-listen", "0.0.0.0:9100"])
    assert result.exit_code == 2, result.output
    assert "is not a loopback address" in result.output
    assert "Traceback" not in result.output
