"""A real local Apache Kafka cluster (KRaft), fetched from Maven Central and run from the data dir.

Layout under ``$SEALTRAIL_HOME/kafka``: ``stack.json`` (ports, node ids, pids, cluster id) and one
``node-N/`` folder per broker (``server.properties``, ``data/``, ``broker.log``). The jars are
cached once per machine under ``$XDG_CACHE_HOME/sealtrail/kafka-VERSION`` (default ``~/.cache``).

``up(secure=True)`` runs the same brokers locked down (docs/SECURITY.md, "The secured stack"):
the client listener (PORT) is SASL_SSL with SCRAM-SHA-512; brokers talk to each other on an
internal listener (PORT+200) and to the controllers (PORT+100) over mutual TLS, authenticated
by the broker certificate (``sealtrail.infra.pki``); Kafka's StandardAuthorizer refuses
whatever no ACL allows. The stack then creates one SCRAM user per role, the ACLs of
``sealtrail.infra.acls`` and the client files ``$SEALTRAIL_HOME/clients/<role>.properties``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sealtrail.infra.acls import Role, user_name
from sealtrail.infra.config import Settings
from sealtrail.infra.errors import StackError
from sealtrail.infra.pki import TlsFiles, ensure_tls

KAFKA_VERSION = "4.1.1"
CONTROLLER_PORT_OFFSET = 100
INTERNAL_PORT_OFFSET = 200  # the secured stack's broker-to-broker listener
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
STARTUP_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
HEAP = "-Xmx768m"

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sealtrail" / f"kafka-{KAFKA_VERSION}"


def admin_user() -> str:
    return user_name(Role.ADMIN)


def _data_file(name: str) -> Path:
    return Path(str(resources.files("sealtrail") / "data" / "kafka" / name))


def require_tool(name: str, purpose: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(
            f"'{name}' is not on PATH; install it ({purpose}) and run the command again"
        )
    return path


def fetch_jars(say: Say = _quiet) -> Path:
    """Return the folder of broker jars, fetching them with Maven the first time."""
    libs = cache_dir() / "libs"
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return libs
    mvn = require_tool("mvn", "Apache Maven 3, to fetch the Kafka broker from Maven Central")
    require_tool("java", "Java 17 or newer, to run the Kafka broker")
    say(f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central (once per machine)...")
    staging = cache_dir() / f"libs.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(_data_file("pom.xml")),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise StackError(
            "Maven could not fetch the Kafka broker jars; check that Maven Central is reachable "
            f"(last output: {' | '.join(tail)})"
        )
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        shutil.rmtree(staging, ignore_errors=True)  # another process fetched them meanwhile
        return libs
    shutil.rmtree(libs, ignore_errors=True)  # a partial folder left by an interrupted fetch
    try:
        staging.rename(libs)
    except OSError:  # another process renamed its copy in first: use that one
        shutil.rmtree(staging, ignore_errors=True)
    return libs


def _new_cluster_id() -> str:
    """A Kafka cluster id (base64url of a UUID) that the storage tool cannot mistake for a flag."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if candidate[0].isalnum():
            return candidate


@dataclass
class NodeState:
    node_id: int
    port: int
    controller_port: int
    pid: int | None = None

    @property
    def internal_port(self) -> int:
        return self.port + INTERNAL_PORT_OFFSET


@dataclass
class StackState:
    cluster_id: str
    port: int
    nodes: list[NodeState] = field(default_factory=list)
    secure: bool = False

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def internal_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.internal_port}" for n in self.nodes)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is one.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        done = 0
    if done == pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _port_busy_for(port: int, seconds: float) -> bool:
    """True if the port stays taken for ``seconds`` (a just-stopped broker frees it shortly)."""
    deadline = time.monotonic() + seconds
    while port_in_use(port):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.5)
    return False


class LocalKafka:
    """Start, stop and inspect the local KRaft cluster of one data dir."""

    def __init__(self, home: Path, say: Say = _quiet) -> None:
        self.root = home / "kafka"
        self.say = say

    # -- state ---------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    def load_state(self) -> StackState | None:
        try:
            raw = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StackError(
                f"{self.state_file} is unreadable ({exc}); run 'sealtrail stack down' and remove it"
            ) from None
        return StackState(
            cluster_id=raw["cluster_id"],
            port=raw["port"],
            nodes=[NodeState(**node) for node in raw["nodes"]],
            secure=bool(raw.get("secure", False)),
        )

    def save_state(self, state: StackState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")
        tmp.replace(self.state_file)

    def running_nodes(self, state: StackState) -> list[NodeState]:
        return [node for node in state.nodes if _pid_alive(node.pid)]

    # -- lifecycle -----------------------------------------------------------------------
    def _prepare_dir(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("ok", encoding="ascii")
            probe.unlink()
        except OSError as exc:
            raise StackError(
                f"the data dir {self.root} is not writable ({exc.strerror}); "
                "choose another with SEALTRAIL_HOME or --home"
            ) from None

    def node_dir(self, node_id: int) -> Path:
        return self.root / f"node-{node_id}"

    @property
    def tls_dir(self) -> Path:
        return self.root.parent / "tls"

    @property
    def clients_dir(self) -> Path:
        return self.root.parent / "clients"

    def _listener_props(self, state: StackState, node: NodeState) -> dict[str, Any]:
        if not state.secure:
            return {
                "listeners": f"PLAINTEXT://127.0.0.1:{node.port},"
                f"CONTROLLER://127.0.0.1:{node.controller_port}",
                "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            }
        tls = TlsFiles.under(self.tls_dir)
        return {
            "listeners": f"CLIENT://127.0.0.1:{node.port},"
            f"INTERNAL://127.0.0.1:{node.internal_port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"CLIENT://127.0.0.1:{node.port},"
            f"INTERNAL://127.0.0.1:{node.internal_port}",
            "inter.broker.listener.name": "INTERNAL",
            "listener.security.protocol.map": "CLIENT:SASL_SSL,INTERNAL:SSL,CONTROLLER:SSL",
            # One PEM keystore (key + chain) and the CA as trust store, for every listener.
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(tls.broker_keystore.resolve()),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls.ca_cert.resolve()),
            # Brokers and controllers prove themselves with the broker certificate.
            "listener.name.internal.ssl.client.auth": "required",
            "listener.name.controller.ssl.client.auth": "required",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.client.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.client.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "authorizer.class.name": AUTHORIZER,
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"{tls.broker_principal};User:{admin_user()}",
        }

    def _write_config(self, state: StackState, node: NodeState) -> Path:
        count = len(state.nodes)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in state.nodes)
        directory = self.node_dir(node.node_id)
        (directory / "data").mkdir(parents=True, exist_ok=True)
        min_isr = 2 if count >= 3 else 1
        props = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            **self._listener_props(state, node),
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str((directory / "data").resolve()),
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            "default.replication.factor": min(3, count),
            "min.insync.replicas": min_isr,
            "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": min(3, count),
            "offsets.topic.num.partitions": 10,
            "transaction.state.log.replication.factor": min(3, count),
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": 10,
            "share.coordinator.state.topic.replication.factor": min(3, count),
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": 0,
            "message.max.bytes": 12 * 1024 * 1024,
            "replica.fetch.max.bytes": 12 * 1024 * 1024,
            "log.retention.hours": -1,
            "transaction.max.timeout.ms": 900000,
        }
        path = directory / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()), encoding="utf-8")
        return path

    def _java_base(self, libs: Path) -> list[str]:
        java = require_tool("java", "Java 17 or newer, to run the Kafka broker")
        return [
            java,
            HEAP,
            "-Xms128m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_data_file('log4j2.properties')}",
            "-cp",
            f"{libs}/*",
        ]

    def _format(self, libs: Path, state: StackState, node: NodeState, config: Path) -> None:
        if (self.node_dir(node.node_id) / "data" / "meta.properties").exists():
            return
        command = [
            *self._java_base(libs),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            state.cluster_id,
            "-c",
            str(config),
            "--ignore-formatted",
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise StackError(
                f"formatting Kafka storage for node {node.node_id} failed: {' | '.join(tail)}"
            )

    def _spawn(self, libs: Path, node: NodeState, config: Path) -> int:
        log = open(self.node_dir(node.node_id) / "broker.log", "ab")  # noqa: SIM115
        try:
            process = subprocess.Popen(
                [*self._java_base(libs), "kafka.Kafka", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.node_dir(node.node_id),
            )
        finally:
            log.close()
        return process.pid

    def up(
        self,
        port: int = 9092,
        brokers: int = 1,
        timeout: float = STARTUP_TIMEOUT_S,
        secure: bool = False,
        topic_prefix: str = "",
    ) -> StackState:
        """Start the cluster (or confirm it runs) and wait until every broker answers metadata.

        With ``secure``, also create the role users, their client files and the ACLs of
        ``topic_prefix``'s topics (idempotent: a running secured stack is brought up to date).
        """
        if brokers not in (1, 3):
            raise StackError("--brokers must be 1 or 3")
        self._prepare_dir()
        state = self.load_state()
        if state is not None:
            alive = self.running_nodes(state)
            same_shape = (
                state.port == port and len(state.nodes) == brokers and state.secure == secure
            )
            if alive and len(state.nodes) == len(alive):
                if not same_shape:
                    raise StackError(
                        f"a local stack already runs from {self.root} on port {state.port} with "
                        f"{len(state.nodes)} broker(s){' (secured)' if state.secure else ''}; "
                        "stop it with 'sealtrail stack down' first"
                    )
                self.say(f"the local stack is already running at {state.bootstrap}")
                self.wait_ready(state, timeout)
                if secure:
                    self.secure_roles(state, topic_prefix, timeout)
                return state
            if not same_shape:
                # A different shape from an old run: its storage belongs to another quorum.
                self.down()
                shutil.rmtree(self.root, ignore_errors=True)
                self._prepare_dir()
                state = None
        if state is None:
            state = StackState(
                cluster_id=_new_cluster_id(),
                port=port,
                nodes=[
                    NodeState(i + 1, port + i, port + CONTROLLER_PORT_OFFSET + i)
                    for i in range(brokers)
                ],
                secure=secure,
            )
        if secure:
            ensure_tls(self.tls_dir)
        for node in state.nodes:
            if _pid_alive(node.pid):
                continue
            ports = [node.port, node.controller_port]
            if secure:
                ports.append(node.internal_port)
            for p in ports:
                if _port_busy_for(p, seconds=8.0):
                    raise StackError(
                        f"port {p} on 127.0.0.1 is already in use by another program; "
                        "stop it or choose another base port with --port"
                    )
        libs = fetch_jars(self.say)
        for node in state.nodes:
            if _pid_alive(node.pid):
                continue
            config = self._write_config(state, node)
            self._format(libs, state, node, config)
            node.pid = self._spawn(libs, node, config)
            self.save_state(state)
        locked = ", TLS + SASL/SCRAM + ACLs" if secure else ""
        self.say(f"starting {brokers} Kafka broker(s) (KRaft{locked}) on 127.0.0.1:{port}...")
        self.wait_ready(state, timeout)
        if secure:
            self.secure_roles(state, topic_prefix, timeout)
        return state

    def bootstrap_admin_conf(self, state: StackState) -> dict[str, Any]:
        """librdkafka settings of a super user for the secured stack: the broker certificate on
        the internal mutual-TLS listener (how the stack creates the first SCRAM users)."""
        if not state.secure:
            return {"bootstrap.servers": state.bootstrap}
        tls = TlsFiles.under(self.tls_dir)
        return {
            "bootstrap.servers": state.internal_bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(tls.ca_cert.resolve()),
            "ssl.certificate.location": str(tls.broker_cert.resolve()),
            "ssl.key.location": str(tls.broker_key.resolve()),
        }

    def secure_roles(self, state: StackState, topic_prefix: str, timeout: float) -> None:
        """Create the role users, their client files and the ACLs; wait until admin logs in."""
        from confluent_kafka.admin import AdminClient

        from sealtrail import kafka_users
        from sealtrail.infra import acls

        tls = TlsFiles.under(self.tls_dir)
        clients = kafka_users.role_clients(self.clients_dir, tls.ca_cert)
        client = AdminClient({**self.bootstrap_admin_conf(state), "log_level": 0})
        kafka_users.upsert_users(client, clients, timeout)
        acls.apply(client, acls.acls(topic_prefix), timeout)
        admin_file = kafka_users.client_file(self.clients_dir, acls.Role.ADMIN)
        # Each broker learns a new credential from the metadata log: ask each one.
        for node in state.nodes:
            self.wait_ready(state, timeout, admin_file, f"127.0.0.1:{node.port}")

    def start_node(self, node_id: int, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start one stopped node again (fault tests)."""
        state = self._require_state()
        node = self._node(state, node_id)
        if _pid_alive(node.pid):
            return
        libs = fetch_jars(self.say)
        config = self._write_config(state, node)
        node.pid = self._spawn(libs, node, config)
        self.save_state(state)
        self.wait_ready(state, timeout)

    def stop_node(self, node_id: int, hard: bool = False) -> None:
        """Stop one node (SIGTERM, or SIGKILL with ``hard``), leaving the others running."""
        state = self._require_state()
        node = self._node(state, node_id)
        self._stop_pid(node.pid, hard)
        node.pid = None
        self.save_state(state)

    def _node(self, state: StackState, node_id: int) -> NodeState:
        for node in state.nodes:
            if node.node_id == node_id:
                return node
        raise StackError(f"the local stack has no node {node_id}")

    def _require_state(self) -> StackState:
        state = self.load_state()
        if state is None:
            raise StackError(f"no local stack in {self.root}; start one with 'sealtrail stack up'")
        return state

    def wait_ready(
        self,
        state: StackState,
        timeout: float = STARTUP_TIMEOUT_S,
        client_file: Path | None = None,
        bootstrap: str | None = None,
    ) -> None:
        """Wait until every running broker is registered; ask as ``client_file``'s user if
        given (a new SCRAM user can log in only once every broker has seen its credential)."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        from sealtrail.infra.config import read_properties

        deadline = time.monotonic() + timeout
        expected = len(self.running_nodes(state)) or len(state.nodes)
        conf: dict[str, Any] = dict(self.bootstrap_admin_conf(state))
        if client_file is not None:
            conf = {
                **read_properties(client_file),
                "bootstrap.servers": bootstrap or state.bootstrap,
            }
        client = AdminClient({**conf, "log_level": 0})
        last = "no answer"
        while time.monotonic() < deadline:
            for node in state.nodes:
                if node.pid and not _pid_alive(node.pid):
                    raise StackError(
                        f"Kafka node {node.node_id} exited during start-up; see "
                        f"{self.node_dir(node.node_id) / 'broker.log'}: {self._log_tail(node)}"
                    )
            try:
                metadata = client.list_topics(timeout=2)
                if len(metadata.brokers) >= expected:
                    return
                last = f"{len(metadata.brokers)} of {expected} brokers registered"
            except KafkaException as exc:
                last = str(exc.args[0])
            time.sleep(0.3)
        raise StackError(
            f"Kafka did not answer metadata requests within {timeout:.0f}s ({last}); "
            f"see the logs under {self.root}"
        )

    def _log_tail(self, node: NodeState) -> str:
        try:
            lines = (self.node_dir(node.node_id) / "broker.log").read_text(errors="replace")
        except OSError:
            return "no log"
        errors = [line for line in lines.splitlines() if "ERROR" in line or "Exception" in line]
        return (errors or lines.splitlines() or ["empty log"])[-1][:300]

    @staticmethod
    def _stop_pid(pid: int | None, hard: bool = False, timeout: float = STOP_TIMEOUT_S) -> None:
        if not _pid_alive(pid):
            return
        assert pid is not None
        try:
            os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            while _pid_alive(pid):
                time.sleep(0.05)

    def down(self) -> int:
        """Stop every node; return how many were running."""
        state = self.load_state()
        if state is None:
            return 0
        alive = self.running_nodes(state)
        # All at once: stopping one by one makes the last node wait out its controlled shutdown
        # for a quorum that is already gone.
        for node in alive:
            try:
                os.kill(node.pid or 0, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for node in alive:
            self._stop_pid(node.pid, timeout=STOP_TIMEOUT_S)
        for node in state.nodes:
            node.pid = None
        self.save_state(state)
        return len(alive)

    def status(self) -> tuple[StackState | None, list[NodeState]]:
        state = self.load_state()
        if state is None:
            return None, []
        return state, self.running_nodes(state)


def local_kafka(settings: Settings, say: Say = _quiet) -> LocalKafka:
    return LocalKafka(settings.home, say)
