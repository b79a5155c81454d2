"""What a chainer is told (:class:`ChainerOptions`) and what it reports (:class:`ChainerStats`)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealtrail.infra.errors import ConfigError
from sealtrail.infra.metrics_server import InheritedSocket

__all__ = [
    "ENV_INSTANCE_ID",
    "ENV_SIGNING_KEY",
    "ChainerOptions",
    "ChainerStats",
    "options_from_env",
]

ENV_SIGNING_KEY = "SEALTRAIL_SIGNING_KEY"
ENV_INSTANCE_ID = "SEALTRAIL_INSTANCE_ID"


@dataclass(frozen=True, slots=True)
class ChainerOptions:
    once: bool = False
    batch_records: int = 5000
    batch_ms: int = 100
    signing_key: Path | None = None
    checkpoint_records: int = 1000
    checkpoint_seconds: float = 0.5
    instance_id: str = ""
    export_checkpoints: Path | None = None
    # Static group membership makes a restarted instance take its partitions back at once;
    # the session timeout is how long a stopped instance's partitions wait to move.
    session_timeout_ms: int = 10000
    # (host, port) serving GET /metrics (--metrics-listen), or the socket 'sealtrail run'
    # handed over; None: no metrics endpoint.
    metrics_listen: tuple[str, int] | InheritedSocket | None = None

    def validated(self) -> ChainerOptions:
        if self.batch_records < 1:
            raise ConfigError("--batch-records must be at least 1")
        if self.batch_ms < 1:
            raise ConfigError("--batch-ms must be at least 1")
        if self.checkpoint_records < 1:
            raise ConfigError("--checkpoint-records must be at least 1")
        if self.checkpoint_seconds <= 0:
            raise ConfigError("--checkpoint-seconds must be positive")
        instance = self.instance_id or socket.gethostname() or "chainer"
        if any(ch.isspace() for ch in instance):
            raise ConfigError(f"instance id {instance!r} contains whitespace; pick another one")
        return ChainerOptions(
            once=self.once,
            batch_records=self.batch_records,
            batch_ms=self.batch_ms,
            signing_key=self.signing_key,
            checkpoint_records=self.checkpoint_records,
            checkpoint_seconds=self.checkpoint_seconds,
            instance_id=instance,
            export_checkpoints=self.export_checkpoints,
            session_timeout_ms=self.session_timeout_ms,
            metrics_listen=self.metrics_listen,
        )


@dataclass(slots=True)
class ChainerStats:
    consumed: int = 0  # raw records taken into transactions (re-reads count again)
    records: int = 0
    transactions: int = 0
    checkpoints: int = 0
    aborts: int = 0
    producer_rebuilds: int = 0
    consumer_rebuilds: int = 0
    recoveries: int = 0
    retries: int = 0  # transactional calls retried after a retriable error
    # monotonic times of the first chained batch's start and the last commit (throughput)
    first_batch_at: float | None = None
    last_commit_at: float | None = None


def options_from_env(**given: Any) -> ChainerOptions:
    """Options with the env fallbacks of the CLI (for in-process use by ``sealtrail run``)."""
    if given.get("signing_key") is None and os.environ.get(ENV_SIGNING_KEY):
        given["signing_key"] = Path(os.environ[ENV_SIGNING_KEY])
    if not given.get("instance_id") and os.environ.get(ENV_INSTANCE_ID):
        given["instance_id"] = os.environ[ENV_INSTANCE_ID]
    return ChainerOptions(**given)
