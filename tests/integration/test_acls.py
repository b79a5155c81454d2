"""The secured broker (``stack up --secure``): each component on its own role runs the whole
pipeline, and each role is refused, by the broker, what it must not do (sealtrail/acls.py).

One secured broker for the session (TLS, SCRAM users, StandardAuthorizer), separate from the
plaintext one the other tests use; each test has its own topic prefix and applies the ACLs of
that prefix with ``sealtrail acls apply`` as admin.
"""

from __future__ import annotations

import gc
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from processors.integrity.keys import write_keypair
from producers.kafka_writer import Batch, ConfirmedProducer
from producers.sdk import Emitter
from sealtrail.infra.acls import Role
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import KafkaAuthenticationFailed, KafkaNotAuthorized
from sealtrail.infra.kafka import admin_conf, check_login
from sealtrail.infra.kafka_read import read_tail, reader, watermarks
from sealtrail.stack import LocalKafka
from sealtrail.supervisor import child_env
from tests.conftest import free_port_base
from tests.integration.test_producers import TOKEN_A, good_lines, post, token_file

AUTHZ = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
}


class SecureStack:
    def __init__(self, home: Path, bootstrap: str) -> None:
        self.home = home
        self.bootstrap = bootstrap
        self.clients = home / "clients"

    def file(self, role: Role) -> Path:
        return self.clients / f"{role.value}.properties"


@pytest.fixture(scope="session")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    home = tmp_path_factory.mktemp("secure-stack")
    kafka = LocalKafka(home / ".sealtrail")
    state = kafka.up(port=free_port_base(1, offsets=(0, 100, 200)), brokers=1, secure=True)
    try:
        yield SecureStack(home / ".sealtrail", state.bootstrap)
    finally:
        gc.collect()
        kafka.down()


# The output of every command run through cli(), checked for passwords after each test.
CLI_OUTPUTS: list[str] = []


@pytest.fixture
def secure(secure_stack: SecureStack, chdb_dsn: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings without credentials for one test's topics, created (and their ACLs applied)
    by the admin role through the CLI."""
    tag = uuid.uuid4().hex[:10]
    base = Settings(
        kafka=secure_stack.bootstrap,
        clickhouse=f"chdb://{tmp_path / 'ch'}",
        clickhouse_database=f"t_{tag}",
        home=tmp_path / "home",
        topic_prefix=f"s{tag}.",
        deployment="sealtrail.test",
    )
    as_admin = base.with_(kafka_config=secure_stack.file(Role.ADMIN))
    for command in (["topics", "init", "--partitions", "2"], ["acls", "apply"]):
        result = cli(as_admin, *command)
        assert result.returncode == 0, result.stderr
    yield base
    # Whatever the test ran, no command printed a password, nor did a broker log one.
    seen = list(CLI_OUTPUTS)
    CLI_OUTPUTS.clear()
    assert_no_password(secure_stack, *seen, broker_logs(secure_stack))


def as_role(settings: Settings, stack: SecureStack, role: Role) -> Settings:
    return settings.with_(kafka_config=stack.file(role))


def cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = child_env(settings)
    if settings.kafka_config is None:
        env.pop("SEALTRAIL_KAFKA_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "sealtrail", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    CLI_OUTPUTS.append(result.stdout + result.stderr)
    return result


def passwords(stack: SecureStack) -> list[str]:
    """Every role's SCRAM password, read from its client file."""
    found = []
    for role in Role:
        for line in stack.file(role).read_text().splitlines():
            if line.startswith("sasl.password="):
                found.append(line.split("=", 1)[1])
    assert len(found) == len(Role) and all(len(p) >= 24 for p in found)
    return found


def assert_no_password(stack: SecureStack, *texts: str) -> None:
    for password in passwords(stack):
        for text in texts:
            assert password not in text


def broker_logs(stack: SecureStack) -> str:
    return "".join(
        log.read_text(errors="replace") for log in sorted(stack.home.glob("kafka/node-*/*.log"))
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one sealtrail error line and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def total_end(settings: Settings, topic: str, partitions: int = 2) -> int:
    consumer = reader(settings)
    try:
        return sum(watermarks(consumer, topic, p)[1] for p in range(partitions))
    finally:
        consumer.close()


def chained_records(settings: Settings, partitions: int = 2) -> int:
    from sealtrail.infra.kafka_read import read_range

    consumer = reader(settings)
    try:
        return sum(
            len(list(read_range(consumer, settings.topics.chain, p, idle_timeout=10)))
            for p in range(partitions)
        )
    finally:
        consumer.close()


def sink_caught_up(settings: Settings, partitions: int = 2) -> bool:
    """The sink group committed past every chained record (the end offset of a transactional
    partition is one past the last commit marker, which no consumer commits past)."""
    from confluent_kafka import Consumer

    from sealtrail.infra.kafka import consumer_conf

    topic = settings.topics.chain
    probe = Consumer(consumer_conf(settings, f"{settings.topic_prefix}sealtrail-sink"))
    try:
        found = probe.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        for tp in found:
            low, high = probe.get_watermark_offsets(tp, timeout=10)
            if high > 0 and tp.offset < high - 1:
                return False
        return True
    finally:
        probe.close()


def test_pipeline_runs_with_one_role_per_component(
    secure: Settings, secure_stack: SecureStack, tmp_path: Path
) -> None:
    admin = as_role(secure, secure_stack, Role.ADMIN)
    # SDK producer, as the producer role.
    with Emitter(as_role(secure, secure_stack, Role.PRODUCER), cluster="billing") as audit:
        for i in range(3):
            audit.emit(actor="alice", action="refund", resource=f"order/{i}", outcome="success")

    keys = tmp_path / "keys"
    assert cli(secure, "keys", "generate", "--name", "acl-test", "--out", str(keys)).returncode == 0
    tokens = token_file(tmp_path, f"{TOKEN_A} cluster-a\n")
    base = free_port_base(2)
    env = child_env(secure)
    env.pop("SEALTRAIL_KAFKA_CONFIG", None)  # the components' own files only
    run_log = tmp_path / "run.log"
    run = subprocess.Popen(
        [
            sys.executable, "-m", "sealtrail", "run",
            "--kafka-config-dir", str(secure_stack.clients),
            "--listen", f"127.0.0.1:{base}", "--tokens", str(tokens),
            "--allow-plain-http-tokens",  # webhook TLS is not what this test is about
            "--health-listen", f"127.0.0.1:{base + 1}",
            "--signing-key", str(keys / "acl-test.key"),
        ],
        env=env,
        stdout=run_log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    lines = good_lines()[:40]
    body = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[' + b",".join(lines)
    body += b"]}"
    try:
        deadline = time.monotonic() + 90
        status = 0
        while time.monotonic() < deadline:
            try:
                status = post(f"http://127.0.0.1:{base}/", body, TOKEN_A)[0]
            except OSError:
                status = 0
            if status == 200:
                break
            assert run.poll() is None, run_log.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        assert status == 200, "the webhook never stored the events"
        expected = 3 + len(lines)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if chained_records(admin) >= expected and sink_caught_up(admin):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"chainer and sink did not catch up: {run_log.read_text()[-3000:]}")
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=90)
    assert run.returncode == 0, run_log.read_text(errors="replace")[-3000:]

    result = cli(
        as_role(secure, secure_stack, Role.VERIFIER),
        "verify", "--key", str(keys / "acl-test.pub"), "--clickhouse-required",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK: {expected} records" in result.stdout + result.stderr
    # The offsite checkpoint export runs on the verifier's read-only credential too
    # (deploy/verifier-cronjob.yaml).
    exported = cli(
        as_role(secure, secure_stack, Role.VERIFIER),
        "checkpoints", "export", "--to", str(tmp_path / "offsite"),
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert "exported" in exported.stdout and any((tmp_path / "offsite").iterdir())
    # No password in what the components wrote (the commands' output: see the fixture).
    assert_no_password(secure_stack, run_log.read_text(errors="replace"))


def _write_refusal(settings: Settings, topic: str) -> str:
    producer = ConfirmedProducer(settings)
    try:
        batch = Batch()
        producer.produce(batch, topic, b"k", b"v")
        batch.seal()
        # Either the write is refused, or (a principal that may write no topic at all) the
        # producer gets no producer id and fails for good.
        producer.wait(batch, 60)
        with pytest.raises(KafkaNotAuthorized) as refused:
            producer.raise_if_refused(batch)
    finally:
        producer.close(5)
        # `refused` holds this frame (its traceback), which holds the producer: drop it, or its
        # handle outlives the module's broker and logs "Connection refused" until a collection.
        del producer
    return str(refused.value)


def _webhook_refusal(settings: Settings, tmp_path: Path) -> str:
    """Run the webhook as ``settings``' principal, post one batch, return its log."""
    port = free_port_base(1)
    env = child_env(settings)
    log_file = tmp_path / "webhook.log"
    webhook = subprocess.Popen(
        [
            sys.executable, "-m", "sealtrail", "produce", "webhook",
            "--listen", f"127.0.0.1:{port}", "--insecure-no-auth", "--cluster", "c",
        ],
        env=env,
        stdout=log_file.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    body = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":['
    body += good_lines()[0] + b"]}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status = post(f"http://127.0.0.1:{port}/", body)[0]
            except OSError:
                status = 0
            if status == 503 and "refused to let" in log_file.read_text(errors="replace"):
                break
            assert status in (0, 503), status  # never stored
            assert webhook.poll() is None, log_file.read_text(errors="replace")
            time.sleep(0.3)
    finally:
        webhook.send_signal(signal.SIGTERM)
        webhook.wait(timeout=60)
    text = log_file.read_text(errors="replace")
    CLI_OUTPUTS.append(text)
    return text


def _admin_refusals(settings: Settings, topic: str) -> list[int]:
    """Delete records, delete a topic and alter a topic config as ``settings``' principal."""
    client = AdminClient(admin_conf(settings))
    futures = [
        *client.delete_records([TopicPartition(topic, 0, 0)], request_timeout=30).values(),
        *client.delete_topics([topic], request_timeout=30).values(),
        *client.incremental_alter_configs(
            [
                ConfigResource(
                    ResourceType.TOPIC,
                    topic,
                    incremental_configs=[
                        ConfigEntry(
                            "retention.ms", "1000", incremental_operation=AlterConfigOpType.SET
                        )
                    ],
                )
            ],
            request_timeout=30,
        ).values(),
    ]
    codes = []
    for future in futures:
        with pytest.raises(KafkaException) as refused:
            future.result()
        codes.append(refused.value.args[0].code())
    return codes


def test_each_role_is_refused_what_it_must_not_do(
    secure: Settings, secure_stack: SecureStack, tmp_path: Path
) -> None:
    topics = secure.topics
    producer = as_role(secure, secure_stack, Role.PRODUCER)
    chainer = as_role(secure, secure_stack, Role.CHAINER)
    sink = as_role(secure, secure_stack, Role.SINK)
    verifier = as_role(secure, secure_stack, Role.VERIFIER)
    admin = as_role(secure, secure_stack, Role.ADMIN)
    user = "user sealtrail-{}"
    _private, public = write_keypair("acl-test", tmp_path / "keys")

    # The producer role neither reads nor writes the chain or the checkpoints.
    line = one_line_error(cli(producer, "verify", "--key", str(public), "--no-clickhouse"))
    assert f"refused to let {user.format('producer')}" in line
    assert f"read topic {topics.chain}" in line
    for topic in (topics.chain, topics.checkpoints):
        consumer = reader(producer)
        try:
            with pytest.raises(KafkaNotAuthorized, match=f"read topic {topic}"):
                read_tail(consumer, topic, 0, 1)
        finally:
            consumer.close()
        assert f"write topic {topic}" in _write_refusal(producer, topic)

    # A role that may not see a topic is told so, not that the topic is missing: topics check
    # (an admin task) and a one-shot sink under the wrong role.
    line = one_line_error(cli(verifier, "topics", "check"))
    assert f"refused to let {user.format('verifier')}" in line
    assert f"describe topic {topics.raw}" in line and "do not exist" not in line
    line = one_line_error(cli(producer, "sink", "--once"))
    assert f"refused to let {user.format('producer')}" in line
    assert f"read topic {topics.chain}" in line

    # The chainer does not write the raw topic (through sealtrail's own producer command).
    line = one_line_error(cli(chainer, "produce", "load", "--count", "3"))
    assert f"refused to let {user.format('chainer')}" in line
    assert f"write topic {topics.raw}" in line

    # The sink and the verifier write no topic at all.
    for role, role_settings in ((Role.SINK, sink), (Role.VERIFIER, verifier)):
        for topic in (topics.raw, topics.chain, topics.checkpoints, topics.rejects):
            message = _write_refusal(role_settings, topic)
            assert f"refused to let {user.format(role.value)}" in message
            assert f"write topic {topic}" in message or "produce to any topic" in message

    # ... and the webhook run under the sink role says so in its log, in sealtrail's words.
    logged = _webhook_refusal(sink, tmp_path)
    assert f"refused to let {user.format('sink')}" in logged
    assert f"write topic {topics.raw}" in logged or "produce to any topic" in logged

    # Nobody but admin deletes records or topics or alters topic configs, or creates topics.
    # (Each on a topic the role may see, so the broker, not the client, says no.)
    for role_settings, topic in (
        (producer, topics.raw),
        (chainer, topics.chain),
        (sink, topics.chain),
        (verifier, topics.checkpoints),
    ):
        codes = _admin_refusals(role_settings, topic)
        assert codes and all(code in AUTHZ for code in codes), (role_settings.kafka_config, codes)
    line = one_line_error(cli(sink, "--topic-prefix", "other.", "topics", "init"))
    assert "refused to let user sealtrail-sink" in line and "create topic other." in line

    # No credentials: refused at login, in one sentence, at once.
    line = one_line_error(cli(secure, "verify", "--key", str(public), "--no-clickhouse"))
    assert "refused the login of a client without credentials" in line
    tls_only = tmp_path / "tls-only.properties"
    tls_only.write_text(
        f"security.protocol=SSL\nssl.ca.location={secure_stack.home / 'tls' / 'ca.pem'}\n"
    )
    with pytest.raises(KafkaAuthenticationFailed, match="refused the login"):
        check_login(secure.with_(kafka_config=tls_only))

    # A wrong password: refused at login; the password shows nowhere.
    wrong = tmp_path / "wrong.properties"
    text = secure_stack.file(Role.VERIFIER).read_text()
    wrong_password = "not-the-password-Zq81"
    wrong.write_text(
        "".join(
            f"sasl.password={wrong_password}\n" if x.startswith("sasl.password=") else x + "\n"
            for x in text.splitlines()
        )
    )
    os.chmod(wrong, 0o600)
    result = cli(secure.with_(kafka_config=wrong), "topics", "check")
    line = one_line_error(result)
    assert "refused the login of user sealtrail-verifier" in line
    assert wrong_password not in result.stdout + result.stderr

    # Nothing any refused request tried reached a topic.
    for topic in (topics.raw, topics.chain, topics.checkpoints, topics.rejects):
        assert total_end(admin, topic) == 0, topic


def test_the_verifier_needs_its_reader_group_row(
    secure: Settings, secure_stack: SecureStack, tmp_path: Path
) -> None:
    """Not too wide either: without the prefixed reader-group row the verifier cannot read."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
    )

    # Something to read: one event, chained (as the producer and chainer roles).
    with Emitter(as_role(secure, secure_stack, Role.PRODUCER), cluster="c") as audit:
        audit.emit(actor="alice", action="login", resource="console", outcome="success")
    chained = cli(as_role(secure, secure_stack, Role.CHAINER), "chain", "--once")
    assert chained.returncode == 0, chained.stderr
    admin = AdminClient(admin_conf(as_role(secure, secure_stack, Role.ADMIN)))
    row = AclBindingFilter(
        ResourceType.GROUP,
        f"{secure.topic_prefix}sealtrail-reader-",
        ResourcePatternType.PREFIXED,
        "User:sealtrail-verifier",
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    deleted = [len(f.result()) for f in admin.delete_acls([row], request_timeout=30).values()]
    assert deleted == [1]
    _private, public = write_keypair("acl-test", tmp_path / "keys")
    verifier = as_role(secure, secure_stack, Role.VERIFIER)
    line = one_line_error(cli(verifier, "verify", "--key", str(public), "--no-clickhouse"))
    assert "refused to let user sealtrail-verifier" in line
    assert "consumer group" in line or "Group authorization failed" in line


def test_stack_up_secure_and_status_through_the_cli(
    secure_stack: SecureStack, tmp_path: Path
) -> None:
    """`sealtrail stack up --secure` on the running secured stack: it brings the users, ACLs and
    client files up to date, creates the topics as admin, and `stack status` lists the roles."""
    port = secure_stack.bootstrap.rsplit(":", 1)[1]
    prefix = f"u{uuid.uuid4().hex[:8]}."
    here = Settings(
        kafka=secure_stack.bootstrap, home=secure_stack.home, topic_prefix=prefix,
        clickhouse=f"chdb://{tmp_path / 'ch'}",
    )  # fmt: skip
    before = passwords(secure_stack)
    up = cli(here, "stack", "up", "--secure", "--port", port, "--partitions", "2")
    assert up.returncode == 0, up.stderr
    assert "already running" in up.stderr and f"topic {prefix}audit.chain" in up.stderr
    assert up.stdout.strip() == secure_stack.bootstrap
    assert f"SEALTRAIL_KAFKA_CONFIG={secure_stack.file(Role.CHAINER)}" in up.stderr
    assert passwords(secure_stack) == before  # running clients keep working
    # The prefix's ACLs came with it: the producer role writes its raw topic.
    with Emitter(as_role(here, secure_stack, Role.PRODUCER), cluster="c") as audit:
        audit.emit(actor="alice", action="login", resource="console", outcome="success")
    assert total_end(as_role(here, secure_stack, Role.ADMIN), f"{prefix}audit.events") == 1

    status = cli(here, "stack", "status")
    assert status.returncode == 0, status.stderr
    assert "security: SASL_SSL (SCRAM-SHA-512), StandardAuthorizer" in status.stdout
    for role in Role:
        path = secure_stack.file(role)
        assert f"role {role.value}: {path}" in status.stdout
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(secure_stack.clients.stat().st_mode) == 0o700
    for key in ("ca.key", "broker.key", "broker-keystore.pem"):
        assert stat.S_IMODE((secure_stack.home / "tls" / key).stat().st_mode) == 0o600

    # The same stack without --secure is another shape: refused, not silently opened up.
    plain = cli(here, "stack", "up", "--port", port, "--no-topics")
    line = one_line_error(plain)
    assert "already runs" in line and "(secured)" in line
    assert_no_password(secure_stack, *CLI_OUTPUTS)
    CLI_OUTPUTS.clear()


@pytest.mark.slow
def test_a_one_shot_sink_under_another_role_is_refused_its_group(
    secure: Settings, secure_stack: SecureStack
) -> None:
    """The chainer may read the chain but not use the sink's group: one sentence, not a
    time-out (the refusal arrives as a consumer event while the offsets query times out)."""
    line = one_line_error(cli(as_role(secure, secure_stack, Role.CHAINER), "sink", "--once"))
    assert "refused to let user sealtrail-chainer" in line
    assert f"group {secure.topic_prefix}sealtrail-sink" in line


@pytest.mark.slow
def test_three_secured_brokers(tmp_path: Path) -> None:
    """`stack up --secure --brokers 3`: every broker takes the role users, and each component
    runs on its own role across the quorum."""
    home = tmp_path / "home"
    port = free_port_base(3, offsets=(0, 100, 200))
    base = Settings(
        kafka=f"127.0.0.1:{port}", home=home, clickhouse=f"chdb://{tmp_path / 'ch'}",
        deployment="sealtrail.test",
    )  # fmt: skip
    stack = SecureStack(home, "")
    try:
        up = cli(base, "stack", "up", "--secure", "--brokers", "3", "--port", str(port),
                 "--partitions", "2", timeout=400)  # fmt: skip
        assert up.returncode == 0, up.stderr
        stack.bootstrap = up.stdout.strip()
        assert stack.bootstrap == ",".join(f"127.0.0.1:{port + i}" for i in range(3))
        settings = base.with_(kafka=stack.bootstrap)
        status = cli(settings, "stack", "status")
        assert status.stdout.count(" running (pid ") == 3, status.stdout
        assert all(f"role {role.value}: " in status.stdout for role in Role)

        keys = tmp_path / "keys"
        assert cli(settings, "keys", "generate", "--name", "k3", "--out", str(keys)).returncode == 0
        steps = [
            (Role.PRODUCER, ["produce", "load", "--count", "20"]),
            (Role.CHAINER, ["chain", "--once", "--signing-key", str(keys / "k3.key")]),
            (Role.VERIFIER, ["verify", "--key", str(keys / "k3.pub"), "--no-clickhouse"]),
        ]
        for role, args in steps:
            result = cli(as_role(settings, stack, role), *args, timeout=300)
            assert result.returncode == 0, (role, result.stdout, result.stderr)
        assert "OK: 20 records" in result.stdout + result.stderr
        line = one_line_error(cli(as_role(settings, stack, Role.PRODUCER), "topics", "check"))
        assert "refused to let user sealtrail-producer describe topic" in line.replace(
            f" ({stack.file(Role.PRODUCER)})", ""
        )
        assert_no_password(stack, *CLI_OUTPUTS, broker_logs(stack))
    finally:
        CLI_OUTPUTS.clear()
        LocalKafka(home).down()
