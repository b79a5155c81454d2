"""Helpers for the real-client tests (no tests here): the Kubernetes audit client and a pipeline.

``run_client`` drives tests/tools/auditclient (k8s.io/apiserver's webhook + buffered audit
backends, see its main.go; built and cached by tests/tools/auditclient_build.py). ``Pipeline``
runs ``sealtrail run`` (webhook over TLS with a token file, chainer, sink: real supervised
processes) in a store of its own.
"""

from __future__ import annotations

import base64
import json
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from processors.integrity.keys import write_keypair
from schemas.codec import decode_audit_event
from sealtrail.infra.config import Settings
from sealtrail.supervisor import child_env
from tests.conftest import K8S_SAMPLES, free_port_base
from tests.integration.test_attack_webhook import Pki

TOKEN = "tok-kube-apiserver-5d1e9a7c3b"
CLUSTER = "kind-real"
BAD_SAMPLE = "fal_01_003.json"


# --- the Go client -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientRun:
    summary: dict[str, Any]
    sent: list[bytes]  # each event's exact bytes as the client put them in its EventLists
    stderr: str


def run_client(
    binary: Path,
    kubeconfig: Path,
    events: list[bytes],
    work: Path,
    on_batch: Callable[[int], None] | None = None,
    timeout: float = 300.0,
    extra: tuple[str, ...] = (),
) -> ClientRun:
    """Hand ``events`` to the audit client; ``on_batch(n)`` runs when batch n starts sending."""
    events_file = work / "events.jsonl"
    events_file.write_bytes(b"".join(e + b"\n" for e in events))
    sent_file = work / "sent.jsonl"
    command = [
        str(binary),
        "send",
        "--kubeconfig",
        str(kubeconfig),
        "--events",
        str(events_file),
        "--sent",
        str(sent_file),
        *extra,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    for line in process.stderr:
        lines.append(line)
        if on_batch is not None and line.startswith('{"batch"'):
            on_batch(int(json.loads(line)["batch"]))
        if time.monotonic() > deadline:
            break
    try:
        out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"the audit client did not finish in {timeout:g} s") from None
    stderr = "".join(lines)
    assert process.returncode == 0, stderr[-4000:]
    sent = sent_file.read_bytes().splitlines()
    assert len(sent) == len(events)
    return ClientRun(json.loads(out), sent, stderr)


def write_kubeconfig(path: Path, server: str, ca: Path, token: str) -> Path:
    """A kubeconfig as kube-apiserver's --audit-webhook-config-file takes it."""
    path.write_text(
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "  - name: sealtrail\n"
        f"    cluster: {{server: '{server}', certificate-authority: '{ca}'}}\n"
        "users:\n"
        f"  - name: kube-apiserver\n    user: {{token: '{token}'}}\n"
        "contexts:\n"
        "  - name: default\n    context: {cluster: sealtrail, user: kube-apiserver}\n"
        "current-context: default\n",
        encoding="utf-8",
    )
    path.chmod(0o600)
    return path


# --- events ----------------------------------------------------------------------------------


def sample_events() -> list[dict[str, Any]]:
    """The real Kubernetes audit samples as audit.k8s.io/v1 events (the one the parser rejects
    left out). The samples are v1beta1, which k8s.io/apiserver no longer decodes: they get v1's
    apiVersion and lose the two fields v1 dropped (timestamp, metadata)."""
    events = []
    for path in sorted(K8S_SAMPLES.glob("*.json")):
        if path.name == BAD_SAMPLE:
            continue
        for line in path.read_bytes().splitlines():
            if line.strip():
                event = json.loads(line)
                event.pop("timestamp", None)
                event.pop("metadata", None)
                event["apiVersion"] = "audit.k8s.io/v1"
                event["kind"] = "Event"
                events.append(event)
    return events


def ordinary_events(count: int, tag: str) -> list[bytes]:
    """``count`` real sample events, cycled; each copy gets its own auditID."""
    samples = sample_events()
    out = []
    for i in range(count):
        event = dict(samples[i % len(samples)])
        event["auditID"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/{i}"))
        out.append(json.dumps(event, separators=(",", ":")).encode())
    return out


def large_event(size: int, tag: str) -> bytes:
    """A real ConfigMap RequestResponse event grown to about ``size`` bytes by its data."""
    base = next(
        e
        for e in sample_events()
        if (e.get("objectRef") or {}).get("resource") == "configmaps"
        and e.get("requestObject")
        and e.get("responseObject")
    )
    event = json.loads(json.dumps(base))
    event["auditID"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/large/{size}"))
    rng = random.Random(f"{tag}/{size}")
    # Base64 of random bytes, as a Secret's data or a packed config file would look.
    # A little over: the client's encoding of the event is a few hundred bytes shorter.
    half = max(0, size + 1024 - len(json.dumps(event))) // 2
    blob = base64.b64encode(rng.randbytes(half * 3 // 4 + 3)).decode()[:half]
    event["requestObject"]["data"] = {"payload.bin": blob}
    event["responseObject"]["data"] = {"payload.bin": blob}
    return json.dumps(event, separators=(",", ":")).encode()


def key_of(original: bytes) -> tuple[str, str]:
    event = json.loads(original)
    return event["auditID"], event["stage"]


# --- the pipeline ----------------------------------------------------------------------------


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:g} s")


class Pipeline:
    """``sealtrail run``: webhook (TLS, token file), chainer and sink as real processes."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # A store of its own: the embedded ClickHouse allows one process per store.
        self.settings = settings.with_(clickhouse=f"chdb://{root / 'ch'}")
        self.env = child_env(self.settings)
        self.pki = Pki(root)
        self.signing_key, self.verifier_key = write_keypair("chainer", root / "keys")
        tokens = root / "tokens"
        tokens.write_text(f"{TOKEN} {CLUSTER}\n", encoding="utf-8")
        tokens.chmod(0o600)
        self.tokens = tokens
        base = free_port_base(2)
        self.port, self.health_port = base, base + 1
        self.url = f"https://localhost:{self.port}/"
        self.kubeconfig = write_kubeconfig(root / "kubeconfig", self.url, self.pki.ca_file, TOKEN)
        self.run: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    def _sealtrail(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "sealtrail", *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _run_get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except (OSError, urllib.error.URLError):
            return 0, ""

    def start(self) -> None:
        self.run = self._sealtrail(
            "run",
            "run",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--tokens",
            str(self.tokens),
            "--tls-cert",
            str(self.pki.server_cert),
            "--tls-key",
            str(self.pki.server_key),
            "--signing-key",
            str(self.signing_key),
            "--health-listen",
            f"127.0.0.1:{self.health_port}",
        )
        # /healthz is 200 once every child runs and the webhook answers its own /healthz.
        _wait(lambda: self._run_get("/healthz")[0] == 200, 90, "sealtrail run never became healthy")

    def webhook(self) -> psutil.Process:
        """The webhook child of ``sealtrail run``."""
        assert self.run is not None
        children = psutil.Process(self.run.pid).children()
        return next(c for c in children if "produce webhook" in " ".join(c.cmdline()))

    def metrics(self) -> str:
        status, text = self._run_get("/metrics")
        assert status == 200
        return text

    def stop(self) -> None:
        """SIGTERM ``sealtrail run`` (it drains every child) and wait for it."""
        if self.run is not None and self.run.poll() is None:
            self.run.send_signal(signal.SIGTERM)
            try:
                self.run.wait(150)
            except subprocess.TimeoutExpired:
                self.run.kill()
                self.run.wait()

    def finish(self) -> None:
        """Stop, then chain and load whatever was still on its way when the drains ended."""
        self.stop()
        for name, args in (
            ("chain", ["chain", "--once", "--signing-key", str(self.signing_key)]),
            ("sink", ["sink", "--once"]),
        ):
            process = self._sealtrail(name, *args)
            assert process.wait(300) == 0, self.log_tail()

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}" for log in self.logs
        )

    def cli(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sealtrail", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def originals(self, table: str) -> list[bytes]:
        """The ``original`` bytes of every loaded event of ``table`` (events or events_dedup)."""
        result = self.cli(
            "query", "-f", "json", f"SELECT hex(payload) AS p FROM {table} WHERE decode_ok = 1"
        )
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout) if result.stdout.strip() else []
        return [bytes(decode_audit_event(bytes.fromhex(row["p"]))["original"]) for row in rows]

    def verify_full(self) -> subprocess.CompletedProcess[str]:
        return self.cli(
            "verify", "--full", "--key", str(self.verifier_key), "--clickhouse-required"
        )


def pipeline(settings: Settings, root: Path) -> Iterator[Pipeline]:
    """A started pipeline, always stopped (for a fixture)."""
    line = Pipeline(settings, root)
    try:
        line.start()
        yield line
    finally:
        line.stop()
