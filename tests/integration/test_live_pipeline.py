"""Live, verified reads while ``sealtrail run`` ingests, and the K9s plugin in a real terminal."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processors.integrity.keys import write_keypair
from sealtrail.infra.config import Settings
from sealtrail.supervisor import child_env
from tests.conftest import free_port_base

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _wait(predicate, timeout: float = 90.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def _plugin_command() -> str:
    """The shell line K9s runs: the plugin's last ``args`` item (a single-quoted YAML scalar)."""
    lines = (ROOT / "docs/k9s/plugin.yaml").read_text().splitlines()
    last = [line.strip() for line in lines if line.strip().startswith("- '")][-1]
    return last[3:-1].replace("''", "'")


def test_query_and_verified_history_while_run_ingests(settings: Settings, tmp_path: Path) -> None:
    live = settings.with_(clickhouse=f"chdb://{tmp_path / 'ch'}")
    env = child_env(live)
    key, pub = write_keypair("live", tmp_path / "keys")
    env["SEALTRAIL_VERIFIER_KEYS"] = str(pub)
    base = free_port_base(2)
    run = subprocess.Popen(
        [sys.executable, "-m", "sealtrail", "run", "--listen", f"127.0.0.1:{base}",
         "--insecure-no-auth", "--cluster", "c1", "--signing-key", str(key),
         "--health-listen", f"127.0.0.1:{base + 1}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "sealtrail"), *args], env=env, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip

    def stored() -> int:
        done = cli("query", "--format", "json", "SELECT count() AS n FROM events")
        return json.loads(done.stdout)[0]["n"] if done.returncode == 0 else -1

    sender: subprocess.Popen[bytes] | None = None
    try:
        assert _wait(lambda: stored() == 0), cli("query", "SELECT count() FROM events").stderr
        # About 80 s of load: the reads below happen while it is being ingested.
        sender = subprocess.Popen(
            [str(BIN / "sealtrail"), "produce", "load", "--via", "webhook", "--url",
             f"http://127.0.0.1:{base}/", "--count", "20000", "--rate", "250", "--clusters", "1",
             "--seed", "7"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert _wait(lambda: stored() > 0), "no rows became queryable while run ingests"
        first = stored()
        assert _wait(lambda: stored() > first + 200), "rows did not keep arriving"
        # Pick an object the load has written, then its verified history, mid-ingest.
        done = cli("query", "--format", "json",
                   "SELECT resource, name, namespace, count() AS n FROM events WHERE name != '' "
                   "AND stage = 'ResponseComplete' GROUP BY resource, name, namespace "
                   "ORDER BY n DESC LIMIT 1")  # fmt: skip
        assert done.returncode == 0, done.stderr
        target = json.loads(done.stdout)[0]
        args = [f"{target['resource']}/{target['name']}", "-n", target["namespace"], "--limit",
                "100", "--verify"]  # fmt: skip
        history = cli("history", *args, "--format", "json")
        assert history.returncode == 0, history.stderr
        rows = json.loads(history.stdout)
        assert rows and {r["verified"] for r in rows} <= {True, None}
        assert sender.poll() is None, "the load ended before the verified read: not mid-ingest"
        assert _wait(lambda: any(r["verified"] for r in json.loads(
            cli("history", *args, "--format", "json").stdout)), 60)  # fmt: skip
        # The cron verifier's ClickHouse cross-check and a proof, also through the live path.
        checked = cli("verify", "--quiet", "--clickhouse-required")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        rows_checked = checked.stdout.split("ClickHouse rows checked: ")[1].split()[0]
        assert int(rows_checked) > 0, checked.stdout
        proven = next(r for r in json.loads(cli("history", *args, "--format", "json").stdout)
                      if r["verified"])  # fmt: skip
        made = cli("prove", "--chain", proven["chain"], "--seq", str(proven["seq"]),
                   "--out", str(tmp_path / "proof.json"))  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert "reading the chain from Kafka" not in made.stderr
        offline = cli("verify-proof", str(tmp_path / "proof.json"))
        assert offline.returncode == 0 and "PROVED" in offline.stdout, offline.stderr
        assert sender.poll() is None, "the load ended before verify and prove: not mid-ingest"
        # The K9s plugin's command line, in a real terminal (tmux): the pane shows the verdicts.
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed")
        command = _plugin_command()
        k9s_env = {**env, "PATH": f"{BIN}:{os.environ['PATH']}", "RESOURCE_NAME":
                   target["resource"], "NAME": target["name"], "NAMESPACE": target["namespace"],
                   "CLUSTER": "c1", "TERM": "xterm-256color", "LESS": ""}  # fmt: skip
        session = f"sealtrail-k9s-{os.getpid()}"
        wanted = ("SEALTRAIL_", "PATH", "RESOURCE_", "NAME", "CLUSTER")
        exports = " ".join(
            f"{k}={shlex.quote(v)}" for k, v in k9s_env.items() if k.startswith(wanted)
        )
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "220", "-y", "50",
                        f"env {exports} bash -c {shlex.quote(command)}; sleep 600"],
                       check=True, env=k9s_env)  # fmt: skip
        try:

            def pane() -> str:
                capture = ["tmux", "capture-pane", "-p", "-t", session]
                return subprocess.run(capture, capture_output=True, text=True).stdout

            assert _wait(lambda: "verified" in pane() and " yes " in pane(), 60), pane()
            screen = pane()
            assert "verified history of" in screen and "checkpoint" in screen
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    finally:
        if sender is not None:
            sender.kill()
            sender.wait(30)
        run.send_signal(signal.SIGTERM)
        run.wait(120)
