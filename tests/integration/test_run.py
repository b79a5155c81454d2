"""``sealtrail run``: one supervised process group that survives a killed child and drains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from sealtrail.infra.config import Settings
from sealtrail.supervisor import child_env


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _wait(predicate, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def test_run_restarts_a_killed_child_and_drains(settings: Settings, tmp_path: Path) -> None:
    from tests.conftest import free_port_base

    base = free_port_base(2)
    env = child_env(settings.with_(clickhouse=f"chdb://{tmp_path / 'ch'}"))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sealtrail",
            "run",
            "--listen",
            f"127.0.0.1:{base}",
            "--insecure-no-auth",
            "--cluster",
            "c1",
            "--health-listen",
            f"127.0.0.1:{base + 1}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    health = f"http://127.0.0.1:{base + 1}/healthz"
    try:
        assert _wait(lambda: _get(health)[0] == 200), "sealtrail run never became healthy"
        children = psutil.Process(process.pid).children()
        assert len(children) == 3
        chainer = next(c for c in children if " chain" in " ".join(c.cmdline()))
        os.kill(chainer.pid, signal.SIGKILL)
        assert _wait(lambda: _get(health)[0] == 503, 10), "health did not report the dead child"
        assert _wait(lambda: _get(health)[0] == 200, 30), "the killed child was not restarted"
        # The restarted chainer serves its metrics on the socket run kept for it.
        page = f"http://127.0.0.1:{base + 1}/metrics"
        assert _wait(lambda: "sealtrail_chainer_records_out_total" in _get(page)[1], 60), (
            "the restarted chainer's metrics never reached run's /metrics"
        )
        status, metrics = _get(page)
        assert status == 200
        assert 'sealtrail_run_child_restarts_total{child="chainer"} 1' in metrics
        assert 'sealtrail_run_child_up{child="sink"} 1' in metrics
        pids = [c.pid for c in psutil.Process(process.pid).children()]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids
    )


def test_run_requires_authentication_by_default(settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sealtrail", "run"],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "needs --tokens FILE" in result.stderr
    assert "Traceback" not in result.stderr
