"""Typed settings, read once from options and environment, turned into client dicts at the edge.

One environment variable per setting, the same name in the CLI, compose.yaml and the docs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from sealtrail.infra.errors import ConfigError

ENV_KAFKA = "SEALTRAIL_KAFKA"
ENV_KAFKA_CONFIG = "SEALTRAIL_KAFKA_CONFIG"
ENV_CLICKHOUSE = "SEALTRAIL_CLICKHOUSE"
ENV_CLICKHOUSE_DATABASE = "SEALTRAIL_CLICKHOUSE_DATABASE"
ENV_HOME = "SEALTRAIL_HOME"
ENV_TOPIC_PREFIX = "SEALTRAIL_TOPIC_PREFIX"
ENV_DEPLOYMENT = "SEALTRAIL_DEPLOYMENT"
# ``sealtrail run``: one Kafka principal per component (docs/SECURITY.md).
ENV_KAFKA_CONFIG_DIR = "SEALTRAIL_KAFKA_CONFIG_DIR"
ENV_PRODUCER_KAFKA_CONFIG = "SEALTRAIL_PRODUCER_KAFKA_CONFIG"
ENV_CHAINER_KAFKA_CONFIG = "SEALTRAIL_CHAINER_KAFKA_CONFIG"
ENV_SINK_KAFKA_CONFIG = "SEALTRAIL_SINK_KAFKA_CONFIG"
# ``sealtrail chain`` / ``sealtrail sink``: GET /metrics (docs/METRICS.md).
ENV_CHAIN_METRICS_LISTEN = "SEALTRAIL_CHAIN_METRICS_LISTEN"
ENV_CHAIN_METRICS_ALLOW_REMOTE = "SEALTRAIL_CHAIN_METRICS_ALLOW_REMOTE"
ENV_SINK_METRICS_LISTEN = "SEALTRAIL_SINK_METRICS_LISTEN"
ENV_SINK_METRICS_ALLOW_REMOTE = "SEALTRAIL_SINK_METRICS_ALLOW_REMOTE"
ENV_SINK_LINGER_MS = "SEALTRAIL_SINK_LINGER_MS"

DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_HOME = ".sealtrail"
DEFAULT_DEPLOYMENT = "sealtrail.local"
DEFAULT_DATABASE = "sealtrail"


@dataclass(frozen=True, slots=True)
class Topics:
    """The four topic names of one deployment."""

    raw: str
    chain: str
    checkpoints: str
    rejects: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(
            raw=f"{prefix}audit.events",
            chain=f"{prefix}audit.chain",
            checkpoints=f"{prefix}audit.checkpoints",
            rejects=f"{prefix}audit.rejects",
        )


@dataclass(frozen=True, slots=True)
class Groups:
    """The consumer groups of one deployment (the topic prefix separates deployments sharing a
    cluster, as for topics). The verifier reads the sink's committed offsets by this name."""

    chainer: str
    sink: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Groups:
        return cls(chainer=f"{prefix}sealtrail-chainer", sink=f"{prefix}sealtrail-sink")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every deployment-wide setting. Build with :meth:`from_env`, override with :meth:`with_`."""

    kafka: str = DEFAULT_KAFKA
    kafka_config: Path | None = None
    clickhouse: str = ""
    clickhouse_database: str = DEFAULT_DATABASE
    home: Path = field(default_factory=lambda: Path(DEFAULT_HOME))
    topic_prefix: str = ""
    deployment: str = DEFAULT_DEPLOYMENT

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ) if env is None else env
        home = Path(env.get(ENV_HOME) or DEFAULT_HOME)
        kafka_config = env.get(ENV_KAFKA_CONFIG) or None
        return cls(
            kafka=env.get(ENV_KAFKA) or DEFAULT_KAFKA,
            kafka_config=Path(kafka_config) if kafka_config else None,
            clickhouse=env.get(ENV_CLICKHOUSE) or "",
            clickhouse_database=env.get(ENV_CLICKHOUSE_DATABASE) or DEFAULT_DATABASE,
            home=home,
            topic_prefix=env.get(ENV_TOPIC_PREFIX, ""),
            deployment=env.get(ENV_DEPLOYMENT) or DEFAULT_DEPLOYMENT,
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with the given settings changed; ``None`` values keep the current setting."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]

    @property
    def topics(self) -> Topics:
        return Topics.with_prefix(self.topic_prefix)

    @property
    def groups(self) -> Groups:
        return Groups.with_prefix(self.topic_prefix)

    @property
    def clickhouse_dsn(self) -> str:
        """The configured DSN, or the embedded chdb store under the data dir."""
        if self.clickhouse:
            return self.clickhouse
        return f"chdb://{(self.home / 'clickhouse').resolve()}"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"


def component_kafka_config(
    role: str, explicit: Path | None, directory: Path | None, fallback: Path | None
) -> Path | None:
    """The Kafka client file of one ``sealtrail run`` component: its own option, else
    ``<directory>/<role>.properties``, else the global ``--kafka-config``."""
    if explicit is not None:
        chosen = explicit
    elif directory is not None:
        chosen = directory / f"{role}.properties"
    else:
        return fallback
    if not chosen.is_file():
        raise ConfigError(
            f"the {role} Kafka client file {chosen} does not exist; create it "
            "('sealtrail acls users' or 'sealtrail stack up --secure') or fix the option"
        )
    return chosen


def read_properties(path: Path) -> dict[str, str]:
    """Parse a librdkafka/Java style properties file (``key=value``, ``#`` comments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the Kafka client properties file {path} ({exc.strerror}); "
            f"check {ENV_KAFKA_CONFIG} or --kafka-config"
        ) from None
    props: dict[str, str] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        sep = line.find("=")
        if sep <= 0:
            raise ConfigError(f"{path}:{number} is not a 'key=value' line; fix or remove it")
        props[line[:sep].strip()] = line[sep + 1 :].strip()
    return props


def parse_listen(value: str, option: str = "--listen") -> tuple[str, int]:
    """A ``HOST:PORT`` to listen on -> (host, port). ``[::1]:443`` is IPv6; an empty host
    (``:9880``) means every interface, as in Go and most servers."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{option} {value!r} is not HOST:PORT; use e.g. 127.0.0.1:9880")
    return host.strip("[]") or "0.0.0.0", int(port)
