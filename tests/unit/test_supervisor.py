"""sealtrail.supervisor: how long `sealtrail run`'s /metrics waits for each child."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from sealtrail import supervisor as supervisor_module
from sealtrail.infra.config import Settings
from sealtrail.infra.service import StopFlag
from sealtrail.supervisor import (
    METRICS_FETCH_TIMEOUT_S,
    STARTING_METRICS_TIMEOUT_S,
    Child,
    Supervisor,
)


class _Running:
    """Stands in for a child's Popen: a process that runs."""

    returncode = None

    def poll(self) -> None:
        return None


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def _serve(sock: socket.socket, text: bytes) -> HTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *_args: Any) -> None:
            pass

    server = HTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket = sock
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_starting_child_is_waited_for_briefly_and_a_child_that_answered_fully(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict[str, float] = {}
    urlopen = supervisor_module.urllib.request.urlopen

    def recording(url: str, timeout: float, context: Any = None) -> Any:
        asked[url] = timeout
        return urlopen(url, timeout=timeout, context=context)

    monkeypatch.setattr(supervisor_module.urllib.request, "urlopen", recording)
    monkeypatch.setattr(supervisor_module, "STARTUP_S", 3600.0)  # no clock in the outcome
    silent = Child("chainer", [], metrics_socket=_listening())  # started, not serving yet
    serving = Child("sink", [], metrics_socket=_listening())
    server = _serve(serving.metrics_socket, b"sealtrail_sink_up 1\n")  # type: ignore[arg-type]
    try:
        for child in (silent, serving):
            child.launched(_Running())  # type: ignore[arg-type]
        sup = Supervisor(Settings(home=tmp_path), [silent, serving], None, StopFlag())
        text = sup.metrics()
        assert "sealtrail_sink_up 1" in text
        assert 'sealtrail_run_child_up{child="chainer"} 1' in text
        assert asked[silent.metrics_url] == STARTING_METRICS_TIMEOUT_S  # type: ignore[index]
        assert asked[serving.metrics_url] == STARTING_METRICS_TIMEOUT_S  # type: ignore[index]
        assert serving.answered and not silent.answered
        assert serving.metrics_timeout == METRICS_FETCH_TIMEOUT_S
        # Past its start-up a child is waited for fully even if it never answered (a busy one
        # may be slow), and a restart makes it a starting child again.
        silent.started_at = time.monotonic() - 3600.0
        assert silent.metrics_timeout == METRICS_FETCH_TIMEOUT_S
        serving.launched(_Running())  # type: ignore[arg-type]
        assert serving.metrics_timeout == STARTING_METRICS_TIMEOUT_S
    finally:
        server.shutdown()
        for child in (silent, serving):
            assert child.metrics_socket is not None
            child.metrics_socket.close()
