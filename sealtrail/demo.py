"""``make demo``: the whole pipeline end to end on a local Kafka and embedded ClickHouse.

Run with ``python -m sealtrail.demo [--quick] [--stop] [--port P]``. Every step prints what it
does; each is a real ``sealtrail`` command, so what the demo shows is what a user can type.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sealtrail.infra import config
from sealtrail.infra.config import Settings
from sealtrail.infra.samples import sample_lines

CLUSTERS = ("prod-eu", "staging-us")
SCRATCH_PREFIX = "demo-scratch."


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings.from_env()
        self.home = self.settings.home.resolve()
        self.webhook_port = args.webhook_port
        self.env = dict(os.environ)
        self.env[config.ENV_HOME] = str(self.home)
        self.run_process: subprocess.Popen[bytes] | None = None

    # -- helpers -------------------------------------------------------------------------
    def sealtrail(
        self, *argv: str, check: bool = True, env: dict[str, str] | None = None, show: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "sealtrail", *argv]
        if show:
            print("$ sealtrail " + " ".join(argv), flush=True)
        result = subprocess.run(
            command, env=env or self.env, text=True, capture_output=True, check=False
        )
        if show and result.stdout.strip():
            print(result.stdout.rstrip(), flush=True)
        if result.returncode != 0 and check:
            print(result.stderr.rstrip(), file=sys.stderr)
            raise SystemExit(
                f"demo step failed: sealtrail {' '.join(argv)} (exit {result.returncode})"
            )
        return result

    def post(self, token: str, body: bytes) -> dict[str, object]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.webhook_port}/",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        for attempt in range(20):
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                    return dict(json.loads(response.read() or b"{}"))
            except (urllib.error.URLError, ConnectionError) as exc:
                if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                    raise SystemExit(
                        f"webhook refused the batch: {exc.code} {exc.read()!r}"
                    ) from None
                time.sleep(0.5 * (attempt + 1))
        raise SystemExit("the webhook did not accept the batch; see the output above")

    # -- steps ---------------------------------------------------------------------------
    def start_stack(self) -> None:
        say(f"starting a real Apache Kafka broker (KRaft) under {self.home}/kafka")
        result = self.sealtrail(
            "stack", "up", "--port", str(self.args.port), "--partitions", str(self.args.partitions)
        )
        self.env[config.ENV_KAFKA] = result.stdout.strip().splitlines()[-1]

    def make_keys(self) -> tuple[Path, Path]:
        keys = self.home / "keys"
        private, public = keys / "demo.key", keys / "demo.pub"
        if private.exists():
            say(f"using the signing key {private} (0600) made by an earlier run")
        else:
            say("generating an Ed25519 checkpoint signing key (C2SP signed-note format)")
            self.sealtrail("keys", "generate", "--name", "demo", "--out", str(keys))
        return private, public

    def make_tokens(self) -> dict[str, str]:
        path = self.home / "webhook-tokens.txt"
        tokens = {cluster: secrets.token_urlsafe(24) for cluster in CLUSTERS}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("# TOKEN CLUSTER\n")
            for cluster, token in tokens.items():
                handle.write(f"{token} {cluster}\n")
        os.chmod(path, 0o600)
        return tokens

    def start_pipeline(self, signing_key: Path) -> None:
        say("starting the pipeline: webhook + chainer + sink under one supervisor (sealtrail run)")
        command = [
            sys.executable,
            "-m",
            "sealtrail",
            "run",
            "--listen",
            f"127.0.0.1:{self.webhook_port}",
            "--tokens",
            str(self.home / "webhook-tokens.txt"),
            # The demo posts from this machine over loopback; a real API server needs TLS.
            "--allow-plain-http-tokens",
            "--signing-key",
            str(signing_key),
            "--health-listen",
            f"127.0.0.1:{self.webhook_port + 1}",
        ]
        print("$ sealtrail " + " ".join(command[3:]), flush=True)
        log = open(self.home / "pipeline.log", "ab")  # noqa: SIM115
        self.run_process = subprocess.Popen(
            command, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(  # noqa: S310
                    f"http://127.0.0.1:{self.webhook_port + 1}/healthz", timeout=2
                ) as response:
                    if response.status == 200:
                        print(f"pipeline is up (log: {self.home / 'pipeline.log'})")
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            if self.run_process.poll() is not None:
                break
            time.sleep(0.5)
        raise SystemExit(f"the pipeline did not come up; see {self.home / 'pipeline.log'}")

    def send_events(self, tokens: dict[str, str]) -> int:
        lines = sample_lines()
        say(
            f"posting the {len(lines)} Falco sample audit events as EventList batches "
            f"from clusters {', '.join(CLUSTERS)}"
        )
        sent = 0
        for cluster in CLUSTERS:
            body = (
                b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":['
                + b",".join(lines)
                + b"]}"
            )
            answer = self.post(tokens[cluster], body)
            print(f"  {cluster}: {answer}")
            sent += int(str(answer.get("accepted", 0)))
        count = self.args.load
        say(f"sending {count} synthetic events (kubectl, K9s, controllers) with 'produce load'")
        self.sealtrail(
            "produce",
            "load",
            "--count",
            str(count),
            "--rate",
            "0",
            "--clusters",
            "3",
            "--seed",
            "7",
        )
        return sent + count

    def wait_caught_up(self, timeout: float = 180.0) -> None:
        say("waiting until every event is chained and loaded into ClickHouse")
        from confluent_kafka import Consumer, TopicPartition

        settings = self.settings.with_(kafka=self.env[config.ENV_KAFKA])
        topics = settings.topics
        probe = Consumer(
            {
                "bootstrap.servers": settings.kafka,
                "group.id": "sealtrail-demo-probe",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        groups = {settings.groups.chainer: topics.raw, settings.groups.sink: topics.chain}
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                behind = 0
                for group, topic in groups.items():
                    meta = probe.list_topics(topic, timeout=10).topics[topic]
                    parts = [TopicPartition(topic, p) for p in meta.partitions]
                    ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
                    watcher = Consumer(
                        {
                            "bootstrap.servers": settings.kafka,
                            "group.id": group,
                            "enable.auto.commit": False,
                        }
                    )
                    committed = watcher.committed(parts, timeout=10)
                    watcher.close()
                    for end, tp in zip(ends, committed, strict=True):
                        done = tp.offset if tp.offset >= 0 else 0
                        # A committed offset may sit past the last record (transaction markers).
                        behind += max(0, end - done - 1) if done else end
                print(f"  {behind} record(s) still in flight", flush=True)
                if behind == 0:
                    return
                time.sleep(2)
        finally:
            probe.close()
        raise SystemExit("the pipeline did not catch up in time; see .sealtrail/pipeline.log")

    def stop_pipeline(self) -> None:
        if self.run_process is None or self.run_process.poll() is not None:
            return
        say("stopping the pipeline so this shell can open the embedded ClickHouse store")
        self.run_process.send_signal(signal.SIGTERM)
        try:
            self.run_process.wait(60)
        except subprocess.TimeoutExpired:
            self.run_process.kill()
            self.run_process.wait()

    def explore(self) -> None:
        say("SQL analytics: who deleted what (docs/QUERIES.md has more)")
        self.sealtrail(
            "query",
            "SELECT cluster, user_name, resource, namespace, name, event_time "
            "FROM events WHERE verb = 'delete' ORDER BY event_time DESC LIMIT 8",
        )
        say("SQL analytics: events per cluster and verb")
        self.sealtrail(
            "query",
            "SELECT cluster, verb, count() AS events FROM events "
            "GROUP BY cluster, verb ORDER BY events DESC LIMIT 10",
        )
        say("the audit history of one resource (what the K9s plugin shows)")
        self.sealtrail("history", "deployment/nginx-deployment", "-n", "default")

    def verify(self, public_key: Path) -> None:
        say("verifying the whole log: chains, signed checkpoints, and ClickHouse against Kafka")
        result = self.sealtrail("verify", "--key", str(public_key), "--full", check=False)
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            raise SystemExit(f"verification failed (exit {result.returncode}); this is a bug")
        print("verifier: exit 0 (verified)")

    def tamper(self, signing_key: Path, public_key: Path) -> None:
        say(f"tamper demo in a scratch deployment (topics {SCRATCH_PREFIX}*)")
        env = dict(self.env)
        env[config.ENV_TOPIC_PREFIX] = SCRATCH_PREFIX
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.env[config.ENV_KAFKA]})
        names = list(
            Settings(topic_prefix=SCRATCH_PREFIX).topics.__getattribute__(n)
            for n in ("raw", "chain", "checkpoints", "rejects")
        )
        existing = admin.list_topics(timeout=10).topics
        stale = [n for n in names if n in existing]
        if stale:
            for future in admin.delete_topics(stale, operation_timeout=30).values():
                future.result()
            time.sleep(2)
        self.sealtrail("topics", "init", "--partitions", "1", env=env)
        self.sealtrail(
            "produce",
            "load",
            "--count",
            "200",
            "--rate",
            "0",
            "--clusters",
            "1",
            "--seed",
            "11",
            env=env,
        )
        self.sealtrail("chain", "--once", "--signing-key", str(signing_key), env=env)
        self.sealtrail("verify", "--key", str(public_key), "--no-clickhouse", "--full", env=env)
        say("forging one record: a well-formed chained record with an altered payload")
        forged = self._forge(env)
        print(f"  produced a forged record claiming seq {forged} into {SCRATCH_PREFIX}audit.chain")
        result = self.sealtrail(
            "verify", "--key", str(public_key), "--no-clickhouse", "--full", env=env, check=False
        )
        print(result.stderr.rstrip())
        if result.returncode != 1:
            raise SystemExit(
                f"the verifier should have exited 1 on the forgery, got {result.returncode}"
            )
        print("verifier: exit 1 (integrity violation found), as it should")

    def _forge(self, env: dict[str, str]) -> int:
        from confluent_kafka import Producer

        from processors.integrity.record import record_hash
        from schemas.chained import record_value, value_record
        from sealtrail.infra.kafka_read import read_tail, reader

        settings = Settings(kafka=env[config.ENV_KAFKA], topic_prefix=SCRATCH_PREFIX)
        consumer = reader(settings)
        last = value_record(read_tail(consumer, settings.topics.chain, 0, 1)[0].value() or b"")
        consumer.close()
        seq = last.seq + 1
        forged = dataclasses.replace(
            last,
            seq=seq,
            prev_hash=last.hash,
            payload=b"forged: nothing happened here",
            source_offset=last.source_offset + 1,
        )
        # A right-format record whose hash is computed over different bytes than it carries.
        forged = dataclasses.replace(
            forged,
            hash=record_hash(
                forged.chain,
                seq,
                forged.prev_hash,
                forged.source_offset,
                forged.ingested_at_us,
                b"original",
            ),
        )
        producer = Producer({"bootstrap.servers": settings.kafka})
        producer.produce(
            settings.topics.chain,
            key=forged.chain.encode(),
            value=record_value(forged),
            partition=0,
        )
        producer.flush(10)
        return seq

    def finish(self) -> None:
        if self.args.stop:
            say("stopping the local Kafka stack (--stop)")
            self.sealtrail("stack", "down")
            return
        say("done. The Kafka stack is still running; explore with:")
        kafka = self.env[config.ENV_KAFKA]
        print(f"""  export SEALTRAIL_KAFKA={kafka} SEALTRAIL_HOME={self.home}
  .venv/bin/sealtrail query "SELECT verb, count() FROM events GROUP BY verb"
  .venv/bin/sealtrail history deployment/nginx-deployment -n default
  .venv/bin/sealtrail verify --key {self.home / "keys" / "demo.pub"}
  .venv/bin/sealtrail run --tokens {self.home / "webhook-tokens.txt"} \\
      --listen 127.0.0.1:{self.webhook_port} --health-listen 127.0.0.1:{self.webhook_port + 1} \\
      --allow-plain-http-tokens --signing-key {self.home / "keys" / "demo.key"}
  (for a real API server give --tls-cert/--tls-key instead: docs/DEPLOY.md)
Stop everything with: make stop   (or .venv/bin/sealtrail stack down)""")

    def run(self) -> int:
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        self.start_stack()
        private, public = self.make_keys()
        tokens = self.make_tokens()
        try:
            self.start_pipeline(private)
            self.send_events(tokens)
            self.wait_caught_up()
        finally:
            self.stop_pipeline()
        self.explore()
        self.verify(public)
        self.tamper(private, public)
        self.finish()
        print(f"\ndemo finished in {time.monotonic() - started:.0f}s")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sealtrail.demo", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small event count (CI)")
    parser.add_argument("--stop", action="store_true", help="stop the Kafka stack at the end")
    parser.add_argument("--port", type=int, default=9092, help="Kafka port (default 9092)")
    parser.add_argument("--webhook-port", type=int, default=9880)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--load", type=int, default=None, help="synthetic events to send")
    args = parser.parse_args(argv)
    if args.load is None:
        args.load = 300 if args.quick else 3000
    return Demo(args).run()


if __name__ == "__main__":
    sys.exit(main())
