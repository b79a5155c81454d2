"""Session fixtures: one real Kafka broker and one embedded ClickHouse (chdb) per test run.

Both are started with the project's own code (``sealtrail.stack``) and always shut down.
Each test gets its own topic prefix and ClickHouse database, so tests never see each other's data.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import port_free, port_range
from processors.integrity.checkpoint import KeyRing
from processors.integrity.keys import load_verifiers, write_keypair
from sealtrail.infra.config import Settings
from sealtrail.infra.samples import K8S_AUDIT_SAMPLES

K8S_SAMPLES = K8S_AUDIT_SAMPLES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


def free_port_base(width: int = 3, offsets: tuple[int, ...] = (0, 100)) -> int:
    """A base port P with P..P+width-1 and their controller ports (P+100...) all free
    (``offsets=(0, 100, 200)`` for the secured stack's internal listener too)."""
    rng = random.Random()
    # Below the kernel's ephemeral range: a port chosen there can be taken by any outgoing
    # connection between this check and the broker's bind (seen in CI: BindException). And in
    # this xdist worker's slice of it: the other worker checks and binds on its own clock.
    low, high = port_range()
    top = high - max(offsets) - width
    for _ in range(200):
        base = rng.randrange(low, top)
        ports = [base + o + i for o in offsets for i in range(width)]
        if all(port_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range found")


@pytest.fixture(scope="session")
def stack_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack-home")


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_home: Path) -> Iterator[str]:
    from sealtrail.stack import LocalKafka

    kafka = LocalKafka(stack_home)
    state = kafka.up(port=free_port_base(1), brokers=1)
    try:
        yield state.bootstrap
    finally:
        # Destroy client handles tests left behind while the broker still answers; otherwise
        # they log "connection refused" from their own threads until the interpreter exits.
        gc.collect()
        kafka.down()


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"chdb://{tmp_path_factory.mktemp('clickhouse')}"


@pytest.fixture
def base_settings(kafka_bootstrap: str, chdb_dsn: str, tmp_path: Path) -> Settings:
    """Settings for one test: the session broker, own topics, own ClickHouse database."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        kafka=kafka_bootstrap,
        clickhouse=chdb_dsn,
        clickhouse_database=f"t_{tag}",
        home=tmp_path / "home",
        topic_prefix=f"t{tag}.",
        deployment="sealtrail.test",
    )


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """Like ``base_settings`` with the four topics created (3 partitions)."""
    from sealtrail.infra.topics import init_topics

    init_topics(base_settings, partitions=3, replication_factor=1)
    return base_settings


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """The CLI installs SIGTERM/SIGINT handlers in this (main) thread: put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh checkpoint signing key pair: (private key file, public key file)."""
    return write_keypair("sealtrail.test", tmp_path / "keys")


@pytest.fixture
def keyring(keypair: tuple[Path, Path]) -> KeyRing:
    return load_verifiers(keypair[1])
